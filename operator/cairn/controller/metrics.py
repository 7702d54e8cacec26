"""The operator's own Prometheus metrics, served on ``/metrics``."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


class PhaseCollector:
    """TrainingRuns by phase, from the last phase the operator saw for each of them."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, phase: str) -> None:
        with self._lock:
            self._phases[uid] = phase

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    def collect(self):  # noqa: ANN201
        with self._lock:
            phases = list(self._phases.values())
        g = GaugeMetricFamily("cairn_trainingruns", "TrainingRuns known to the operator, by phase.", labels=["phase"])
        for p in PHASES:
            g.add_metric([p], phases.count(p))
        yield g


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
        self.gpu_seconds = Counter("cairn_gpu_seconds", "GPU-seconds used by finished training pods.",
                                   ["namespace"], registry=self.registry)

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
