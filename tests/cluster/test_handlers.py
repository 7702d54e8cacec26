"""The handlers against the real API server and a real PostgreSQL: what each event costs and what it
leaves behind in the cluster, the store and the operator's bookkeeping.

The handlers are called directly, as Kopf would call them, on real TrainingRuns. Their pods ask for
a node label no node has, so the scheduler leaves them alone; the test binds each pod to a Node
object of its own that no kubelet runs and writes the pod's status through the API, as a kubelet
would (``tests.support.fake_kubelet``). The API clients and the store are wrapped only to count the
calls made through them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cairn.api import GROUP, PLURAL, VERSION
from cairn.controller import handlers as H
from cairn.controller.kube import CoreApi
from cairn.controller.settings import OperatorSettings
from cairn.podspec import SIDECAR, pod_name, termination_grace_period_s
from cairn.rundir import METRICS_DIR, RunStatus
from cairn.store import TrackingStore
from cairn.store.entities import IngestBatch, MetricPoint
from tests.support.cluster import wait_until
from tests.support.fake_kubelet import GPU_PRODUCT, UNSCHEDULED_LABEL, Cluster, stopped

pytestmark = pytest.mark.cluster


class Counting:
    """Forwards every call to ``target`` and counts the calls by method name."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.target, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


@pytest.fixture
def tracking_store(store_urls) -> TrackingStore:
    return TrackingStore(store_urls[0])


@pytest.fixture
def make_operator(api_client, store_urls) -> Iterator:
    """``make()`` -> an Operator on the real clients and store, each wrapped in :class:`Counting`."""
    made: list[H.Operator] = []

    def make() -> H.Operator:
        op = H.Operator(OperatorSettings(), Counting(CoreApi(api_client)),
                        Counting(client.CustomObjectsApi(api_client)), Counting(TrackingStore(store_urls[0])))
        made.append(op)
        return op
    yield make
    for op in made:
        op.stop()


def created(op: H.Operator, manifest: dict) -> None:
    """What Kopf calls when a TrainingRun is created."""
    meta = manifest["metadata"]
    H.on_trainingrun(body=manifest, namespace=meta["namespace"], name=meta["name"], memo={"operator": op})


def first_pod(manifest: dict) -> str:
    return pod_name(manifest["metadata"]["name"], manifest["metadata"]["uid"], 1)


def run_to_success(op: H.Operator, cluster: Cluster, name: str, **spec: Any) -> dict:
    """Create the TrainingRun and carry it through its pod's life to Succeeded; the TrainingRun after."""
    manifest = cluster.create_trainingrun(name, **spec)
    created(op, manifest)
    pod = first_pod(manifest)
    H.reconcile_trainingrun(op, cluster.namespace, name, seen_pod=(pod, cluster.start_pod(pod)))
    H.reconcile_trainingrun(op, cluster.namespace, name,
                            seen_pod=(pod, cluster.end_pod(pod, "Succeeded", 0, "Completed")))
    tr = cluster.trainingrun(name)
    assert tr["status"]["phase"] == "Succeeded"
    return tr


def test_a_new_trainingrun_gets_its_pod_and_no_requeue(make_operator, cluster, tracking_store):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist")
    created(op, manifest)
    assert cluster.pod_names() == [first_pod(manifest)]
    assert cluster.trainingrun("mnist")["status"]["attempts"] == 1
    assert tracking_store.run_status(manifest["metadata"]["uid"]) == RunStatus.PENDING
    assert op.requeues.pending() == {} and len(op.running) == 0 and len(op.locks) == 0


def test_a_pod_event_is_used_as_is_and_a_running_run_is_tracked(make_operator, cluster, tracking_store):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist", resources={"gpus": 1})
    uid, pod = manifest["metadata"]["uid"], first_pod(manifest)
    created(op, manifest)
    running = cluster.start_pod(pod)
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, running))
    status = cluster.trainingrun("mnist")["status"]
    assert op.core.calls["read_namespaced_pod"] == 0
    assert (status["phase"], status["nodeName"], status["gpuProduct"]) == ("Running", cluster.node, GPU_PRODUCT)
    assert [r.name for r in op.running.snapshot()] == ["mnist"]
    assert tracking_store.run_status(uid) == RunStatus.RUNNING

    # What the sidecar committed while the trainer ran.
    point = MetricPoint("acc", 40, int(time.time() * 1000), 0.9)
    tracking_store.ingest_batch(uid, f"{METRICS_DIR}/train.jsonl", IngestBatch(metrics=[point]), offset=64, lines=1)
    done = cluster.end_pod(pod, "Succeeded", 0, "Completed")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, done))
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["step"], status["metric"]) == ("Succeeded", 40, "0.9")
    assert op.core.calls["read_namespaced_pod"] == 0 and op.store.calls["latest_metrics"] == 1
    assert len(op.running) == 0 and op.requeues.pending() == {}
    run = tracking_store.get_run(uid)
    assert (run.summary.status, run.summary.exit_code) == ("FINISHED", 0)


def test_a_deleted_pod_is_not_read_again_and_is_replaced(make_operator, cluster):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist")
    pod = first_pod(manifest)
    created(op, manifest)
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, cluster.start_pod(pod)))
    cluster.core.delete_namespaced_pod(pod, cluster.namespace, grace_period_seconds=0)
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, None))
    assert op.core.calls["read_namespaced_pod"] == 0
    assert cluster.pod_names() == [pod_name("mnist", manifest["metadata"]["uid"], 2)]
    assert cluster.trainingrun("mnist")["status"]["attempts"] == 2
    assert "PodLost" in cluster.event_reasons("mnist")


def test_a_retry_is_requeued_for_its_backoff(make_operator, cluster):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist", backoffLimit=2)
    pod = first_pod(manifest)
    created(op, manifest)
    cluster.start_pod(pod)
    failed = cluster.end_pod(pod, "Failed", 2, "Error")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, failed))
    (key, due), = op.requeues.pending().items()
    assert key == f"{cluster.namespace}/mnist" and due - time.monotonic() == pytest.approx(5, abs=1)
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["failures"], status["exitCode"]) == ("Pending", 1, 2)
    assert cluster.pod_names() == [pod]  # the next attempt waits out the backoff


def test_finished_runs_cost_nothing_unless_a_ttl_is_left(make_operator, cluster):
    done = run_to_success(make_operator(), cluster, "mnist")
    restarted = make_operator()  # the operator restarts and resumes every TrainingRun
    created(restarted, done)
    calls = restarted.core.calls + restarted.custom.calls + restarted.store.calls
    assert calls == Counter() and restarted.requeues.pending() == {}

    with_ttl = run_to_success(make_operator(), cluster, "mnist-ttl", ttlSecondsAfterFinished=60)
    finished_at = dt.datetime.fromisoformat(with_ttl["status"]["completionTime"].replace("Z", "+00:00"))
    restarted = make_operator()
    created(restarted, with_ttl)
    (due,) = restarted.requeues.pending().values()
    left = (finished_at + dt.timedelta(seconds=60) - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert due - time.monotonic() == pytest.approx(left, abs=1.5)
    assert cluster.trainingrun("mnist-ttl") is not None


def test_a_deleted_finished_run_is_forgotten(make_operator, cluster):
    op = make_operator()
    done = run_to_success(op, cluster, "mnist", ttlSecondsAfterFinished=0)
    H.reconcile_trainingrun(op, cluster.namespace, "mnist")  # the TTL has run out: the TrainingRun goes
    assert cluster.trainingrun("mnist") is None
    assert 'cairn_trainingruns{phase="Succeeded"} 1.0' in generate_latest(op.metrics.registry).decode()
    meta = done["metadata"]
    H.on_trainingrun_event(type="DELETED", uid=meta["uid"], namespace=cluster.namespace, name="mnist",
                           memo={"operator": op})
    assert 'cairn_trainingruns{phase="Succeeded"} 0.0' in generate_latest(op.metrics.registry).decode()


def test_store_writes_wait_for_the_store_and_land_when_it_returns(make_operator, cluster, cluster_postgres,
                                                                  tracking_store):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist")
    uid, pod = manifest["metadata"]["uid"], first_pod(manifest)
    with stopped(cluster_postgres):
        created(op, manifest)  # the run is scheduled without the store
        assert cluster.pod_names() == [pod]
        H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, cluster.start_pod(pod)))
        assert cluster.trainingrun("mnist")["status"]["phase"] == "Running"  # the cluster side went on
        assert (op.store_writes.up, op.store_writes.pending()) == (False, 1)
        assert op.requeues.pending() == {}  # nothing polls the cluster for the store's sake

    assert op.store_writes.flush()
    assert tracking_store.run_status(uid) == RunStatus.RUNNING


def test_deletion_while_the_store_is_down_is_quick_and_the_kill_is_recorded_after(make_operator, cluster,
                                                                                 cluster_postgres, tracking_store):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist")
    uid, pod = manifest["metadata"]["uid"], first_pod(manifest)
    created(op, manifest)
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, cluster.start_pod(pod)))
    running = cluster.trainingrun("mnist")
    with stopped(cluster_postgres):
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "mnist")
        started = time.monotonic()
        H.on_delete(body=running, namespace=cluster.namespace, name="mnist", uid=uid, memo={"operator": op})
        assert time.monotonic() - started < 12  # one refused connection at most, never a wait for the store
        assert cluster.core.read_namespaced_pod(pod, cluster.namespace).metadata.deletion_timestamp is not None
        assert op.store_writes.pending() == 1 and op.requeues.pending() == {}

    assert op.store_writes.flush()
    run = tracking_store.get_run(uid)
    assert (run.summary.status, run.cluster.reason) == ("KILLED", "TrainingRun deleted")


def test_deleting_a_run_the_store_never_saw_records_it_killed(make_operator, cluster, tracking_store):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist")
    uid = manifest["metadata"]["uid"]
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "mnist")
    H.on_delete(body=manifest, namespace=cluster.namespace, name="mnist", uid=uid, memo={"operator": op})
    assert op.store_writes.pending() == 0
    assert tracking_store.run_status(uid) == RunStatus.KILLED


def test_suspend_and_delete_give_the_pod_its_own_grace_period(make_operator, cluster):
    op = make_operator()
    grace = termination_grace_period_s(op.settings.pod)
    suspended = cluster.create_trainingrun("suspended")
    deleted = cluster.create_trainingrun("deleted")
    for manifest in (suspended, deleted):
        created(op, manifest)
        pod = first_pod(manifest)
        H.reconcile_trainingrun(op, cluster.namespace, manifest["metadata"]["name"],
                                seen_pod=(pod, cluster.start_pod(pod)))
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "suspended",
                                                  {"spec": {"suspend": True}})
    H.reconcile_trainingrun(op, cluster.namespace, "suspended")
    H.on_delete(body=cluster.trainingrun("deleted"), namespace=cluster.namespace, name="deleted",
                uid=deleted["metadata"]["uid"], memo={"operator": op})
    for manifest in (suspended, deleted):
        meta = cluster.core.read_namespaced_pod(first_pod(manifest), cluster.namespace).metadata
        assert meta.deletion_timestamp is not None
        assert meta.deletion_grace_period_seconds == grace > op.settings.pod.drain_timeout_s


def test_a_trainingrun_created_again_under_its_name_leaves_the_old_pod_alone(make_operator, cluster):
    op = make_operator()
    old = cluster.create_trainingrun("mnist")
    created(op, old)
    old_pod = first_pod(old)
    cluster.start_pod(old_pod)
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "mnist")
    wait_until(lambda: cluster.trainingrun("mnist") is None, 30, "the old TrainingRun to go")

    new = cluster.create_trainingrun("mnist")
    created(op, new)
    new_pod = first_pod(new)
    assert new_pod != old_pod
    owner = cluster.core.read_namespaced_pod(new_pod, cluster.namespace).metadata.owner_references[0]
    assert owner.uid == new["metadata"]["uid"]
    # The old pod ends well: that is no news for the new TrainingRun.
    done = cluster.end_pod(old_pod, "Succeeded", 0, "Completed")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(old_pod, done))
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["podName"], status["attempts"]) == ("Pending", new_pod, 1)


def test_a_pod_name_held_by_a_pod_of_another_owner_is_not_adopted(make_operator, cluster):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist")
    pod = first_pod(manifest)
    cluster.core.create_namespaced_pod(cluster.namespace, {
        "metadata": {"name": pod},
        "spec": {"containers": [{"name": "squatter", "image": "cairn:dev"}],
                 "nodeSelector": {UNSCHEDULED_LABEL: "nowhere"}}})
    created(op, manifest)
    status = cluster.trainingrun("mnist")["status"]
    assert (status.get("attempts"), status["reason"]) == (None, "PodNameTaken")
    assert pod in status["message"] and "PodNameTaken" in cluster.event_reasons("mnist")
    (due,) = op.requeues.pending().values()
    assert due - time.monotonic() == pytest.approx(H.POD_NAME_TAKEN_RETRY_S, abs=1)

    cluster.core.delete_namespaced_pod(pod, cluster.namespace, grace_period_seconds=0)
    wait_until(lambda: pod not in cluster.pod_names(), 30, f"pod {pod} to go")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist")
    owner = cluster.core.read_namespaced_pod(pod, cluster.namespace).metadata.owner_references[0]
    assert owner.uid == manifest["metadata"]["uid"]
    assert cluster.trainingrun("mnist")["status"]["attempts"] == 1


def conditions(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def new_pod(cluster: Cluster, known: tuple[str, ...] = ()) -> str:
    """The one pod not in ``known``."""
    (pod,) = set(cluster.pod_names()) - set(known)
    return pod


def test_a_stuck_pod_is_shown_at_once_and_fails_the_run_after_its_pending_deadline(make_operator, cluster,
                                                                                   tracking_store):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist", image="registry.invalid/trainer:nope", pendingDeadlineSeconds=3)
    uid = manifest["metadata"]["uid"]
    created(op, manifest)
    pod = new_pod(cluster)
    cluster.bind(pod)
    stuck = cluster.show_waiting(pod, "ImagePullBackOff", 'Back-off pulling image "registry.invalid/trainer:nope"')
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, stuck))
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["reason"], status["runId"]) == ("Pending", "ImagePullBackOff", uid)
    assert "check spec.image (registry.invalid/trainer:nope)" in status["message"]
    assert conditions(status) == {"Ready": "False", "Reconciling": "False", "Stalled": "True", "Scheduled": "True"}
    assert cluster.event_reasons("mnist").count("ImagePullBackOff") == 1
    (due,) = op.requeues.pending().values()
    assert due - time.monotonic() == pytest.approx(3, abs=1.5)

    # The kubelet's next try: the same trouble, no second Event.
    again = cluster.show_waiting(pod, "ErrImagePull", "manifest unknown")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, again))
    assert cluster.trainingrun("mnist")["status"]["reason"] == "ErrImagePull"
    assert [r for r in cluster.event_reasons("mnist") if r in ("ImagePullBackOff", "ErrImagePull")] == \
        ["ImagePullBackOff"]

    time.sleep(4)  # past pendingDeadlineSeconds; what the requeue would call
    H.reconcile_trainingrun(op, cluster.namespace, "mnist")
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ErrImagePull")
    assert status["message"].endswith("(stuck for 3s, spec.pendingDeadlineSeconds)")
    assert cluster.pod_deleted(pod) and tracking_store.run_status(uid) == RunStatus.FAILED


def test_a_missing_database_secret_is_named(make_operator, cluster):
    op = make_operator()
    created(op, cluster.create_trainingrun("mnist"))
    pod = new_pod(cluster)
    cluster.bind(pod)
    waiting = cluster.show_waiting(pod, "CreateContainerConfigError", 'secret "cairn-database" not found',
                                   container=SIDECAR)
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, waiting))
    status = cluster.trainingrun("mnist")["status"]
    assert status["reason"] == "CreateContainerConfigError"
    assert f"Secret in namespace {cluster.namespace}" in status["message"]
    assert 'secret "cairn-database" not found' in status["message"]
    assert "CreateContainerConfigError" in cluster.event_reasons("mnist")


def test_a_command_that_cannot_start_fails_at_once_with_backoff_limit_zero(make_operator, cluster):
    op = make_operator()
    created(op, cluster.create_trainingrun("mnist", backoffLimit=0))
    pod = new_pod(cluster)
    cluster.start_pod(pod)
    failed = cluster.end_pod(pod, "Failed", 128, "StartError")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, failed))
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["reason"], status["failures"]) == ("Failed", "StartError", 1)
    assert "spec.command" in status["message"] and conditions(status)["Stalled"] == "True"
    assert cluster.pod_names() == [pod] and op.requeues.pending() == {}
    # The failed run's series (alert CairnRunFailed) carries its completion time, and goes with the TrainingRun.
    failed_at = dt.datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00")).timestamp()
    assert failed_run_series(op) == [({"namespace": cluster.namespace, "trainingrun": "mnist", "reason": "StartError"},
                                      failed_at)]
    attempts = {"namespace": cluster.namespace, "trainingrun": "mnist"}
    assert op.metrics.registry.get_sample_value("cairn_trainingrun_attempts", attempts) == status["attempts"] == 1
    H.on_trainingrun_event(type="DELETED", uid=cluster.trainingrun("mnist")["metadata"]["uid"],
                           namespace=cluster.namespace, name="mnist", memo={"operator": op})
    assert failed_run_series(op) == []
    assert op.metrics.registry.get_sample_value("cairn_trainingrun_attempts", attempts) is None


def failed_run_series(op: H.Operator) -> list[tuple[dict, float]]:
    text = generate_latest(op.metrics.registry).decode()
    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text)
            if family.name == "cairn_trainingrun_failed_timestamp_seconds" for sample in family.samples]


def test_infrastructure_retries_stop_at_their_limit(make_operator, cluster):
    op = make_operator()
    created(op, cluster.create_trainingrun("mnist", infrastructureRetryLimit=1))
    first = new_pod(cluster)
    cluster.start_pod(first)
    evicted = cluster.evict_pod(first, "The node was low on resource: ephemeral-storage.")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(first, evicted))
    status = cluster.trainingrun("mnist")["status"]
    assert (status["infrastructureRetries"], "failures" in status) == (1, False)
    time.sleep(5.5)  # the retry's backoff; what the requeue would call
    H.reconcile_trainingrun(op, cluster.namespace, "mnist")
    second = new_pod(cluster, known=(first,))
    assert cluster.trainingrun("mnist")["status"]["attempts"] == 2

    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(second, cluster.start_pod(second)))
    cluster.core.delete_namespaced_pod(second, cluster.namespace, grace_period_seconds=0)  # the pod is lost
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(second, None))
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["reason"], status["infrastructureRetries"]) == ("Failed", "Infrastructure", 2)
    assert status["message"] == f"pod {second} disappeared; infrastructureRetryLimit 1 reached"
    assert status["attempts"] == 2 and sorted(cluster.pod_names()) == [first]


def test_gpu_seconds_grow_while_the_pod_runs(make_operator, cluster):
    op = make_operator()
    created(op, cluster.create_trainingrun("mnist", resources={"gpus": 2}))
    pod = new_pod(cluster)
    began = time.time()
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=(pod, cluster.start_pod(pod)))

    def gpu_seconds() -> float:
        return op.metrics.registry.get_sample_value("cairn_gpu_seconds_total", {"namespace": cluster.namespace}) or 0

    time.sleep(2)
    H.reconcile_trainingrun(op, cluster.namespace, "mnist")  # a reconcile of the running pod
    assert cluster.trainingrun("mnist")["status"]["phase"] == "Running"
    counted = gpu_seconds()
    assert 2 * 2 <= counted <= 2 * (time.time() - began + 1)  # startTime has whole seconds
    time.sleep(1)
    op.metrics.gpu_seconds.tick(dt.datetime.now(dt.timezone.utc))  # the periodic count
    assert gpu_seconds() >= counted + 2 * 1
