"""Metric series summarised at ingest, so that a curve of any length is drawn from a few thousand rows.

Each series is cut into fixed step buckets at a ladder of widths (8, 64, 512, ... steps: level ``l``
has width ``8**l``); a bucket keeps its last point (highest step, then latest arrival), the min and
max of its finite values and its point count. A reader picks the coarsest level that still has at
least as many buckets as it wants points and merges neighbouring buckets down to that number.
Pure: points in, buckets out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from cairn.store.entities import HistoryBucket, MetricPoint

LEVEL_BITS = 3  # each level's buckets are 8 times as wide as the level below's
LEVELS = range(1, 13)  # widths 8 .. 8**12 (6.9e10 steps); a wider span merges more buckets of the top level


def level_width(level: int) -> int:
    return 1 << (LEVEL_BITS * level)


@dataclass
class Bucket:
    """One bucket of one level, mutable while a batch is summarised."""

    last_step: int
    last_timestamp_ms: int
    last_value: float
    min_value: float | None
    max_value: float | None
    count: int

    def absorb(self, later: "Bucket") -> None:
        """Fold in a bucket (or point) that arrived after everything already in this one."""
        if later.last_step >= self.last_step:
            self.last_step, self.last_timestamp_ms, self.last_value = (
                later.last_step, later.last_timestamp_ms, later.last_value)
        if later.min_value is not None and (self.min_value is None or later.min_value < self.min_value):
            self.min_value = later.min_value
        if later.max_value is not None and (self.max_value is None or later.max_value > self.max_value):
            self.max_value = later.max_value
        self.count += later.count


def point_buckets(points: Iterable[MetricPoint], bits: int) -> dict[int, Bucket]:
    """Points of one series in arrival order → buckets ``2**bits`` steps wide, keyed by index."""
    out: dict[int, Bucket] = {}
    for _, step, ts, value in points:
        finite = None if value != value else value  # NaN is the only value unequal to itself
        found = out.get(step >> bits)
        if found is None:
            out[step >> bits] = Bucket(step, ts, value, finite, finite, 1)
            continue
        if step >= found.last_step:
            found.last_step, found.last_timestamp_ms, found.last_value = step, ts, value
        if finite is not None:
            if found.min_value is None or finite < found.min_value:
                found.min_value = finite
            if found.max_value is None or finite > found.max_value:
                found.max_value = finite
        found.count += 1
    return out


def coarser(buckets: dict[int, Bucket], bits: int) -> dict[int, Bucket]:
    """Buckets of ``2**bits`` times the width, keyed by their index at that width."""
    out: dict[int, Bucket] = {}
    # In step order, so that within one coarser bucket later steps come later (ties cannot occur).
    for index in sorted(buckets):
        b = buckets[index]
        parent = index >> bits
        found = out.get(parent)
        if found is None:
            out[parent] = Bucket(b.last_step, b.last_timestamp_ms, b.last_value, b.min_value, b.max_value, b.count)
        else:
            found.absorb(b)
    return out


def summarise(points: Sequence[MetricPoint]) -> Iterator[tuple[str, int, int, Bucket]]:
    """(key, level, bucket index, bucket) for every level of every series in a batch.

    The work is bounded by the batch: each level has at most as many buckets as the level below.
    """
    by_key: dict[str, list[MetricPoint]] = {}
    for p in points:
        by_key.setdefault(p[0], []).append(p)
    for key, series in by_key.items():
        buckets = point_buckets(series, LEVEL_BITS)
        for level in LEVELS:
            if level > LEVELS[0]:
                buckets = coarser(buckets, LEVEL_BITS)
            for index, bucket in buckets.items():
                yield key, level, index, bucket


def choose_level(first_step: int, last_step: int, max_points: int) -> int | None:
    """The coarsest level whose buckets over the series' steps number at least ``max_points``;
    None when even the finest has fewer (the series is short enough to read point by point)."""
    for level in reversed(LEVELS):
        width = level_width(level)
        if last_step // width - first_step // width + 1 >= max_points:
            return level
    return None


def merged(buckets: Iterable[tuple[int, Bucket]], first_index: int, last_index: int,
           max_points: int) -> list[HistoryBucket]:
    """Buckets (index, bucket) in index order → at most ``max_points`` buckets of about equal width.

    With ``n`` indexes spanned, index ``i`` goes to output bucket ``(i - first) * max_points // n``:
    when ``n >= max_points`` every output bucket gets at least one index, so a dense series gives
    exactly ``max_points`` buckets.
    """
    span = last_index - first_index + 1
    out: list[HistoryBucket] = []
    current: Bucket | None = None
    current_group = -1
    for index, bucket in buckets:
        group = (index - first_index) * max_points // span if span > max_points else index
        if current is not None and group == current_group:
            current.absorb(bucket)
            continue
        if current is not None:
            out.append(as_history(current))
        current, current_group = Bucket(bucket.last_step, bucket.last_timestamp_ms, bucket.last_value,
                                        bucket.min_value, bucket.max_value, bucket.count), group
    if current is not None:
        out.append(as_history(current))
    return out


def as_history(b: Bucket) -> HistoryBucket:
    return HistoryBucket(b.last_step, b.last_value, b.min_value, b.max_value, b.count, b.last_timestamp_ms)
