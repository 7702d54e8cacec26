"""The tracking sidecar prepares the run directory, ingests while the trainer runs, drains on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from cairn.store import TrackingStore
from tests.support.servers import clean_env, free_port, start_sidecar

RUN_ID = "5d0c6f2a-1b7e-4a8e-9c3d-2e4f6a8b0c1d"

TRAINER = """
import cairn, sys
cairn.init()
assert cairn.config.lr == 0.3, cairn.config
for s in range(int(sys.argv[1])):
    cairn.log({"loss": 1.0 / (s + 1)}, step=s)
cairn.finish()
"""


def run_attempt(tmp_path, url: str, attempt: int, steps: int) -> str:
    run_dir = tmp_path / f"attempt{attempt}"
    sidecar = start_sidecar(run_dir, {"CAIRN_RUN_ID": RUN_ID, "CAIRN_ATTEMPT": str(attempt),
                                      "CAIRN_PARAMS": json.dumps({"lr": 0.3}), "CAIRN_DATABASE_URL": url})
    assert json.loads((run_dir / "params.json").read_text()) == {"lr": 0.3}
    subprocess.run([sys.executable, "-c", TRAINER, str(steps)], env=clean_env(CAIRN_RUN_DIR=str(run_dir),
                                                                              CAIRN_RUN_ID=RUN_ID), check=True)
    sidecar.send_signal(signal.SIGTERM)  # what the kubelet does once the trainer has exited
    out, _ = sidecar.communicate(timeout=60)
    assert sidecar.returncode == 0, out
    return out


def test_each_attempt_is_ingested_in_full(store_url, tmp_path):
    out = run_attempt(tmp_path, store_url, 1, 3000)
    assert "ingested 3000 points" in out
    run_attempt(tmp_path, store_url, 2, 500)  # a retry writes fresh files from step 0
    d = TrackingStore(store_url).get_run(RUN_ID)
    assert d.params["lr"] == 0.3
    assert d.summary.metrics["loss"].count == 3500
    steps = [p.step for p in TrackingStore(store_url).metric_history(RUN_ID, "loss")]
    assert steps.count(0) == 2 and steps.count(2999) == 1


@pytest.mark.parametrize("env, message", [
    ({"CAIRN_RUN_ID": RUN_ID}, "CAIRN_RUN_DIR"),
    ({"CAIRN_RUN_DIR": "/tmp/x", "CAIRN_RUN_ID": RUN_ID, "CAIRN_PARAMS": "[1]"},
     "CAIRN_PARAMS: expected a JSON object"),
])
def test_misconfigured_sidecar_says_what_is_wrong(env, message):
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    r = subprocess.run([sys.executable, "-m", "cairn.cli.main", "sidecar"], env={**base, **env},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr


def test_the_metrics_port_is_held_before_the_trainer_starts(sqlite_url, tmp_path):
    port = free_port()
    sidecar = start_sidecar(tmp_path / "run", {"CAIRN_RUN_ID": RUN_ID, "CAIRN_DATABASE_URL": sqlite_url,
                                               "CAIRN_METRICS_PORT": str(port)})
    try:
        with pytest.raises(OSError):  # what a trainer trying to take the port now gets
            with socket.socket() as trainer_socket:
                trainer_socket.bind(("0.0.0.0", port))
    finally:
        sidecar.send_signal(signal.SIGTERM)
        out, _ = sidecar.communicate(timeout=60)
    assert sidecar.returncode == 0, out


def test_a_metrics_port_already_taken_turns_off_live_metrics_and_tracking_goes_on(sqlite_url, tmp_path):
    run_dir = tmp_path / "run"
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sidecar = start_sidecar(run_dir, {"CAIRN_RUN_ID": RUN_ID, "CAIRN_DATABASE_URL": sqlite_url,
                                          "CAIRN_PARAMS": json.dumps({"lr": 0.3}), "CAIRN_METRICS_PORT": str(port)})
        subprocess.run([sys.executable, "-c", TRAINER, "50"],
                       env=clean_env(CAIRN_RUN_DIR=str(run_dir), CAIRN_RUN_ID=RUN_ID), check=True, timeout=60)
        sidecar.send_signal(signal.SIGTERM)
        out, _ = sidecar.communicate(timeout=60)
    assert sidecar.returncode == 0, out
    assert f"live metrics are off for this pod: port {port} is taken" in out
    assert TrackingStore(sqlite_url).get_run(RUN_ID).summary.metrics["loss"].count == 50
