"""TrainingRun types: the committed CRD is generated from them, and manifests parse with the same defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from cairn.api import from_manifest, to_dict
from cairn.api.crd import render, trainingrun_crd

CRD_FILE = Path(__file__).resolve().parents[1] / "crds" / "trainingruns.cairn.dev.yaml"


def test_committed_crd_is_generated_from_the_types():
    assert CRD_FILE.read_text() == render(), "crds/ is stale: run python -m cairn.api.crd > " + str(CRD_FILE)


def walk(schema: dict, path: str = ""):  # noqa: ANN201
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_every_spec_and_status_field_is_described():
    root = trainingrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [p for part in ("spec", "status") for p, s in walk(root["properties"][part], part)
               if "description" not in s and not p.endswith(("[]", "{}"))]
    assert missing == []


def test_crd_names_columns_and_status_subresource():
    crd = trainingrun_crd()
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["tr"] and names["categories"] == ["cairn"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == [
        "Phase", "GPUs", "Step", "Metric", "Value", "Age"]


def test_manifest_parses_with_defaults():
    tr = from_manifest({"metadata": {"name": "a", "namespace": "ns", "uid": "u"},
                        "spec": {"image": "img", "command": ["python3"], "resources": {"gpus": 2},
                                 "env": [{"name": "A", "value": "1"}], "code": {"commit": "abc1234"}}})
    assert tr.spec.backoff_limit == 3 and tr.spec.experiment == "default" and tr.spec.suspend is False
    assert tr.spec.resources.gpus == 2 and tr.spec.resources.gpu_type is None
    assert tr.spec.env[0].name == "A" and tr.spec.code.commit == "abc1234" and tr.spec.dataset is None
    assert tr.spec.tracking.export_keys == []


def test_example_manifest_round_trips():
    doc = yaml.safe_load((CRD_FILE.parents[1] / "examples" / "trainingrun.yaml").read_text())
    tr = from_manifest(doc)
    back = to_dict(tr.spec)
    for key, value in doc["spec"].items():
        assert back[key] == value
