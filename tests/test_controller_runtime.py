"""The operator's bookkeeping: requeue times, locks, node labels and status metrics stay bounded."""

from __future__ import annotations

import datetime as dt
import threading
import time
from types import SimpleNamespace

from cairn.controller.metrics import OperatorMetrics
from cairn.controller.runtime import KeyedLocks, NodeLabelCache, Requeuer, RunningRuns, RunRef, metrics_patch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requeuer_keeps_one_time_per_key_the_newest():
    clock = Clock()
    q = Requeuer(lambda key: None, clock=clock)
    q.schedule("ns/a", 30)
    q.schedule("ns/a", 5)  # the newest plan wins, earlier or later
    q.schedule("ns/b", 10)
    assert q.pending() == {"ns/a": 5, "ns/b": 10}
    clock.now = 6
    assert q.pop_due() == ["ns/a"] and q.pending() == {"ns/b": 10}
    q.schedule("ns/b", 100)
    clock.now = 50
    assert q.pop_due() == []
    q.cancel("ns/b")
    clock.now = 1000
    assert q.pop_due() == [] and q.pending() == {}


def test_requeuer_heap_does_not_grow_with_reschedules():
    q = Requeuer(lambda key: None, clock=Clock())
    for i in range(10_000):
        q.schedule(f"ns/{i % 10}", i)
    assert len(q.pending()) == 10 and len(q._heap) <= 2 * 10 + 65


def test_requeuer_thread_calls_back_when_due():
    called = []
    done = threading.Event()
    q = Requeuer(lambda key: (called.append(key), done.set()))
    q.start()
    try:
        q.schedule("ns/later", 30)
        q.schedule("ns/soon", 0.05)  # scheduled after a longer wait began: still on time
        assert done.wait(5)
        assert called == ["ns/soon"] and q.pending() == {"ns/later": q.pending()["ns/later"]}
    finally:
        q.stop()


def test_keyed_locks_serialise_a_key_and_are_dropped_when_released():
    locks = KeyedLocks()
    order = []

    def second() -> None:
        with locks.hold("ns/a"):
            order.append("second")
    with locks.hold("ns/a"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.05)
        order.append("first")
        with locks.hold("ns/b"):
            assert len(locks) == 2
    t.join(5)
    assert order == ["first", "second"] and len(locks) == 0


def test_node_labels_are_cached_for_a_while_and_capped():
    clock, reads = Clock(), []

    def fetch(node: str) -> dict[str, str]:
        reads.append(node)
        return {"n": node}
    cache = NodeLabelCache(fetch, ttl_s=60, max_nodes=2, clock=clock)
    assert cache.get("a") == {"n": "a"} and cache.get("a") == {"n": "a"} and reads == ["a"]
    assert cache.get(None) is None
    cache.get("b")
    cache.get("c")
    assert len(cache) == 2
    clock.now = 61
    cache.get("c")
    assert reads == ["a", "b", "c", "c"]


def test_running_runs_copy_only_what_changed_and_forget():
    runs = RunningRuns()
    runs.track(RunRef("u1", "ns", "a", "acc"))
    assert runs.is_new("u1", {"step": 1}) and not runs.is_new("u1", {"step": 1})
    assert runs.is_new("u1", {"step": 2})
    runs.forget("u1")
    assert len(runs) == 0 and runs._copied == {}
    assert runs.is_new("u9", {"step": 1}) and runs._copied == {}  # untracked runs leave nothing behind


def test_metrics_patch():
    latest = {"loss": SimpleNamespace(step=7, value=0.25), "acc": SimpleNamespace(step=6, value=0.912345678)}
    assert metrics_patch(latest, "acc") == {"step": 7, "metric": "0.912346"}
    assert metrics_patch(latest, None) == {"step": 7}
    assert metrics_patch(latest, "f1") == {"step": 7, "metric": None}
    assert metrics_patch({}, "acc") is None


def test_heap_limits_and_trimming_are_accepted_by_glibc_or_skipped_elsewhere():
    import platform

    from cairn.controller import malloc

    on_glibc = platform.libc_ver()[0] == "glibc"
    assert malloc.limit_heap_growth(arenas=2) is on_glibc
    assert isinstance(malloc.release_free_memory(), bool)


def gpu_seconds(metrics: OperatorMetrics, namespace: str) -> float | None:
    return metrics.registry.get_sample_value("cairn_gpu_seconds_total", {"namespace": namespace})


def test_gpu_seconds_grow_while_a_pod_runs_and_stop_with_it():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    metrics = OperatorMetrics(process_start=t0)
    meter = metrics.gpu_seconds
    meter.running("u1", "ml", 2, t0 + dt.timedelta(seconds=10), t0 + dt.timedelta(seconds=70))
    assert gpu_seconds(metrics, "ml") == 120  # 2 GPUs for the minute since the pod started
    meter.tick(t0 + dt.timedelta(seconds=100))
    assert gpu_seconds(metrics, "ml") == 180
    meter.running("u1", "ml", 2, t0 + dt.timedelta(seconds=10), t0 + dt.timedelta(seconds=100))  # nothing new
    assert gpu_seconds(metrics, "ml") == 180
    meter.stopped("u1", "ml", 2, t0 + dt.timedelta(seconds=10), t0 + dt.timedelta(seconds=110))
    assert gpu_seconds(metrics, "ml") == 200 and len(meter) == 0
    meter.tick(t0 + dt.timedelta(seconds=1000))
    assert gpu_seconds(metrics, "ml") == 200


def test_gpu_seconds_before_the_operator_started_are_not_counted_again():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    metrics = OperatorMetrics(process_start=t0)
    # A pod that ran for an hour under the previous operator process, seen running and seen ended unseen.
    metrics.gpu_seconds.running("u1", "ml", 1, t0 - dt.timedelta(hours=1), t0 + dt.timedelta(seconds=30))
    metrics.gpu_seconds.stopped("u2", "cv", 4, t0 - dt.timedelta(hours=1), t0 + dt.timedelta(seconds=5))
    metrics.gpu_seconds.stopped("u3", "cv", 4, None, t0 + dt.timedelta(seconds=5))  # never ran: nothing
    metrics.gpu_seconds.running("u4", "cpu", 0, t0, t0 + dt.timedelta(seconds=30))  # no GPUs: not kept
    assert (gpu_seconds(metrics, "ml"), gpu_seconds(metrics, "cv")) == (30, 20)
    assert len(metrics.gpu_seconds) == 1
    metrics.gpu_seconds.forget("u1", t0 + dt.timedelta(seconds=40))
    assert gpu_seconds(metrics, "ml") == 40 and len(metrics.gpu_seconds) == 0


def test_failed_runs_have_their_failure_time_until_deleted_and_phases_are_counted():
    metrics = OperatorMetrics()
    failed_at = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)
    metrics.phases.set("u1", "Running", "ml", "digits")
    metrics.phases.set("u2", "Failed", "cv", "resnet", "OOMKilled", failed_at)
    metrics.phases.set("u3", "Succeeded", "ml", "done", "", failed_at)  # not failed: no failure time

    def failed(namespace: str, name: str, reason: str) -> float | None:
        return metrics.registry.get_sample_value("cairn_trainingrun_failed_timestamp_seconds",
                                                 {"namespace": namespace, "trainingrun": name, "reason": reason})

    assert failed("cv", "resnet", "OOMKilled") == failed_at.timestamp()
    assert failed("ml", "done", "") is None
    assert [metrics.registry.get_sample_value("cairn_trainingruns", {"phase": p})
            for p in ("Running", "Failed", "Succeeded")] == [1, 1, 1]
    metrics.phases.set("u1", "Failed", "ml", "digits", "Error", failed_at)
    assert failed("ml", "digits", "Error") == failed_at.timestamp()
    metrics.phases.forget("u2")
    assert failed("cv", "resnet", "OOMKilled") is None
    assert metrics.registry.get_sample_value("cairn_trainingruns", {"phase": "Failed"}) == 1


def test_each_runs_attempts_are_exported_until_it_is_deleted():
    metrics = OperatorMetrics()
    metrics.phases.set("u1", "Running", "ml", "digits", attempts=1)
    metrics.phases.set("u1", "Running", "ml", "digits", attempts=3)  # two retries or resumes later

    def attempts(name: str) -> float | None:
        return metrics.registry.get_sample_value("cairn_trainingrun_attempts", {"namespace": "ml", "trainingrun": name})

    assert attempts("digits") == 3
    metrics.phases.forget("u1")
    assert attempts("digits") is None
