"""docs/install.md's tracking with no SDK: its shell trainer, run as written (no Python, no `cairn` import),
writes metrics files that a real tracking sidecar ingests into the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from cairn.store import TrackingStore
from tests.support.servers import clean_env, start_sidecar

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "5d0c3b1e-8f2a-4c6d-9e7b-1a2f3c4d5e6f"


def doc_trainer() -> str:
    """The ``sh`` block after the marker comment in docs/install.md."""
    text = (REPO / "docs" / "install.md").read_text()
    match = re.search(r"<!-- tests/test_install.py runs this block as a trainer -->\n```sh\n(.*?)```", text, re.S)
    assert match, "docs/install.md lost its no-SDK trainer"
    return match[1]


def test_metrics_files_written_without_the_sdk_are_ingested(store_url, tmp_path):
    run_dir = tmp_path / "run"
    sidecar = start_sidecar(run_dir, {"CAIRN_RUN_ID": RUN_ID, "CAIRN_PARAMS": "{}", "CAIRN_DATABASE_URL": store_url})
    try:
        trainer = subprocess.run(["sh", "-c", doc_trainer()], env=clean_env(CAIRN_RUN_DIR=str(run_dir)),
                                 capture_output=True, text=True, timeout=60, check=False)
        assert trainer.returncode == 0, trainer.stderr
    finally:
        sidecar.send_signal(signal.SIGTERM)  # what the kubelet does once the trainer has exited
        out, _ = sidecar.communicate(timeout=60)
    assert sidecar.returncode == 0, out
    store = TrackingStore(store_url)
    assert [(p.step, p.value) for p in store.metric_history(RUN_ID, "loss")] == [(1, 0.8), (2, 0.7), (3, 0.6)]
    assert [(p.step, p.value) for p in store.metric_history(RUN_ID, "acc")] == [(1, 0.6), (2, 0.7), (3, 0.8)]
