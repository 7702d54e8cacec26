"""``cairn run`` and ``cairn sync``: track any command on this machine, with the agent running alongside it,
or ingest a run the SDK recorded offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import click

from cairn import rundir as R
from cairn.agent.ingest import IngestAgent
from cairn.cli.context import store_of
from cairn.cli.output import err_console
from cairn.cli.params import BadParam, parse_params
from cairn.cli.roles import agent
from cairn.cli.runs import print_run
from cairn.rundir import Env, RunStatus
from cairn.store.db import cairn_home
from cairn.store.models import utcnow
from cairn.store import TrackingStore


@dataclass
class LocalRunResult:
    run_id: str
    exit_code: int
    status: RunStatus
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
    agent = IngestAgent(run_dir, run_id=run_id, store=store, poll_interval=0.25, manifest_params=params)
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
        store.finish_run(run_id, RunStatus.FAILED, 127)
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
        status = RunStatus.FINISHED
    elif interrupted or exit_code < 0:
        status = RunStatus.KILLED
    else:
        status = RunStatus.FAILED
    store.finish_run(run_id, status, exit_code, end_time=utcnow())
    return LocalRunResult(run_id, exit_code, status, duration, outcome.get("ok", False))


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option("-e", "--experiment", default="default", show_default=True)
@click.option("--name", help="Display name of the run.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter for the run (repeatable); typed as JSON when it parses, else a string.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, experiment: str, name: str | None, params: tuple[str, ...],
            command: tuple[str, ...]) -> None:
    """Run COMMAND as a tracked run: cairn run -p lr=0.1 -- python train.py"""
    try:
        parsed = parse_params(params)
    except BadParam as exc:
        raise click.BadParameter(str(exc), param_hint="-p/--param") from None
    store = store_of(ctx)
    try:
        result = run_locally(store, list(command), experiment, name, parsed)
    except OSError as exc:
        err_console.print(f"[red]error:[/red] could not start {command[0]!r}: {exc.strerror}")
        sys.exit(127)
    print_run(store.get_run(result.run_id))
    if not result.ingested_all:
        err_console.print("[yellow]warning:[/yellow] some records were not ingested yet; "
                          "`cairn agent --once --run-dir` on the run directory finishes the job")
    sys.exit(result.exit_code if result.exit_code >= 0 else 128 - result.exit_code)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.pass_context
def sync(ctx: click.Context, run_dir: str) -> None:
    """Ingest a run recorded offline (the SDK without an agent) into the store."""
    ctx.invoke(agent, run_dir=run_dir, run_id=None, metrics_files=(), once=True, exit_on_finish=False,
               drain_timeout=60.0, poll_interval=0.5, batch_bytes=8 << 20)
