"""reindexing beside the live index: index builds, their documents, and each chunk's namespace

Revision ID: 0007_index_builds
Revises: 0006_usage_estimated
Create Date: 2026-12-05 11:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

import spacio.db


# revision identifiers, used by Alembic.
revision = '0007_index_builds'
down_revision = '0006_usage_estimated'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('index_builds',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('space_id', sa.Uuid(), nullable=False),
    sa.Column('requested_by', sa.Uuid(), nullable=True),
    sa.Column('pipeline', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error_reason', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', spacio.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', spacio.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('building', 'switched', 'failed')", name=op.f('ck_index_builds_status')),
    sa.ForeignKeyConstraint(['requested_by'], ['users.id'], name=op.f('fk_index_builds_requested_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['space_id'], ['spaces.id'], name=op.f('fk_index_builds_space_id_spaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_index_builds'))
    )
    with op.batch_alter_table('index_builds', schema=None) as batch_op:
        batch_op.create_index('ix_index_builds_space_id_status', ['space_id', 'status'], unique=False)

    op.create_table('build_documents',
    sa.Column('build_id', sa.Uuid(), nullable=False),
    sa.Column('document_id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('pages', sa.Integer(), nullable=True),
    sa.Column('chunks', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=False),
    sa.Column('error_reason', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('queued', 'done', 'failed')", name=op.f('ck_build_documents_status')),
    sa.ForeignKeyConstraint(['build_id'], ['index_builds.id'], name=op.f('fk_build_documents_build_id_index_builds'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_build_documents_document_id_documents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('build_id', 'document_id', name=op.f('pk_build_documents'))
    )
    with op.batch_alter_table('build_documents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_build_documents_document_id'), ['document_id'], unique=False)

    # every chunk so far is in its space's first namespace, named by the space's id
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('namespace', sa.String(length=100), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("UPDATE chunks SET namespace = space_id::text")
    else:  # SQLite keeps a UUID as 32 hex digits: put the dashes of str(uuid) in
        op.execute("UPDATE chunks SET namespace = lower(substr(space_id, 1, 8) || '-' || substr(space_id, 9, 4) || '-' "
                   "|| substr(space_id, 13, 4) || '-' || substr(space_id, 17, 4) || '-' || substr(space_id, 21, 12))")
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.alter_column('namespace', existing_type=sa.String(length=100), nullable=False)
        batch_op.drop_constraint('uq_chunks_document_id', type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_chunks_document_id'), ['document_id', 'namespace', 'ordinal'])


def downgrade():
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.drop_constraint('uq_chunks_document_id', type_='unique')
    # the chunks of reindexes still building go: a document has one chunk per ordinal again
    builds = sa.table('index_builds', sa.column('pipeline', sa.JSON()), sa.column('status', sa.String()))
    building = [row.pipeline.get('namespace') for row in
                op.get_bind().execute(sa.select(builds.c.pipeline).where(builds.c.status == 'building'))]
    chunks = sa.table('chunks', sa.column('namespace', sa.String()))
    if building:
        op.execute(chunks.delete().where(chunks.c.namespace.in_([n for n in building if n])))
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_chunks_document_id'), ['document_id', 'ordinal'])
        batch_op.drop_column('namespace')

    with op.batch_alter_table('build_documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_build_documents_document_id'))
    op.drop_table('build_documents')
    with op.batch_alter_table('index_builds', schema=None) as batch_op:
        batch_op.drop_index('ix_index_builds_space_id_status')
    op.drop_table('index_builds')
