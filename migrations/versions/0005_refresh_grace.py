"""auth sessions keep the id of the refresh token their last rotation spent (the reuse grace window)

Revision ID: 0005_refresh_grace
Revises: 0004_api_keys
Create Date: 2026-12-05 08:33:47.231713

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005_refresh_grace'
down_revision = '0004_api_keys'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_refresh_jti', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.drop_column('previous_refresh_jti')
