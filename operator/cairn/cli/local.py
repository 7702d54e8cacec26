"""``cairn run``: track any command on this machine, with the agent running alongside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from cairn import rundir as R
from cairn.agent.ingest import IngestAgent
from cairn.rundir import Env
from cairn.store.db import cairn_home
from cairn.store.models import utcnow
from cairn.store.store import TrackingStore


@dataclass
class LocalRunResult:
    run_id: str
    exit_code: int
    status: str
    duration_s: float
    ingested_all: bool


def run_locally(
    store: TrackingStore,
    command: list[str],
    experiment: str,
    name: str | None,
    params: dict[str, Any],
    tags: dict[str, str] | None = None,
) -> LocalRunResult:
    run_id = store.create_run(experiment=experiment, name=name, params=params,
                              tags={"cairn.mode": "local", **(tags or {})})
    run_dir = cairn_home() / "runs" / run_id
    (run_dir / R.ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
    (run_dir / R.PARAMS_FILE).write_text(json.dumps(params))
    env = {
        **os.environ,
        Env.RUN_ID: run_id,
        Env.RUN_DIR: str(run_dir),
        Env.EXPERIMENT: experiment,
        Env.PARAMS: json.dumps(params),
        Env.PARAMS_FILE: str(run_dir / R.PARAMS_FILE),
    }
    if name:
        env[Env.RUN_NAME] = name

    stop = threading.Event()
    agent = IngestAgent(run_dir, run_id=run_id, store=store, poll_interval=0.25)
    outcome: dict[str, bool] = {}
    agent_thread = threading.Thread(target=lambda: outcome.setdefault("ok", agent.run(stop)), daemon=True)
    agent_thread.start()

    started = time.monotonic()
    interrupted = False
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        stop.set()
        agent_thread.join()
        store.finish_run(run_id, "FAILED", 127)
        store.update_run(run_id, reason=f"could not start {command[0]!r}: {exc.strerror}")
        raise

    def forward(signum, _frame):  # noqa: ANN001
        nonlocal interrupted
        interrupted = True
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        exit_code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    duration = time.monotonic() - started

    stop.set()
    agent_thread.join()
    if exit_code == 0:
        status = "FINISHED"
    elif interrupted or exit_code < 0:
        status = "KILLED"
    else:
        status = "FAILED"
    store.finish_run(run_id, status, exit_code, end_time=utcnow())
    return LocalRunResult(run_id, exit_code, status, duration, outcome.get("ok", False))
