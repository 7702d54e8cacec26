"""TrainingRun types (cairn.dev/v1alpha1) and their CRD."""

from __future__ import annotations

from typing import Any, Mapping

from cairn.api.schema import from_dict, to_dict
from cairn.api.types import GROUP, KIND, PLURAL, VERSION, TrainingRun, TrainingRunSpec, TrainingRunStatus

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION", "TrainingRun", "TrainingRunSpec", "TrainingRunStatus",
           "from_manifest", "recorded_spec", "to_dict"]

# Left out of the recorded spec: env (its values may be secrets), params (recorded as the run's params),
# suspend (a state, not a choice of what to train), registerModel (a re-run is not a new version).
NOT_RECORDED = ("env", "params", "suspend", "registerModel")


def from_manifest(obj: Mapping[str, Any]) -> TrainingRun:
    """The typed view of a TrainingRun object as the API server returns it (defaults filled in)."""
    meta = obj.get("metadata") or {}
    return TrainingRun(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", "default"),
        uid=meta.get("uid", ""),
        generation=meta.get("generation"),
        spec=from_dict(TrainingRunSpec, obj.get("spec") or {}),
        status=from_dict(TrainingRunStatus, obj.get("status") or {}),
    )


def recorded_spec(spec: TrainingRunSpec) -> dict[str, Any]:
    """The spec as the run's store record keeps it, to write the TrainingRun again."""
    return {k: v for k, v in to_dict(spec).items() if k not in NOT_RECORDED}
