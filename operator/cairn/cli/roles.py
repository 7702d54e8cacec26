"""The in-pod roles of ``cairn``: processes the operator's deployment and the run pods start.

People rarely type these; the help lists them apart from the user commands (see ``RoleCommand``).
"""

from __future__ import annotations

import logging
import sys
import threading

import click

from cairn.rundir import Env


class RoleCommand(click.Command):
    """A command that a pod runs rather than a person."""


@click.command(cls=RoleCommand)
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), envvar=Env.RUN_DIR)
@click.option("--run-id", envvar=Env.RUN_ID, help="Default: the id the SDK wrote in the run directory.")
@click.option("--metrics-file", "metrics_files", multiple=True,
              help="Extra JSON-lines file (relative to the run dir) from a program without the SDK.")
@click.option("--once", is_flag=True, help="Ingest what is there now and exit (e.g. to sync an offline run).")
@click.option("--exit-on-finish", is_flag=True, help="Exit once the run's finish record is ingested.")
@click.option("--drain-timeout", default=60.0, show_default=True, help="Seconds to keep draining after SIGTERM.")
@click.option("--poll-interval", default=0.5, show_default=True)
@click.option("--batch-bytes", default=8 << 20, show_default=True,
              help="Most bytes of a file committed per transaction.")
@click.pass_context
def agent(ctx: click.Context, run_dir, run_id, metrics_files, once, exit_on_finish,  # noqa: ANN001
          drain_timeout, poll_interval, batch_bytes) -> None:  # noqa: ANN001
    """Ingest a run directory into the store, exactly once (the tracking sidecar runs this)."""
    import signal

    from cairn.agent.ingest import IngestAgent

    logging.getLogger("cairn").setLevel(logging.INFO)
    a = IngestAgent(run_dir, ctx.obj.get("database_url"), run_id, tuple(metrics_files), poll_interval, batch_bytes)
    stop = threading.Event()
    if once:
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ok = a.run(stop, drain_timeout=drain_timeout, exit_on_finish=exit_on_finish)
    click.echo(f"ingested {a.stats.points} points from {a.stats.lines} lines"
               + (f", rejected {a.stats.rejected}" if a.stats.rejected else ""), err=True)
    sys.exit(0 if ok else 3)


@click.command("operator", cls=RoleCommand)
@click.option("-n", "--namespace", "namespaces", multiple=True,
              help=f"Watch only this namespace (repeatable; default: {Env.NAMESPACES}, else every namespace).")
@click.option("--sidecar-image", help=f"Image of the tracking sidecar (default: {Env.SIDECAR_IMAGE}).")
@click.option("--image-pull-policy", type=click.Choice(["Always", "IfNotPresent", "Never"]),
              help=f"Pull policy of the pods' images (default: {Env.IMAGE_PULL_POLICY}).")
@click.option("--database-secret",
              help="Secret (key 'url') in each run's namespace with the store URL for the sidecar "
                   f"(default: {Env.DATABASE_SECRET}).")
@click.option("--metrics-port", type=int, help=f"Port of the operator's metrics (default: {Env.METRICS_PORT}, 9090).")
@click.option("--liveness-port", type=int, help=f"Port of /healthz (default: {Env.LIVENESS_PORT}, 8080).")
@click.option("--objectstore-secret",
              help="Secret (keys endpoint, accessKey, secretKey, bucket, region) in each run's namespace with the "
                   f"object store for artifacts, checkpoints and datasets (default: {Env.OBJECTSTORE_SECRET}, "
                   "else cairn-objectstore; empty: none).")
@click.pass_context
def operator_cmd(ctx: click.Context, namespaces, sidecar_image, image_pull_policy, database_secret,  # noqa: ANN001
                 metrics_port, liveness_port, objectstore_secret) -> None:
    """Run the TrainingRun operator. Flags win over the CAIRN_* variables (docs/settings.md)."""
    import kopf

    import cairn.controller  # noqa: F401  (registers the handlers)
    from cairn.controller import malloc
    from cairn.controller.handlers import Operator
    from cairn.controller.settings import OperatorSettings

    flags = {"namespaces": namespaces or None, "sidecar_image": sidecar_image, "image_pull_policy": image_pull_policy,
             "database_secret": database_secret, "metrics_port": metrics_port, "liveness_port": liveness_port,
             "objectstore_secret": objectstore_secret, "database_url": ctx.obj.get("database_url")}
    settings = OperatorSettings(**{k: v for k, v in flags.items() if v is not None})
    malloc.limit_heap_growth(arenas=2)  # the handlers' threads share two arenas (see cairn.controller.malloc)
    op = Operator.connect(settings)  # the store is reached in the background: runs are scheduled without it
    logging.getLogger("cairn").setLevel(logging.INFO)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=(f"http://{settings.liveness_host}:{settings.liveness_port}/healthz"
                           if settings.liveness_port else None),
        memo=kopf.Memo(operator=op),
    )


@click.command(cls=RoleCommand)
def sidecar() -> None:
    """The tracking sidecar of a TrainingRun pod (configured by the operator through CAIRN_* env)."""
    from cairn.agent.sidecar import SidecarSettings, run_sidecar
    from cairn.objectstore import object_store_or_none

    logging.getLogger("cairn").setLevel(logging.INFO)
    cfg = SidecarSettings()
    sys.exit(0 if run_sidecar(cfg, object_store_or_none(logging.getLogger("cairn.sidecar"))) else 3)


@click.command(cls=RoleCommand)
def prepare() -> None:
    """The prepare step of a TrainingRun pod: dataset digest check, checkpoint restore on a retry."""
    from cairn.agent.prepare import PrepareSettings, run_prepare
    from cairn.objectstore import object_store_or_none

    logging.getLogger("cairn").setLevel(logging.INFO)
    cfg = PrepareSettings()
    sys.exit(run_prepare(cfg, object_store_or_none(logging.getLogger("cairn.prepare"))))
