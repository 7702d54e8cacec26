"""What to do about one TrainingRun, decided from what the cluster shows now. No I/O.

The operator is level-triggered: every handler (TrainingRun change, pod change, timer) gathers
the TrainingRun, the pod of its current attempt and that pod's node, calls :func:`plan`, and
carries the plan out. Pod names are deterministic per attempt, so carrying out the same plan
twice (a restarted operator, two handlers racing) creates nothing twice.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from cairn.api.types import PARAM_KEY
from cairn.podspec import FailureKind, classify_pod_failure, retry_delay

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = "Pending", "Running", "Succeeded", "Failed", "Suspended"
TERMINAL = (SUCCEEDED, FAILED)
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
TRAINER_CONTAINER = "trainer"
PARAM_KEY_RE = re.compile(PARAM_KEY)

# Failures a new attempt cannot fix: the deadline, a dataset that is not the pinned one or not there.
NOT_RETRIED = (FailureKind.DEADLINE, FailureKind.DATASET_MISMATCH, FailureKind.DATASET_UNAVAILABLE)

# Store statuses for the TrainingRun phases.
STORE_STATUS = {PENDING: "PENDING", RUNNING: "RUNNING", SUCCEEDED: "FINISHED", FAILED: "FAILED", SUSPENDED: "PENDING"}


@dataclass
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict[str, Any] = field(default_factory=dict)  # merge into .status
    create_attempt: int | None = None  # create the pod of this attempt
    delete_pod: str | None = None
    delete_trainingrun: bool = False
    events: list[Event] = field(default_factory=list)
    store: dict[str, Any] = field(default_factory=dict)  # run columns to set in the store
    retried_for: str | None = None  # failure reason, when this plan schedules a retry
    finished_pod: Mapping[str, Any] | None = None  # a pod that just ended (for GPU-seconds)
    requeue_after: float | None = None


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def fmt_time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], ctype: str, status: bool, reason: str, message: str,
                  generation: int | None, now: dt.datetime) -> list[dict]:
    """Conditions per the API conventions: lastTransitionTime moves only when status changes."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions]
    for c in out:
        if c.get("type") == ctype:
            if c.get("status") != value:
                c["lastTransitionTime"] = fmt_time(now)
            c.update(status=value, reason=reason, message=message, observedGeneration=generation)
            return out
    out.append({"type": ctype, "status": value, "reason": reason, "message": message,
                "lastTransitionTime": fmt_time(now), "observedGeneration": generation})
    return out


def container_status(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == name:
            return cs
    return None


def image_digest(pod: Mapping[str, Any]) -> str | None:
    """The trainer image's digest from the pod's imageID (``...@sha256:...`` or a bare ``sha256:...``)."""
    cs = container_status(pod, TRAINER_CONTAINER)
    image_id = (cs or {}).get("imageID") or ""
    if "sha256:" in image_id:
        return "sha256:" + image_id.rsplit("sha256:", 1)[1]
    return None


def unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return c.get("message") or "unschedulable"
    return None


def _pod_started(pod: Mapping[str, Any]) -> dt.datetime | None:
    cs = container_status(pod, TRAINER_CONTAINER) or {}
    state = cs.get("state") or {}
    for key in ("running", "terminated"):
        if state.get(key, {}).get("startedAt"):
            return parse_time(state[key]["startedAt"])
    return parse_time((pod.get("status") or {}).get("startTime"))


def _trainer_exit(pod: Mapping[str, Any]) -> tuple[int | None, dt.datetime | None]:
    cs = container_status(pod, TRAINER_CONTAINER) or {}
    term = (cs.get("state") or {}).get("terminated") or {}
    return term.get("exitCode"), parse_time(term.get("finishedAt"))


def plan(tr: Mapping[str, Any], pod: Mapping[str, Any] | None, node_labels: Mapping[str, str] | None,
         now: dt.datetime) -> Plan:
    spec = tr.get("spec") or {}
    status = dict(tr.get("status") or {})
    meta = tr.get("metadata") or {}
    generation = meta.get("generation")
    attempts = int(status.get("attempts") or 0)
    failures = int(status.get("failures") or 0)
    phase = status.get("phase")
    conditions = list(status.get("conditions") or [])
    p = Plan()

    def cond(ctype: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, ctype, ok, reason, message, generation, now)
        p.status["conditions"] = conditions

    def move(new_phase: str, reason: str, message: str, event_type: str = "Normal") -> None:
        if phase != new_phase:
            p.events.append(Event(event_type, reason, message))
            p.store["status"] = STORE_STATUS[new_phase]
        p.status.update(phase=new_phase, reason=reason, message=message)

    p.status["observedGeneration"] = generation

    # -- finished: only the TTL is left to enforce ----------------------------------------------
    if phase in TERMINAL:
        ttl = spec.get("ttlSecondsAfterFinished")
        done = parse_time(status.get("completionTime"))
        if ttl is not None and done is not None:
            left = (done + dt.timedelta(seconds=int(ttl)) - now).total_seconds()
            if left <= 0:
                p.delete_trainingrun = True
            else:
                p.requeue_after = left
        return p

    start = parse_time(status.get("startTime"))
    deadline = spec.get("activeDeadlineSeconds")
    pod_name = status.get("podName")

    def finish(new_phase: str, reason: str, message: str, exit_code: int | None) -> None:
        move(new_phase, reason, message, "Normal" if new_phase == SUCCEEDED else "Warning")
        p.status.update(completionTime=fmt_time(now), exitCode=exit_code, retryAfter=None)
        p.store.update(exit_code=exit_code, end_time=now, reason=None if new_phase == SUCCEEDED else f"{reason}: {message}")
        cond("Complete" if new_phase == SUCCEEDED else "Failed", True, reason, message)

    problem = invalid_params(spec.get("params") or {})
    if problem and phase is None:
        finish(FAILED, "InvalidSpec", problem, None)
        return p

    # -- deadline over every attempt ---------------------------------------------------------------
    if deadline is not None and start is not None and (now - start).total_seconds() >= int(deadline):
        if pod is not None and not _pod_done(pod):
            p.delete_pod = pod["metadata"]["name"]
        finish(FAILED, "DeadlineExceeded", f"the run was active for more than {deadline}s", None)
        return p

    # -- suspend / resume ----------------------------------------------------------------------------
    if spec.get("suspend"):
        if pod is not None and not _pod_done(pod):
            p.delete_pod = pod["metadata"]["name"]
        if phase != SUSPENDED:
            move(SUSPENDED, "Suspended", "spec.suspend is true; the pod was stopped")
            cond("Suspended", True, "Suspended", "spec.suspend is true")
        return p
    if phase == SUSPENDED:
        cond("Suspended", False, "Resumed", "spec.suspend is false")
        p.events.append(Event("Normal", "Resumed", f"starting attempt {attempts + 1}"))
        return _new_attempt(p, attempts, move, "Resumed")

    # -- no pod yet, or the current attempt's pod is gone ---------------------------------------------
    if pod is None:
        retry_at = parse_time(status.get("retryAfter"))
        if attempts == 0:
            return _new_attempt(p, attempts, move, "Created")
        if retry_at is not None and now < retry_at:
            p.requeue_after = (retry_at - now).total_seconds()
            return p
        if retry_at is None:
            # The pod vanished (deleted by someone, node gone): not the code's fault, not counted.
            p.events.append(Event("Warning", "PodLost", f"pod {pod_name} disappeared; starting a new attempt"))
            p.retried_for = FailureKind.INFRASTRUCTURE.value
        return _new_attempt(p, attempts, move, "Retrying")

    pod_phase = (pod.get("status") or {}).get("phase")
    p.status["podName"] = pod["metadata"]["name"]
    node = (pod.get("spec") or {}).get("nodeName")
    if node and status.get("nodeName") != node:
        p.status["nodeName"] = node
        p.store["node_name"] = node
    gpu = (node_labels or {}).get(GPU_PRODUCT_LABEL)
    if gpu and int((spec.get("resources") or {}).get("gpus") or 0) > 0 and status.get("gpuProduct") != gpu:
        p.status["gpuProduct"] = gpu
        p.store["gpu_product"] = gpu
    digest = image_digest(pod)
    if digest and status.get("imageDigest") != digest:
        p.status["imageDigest"] = digest
        p.store["image_digest"] = digest

    if pod_phase == "Pending" or pod_phase is None:
        why = unschedulable_message(pod)
        if why:
            cond("Scheduled", False, "Unschedulable", why)
            move(PENDING, "Unschedulable", why, "Warning")
        else:
            if node:
                cond("Scheduled", True, "Scheduled", f"scheduled on {node}")
            move(PENDING, "PodPending", f"pod {pod['metadata']['name']} is starting")
        return p

    if pod_phase == "Running":
        cond("Scheduled", True, "Scheduled", f"scheduled on {node}")
        started = _pod_started(pod) or now
        if start is None:
            p.status["startTime"] = fmt_time(started)
            p.store["start_time"] = started
        if any(c.get("type") == "Retrying" and c.get("status") == "True" for c in conditions):
            cond("Retrying", False, "Running", f"attempt {attempts} is running")
        move(RUNNING, "Running", f"attempt {attempts} is running on {node}")
        if deadline is not None:
            first = start or started
            p.requeue_after = max(0.0, (first + dt.timedelta(seconds=int(deadline)) - now).total_seconds())
        return p

    if pod_phase == "Succeeded":
        code, _ = _trainer_exit(pod)
        p.finished_pod = pod
        finish(SUCCEEDED, "Succeeded", f"attempt {attempts} finished", 0 if code is None else code)
        return p

    if pod_phase == "Failed":
        retry_at = parse_time(status.get("retryAfter"))
        if retry_at is not None:  # this failure was counted already; waiting out the backoff
            if now < retry_at:
                p.requeue_after = (retry_at - now).total_seconds()
                return p
            return _new_attempt(p, attempts, move, "Retrying")
        kind, message = classify_pod_failure(pod)
        code, _ = _trainer_exit(pod)
        p.finished_pod = pod
        p.status["exitCode"] = code
        p.store["exit_code"] = code
        counted = kind != FailureKind.INFRASTRUCTURE
        if counted:
            failures += 1
            p.status["failures"] = failures
        limit = int(spec.get("backoffLimit", 3))
        final = kind in NOT_RETRIED
        if final or (counted and failures > limit):
            why = message if final else f"{message}; backoffLimit {limit} reached"
            finish(FAILED, kind.reason, why, code)
            return p
        delay = retry_delay(failures if counted else 0)
        retry_at = now + dt.timedelta(seconds=delay)
        p.status["retryAfter"] = fmt_time(retry_at)
        p.status["reason"] = kind.reason
        p.status["message"] = f"attempt {attempts} failed: {message}; retrying in {delay:.0f}s"
        p.events.append(Event("Warning", kind.reason, p.status["message"]))
        p.store["reason"] = f"{kind.reason}: {message}"
        p.retried_for = kind.value
        p.requeue_after = delay
        cond("Retrying", True, kind.reason, p.status["message"])
        return p

    return p


def invalid_params(params: Mapping[str, Any]) -> str | None:
    """What the CRD schema cannot say about params: each value must be a scalar."""
    for key, value in params.items():
        if not isinstance(value, (str, int, float, bool)):
            return f"spec.params.{key}: must be a string, number or boolean, not {type(value).__name__}"
        if not PARAM_KEY_RE.match(key):
            return f"spec.params.{key}: names start with a letter or _ and use letters, digits, _ . - /"
    return None


def _pod_done(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _new_attempt(p: Plan, attempts: int, move, reason: str) -> Plan:  # noqa: ANN001
    attempt = attempts + 1
    p.create_attempt = attempt
    p.status.update(attempts=attempt, retryAfter=None)
    p.store["attempts"] = attempt
    move(PENDING, reason, f"creating the pod of attempt {attempt}")
    p.events.append(Event("Normal", "PodCreated", f"attempt {attempt}"))
    return p


def store_fields(status: Mapping[str, Any]) -> dict[str, Any]:
    """The run columns that mirror a TrainingRun's status (idempotent to write again)."""
    out: dict[str, Any] = {"attempts": int(status.get("attempts") or 0)}
    if status.get("phase") in STORE_STATUS:
        out["status"] = STORE_STATUS[status["phase"]]
    for key, column in (("nodeName", "node_name"), ("gpuProduct", "gpu_product"), ("imageDigest", "image_digest"),
                        ("exitCode", "exit_code")):
        if status.get(key) is not None:
            out[column] = status[key]
    if status.get("startTime"):
        out["start_time"] = parse_time(status["startTime"])
    if status.get("completionTime"):
        out["end_time"] = parse_time(status["completionTime"])
    return out
