"""The example trainer learns and its run is fully tracked, unchanged code under ``cairn run``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cairn.store import TrackingStore

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_digits.py"


@pytest.mark.slow
def test_digits_example_learns_and_keeps_its_model(sqlite_url, cairn_home):
    r = subprocess.run(
        [sys.executable, "-m", "cairn", "--database-url", sqlite_url, "run", "-e", "digits",
         "-p", "lr=0.2", "-p", "epochs=6", "--", sys.executable, str(EXAMPLE)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, COLUMNS="200"),
    )
    assert r.returncode == 0, r.stderr
    (run,) = TrackingStore(sqlite_url).list_runs(experiment="digits")
    d = TrackingStore(sqlite_url).get_run(run.id)
    assert d.params["lr"] == 0.2 and d.params["epochs"] == 6 and d.params["batch_size"] == 64
    assert d.summary.metrics["val_acc"].count == 6
    assert d.summary.metrics["val_acc"].value > 0.85
    val_loss = [p.value for p in TrackingStore(sqlite_url).metric_history(run.id, "val_loss")]
    assert val_loss[-1] < val_loss[0]
    (model,) = d.artifacts
    assert model.path == "artifacts/model.npz" and model.size > 0
    stored = Path(model.uri.removeprefix("file://"))
    weights = np.load(stored)
    assert weights["w"].shape == (64, 10)


@pytest.mark.slow
def test_local_demo_finds_its_runs_through_json_output(tmp_path):
    demo = Path(__file__).parents[1] / "examples" / "demo-local.sh"
    env = {k: v for k, v in os.environ.items() if k != "CAIRN_DATABASE_URL"}
    r = subprocess.run(["bash", str(demo)], capture_output=True, text=True, timeout=600,
                       env=dict(env, CAIRN_HOME=str(tmp_path / "home"), COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    runs = TrackingStore(f"sqlite:///{tmp_path / 'home' / 'cairn.db'}").list_runs(experiment="digits-demo")
    assert sorted(run.name for run in runs) == ["lr 0.02", "lr 0.2"]
    compared = r.stdout.split("params that differ")[-1]
    assert all(run.id[:8] in compared for run in runs)
