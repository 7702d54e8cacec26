"""object store: artifact upload state, dataset digests, resumed attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('artifacts_uploaded', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('artifacts_pending', sa.Integer(), nullable=True))
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('uploaded_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('object_count', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('total_bytes', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('digested_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('resumes',
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('from_attempt', sa.Integer(), nullable=True),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'attempt')
    )


def downgrade() -> None:
    op.drop_table('resumes')
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('digested_at')
        batch_op.drop_column('total_bytes')
        batch_op.drop_column('object_count')
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_column('uploaded_at')
        batch_op.drop_column('attempt')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('artifacts_pending')
        batch_op.drop_column('artifacts_uploaded')
