"""Kopf handlers: gather the cluster's view of a TrainingRun, ask ``reconcile.plan``, carry it out."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.rest import ApiException

from cairn import podspec
from cairn.api import from_manifest
from cairn.controller import reconcile as R
from cairn.controller.metrics import OperatorMetrics
from cairn.controller.settings import OperatorSettings

GROUP, VERSION, PLURAL, KIND = "cairn.dev", "v1alpha1", "trainingruns", "TrainingRun"
TRAININGRUN_LABEL = podspec.TRAININGRUN_LABEL

log = logging.getLogger("cairn.controller")


class Operator:
    """Everything the handlers share: settings, API clients, the store, metrics, per-run locks."""

    def __init__(self, settings: OperatorSettings) -> None:
        from cairn.store import TrackingStore

        self.settings = settings
        api = _api_client()
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.store = TrackingStore(settings.database_url)
        self.metrics = OperatorMetrics()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._node_labels: dict[str, tuple[float, dict[str, str]]] = {}
        self.store_behind: set[str] = set()  # runs whose last store write failed
        self.synced_metrics: dict[str, tuple[Any, Any]] = {}

    def lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(f"{namespace}/{name}", threading.Lock())

    def node_labels(self, node: str | None) -> dict[str, str] | None:
        if not node:
            return None
        cached = self._node_labels.get(node)
        if cached and time.monotonic() - cached[0] < 300:
            return cached[1]
        try:
            labels = self.core.read_node(node).metadata.labels or {}
        except ApiException as exc:
            if exc.status != 404:
                raise
            labels = {}
        self._node_labels[node] = (time.monotonic(), labels)
        return labels


_operator: Operator | None = None


def _api_client() -> client.ApiClient:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def operator() -> Operator:
    global _operator
    if _operator is None:
        _operator = Operator(OperatorSettings())
    return _operator


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "cairn.dev/finalizer"
    # Kopf's bookkeeping goes to annotations, keeping .status to the documented schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.cairn.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.cairn.dev")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.execution.max_workers = 16
    op = operator()
    if op.settings.metrics_port:
        op.metrics.serve(op.settings.metrics_port)
    log.info("operator ready: store %s, sidecar image %s", op.store.engine.url.render_as_string(hide_password=True),
             op.settings.pod.sidecar_image)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_trainingrun(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    record_run(body)
    reconcile_trainingrun(namespace, name)


@kopf.on.event("", "v1", "pods", labels={TRAININGRUN_LABEL: kopf.PRESENT})
def on_pod_event(labels: dict[str, str], namespace: str, **_: Any) -> None:
    reconcile_trainingrun(namespace, labels[TRAININGRUN_LABEL])


@kopf.timer(GROUP, VERSION, PLURAL, interval=10.0, initial_delay=5.0, idle=0)
def on_timer(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    reconcile_trainingrun(namespace, name)
    copy_metrics_to_status(body)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def on_delete(body: kopf.Body, namespace: str, name: str, uid: str, **_: Any) -> None:
    op = operator()
    pods = op.core.list_namespaced_pod(namespace, label_selector=f"{TRAININGRUN_LABEL}={name}")
    for pod in pods.items:
        if pod.metadata.owner_references and any(o.uid == uid for o in pod.metadata.owner_references):
            _ignore_404(op.core.delete_namespaced_pod, pod.metadata.name, namespace, grace_period_seconds=30)
    phase = (body.get("status") or {}).get("phase")
    if phase not in R.TERMINAL:
        op.store.update_run(uid, status="KILLED", end_time=dt.datetime.now(dt.timezone.utc),
                            reason="TrainingRun deleted")
    op.metrics.phases.forget(uid)
    op.synced_metrics.pop(uid, None)


def record_run(body: kopf.Body) -> None:
    """Create the run in the store (idempotent: the run id is the TrainingRun's uid)."""
    op = operator()
    tr = from_manifest(dict(body))
    meta = body["metadata"]
    spec = body.get("spec") or {}
    op.store.create_run(
        experiment=tr.spec.experiment, name=meta["name"], run_id=meta["uid"], params=dict(spec.get("params") or {}),
        tags={"cairn.mode": "kubernetes", "kubernetes.namespace": meta["namespace"]},
        status="PENDING", namespace=meta["namespace"], k8s_uid=meta["uid"], image=spec.get("image"),
        resources=spec.get("resources"),
    )
    code = spec.get("code") or {}
    if code.get("commit"):
        op.store.record_code(meta["uid"], code.get("repository"), code["commit"])
    dataset = spec.get("dataset") or {}
    if dataset.get("uri"):
        op.store.record_dataset(meta["uid"], dataset["uri"], None, dataset.get("sha256"))


def reconcile_trainingrun(namespace: str, name: str) -> None:
    op = operator()
    with op.lock(namespace, name), op.metrics.reconcile_seconds.time():
        try:
            tr = op.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        if tr["metadata"].get("deletionTimestamp"):
            return
        status = tr.get("status") or {}
        attempt = int(status.get("attempts") or 0)
        pod = _read_pod(op, namespace, podspec.pod_name(name, attempt)) if attempt else None
        node = ((pod or {}).get("spec") or {}).get("nodeName")
        now = dt.datetime.now(dt.timezone.utc)
        plan = R.plan(tr, pod, op.node_labels(node), now)
        carry_out(op, tr, plan, now)


def carry_out(op: Operator, tr: dict, plan: R.Plan, now: dt.datetime) -> None:
    meta = tr["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    if plan.delete_trainingrun:
        _ignore_404(op.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
        return
    if plan.delete_pod:
        _ignore_404(op.core.delete_namespaced_pod, plan.delete_pod, namespace, grace_period_seconds=30)
    if plan.create_attempt is not None:
        # The pod first, then the status: a crash in between re-creates the same pod name (409).
        body = podspec.build_pod(from_manifest(tr), op.settings.pod, plan.create_attempt, uid)
        try:
            op.core.create_namespaced_pod(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    old = tr.get("status") or {}
    changed = {k: v for k, v in plan.status.items() if old.get(k) != v}
    if changed:
        op.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": changed})
    for ev in plan.events:
        post_event(op, tr, ev, now)
    new_phase = plan.status.get("phase") or old.get("phase")
    if new_phase:
        op.metrics.phases.set(uid, new_phase)
    if plan.retried_for:
        op.metrics.retries.labels(plan.retried_for).inc()
    if new_phase == R.RUNNING and old.get("phase") != R.RUNNING and int(old.get("attempts") or 0) <= 1:
        created = R.parse_time(meta.get("creationTimestamp"))
        if created:
            op.metrics.apply_to_running_seconds.observe(max(0.0, (now - created).total_seconds()))
    if plan.finished_pod is not None:
        gpus = int(((tr.get("spec") or {}).get("resources") or {}).get("gpus") or 0)
        started = R.parse_time(((plan.finished_pod.get("status") or {}).get("startTime")))
        if gpus and started:
            op.metrics.gpu_seconds.labels(namespace).inc(gpus * max(0.0, (now - started).total_seconds()))
    if plan.store or uid in op.store_behind:
        write_store(op, uid, {**R.store_fields({**old, **plan.status}), **plan.store})


def write_store(op: Operator, uid: str, fields: dict[str, Any]) -> None:
    """Store writes never block the cluster side; a failed one is redone by the next reconcile."""
    try:
        op.store.update_run(uid, **fields)
        op.store_behind.discard(uid)
    except Exception as exc:  # noqa: BLE001
        op.store_behind.add(uid)
        log.warning("store update of run %s failed, will retry: %s", uid, exc)


def copy_metrics_to_status(body: kopf.Body) -> None:
    """The latest step and headline metric, from the store into status (at most once per timer tick)."""
    op = operator()
    meta = body["metadata"]
    uid = meta["uid"]
    headline = ((body.get("spec") or {}).get("tracking") or {}).get("headlineMetric")
    latest = op.store.latest_metrics([uid]).get(uid) or {}
    if not latest:
        return
    step = max(v.step for v in latest.values())
    value = latest[headline].value if headline in latest else None
    if op.synced_metrics.get(uid) == (step, value):
        return
    patch: dict[str, Any] = {"step": step}
    if headline:
        patch["metric"] = None if value is None else _status_number(value)
    op.custom.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                                                   {"status": patch})
    op.synced_metrics[uid] = (step, value)


def _status_number(v: float) -> str:
    return f"{v:.6g}"


def post_event(op: Operator, tr: dict, ev: R.Event, now: dt.datetime) -> None:
    meta = tr["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
        involved_object=client.V1ObjectReference(api_version=f"{GROUP}/{VERSION}", kind=KIND, name=meta["name"],
                                                 namespace=meta["namespace"], uid=meta["uid"]),
        type=ev.type, reason=ev.reason, message=ev.message[:1024], first_timestamp=stamp, last_timestamp=stamp,
        count=1, source=client.V1EventSource(component="cairn-operator"),
        reporting_component="cairn.dev/operator", reporting_instance="cairn-operator",
    )
    try:
        op.core.create_namespaced_event(meta["namespace"], body)
    except ApiException as exc:
        log.warning("could not post event %s for %s: %s", ev.reason, meta["name"], exc.reason)


def _read_pod(op: Operator, namespace: str, name: str) -> dict | None:
    try:
        return op.core.api_client.sanitize_for_serialization(op.core.read_namespaced_pod(name, namespace))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _ignore_404(fn, *args: Any, **kwargs: Any) -> None:  # noqa: ANN001
    try:
        fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status != 404:
            raise
