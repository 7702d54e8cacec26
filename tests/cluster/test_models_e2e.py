"""With real pods (the cairn:dev image): a run's reproduction trains the same model again, and a TrainingRun
registers its output as a model version when it succeeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cairn.store import TrackingStore
from tests.support.cluster import wait_until

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "trainingrun.yaml"
TRAIN_TIMEOUT_S = 240


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
    manifest["spec"]["params"]["epochs"] = 2
    manifest["spec"]["registerModel"] = {"name": "digits", "artifactPath": "artifacts/model.npz"}
    original = train(kubectl, namespace, manifest)
    store = TrackingStore(store_urls[0])
    (version,) = store.get_model(namespace, "digits").versions  # registered on success
    assert version.run_id == original["metadata"]["uid"] and version.image_digest == original["status"]["imageDigest"]

    reproduction = yaml.safe_load(cairn_cli(store_urls[0], "runs", "reproduce", f"{namespace}/digits"))
    assert reproduction["spec"]["image"].endswith("@" + original["status"]["imageDigest"])
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
