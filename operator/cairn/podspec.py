"""TrainingRun → Pod. Pure functions: no I/O, no clock (how a pod ended is read in ``controller.failures``).

The pod holds two containers sharing an emptyDir run directory:

- ``cairn-sidecar``: a native sidecar (init container with ``restartPolicy: Always``) running
  ``cairn sidecar``. The kubelet starts it first, holds the trainer back until its startup probe
  sees the run directory prepared, and stops it only after the trainer has exited, so it drains
  every record. It alone receives the database credentials.
- ``trainer``: the user's image and command, with ``nvidia.com/gpu`` limits and the ``CAIRN_*``
  environment the SDK reads.
- ``cairn-prepare`` (only when the run names a dataset, or on a retry): a plain init container
  running ``cairn prepare`` before the sidecar and the trainer. It checks the dataset's digest
  (exit code 12 when it differs from the pinned one, which fails the run), copies the dataset into
  the run directory when ``spec.dataset.stage`` asks for it, and restores the latest
  checkpoint on a retry. It and the sidecar are the only containers given object store credentials.

Cairn's own containers (sidecar, prepare step) run with a read-only root filesystem; they write
only to the run directory and to an emptyDir at ``/tmp`` (also their ``HOME``). Service links are
off: the trainer gets no ``*_SERVICE_HOST`` variables for every Service of its namespace.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from cairn import rundir
from cairn.api import GROUP, KIND, VERSION, TrainingRun
from cairn.api.types import GPU_PRODUCT_LABEL
from cairn.rundir import Env

TRAININGRUN_LABEL = "cairn.dev/trainingrun"
RUN_ID_LABEL = "cairn.dev/run-id"
ATTEMPT_LABEL = "cairn.dev/attempt"
EXPERIMENT_ANNOTATION = "cairn.dev/experiment"
GPU_RESOURCE = "nvidia.com/gpu"
TRAINER = "trainer"
SIDECAR = "cairn-sidecar"
PREPARE = "cairn-prepare"
RUN_VOLUME = "run"  # the emptyDir holding the run directory
# Keys of the object store Secret (in the run's namespace) and the variables they become.
OBJECTSTORE_KEYS = (("endpoint", Env.S3_ENDPOINT), ("accessKey", Env.S3_ACCESS_KEY), ("secretKey", Env.S3_SECRET_KEY),
                    ("bucket", Env.S3_BUCKET), ("region", Env.S3_REGION), ("caBundle", Env.S3_CA_BUNDLE))
METRICS_PORT = 9400  # the sidecar's live run metrics
RUN_DIR = rundir.POD_RUN_DIR
DATASET_DIR = f"{RUN_DIR}/{rundir.DATASET_DIR}"  # spec.dataset.stage: where the prepare step copies it
TMP_VOLUME = "cairn-tmp"  # the writable /tmp of Cairn's containers, whose root filesystem is read-only
TMP_DIR = "/tmp"
UID_HASH_LENGTH = 5  # hex digits of the TrainingRun uid's hash in its pod names
DRAIN_GRACE_MARGIN_S = 30  # the pod's grace period beyond the sidecar's drain: its own exit, the kubelet's slack
# The sidecar's startup probe waits inside one exec, polling every 0.1 s, for the file the sidecar
# writes once its port is bound and the run directory laid out. A normal start passes the first
# probe (an instant `test -f` would fail it and make the kubelet record a "Startup probe failed"
# Warning event on every run); a sidecar that never gets ready fails after STARTUP_PROBE_ATTEMPTS waits.
STARTUP_PROBE_WAIT_S = 10
STARTUP_PROBE_ATTEMPTS = 12
STARTUP_PROBE_SCRIPT = 'i=0; until [ -f "$2" ]; do i=$((i+1)); [ "$i" -le "$1" ] || exit 1; sleep 0.1; done'


@dataclass(frozen=True)
class PodSettings:
    """Operator-wide settings that shape every pod."""

    sidecar_image: str = "cairn:dev"
    image_pull_policy: str | None = None  # None: the Kubernetes default for the tag
    database_secret: str = "cairn-database"  # Secret in the run's namespace
    database_secret_key: str = "url"
    run_as_user: int = 1000
    sidecar_cpu: str = "100m"
    sidecar_memory: str = "256Mi"
    drain_timeout_s: int = 60
    # Secret in the run's namespace with the object store's endpoint, accessKey, secretKey, bucket
    # and (optionally) region; optional in the pod: without it artifacts stay in the pod. "": none.
    objectstore_secret: str = "cairn-objectstore"


def pod_name(trainingrun: str, uid: str, attempt: int) -> str:
    """The pod of one attempt of one TrainingRun: ``<name>-<uid hash>-<attempt>``, at most 63 characters.
    The same inputs always give the same name; a TrainingRun deleted and created again under the same
    name (another uid) gets other names, so it never mistakes the old incarnation's pod for its own."""
    incarnation = hashlib.sha256(uid.encode()).hexdigest()[:UID_HASH_LENGTH]
    name = f"{trainingrun}-{incarnation}-{attempt}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(f"{trainingrun}/{uid}".encode()).hexdigest()[:8]
    suffix = f"-{digest}-{attempt}"
    return trainingrun[: 63 - len(suffix)].rstrip("-.") + suffix


def owned_by(pod: Mapping[str, Any], uid: str) -> bool:
    """Whether ``pod`` belongs to the TrainingRun with this uid (its ownerReference, not its name)."""
    return any(o.get("uid") == uid for o in (pod.get("metadata") or {}).get("ownerReferences") or [])


def termination_grace_period_s(settings: PodSettings) -> int:
    """Longer than the sidecar's drain, so a deleted pod (suspend, deletion) keeps its last records and checkpoint."""
    return settings.drain_timeout_s + DRAIN_GRACE_MARGIN_S


def _env(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


def trainer_env(tr: TrainingRun, attempt: int, run_id: str) -> list[dict[str, Any]]:
    spec = tr.spec
    user = [{k: v for k, v in (("name", e.name), ("value", e.value), ("valueFrom", e.value_from)) if v is not None}
            for e in spec.env]
    ours = [
        _env(Env.RUN_ID, run_id),
        _env(Env.RUN_DIR, RUN_DIR),
        _env(Env.RUN_NAME, tr.name),
        _env(Env.EXPERIMENT, spec.experiment),
        _env(Env.ATTEMPT, str(attempt)),
        _env(Env.PARAMS, json.dumps(spec.params, sort_keys=True)),
        _env(Env.PARAMS_FILE, f"{RUN_DIR}/{rundir.PARAMS_FILE}"),
    ]
    if spec.code is not None:
        ours.append(_env(Env.CODE_COMMIT, spec.code.commit))
        if spec.code.repository:
            ours.append(_env(Env.CODE_REPOSITORY, spec.code.repository))
    if spec.dataset is not None:
        ours.append(_env(Env.DATASET_URI, spec.dataset.uri))
        if spec.dataset.stage:
            ours.append(_env(Env.DATASET_DIR, DATASET_DIR))
    # Later entries win in Kubernetes: the run's identity cannot be overridden by spec.env.
    return user + ours


def objectstore_env(settings: PodSettings) -> list[dict[str, Any]]:
    """Object store credentials from the Secret, for Cairn's own containers only (never the trainer)."""
    if not settings.objectstore_secret:
        return []
    return [{"name": var, "valueFrom": {"secretKeyRef": {"name": settings.objectstore_secret, "key": key,
                                                         "optional": True}}}
            for key, var in OBJECTSTORE_KEYS]


def _cairn_mounts() -> list[dict[str, str]]:
    return [{"name": "run", "mountPath": RUN_DIR}, {"name": TMP_VOLUME, "mountPath": TMP_DIR}]


def _database_env(settings: PodSettings) -> dict[str, Any]:
    return {"name": Env.DATABASE_URL, "valueFrom": {"secretKeyRef": {
        "name": settings.database_secret, "key": settings.database_secret_key}}}


def sidecar_startup_probe() -> dict[str, Any]:
    polls = STARTUP_PROBE_WAIT_S * 10
    return {"exec": {"command": ["sh", "-c", STARTUP_PROBE_SCRIPT, "startup-probe", str(polls),
                                 f"{RUN_DIR}/{rundir.READY_FILE}"]},
            "periodSeconds": 1, "timeoutSeconds": STARTUP_PROBE_WAIT_S + 5, "failureThreshold": STARTUP_PROBE_ATTEMPTS}


def prepare_container(tr: TrainingRun, settings: PodSettings, attempt: int, run_id: str) -> dict[str, Any] | None:
    """The init step before the sidecar and trainer: dataset digest, checkpoint restore. None when
    there is nothing to prepare (a first attempt without a dataset)."""
    spec = tr.spec
    if spec.dataset is None and attempt <= 1:
        return None
    env = [
        _env(Env.RUN_ID, run_id),
        _env(Env.RUN_DIR, RUN_DIR),
        _env(Env.ATTEMPT, str(attempt)),
        _env(Env.NAMESPACE, tr.namespace),
        _env(Env.EXPERIMENT, spec.experiment),
    ]
    if spec.dataset is not None:
        env.append(_env(Env.DATASET_URI, spec.dataset.uri))
        if spec.dataset.sha256:
            env.append(_env(Env.DATASET_SHA256, spec.dataset.sha256))
        if spec.dataset.stage:
            env.append(_env(Env.DATASET_DIR, DATASET_DIR))
    env += [_env("HOME", TMP_DIR), _database_env(settings), *objectstore_env(settings)]
    pull = {"imagePullPolicy": settings.image_pull_policy} if settings.image_pull_policy else {}
    return {
        "name": PREPARE,
        "image": settings.sidecar_image,
        **pull,
        "command": ["cairn", "prepare"],
        "env": env,
        "volumeMounts": _cairn_mounts(),
        "resources": {"requests": {"cpu": settings.sidecar_cpu, "memory": settings.sidecar_memory},
                      "limits": {"memory": settings.sidecar_memory}},
        "securityContext": {**_container_security(), "readOnlyRootFilesystem": True},
        # The reason (both digests on a mismatch) lands in the pod status for the operator to show.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _resources(tr: TrainingRun) -> dict[str, Any]:
    r = tr.spec.resources
    limits: dict[str, str] = {}
    if r.gpus:
        limits[GPU_RESOURCE] = str(r.gpus)
    if r.cpu:
        limits["cpu"] = r.cpu
    if r.memory:
        limits["memory"] = r.memory
    return {"requests": dict(limits), "limits": limits} if limits else {}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def _tolerations(tr: TrainingRun) -> list[dict[str, Any]]:
    out = [{k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value), ("effect", t.effect),
                              ("tolerationSeconds", t.toleration_seconds)) if v is not None}
           for t in tr.spec.tolerations]
    if tr.spec.resources.gpus and not any(t.get("key") == GPU_RESOURCE for t in out):
        out.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return out


def build_pod(tr: TrainingRun, settings: PodSettings, attempt: int, run_id: str, *,
              active_deadline_seconds: int | None = None) -> dict[str, Any]:
    """The pod of ``attempt`` (1, 2, ...) of a TrainingRun.

    ``active_deadline_seconds`` is what is left of ``spec.activeDeadlineSeconds`` for this attempt;
    without it the whole deadline is used, a bound no attempt may exceed anyway. The kubelet then
    stops the pod (reason DeadlineExceeded) even while the operator is down.
    """
    if attempt < 1:
        raise ValueError(f"attempts count from 1, not {attempt}")
    spec = tr.spec
    deadline = spec.active_deadline_seconds if active_deadline_seconds is None else active_deadline_seconds
    if deadline is not None and deadline < 1:
        raise ValueError(f"the deadline has passed ({deadline}s left); fail the run instead of starting a pod")
    labels = {TRAININGRUN_LABEL: tr.name, RUN_ID_LABEL: run_id, ATTEMPT_LABEL: str(attempt)}
    node_selector = dict(spec.node_selector)
    if spec.resources.gpu_type:
        node_selector[GPU_PRODUCT_LABEL] = spec.resources.gpu_type
    mount = [{"name": RUN_VOLUME, "mountPath": RUN_DIR}]
    pull = {"imagePullPolicy": settings.image_pull_policy} if settings.image_pull_policy else {}

    sidecar = {
        "name": SIDECAR,
        "image": settings.sidecar_image,
        **pull,
        "restartPolicy": "Always",
        "command": ["cairn", "sidecar"],
        "env": [
            _env(Env.RUN_ID, run_id),
            _env(Env.RUN_DIR, RUN_DIR),
            _env(Env.ATTEMPT, str(attempt)),
            _env(Env.PARAMS, json.dumps(spec.params, sort_keys=True)),
            _env(Env.DRAIN_TIMEOUT, str(settings.drain_timeout_s)),
            _env(Env.NAMESPACE, tr.namespace),
            _env(Env.EXPERIMENT, spec.experiment),
            _env(Env.RUN_NAME, tr.name),
            _env(Env.METRICS_PORT, str(METRICS_PORT)),
            _env(Env.EXPORT_KEYS, ",".join(spec.tracking.export_keys)),
            _env(Env.HEADLINE_METRIC, spec.tracking.headline_metric or ""),
            _env("HOME", TMP_DIR),
            _database_env(settings),
            *objectstore_env(settings),
        ],
        "volumeMounts": _cairn_mounts(),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "startupProbe": sidecar_startup_probe(),
        "resources": {"requests": {"cpu": settings.sidecar_cpu, "memory": settings.sidecar_memory},
                      "limits": {"memory": settings.sidecar_memory}},
        "securityContext": {**_container_security(), "readOnlyRootFilesystem": True},
    }
    trainer = {
        "name": TRAINER,
        "image": spec.image,
        **pull,
        "command": list(spec.command),
        "args": list(spec.args),
        "env": trainer_env(tr, attempt, run_id),
        "volumeMounts": mount,
        "resources": _resources(tr),
        "securityContext": _container_security(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": [c for c in (prepare_container(tr, settings, attempt, run_id), sidecar) if c],
        "containers": [trainer],
        "volumes": [{"name": RUN_VOLUME, "emptyDir": {"sizeLimit": spec.run_volume_size_limit}},
                    {"name": TMP_VOLUME, "emptyDir": {}}],
        "automountServiceAccountToken": spec.service_account_name is not None,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_period_s(settings),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = _tolerations(tr)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if deadline is not None:
        pod_spec["activeDeadlineSeconds"] = int(deadline)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(tr.name, tr.uid, attempt),
            "namespace": tr.namespace,
            "labels": labels,
            # What a stock Prometheus kubernetes_sd pod job keeps and where it scrapes.
            "annotations": {EXPERIMENT_ANNOTATION: spec.experiment, "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics"},
            "ownerReferences": [{
                "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": tr.name, "uid": tr.uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": pod_spec,
    }
