"""The Evaluation's planning (cairn.controller.evaluation), pure: from what was observed to the runs to
create, the status to set and when to decide. The Model/Evaluation CRDs as generated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from cairn.api import registry as A
from cairn.api.crd import rendered_files
from cairn.api.schema import from_dict
from cairn.controller import evaluation as E
from cairn.gates import gate_spec_from

REPO = Path(__file__).resolve().parents[1]
SHA = "a" * 64
DIGEST = "sha256:" + "b" * 64
OTHER_DIGEST = "sha256:" + "c" * 64
MODEL = {
    "evaluation": {"image": "registry.local/eval:1", "command": ["python", "-m", "evaluate"],
                   "env": [{"name": "CAIRN_MODEL_URI", "value": "user value, replaced"},
                           {"name": "BATCH", "value": "8"}],
                   "dataset": {"uri": "s3://datasets/eval/v1", "sha256": SHA}, "resources": {"gpus": 1}},
    "gate": {"primary": "correct", "direction": "higher", "minImprovement": 0.01,
             "guards": [{"metric": "latency_ms", "direction": "lower", "tolerance": 5}], "slices": ["night"]},
}
URIS = {1: "s3://cairn/runs/r1/artifacts/model", 2: "s3://cairn/runs/r2/artifacts/model"}


def observed(model: dict | None = MODEL, status: dict | None = None, holder: int | None = 1,
             **kw) -> E.Observed:
    spec = from_dict(A.EvaluationSpec, {"model": "digits", "candidateVersion": 2, "alias": "production"})
    return E.Observed("ml", "v2-vs-prod", "uid-1", spec,
                      from_dict(A.EvaluationStatus, status or {}),
                      from_dict(A.ModelSpec, model) if model is not None else None, URIS, holder, **kw)


def with_image(image: str) -> dict:
    return {**MODEL, "evaluation": {**MODEL["evaluation"], "image": image}}


def child(role: str, phase: str | None, digest: str | None = DIGEST) -> E.ChildRun:
    return E.ChildRun(f"v2-vs-prod-{role}", f"run-{role}", phase, digest, "Completed" if phase else None)


def test_a_new_evaluation_creates_the_candidates_run_pinned_to_the_suite():
    got = E.plan(observed())
    assert got.decide is None
    assert got.status["phase"] == E.PENDING and got.status["baselineVersion"] == 1
    (run,) = got.create  # an unpinned eval image: the baseline waits for the candidate's image digest
    meta, spec = run["metadata"], run["spec"]
    assert meta["name"] == "v2-vs-prod-candidate" and meta["namespace"] == "ml"
    assert meta["labels"] == {E.EVALUATION_LABEL: "v2-vs-prod", E.ROLE_LABEL: "candidate", E.MODEL_LABEL: "digits"}
    assert meta["ownerReferences"] == [{"apiVersion": "cairn.dev/v1alpha1", "kind": "Evaluation", "name": "v2-vs-prod",
                                        "uid": "uid-1", "controller": True}]
    assert spec["image"] == "registry.local/eval:1" and spec["command"] == ["python", "-m", "evaluate"]
    assert spec["dataset"] == {"uri": "s3://datasets/eval/v1", "sha256": SHA, "stage": False}
    assert spec["params"] == {"model": "digits", "model_version": 2, "model_uri": URIS[2]}
    assert spec["env"] == [{"name": "BATCH", "value": "8"}, {"name": "CAIRN_MODEL_URI", "value": URIS[2]}]
    assert spec["resources"]["gpus"] == 1 and spec["experiment"] == "eval-digits"


def test_a_pinned_eval_image_starts_both_runs_at_once():
    got = E.plan(observed(with_image(f"registry.local/eval@{DIGEST}")))
    assert [r["metadata"]["name"] for r in got.create] == ["v2-vs-prod-candidate", "v2-vs-prod-baseline"]
    assert got.create[1]["spec"]["params"]["model_version"] == 1
    assert got.create[1]["spec"]["params"]["model_uri"] == URIS[1]
    assert got.status["reusedBaseline"] is False


def test_stored_results_on_the_same_dataset_and_image_replace_the_baselines_run():
    stored = [E.StoredResults("old-other-data", "f" * 64, DIGEST),
              E.StoredResults("old-other-image", SHA, OTHER_DIGEST), E.StoredResults("old-match", SHA, DIGEST)]
    waiting = E.plan(observed(candidate=child("candidate", None, None), stored=stored))
    assert waiting.create == [] and waiting.decide is None and "reusedBaseline" not in waiting.status
    running = E.plan(observed(candidate=child("candidate", "Running"), stored=stored))
    assert running.create == [] and running.decide is None
    assert running.status["reusedBaseline"] is True and running.status["baselineRunId"] == "old-match"
    done = E.plan(observed(status={"baselineVersion": 1, "reusedBaseline": True, "baselineRunId": "old-match"},
                           candidate=child("candidate", "Succeeded"), stored=stored))
    assert done.decide == ("run-candidate", "old-match")
    assert (done.status["datasetSha256"], done.status["evalImageDigest"]) == (SHA, DIGEST)


def test_results_on_another_dataset_or_image_are_not_reused():
    stored = [E.StoredResults("old-other-data", "f" * 64, DIGEST),
              E.StoredResults("old-other-image", SHA, OTHER_DIGEST)]
    got = E.plan(observed(candidate=child("candidate", "Running"), stored=stored))
    assert [r["metadata"]["name"] for r in got.create] == ["v2-vs-prod-baseline"]
    assert got.status["reusedBaseline"] is False and got.status["phase"] == E.RUNNING


def test_the_verdict_is_due_when_both_runs_succeeded_on_one_image():
    both = {"candidate": child("candidate", "Succeeded"), "baseline": child("baseline", "Succeeded")}
    assert E.plan(observed(**both)).decide == ("run-candidate", "run-baseline")
    half = E.plan(observed(candidate=child("candidate", "Succeeded"), baseline=child("baseline", "Running")))
    assert half.decide is None and half.status["phase"] == E.RUNNING
    other = E.plan(observed(candidate=child("candidate", "Succeeded"),
                            baseline=child("baseline", "Succeeded", OTHER_DIGEST)))
    assert other.decide is None and other.status["reason"] == "ImageDigestsDiffer"


def test_the_baseline_stays_the_version_the_alias_named_at_the_start():
    got = E.plan(observed(status={"baselineVersion": 1}, holder=2))  # promoted meanwhile
    assert got.status["baselineVersion"] == 1 and got.create


def test_what_cannot_be_evaluated_fails_with_its_reason():
    cases = {
        "ModelNotFound": observed(model=None),
        "NoBaseline": observed(holder=None),
        "CandidateIsBaseline": observed(holder=2),
        "CandidateRunFailed": observed(candidate=child("candidate", "Failed")),
        "BaselineRunFailed": observed(candidate=child("candidate", "Succeeded"), baseline=child("baseline", "Failed")),
    }
    for reason, seen in cases.items():
        got = E.plan(seen)
        assert (got.status["phase"], got.status["reason"], got.create, got.decide) == (E.FAILED, reason, [], None)
    missing = dataclasses.replace(observed(), model_uris={1: URIS[1]})
    assert E.plan(missing).status["reason"] == "VersionNotFound"
    no_files = dataclasses.replace(observed(), model_uris={1: URIS[1], 2: None})
    assert E.plan(no_files).status["reason"] == "NoModelFiles"


def test_a_finished_evaluation_needs_nothing():
    for phase in E.FINISHED_PHASES:
        assert E.plan(observed(status={"phase": phase})) == E.Plan()


def test_stored_results_and_model_uris_are_read_from_the_stored_records():
    evaluations = [(2, 1, ["c1", "b1"], SHA, DIGEST), (1, None, ["a1"], SHA, DIGEST), (3, 1, ["c3"], SHA, DIGEST)]
    assert [r.run_id for r in E.stored_results(1, evaluations)] == ["b1", "a1"]
    files = [("artifacts/model/w.pt", "s3://b/runs/r/artifacts/model/w.pt"), ("artifacts/model/c.json", None)]
    assert E.model_uri("artifacts/model", files) == "s3://b/runs/r/artifacts/model"
    assert E.model_uri("artifacts/model", [("artifacts/model/w.pt", None)]) is None
    assert E.digest_of("docker.io/library/eval@" + DIGEST) == DIGEST and E.digest_of("eval:1") is None


def test_the_models_gate_is_what_the_gate_reads():
    from cairn.api import to_dict

    gate = gate_spec_from(to_dict(from_dict(A.ModelSpec, MODEL).gate))
    assert (gate.primary, gate.direction, gate.min_improvement, gate.confidence) == ("correct", "higher", 0.01, 0.95)
    assert [(g.metric, g.direction, g.tolerance) for g in gate.guards] == [("latency_ms", "lower", 5)]
    assert gate.slices == ("night",) and gate.min_examples == 30


def test_committed_crds_are_generated_and_show_the_columns():
    for name, text in rendered_files().items():
        assert (REPO / "crds" / name).read_text() == text, "crds/ is stale: run python -m cairn.api.crd crds/"
    columns = {}
    for name in ("models.cairn.dev.yaml", "evaluations.cairn.dev.yaml"):
        (crd,) = yaml.safe_load_all((REPO / "crds" / name).read_text())
        shown = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        columns[crd["spec"]["names"]["kind"]] = [c["name"] for c in shown if "priority" not in c]
    assert columns == {"Model": ["Production", "Candidate", "Versions", "Age"],
                       "Evaluation": ["Model", "Candidate", "Baseline", "Delta", "CI", "Verdict", "Age"]}
