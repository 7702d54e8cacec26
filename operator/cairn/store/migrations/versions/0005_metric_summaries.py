"""metric summaries (fixed step buckets per series at widths 8**level, filled from the stored points) and
indexes for run search by param, tag and metric

Revision ID: 0005_metric_summaries
Revises: 0004_models
Create Date: 2026-11-29 14:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0005_metric_summaries'
down_revision = '0004_models'
branch_labels = None
depends_on = None

LEVELS = range(1, 13)  # as cairn.store.summaries.LEVELS when this revision was written
LEVEL_BITS = 3

COLUMNS = "run_id, key, level, bucket, last_step, last_timestamp_ms, last_value, min_value, max_value, count"

FROM_POINTS = """
INSERT INTO metric_summaries ({columns})
SELECT run_id, key, 1, bucket, step, timestamp_ms, value, mn, mx, n FROM (
    SELECT run_id, key, bucket, step, timestamp_ms, value,
           MIN(finite) OVER w AS mn, MAX(finite) OVER w AS mx, COUNT(*) OVER w AS n,
           ROW_NUMBER() OVER (PARTITION BY run_id, key, bucket ORDER BY step DESC, id DESC) AS rn
    FROM (SELECT id, run_id, key, step / {width} AS bucket, step, timestamp_ms, value, {finite} AS finite
          FROM metrics WHERE run_id IN (SELECT id FROM runs)) m
    WINDOW w AS (PARTITION BY run_id, key, bucket)
) r WHERE rn = 1
"""

FROM_LEVEL_BELOW = """
INSERT INTO metric_summaries ({columns})
SELECT run_id, key, {level}, parent, last_step, last_timestamp_ms, last_value, mn, mx, n FROM (
    SELECT run_id, key, parent, last_step, last_timestamp_ms, last_value,
           MIN(min_value) OVER w AS mn, MAX(max_value) OVER w AS mx, SUM(count) OVER w AS n,
           ROW_NUMBER() OVER (PARTITION BY run_id, key, parent ORDER BY last_step DESC) AS rn
    FROM (SELECT s.*, bucket / {factor} AS parent FROM metric_summaries s WHERE level = {below}) m
    WINDOW w AS (PARTITION BY run_id, key, parent)
) r WHERE rn = 1
"""


def upgrade() -> None:
    op.create_table('metric_summaries',
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('level', sa.SmallInteger(), nullable=False),
    sa.Column('bucket', sa.BigInteger(), nullable=False),
    sa.Column('last_step', sa.BigInteger(), nullable=False),
    sa.Column('last_timestamp_ms', sa.BigInteger(), nullable=False),
    sa.Column('last_value', sa.Double(), nullable=True),
    sa.Column('min_value', sa.Double(), nullable=True),
    sa.Column('max_value', sa.Double(), nullable=True),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'key', 'level', 'bucket')
    )
    op.create_index('ix_params_key', 'params', ['key'])
    op.create_index('ix_tags_key', 'tags', ['key'])
    op.create_index('ix_latest_metrics_key_value', 'latest_metrics', ['key', 'value'])
    # SQLite stores NaN as NULL already; PostgreSQL's NaN equals itself, so NULLIF drops it.
    finite = "NULLIF(value, 'NaN'::float8)" if op.get_bind().dialect.name == "postgresql" else "value"
    factor = 1 << LEVEL_BITS
    op.execute(FROM_POINTS.format(columns=COLUMNS, width=factor, finite=finite))
    for level in LEVELS[1:]:
        op.execute(FROM_LEVEL_BELOW.format(columns=COLUMNS, level=level, below=level - 1, factor=factor))


def downgrade() -> None:
    op.drop_index('ix_latest_metrics_key_value', table_name='latest_metrics')
    op.drop_index('ix_tags_key', table_name='tags')
    op.drop_index('ix_params_key', table_name='params')
    op.drop_table('metric_summaries')
