"""Kopf handlers of Models and Evaluations, thin: gather what ``evaluation.plan`` needs, carry its plan out.

A Model's status (the versions behind its aliases) is copied from the store when it is created or the
operator starts, and every MODEL_STATUS_INTERVAL_S after. An Evaluation is looked at when it is created,
when the operator starts, when one of its TrainingRuns changes, and every EVALUATION_RETRY_S until it has
finished (which also bounds how long a store outage delays it). The gate's numpy and scipy are imported
only when a verdict is due.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any, Mapping

import kopf
from kubernetes.client.rest import ApiException

from cairn.api import GROUP, PLURAL, VERSION, from_manifest, to_dict
from cairn.api.registry import (EVALUATION_PLURAL, MODEL_PLURAL, EvaluationSpec, EvaluationStatus, ModelSpec,
                                ModelStatus)
from cairn.api.schema import from_dict
from cairn.controller import evaluation as E
from cairn.store.registry import ModelNotFound

if TYPE_CHECKING:
    from cairn.controller.handlers import Operator
    from cairn.gates import Verdict

MODEL_STATUS_INTERVAL_S = 30.0
EVALUATION_RETRY_S = 30.0
MAX_MESSAGE_LENGTH = 1024

log = logging.getLogger("cairn.controller")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get(op: Operator, plural: str, namespace: str, name: str) -> dict | None:
    try:
        return op.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def sync_model_status(op: Operator, namespace: str, name: str) -> dict[str, Any] | None:
    """Copy the model's versions and aliases from the store into the Model's status, when they changed;
    the patch made, or None."""
    manifest = _get(op, MODEL_PLURAL, namespace, name)
    if manifest is None:
        return None
    found = next((m for m in op.store.list_models(namespace) if m.name == name), None)
    wanted = ModelStatus(aliases=dict(found.aliases) if found else {}, versions=found.versions if found else 0,
                         latest_version=found.latest_version if found else None)
    current = from_dict(ModelStatus, manifest.get("status") or {})
    if (current.aliases, current.versions, current.latest_version) == \
            (wanted.aliases, wanted.versions, wanted.latest_version):
        return None
    patch = to_dict(wanted)
    patch["aliases"] = {**{alias: None for alias in current.aliases}, **wanted.aliases}  # merge patch: drop the gone
    patch["syncedAt"] = _now()
    op.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, MODEL_PLURAL, name, {"status": patch})
    return patch


def _child(op: Operator, namespace: str, name: str, evaluation_uid: str) -> E.ChildRun | None:
    manifest = _get(op, PLURAL, namespace, name)
    if manifest is None:
        return None
    if not any(o.get("uid") == evaluation_uid for o in manifest["metadata"].get("ownerReferences") or []):
        raise kopf.PermanentError(f"TrainingRun {namespace}/{name} exists and is not this Evaluation's")
    tr = from_manifest(manifest)
    return E.ChildRun(tr.name, tr.uid, tr.status.phase, tr.status.image_digest, tr.status.reason)


def observe(op: Operator, manifest: Mapping[str, Any]) -> E.Observed:
    """The cluster's and the store's view of one Evaluation."""
    meta = manifest["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    spec = from_dict(EvaluationSpec, manifest.get("spec") or {})
    status = from_dict(EvaluationStatus, manifest.get("status") or {})
    model = _get(op, MODEL_PLURAL, namespace, spec.model)
    try:
        detail = op.store.get_model(namespace, spec.model)
    except ModelNotFound:
        detail = None
    versions = detail.versions if detail else []
    uris = {v.version: E.model_uri(v.path, [(f.path, f.uri) for f in v.files]) for v in versions}
    holder = next((a.version for a in detail.aliases if a.alias == spec.alias), None) if detail else None
    baseline = status.baseline_version if status.baseline_version is not None else holder
    stored = [] if detail is None or baseline is None else E.stored_results(
        baseline, reversed([(e.candidate_version, e.baseline_version, e.eval_run_ids, e.dataset_sha256,
                             e.eval_image_digest) for e in detail.evaluations]))
    return E.Observed(
        namespace, name, uid, spec, status, from_dict(ModelSpec, model["spec"]) if model else None, uris, holder,
        _child(op, namespace, E.child_name(name, E.CANDIDATE), uid),
        _child(op, namespace, E.child_name(name, E.BASELINE), uid), stored)


def reconcile_evaluation(op: Operator, namespace: str, name: str) -> dict[str, Any] | None:
    """Read the Evaluation, plan, carry the plan out; the status patch made, if any."""
    with op.locks.hold(f"evaluation:{namespace}/{name}"):
        manifest = _get(op, EVALUATION_PLURAL, namespace, name)
        if manifest is None or manifest["metadata"].get("deletionTimestamp"):
            return None
        seen = observe(op, manifest)
        step = E.plan(seen)
        for body in step.create:
            try:
                op.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            except ApiException as exc:
                if exc.status != 409:  # created by an earlier pass; _child checked whose it is
                    raise
        status = dict(step.status)
        if step.decide is not None:
            status.update(verdict_status(op, seen, *step.decide, status))
        old = to_dict(seen.status)
        changed = {k: v for k, v in status.items() if old.get(k) != v}
        if changed:
            op.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, EVALUATION_PLURAL, name,
                                                           {"status": changed})
        return changed


def verdict_status(op: Operator, seen: E.Observed, candidate_run: str, baseline_run: str,
                   status: Mapping[str, Any]) -> dict[str, Any]:
    """Ask the gate about both runs' per-example results and store the verdict (once per pair of runs);
    the status fields that show it."""
    from cairn.gates import Example, decide, gate_spec_from  # numpy and scipy: only when a verdict is due

    spec = seen.spec
    baseline = status["baselineVersion"]
    try:
        gate = gate_spec_from(to_dict(seen.model.gate))
        verdict = decide(gate, *([Example(e.id, e.metrics, tuple(e.slices)) for e in op.store.eval_examples(run)]
                                 for run in (candidate_run, baseline_run)))
    except ValueError as exc:
        return {"phase": E.FAILED, "reason": "NoVerdict", "message": str(exc)[:MAX_MESSAGE_LENGTH]}
    runs = [candidate_run, baseline_run]
    stored = next((e for e in op.store.evaluations(seen.namespace, spec.model, spec.candidate_version)
                   if e.baseline_version == baseline and e.eval_run_ids == runs), None)
    if stored is None:
        stored = op.store.record_evaluation(seen.namespace, spec.model, spec.candidate_version, baseline,
                                            verdict.to_dict(), runs, status.get("datasetSha256"),
                                            status.get("evalImageDigest"))
    return {**shown(verdict), "evaluationId": stored.id, "completionTime": _now()}


def shown(verdict: Verdict) -> dict[str, Any]:
    """The status fields of a verdict: the decision and the primary metric's delta and interval."""
    primary = verdict.primary
    return {"phase": E.SUCCEEDED, "reason": "".join(w.capitalize() for w in verdict.decision.split("_")),
            "message": verdict.reason[:MAX_MESSAGE_LENGTH], "verdict": verdict.decision, "passed": verdict.passed,
            "delta": f"{primary.delta:+.4g}", "ci": f"[{primary.ci_low:+.4g}, {primary.ci_high:+.4g}]"}


def _operator(memo: kopf.Memo) -> Operator:
    return memo["operator"]


@kopf.on.create(GROUP, VERSION, MODEL_PLURAL)
@kopf.on.resume(GROUP, VERSION, MODEL_PLURAL)
@kopf.timer(GROUP, VERSION, MODEL_PLURAL, interval=MODEL_STATUS_INTERVAL_S)
def on_model(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    sync_model_status(_operator(memo), namespace, name)


def unfinished_evaluation(status: Mapping[str, Any], **_: Any) -> bool:
    return status.get("phase") not in E.FINISHED_PHASES


@kopf.on.create(GROUP, VERSION, EVALUATION_PLURAL)
@kopf.on.resume(GROUP, VERSION, EVALUATION_PLURAL, when=unfinished_evaluation)
@kopf.timer(GROUP, VERSION, EVALUATION_PLURAL, interval=EVALUATION_RETRY_S, when=unfinished_evaluation)
def on_evaluation(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    reconcile_evaluation(_operator(memo), namespace, name)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={E.EVALUATION_LABEL: kopf.PRESENT})
def on_evaluation_run_event(type: str, namespace: str, labels: Mapping[str, str], memo: kopf.Memo,  # noqa: A002
                            **_: Any) -> None:
    """One of an Evaluation's TrainingRuns changed: its Evaluation may have a next step (the timer retries
    what fails here)."""
    if type == "DELETED":
        return
    try:
        reconcile_evaluation(_operator(memo), namespace, labels[E.EVALUATION_LABEL])
    except Exception as exc:  # noqa: BLE001
        log.warning("evaluation %s/%s: %s (tried again within %.0fs)", namespace, labels[E.EVALUATION_LABEL], exc,
                    EVALUATION_RETRY_S)
