"""The handlers against the real API server and a real PostgreSQL: what each event costs and what it
leaves behind in the cluster, the store and the operator's bookkeeping.

The handlers are called directly, as Kopf would call them, on real TrainingRuns. Their pods ask for
a node label no node has, so the scheduler leaves them alone; the test binds each pod to a Node
object of its own that no kubelet runs and writes the pod's status through the API, as a kubelet
would. The API clients and the store are wrapped only to count the calls made through them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from cairn.api import GROUP, PLURAL, VERSION
from cairn.api.types import GPU_PRODUCT_LABEL
from cairn.controller import handlers as H
from cairn.controller.kube import CoreApi
from cairn.controller.settings import OperatorSettings
from cairn.podspec import SIDECAR, TRAINER, pod_name
from cairn.rundir import METRICS_DIR, RunStatus
from cairn.store import TrackingStore
from cairn.store.entities import IngestBatch, MetricPoint
from tests.support.cluster_operator import install_crd
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.cluster

UNSCHEDULED_LABEL = "cairn.dev/handler-test"  # no node has it: the scheduler never places these pods
GPU_PRODUCT = "Cairn-Test-GPU"


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


class Cluster:
    """TrainingRuns and their pods in one namespace, the pods bound to a node no kubelet runs."""

    def __init__(self, api: client.ApiClient, namespace: str, node: str) -> None:
        self.api, self.namespace, self.node = api, namespace, node
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

    def create_trainingrun(self, name: str, **spec: Any) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name},
                "spec": {"image": "cairn:dev", "command": ["python3", "train.py"],
                         "nodeSelector": {UNSCHEDULED_LABEL: "nowhere"},
                         "tracking": {"headlineMetric": "acc"}, **spec}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def trainingrun(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pod_names(self) -> list[str]:
        return sorted(p.metadata.name for p in self.core.list_namespaced_pod(self.namespace).items)

    def start_pod(self, name: str) -> dict:
        """Bind the pod to the test's node and mark its trainer running, as the kubelet would."""
        self.bind(name)
        started = now_text()
        return self._set_pod_status(name, "Running", {"running": {"startedAt": started}}, startTime=started)

    def show_waiting(self, name: str, reason: str, message: str, container: str = TRAINER) -> dict:
        """Show ``container`` of the bound pod waiting on ``reason``, as the kubelet would."""
        waiting = {"waiting": {"reason": reason, "message": message}}
        if container == TRAINER:
            return self._set_pod_status(name, "Pending", waiting)
        init = {"name": container, "image": "cairn:dev", "imageID": "", "ready": False, "restartCount": 0,
                "state": waiting}
        return self._set_pod_status(name, "Pending", {"waiting": {"reason": "PodInitializing"}},
                                    initContainerStatuses=[init])

    def evict_pod(self, name: str, message: str) -> dict:
        state = {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": now_text(), "finishedAt": now_text()}}
        return self._set_pod_status(name, "Failed", state, reason="Evicted", message=message)

    def end_pod(self, name: str, phase: str, exit_code: int, reason: str) -> dict:
        state = {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now_text(),
                                "finishedAt": now_text()}}
        return self._set_pod_status(name, phase, state)

    def bind(self, name: str) -> None:
        binding = client.V1Binding(metadata=client.V1ObjectMeta(name=name),
                                   target=client.V1ObjectReference(kind="Node", name=self.node))
        # The client cannot read a Binding back (its target comes back empty), hence the raw response.
        self.core.create_namespaced_pod_binding(name, self.namespace, binding, _preload_content=False)

    def _set_pod_status(self, name: str, phase: str, trainer_state: dict, **status: Any) -> dict:
        trainer = {"name": TRAINER, "image": "cairn:dev", "imageID": f"sha256:{'ab' * 32}",
                   "ready": "running" in trainer_state, "restartCount": 0, "state": trainer_state}
        body = {"status": {"phase": phase, "containerStatuses": [trainer], **status}}
        pod = self.core.patch_namespaced_pod_status(name, self.namespace, body)
        return self.api.sanitize_for_serialization(pod)  # the body a pod event carries

    def pod_deleted(self, name: str) -> bool:
        """Deleted or being deleted (no kubelet confirms a graceful deletion on the test's node)."""
        try:
            return self.core.read_namespaced_pod(name, self.namespace).metadata.deletion_timestamp is not None
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise

    def event_reasons(self, trainingrun: str) -> list[str]:
        events = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={trainingrun}")
        return [e.reason for e in events.items]


@contextlib.contextmanager
def stopped(server: PostgresServer) -> Iterator[None]:
    """The store's PostgreSQL server down for the block, up again after it."""
    server.stop()
    try:
        yield
    finally:
        server.start()


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def api_client(kubeconfig, kubectl) -> client.ApiClient:
    install_crd(kubectl)
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def test_node(api_client) -> Iterator[str]:
    """A Node object without a kubelet, carrying a GPU product label."""
    core = client.CoreV1Api(api_client)
    name = f"cairn-handlers-{uuid.uuid4().hex[:8]}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels={GPU_PRODUCT_LABEL: GPU_PRODUCT})))
    yield name
    core.delete_node(name)


@pytest.fixture
def cluster(api_client, namespace, test_node) -> Iterator[Cluster]:
    cluster = Cluster(api_client, namespace, test_node)
    yield cluster
    # No kubelet confirms a graceful deletion on the test's node: remove the pods at once.
    cluster.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


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


def run_to_success(op: H.Operator, cluster: Cluster, name: str, **spec: Any) -> dict:
    """Create the TrainingRun and carry it through its pod's life to Succeeded; the TrainingRun after."""
    created(op, cluster.create_trainingrun(name, **spec))
    pod = pod_name(name, 1)
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
    assert cluster.pod_names() == ["mnist-1"]
    assert cluster.trainingrun("mnist")["status"]["attempts"] == 1
    assert tracking_store.run_status(manifest["metadata"]["uid"]) == RunStatus.PENDING
    assert op.requeues.pending() == {} and len(op.running) == 0 and len(op.locks) == 0


def test_a_pod_event_is_used_as_is_and_a_running_run_is_tracked(make_operator, cluster, tracking_store):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist", resources={"gpus": 1})
    uid = manifest["metadata"]["uid"]
    created(op, manifest)
    running = cluster.start_pod("mnist-1")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=("mnist-1", running))
    status = cluster.trainingrun("mnist")["status"]
    assert op.core.calls["read_namespaced_pod"] == 0
    assert (status["phase"], status["nodeName"], status["gpuProduct"]) == ("Running", cluster.node, GPU_PRODUCT)
    assert [r.name for r in op.running.snapshot()] == ["mnist"]
    assert tracking_store.run_status(uid) == RunStatus.RUNNING

    # What the sidecar committed while the trainer ran.
    point = MetricPoint("acc", 40, int(time.time() * 1000), 0.9)
    tracking_store.ingest_batch(uid, f"{METRICS_DIR}/train.jsonl", IngestBatch(metrics=[point]), offset=64, lines=1)
    done = cluster.end_pod("mnist-1", "Succeeded", 0, "Completed")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=("mnist-1", done))
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["step"], status["metric"]) == ("Succeeded", 40, "0.9")
    assert op.core.calls["read_namespaced_pod"] == 0 and op.store.calls["latest_metrics"] == 1
    assert len(op.running) == 0 and op.requeues.pending() == {}
    run = tracking_store.get_run(uid)
    assert (run.summary.status, run.summary.exit_code) == ("FINISHED", 0)


def test_a_deleted_pod_is_not_read_again_and_is_replaced(make_operator, cluster):
    op = make_operator()
    created(op, cluster.create_trainingrun("mnist"))
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=("mnist-1", cluster.start_pod("mnist-1")))
    cluster.core.delete_namespaced_pod("mnist-1", cluster.namespace, grace_period_seconds=0)
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=("mnist-1", None))
    assert op.core.calls["read_namespaced_pod"] == 0
    assert cluster.pod_names() == ["mnist-2"]
    assert cluster.trainingrun("mnist")["status"]["attempts"] == 2
    assert "PodLost" in cluster.event_reasons("mnist")


def test_a_retry_is_requeued_for_its_backoff(make_operator, cluster):
    op = make_operator()
    created(op, cluster.create_trainingrun("mnist", backoffLimit=2))
    cluster.start_pod("mnist-1")
    failed = cluster.end_pod("mnist-1", "Failed", 2, "Error")
    H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=("mnist-1", failed))
    (key, due), = op.requeues.pending().items()
    assert key == f"{cluster.namespace}/mnist" and due - time.monotonic() == pytest.approx(5, abs=1)
    status = cluster.trainingrun("mnist")["status"]
    assert (status["phase"], status["failures"], status["exitCode"]) == ("Pending", 1, 2)
    assert cluster.pod_names() == ["mnist-1"]  # the next attempt waits out the backoff


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


def test_a_failed_store_write_is_retried_later_and_forgotten_on_delete(make_operator, cluster, cluster_postgres,
                                                                       tracking_store):
    op = make_operator()
    manifest = cluster.create_trainingrun("mnist")
    uid, key = manifest["metadata"]["uid"], f"{cluster.namespace}/mnist"
    created(op, manifest)
    running = cluster.start_pod("mnist-1")
    with stopped(cluster_postgres):
        H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=("mnist-1", running))
        assert cluster.trainingrun("mnist")["status"]["phase"] == "Running"  # the cluster side went on
        assert op.store_behind == {uid}
        (due,) = op.requeues.pending().values()
        assert due - time.monotonic() == pytest.approx(H.STORE_RETRY_S, abs=1)

    H.reconcile_trainingrun(op, cluster.namespace, "mnist")
    assert op.store_behind == set() and op.requeues.pending() == {}
    assert tracking_store.run_status(uid) == RunStatus.RUNNING

    with stopped(cluster_postgres):
        done = cluster.end_pod("mnist-1", "Succeeded", 0, "Completed")
        H.reconcile_trainingrun(op, cluster.namespace, "mnist", seen_pod=("mnist-1", done))
        assert op.store_behind == {uid} and list(op.requeues.pending()) == [key]
        finished = cluster.trainingrun("mnist")
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "mnist")
        H.on_delete(body=finished, namespace=cluster.namespace, name="mnist", uid=uid, memo={"operator": op})
        assert op.store_behind == set() and op.requeues.pending() == {}


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
