"""The API server itself enforces the TrainingRun schema: bad manifests are refused, naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cairn.api import from_manifest, to_dict
from tests.support.cluster_operator import install_crd

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trainingrun.yaml"

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
    ("cpu with two dots", with_spec(resources={"cpu": "1.2.3"}), "spec.resources.cpu"),
    ("memory in GB", with_spec(resources={"memory": "16GB"}), "spec.resources.memory"),
    ("env value and valueFrom",
     with_spec(env=[{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
     "spec.env[0].valueFrom"),
    ("toleration without key or Exists", with_spec(tolerations=[{"effect": "NoSchedule"}]),
     "spec.tolerations[0].operator"),
    ("toleration Exists with a value", with_spec(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
     "spec.tolerations[0].value"),
    ("tolerationSeconds without NoExecute",
     with_spec(tolerations=[{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]),
     "spec.tolerations[0].tolerationSeconds"),
    ("negative tolerationSeconds",
     with_spec(tolerations=[{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": -1}]),
     "spec.tolerations[0].tolerationSeconds"),
    ("nodeSelector contradicts gpuType",
     with_spec(resources={"gpus": 1, "gpuType": "NVIDIA-A100"}, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-T4"}),
     "spec.nodeSelector"),
    ("duplicate export keys", with_spec(tracking={"exportKeys": ["loss", "loss"]}), "spec.tracking.exportKeys[1]"),
    ("param name with a space", with_spec(params={"learning rate": 0.1}), "spec.params.learning rate"),
    ("param name starting with a digit", with_spec(params={"1lr": 0.1}), "spec.params.1lr"),
    ("param value a list", with_spec(params={"layers": [64, 64]}), "spec.params.layers"),
    ("param value an object", with_spec(params={"opt": {"name": "adam"}}), "spec.params.opt"),
    ("too many params", with_spec(params={f"p{i}": i for i in range(257)}), "spec.params"),
]


@pytest.fixture(scope="module")
def crd(kubectl):
    install_crd(kubectl)


def server_dry_run(kubectl, namespace: str, doc: dict):  # noqa: ANN201
    return kubectl.run("-n", namespace, "create", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)


def without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [without_empty(v) for v in value]
    return value


def test_there_are_at_least_25_cases():
    assert len(INVALID) >= 25


@pytest.mark.parametrize("doc, field", [(d, f) for _, d, f in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(kubectl, namespace, crd, doc, field):
    r = server_dry_run(kubectl, namespace, doc)
    assert r.returncode != 0, f"accepted: {json.dumps(doc)}"
    assert f"\"{doc['metadata']['name']}\" is invalid" in r.stderr, r.stderr  # refused by the API server
    assert field in r.stderr, r.stderr


def test_status_is_not_set_through_the_main_resource(kubectl, namespace, crd):
    kubectl.apply({**copy.deepcopy(VALID), "status": {"phase": "Succeeded"}}, namespace=namespace)
    assert "status" not in kubectl.get("trainingrun", "ok", namespace)


def test_valid_manifest_gets_the_defaults_the_operator_parses(kubectl, namespace, crd):
    kubectl.apply(VALID, namespace=namespace)
    spec = kubectl.get("trainingrun", "ok", namespace)["spec"]
    assert spec["experiment"] == "default" and spec["backoffLimit"] == 3 and spec["suspend"] is False
    assert spec["resources"] == {"gpus": 0}
    assert without_empty(spec) == without_empty(to_dict(from_manifest(VALID).spec))
    listed = kubectl.run("-n", namespace, "get", "tr").stdout.splitlines()[0].split()
    assert listed == ["NAME", "PHASE", "GPUS", "STEP", "METRIC", "VALUE", "AGE"]
    assert "ok" in kubectl.run("-n", namespace, "get", "cairn").stdout  # the category


def test_the_example_is_accepted_as_it_is(kubectl, namespace, crd):
    doc = yaml.safe_load(EXAMPLE.read_text())
    r = server_dry_run(kubectl, namespace, doc)
    assert r.returncode == 0, r.stderr
    kubectl.run("-n", namespace, "apply", "--dry-run=server", "-f", str(EXAMPLE))
    created = json.loads(kubectl.run("-n", namespace, "create", "--dry-run=server", "-o", "json", "-f", str(EXAMPLE)).stdout)
    assert created["spec"]["resources"]["gpus"] == 1
    assert without_empty(created["spec"]) == without_empty(to_dict(from_manifest(doc).spec))


def test_printer_columns_show_status(kubectl, namespace, crd):
    doc = with_spec(resources={"gpus": 2}, tracking={"headlineMetric": "val_acc"})
    kubectl.apply(doc, namespace=namespace)
    kubectl.run("-n", namespace, "patch", "tr", "ok", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"phase": "Running", "step": 42, "metric": "0.97", "attempts": 1}}))
    row = kubectl.run("-n", namespace, "get", "tr", "ok", "--no-headers").stdout.split()
    assert row[:6] == ["ok", "Running", "2", "42", "val_acc", "0.97"]
    wide = kubectl.run("-n", namespace, "get", "tr", "ok", "-o", "wide").stdout.splitlines()[0].split()
    assert "ATTEMPTS" in wide and "REASON" in wide
    bad = kubectl.run("-n", namespace, "patch", "tr", "ok", "--subresource=status", "--type=merge",
                      "-p", json.dumps({"status": {"phase": "Done"}}), check=False)
    assert bad.returncode != 0 and "status.phase" in bad.stderr, bad.stderr


RECORDED = with_spec(params={"lr": 0.1}, code={"commit": "abcdef1"}, dataset={"uri": "s3://data/mnist"},
                     experiment="digits")


@pytest.mark.parametrize("change, field", [
    ({"experiment": "other"}, "spec.experiment"),
    ({"code": {"commit": "abcdef2"}}, "spec.code"),
    ({"code": None}, "spec.code"),
    ({"dataset": {"uri": "s3://data/other"}}, "spec.dataset"),
    ({"params": {"lr": 0.2}}, "spec.params"),
    ({"params": {"momentum": 0.9}}, "spec.params"),
    ({"params": None}, "spec.params"),
])
def test_what_the_run_is_recorded_with_cannot_change(kubectl, namespace, crd, change, field):
    kubectl.apply(RECORDED, namespace=namespace)
    r = kubectl.run("-n", namespace, "patch", "tr", "ok", "--type=merge", "-p", json.dumps({"spec": change}),
                    check=False)
    assert r.returncode != 0 and field in r.stderr and "cannot change" in r.stderr, r.stderr


def test_what_steers_the_run_can_change(kubectl, namespace, crd):
    kubectl.apply(RECORDED, namespace=namespace)
    for change in ({"suspend": True}, {"backoffLimit": 1}, {"ttlSecondsAfterFinished": 60}, {"image": "cairn:v2"}):
        kubectl.run("-n", namespace, "patch", "tr", "ok", "--type=merge", "-p", json.dumps({"spec": change}))
    kubectl.run("-n", namespace, "patch", "tr", "ok", "--type=merge",
                "-p", json.dumps({"metadata": {"finalizers": ["cairn.dev/finalizer"]}}))
    kubectl.run("-n", namespace, "patch", "tr", "ok", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    spec = kubectl.get("trainingrun", "ok", namespace)["spec"]
    assert spec["suspend"] is True and spec["image"] == "cairn:v2" and spec["params"] == {"lr": 0.1}


def test_explain_documents_the_fields(kubectl, crd):
    out = kubectl.run("explain", "trainingrun.spec.resources").stdout
    assert "nvidia.com/gpu.product" in out and "Number of NVIDIA GPUs" in out
    status = kubectl.run("explain", "tr.status.conditions").stdout
    assert "lastTransitionTime" in status
