"""model registry, evaluations and per-example eval records

Revision ID: 0004_models
Revises: 0003_ingest_identity
Create Date: 2026-11-29 12:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
VERSION_KEY = ['model_versions.model_id', 'model_versions.version']

revision = '0004_models'
down_revision = '0003_ingest_identity'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('models',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('namespace', sa.String(length=253), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('namespace', 'name', name='uq_models_namespace_name')
    )
    op.create_table('model_audit',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('alias', sa.String(length=63), nullable=True),
    sa.Column('previous_version', sa.Integer(), nullable=True),
    sa.Column('who', sa.String(length=255), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('forced', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_model_audit_model_id', 'model_audit', ['model_id'])

    op.create_table('eval_examples',
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('example_id', sa.String(length=255), nullable=False),
    sa.Column('metrics', JSON_DOC, nullable=False),
    sa.Column('slices', JSON_DOC, nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'example_id')
    )
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('image_digest', sa.Text(), nullable=True),
    sa.Column('code_repository', sa.Text(), nullable=True),
    sa.Column('code_commit', sa.String(length=64), nullable=True),
    sa.Column('dataset_uri', sa.Text(), nullable=True),
    sa.Column('dataset_digest', sa.String(length=128), nullable=True),
    sa.Column('params', JSON_DOC, nullable=False),
    sa.Column('registered_by', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'version', name='uq_model_versions_model_version')
    )
    op.create_index('ix_model_versions_run_id', 'model_versions', ['run_id'])

    op.create_table('model_aliases',
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('alias', sa.String(length=63), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('set_by', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['model_id', 'version'], VERSION_KEY, name='fk_model_aliases_version'),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('model_id', 'alias')
    )
    op.create_table('model_evaluations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('candidate_version', sa.Integer(), nullable=False),
    sa.Column('baseline_version', sa.Integer(), nullable=True),
    sa.Column('eval_run_ids', JSON_DOC, nullable=False),
    sa.Column('dataset_sha256', sa.String(length=128), nullable=True),
    sa.Column('eval_image_digest', sa.Text(), nullable=True),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('verdict', JSON_DOC, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id', 'baseline_version'], VERSION_KEY, name='fk_model_evaluations_baseline'),
    sa.ForeignKeyConstraint(['model_id', 'candidate_version'], VERSION_KEY, name='fk_model_evaluations_candidate'),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_model_evaluations_pair', 'model_evaluations',
                    ['model_id', 'candidate_version', 'baseline_version'])

    op.create_table('model_files',
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'path')
    )


def downgrade() -> None:
    op.drop_table('model_files')
    op.drop_index('ix_model_evaluations_pair', table_name='model_evaluations')
    op.drop_table('model_evaluations')
    op.drop_table('model_aliases')
    op.drop_index('ix_model_versions_run_id', table_name='model_versions')
    op.drop_table('model_versions')
    op.drop_table('eval_examples')
    op.drop_index('ix_model_audit_model_id', table_name='model_audit')
    op.drop_table('model_audit')
    op.drop_table('models')
