"""The tracking sidecar: what runs beside the trainer in every TrainingRun pod.

It runs as a native sidecar (an init container with ``restartPolicy: Always``), so the kubelet
starts it before the trainer and stops it (SIGTERM) only after the trainer has exited. Until then
it ingests the shared run directory; on SIGTERM it drains what is left and exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cairn.agent.ingest import IngestAgent
from cairn.agent.uploader import start_uploads
from cairn.sdk import records as R

log = logging.getLogger("cairn.sidecar")

READY_FILE = ".sidecar-ready"


@dataclass(frozen=True)
class SidecarConfig:
    run_dir: Path
    run_id: str
    attempt: int
    params: dict
    database_url: str | None
    drain_timeout: float = 60.0
    poll_interval: float = 0.5
    metrics_port: int = 0  # 0: no exporter
    export_keys: tuple[str, ...] = ()
    headline_metric: str | None = None
    labels: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "SidecarConfig":
        env = dict(os.environ if env is None else env)
        missing = [k for k in ("CAIRN_RUN_DIR", "CAIRN_RUN_ID") if not env.get(k)]
        if missing:
            raise ValueError(f"the sidecar needs {', '.join(missing)} in its environment")
        try:
            params = json.loads(env.get("CAIRN_PARAMS") or "{}")
        except ValueError as exc:
            raise ValueError(f"CAIRN_PARAMS is not a JSON object: {exc}") from None
        if not isinstance(params, dict):
            raise ValueError("CAIRN_PARAMS is not a JSON object")
        return cls(
            run_dir=Path(env["CAIRN_RUN_DIR"]),
            run_id=env["CAIRN_RUN_ID"],
            attempt=int(env.get("CAIRN_ATTEMPT") or 1),
            params=params,
            database_url=env.get("CAIRN_DATABASE_URL") or None,
            drain_timeout=float(env.get("CAIRN_DRAIN_TIMEOUT") or 60.0),
            metrics_port=int(env.get("CAIRN_METRICS_PORT") or 0),
            export_keys=tuple(k for k in (env.get("CAIRN_EXPORT_KEYS") or "").split(",") if k),
            headline_metric=env.get("CAIRN_HEADLINE_METRIC") or None,
            labels={"namespace": env.get("CAIRN_NAMESPACE", ""), "experiment": env.get("CAIRN_EXPERIMENT", ""),
                    "run": env["CAIRN_RUN_ID"], "trainingrun": env.get("CAIRN_RUN_NAME", "")},
        )


def prepare_run_dir(cfg: SidecarConfig) -> None:
    """Lay out the shared run directory before the trainer starts (the trainer may run as any user)."""
    for sub in ("", R.ARTIFACTS_DIR, R.METRICS_DIR, "checkpoints"):
        d = cfg.run_dir / sub
        d.mkdir(parents=True, exist_ok=True)
        try:
            d.chmod(0o777)
        except PermissionError:
            pass  # a volume root owned by someone else (emptyDir with fsGroup): already writable
    (cfg.run_dir / R.PARAMS_FILE).write_text(json.dumps(cfg.params, sort_keys=True))
    (cfg.run_dir / READY_FILE).write_text(str(os.getpid()))


def run_sidecar(cfg: SidecarConfig, stop: threading.Event | None = None) -> bool:
    """Ingest until SIGTERM (or ``stop``), then drain. True when every line got in."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    prepare_run_dir(cfg)
    agent = IngestAgent(cfg.run_dir, cfg.database_url, cfg.run_id, poll_interval=cfg.poll_interval,
                        attempt=cfg.attempt)
    if cfg.metrics_port:
        from cairn.agent.exporter import LiveState, export_keys, serve

        agent.live = LiveState(export_keys(cfg.export_keys, cfg.headline_metric))
        serve(agent.live, cfg.labels, cfg.metrics_port)
    # Artifacts and checkpoints to the object store, in a thread beside the agent (None without one).
    uploads = start_uploads(cfg.run_dir, cfg.run_id, cfg.attempt, cfg.database_url, stop, cfg.drain_timeout, agent)
    log.info("tracking run %s attempt %d from %s", cfg.run_id, cfg.attempt, cfg.run_dir)
    ok = agent.run(stop, drain_timeout=cfg.drain_timeout)
    if uploads is not None:
        ok = uploads.join(cfg.drain_timeout + 10) and ok
    log.info("ingested %d points from %d lines%s", agent.stats.points, agent.stats.lines,
             f", rejected {agent.stats.rejected}" if agent.stats.rejected else "")
    return ok
