"""`cairn operator` (Kopf, the finalizer) against the real API server and a real PostgreSQL that is
stopped and started: it starts and schedules runs without the store, catches up when the store returns,
deletes a running TrainingRun in bounded time while the store is down, and leaves no finalizer on a
finished TrainingRun, so deleting one needs no operator.

The pods are never run: they wait on a node label no node has, and the test binds them to a Node
object of its own and writes their status as a kubelet would (``tests.support.fake_kubelet``), so
no image is needed.
"""

from __future__ import annotations

import pytest

from cairn.api import GROUP, PLURAL, VERSION
from cairn.podspec import pod_name
from cairn.rundir import RunStatus
from cairn.store import TrackingStore
from tests.support.cluster import wait_until
from tests.support.cluster_operator import OperatorProcess
from tests.support.fake_kubelet import stopped

pytestmark = pytest.mark.cluster

FINALIZER = "cairn.dev/finalizer"


@pytest.fixture
def operator_process(kubeconfig, namespace, store_urls, tmp_path):
    """``start()`` -> ``cairn operator`` watching the test's namespace; stopped after the test."""
    started: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        op = OperatorProcess(kubeconfig, namespace, store_urls[0], tmp_path / "operator.log").start()
        started.append(op)
        return op
    yield start
    for op in started:
        op.stop()
    if started:
        print(started[0].log())


def first_pod(manifest: dict) -> str:
    return pod_name(manifest["metadata"]["name"], manifest["metadata"]["uid"], 1)


def wait_for_pod(cluster, manifest: dict) -> str:  # noqa: ANN001
    pod = first_pod(manifest)
    wait_until(lambda: pod in cluster.pod_names(), 30, f"pod {pod}")
    return pod


def test_the_operator_starts_and_schedules_runs_while_the_store_is_down(operator_process, cluster,
                                                                        cluster_postgres, store_urls):
    with stopped(cluster_postgres):
        op = operator_process()  # healthy: its liveness endpoint answers
        manifest = cluster.create_trainingrun("mnist")
        wait_for_pod(cluster, manifest)
        assert "cairn_store_up 0.0" in op.metrics()
    store = TrackingStore(store_urls[0])
    wait_until(lambda: store.run_status(manifest["metadata"]["uid"]) == RunStatus.PENDING, 40,
               "the operator to record the run once the store is back")
    wait_until(lambda: "cairn_store_up 1.0" in op.metrics(), 10, "the store to be reported up")


def test_a_running_trainingrun_is_deleted_while_the_store_is_down_and_recorded_killed_after(
        operator_process, cluster, cluster_postgres, store_urls):
    operator_process()
    manifest = cluster.create_trainingrun("mnist")
    pod = wait_for_pod(cluster, manifest)
    cluster.start_pod(pod)
    wait_until(lambda: (cluster.trainingrun("mnist").get("status") or {}).get("phase") == "Running", 30,
               "the run to be Running")
    assert FINALIZER in cluster.trainingrun("mnist")["metadata"]["finalizers"]
    with stopped(cluster_postgres):
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "mnist")
        wait_until(lambda: cluster.trainingrun("mnist") is None, 30, "the TrainingRun to be deleted")
        assert cluster.core.read_namespaced_pod(pod, cluster.namespace).metadata.deletion_timestamp is not None
    store = TrackingStore(store_urls[0])
    wait_until(lambda: store.run_status(manifest["metadata"]["uid"]) == RunStatus.KILLED, 40,
               "the KILLED record once the store is back")


def test_a_finished_trainingrun_is_deleted_at_once_without_an_operator(operator_process, cluster):
    op = operator_process()
    manifest = cluster.create_trainingrun("mnist")
    pod = wait_for_pod(cluster, manifest)
    cluster.start_pod(pod)
    cluster.end_pod(pod, "Succeeded", 0, "Completed")
    wait_until(lambda: cluster.trainingrun("mnist")["status"].get("phase") == "Succeeded", 30, "Succeeded")
    wait_until(lambda: not cluster.trainingrun("mnist")["metadata"].get("finalizers"), 30,
               "the finalizer to come off the finished TrainingRun")
    op.stop()

    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "mnist")
    wait_until(lambda: cluster.trainingrun("mnist") is None, 5, "the finished TrainingRun to be gone")
