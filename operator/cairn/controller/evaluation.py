"""What an Evaluation needs next, decided from what the handler observed: pure, no cluster, no store.

An Evaluation evaluates its candidate version and the version its alias names (the baseline, fixed when
the evaluation starts) with the Model's eval suite, as two TrainingRuns it owns. The baseline's run is
skipped when the store already holds the baseline's per-example results from an earlier evaluation on
the same dataset digest and eval image digest: the eval image's digest is known from its reference when
pinned (image@sha256:...), else once the candidate's run has pulled it. When both sides' results are
there, the handler asks the gate (``cairn.gates``) and stores the verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cairn.api import GROUP, VERSION, to_dict
from cairn.api.registry import EVALUATION_KIND, EvaluationSpec, EvaluationStatus, ModelSpec
from cairn.rundir import Env

EVALUATION_LABEL = "cairn.dev/evaluation"
MODEL_LABEL = "cairn.dev/model"
ROLE_LABEL = "cairn.dev/eval-role"
CANDIDATE, BASELINE = "candidate", "baseline"
PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
FINISHED_PHASES = (SUCCEEDED, FAILED)
MAX_EXPERIMENT_LENGTH = 128
MAX_LABEL_VALUE_LENGTH = 63


@dataclass(frozen=True)
class ChildRun:
    """What the handler saw of one of the Evaluation's TrainingRuns."""

    name: str
    run_id: str
    phase: str | None
    image_digest: str | None
    reason: str | None = None


@dataclass(frozen=True)
class StoredResults:
    """An evaluation run of some version whose per-example results the store holds, with what it ran on."""

    run_id: str
    dataset_sha256: str | None
    eval_image_digest: str | None


@dataclass(frozen=True)
class Observed:
    """Everything the plan is made from. ``model`` is None when the Model resource does not exist;
    ``model_uris`` maps each registered version to the object-store URI of its files (None: not uploaded);
    ``holder`` is the alias's current version; ``stored`` the baseline's reusable results, newest first."""

    namespace: str
    name: str
    uid: str
    spec: EvaluationSpec
    status: EvaluationStatus
    model: ModelSpec | None
    model_uris: dict[int, str | None]
    holder: int | None
    candidate: ChildRun | None = None
    baseline: ChildRun | None = None
    stored: Sequence[StoredResults] = ()


@dataclass
class Plan:
    """What to do: TrainingRuns to create, status fields to set, and, when both sides' results are in,
    the (candidate, baseline) evaluation run ids to decide on."""

    status: dict[str, Any] = field(default_factory=dict)
    create: list[dict[str, Any]] = field(default_factory=list)
    decide: tuple[str, str] | None = None


def digest_of(image: str | None) -> str | None:
    """The ``sha256:...`` digest in an image reference or imageID; None when there is none."""
    if not image or "sha256:" not in image:
        return None
    return "sha256:" + image.rsplit("sha256:", 1)[1]


def model_uri(path: str, files: Iterable[tuple[str, str | None]]) -> str | None:
    """The object-store URI of a version's files at ``path``, from its (path, uri) files; None when no file
    was uploaded or its URI does not end with its path."""
    for file_path, uri in files:
        if uri and uri.endswith(file_path):
            return uri[: len(uri) - len(file_path)] + path
    return None


def stored_results(version: int, evaluations: Iterable[tuple[int, int | None, Sequence[str], str | None, str | None]]
                   ) -> list[StoredResults]:
    """The evaluation runs of ``version`` in stored evaluations, given as (candidate version, baseline
    version, eval run ids [candidate's, baseline's], dataset digest, eval image digest), newest last."""
    found = []
    for candidate, baseline, run_ids, dataset, image in evaluations:
        for side, number in enumerate((candidate, baseline)):
            if number == version and len(run_ids) > side:
                found.append(StoredResults(run_ids[side], dataset, image))
    return found


def child_name(evaluation: str, role: str) -> str:
    return f"{evaluation}-{role}"


def child_manifest(seen: Observed, role: str, version: int, uri: str) -> dict[str, Any]:
    """The TrainingRun evaluating ``version`` (its files at ``uri``), owned by the Evaluation."""
    suite = seen.model.evaluation
    model = seen.spec.model
    env = [to_dict(e) for e in suite.env if e.name != Env.MODEL_URI] + [{"name": Env.MODEL_URI, "value": uri}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {
            "name": child_name(seen.name, role),
            "namespace": seen.namespace,
            "labels": {EVALUATION_LABEL: seen.name, ROLE_LABEL: role,
                       **({MODEL_LABEL: model} if len(model) <= MAX_LABEL_VALUE_LENGTH else {})},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": EVALUATION_KIND, "name": seen.name,
                                 "uid": seen.uid, "controller": True}],
        },
        "spec": {
            "image": suite.image,
            "command": list(suite.command),
            "args": list(suite.args),
            "env": env,
            "experiment": f"eval-{model}"[:MAX_EXPERIMENT_LENGTH],
            "params": {"model": model, "model_version": version, "model_uri": uri},
            "dataset": to_dict(suite.dataset),
            "resources": to_dict(suite.resources),
        },
    }


def _failed(reason: str, message: str) -> Plan:
    return Plan(status={"phase": FAILED, "reason": reason, "message": message})


def _child_failed(child: ChildRun, role: str) -> Plan:
    return _failed(f"{role.capitalize()}RunFailed",
                   f"the {role}'s evaluation run {child.name} failed ({child.reason or 'no reason given'})")


def plan(seen: Observed) -> Plan:
    """The next step of the Evaluation ``seen`` describes."""
    status, spec = seen.status, seen.spec
    if status.phase in FINISHED_PHASES:
        return Plan()
    if seen.model is None:
        return _failed("ModelNotFound", f"no Model {spec.model!r} in namespace {seen.namespace}")
    if spec.candidate_version not in seen.model_uris:
        return _failed("VersionNotFound", f"model {spec.model!r} has no version {spec.candidate_version}")
    baseline = status.baseline_version if status.baseline_version is not None else seen.holder
    if baseline is None:
        return _failed("NoBaseline", f"alias {spec.alias!r} of model {spec.model!r} names no version: there is "
                                     f"nothing to compare against (promote the version directly)")
    if baseline == spec.candidate_version:
        return _failed("CandidateIsBaseline", f"alias {spec.alias!r} already names version {baseline}")
    out = Plan(status={"baselineVersion": baseline})
    for version in (spec.candidate_version, baseline):
        if seen.model_uris.get(version) is None:
            return _failed("NoModelFiles", f"version {version} of model {spec.model!r} has no files in the "
                                           f"object store (it was registered without uploaded artifacts)")
    candidate = seen.candidate
    if candidate is None:
        out.create.append(child_manifest(seen, CANDIDATE, spec.candidate_version,
                                         seen.model_uris[spec.candidate_version]))
        out.status.update(candidateRun=child_name(seen.name, CANDIDATE))
    elif candidate.phase == FAILED:
        return _child_failed(candidate, CANDIDATE)
    else:
        out.status.update(candidateRun=candidate.name, candidateRunId=candidate.run_id)
    if seen.baseline is not None and seen.baseline.phase == FAILED:
        return _child_failed(seen.baseline, BASELINE)
    out.status["datasetSha256"] = seen.model.evaluation.dataset.sha256
    image = digest_of(seen.model.evaluation.image) or digest_of(candidate.image_digest if candidate else None)
    baseline_run_id = _baseline_side(seen, out, baseline, image)
    if candidate is None or baseline_run_id is None or candidate.phase != SUCCEEDED:
        out.status.update(phase=PENDING if candidate is None else RUNNING, reason="Evaluating")
        return out
    if seen.baseline is not None and digest_of(seen.baseline.image_digest) != digest_of(candidate.image_digest):
        return _failed("ImageDigestsDiffer", f"the evaluation runs ran different eval images (candidate "
                                             f"{candidate.image_digest or 'unknown'}, baseline "
                                             f"{seen.baseline.image_digest or 'unknown'}): results are not paired")
    out.status["evalImageDigest"] = digest_of(candidate.image_digest) or image
    out.decide = (candidate.run_id, baseline_run_id)
    return out


def _baseline_side(seen: Observed, out: Plan, baseline: int, image: str | None) -> str | None:
    """The baseline's evaluation run id once its results are complete, else None; creates its run or picks
    stored results on the way (recorded in ``out``)."""
    status = seen.status
    if status.reused_baseline and status.baseline_run_id:
        return status.baseline_run_id
    child = seen.baseline
    if child is None:
        if image is None:
            return None  # the eval image's digest is known once the candidate's pod has pulled it
        dataset = seen.model.evaluation.dataset.sha256
        reusable = next((r for r in seen.stored if r.dataset_sha256 == dataset and r.eval_image_digest == image), None)
        if reusable is not None:
            out.status.update(reusedBaseline=True, baselineRunId=reusable.run_id)
            return reusable.run_id
        out.create.append(child_manifest(seen, BASELINE, baseline, seen.model_uris[baseline]))
        out.status.update(reusedBaseline=False, baselineRun=child_name(seen.name, BASELINE))
        return None
    out.status.update(reusedBaseline=False, baselineRun=child.name, baselineRunId=child.run_id)
    return child.run_id if child.phase == SUCCEEDED else None
