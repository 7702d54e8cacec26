"""The API server itself enforces the TrainingRun schema: bad manifests are refused, naming the field."""

from __future__ import annotations

import copy
import json

import pytest
from operatorlib import install_crd

pytestmark = pytest.mark.cluster

VALID = {
    "apiVersion": "cairn.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "ok"},
    "spec": {"image": "cairn:dev", "command": ["python3", "train.py"]},
}


def with_spec(**changes) -> dict:  # noqa: ANN003
    doc = copy.deepcopy(VALID)
    doc["spec"].update(changes)
    return doc


def without(key: str) -> dict:
    doc = copy.deepcopy(VALID)
    del doc["spec"][key]
    return doc


INVALID = [
    ("no spec", {k: v for k, v in VALID.items() if k != "spec"}, "spec"),
    ("no image", without("image"), "spec.image"),
    ("empty image", with_spec(image=""), "spec.image"),
    ("image with spaces", with_spec(image="cairn dev"), "spec.image"),
    ("no command", without("command"), "spec.command"),
    ("empty command", with_spec(command=[]), "spec.command"),
    ("command not a list", with_spec(command="python3 train.py"), "spec.command"),
    ("empty command word", with_spec(command=[""]), "spec.command[0]"),
    ("negative gpus", with_spec(resources={"gpus": -1}), "spec.resources.gpus"),
    ("too many gpus", with_spec(resources={"gpus": 65}), "spec.resources.gpus"),
    ("fractional gpus", with_spec(resources={"gpus": 1.5}), "spec.resources.gpus"),
    ("gpus as text", with_spec(resources={"gpus": "two"}), "spec.resources.gpus"),
    ("gpuType without gpus", with_spec(resources={"gpuType": "NVIDIA-H100-80GB-HBM3"}), "spec.resources.gpuType"),
    ("bad gpuType", with_spec(resources={"gpus": 1, "gpuType": "H100 80GB"}), "spec.resources.gpuType"),
    ("bad cpu quantity", with_spec(resources={"cpu": "lots"}), "spec.resources.cpu"),
    ("bad memory quantity", with_spec(resources={"memory": "16 GB"}), "spec.resources.memory"),
    ("negative backoffLimit", with_spec(backoffLimit=-1), "spec.backoffLimit"),
    ("huge backoffLimit", with_spec(backoffLimit=1000), "spec.backoffLimit"),
    ("zero activeDeadlineSeconds", with_spec(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds"),
    ("negative ttl", with_spec(ttlSecondsAfterFinished=-5), "spec.ttlSecondsAfterFinished"),
    ("suspend as text", with_spec(suspend="yes"), "spec.suspend"),
    ("bad experiment name", with_spec(experiment="my experiment!"), "spec.experiment"),
    ("env without name", with_spec(env=[{"value": "1"}]), "spec.env[0].name"),
    ("bad env name", with_spec(env=[{"name": "1 BAD", "value": "x"}]), "spec.env[0].name"),
    ("duplicate env names", with_spec(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]), "spec.env[1]"),
    ("bad toleration operator", with_spec(tolerations=[{"key": "k", "operator": "Maybe"}]), "spec.tolerations[0].operator"),
    ("bad toleration effect", with_spec(tolerations=[{"key": "k", "effect": "Sometimes"}]), "spec.tolerations[0].effect"),
    ("nodeSelector value not text", with_spec(nodeSelector={"zone": 3}), "spec.nodeSelector.zone"),
    ("dataset without uri", with_spec(dataset={"sha256": "a" * 64}), "spec.dataset.uri"),
    ("dataset not s3", with_spec(dataset={"uri": "http://example.com/data"}), "spec.dataset.uri"),
    ("short dataset digest", with_spec(dataset={"uri": "s3://data/mnist", "sha256": "abc"}), "spec.dataset.sha256"),
    ("code without commit", with_spec(code={"repository": "git@example:ml.git"}), "spec.code.commit"),
    ("code commit not hex", with_spec(code={"commit": "main"}), "spec.code.commit"),
    ("too many export keys", with_spec(tracking={"exportKeys": [f"k{i}" for i in range(21)]}), "spec.tracking.exportKeys"),
    ("bad export key", with_spec(tracking={"exportKeys": ["loss value"]}), "spec.tracking.exportKeys[0]"),
    ("bad headline metric", with_spec(tracking={"headlineMetric": "val acc"}), "spec.tracking.headlineMetric"),
    ("name too long", {**copy.deepcopy(VALID), "metadata": {"name": "n" * 51}}, "metadata.name"),
]


@pytest.fixture(scope="module")
def crd(kubectl):
    install_crd(kubectl)


def server_dry_run(kubectl, namespace: str, doc: dict):  # noqa: ANN201
    return kubectl.run("-n", namespace, "create", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)


def test_there_are_at_least_25_cases():
    assert len(INVALID) >= 25


@pytest.mark.parametrize("doc, field", [(d, f) for _, d, f in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(kubectl, namespace, crd, doc, field):
    r = server_dry_run(kubectl, namespace, doc)
    assert r.returncode != 0, f"accepted: {json.dumps(doc)}"
    assert "is invalid" in r.stderr or "Invalid value" in r.stderr or "Required value" in r.stderr, r.stderr
    assert field in r.stderr, r.stderr


def test_valid_manifest_gets_its_defaults(kubectl, namespace, crd):
    kubectl.apply(VALID, namespace=namespace)
    spec = kubectl.get("trainingrun", "ok", namespace)["spec"]
    assert spec["experiment"] == "default" and spec["backoffLimit"] == 3 and spec["suspend"] is False
    assert spec["resources"] == {"gpus": 0}
    listed = kubectl.run("-n", namespace, "get", "tr").stdout.splitlines()[0].split()
    assert listed == ["NAME", "PHASE", "GPUS", "STEP", "METRIC", "VALUE", "AGE"]
    assert "ok" in kubectl.run("-n", namespace, "get", "cairn").stdout  # the category


def test_explain_documents_the_fields(kubectl, crd):
    out = kubectl.run("explain", "trainingrun.spec.resources").stdout
    assert "nvidia.com/gpu.product" in out and "Number of NVIDIA GPUs" in out
    status = kubectl.run("explain", "tr.status.conditions").stdout
    assert "lastTransitionTime" in status
