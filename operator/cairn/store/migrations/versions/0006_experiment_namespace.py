"""experiments: unique per (namespace, name); an experiment whose runs span namespaces is split

Revision ID: 0006_experiment_namespace
Revises: 0005_metric_summaries
Create Date: 2026-11-29 14:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0006_experiment_namespace'
down_revision = '0005_metric_summaries'
branch_labels = None
depends_on = None

# SQLite's unique constraint from 0001 has no name: batch mode finds it by this convention.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
RUN_NAMESPACE = "COALESCE(runs.namespace, '')"


def _old_unique_name() -> str:
    return "experiments_name_key" if op.get_bind().dialect.name == "postgresql" else "uq_experiments_name"


def upgrade() -> None:
    with op.batch_alter_table('experiments', naming_convention=NAMING) as batch_op:
        batch_op.add_column(sa.Column('namespace', sa.String(length=253), nullable=False, server_default=''))
        batch_op.drop_constraint(_old_unique_name(), type_='unique')
    # Each experiment stays with the first namespace of its runs; every other namespace gets its own copy.
    op.execute("UPDATE experiments SET namespace = COALESCE((SELECT MIN(" + RUN_NAMESPACE + ") FROM runs"
               " WHERE runs.experiment_id = experiments.id), '')")
    op.execute("INSERT INTO experiments (name, namespace, created_at)"
               " SELECT DISTINCT e.name, " + RUN_NAMESPACE + ", e.created_at FROM runs"
               " JOIN experiments e ON e.id = runs.experiment_id WHERE " + RUN_NAMESPACE + " <> e.namespace")
    op.execute("UPDATE runs SET experiment_id = (SELECT mine.id FROM experiments mine JOIN experiments old"
               " ON old.name = mine.name WHERE old.id = runs.experiment_id AND mine.namespace = " + RUN_NAMESPACE + ")"
               " WHERE " + RUN_NAMESPACE + " <>"
               " (SELECT e.namespace FROM experiments e WHERE e.id = runs.experiment_id)")
    with op.batch_alter_table('experiments', naming_convention=NAMING) as batch_op:
        batch_op.create_unique_constraint('uq_experiments_namespace_name', ['namespace', 'name'])


def downgrade() -> None:
    with op.batch_alter_table('experiments', naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint('uq_experiments_namespace_name', type_='unique')
        batch_op.drop_column('namespace')
        batch_op.create_unique_constraint(_old_unique_name(), ['name'])
