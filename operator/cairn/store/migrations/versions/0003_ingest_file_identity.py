"""ingest: the identity of each source file (sha256 of its first bytes)

Revision ID: 0003_ingest_identity
Revises: 0002
Create Date: 2026-11-29 11:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0003_ingest_identity'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ingest_progress', schema=None) as batch_op:
        batch_op.add_column(sa.Column('head_bytes', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('head_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('ingest_progress', schema=None) as batch_op:
        batch_op.drop_column('head_sha256')
        batch_op.drop_column('head_bytes')
