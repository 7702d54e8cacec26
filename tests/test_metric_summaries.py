"""Metric summaries kept at ingest, on SQLite and PostgreSQL: equal to a direct computation over the
stored points after failed and refused batches, filled by the migration for points stored before it."""

import bisect
import math
import random
import uuid

import pytest
from alembic import command
from sqlalchemy import inspect, select

from cairn.store import TrackingStore, db, summaries
from cairn.store.entities import ArtifactInfo, IngestBatch, MetricPoint
from cairn.store.models import MetricSummary

LEVEL_COLUMNS = ("last_step", "last_value", "min_value", "max_value", "count")


def direct_summaries(history: list[MetricPoint]) -> dict[tuple[str, int, int], tuple]:
    """Each level's buckets computed from the points alone (arrival order = history order within a step)."""
    out = {}
    for level in summaries.LEVELS:
        width = 8 ** level
        groups: dict[int, list[tuple[int, MetricPoint]]] = {}
        for arrival, p in enumerate(history):
            groups.setdefault(p.step // width, []).append((arrival, p))
        for index, members in groups.items():
            _, last = max(members, key=lambda m: (m[1].step, m[0]))
            finite = [p.value for _, p in members if not math.isnan(p.value)]
            out[history[0].key, level, index] = (last.step, last.value, min(finite, default=None),
                                                 max(finite, default=None), len(members))
    return out


def stored_summaries(store: TrackingStore, run_id: str) -> dict[tuple[str, int, int], tuple]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(MetricSummary.__table__).where(MetricSummary.run_id == uuid.UUID(run_id)))
        return {(r.key, r.level, r.bucket): (r.last_step, math.nan if r.last_value is None else r.last_value,
                                             r.min_value, r.max_value, r.count) for r in rows}


def same(a: dict, b: dict) -> bool:
    """Equal, NaN equal to NaN."""
    def norm(t):
        return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in t)
    return a.keys() == b.keys() and all(norm(a[k]) == norm(b[k]) for k in a)


def messy_points(rng: random.Random, key: str, steps: range) -> list[MetricPoint]:
    """Out of order, repeated steps, NaN and spikes."""
    pts = []
    for s in steps:
        v = rng.choice([math.nan, rng.uniform(-1e6, 1e6)]) if rng.random() < 0.02 else rng.random()
        pts.append(MetricPoint(key, s, 1_700_000_000_000 + s, v))
        if rng.random() < 0.05:
            pts.append(MetricPoint(key, rng.randrange(0, s + 1), 1_700_000_000_000, rng.random()))
    return pts


def test_summaries_equal_the_points_after_a_failed_and_a_refused_batch(store):
    rng = random.Random(7)
    rid = store.create_run("exp")
    first = messy_points(rng, "loss", range(0, 3_000))
    store.ingest_batch(rid, "f", IngestBatch(metrics=first), offset=100, lines=10, start=0)
    second = messy_points(rng, "loss", range(2_500, 9_000))
    # The batch fails after its points and summaries were written: the transaction rolls all of them back.
    bad = IngestBatch(metrics=second, artifacts=[ArtifactInfo("../escape", "s3://b/x", 1, "0" * 64)])
    with pytest.raises(db.BatchRefused):
        store.ingest_batch(rid, "f", bad, offset=200, lines=20, start=100)
    store.ingest_batch(rid, "f", IngestBatch(metrics=second), offset=200, lines=20, start=100)
    # A replay of a committed batch (the agent crashed after the commit) is refused by the offset CAS.
    with pytest.raises(db.IngestConflict):
        store.ingest_batch(rid, "f", IngestBatch(metrics=second), offset=200, lines=20, start=100)

    history = store.metric_history(rid, "loss")
    assert len(history) == len(first) + len(second)
    expected = direct_summaries(history)
    assert same(stored_summaries(store, rid), expected)
    top = max(summaries.LEVELS)
    assert expected["loss", top, 0][4] == len(history)


def test_downsampled_history_reads_summaries_like_the_points(store):
    rng = random.Random(11)
    rid = store.create_run("exp")
    pts = messy_points(rng, "acc", range(0, 40_000))
    for i in range(0, len(pts), 20_000):
        store.ingest_batch(rid, "f", IngestBatch(metrics=pts[i: i + 20_000]), offset=i + 1, lines=i + 1)
    history = store.metric_history(rid, "acc")
    buckets = store.downsampled_history(rid, "acc", max_points=500)  # 40,000 steps: level 64, 625 rows
    assert len(buckets) == 500
    assert sum(b.count for b in buckets) == len(history)
    # Each bucket holds the points after the previous bucket's last step up to its own (history is by step).
    steps = [p.step for p in history]
    start = 0
    for b in buckets:
        end = bisect.bisect_right(steps, b.step)
        inside = history[start:end]
        start, last = end, inside[-1]
        finite = [p.value for p in inside if not math.isnan(p.value)]
        got = (b.count, b.timestamp_ms, b.min_value, b.max_value)
        assert got == (len(inside), last.timestamp_ms, min(finite, default=None), max(finite, default=None))
        assert b.value == last.value or (math.isnan(b.value) and math.isnan(last.value))
    with pytest.raises(ValueError):
        store.downsampled_history(rid, "acc", max_points=0)


def test_the_migration_summarises_points_stored_before_it(store_url):
    store = TrackingStore(store_url)
    rid = store.create_run("exp")
    pts = messy_points(random.Random(3), "loss", range(0, 5_000))
    store.ingest_batch(rid, "f", IngestBatch(metrics=pts), offset=1, lines=1)
    expected = stored_summaries(store, rid)
    assert same(expected, direct_summaries(store.metric_history(rid, "loss")))
    cfg = db._alembic_config(store.engine)
    command.downgrade(cfg, "0004_models")
    assert "metric_summaries" not in inspect(store.engine).get_table_names()
    command.upgrade(cfg, "head")
    assert same(stored_summaries(store, rid), expected)
