"""Kopf handlers: gather the cluster's view of a TrainingRun, ask ``reconcile.plan``, carry it out.

Nothing polls. A TrainingRun is reconciled when it is created, its spec changes or the operator
starts (resume); when one of its pods changes (the pod watch is filtered by label on the server);
and when its last plan asked to be looked at again (a retry's backoff, the deadline, the TTL). A
finished TrainingRun costs nothing until its TTL fires. The latest step and headline metric of the
Running runs are copied from the store into status with one batched query every few seconds, when the
GPU-seconds of the running pods are counted too.

Handlers find the :class:`Operator` in Kopf's memo: ``cairn operator`` puts it there; under
``kopf run -m cairn.controller`` the startup handler builds it from the environment.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import kopf
from kubernetes import client
from kubernetes.client.rest import ApiException
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from cairn import podspec
from cairn.api import GROUP, KIND, PLURAL, VERSION, TrainingRun, TrainingRunStatus, from_manifest, to_dict
from cairn.api import recorded_spec
from cairn.api.types import SPEC_TAG
from cairn.controller import malloc
from cairn.controller import reconcile as R
from cairn.controller.kube import CoreApi
from cairn.controller.metrics import OperatorMetrics, StoreWritesCollector
from cairn.controller.runtime import (KeyedLocks, NodeLabelCache, Requeuer, RunningRuns, RunRef, StoreWrite, StoreWrites,
                                      metrics_patch)
from cairn.controller.settings import OperatorSettings
from cairn.controller.tenants import Tenants, TenantNotReady
from cairn.rundir import RunStatus
from cairn.store import TrackingStore, db
from cairn.store.registry import ModelNotFound
from cairn.store.tracking import RunNotFound

TRAININGRUN_LABEL = podspec.TRAININGRUN_LABEL
STATUS_METRICS_INTERVAL_S = 10.0  # how often the Running runs' latest metrics are copied into status
POD_NAME_TAKEN_RETRY_S = 15.0  # a pod name held by another TrainingRun's pod is tried again after this long
KOPF_WORKERS = 4  # threads for Kopf's sync handlers; a reconcile is a few API calls, so 4 keep latency far under 1 s
KOPF_OBJECT_WORKERS = 32  # objects Kopf handles at once (their events queue meanwhile)
REQUEUE_WORKERS = 4
LATEST_METRICS_BATCH = 500  # runs per store query
OPERATOR_IDENTITY = "cairn-operator"  # who registered a version from spec.registerModel, in the audit trail

log = logging.getLogger("cairn.controller")


class Operator:
    """Everything the handlers share: settings, API clients, the store, metrics and bounded per-run
    bookkeeping (locks, node labels, requeue times, Running runs, store writes waiting for the store)."""

    def __init__(self, settings: OperatorSettings, core: CoreApi, custom: client.CustomObjectsApi,
                 store: TrackingStore, tenants: Tenants | None = None) -> None:
        self.settings, self.core, self.custom, self.store = settings, core, custom, store
        self.tenants = tenants or Tenants(settings, core, store)
        self.metrics = OperatorMetrics()
        self.locks = KeyedLocks()
        self.node_labels = NodeLabelCache(self._read_node_labels)
        self.running = RunningRuns()
        self.store_writes = StoreWrites(self._write_run,
                                        lambda: db.ensure_schema(store.engine), store_unavailable)
        self.metrics.registry.register(StoreWritesCollector(self.store_writes))
        self._requeue_pool = ThreadPoolExecutor(max_workers=REQUEUE_WORKERS, thread_name_prefix="cairn-requeue")
        self.requeues = Requeuer(lambda key: self._requeue_pool.submit(self._reconcile_key, key))
        self._stop = threading.Event()

    @classmethod
    def connect(cls, settings: OperatorSettings) -> "Operator":
        """Clients from the in-cluster service account or the kubeconfig, and the store (not yet reached: the
        store-writes thread reaches it, and checks its schema, when :meth:`start` runs)."""
        from kubernetes import config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_config = client.Configuration.get_default_copy()
        # One connection per thread that calls the API (Kopf's workers, the requeue pool, the status-metrics
        # thread), so none is opened and discarded per call.
        api_config.connection_pool_maxsize = KOPF_WORKERS + REQUEUE_WORKERS + 1
        api = client.ApiClient(api_config)
        core, store = CoreApi(api), TrackingStore(settings.database_url, check_schema=False)
        return cls(settings, core, client.CustomObjectsApi(api), store, Tenants.from_settings(settings, core, store))

    def start(self) -> None:
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        self.requeues.start()
        self.store_writes.start()
        threading.Thread(target=self._copy_metrics_forever, name="cairn-status-metrics", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.requeues.stop()
        self.store_writes.stop()
        self._requeue_pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, uid: str, namespace: str, name: str) -> None:
        """Drop everything kept about a deleted TrainingRun but its store writes."""
        self.requeues.cancel(f"{namespace}/{name}")
        self.running.forget(uid)
        self.metrics.phases.forget(uid)
        self.metrics.gpu_seconds.forget(uid, dt.datetime.now(dt.timezone.utc))

    def _read_node_labels(self, node: str) -> dict[str, str]:
        try:
            return self.core.read_node(node)["metadata"].get("labels") or {}
        except ApiException as exc:
            if exc.status != 404:
                raise
            return {}

    def _write_run(self, uid: str, write: StoreWrite) -> None:
        """A run's writes go to its namespace's store (its own schema with tenancy on)."""
        write_run(self.tenants.store_for(write.run.namespace if write.run is not None else None), uid, write)

    def _reconcile_key(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        reconcile_trainingrun(self, namespace, name)

    def _copy_metrics_forever(self) -> None:
        while not self._stop.wait(STATUS_METRICS_INTERVAL_S):
            self.metrics.gpu_seconds.tick(dt.datetime.now(dt.timezone.utc))
            runs = self.running.snapshot()
            for start in range(0, len(runs), LATEST_METRICS_BATCH):
                copy_metrics_to_status(self, runs[start:start + LATEST_METRICS_BATCH])
            malloc.release_free_memory()  # what bursts of events left free in the heap (a few ms)


def _operator(memo: kopf.Memo) -> Operator:
    return memo["operator"]


def store_unavailable(exc: BaseException) -> bool:
    """Whether a store error means the store is away (the write waits) rather than refusing the write."""
    if isinstance(exc, db.StoreError):
        return exc.code in ("DATABASE_UNREACHABLE", "SCHEMA_OUT_OF_DATE")
    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "cairn.dev/finalizer"
    # Kopf's bookkeeping goes to annotations, keeping .status to the documented schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.cairn.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.cairn.dev")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    # Only the pods of TrainingRuns reach the operator (and its memory), not every pod of the namespace.
    settings.watching.label_selectors["", "v1", "pods"] = TRAININGRUN_LABEL
    settings.execution.max_workers = KOPF_WORKERS
    # Kopf opens an API connection (a 256 KiB TLS read buffer each) per object it is handling at once, without
    # limit: a thousand TrainingRuns applied together would open hundreds. Objects beyond this wait their turn.
    settings.batching.worker_limit = KOPF_OBJECT_WORKERS
    if "operator" not in memo:  # kopf run -m cairn.controller
        memo["operator"] = Operator.connect(OperatorSettings())
    op = _operator(memo)
    op.start()
    log.info("operator ready: store %s (reached in the background), sidecar image %s",
             op.store.engine.url.render_as_string(hide_password=True), op.settings.pod.sidecar_image)


@kopf.on.cleanup()
def shut_down(memo: kopf.Memo, **_: Any) -> None:
    _operator(memo).stop()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_trainingrun(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    op = _operator(memo)
    tr = from_manifest(body)
    if tr.status.phase in R.TERMINAL and tr.spec.ttl_seconds_after_finished is None:
        return  # the operator restarted: a finished run without a TTL needs nothing
    if tr.status.phase not in R.TERMINAL and not tenant_ready(op, tr, dt.datetime.now(dt.timezone.utc)):
        return
    op.store_writes.submit(tr.uid, StoreWrite({}, tr, create=True))
    reconcile_trainingrun(op, namespace, name)


@kopf.on.event("", "v1", "pods", labels={TRAININGRUN_LABEL: kopf.PRESENT})
def on_pod_event(type: str, body: kopf.Body, labels: Mapping[str, str], namespace: str, name: str,  # noqa: A002
                 memo: kopf.Memo, **_: Any) -> None:
    seen = None if type == "DELETED" else body
    reconcile_trainingrun(_operator(memo), namespace, labels[TRAININGRUN_LABEL], seen_pod=(name, seen))


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_trainingrun_event(type: str, uid: str, namespace: str, name: str, memo: kopf.Memo,  # noqa: A002
                         **_: Any) -> None:
    """A finished TrainingRun is deleted without the deletion handler (it has no finalizer): forget it here."""
    if type == "DELETED":
        _operator(memo).forget(uid, namespace, name)


def unfinished(status: Mapping[str, Any], **_: Any) -> bool:
    """Only an unfinished TrainingRun carries the finalizer: Kopf adds it to those its deletion handler
    matches and takes it off the others, so a finished one is deleted at once, operator or not."""
    return status.get("phase") not in R.TERMINAL


@kopf.on.delete(GROUP, VERSION, PLURAL, when=unfinished)
def on_delete(body: kopf.Body, namespace: str, name: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """Stop the run's pods (with their own grace period, so the sidecar drains) and record the run KILLED.
    The write waits for the store if it is away: the deletion never does."""
    op = _operator(memo)
    pods = op.core.list_namespaced_pod(namespace, label_selector=f"{TRAININGRUN_LABEL}={name}")
    for pod in pods["items"]:
        if podspec.owned_by(pod, uid):
            _ignore_404(op.core.delete_namespaced_pod, pod["metadata"]["name"], namespace)
    killed = {"status": RunStatus.KILLED, "end_time": dt.datetime.now(dt.timezone.utc), "reason": "TrainingRun deleted"}
    op.store_writes.submit(uid, StoreWrite(killed, from_manifest(body)))
    op.forget(uid, namespace, name)


def write_run(store: TrackingStore, uid: str, write: StoreWrite) -> None:
    """One run's waiting columns; its row is created first when asked, or when the update finds none
    (the run was recorded while the store was away, or the store lost it)."""
    if write.create:
        record_run(store, write.run)
    if write.fields:
        try:
            store.update_run(uid, **write.fields)
        except RunNotFound:
            if write.run is None:
                raise
            record_run(store, write.run)
            store.update_run(uid, **write.fields)
    if write.register_model:
        register_output(store, write.run)


def register_output(store: TrackingStore, tr: TrainingRun) -> None:
    """Register the finished run's output as the next version of ``spec.registerModel.name``, once: a
    version already registered from this run is kept (the write may be tried again)."""
    wanted = tr.spec.register_model
    try:
        registered = [v.version for v in store.get_model(tr.namespace, wanted.name).versions if v.run_id == tr.uid]
    except ModelNotFound:
        registered = []
    if registered:
        return
    version = store.register_model_version(tr.namespace, wanted.name, tr.uid, f"{OPERATOR_IDENTITY} ({tr.name})",
                                           wanted.artifact_path)
    log.info("registered run %s/%s as version %d of model %s", tr.namespace, tr.name, version.version, wanted.name)


def record_run(store: TrackingStore, tr: TrainingRun) -> None:
    """Create the run in the store (idempotent: the run id is the TrainingRun's uid)."""
    spec = tr.spec
    store.create_run(
        experiment=spec.experiment, name=tr.name, run_id=tr.uid, params=dict(spec.params),
        tags={"cairn.mode": "kubernetes", "kubernetes.namespace": tr.namespace,
              SPEC_TAG: json.dumps(recorded_spec(spec))},
        status=RunStatus.PENDING, namespace=tr.namespace, k8s_uid=tr.uid, image=spec.image,
        resources=to_dict(spec.resources),
    )
    if spec.code is not None:
        store.record_code(tr.uid, spec.code.repository, spec.code.commit)
    if spec.dataset is not None:
        store.record_dataset(tr.uid, spec.dataset.uri, None, spec.dataset.sha256)


def reconcile_trainingrun(op: Operator, namespace: str, name: str,
                          seen_pod: tuple[str, Mapping[str, Any] | None] | None = None) -> None:
    """Read the TrainingRun and its current pod, plan, carry the plan out. ``seen_pod`` is a pod (name,
    body or None once deleted) an event has just shown; it is not read again when it is the current one."""
    with op.locks.hold(f"{namespace}/{name}"), op.metrics.reconcile_seconds.time():
        try:
            manifest = op.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        if manifest["metadata"].get("deletionTimestamp"):
            return
        tr = from_manifest(manifest)
        attempt = tr.status.attempts or 0
        current = podspec.pod_name(name, tr.uid, attempt) if attempt else None
        if current is None:
            pod = None
        elif seen_pod is not None and seen_pod[0] == current:
            pod = seen_pod[1]
        else:
            pod = _read_pod(op, namespace, current)
        node = ((pod or {}).get("spec") or {}).get("nodeName")
        now = dt.datetime.now(dt.timezone.utc)
        plan = R.plan(tr, pod, op.node_labels.get(node), now)
        carry_out(op, tr, R.parse_time(manifest["metadata"].get("creationTimestamp")), plan, now)


def carry_out(op: Operator, tr: TrainingRun, created: dt.datetime | None, plan: R.Plan, now: dt.datetime) -> None:
    namespace, name, uid = tr.namespace, tr.name, tr.uid
    if plan.delete_trainingrun:
        _ignore_404(op.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
        return
    if plan.delete_pod:
        _ignore_404(op.core.delete_namespaced_pod, plan.delete_pod, namespace)
    if plan.create_attempt is not None and not create_pod(op, tr, plan.create_attempt, now):
        return
    old = to_dict(tr.status)
    changed = {k: v for k, v in plan.status.items() if old.get(k) != v}
    if changed:
        op.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": changed})
    for ev in plan.events:
        post_event(op, tr, ev, now)
    status = R.merge_status(tr.status, plan.status)
    record_metrics(op, tr, status, created, plan, now)
    if plan.store:
        register = (tr.spec.register_model is not None and status.phase == R.SUCCEEDED
                    and tr.status.phase != R.SUCCEEDED)
        op.store_writes.submit(uid, StoreWrite({**R.store_fields(status), **plan.store}, tr, register_model=register))
    run = RunRef(uid, namespace, name, tr.spec.tracking.headline_metric)
    if status.phase == R.RUNNING:
        op.running.track(run)
    elif status.phase in R.TERMINAL and tr.status.phase not in R.TERMINAL:
        copy_metrics_to_status(op, [run])  # the final values, once the sidecar has drained
        op.running.forget(uid)
    else:
        op.running.forget(uid)
    if plan.requeue_after is not None:
        op.requeues.schedule(f"{namespace}/{name}", plan.requeue_after)
    else:
        op.requeues.cancel(f"{namespace}/{name}")


def record_metrics(op: Operator, tr: TrainingRun, status: TrainingRunStatus, created: dt.datetime | None, plan: R.Plan,
                   now: dt.datetime) -> None:
    """The operator's own Prometheus metrics for what this plan did."""
    if status.phase:
        failed_at = R.parse_time(status.completion_time) if status.phase == R.FAILED else None
        op.metrics.phases.set(tr.uid, status.phase, tr.namespace, tr.name, status.reason or "", failed_at,
                              status.attempts or 0)
    if plan.retried_for:
        op.metrics.retries.labels(plan.retried_for).inc()
    if status.phase == R.RUNNING and tr.status.phase != R.RUNNING and (tr.status.attempts or 0) <= 1 and created:
        op.metrics.apply_to_running_seconds.observe(max(0.0, (now - created).total_seconds()))
    gpus = tr.spec.resources.gpus
    if plan.running_since is not None:
        op.metrics.gpu_seconds.running(tr.uid, tr.namespace, gpus, plan.running_since, now)
    else:
        started = R.parse_time(((plan.finished_pod or {}).get("status") or {}).get("startTime"))
        op.metrics.gpu_seconds.stopped(tr.uid, tr.namespace, gpus, started, now)


def create_pod(op: Operator, tr: TrainingRun, attempt: int, now: dt.datetime) -> bool:
    """Create the pod of ``attempt`` before the status records it: a crash in between re-creates the same
    name (409), and that pod is this run's own only when its ownerReference carries this uid. Another
    TrainingRun's pod under the name is never adopted: False, with a Warning, until it is gone."""
    if not tenant_ready(op, tr, now):  # its Secret was deleted (rotation) since the last attempt
        return False
    body = podspec.build_pod(tr, op.settings.pod, attempt, tr.uid)
    try:
        op.core.create_namespaced_pod(tr.namespace, body)
        return True
    except ApiException as exc:
        if exc.status != 409:
            raise
    name = body["metadata"]["name"]
    existing = _read_pod(op, tr.namespace, name)
    if existing is not None and podspec.owned_by(existing, tr.uid):
        return True
    message = (f"pod {name} exists and is not this TrainingRun's (another owner); attempt {attempt} waits for it "
               f"to go (tried again in {POD_NAME_TAKEN_RETRY_S:.0f}s)")
    post_event(op, tr, R.Event("Warning", "PodNameTaken", message), now)
    op.custom.patch_namespaced_custom_object_status(GROUP, VERSION, tr.namespace, PLURAL, tr.name,
                                                   {"status": {"reason": "PodNameTaken", "message": message}})
    op.requeues.schedule(f"{tr.namespace}/{tr.name}", POD_NAME_TAKEN_RETRY_S)
    return False


def tenant_ready(op: Operator, tr: TrainingRun, now: dt.datetime) -> bool:
    """With tenancy on, make the namespace's credentials unless they exist; False (with a Warning and
    the reason in status) when they cannot be made (the namespace is not enabled, an admin's Secret is
    missing): the run gets no pod until it is created or changed again."""
    try:
        op.tenants.ensure_credentials(tr.namespace)
        return True
    except TenantNotReady as exc:
        reason = type(exc).__name__
        post_event(op, tr, R.Event("Warning", reason, str(exc)), now)
        op.custom.patch_namespaced_custom_object_status(GROUP, VERSION, tr.namespace, PLURAL, tr.name,
                                                       {"status": {"reason": reason, "message": str(exc)}})
        return False


def copy_metrics_to_status(op: Operator, runs: list[RunRef]) -> None:
    """The latest step and headline metric of ``runs``, from the store into status (one query per
    store: one, or one per namespace with tenancy), for those that changed since the last copy.
    Nothing while the store is away."""
    if op.store_writes.up is False:
        return
    by_store: dict[int, tuple[TrackingStore, list[str]]] = {}
    for run in runs:
        store = op.tenants.store_for(run.namespace)
        by_store.setdefault(id(store), (store, []))[1].append(run.uid)
    latest: dict[str, dict] = {}
    for store, uids in by_store.values():
        try:
            latest.update(store.latest_metrics(uids))
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read the latest metrics of %d runs: %s", len(uids), exc)
    for run in runs:
        patch = metrics_patch(latest.get(run.uid) or {}, run.headline)
        if patch is None or not op.running.is_new(run.uid, patch):
            continue
        try:
            op.custom.patch_namespaced_custom_object_status(GROUP, VERSION, run.namespace, PLURAL, run.name,
                                                           {"status": patch})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not copy metrics into %s/%s: %s", run.namespace, run.name, exc.reason)


def post_event(op: Operator, tr: TrainingRun, ev: R.Event, now: dt.datetime) -> None:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "metadata": {"generateName": f"{tr.name}.", "namespace": tr.namespace},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": tr.name,
                           "namespace": tr.namespace, "uid": tr.uid},
        "type": ev.type, "reason": ev.reason, "message": ev.message[:1024], "firstTimestamp": stamp,
        "lastTimestamp": stamp, "count": 1, "source": {"component": "cairn-operator"},
        "reportingComponent": "cairn.dev/operator", "reportingInstance": "cairn-operator",
    }
    try:
        op.core.create_namespaced_event(tr.namespace, body)
    except ApiException as exc:
        log.warning("could not post event %s for %s: %s", ev.reason, tr.name, exc.reason)


def _read_pod(op: Operator, namespace: str, name: str) -> dict | None:
    try:
        return op.core.read_namespaced_pod(name, namespace)
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
