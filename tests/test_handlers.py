"""The handlers against fake API clients and store: what each event costs and what it leaves behind."""

from __future__ import annotations

import copy
import datetime as dt
import time
from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from cairn.controller import handlers as H
from cairn.controller.settings import OperatorSettings


def merge(into: dict, patch: dict) -> None:
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


class FakeCustom:
    def __init__(self, manifest: dict) -> None:
        self.manifest = manifest
        self.gets = 0
        self.patches: list[dict] = []
        self.deleted = False

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):  # noqa: ANN001, ANN201
        self.gets += 1
        return copy.deepcopy(self.manifest)

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):  # noqa: ANN001, ANN201
        self.patches.append(body["status"])
        merge(self.manifest.setdefault("status", {}), copy.deepcopy(body["status"]))

    def delete_namespaced_custom_object(self, *args):  # noqa: ANN002, ANN201
        self.deleted = True


class FakeCore:
    def __init__(self) -> None:
        self.pods: dict[str, dict] = {}
        self.pod_reads = 0
        self.events: list[str] = []

    def create_namespaced_pod(self, namespace, body):  # noqa: ANN001, ANN201
        self.pods[body["metadata"]["name"]] = body

    def read_namespaced_pod(self, name, namespace):  # noqa: ANN001, ANN201
        self.pod_reads += 1
        if name not in self.pods:
            raise ApiException(status=404)
        return self.pods[name]

    def read_node(self, name):  # noqa: ANN001, ANN201
        return {"metadata": {"labels": {"nvidia.com/gpu.product": "H100"}}}

    def create_namespaced_event(self, namespace, body):  # noqa: ANN001, ANN201
        self.events.append(body["reason"])


class FakeStore:
    def __init__(self) -> None:
        self.updates: list[dict] = []
        self.latest_queries = 0
        self.down = False

    def create_run(self, **fields):  # noqa: ANN003, ANN201
        self.created = fields

    def update_run(self, run_id, **fields):  # noqa: ANN001, ANN003, ANN201
        if self.down:
            raise ConnectionError("store down")
        self.updates.append(fields)

    def latest_metrics(self, run_ids):  # noqa: ANN001, ANN201
        self.latest_queries += 1
        return {r: {"acc": SimpleNamespace(step=40, value=0.9)} for r in run_ids}


def trainingrun(status: dict | None = None, **spec) -> dict:  # noqa: ANN003
    return {"metadata": {"name": "mnist", "namespace": "ml", "uid": "u1", "generation": 1,
                         "creationTimestamp": "2026-01-01T12:00:00Z"},
            "spec": {"image": "i", "command": ["c"], "tracking": {"headlineMetric": "acc"}, **spec},
            "status": status or {}}


@pytest.fixture
def make_operator():
    made = []

    def make(manifest: dict) -> H.Operator:
        op = H.Operator(OperatorSettings(), FakeCore(), FakeCustom(manifest), FakeStore())
        made.append(op)
        return op
    yield make
    for op in made:
        op.stop()


def pod_with_phase(op: H.Operator, phase: str, **status) -> dict:  # noqa: ANN003
    pod = copy.deepcopy(op.core.pods["mnist-1"])
    pod["spec"]["nodeName"] = "node-a"
    pod["status"] = {"phase": phase, **status}
    return pod


def test_a_new_trainingrun_gets_its_pod_and_no_requeue(make_operator):
    op = make_operator(trainingrun())
    H.reconcile_trainingrun(op, "ml", "mnist")
    assert list(op.core.pods) == ["mnist-1"] and op.custom.manifest["status"]["attempts"] == 1
    assert op.requeues.pending() == {} and len(op.running) == 0 and len(op.locks) == 0


def test_a_pod_event_is_used_as_is_and_a_running_run_is_tracked(make_operator):
    op = make_operator(trainingrun())
    H.reconcile_trainingrun(op, "ml", "mnist")
    running = pod_with_phase(op, "Running")
    H.reconcile_trainingrun(op, "ml", "mnist", seen_pod=("mnist-1", running))
    assert op.core.pod_reads == 0 and op.custom.manifest["status"]["phase"] == "Running"
    assert [r.name for r in op.running.snapshot()] == ["mnist"]

    done = pod_with_phase(op, "Succeeded", containerStatuses=[
        {"name": "trainer", "state": {"terminated": {"exitCode": 0}}}])
    H.reconcile_trainingrun(op, "ml", "mnist", seen_pod=("mnist-1", done))
    status = op.custom.manifest["status"]
    assert status["phase"] == "Succeeded" and (status["step"], status["metric"]) == (40, "0.9")
    assert op.store.latest_queries == 1 and len(op.running) == 0 and op.requeues.pending() == {}


def test_a_deleted_pod_is_not_read_again_and_is_replaced(make_operator):
    op = make_operator(trainingrun({"phase": "Running", "attempts": 1, "podName": "mnist-1"}))
    H.reconcile_trainingrun(op, "ml", "mnist", seen_pod=("mnist-1", None))
    assert op.core.pod_reads == 0 and "mnist-2" in op.core.pods and "PodLost" in op.core.events


def test_a_retry_is_requeued_for_its_backoff(make_operator):
    op = make_operator(trainingrun(backoffLimit=2))
    H.reconcile_trainingrun(op, "ml", "mnist")
    failed = pod_with_phase(op, "Failed", containerStatuses=[
        {"name": "trainer", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}])
    H.reconcile_trainingrun(op, "ml", "mnist", seen_pod=("mnist-1", failed))
    (key, due), = op.requeues.pending().items()
    assert key == "ml/mnist" and due - time.monotonic() == pytest.approx(5, abs=1)


def test_finished_runs_cost_nothing_unless_a_ttl_is_left(make_operator):
    done = {"phase": "Succeeded", "attempts": 1, "completionTime": "2026-01-01T12:00:00Z"}
    op = make_operator(trainingrun(done))
    H.on_trainingrun(body=op.custom.manifest, namespace="ml", name="mnist", memo={"operator": op})
    assert op.custom.gets == 0 and op.requeues.pending() == {}

    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=-5)
    ttl = make_operator(trainingrun({**done, "completionTime": later.strftime("%Y-%m-%dT%H:%M:%SZ")},
                                    ttlSecondsAfterFinished=60))
    H.on_trainingrun(body=ttl.custom.manifest, namespace="ml", name="mnist", memo={"operator": ttl})
    (due,) = ttl.requeues.pending().values()
    assert due - time.monotonic() == pytest.approx(55, abs=2) and not ttl.custom.deleted


def test_a_failed_store_write_is_retried_later_and_forgotten_on_delete(make_operator):
    op = make_operator(trainingrun())
    op.store.down = True
    H.reconcile_trainingrun(op, "ml", "mnist")
    assert op.store_behind == {"u1"} and list(op.requeues.pending()) == ["ml/mnist"]
    op.store.down = False
    H.reconcile_trainingrun(op, "ml", "mnist")
    assert op.store_behind == set() and op.requeues.pending() == {}
    op.store.down = True
    H.reconcile_trainingrun(op, "ml", "mnist")
    op.forget("u1", "ml", "mnist")
    assert op.store_behind == set() and op.requeues.pending() == {}
