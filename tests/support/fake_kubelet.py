"""TrainingRuns and their pods on a node no kubelet runs: the test binds each pod and writes its status
through the API, as a kubelet would, so the operator's handling is tested against the real API server
without running a container."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from cairn.api import GROUP, PLURAL, VERSION
from cairn.podspec import TRAINER

from .servers import PostgresServer

UNSCHEDULED_LABEL = "cairn.dev/handler-test"  # no node has it: the scheduler never places these pods
GPU_PRODUCT = "Cairn-Test-GPU"


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


