"""TrainingRun types: the committed CRD is generated from them, and manifests parse with the same defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cairn.api import from_manifest, tenancy, to_dict
from cairn.api import types as T
from cairn.api.crd import PARAMS_POLICY, params_policy, render, trainingrun_crd
from cairn.api.schema import camel, from_dict, type_schema

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "trainingruns.cairn.dev.yaml"
EXAMPLE = REPO / "examples" / "trainingrun.yaml"


def root_schema() -> dict:
    return trainingrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(schema: dict, path: str = ""):  # noqa: ANN201
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def server_defaults(schema: dict, value: Any) -> Any:
    """What the API server's structural defaulting does to ``value`` (enough of it for these schemas)."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = server_defaults(sub, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [server_defaults(schema["items"], v) for v in value]
    return value


def without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [without_empty(v) for v in value]
    return value


FULL_SPEC = {
    "experiment": "mnist-sweep",
    "image": "registry.local/trainer@sha256:" + "0" * 64,
    "command": ["python3", "-m", "train"],
    "args": ["--fast"],
    "env": [{"name": "A", "value": "1"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    "params": {"lr": 0.01, "epochs": 10, "optimizer": "adam", "nesterov": True},
    "resources": {"gpus": 8, "gpuType": "NVIDIA-H100-80GB-HBM3", "cpu": "32", "memory": "256Gi"},
    "nodeSelector": {"topology.kubernetes.io/zone": "a"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute",
                     "tolerationSeconds": 30}],
    "priorityClassName": "training",
    "serviceAccountName": "trainer",
    "backoffLimit": 5,
    "infrastructureRetryLimit": 20,
    "pendingDeadlineSeconds": 600,
    "runVolumeSizeLimit": "200Gi",
    "activeDeadlineSeconds": 86400,
    "ttlSecondsAfterFinished": 3600,
    "suspend": True,
    "code": {"repository": "https://git.local/ml.git", "commit": "0123456789abcdef"},
    "dataset": {"uri": "s3://datasets/mnist/v3", "sha256": "f" * 64, "stage": True},
    "tracking": {"headlineMetric": "val_acc", "exportKeys": ["loss", "val_acc"]},
}


def test_committed_crd_is_generated_from_the_types():
    assert CRD_FILE.read_text() == render(), "crds/ is stale: run python -m cairn.api.crd crds/"


def test_committed_tenancy_policies_are_generated():
    path = REPO / "crds" / "tenancy" / "cairn-tenancy.yaml"
    assert path.read_text() == tenancy.render(), f"stale: run python -m cairn.api.tenancy > {path}"


def test_committed_file_holds_the_crd_and_the_params_policy():
    docs = list(yaml.safe_load_all(CRD_FILE.read_text()))
    assert [d["kind"] for d in docs] == ["CustomResourceDefinition", "ValidatingAdmissionPolicy",
                                         "ValidatingAdmissionPolicyBinding"]
    assert docs[0]["metadata"]["name"] == "trainingruns.cairn.dev"


def test_every_field_is_described():
    root = root_schema()
    missing = [p for p, s in walk(root) if "description" not in s and not p.endswith(("[]", "{}", ".metadata"))]
    assert missing == []


def test_every_spec_field_is_in_the_schema_and_every_schema_field_is_typed():
    props = root_schema()["properties"]["spec"]["properties"]
    assert set(props) == {camel(f.name) for f in dataclasses.fields(T.TrainingRunSpec)}
    assert {"experiment", "image", "command", "args", "env", "params", "resources", "nodeSelector", "tolerations",
            "priorityClassName", "serviceAccountName", "backoffLimit", "activeDeadlineSeconds",
            "ttlSecondsAfterFinished", "suspend", "code", "dataset", "tracking"} <= set(props)
    assert set(props["resources"]["properties"]) == {"gpus", "gpuType", "cpu", "memory"}
    untyped = [p for p, s in walk(root_schema()) if "type" not in s and not s.get("x-kubernetes-preserve-unknown-fields")]
    assert untyped == []


def test_status_has_what_kubectl_and_the_store_show():
    status = root_schema()["properties"]["status"]["properties"]
    assert {"phase", "conditions", "runId", "attempts", "startTime", "completionTime", "podName", "nodeName",
            "gpuProduct", "imageDigest", "exitCode", "reason", "step", "metric"} <= set(status)
    assert status["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed", "Suspended"]
    condition = status["conditions"]["items"]
    assert set(condition["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime",
                                            "observedGeneration"}
    assert condition["required"] == ["type", "status"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_crd_names_columns_and_status_subresource():
    crd = trainingrun_crd()
    assert crd["metadata"]["name"] == "trainingruns.cairn.dev"
    assert crd["spec"]["group"] == "cairn.dev" and crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["kind"] == "TrainingRun" and names["plural"] == "trainingruns"
    assert names["shortNames"] == ["tr"] and names["categories"] == ["cairn"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == [
        "Phase", "GPUs", "Step", "Metric", "Value", "Age"]


def test_bounds_patterns_and_enums_are_in_the_schema():
    spec = root_schema()["properties"]["spec"]["properties"]
    assert spec["resources"]["properties"]["gpus"]["minimum"] == 0
    assert spec["backoffLimit"] == {**spec["backoffLimit"], "default": 3, "minimum": 0, "maximum": 100}
    assert spec["ttlSecondsAfterFinished"]["minimum"] == 0 and spec["activeDeadlineSeconds"]["minimum"] == 1
    assert spec["command"]["minItems"] == 1 and spec["image"]["minLength"] == 1
    assert spec["dataset"]["properties"]["sha256"]["pattern"] == "^[0-9a-f]{64}$"
    assert spec["dataset"]["properties"]["uri"]["pattern"].startswith("^s3://")
    assert spec["dataset"]["properties"]["stage"] == {
        "type": "boolean", "default": False, "description": spec["dataset"]["properties"]["stage"]["description"]}
    assert spec["tolerations"]["items"]["properties"]["effect"]["enum"] == ["NoSchedule", "PreferNoSchedule",
                                                                           "NoExecute"]
    assert spec["tracking"]["properties"]["exportKeys"]["x-kubernetes-list-type"] == "set"


@pytest.mark.parametrize("quantity, ok", [
    ("1", True), ("500m", True), ("16Gi", True), ("1.5", True), ("1e3", True), ("128974848", True), ("+4", True),
    (".5", True), ("2Ei", True), ("100k", True),
    ("", False), ("lots", False), ("16 GB", False), ("-1", False), ("Gi", False), ("1.2.3", False), ("16GB", False),
    ("5Gb", False), ("1Ki5", False),
])
def test_quantity_pattern(quantity, ok):
    assert bool(re.match(T.QUANTITY, quantity)) is ok


@pytest.mark.parametrize("name, ok", [
    ("A", True), ("_X", True), ("my.var-1", True), ("1BAD", False), ("A B", False), ("", False), ("A=B", False),
])
def test_env_name_pattern(name, ok):
    assert bool(re.match(T.ENV_NAME, name)) is ok


def test_cel_rules_point_at_fields_that_exist():
    for path, schema in walk(root_schema()):
        for rule in schema.get("x-kubernetes-validations", []):
            assert rule.get("message") and rule.get("reason"), (path, rule)
            if "fieldPath" in rule:
                assert rule["fieldPath"].lstrip(".") in schema["properties"], (path, rule)


def test_params_policy_matches_trainingruns_and_uses_the_operators_key_pattern():
    policy, binding = params_policy()
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == PARAMS_POLICY
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["cairn.dev"] and rule["resources"] == ["trainingruns"]  # not trainingruns/status
    assert rule["operations"] == ["CREATE", "UPDATE"] and policy["spec"]["failurePolicy"] == "Fail"
    assert f"r'{T.PARAM_KEY}'" in policy["spec"]["validations"][0]["expression"]
    assert binding["spec"]["validationActions"] == ["Deny"]


def test_minimal_manifest_parses_with_defaults():
    tr = from_manifest({"metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 2},
                        "spec": {"image": "img", "command": ["python3"], "resources": {"gpus": 2},
                                 "env": [{"name": "A", "value": "1"}], "code": {"commit": "abc1234"}},
                        "status": {"phase": "Running"}})
    assert (tr.name, tr.namespace, tr.uid, tr.generation, tr.status.phase) == ("a", "ns", "u", 2, "Running")
    assert tr.spec.backoff_limit == 3 and tr.spec.experiment == "default" and tr.spec.suspend is False
    assert tr.spec.resources.gpus == 2 and tr.spec.resources.gpu_type is None
    assert tr.spec.env[0] == T.EnvVar(name="A", value="1")
    assert tr.spec.code == T.Code(commit="abc1234") and tr.spec.dataset is None
    assert tr.spec.tracking == T.Tracking() and tr.spec.params == {} and tr.spec.tolerations == []
    assert tr.spec.active_deadline_seconds is None and tr.spec.ttl_seconds_after_finished is None
    assert (tr.spec.infrastructure_retry_limit, tr.spec.pending_deadline_seconds, tr.spec.run_volume_size_limit) == \
        (10, 900, "50Gi")


def test_full_manifest_parses_into_types():
    spec = from_manifest({"metadata": {"name": "a"}, "spec": FULL_SPEC}).spec
    assert isinstance(spec.resources, T.Resources) and spec.resources.gpu_type == "NVIDIA-H100-80GB-HBM3"
    assert isinstance(spec.tolerations[0], T.Toleration) and spec.tolerations[0].toleration_seconds == 30
    assert spec.env[1].value_from == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert spec.dataset == T.Dataset(uri="s3://datasets/mnist/v3", sha256="f" * 64, stage=True)
    assert spec.tracking.export_keys == ["loss", "val_acc"] and spec.params["nesterov"] is True
    assert to_dict(spec) == FULL_SPEC


@pytest.mark.parametrize("spec", [
    {"image": "i", "command": ["c"]},
    {"image": "i", "command": ["c"], "resources": {"cpu": "1"}, "tracking": {"headlineMetric": "loss"}},
    {"image": "i", "command": ["c"], "tolerations": [{"operator": "Exists"}], "code": {"commit": "abcdef1"}},
    FULL_SPEC,
])
def test_parsing_fills_in_what_the_api_server_defaults(spec):
    server = server_defaults(root_schema()["properties"]["spec"], spec)
    assert without_empty(to_dict(from_dict(T.TrainingRunSpec, spec))) == without_empty(server)


def test_schema_defaults_are_the_dataclass_defaults():
    for cls in (T.TrainingRunSpec, T.Resources, T.Tracking):
        props = type_schema(cls)["properties"]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING and f.default is not None:
                assert props[camel(f.name)]["default"] == f.default, f.name


def test_example_manifest_round_trips():
    doc = yaml.safe_load(EXAMPLE.read_text())
    assert doc["apiVersion"] == f"{T.GROUP}/{T.VERSION}" and doc["kind"] == T.KIND
    tr = from_manifest(doc)
    assert tr.spec.resources.gpus == 1
    back = to_dict(tr.spec)
    for key, value in doc["spec"].items():
        assert back[key] == value
