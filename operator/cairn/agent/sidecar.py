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
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from cairn import rundir as R
from cairn.agent.ingest import MAX_BATCH_POINTS, IngestAgent
from cairn.agent.uploader import start_uploads
from cairn.objectstore import S3Config
from cairn.settings import CairnSettings

log = logging.getLogger("cairn.sidecar")

POLL_INTERVAL_S = 0.5


class SidecarSettings(CairnSettings):
    """``cairn sidecar``: set by the operator on the sidecar container of every run pod."""

    title: ClassVar[str] = "Tracking sidecar (`cairn sidecar`)"

    run_dir: Path = Field(description="The shared run directory the trainer writes to.")
    run_id: str = Field(description="The run's id in the store (the TrainingRun's uid).")
    attempt: int = Field(1, ge=1, description="Which attempt this pod is (1, 2, ...).")
    params: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, description="The run's parameters, written to `params.json` for the trainer.",
        json_schema_extra={"accepts": "a JSON object"})
    database_url: str | None = Field(
        None, repr=False, description="SQLAlchemy URL of the store (default: SQLite under `CAIRN_HOME`).")
    drain_timeout: float = Field(60.0, ge=0, description="Seconds to drain records and uploads after SIGTERM.")
    max_batch_points: int = Field(
        MAX_BATCH_POINTS, ge=1, description="Most metric points committed in one transaction; bounds the sidecar's "
        "memory while it catches up after a database outage.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the live run metrics; 0: none.")
    export_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Metric keys exported live, separated by commas (at most 20 with the headline metric).",
        json_schema_extra={"accepts": "keys separated by commas"})
    headline_metric: str | None = Field(None, description="The TrainingRun's headline metric, always exported.")
    namespace: str = Field("", description="The TrainingRun's namespace (a label of the live metrics).")
    experiment: str = Field("", description="The run's experiment (a label of the live metrics).")
    run_name: str = Field("", description="The TrainingRun's name (a label of the live metrics).")

    @field_validator("params", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("not JSON") from None
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value

    @field_validator("export_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return tuple(k for k in value.split(",") if k) if isinstance(value, str) else value

    @property
    def labels(self) -> dict[str, str]:
        return {"namespace": self.namespace, "experiment": self.experiment, "run": self.run_id,
                "trainingrun": self.run_name}


def prepare_run_dir(cfg: SidecarSettings) -> None:
    """Lay out the shared run directory before the trainer starts (the trainer may run as any user)."""
    for sub in ("", R.ARTIFACTS_DIR, R.METRICS_DIR, R.CHECKPOINTS_DIR):
        d = cfg.run_dir / sub
        d.mkdir(parents=True, exist_ok=True)
        try:
            d.chmod(0o777)
        except PermissionError:
            pass  # a volume root owned by someone else (emptyDir with fsGroup): already writable
    (cfg.run_dir / R.PARAMS_FILE).write_text(json.dumps(cfg.params, sort_keys=True))
    (cfg.run_dir / R.READY_FILE).write_text(str(os.getpid()))


def start_exporter(cfg: SidecarSettings):  # noqa: ANN201 - a LiveState, or None
    """Serve the live metrics, binding the port before the run directory is ready, that is before the
    trainer (which shares the pod's network) starts, and keeping it for the sidecar's life.

    A port already taken (another container of the pod listens on it, or a trainer still running
    when this sidecar restarts) turns the live metrics off with an error and nothing else: tracking
    and uploads matter more than the live view, and a sidecar that exited would stop them."""
    from cairn.agent.exporter import LiveState, export_keys, serve

    live = LiveState(export_keys(cfg.export_keys, cfg.headline_metric))
    try:
        serve(live, cfg.labels, cfg.metrics_port)
    except OSError as exc:
        log.error("live metrics are off for this pod: port %d is taken by another process of the pod (%s)",
                  cfg.metrics_port, exc.strerror or exc)
        return None
    return live


def run_sidecar(cfg: SidecarSettings, s3: S3Config | None, stop: threading.Event | None = None) -> bool:
    """Ingest (and upload to ``s3``, when there is one) until SIGTERM or ``stop``, then drain.
    True when every line got in."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    live = start_exporter(cfg) if cfg.metrics_port else None
    prepare_run_dir(cfg)
    agent = IngestAgent(cfg.run_dir, cfg.database_url, cfg.run_id, poll_interval=POLL_INTERVAL_S,
                        max_batch_points=cfg.max_batch_points, attempt=cfg.attempt,
                        manifest_params=cfg.params)
    agent.live = live
    # Artifacts and checkpoints to the object store, in a thread beside the agent (None without one).
    uploads = start_uploads(cfg.run_dir, cfg.run_id, cfg.attempt, cfg.database_url, stop, cfg.drain_timeout, agent,
                            s3=s3, namespace=cfg.namespace, experiment=cfg.experiment)
    log.info("tracking run %s attempt %d from %s", cfg.run_id, cfg.attempt, cfg.run_dir)
    ok = agent.run(stop, drain_timeout=cfg.drain_timeout)
    if uploads is not None:
        ok = uploads.join(cfg.drain_timeout + 10) and ok
    log.info("ingested %d points from %d lines%s", agent.stats.points, agent.stats.lines,
             f", rejected {agent.stats.rejected}" if agent.stats.rejected else "")
    return ok
