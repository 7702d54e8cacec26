"""With real pods (the cairn:dev image): a run's reproduction trains the same model again; two trained
versions registered on success, evaluated by Evaluations as tracked eval pods, gate the promotion."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cairn import objectstore as S3
from cairn.store import PromotionRefused, TrackingStore
from tests.support.cluster import wait_until
from tests.support.cluster_operator import objectstore_secret, python_trainer, trainingrun

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "trainingrun.yaml"
TRAIN_TIMEOUT_S = 240
EVALUATION_TIMEOUT_S = 420
BUCKET = "cairn-runs"
EVAL_EXAMPLES = 300
# A "model" that is right on each example with its accuracy, drawn per (seed, example id).
TRAIN = """
import json, cairn
cairn.init()
with open("/tmp/model.json", "w") as f:
    json.dump({"accuracy": float(cairn.config.accuracy), "seed": int(cairn.config.seed)}, f)
cairn.log({"accuracy": float(cairn.config.accuracy)}, step=0)
cairn.log_artifact("/tmp/model.json")
cairn.finish()
"""
# The eval suite: the version's files from $CAIRN_MODEL_URI, the staged eval set, one record per example.
EVALUATE = """
import hashlib, json, os
from urllib.parse import urlsplit
from minio import Minio
import cairn
cairn.init()
endpoint = urlsplit(os.environ["S3_ENDPOINT"])
client = Minio(endpoint.netloc, os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"],
               secure=endpoint.scheme == "https", region=os.environ["S3_REGION"])
bucket, _, key = os.environ["CAIRN_MODEL_URI"].removeprefix("s3://").partition("/")
model = json.loads(client.get_object(bucket, key).read())
for example in json.load(open(os.path.join(cairn.dataset_dir, "examples.json"))):
    draw = int(hashlib.sha256(f"{model['seed']}:{example}".encode()).hexdigest()[:8], 16) / 2**32
    cairn.log_example(example, {"correct": float(draw < model["accuracy"])})
cairn.finish()
"""


def train(kubectl, namespace: str, manifest: dict) -> dict:  # noqa: ANN001
    kubectl.apply(manifest, namespace=namespace)
    name = manifest["metadata"]["name"]

    def finished():  # noqa: ANN202
        tr = kubectl.get("trainingrun", name, namespace)
        return tr if (tr.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    tr = wait_until(finished, TRAIN_TIMEOUT_S, f"the {name} TrainingRun to finish", interval=1)
    assert tr["status"]["phase"] == "Succeeded", tr["status"]
    return tr


def cairn_cli(database_url: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    done = subprocess.run([sys.executable, "-m", "cairn.cli.main", "--database-url", database_url, *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_reproduction_of_the_seeded_example_ends_with_the_same_metrics(kubectl, namespace, running_operator,
                                                                             store_urls):
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["params"]["epochs"] = 1
    manifest["spec"]["registerModel"] = {"name": "digits", "artifactPath": "artifacts/model.npz"}
    original = train(kubectl, namespace, manifest)
    store = TrackingStore(store_urls[0])
    (version,) = store.get_model(namespace, "digits").versions  # registered on success
    assert version.run_id == original["metadata"]["uid"] and version.image_digest == original["status"]["imageDigest"]

    # cairn:dev is imported into the node without a registry: its recorded digest is its image ID.
    reproduction = yaml.safe_load(cairn_cli(store_urls[0], "runs", "reproduce", f"{namespace}/digits",
                                            "--by-image-id"))
    assert reproduction["spec"]["image"] == original["status"]["imageDigest"]
    assert "registerModel" not in reproduction["spec"]
    again = train(kubectl, namespace, reproduction)
    assert again["metadata"]["name"] == "digits-repro"
    assert again["status"]["imageDigest"] == original["status"]["imageDigest"]

    first, second = (store.get_run(tr["metadata"]["uid"]) for tr in (original, again))
    assert second.params == first.params
    for key in ("val_acc", "loss"):
        assert (second.summary.metrics[key].step, second.summary.metrics[key].value) == \
            (first.summary.metrics[key].step, first.summary.metrics[key].value)
    assert len(store.get_model(namespace, "digits").versions) == 1  # a reproduction is not a new version


def secret_env(name: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": "cairn-objectstore", "key": key}}}


def wait_evaluation(kubectl, namespace: str, name: str) -> dict:  # noqa: ANN001
    def finished():  # noqa: ANN202
        ev = kubectl.get("evaluation", name, namespace)
        return ev if (ev.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None
    return wait_until(finished, EVALUATION_TIMEOUT_S, f"the {name} Evaluation to finish", interval=2)


def test_two_trained_versions_are_evaluated_by_pods_and_only_the_better_one_is_promoted(
        kubectl, namespace, running_operator, store_urls, cluster_minio):
    objectstore_secret(kubectl, namespace, cluster_minio, BUCKET)
    examples = json.dumps([f"ex-{i:03d}" for i in range(EVAL_EXAMPLES)]).encode()
    cluster_minio.client().put_object(BUCKET, f"eval/{namespace}/examples.json", io.BytesIO(examples), len(examples))
    digest = S3.digest_entries([("examples.json", len(examples), hashlib.sha256(examples).hexdigest())])
    store = TrackingStore(store_urls[0])

    register = {"name": "digits", "artifactPath": "artifacts/model.json"}
    for number, accuracy in ((1, 0.6), (2, 0.9)):
        train(kubectl, namespace, trainingrun(f"train-v{number}", python_trainer(TRAIN), experiment="digits",
                                              params={"accuracy": accuracy, "seed": number},
                                              registerModel=register))
        wait_until(lambda n=number: len(store.get_model(namespace, "digits").versions) == n, 30,
                   f"version {number} registered")
    store.promote(namespace, "digits", 1, "production", "alice")
    kubectl.apply({"apiVersion": "cairn.dev/v1alpha1", "kind": "Model", "metadata": {"name": "digits"}, "spec": {
        "evaluation": {"image": "cairn:dev", "command": python_trainer(EVALUATE),
                       "env": [secret_env("S3_ENDPOINT", "endpoint"), secret_env("S3_ACCESS_KEY", "accessKey"),
                               secret_env("S3_SECRET_KEY", "secretKey"), secret_env("S3_REGION", "region")],
                       "dataset": {"uri": f"s3://{BUCKET}/eval/{namespace}", "sha256": digest, "stage": True}},
        "gate": {"primary": "correct", "direction": "higher", "minImprovement": 0.05, "resamples": 2000}}},
        namespace=namespace)

    def evaluation(name: str, version: int) -> dict:
        kubectl.apply({"apiVersion": "cairn.dev/v1alpha1", "kind": "Evaluation", "metadata": {"name": name},
                       "spec": {"model": "digits", "candidateVersion": version}}, namespace=namespace)
        return wait_evaluation(kubectl, namespace, name)["status"]

    better = evaluation("v2", 2)
    assert (better["phase"], better["verdict"], better["baselineVersion"]) == ("Succeeded", "pass", 1), better
    assert better["reusedBaseline"] is False and float(better["delta"]) > 0.2
    assert store.promote(namespace, "digits", 2, "production", "alice").changed

    # Version 1 against the new holder (2): version 2's results from the first evaluation are reused.
    worse = evaluation("v1", 1)
    assert (worse["verdict"], worse["passed"], worse["reusedBaseline"]) == ("fail", False, True), worse
    assert worse["baselineRunId"] == better["candidateRunId"]
    assert kubectl.run("-n", namespace, "get", "trainingrun", "v1-baseline", check=False).returncode != 0
    with pytest.raises(PromotionRefused, match="did not pass its latest evaluation"):
        store.promote(namespace, "digits", 1, "production", "alice")

    def synced():  # noqa: ANN202
        status = kubectl.get("model", "digits", namespace).get("status") or {}
        return status if status.get("aliases", {}).get("production") == 2 else None
    status = wait_until(synced, 60, "the Model's status to show production = 2", interval=2)
    assert status["versions"] == 2
