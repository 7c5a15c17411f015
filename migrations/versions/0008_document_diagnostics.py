"""documents keep per-page diagnostics: pages with text, pages recognised by OCR, pages skipped and why

Revision ID: 0008_document_diagnostics
Revises: 0007_index_builds
Create Date: 2026-12-05 12:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008_document_diagnostics'
down_revision = '0007_index_builds'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('diagnostics', sa.JSON(), nullable=True))
    with op.batch_alter_table('build_documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('diagnostics', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('build_documents', schema=None) as batch_op:
        batch_op.drop_column('diagnostics')
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_column('diagnostics')
