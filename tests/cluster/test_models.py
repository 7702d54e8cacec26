"""Models and Evaluations against the real API server and a real PostgreSQL, the handlers called directly
as Kopf would call them.

No pod runs here: an Evaluation's TrainingRuns are carried to Succeeded by writing their status through
the API, and their per-example results are written into the store as the sidecar would. What needs the
image (eval pods, training two versions, reproducing a run) is in test_models_e2e.py.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest
from kubernetes import client

from cairn.api import GROUP, PLURAL, VERSION
from cairn.api.registry import EVALUATION_PLURAL, MODEL_PLURAL
from cairn.controller import handlers as H
from cairn.controller import model_handlers as M
from cairn.controller.kube import CoreApi
from cairn.controller.settings import OperatorSettings
from cairn.podspec import pod_name
from cairn.rundir import RECORDS_FILE, RunStatus
from cairn.store import TrackingStore
from cairn.store.entities import ArtifactInfo, EvalExample, IngestBatch

pytestmark = pytest.mark.cluster

DATASET_SHA = "d" * 64
EVAL_DIGEST = "sha256:" + "e" * 64
EXAMPLES = 300
MODEL_SPEC = {
    "evaluation": {"image": "registry.local/digits-eval:1", "command": ["python3", "-m", "evaluate"],
                   "dataset": {"uri": "s3://datasets/digits-eval/v1", "sha256": DATASET_SHA}},
    "gate": {"primary": "correct", "direction": "higher", "minImprovement": 0.02, "resamples": 2000,
             "guards": [{"metric": "latency_ms", "direction": "lower", "tolerance": 2.0}]},
}
ACCURACY = {1: 0.70, 2: 0.85, 3: 0.95}  # of each version, on the eval set


@pytest.fixture
def store(store_urls) -> TrackingStore:
    return TrackingStore(store_urls[0])


@pytest.fixture
def operator(api_client, store) -> Iterator[H.Operator]:
    op = H.Operator(OperatorSettings(), CoreApi(api_client), client.CustomObjectsApi(api_client), store)
    yield op
    op.stop()


def register_version(store: TrackingStore, namespace: str) -> int:
    """A finished training run with uploaded model files, registered as the next version of digits."""
    run = store.create_run(experiment="digits", status=RunStatus.FINISHED, namespace=namespace)
    store.record_artifacts(run, [ArtifactInfo("artifacts/model/weights.pt", f"s3://cairn/runs/{run}/artifacts/model/"
                                              "weights.pt", 12, "0" * 64)])
    return store.register_model_version(namespace, "digits", run, "alice").version


def examples_of(version: int) -> list[EvalExample]:
    """Per-example results of ``version``: each example right with the version's accuracy (seeded)."""
    rng = random.Random(version)
    return [EvalExample(f"ex-{i:04d}", {"correct": float(rng.random() < ACCURACY[version]),
                                        "latency_ms": 10.0 + rng.random()}) for i in range(EXAMPLES)]


def finish_eval_run(op: H.Operator, store: TrackingStore, namespace: str, name: str) -> str:
    """What the eval pod and the TrainingRun handlers would leave: the run's examples in the store, its
    TrainingRun Succeeded with the eval image's digest. The run's id."""
    tr = op.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    uid, version = tr["metadata"]["uid"], tr["spec"]["params"]["model_version"]
    store.create_run(experiment=tr["spec"]["experiment"], name=name, run_id=uid, status=RunStatus.FINISHED,
                     namespace=namespace, image_digest=EVAL_DIGEST)
    store.record_dataset(uid, tr["spec"]["dataset"]["uri"], DATASET_SHA, DATASET_SHA)
    store.ingest_batch(uid, RECORDS_FILE, IngestBatch(examples=examples_of(version), attempt=1), offset=1,
                       lines=EXAMPLES)
    op.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name,
        {"status": {"phase": "Succeeded", "runId": uid, "imageDigest": EVAL_DIGEST}})
    return uid


def create(op: H.Operator, namespace: str, plural: str, kind: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return op.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def evaluation(op: H.Operator, namespace: str, name: str) -> dict:
    return op.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, EVALUATION_PLURAL, name)


def children(op: H.Operator, namespace: str) -> list[str]:
    found = op.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return sorted(t["metadata"]["name"] for t in found)


def columns(kubectl, namespace: str, kind: str) -> list[dict[str, str]]:  # noqa: ANN001
    """``kubectl get KIND`` as rows of {column: text}, cut where the header's columns start (an empty cell
    is blank)."""
    header, *rows = kubectl.run("-n", namespace, "get", kind).stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    return [{name: row[start:end].strip() for name, start, end in zip(names, starts, [*starts[1:], None])}
            for row in rows]


def test_an_evaluation_runs_both_versions_decides_and_unlocks_promotion(operator, store, namespace, kubectl):
    op = operator
    for _ in range(3):
        register_version(store, namespace)
    store.promote(namespace, "digits", 1, "production", "alice")
    create(op, namespace, MODEL_PLURAL, "Model", "digits", MODEL_SPEC)
    M.sync_model_status(op, namespace, "digits")
    (row,) = columns(kubectl, namespace, "models")
    assert {k: row[k] for k in ("NAME", "PRODUCTION", "CANDIDATE", "VERSIONS")} == \
        {"NAME": "digits", "PRODUCTION": "1", "CANDIDATE": "", "VERSIONS": "3"}
    assert M.sync_model_status(op, namespace, "digits") is None  # nothing changed: no patch

    # Version 2 against production (1): the candidate's run first, the baseline's once the eval image's
    # digest is known (the Model's image is not pinned by digest).
    create(op, namespace, EVALUATION_PLURAL, "Evaluation", "v2", {"model": "digits", "candidateVersion": 2})
    M.reconcile_evaluation(op, namespace, "v2")
    assert children(op, namespace) == ["v2-candidate"]
    candidate_run = finish_eval_run(op, store, namespace, "v2-candidate")
    M.reconcile_evaluation(op, namespace, "v2")
    assert children(op, namespace) == ["v2-baseline", "v2-candidate"]
    baseline = op.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "v2-baseline")
    assert baseline["spec"]["params"]["model_version"] == 1
    assert baseline["metadata"]["ownerReferences"][0]["uid"] == evaluation(op, namespace, "v2")["metadata"]["uid"]
    baseline_run = finish_eval_run(op, store, namespace, "v2-baseline")
    M.reconcile_evaluation(op, namespace, "v2")

    status = evaluation(op, namespace, "v2")["status"]
    assert (status["phase"], status["verdict"], status["passed"]) == ("Succeeded", "pass", True), status
    (stored,) = store.evaluations(namespace, "digits", 2)
    assert stored.id == status["evaluationId"] and stored.eval_run_ids == [candidate_run, baseline_run]
    assert (stored.dataset_sha256, stored.eval_image_digest, stored.baseline_version) == (DATASET_SHA, EVAL_DIGEST, 1)
    primary = stored.verdict["primary"]
    assert status["delta"] == f"{primary['delta']:+.4g}" and primary["delta"] > 0.1
    assert status["ci"] == f"[{primary['ci_low']:+.4g}, {primary['ci_high']:+.4g}]"
    (row,) = columns(kubectl, namespace, "evaluations")
    assert {k: row[k] for k in ("NAME", "MODEL", "CANDIDATE", "BASELINE", "DELTA", "CI", "VERDICT")} == \
        {"NAME": "v2", "MODEL": "digits", "CANDIDATE": "2", "BASELINE": "1", "DELTA": status["delta"],
         "CI": status["ci"], "VERDICT": "pass"}
    assert M.reconcile_evaluation(op, namespace, "v2") == {}  # finished: nothing left to do to do or store
    assert len(store.evaluations(namespace, "digits", 2)) == 1

    store.promote(namespace, "digits", 2, "production", "alice")  # the gate lets it through
    M.sync_model_status(op, namespace, "digits")
    (row,) = columns(kubectl, namespace, "models")
    assert (row["PRODUCTION"], row["VERSIONS"]) == ("2", "3")

    # Version 3 against production (now 2): version 2's results of the first evaluation were on the same
    # dataset digest and eval image digest, so no baseline run is made.
    create(op, namespace, EVALUATION_PLURAL, "Evaluation", "v3", {"model": "digits", "candidateVersion": 3})
    M.reconcile_evaluation(op, namespace, "v3")
    finish_eval_run(op, store, namespace, "v3-candidate")
    M.reconcile_evaluation(op, namespace, "v3")
    assert "v3-baseline" not in children(op, namespace)
    status = evaluation(op, namespace, "v3")["status"]
    assert (status["reusedBaseline"], status["baselineRunId"], status["baselineVersion"]) == (True, candidate_run, 2)
    assert (status["phase"], status["verdict"]) == ("Succeeded", "pass"), status


def test_a_worse_candidate_is_refused_promotion_with_the_numbers(operator, store, namespace):
    op = operator
    register_version(store, namespace)
    register_version(store, namespace)
    store.promote(namespace, "digits", 2, "production", "alice")
    create(op, namespace, MODEL_PLURAL, "Model", "digits", MODEL_SPEC)
    create(op, namespace, EVALUATION_PLURAL, "Evaluation", "v1", {"model": "digits", "candidateVersion": 1})
    M.reconcile_evaluation(op, namespace, "v1")
    finish_eval_run(op, store, namespace, "v1-candidate")
    M.reconcile_evaluation(op, namespace, "v1")
    finish_eval_run(op, store, namespace, "v1-baseline")
    M.reconcile_evaluation(op, namespace, "v1")
    status = evaluation(op, namespace, "v1")["status"]
    assert (status["verdict"], status["passed"], status["reason"]) == ("fail", False, "Fail")
    assert float(status["delta"]) < -0.1
    with pytest.raises(Exception, match="did not pass its latest evaluation") as refused:
        store.promote(namespace, "digits", 1, "production", "alice")
    assert status["message"][:40] in str(refused.value)


def test_an_evaluation_without_a_baseline_fails_with_its_reason(operator, store, namespace):
    op = operator
    register_version(store, namespace)
    create(op, namespace, MODEL_PLURAL, "Model", "digits", MODEL_SPEC)
    create(op, namespace, EVALUATION_PLURAL, "Evaluation", "first", {"model": "digits", "candidateVersion": 1})
    M.reconcile_evaluation(op, namespace, "first")
    status = evaluation(op, namespace, "first")["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "NoBaseline") and children(op, namespace) == []


def test_a_trainingrun_registers_its_output_once_when_it_succeeds(operator, store, cluster, namespace):
    op = operator
    manifest = cluster.create_trainingrun("train-digits", registerModel={"name": "digits"})
    meta = manifest["metadata"]
    H.on_trainingrun(body=manifest, namespace=namespace, name="train-digits", memo={"operator": op})
    pod = pod_name("train-digits", meta["uid"], 1)
    H.reconcile_trainingrun(op, namespace, "train-digits", seen_pod=(pod, cluster.start_pod(pod)))
    assert store.list_models(namespace) == []  # not while it runs
    store.record_artifacts(meta["uid"], [ArtifactInfo("artifacts/model/weights.pt", "s3://cairn/w.pt", 3, "1" * 64)])
    H.reconcile_trainingrun(op, namespace, "train-digits",
                            seen_pod=(pod, cluster.end_pod(pod, "Succeeded", 0, "Completed")))
    (version,) = store.get_model(namespace, "digits").versions
    assert (version.version, version.run_id, version.registered_by) == (1, meta["uid"], "cairn-operator (train-digits)")
    assert [f.path for f in version.files] == ["artifacts/model/weights.pt"]
    H.register_output(store, H.from_manifest(cluster.trainingrun("train-digits")))  # a write tried again
    assert len(store.get_model(namespace, "digits").versions) == 1

    refused_before = op.store_writes.dropped["refused"]
    bad = cluster.create_trainingrun("no-files", registerModel={"name": "digits", "artifactPath": "artifacts/none/"})
    H.on_trainingrun(body=bad, namespace=namespace, name="no-files", memo={"operator": op})
    pod = pod_name("no-files", bad["metadata"]["uid"], 1)
    H.reconcile_trainingrun(op, namespace, "no-files", seen_pod=(pod, cluster.start_pod(pod)))
    ended = cluster.end_pod(pod, "Succeeded", 0, "Completed")
    H.reconcile_trainingrun(op, namespace, "no-files", seen_pod=(pod, ended))
    assert op.store_writes.dropped["refused"] == refused_before + 1
    assert len(store.get_model(namespace, "digits").versions) == 1
    assert store.run_status(bad["metadata"]["uid"]) == RunStatus.FINISHED

