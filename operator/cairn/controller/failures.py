"""How a run pod ended, as the retry policy needs to know it. Pure functions: no I/O, no clock.

A failed pod is classified by who is to blame: the trainer (a non-zero exit, a command the runtime
cannot start, out of memory, a full run volume) counts against ``spec.backoffLimit``; the
infrastructure (eviction, preemption, node loss, a prepare step that could not reach the stores)
counts against ``spec.infrastructureRetryLimit``; a few failures are final because a new attempt
cannot fix them (the deadline, a dataset that is not the pinned one or not there).
"""

from __future__ import annotations

import enum
from typing import Any, Mapping

from cairn.podspec import PREPARE, RUN_VOLUME, TRAINER
from cairn.rundir import PREPARE_DATASET_MISMATCH_EXIT, PREPARE_DATASET_UNAVAILABLE_EXIT

RETRY_BASE_S = 5.0
RETRY_CAP_S = 300.0


def phase_from_pod(pod: Mapping[str, Any]) -> str:
    """The TrainingRun phase one attempt's pod stands for (Pending, Running, Succeeded or Failed).

    A pod whose trainer has exited stays Running until the sidecar has drained and the pod itself
    ends: only then is every record in the store. ``Unknown`` (the node stopped reporting) is still
    Running; the node lifecycle controller fails the pod if the node does not come back.
    """
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Running", "Unknown"):
        return "Running"
    if phase in ("Succeeded", "Failed"):
        return phase
    return "Pending"


class FailureKind(enum.Enum):
    USER_ERROR = "UserError"  # the trainer exited non-zero: counts against backoffLimit
    START_ERROR = "StartError"  # the runtime could not start the trainer's command: counts
    OOM = "OOMKilled"  # killed for exceeding its memory limit: counts
    RUN_VOLUME_FULL = "RunVolumeFull"  # evicted for writing more than spec.runVolumeSizeLimit: counts
    INFRASTRUCTURE = "Infrastructure"  # eviction, preemption, node loss: counts against infrastructureRetryLimit
    DEADLINE = "DeadlineExceeded"  # the pod's own deadline: not retried
    DATASET_MISMATCH = "DatasetMismatch"  # the dataset's digest is not the pinned one: not retried
    DATASET_UNAVAILABLE = "DatasetUnavailable"  # no object store, bucket or access for the dataset: not retried

    @property
    def reason(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """A new attempt cannot fix it."""
        return self in (FailureKind.DEADLINE, FailureKind.DATASET_MISMATCH, FailureKind.DATASET_UNAVAILABLE)

    @property
    def counts(self) -> bool:
        """It counts against spec.backoffLimit (otherwise against spec.infrastructureRetryLimit)."""
        return self is not FailureKind.INFRASTRUCTURE


# containerd and Docker: the command could not be run (no such file, not executable); exit code 128.
START_FAILURE_REASONS = {"StartError", "ContainerCannotRun"}
# The kubelet's eviction message when the run volume outgrows its sizeLimit: Usage of EmptyDir volume "run"
# exceeds the limit "50Gi".
RUN_VOLUME_FULL_MARK = f'EmptyDir volume "{RUN_VOLUME}" exceeds the limit'

INFRASTRUCTURE_REASONS = {"Evicted", "Preempting", "NodeLost", "NodeShutdown", "Shutdown", "Terminated",
                          "UnexpectedAdmissionError", "OutOfgpu", "OutOfcpu", "OutOfmemory"}


def classify_pod_failure(pod: Mapping[str, Any]) -> tuple[FailureKind, str]:
    """Why a Failed pod failed, as a retry policy needs to know it."""
    status = pod.get("status") or {}
    reason = status.get("reason") or ""
    if reason == "DeadlineExceeded":
        return FailureKind.DEADLINE, status.get("message") or "the pod's active deadline passed"
    message = status.get("message") or ""
    # Before the DisruptionTarget condition, which the kubelet sets on every eviction of its own.
    if reason == "Evicted" and RUN_VOLUME_FULL_MARK in message:
        return FailureKind.RUN_VOLUME_FULL, f"{message.strip()[:500]} (spec.runVolumeSizeLimit)"
    for c in status.get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return FailureKind.INFRASTRUCTURE, f"{c.get('reason') or 'disrupted'}: {c.get('message') or ''}".strip(": ")
    if reason in INFRASTRUCTURE_REASONS or reason.startswith("OutOf"):
        return FailureKind.INFRASTRUCTURE, f"{reason}: {status.get('message') or ''}".strip(": ")
    prepare = next((cs for cs in status.get("initContainerStatuses") or [] if cs.get("name") == PREPARE), None)
    prep_term = ((prepare or {}).get("state") or {}).get("terminated") or {}
    prep_code = prep_term.get("exitCode")
    if prep_code in (PREPARE_DATASET_MISMATCH_EXIT, PREPARE_DATASET_UNAVAILABLE_EXIT):
        kind = (FailureKind.DATASET_MISMATCH if prep_code == PREPARE_DATASET_MISMATCH_EXIT
                else FailureKind.DATASET_UNAVAILABLE)
        lines = (prep_term.get("message") or "").strip().splitlines()
        return kind, (lines[-1][:1000] if lines else f"the prepare step exited with code {prep_code}")
    trainer = next((cs for cs in status.get("containerStatuses") or [] if cs.get("name") == TRAINER), None)
    term = ((trainer or {}).get("state") or {}).get("terminated")
    if term is None:
        if prep_code:
            lines = (prep_term.get("message") or "").strip().splitlines()
            return FailureKind.INFRASTRUCTURE, (f"the prepare step failed (exit code {prep_code})"
                                                + (f": {lines[-1][:200]}" if lines else ""))
        return FailureKind.INFRASTRUCTURE, status.get("message") or "the pod failed before the trainer ran"
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled":
        return FailureKind.OOM, f"the trainer ran out of memory (exit code {code})"
    detail = (term.get("message") or "").strip().splitlines()
    tail = f": {detail[-1][:200]}" if detail else ""
    if term.get("reason") in START_FAILURE_REASONS:
        return FailureKind.START_ERROR, (f"the trainer's command could not be started ({term['reason']}, "
                                         f"exit code {code}; check spec.command and spec.image){tail}")
    if code and code >= 128 and term.get("reason") not in (None, "Error", "Completed"):
        return FailureKind.INFRASTRUCTURE, f"the trainer was killed ({term.get('reason')}, exit code {code})"
    return FailureKind.USER_ERROR, f"the trainer exited with code {code}{tail}"


def retry_delay(failures: int, base: float = RETRY_BASE_S, cap: float = RETRY_CAP_S) -> float:
    """Seconds before the next attempt: base after an uncounted failure, doubling per counted one."""
    if failures <= 0:
        return base
    return min(cap, base * 2.0 ** min(failures - 1, 64))
