"""usage records and answers say whether their tokens were counted by Spacio (the provider reported none)

Revision ID: 0006_usage_estimated
Revises: 0005_refresh_grace
Create Date: 2026-12-05 10:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006_usage_estimated'
down_revision = '0005_refresh_grace'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('estimated', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('usage_estimated', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('usage_estimated')
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.drop_column('estimated')
