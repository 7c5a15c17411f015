"""API keys: scoped to one space and a role, stored hashed

Revision ID: 0004_api_keys
Revises: 0003_chat
Create Date: 2026-11-25 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

import spacio.db


# revision identifiers, used by Alembic.
revision = '0004_api_keys'
down_revision = '0003_chat'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('api_keys',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('space_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', spacio.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', spacio.db.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("role IN ('viewer', 'editor')", name=op.f('ck_api_keys_role')),
    sa.ForeignKeyConstraint(['space_id'], ['spaces.id'], name=op.f('fk_api_keys_space_id_spaces'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_keys_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_space_id'), ['space_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_keys_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_user_id'))
        batch_op.drop_index(batch_op.f('ix_api_keys_space_id'))

    op.drop_table('api_keys')
