"""The operator's own Prometheus metrics, served on ``/metrics``."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


@dataclass(frozen=True)
class _Seen:
    phase: str
    namespace: str
    name: str
    reason: str
    failed_at: float | None  # Unix time, for a run in phase Failed
    attempts: int


class PhaseCollector:
    """TrainingRuns by phase, from the last phase the operator saw for each of them, when each TrainingRun
    in phase Failed failed (one series per such run, until it is deleted; alerts on failed runs), and each
    TrainingRun's attempts (pods created: the first, retries and resumes after a suspend)."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, phase: str, namespace: str, name: str, reason: str = "",
            failed_at: dt.datetime | None = None, attempts: int = 0) -> None:
        """``failed_at`` is when a run in phase Failed finished; ignored in other phases."""
        failed_ts = failed_at.timestamp() if phase == "Failed" and failed_at is not None else None
        with self._lock:
            self._seen[uid] = _Seen(phase, namespace, name, reason, failed_ts, attempts)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._seen.pop(uid, None)

    def collect(self):  # noqa: ANN201
        with self._lock:
            seen = list(self._seen.values())
        g = GaugeMetricFamily("cairn_trainingruns", "TrainingRuns known to the operator, by phase.", labels=["phase"])
        phases = [s.phase for s in seen]
        for p in PHASES:
            g.add_metric([p], phases.count(p))
        yield g
        failed = GaugeMetricFamily("cairn_trainingrun_failed_timestamp_seconds",
                                   "When each TrainingRun in phase Failed failed (Unix time), until it is deleted.",
                                   labels=["namespace", "trainingrun", "reason"])
        for s in seen:
            if s.failed_at is not None:
                failed.add_metric([s.namespace, s.name, s.reason], s.failed_at)
        yield failed
        attempts = GaugeMetricFamily("cairn_trainingrun_attempts",
                                     "Pods created for each TrainingRun: the first, retries and resumes.",
                                     labels=["namespace", "trainingrun"])
        for s in seen:
            attempts.add_metric([s.namespace, s.name], s.attempts)
        yield attempts


@dataclass
class _Counting:
    namespace: str
    gpus: int
    counted_until: dt.datetime


class GpuSeconds:
    """``cairn_gpu_seconds_total{namespace}`` grows while pods run, not only when they end: each reconcile
    of a running pod and each periodic :meth:`tick` add the GPU-seconds since they were last counted, and a
    pod that stops adds its last stretch. One entry per running pod with GPUs. Time before this process
    started is not counted again (the previous process counted it into a counter Prometheus has seen reset)."""

    def __init__(self, counter: Counter, process_start: dt.datetime) -> None:
        self._counter, self._process_start = counter, process_start
        self._runs: dict[str, _Counting] = {}
        self._lock = threading.Lock()

    def running(self, uid: str, namespace: str, gpus: int, since: dt.datetime, now: dt.datetime) -> None:
        """The pod of run ``uid`` holds ``gpus`` GPUs, running since ``since``."""
        if gpus <= 0:
            return
        with self._lock:
            counting = self._runs.setdefault(uid, _Counting(namespace, gpus, max(since, self._process_start)))
            self._count(counting, now)

    def stopped(self, uid: str, namespace: str, gpus: int, since: dt.datetime | None, now: dt.datetime) -> None:
        """The pod of run ``uid`` no longer runs; ``since`` is when it started, for a pod that ended unseen."""
        with self._lock:
            counting = self._runs.pop(uid, None)
            if counting is None and since is not None and gpus > 0:
                counting = _Counting(namespace, gpus, max(since, self._process_start))
            if counting is not None:
                self._count(counting, now)

    def tick(self, now: dt.datetime) -> None:
        with self._lock:
            for counting in self._runs.values():
                self._count(counting, now)

    def forget(self, uid: str, now: dt.datetime) -> None:
        """The TrainingRun is gone (its pods are being deleted): count up to now and drop it."""
        with self._lock:
            counting = self._runs.pop(uid, None)
            if counting is not None:
                self._count(counting, now)

    def _count(self, counting: _Counting, now: dt.datetime) -> None:
        seconds = (now - counting.counted_until).total_seconds()
        if seconds > 0:
            self._counter.labels(counting.namespace).inc(counting.gpus * seconds)
            counting.counted_until = now

    def __len__(self) -> int:
        return len(self._runs)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, process_start: dt.datetime | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.phases = PhaseCollector()
        self.registry.register(self.phases)
        self.reconcile_seconds = Histogram(
            "cairn_reconcile_duration_seconds", "Time spent reconciling one TrainingRun.",
            registry=self.registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.apply_to_running_seconds = Histogram(
            "cairn_apply_to_running_seconds", "From TrainingRun creation to its first pod running.",
            registry=self.registry, buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
        self.retries = Counter("cairn_retries", "Pods recreated after a failure, by failure reason.",
                               ["reason"], registry=self.registry)
        self.gpu_seconds = GpuSeconds(
            Counter("cairn_gpu_seconds", "GPU-seconds held by training pods, counted while they run.",
                    ["namespace"], registry=self.registry),
            process_start or dt.datetime.now(dt.timezone.utc))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


class StoreWritesCollector:
    """Whether the store answers, how many runs wait to be written and how many writes were dropped."""

    def __init__(self, writes) -> None:  # noqa: ANN001 - a runtime.StoreWrites
        self._writes = writes

    def collect(self):  # noqa: ANN201
        up = GaugeMetricFamily("cairn_store_up", "1 while the operator reaches the store, 0 while it does not.")
        up.add_metric([], 1.0 if self._writes.up else 0.0)
        yield up
        pending = GaugeMetricFamily("cairn_store_pending_writes", "Runs whose store writes wait for the store.")
        pending.add_metric([], self._writes.pending())
        yield pending
        dropped = CounterMetricFamily("cairn_store_dropped_writes", "Store writes given up, by reason "
                                      "(overflow: too many runs waited; refused: the store rejected it).",
                                      labels=["reason"])
        for reason, count in sorted(self._writes.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
