"""What to do about one TrainingRun, decided from what the cluster shows now. No I/O.

The operator is level-triggered: every handler (TrainingRun change, pod event, a requeue an earlier
plan asked for) gathers the TrainingRun, the pod of its current attempt and that pod's node, calls
:func:`plan`, and carries the plan out. Pod names are deterministic per attempt, so carrying out the
same plan twice (a restarted operator, two handlers racing) creates nothing twice.

:func:`plan` finds the phase the run is in and hands over to one function per phase. They write
into a :class:`_Draft`, which keeps phase moves, conditions, events and store columns consistent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cairn.api import TrainingRun, to_dict
from cairn.api.schema import from_dict
from cairn.api.types import GPU_PRODUCT_LABEL, PARAM_KEY, Condition, TrainingRunStatus
from cairn.controller.failures import FailureKind, classify_pod_failure, phase_from_pod, retry_delay
from cairn.podspec import PREPARE, SIDECAR, TRAINER
from cairn.rundir import RunStatus

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = "Pending", "Running", "Succeeded", "Failed", "Suspended"
TERMINAL = (SUCCEEDED, FAILED)
PARAM_KEY_RE = re.compile(PARAM_KEY)

# Waiting reasons the kubelet keeps retrying but that need a person, by kind: the run is Stalled, and
# Failed after spec.pendingDeadlineSeconds. The kubelet alternates ErrImagePull and ImagePullBackOff, so
# one Event is posted per kind, not per reason.
STUCK_REASONS = {"ErrImagePull": "ImagePull", "ImagePullBackOff": "ImagePull", "ErrImageNeverPull": "ImagePull",
                 "InvalidImageName": "ImagePull", "CreateContainerConfigError": "ContainerConfig",
                 "CreateContainerError": "ContainerConfig", "RunContainerError": "CrashLoop",
                 "CrashLoopBackOff": "CrashLoop"}
STUCK_MESSAGE_CHARS = 500  # of the kubelet's message, which quotes user input (the image name)

# Store statuses for the TrainingRun phases.
STORE_STATUS = {PENDING: RunStatus.PENDING, RUNNING: RunStatus.RUNNING, SUCCEEDED: RunStatus.FINISHED,
                FAILED: RunStatus.FAILED, SUSPENDED: RunStatus.PENDING}


@dataclass
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict[str, Any] = field(default_factory=dict)  # camelCase merge patch of .status (None removes)
    create_attempt: int | None = None  # create the pod of this attempt
    delete_pod: str | None = None
    delete_trainingrun: bool = False
    events: list[Event] = field(default_factory=list)
    store: dict[str, Any] = field(default_factory=dict)  # run columns to set in the store
    retried_for: str | None = None  # failure reason, when this plan schedules a retry
    finished_pod: Mapping[str, Any] | None = None  # a pod that just ended (for GPU-seconds)
    running_since: dt.datetime | None = None  # the current pod runs, since then (GPU-seconds grow meanwhile)
    requeue_after: float | None = None  # seconds until the run must be looked at again, pod events or not


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def fmt_time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[Condition], ctype: str, status: bool, reason: str, message: str,
                  generation: int | None, now: dt.datetime) -> list[Condition]:
    """Conditions per the API conventions: lastTransitionTime moves only when status changes."""
    value = "True" if status else "False"
    new = Condition(type=ctype, status=value, reason=reason, message=message, last_transition_time=fmt_time(now),
                    observed_generation=generation)
    out = []
    for c in conditions:
        if c.type == ctype:
            if c.status == value:
                new = dataclasses.replace(new, last_transition_time=c.last_transition_time)
            out.append(new)
        else:
            out.append(c)
    return out if any(c.type == ctype for c in conditions) else [*out, new]


def merge_status(status: TrainingRunStatus, patch: Mapping[str, Any]) -> TrainingRunStatus:
    """The status once a plan's merge patch is applied."""
    return from_dict(TrainingRunStatus, {**to_dict(status), **patch})


def store_fields(status: TrainingRunStatus) -> dict[str, Any]:
    """The run columns that mirror a TrainingRun's status (idempotent to write again)."""
    out: dict[str, Any] = {"attempts": status.attempts or 0}
    if status.phase in STORE_STATUS:
        out["status"] = STORE_STATUS[status.phase]
    for column in ("node_name", "gpu_product", "image_digest", "exit_code"):
        if getattr(status, column) is not None:
            out[column] = getattr(status, column)
    if status.start_time:
        out["start_time"] = parse_time(status.start_time)
    if status.completion_time:
        out["end_time"] = parse_time(status.completion_time)
    return out


def invalid_params(params: Mapping[str, Any]) -> str | None:
    """What the CRD schema cannot say about params: each value must be a scalar."""
    for key, value in params.items():
        if not isinstance(value, (str, int, float, bool)):
            return f"spec.params.{key}: must be a string, number or boolean, not {type(value).__name__}"
        if not PARAM_KEY_RE.match(key):
            return f"spec.params.{key}: names start with a letter or _ and use letters, digits, _ . - /"
    return None


# ---------------------------------------------------------------------------------------------------
# Reading the pod


def container_status(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == name:
            return cs
    return None


def image_digest(pod: Mapping[str, Any]) -> str | None:
    """The trainer image's digest from the pod's imageID (``...@sha256:...`` or a bare ``sha256:...``)."""
    image_id = (container_status(pod, TRAINER) or {}).get("imageID") or ""
    if "sha256:" in image_id:
        return "sha256:" + image_id.rsplit("sha256:", 1)[1]
    return None


def unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return c.get("message") or "unschedulable"
    return None


def _pod_started(pod: Mapping[str, Any]) -> dt.datetime | None:
    state = (container_status(pod, TRAINER) or {}).get("state") or {}
    for key in ("running", "terminated"):
        if state.get(key, {}).get("startedAt"):
            return parse_time(state[key]["startedAt"])
    return parse_time((pod.get("status") or {}).get("startTime"))


def _trainer_exit_code(pod: Mapping[str, Any]) -> int | None:
    state = (container_status(pod, TRAINER) or {}).get("state") or {}
    return (state.get("terminated") or {}).get("exitCode")


def _pod_done(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


@dataclass(frozen=True)
class Waiting:
    """A container of the pod waits on a kubelet reason that needs a person."""

    container: str
    reason: str
    message: str


def stuck_container(pod: Mapping[str, Any]) -> Waiting | None:
    """The first container (init containers first, as the kubelet starts them) waiting on a stuck reason."""
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            message = " ".join(str(waiting.get("message") or "").split())[:STUCK_MESSAGE_CHARS]
            return Waiting(str(cs.get("name")), waiting["reason"], message)
    return None


def stuck_hint(tr: TrainingRun, pod_name: str, waiting: Waiting) -> str:
    """What a person can do about ``waiting``, as far as Cairn knows."""
    kind = STUCK_REASONS[waiting.reason]
    ours = waiting.container in (SIDECAR, PREPARE)
    if kind == "ImagePull" and ours:
        return "the operator's sidecar image cannot be pulled: check its CAIRN_SIDECAR_IMAGE setting"
    if kind == "ImagePull":
        return (f"check spec.image ({tr.spec.image}): the image must exist and the node must be able to pull it "
                "(a private registry needs imagePullSecrets on the ServiceAccount in spec.serviceAccountName)")
    if kind == "ContainerConfig" and ours:
        return (f"Cairn's containers read the store URL from a Secret in namespace {tr.namespace} (the operator's "
                "CAIRN_DATABASE_SECRET, default cairn-database, key url): create it, see docs/helm.md")
    if kind == "ContainerConfig":
        return "check the Secrets and ConfigMaps that spec.env refers to"
    return f"see kubectl logs -n {tr.namespace} {pod_name} -c {waiting.container}"


# ---------------------------------------------------------------------------------------------------
# The plan


class _Draft:
    """A plan being written for one TrainingRun at ``now``."""

    def __init__(self, tr: TrainingRun, now: dt.datetime) -> None:
        self.tr, self.spec, self.status, self.now = tr, tr.spec, tr.status, now
        self.attempts = tr.status.attempts or 0
        self.start = parse_time(tr.status.start_time)
        self.node: str | None = None
        self.finished = False
        self.stalled = False  # the pod waits on something a person must fix
        self._conditions = list(tr.status.conditions)
        self.plan = Plan(status={"observedGeneration": tr.generation})
        if tr.status.run_id != tr.uid:  # the store's run id is the TrainingRun's uid
            self.plan.status["runId"] = tr.uid

    def condition(self, ctype: str, ok: bool, reason: str, message: str) -> None:
        self._conditions = set_condition(self._conditions, ctype, ok, reason, message, self.tr.generation, self.now)
        self.plan.status["conditions"] = to_dict(self._conditions)

    def has_condition(self, ctype: str) -> bool:
        return any(c.type == ctype and c.status == "True" for c in self._conditions)

    def true_since(self, ctype: str) -> dt.datetime | None:
        """When condition ``ctype`` last became True; None while it is not True."""
        return next((parse_time(c.last_transition_time) for c in self._conditions
                     if c.type == ctype and c.status == "True"), None)

    def show_readiness(self) -> None:
        """Ready, Reconciling and Stalled from the phase this plan leaves the run in, as kstatus reads them
        (Flux, kubectl wait): Ready while Running or Succeeded; Reconciling while Pending or waiting to
        retry, unless stuck; Stalled once Failed or while the pod waits on something a person must fix."""
        phase = self.plan.status.get("phase", self.status.phase)
        reason = self.plan.status.get("reason", self.status.reason) or phase or PENDING
        message = self.plan.status.get("message", self.status.message) or ""
        retrying = self.plan.status.get("retryAfter", self.status.retry_after) is not None
        self.condition("Ready", phase in (RUNNING, SUCCEEDED) and not retrying, reason, message)
        self.condition("Reconciling", (phase == PENDING or retrying) and not self.stalled, reason, message)
        self.condition("Stalled", phase == FAILED or self.stalled, reason, message)

    def move(self, phase: str, reason: str, message: str, event_type: str = "Normal") -> None:
        if self.status.phase != phase:
            self.plan.events.append(Event(event_type, reason, message))
            self.plan.store["status"] = STORE_STATUS[phase]
        self.plan.status.update(phase=phase, reason=reason, message=message)

    def finish(self, phase: str, reason: str, message: str, exit_code: int | None) -> None:
        self.finished = True
        self.move(phase, reason, message, "Normal" if phase == SUCCEEDED else "Warning")
        self.plan.status.update(completionTime=fmt_time(self.now), exitCode=exit_code, retryAfter=None)
        self.plan.store.update(exit_code=exit_code, end_time=self.now,
                               reason=None if phase == SUCCEEDED else f"{reason}: {message}")
        self.condition("Complete" if phase == SUCCEEDED else "Failed", True, reason, message)
        ttl = self.spec.ttl_seconds_after_finished
        if ttl is not None:
            self.requeue_by(self.now + dt.timedelta(seconds=ttl))

    def new_attempt(self, reason: str) -> None:
        attempt = self.attempts + 1
        self.plan.create_attempt = attempt
        self.plan.status.update(attempts=attempt, retryAfter=None)
        self.plan.store["attempts"] = attempt
        self.move(PENDING, reason, f"creating the pod of attempt {attempt}")
        self.plan.events.append(Event("Normal", "PodCreated", f"attempt {attempt}"))

    def within_infrastructure_limit(self, message: str) -> bool:
        """Count one failure that is not the trainer's; past spec.infrastructureRetryLimit the run fails."""
        retries = (self.status.infrastructure_retries or 0) + 1
        self.plan.status["infrastructureRetries"] = retries
        limit = self.spec.infrastructure_retry_limit
        if retries <= limit:
            return True
        self.finish(FAILED, FailureKind.INFRASTRUCTURE.reason, f"{message}; infrastructureRetryLimit {limit} reached",
                    self.plan.status.get("exitCode"))
        return False

    def requeue_by(self, when: dt.datetime) -> None:
        after = max(0.0, (when - self.now).total_seconds())
        if self.plan.requeue_after is None or after < self.plan.requeue_after:
            self.plan.requeue_after = after

    def deadline(self) -> dt.datetime | None:
        """When ``activeDeadlineSeconds`` runs out: counted from the first attempt's start."""
        limit = self.spec.active_deadline_seconds
        if limit is None or self.start is None:
            return None
        return self.start + dt.timedelta(seconds=limit)

    def observe_pod(self, pod: Mapping[str, Any], node_labels: Mapping[str, str] | None) -> None:
        """Copy what the pod shows (its name, node, the node's GPU model, the image digest) into status."""
        self.plan.status["podName"] = pod["metadata"]["name"]
        self.node = (pod.get("spec") or {}).get("nodeName")
        gpu = (node_labels or {}).get(GPU_PRODUCT_LABEL)
        for key, column, value in (("nodeName", "node_name", self.node),
                                   ("gpuProduct", "gpu_product", gpu if self.spec.resources.gpus > 0 else None),
                                   ("imageDigest", "image_digest", image_digest(pod))):
            if value and getattr(self.status, column) != value:
                self.plan.status[key] = value
                self.plan.store[column] = value


def plan(tr: TrainingRun, pod: Mapping[str, Any] | None, node_labels: Mapping[str, str] | None,
         now: dt.datetime) -> Plan:
    """What to do about ``tr`` at ``now``, given the pod of its current attempt (None: not created yet,
    or gone) and the labels of that pod's node."""
    d = _Draft(tr, now)
    if tr.status.phase in TERMINAL:
        _finished(d)
        d.show_readiness()
        return d.plan
    problem = invalid_params(tr.spec.params)
    deadline = d.deadline()
    if problem and tr.status.phase is None:
        d.finish(FAILED, "InvalidSpec", problem, None)
    elif deadline is not None and now >= deadline:
        _deadline_exceeded(d, pod)
    elif tr.spec.suspend:
        _suspended(d, pod)
    elif tr.status.phase == SUSPENDED:
        _resumed(d)
    elif pod is None:
        _without_pod(d)
    else:
        d.observe_pod(pod, node_labels)
        _BY_POD_PHASE[phase_from_pod(pod)](d, pod)
    deadline = d.deadline()
    if deadline is not None and not d.finished:
        d.requeue_by(deadline)
    d.show_readiness()
    return d.plan


def _finished(d: _Draft) -> None:
    """Succeeded or Failed: only ``ttlSecondsAfterFinished`` is left, which deletes the TrainingRun."""
    ttl = d.spec.ttl_seconds_after_finished
    done = parse_time(d.status.completion_time)
    if ttl is None or done is None:
        return
    expires = done + dt.timedelta(seconds=ttl)
    if d.now >= expires:
        d.plan.delete_trainingrun = True
    else:
        d.requeue_by(expires)


def _deadline_exceeded(d: _Draft, pod: Mapping[str, Any] | None) -> None:
    """``activeDeadlineSeconds`` ran out, over every attempt: stop the pod, fail the run."""
    if pod is not None and not _pod_done(pod):
        d.plan.delete_pod = pod["metadata"]["name"]
    d.finish(FAILED, "DeadlineExceeded", f"the run was active for more than {d.spec.active_deadline_seconds}s", None)


def _suspended(d: _Draft, pod: Mapping[str, Any] | None) -> None:
    """``spec.suspend`` is true: the pod is stopped and no new attempt starts."""
    if pod is not None and not _pod_done(pod):
        d.plan.delete_pod = pod["metadata"]["name"]
    if d.status.phase != SUSPENDED:
        d.move(SUSPENDED, "Suspended", "spec.suspend is true; the pod was stopped")
        d.condition("Suspended", True, "Suspended", "spec.suspend is true")


def _resumed(d: _Draft) -> None:
    """``spec.suspend`` went back to false: the next attempt starts."""
    d.condition("Suspended", False, "Resumed", "spec.suspend is false")
    d.plan.events.append(Event("Normal", "Resumed", f"starting attempt {d.attempts + 1}"))
    d.new_attempt("Resumed")


def _without_pod(d: _Draft) -> None:
    """No pod for the current attempt: the first one is due, a retry waits out its backoff, or the
    pod vanished (deleted by someone, its node gone), which is not the code's fault and not counted."""
    if d.attempts == 0:
        d.new_attempt("Created")
        return
    retry_at = parse_time(d.status.retry_after)
    if retry_at is not None and d.now < retry_at:
        d.requeue_by(retry_at)
        return
    if retry_at is None:
        if not d.within_infrastructure_limit(f"pod {d.status.pod_name} disappeared"):
            return
        d.plan.events.append(Event("Warning", "PodLost",
                                   f"pod {d.status.pod_name} disappeared; starting a new attempt"))
        d.plan.retried_for = FailureKind.INFRASTRUCTURE.value
    d.new_attempt("Retrying")


def _pending(d: _Draft, pod: Mapping[str, Any]) -> None:
    """The pod waits for a node or for its containers; the scheduler's reason is shown when it has none,
    the kubelet's when a container is stuck."""
    why = unschedulable_message(pod)
    if why:
        d.condition("Scheduled", False, "Unschedulable", why)
        d.move(PENDING, "Unschedulable", why, "Warning")
        return
    if d.node:
        d.condition("Scheduled", True, "Scheduled", f"scheduled on {d.node}")
    waiting = stuck_container(pod)
    if waiting is not None:
        _stuck(d, pod, waiting)
        return
    d.move(PENDING, "PodPending", f"pod {pod['metadata']['name']} is starting")


def _stuck(d: _Draft, pod: Mapping[str, Any], waiting: Waiting) -> None:
    """A container waits on a kubelet reason that needs a person: shown at once (one Event per kind of
    trouble), and the run fails once it has been stuck for ``pendingDeadlineSeconds``."""
    name = pod["metadata"]["name"]
    text = f"container {waiting.container}: {waiting.reason}: {waiting.message}; {stuck_hint(d.tr, name, waiting)}"
    limit = d.spec.pending_deadline_seconds
    give_up_at = (d.true_since("Stalled") or d.now) + dt.timedelta(seconds=limit)
    if d.now >= give_up_at:
        d.plan.delete_pod = name
        d.finish(FAILED, waiting.reason, f"{text} (stuck for {limit}s, spec.pendingDeadlineSeconds)", None)
        return
    new_trouble = STUCK_REASONS.get(d.status.reason or "") != STUCK_REASONS[waiting.reason]
    if new_trouble and d.status.phase == PENDING:  # from another phase, move() posts the Event
        d.plan.events.append(Event("Warning", waiting.reason, text))
    d.stalled = True
    d.move(PENDING, waiting.reason, text, "Warning")
    d.requeue_by(give_up_at)


def _running(d: _Draft, pod: Mapping[str, Any]) -> None:
    """The pod runs: the run's start time is the first attempt's; a Retrying condition is cleared."""
    d.condition("Scheduled", True, "Scheduled", f"scheduled on {d.node}")
    d.plan.running_since = parse_time((pod.get("status") or {}).get("startTime")) or d.now
    if d.start is None:
        d.start = _pod_started(pod) or d.now
        d.plan.status["startTime"] = fmt_time(d.start)
        d.plan.store["start_time"] = d.start
    if d.has_condition("Retrying"):
        d.condition("Retrying", False, "Running", f"attempt {d.attempts} is running")
    d.move(RUNNING, "Running", f"attempt {d.attempts} is running on {d.node}")


def _succeeded(d: _Draft, pod: Mapping[str, Any]) -> None:
    """The pod ended well (the sidecar has drained every record): the run succeeded."""
    code = _trainer_exit_code(pod)
    d.plan.finished_pod = pod
    d.finish(SUCCEEDED, "Succeeded", f"attempt {d.attempts} finished", 0 if code is None else code)


def _failed(d: _Draft, pod: Mapping[str, Any]) -> None:
    """The pod failed: counted once (``retryAfter`` marks it), against ``backoffLimit`` or, when it is
    not the trainer's fault, ``infrastructureRetryLimit``; then the run fails or retries after a backoff.
    Some failures are final."""
    retry_at = parse_time(d.status.retry_after)
    if retry_at is not None:  # this failure was counted already; waiting out the backoff
        if d.now < retry_at:
            d.requeue_by(retry_at)
        else:
            d.new_attempt("Retrying")
        return
    kind, message = classify_pod_failure(pod)
    code = _trainer_exit_code(pod)
    d.plan.finished_pod = pod
    d.plan.status["exitCode"] = code
    d.plan.store["exit_code"] = code
    failures = d.status.failures or 0
    if kind.counts:
        failures += 1
        d.plan.status["failures"] = failures
    elif not d.within_infrastructure_limit(message):
        return
    limit = d.spec.backoff_limit
    if kind.is_final or (kind.counts and failures > limit):
        d.finish(FAILED, kind.reason, message if kind.is_final else f"{message}; backoffLimit {limit} reached", code)
        return
    _retry_later(d, kind, message, failures if kind.counts else 0)


def _retry_later(d: _Draft, kind: FailureKind, message: str, counted_failures: int) -> None:
    delay = retry_delay(counted_failures)
    text = f"attempt {d.attempts} failed: {message}; retrying in {delay:.0f}s"
    d.plan.status.update(retryAfter=fmt_time(d.now + dt.timedelta(seconds=delay)), reason=kind.reason, message=text)
    d.plan.events.append(Event("Warning", kind.reason, text))
    d.plan.store["reason"] = f"{kind.reason}: {message}"
    d.plan.retried_for = kind.value
    d.requeue_by(d.now + dt.timedelta(seconds=delay))
    d.condition("Retrying", True, kind.reason, text)


_BY_POD_PHASE: dict[str, Callable[[_Draft, Mapping[str, Any]], None]] = {
    "Pending": _pending, "Running": _running, "Succeeded": _succeeded, "Failed": _failed}
