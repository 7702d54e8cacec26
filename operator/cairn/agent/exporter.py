"""Live run metrics for Prometheus, served by the tracking sidecar on ``/metrics``.

Bounded by design: only the keys the TrainingRun exports (``spec.tracking``) or a small default,
at most ``MAX_KEYS`` per run, plus the trainer's ``system/*`` metrics (at most ``MAX_SYSTEM_KEYS``),
and nothing at all once the run's finish record has been read, so a finished run's series end with
it. Values come from the lines the agent has just parsed, before they are committed, so the live
view keeps moving while the database is away.

GPU series come from the ``system/gpu.<i>.*`` metrics the SDK samples in the trainer, which holds
the GPUs; the sidecar is given none, so it does not read them itself.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cairn.rundir import SYSTEM_METRIC_PREFIX

DEFAULT_KEYS = ("loss", "val_loss", "acc", "val_acc", "accuracy", "lr")
MAX_KEYS = 20
MAX_SYSTEM_KEYS = 64  # the trainer names these keys too: the first 64 seen are exported
GPU_KEY = re.compile(re.escape(SYSTEM_METRIC_PREFIX) + r"gpu\.(\d{1,3})\.(\w+)")
# system/gpu.<i>.<field> -> (family, help, scale): series with a ``gpu`` label
GPU_FAMILIES = {
    "utilization_percent": ("cairn_run_gpu_utilization_ratio", "GPU busy fraction (sampled by the trainer).", 0.01),
    "memory_used_bytes": ("cairn_run_gpu_memory_used_bytes", "GPU memory in use.", 1.0),
    "memory_total_bytes": ("cairn_run_gpu_memory_total_bytes", "GPU memory in all.", 1.0),
    "temperature_celsius": ("cairn_run_gpu_temperature_celsius", "GPU temperature.", 1.0),
    "power_watts": ("cairn_run_gpu_power_watts", "GPU power draw.", 1.0),
}
RATE_WINDOW_S = 30.0
LABELS = ("namespace", "experiment", "run", "trainingrun")


@dataclass
class LiveState:
    """What the exporter shows; fed by the ingest agent, read by Prometheus scrapes."""

    keys: frozenset[str]
    values: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (step, value)
    system_keys: int = 0  # how many system/* keys ``values`` holds
    step: int | None = None
    rejected: collections.Counter = field(default_factory=collections.Counter)
    skipped_files: collections.Counter = field(default_factory=collections.Counter)  # by reason, from the uploader
    backlog_bytes: int = 0
    last_commit: float | None = None
    # Unix time of the last new step; the exporter's start until the first one (alerts on stalled runs).
    progress_at: float = field(default_factory=time.time)
    finished: bool = False
    _steps: collections.deque = field(default_factory=collections.deque)  # (monotonic time, step)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, points: Iterable[tuple[str, int, int, float]], now: float | None = None,
                wall: float | None = None) -> None:
        """Take the newest value per exported key from freshly parsed points (key, step, ts_ms, value).
        ``now`` is monotonic time (for the step rate), ``wall`` Unix time (for the last progress)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            top = self.step
            for key, step, _ts, value in points:
                if top is None or step > top:
                    top = step
                if key in self.keys:
                    seen = self.values.get(key)
                    if seen is None or step >= seen[0]:
                        self.values[key] = (step, value)
                elif key.startswith(SYSTEM_METRIC_PREFIX):
                    # Sampled against time, several at one step: the newest arrival wins.
                    if key not in self.values:
                        if self.system_keys >= MAX_SYSTEM_KEYS:
                            continue
                        self.system_keys += 1
                    self.values[key] = (step, value)
            if top is not None and top != self.step:
                self.step = top
                self.progress_at = time.time() if wall is None else wall
                self._steps.append((now, top))
                while self._steps and now - self._steps[0][0] > RATE_WINDOW_S:
                    self._steps.popleft()

    def steps_per_second(self) -> float:
        with self._lock:
            if len(self._steps) < 2:
                return 0.0
            (t0, s0), (t1, s1) = self._steps[0], self._steps[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def snapshot(self) -> tuple[dict[str, tuple[int, float]], int | None]:
        with self._lock:
            return dict(self.values), self.step


def export_keys(configured: Sequence[str], headline: str | None) -> frozenset[str]:
    keys = [k for k in configured if k] or list(DEFAULT_KEYS)
    if headline and headline not in keys:
        keys.insert(0, headline)
    return frozenset(keys[:MAX_KEYS])


class RunCollector:
    """Renders one run's live state as Prometheus metric families."""

    def __init__(self, state: LiveState, labels: dict[str, str]) -> None:
        self.state = state
        self.label_values = [labels.get(name, "") for name in LABELS]

    def collect(self):  # noqa: ANN201
        if self.state.finished:
            return
        values, step = self.state.snapshot()
        lv = self.label_values
        gpu = {name: GaugeMetricFamily(name, doc, labels=[*LABELS, "gpu"]) for name, doc, _ in GPU_FAMILIES.values()}
        for key in [k for k in values if k.startswith(SYSTEM_METRIC_PREFIX)]:
            match = GPU_KEY.fullmatch(key)
            if match and match[2] in GPU_FAMILIES:
                name, _, scale = GPU_FAMILIES[match[2]]
                gpu[name].add_metric([*lv, match[1]], values.pop(key)[1] * scale)
        metric = GaugeMetricFamily("cairn_run_metric", "Latest value of a run's metric.", labels=[*LABELS, "key"])
        for key in sorted(values):
            metric.add_metric([*lv, key], values[key][1])
        yield metric
        metric_step = GaugeMetricFamily("cairn_run_metric_step", "Step of that latest value.", labels=[*LABELS, "key"])
        for key in sorted(values):
            metric_step.add_metric([*lv, key], values[key][0])
        yield metric_step
        if step is not None:
            g = GaugeMetricFamily("cairn_run_step", "Latest step the run has logged.", labels=list(LABELS))
            g.add_metric(lv, step)
            yield g
        g = GaugeMetricFamily("cairn_run_last_progress_timestamp_seconds",
                              "Unix time of the run's last new step (before the first: when its sidecar started).",
                              labels=list(LABELS))
        g.add_metric(lv, self.state.progress_at)
        yield g
        g = GaugeMetricFamily("cairn_run_steps_per_second", f"Steps per second over the last {RATE_WINDOW_S:.0f} s.",
                              labels=list(LABELS))
        g.add_metric(lv, self.state.steps_per_second())
        yield g
        g = GaugeMetricFamily("cairn_run_ingest_backlog_bytes", "Bytes written by the run but not yet in the store.",
                              labels=list(LABELS))
        g.add_metric(lv, self.state.backlog_bytes)
        yield g
        last = self.state.last_commit
        g = GaugeMetricFamily("cairn_run_ingest_lag_seconds",
                              "Seconds since the last commit to the store while lines wait (0 when caught up).",
                              labels=list(LABELS))
        g.add_metric(lv, 0.0 if self.state.backlog_bytes == 0 or last is None else max(0.0, time.time() - last))
        yield g
        c = CounterMetricFamily("cairn_run_rejected_lines", "Lines skipped as malformed, by reason.",
                                labels=[*LABELS, "reason"])
        for reason, n in sorted(self.state.rejected.items()):
            c.add_metric([*lv, reason], n)
        yield c
        c = CounterMetricFamily("cairn_run_skipped_files",
                                "Files under artifacts/ or checkpoints/ not uploaded (not regular files), by reason.",
                                labels=[*LABELS, "reason"])
        for reason, n in sorted(self.state.skipped_files.items()):
            c.add_metric([*lv, reason], n)
        yield c
        yield from gpu.values()


def serve(state: LiveState, labels: dict[str, str], port: int, addr: str = "0.0.0.0") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(state, labels))
    start_http_server(port, addr=addr, registry=registry)
    return registry
