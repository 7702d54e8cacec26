"""`cairn runs reproduce`: a TrainingRun pinned to what a run recorded (image digest, code commit, dataset
digest, params), from a run recorded as the operator records it, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
import yaml
from click.testing import CliRunner

from cairn.api import from_manifest, to_dict
from cairn.api.schema import from_dict
from cairn.api.types import TrainingRunSpec
from cairn.cli.main import cli
from cairn.cli.runs import pinned_image
from cairn.controller.handlers import record_run
from cairn.rundir import RECORDS_FILE, RunStatus
from cairn.store import TrackingStore
from cairn.store.entities import IngestBatch

DIGEST = "sha256:" + "9" * 64
DATA_DIGEST = "7" * 64
SPEC = {
    "image": "registry.local:5000/team/trainer:v3", "command": ["python3", "-m", "train"], "args": ["--fast"],
    "experiment": "digits", "env": [{"name": "TOKEN", "value": "secret"}],
    "params": {"lr": 0.01, "epochs": 3, "arch": "mlp", "augment": True},
    "resources": {"gpus": 1, "memory": "4Gi"}, "backoffLimit": 5, "nodeSelector": {"pool": "a100"},
    "code": {"repository": "https://git.local/ml.git", "commit": "0123456789abcdef"},
    "dataset": {"uri": "s3://datasets/digits/v2", "stage": True},
    "tracking": {"headlineMetric": "val_acc"}, "registerModel": {"name": "digits"},
}


def recorded_run(store: TrackingStore, uid: str, image_digest: str | None = DIGEST) -> None:
    """A run as the operator and the sidecar leave it: recorded from the TrainingRun, its pod's image digest,
    the dataset digest the prepare step computed, a parameter the code logged over the manifest's."""
    tr = from_manifest({"metadata": {"name": "mnist", "namespace": "ml", "uid": uid}, "spec": SPEC})
    record_run(store, tr)
    store.update_run(uid, status=RunStatus.FINISHED, image_digest=image_digest)
    store.record_dataset(uid, "s3://datasets/digits/v2", DATA_DIGEST)
    store.ingest_batch(uid, RECORDS_FILE, IngestBatch(params={"code.lr": 0.5}), offset=10, lines=1)


def reproduce(url: str, *args: str):  # noqa: ANN201
    return CliRunner().invoke(cli, ["--database-url", url, "runs", "reproduce", *args], prog_name="cairn")


def test_the_reproduction_pins_every_recorded_field(store_url):
    uid = str(uuid.uuid4())
    recorded_run(TrackingStore(store_url), uid)
    done = reproduce(store_url, uid)
    assert done.exit_code == 0, done.output
    manifest = yaml.safe_load(done.stdout)
    assert manifest["metadata"] == {"name": "mnist-repro", "namespace": "ml",
                                    "annotations": {"cairn.dev/reproduces": uid}}
    spec = manifest["spec"]
    assert spec["image"] == f"registry.local:5000/team/trainer@{DIGEST}"
    assert spec["code"] == SPEC["code"]
    assert spec["dataset"] == {"uri": "s3://datasets/digits/v2", "sha256": DATA_DIGEST, "stage": True}
    assert spec["params"] == SPEC["params"]  # the manifest's values, not the code's override
    original = to_dict(from_dict(TrainingRunSpec, SPEC))
    unchanged = {k: v for k, v in original.items()
                 if k not in ("image", "dataset", "env", "params", "registerModel", "suspend")}
    assert {k: spec[k] for k in unchanged} == unchanged  # command, args, resources, selectors, limits, tracking
    assert "env" not in spec and "registerModel" not in spec and "suspend" not in spec
    as_read = to_dict(from_dict(TrainingRunSpec, spec))  # a TrainingRun spec as the types read it
    assert {k: v for k, v in as_read.items() if k not in ("env", "suspend")} == spec
    named = yaml.safe_load(reproduce(store_url, "ml/mnist", "--name", "again", "--by-image-id").stdout)
    assert named["metadata"]["name"] == "again" and named["spec"] == {**spec, "image": DIGEST}


def test_a_run_that_cannot_be_pinned_is_refused_with_why(store_url):
    store = TrackingStore(store_url)
    unpinned = str(uuid.uuid4())
    recorded_run(store, unpinned, image_digest=None)
    done = reproduce(store_url, unpinned)
    assert done.exit_code == 1 and "no recorded image digest" in done.output
    local = store.create_run(experiment="digits", status=RunStatus.FINISHED)
    done = reproduce(store_url, local)
    assert done.exit_code == 1 and "not recorded from a TrainingRun" in done.output


@pytest.mark.parametrize(("image", "pinned"), [
    ("cairn:dev", f"cairn@{DIGEST}"),
    ("registry.local:5000/a/b:1", f"registry.local:5000/a/b@{DIGEST}"),
    ("registry.local:5000/a/b", f"registry.local:5000/a/b@{DIGEST}"),
    ("a/b:1@sha256:" + "0" * 64, f"a/b@{DIGEST}"),
])
def test_an_image_is_pinned_by_its_repository_and_digest(image, pinned):
    assert pinned_image(image, DIGEST) == pinned
