"""Entry point of the ``cairn`` command."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import sys
import threading
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cairn.cli.params import BadParam, lower_is_better, parse_params
from cairn.store import db
from cairn.store.entities import RunDetail, RunSummary

console = Console()
err_console = Console(stderr=True)


class CairnGroup(click.Group):
    """Turns store errors into one clear line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except db.StoreError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            sys.exit(1)


def _store(ctx: click.Context):  # noqa: ANN202
    from cairn.store.store import TrackingStore

    obj = ctx.find_object(dict)
    if "store" not in obj:
        obj["store"] = TrackingStore(obj.get("database_url"))
    return obj["store"]


def _fmt_value(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.6g}"


def _fmt_time(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")


STATUS_STYLE = {"FINISHED": "green", "FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan", "PENDING": "blue"}


def _status(s: str) -> str:
    return f"[{STATUS_STYLE.get(s, 'white')}]{s}[/]"


@click.group(cls=CairnGroup)
@click.option("--database-url", envvar="CAIRN_DATABASE_URL", default=None,
              help="SQLAlchemy URL of the store (default: SQLite under $CAIRN_HOME, ~/.cairn).")
@click.option("-v", "--verbose", is_flag=True, help="Log what the agent and store do.")
@click.version_option(package_name="cairn")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, verbose: bool) -> None:
    """Cairn: tracked training runs, locally or on Kubernetes."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.ensure_object(dict)["database_url"] = database_url


# -- runs ---------------------------------------------------------------------------------------
@cli.group()
def runs() -> None:
    """List, inspect, compare and export runs."""


@runs.command("list")
@click.option("-e", "--experiment", help="Only runs of this experiment.")
@click.option("-s", "--status", type=click.Choice(["RUNNING", "FINISHED", "FAILED", "KILLED", "PENDING"], case_sensitive=False))
@click.option("--sort", "sort_metric", metavar="METRIC", help="Sort by the latest value of a metric (best first).")
@click.option("--asc/--desc", "ascending", default=None, help="Sort direction (default: by the metric's name, loss ascending).")
@click.option("-n", "--limit", default=50, show_default=True)
@click.pass_context
def runs_list(ctx: click.Context, experiment, status, sort_metric, ascending, limit) -> None:  # noqa: ANN001
    """List runs, newest first or best first by a metric."""
    if sort_metric and ascending is None:
        ascending = lower_is_better(sort_metric)
    rows = _store(ctx).list_runs(experiment, status, sort_metric, bool(ascending), limit)
    keys = _headline_keys(rows, sort_metric)
    table = Table(title=f"{len(rows)} run(s)")
    for col in ("id", "experiment", "name", "status", "started", "duration"):
        table.add_column(col)
    for k in keys:
        table.add_column(k, justify="right")
    for r in rows:
        table.add_row(r.id[:8], r.experiment, r.name or "", _status(r.status), _fmt_time(r.start_time),
                      _fmt_duration(r.duration_s), *[_fmt_value(r.metrics[k].value) if k in r.metrics else "-" for k in keys])
    console.print(table)


def _headline_keys(rows: list[RunSummary], first: str | None, limit: int = 4) -> list[str]:
    keys = [first] if first else []
    for r in rows:
        for k in sorted(r.metrics):
            if k not in keys and len(keys) < limit:
                keys.append(k)
    return keys


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("--packages", is_flag=True, help="List every installed package of the run's environment.")
@click.pass_context
def runs_show(ctx: click.Context, run_id: str, as_json: bool, packages: bool) -> None:
    """Everything recorded about one run (an unambiguous id prefix is enough)."""
    store = _store(ctx)
    d = store.get_run(store.resolve_run_id(run_id))
    if as_json:
        click.echo(json.dumps(detail_to_dict(d), indent=2, default=str))
        return
    print_run(d, packages)


def detail_to_dict(d: RunDetail) -> dict[str, Any]:
    s = d.summary
    return {
        "id": s.id, "name": s.name, "experiment": s.experiment, "status": s.status,
        "start_time": s.start_time, "end_time": s.end_time, "duration_s": s.duration_s, "exit_code": s.exit_code,
        "params": d.params, "tags": d.tags, "environment": d.environment, "code": d.code,
        "metrics": {k: {"step": v.step, "value": _json_float(v.value), "min": _json_float(v.min_value),
                        "max": _json_float(v.max_value), "count": v.count} for k, v in s.metrics.items()},
        "artifacts": [a.__dict__ for a in d.artifacts], "datasets": d.datasets, "cluster": d.cluster,
        "ingest": d.ingest, "uploads": d.uploads, "resumes": [r.__dict__ for r in d.resumes],
    }


def _json_float(v: float | None) -> float | str | None:
    if v is not None and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return v


def print_run(d: RunDetail, packages: bool = False) -> None:
    s = d.summary
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for label, value in (
        ("run", s.id), ("name", s.name or "-"), ("experiment", s.experiment), ("status", _status(s.status)),
        ("started", _fmt_time(s.start_time)), ("duration", _fmt_duration(s.duration_s)),
        ("exit code", "-" if s.exit_code is None else str(s.exit_code)),
    ):
        head.add_row(label, value)
    if d.code:
        head.add_row("code", f"{d.code.get('repository') or '?'} @ {d.code.get('commit')}"
                     + (" (dirty)" if d.code.get("dirty") else ""))
    env = d.environment
    if env:
        gpu = f"{env.get('gpu_count') or 0} x {env.get('gpu_model')}" if env.get("gpu_model") else "none"
        head.add_row("environment", f"python {env.get('python_version')} on {env.get('hostname')}, GPU: {gpu}"
                     + (f", CUDA {env['cuda_version']}" if env.get("cuda_version") else "")
                     + f", {len(env.get('packages') or {})} packages")
    for k, v in d.cluster.items():
        head.add_row(k.replace("_", " "), str(v))
    for ds in d.datasets:
        head.add_row("dataset", f"{ds['uri']} sha256:{ds['digest']}")
    if (d.uploads or {}).get("complete") is not None:
        head.add_row("uploads", "all in the object store" if d.uploads["complete"]
                     else f"{d.uploads.get('pending')} file(s) not uploaded")
    for r in d.resumes:
        head.add_row("resumed", f"attempt {r.attempt} from checkpoint step {r.step}")
    rejected = d.ingest.get("rejected") or {}
    head.add_row("ingested", f"{d.ingest.get('points', 0)} points"
                 + (f", rejected lines/values: {rejected}" if rejected else ""))
    console.print(head)
    if d.params:
        t = Table(title="params")
        t.add_column("key")
        t.add_column("value")
        for k, v in sorted(d.params.items()):
            t.add_row(k, json.dumps(v))
        console.print(t)
    if s.metrics:
        t = Table(title="metrics")
        for col in ("key", "step", "last", "min", "max", "points"):
            t.add_column(col, justify="left" if col == "key" else "right")
        for k, v in sorted(s.metrics.items()):
            t.add_row(k, str(v.step), _fmt_value(v.value), _fmt_value(v.min_value), _fmt_value(v.max_value), str(v.count))
        console.print(t)
    if d.artifacts:
        t = Table(title="artifacts")
        for col in ("path", "size", "sha256", "uri"):
            t.add_column(col)
        for a in d.artifacts:
            t.add_row(a.path, str(a.size), a.sha256[:16], a.uri)
        console.print(t)
    if packages and env.get("packages"):
        console.print("packages: " + ", ".join(f"{k}=={v}" for k, v in env["packages"].items()))


@runs.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--all-params", is_flag=True, help="Show parameters that are equal in every run too.")
@click.pass_context
def runs_compare(ctx: click.Context, run_ids: tuple[str, ...], all_params: bool) -> None:
    """Parameters that differ and final/best metrics, side by side."""
    if len(run_ids) < 2:
        raise click.UsageError("compare needs at least two run ids")
    store = _store(ctx)
    details = [store.get_run(store.resolve_run_id(r)) for r in run_ids]
    ids = [d.summary.id[:8] for d in details]
    params = Table(title="params" if all_params else "params that differ")
    params.add_column("param")
    for i in ids:
        params.add_column(i)
    keys = sorted(set().union(*(d.params for d in details)))
    missing = object()
    for k in keys:
        values = [d.params.get(k, missing) for d in details]
        differs = any(v != values[0] for v in values)
        if differs or all_params:
            params.add_row(k, *["-" if v is missing else json.dumps(v) for v in values], style="bold" if differs else None)
    console.print(params)
    metrics = Table(title="metrics: final (best)")
    metrics.add_column("metric")
    for i in ids:
        metrics.add_column(i, justify="right")
    metrics.add_column("best run")
    for k in sorted(set().union(*(d.summary.metrics for d in details))):
        minimise = lower_is_better(k)
        cells, bests = [], []
        for d in details:
            v = d.summary.metrics.get(k)
            best = None if v is None else (v.min_value if minimise else v.max_value)
            bests.append(best)
            cells.append("-" if v is None else f"{_fmt_value(v.value)} ({_fmt_value(best)})")
        ranked = [(b, i) for b, i in zip(bests, ids) if b is not None]
        best_value = (min if minimise else max)(b for b, _ in ranked) if ranked else None
        leaders = [i for b, i in ranked if b == best_value]
        winner = leaders[0] if len(leaders) == 1 else ("tie" if leaders else "-")
        metrics.add_row(k + (" ↓" if minimise else " ↑"), *cells, winner)
    console.print(metrics)


@runs.command("export")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--output", type=click.File("w"), default="-", help="File to write (default: stdout).")
@click.option("-k", "--key", "keys", multiple=True, help="Only these metrics (repeatable).")
@click.pass_context
def runs_export(ctx: click.Context, run_id: str, fmt: str, output, keys: tuple[str, ...]) -> None:  # noqa: ANN001
    """Every metric point of a run (CSV: key,step,timestamp_ms,value; JSON: the run record and series)."""
    store = _store(ctx)
    rid = store.resolve_run_id(run_id)
    keys = keys or tuple(store.metric_keys(rid))
    if fmt == "csv":
        w = csv.writer(output)
        w.writerow(["key", "step", "timestamp_ms", "value"])
        for k in keys:
            w.writerows((p.key, p.step, p.timestamp_ms, repr(p.value)) for p in store.metric_history(rid, k))
        return
    doc = detail_to_dict(store.get_run(rid))
    doc["history"] = {k: [[p.step, p.timestamp_ms, _json_float(p.value)] for p in store.metric_history(rid, k)] for k in keys}
    json.dump(doc, output, default=str)
    output.write("\n")


@runs.command("history")
@click.argument("run_id")
@click.argument("key")
@click.option("--points", default=1000, show_default=True, help="At most this many buckets.")
@click.pass_context
def runs_history(ctx: click.Context, run_id: str, key: str, points: int) -> None:
    """A downsampled series: per bucket of steps, the last value with the min and max."""
    store = _store(ctx)
    rid = store.resolve_run_id(run_id)
    click.echo("step,last,min,max,points")
    for b in store.downsampled_history(rid, key, points):
        click.echo(f"{b.step},{b.value!r},{b.min_value!r},{b.max_value!r},{b.count}")


@runs.command("artifacts")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def runs_artifacts(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """List a run's artifacts and checkpoints: where they are, their size and sha256."""
    store = _store(ctx)
    rid = store.resolve_run_id(run_id)
    detail = store.get_run(rid)
    arts = detail.artifacts
    if as_json:
        click.echo(json.dumps({"run": rid, "uploads": detail.uploads,
                               "resumes": [r.__dict__ for r in detail.resumes],
                               "artifacts": [a.__dict__ for a in arts]}, indent=2, default=str))
        return
    table = Table(title=f"{len(arts)} artifact(s) of run {rid[:8]}")
    for col in ("path", "kind", "step", "attempt", "size", "sha256", "uri"):
        table.add_column(col, justify="right" if col in ("step", "attempt", "size") else "left", overflow="fold")
    for a in arts:
        table.add_row(a.path, a.kind, "-" if a.step is None else str(a.step), "-" if a.attempt is None else str(a.attempt),
                      _fmt_bytes(a.size), a.sha256[:16], a.uri)
    console.print(table)
    uploads = detail.uploads or {}
    if uploads.get("complete") is True:
        console.print("[green]every file of the run reached the object store[/]")
    elif uploads.get("complete") is False:
        console.print(f"[red]{uploads.get('pending')} file(s) could not be uploaded before the pod ended[/]")
    for r in detail.resumes:
        console.print(f"attempt {r.attempt} resumed from checkpoint step {r.step}"
                      + (f" (saved by attempt {r.from_attempt})" if r.from_attempt else ""))


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _select_artifacts(arts: list, path: str | None) -> list:  # noqa: ANN001
    """Artifacts named by PATH: the path itself, a directory of them, or a path below artifacts/."""
    if not path:
        return list(arts)
    path = path.strip("/")
    for candidate in (path, f"artifacts/{path}"):
        chosen = [a for a in arts if a.path == candidate or a.path.startswith(candidate + "/")]
        if chosen:
            return chosen
    return []


@runs.command("download")
@click.argument("run_id")
@click.argument("path", required=False)
@click.option("-o", "--output", "output", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to write into; files keep their path in the run (artifacts/..., checkpoints/<step>/...).")
@click.pass_context
def runs_download(ctx: click.Context, run_id: str, path: str | None, output: str) -> None:
    """Fetch a run's artifacts (all, or those under PATH) and verify each one's sha256.

    The object store comes from CAIRN_S3_ENDPOINT, CAIRN_S3_ACCESS_KEY and CAIRN_S3_SECRET_KEY
    (or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
    """
    from pathlib import Path

    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from cairn import objectstore as S3

    store = _store(ctx)
    rid = store.resolve_run_id(run_id)
    arts = _select_artifacts(store.list_artifacts(rid), path)
    if not arts:
        raise click.ClickException(f"run {rid[:8]} has no artifact {path!r}" if path else f"run {rid[:8]} has no artifacts")
    client = None
    if any(a.uri.startswith("s3://") for a in arts):
        try:
            cfg = S3.S3Config.from_env()
        except S3.ObjectStoreError as exc:
            raise click.ClickException(str(exc)) from None
        if cfg is None:
            raise click.ClickException("the artifacts are in the object store: set CAIRN_S3_ENDPOINT, "
                                       "CAIRN_S3_ACCESS_KEY and CAIRN_S3_SECRET_KEY")
        client = cfg.client()
    out = Path(output)
    bad = []
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(f"{len(arts)} file(s)", total=sum(a.size for a in arts))
        advance = lambda n: progress.advance(task, n)  # noqa: E731
        for a in arts:
            dest = out / a.path
            progress.update(task, description=a.path)
            try:
                if a.uri.startswith("s3://"):
                    bucket, key = S3.parse_s3_uri(a.uri)
                    S3.download_file(client, bucket, key, dest, a.sha256, progress=advance)
                else:
                    _copy_local(a.uri, dest, a.sha256, advance)
            except S3.ChecksumMismatch as exc:
                bad.append(str(exc))
            except Exception as exc:  # noqa: BLE001
                bad.append(f"{a.path}: {type(exc).__name__}: {exc}")
        progress.update(task, description="done")
    if bad:
        for line in bad:
            err_console.print(f"[red]error:[/red] {line}", highlight=False)
        sys.exit(1)
    click.echo(f"downloaded {len(arts)} file(s), {_fmt_bytes(sum(a.size for a in arts))}, sha256 verified, "
               f"into {out}", err=True)


def _copy_local(uri: str, dest, expected: str, advance) -> None:  # noqa: ANN001
    """A local (file://) artifact, copied with the same verification as a download."""
    import hashlib
    import os
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    from cairn.objectstore import CHUNK, ChecksumMismatch

    src = Path(unquote(urlsplit(uri).path))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    with open(src, "rb") as f, open(part, "wb") as o:
        for block in iter(lambda: f.read(CHUNK), b""):
            o.write(block)
            h.update(block)
            advance(len(block))
    if h.hexdigest() != expected:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{uri}: sha256 {h.hexdigest()} but the store recorded {expected}")
    os.replace(part, dest)


# -- datasets -----------------------------------------------------------------------------------
@cli.group()
def datasets() -> None:
    """Datasets in the object store."""


@datasets.command("digest")
@click.argument("uri")
def datasets_digest(uri: str) -> None:
    """Print the content digest of an s3:// prefix, the value to pin in spec.dataset.sha256."""
    from cairn import objectstore as S3

    try:
        cfg = S3.S3Config.from_env()
        if cfg is None:
            raise click.ClickException("set CAIRN_S3_ENDPOINT, CAIRN_S3_ACCESS_KEY and CAIRN_S3_SECRET_KEY")
        found = S3.dataset_digest(cfg.client(), uri)
    except S3.ObjectStoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(found.digest)
    click.echo(f"{found.objects} objects, {found.bytes} bytes", err=True)


# -- experiments, db ----------------------------------------------------------------------------
@cli.group()
def experiments() -> None:
    """Experiments group runs."""


@experiments.command("list")
@click.pass_context
def experiments_list(ctx: click.Context) -> None:
    table = Table(title="experiments")
    for col in ("experiment", "runs", "last run"):
        table.add_column(col)
    for e in _store(ctx).list_experiments():
        table.add_row(e.name, str(e.runs), _fmt_time(e.last_start))
    console.print(table)


@cli.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the store's schema to this version of Cairn (safe to repeat)."""
    engine = db.get_engine(ctx.obj.get("database_url"))
    db.check_reachable(engine)
    before, after = db.upgrade(engine)
    click.echo(f"schema {before or 'empty'} -> {after} ({db.redact(str(engine.url))})")


@db_group.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the schema revision of the store and the one this Cairn needs."""
    engine = db.get_engine(ctx.obj.get("database_url"))
    db.check_reachable(engine)
    click.echo(f"current {db.current_revision(engine) or 'none'}, needed {db.head_revision()}")


# -- agent and local runs -----------------------------------------------------------------------
@cli.command()
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), envvar="CAIRN_RUN_DIR")
@click.option("--run-id", envvar="CAIRN_RUN_ID", help="Default: the id the SDK wrote in the run directory.")
@click.option("--metrics-file", "metrics_files", multiple=True,
              help="Extra JSON-lines file (relative to the run dir) from a program without the SDK.")
@click.option("--once", is_flag=True, help="Ingest what is there now and exit (e.g. to sync an offline run).")
@click.option("--exit-on-finish", is_flag=True, help="Exit once the run's finish record is ingested.")
@click.option("--drain-timeout", default=60.0, show_default=True, help="Seconds to keep draining after SIGTERM.")
@click.option("--poll-interval", default=0.5, show_default=True)
@click.option("--batch-bytes", default=8 << 20, show_default=True, help="Most bytes of a file committed per transaction.")
@click.pass_context
def agent(ctx: click.Context, run_dir, run_id, metrics_files, once, exit_on_finish, drain_timeout, poll_interval,  # noqa: ANN001
          batch_bytes) -> None:  # noqa: ANN001
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


@cli.command("operator")
@click.option("-n", "--namespace", "namespaces", multiple=True, envvar="CAIRN_NAMESPACES",
              help="Watch only this namespace (repeatable; default: every namespace).")
@click.option("--sidecar-image", envvar="CAIRN_SIDECAR_IMAGE", help="Image of the tracking sidecar.")
@click.option("--image-pull-policy", envvar="CAIRN_IMAGE_PULL_POLICY",
              type=click.Choice(["Always", "IfNotPresent", "Never"]), help="Pull policy of the pods' images.")
@click.option("--database-secret", envvar="CAIRN_DATABASE_SECRET",
              help="Secret (key 'url') in each run's namespace with the store URL for the sidecar.")
@click.option("--metrics-port", envvar="CAIRN_METRICS_PORT", type=int, default=9090, show_default=True)
@click.option("--liveness-port", envvar="CAIRN_LIVENESS_PORT", type=int, default=8080, show_default=True)
@click.option("--objectstore-secret", envvar="CAIRN_OBJECTSTORE_SECRET",
              help="Secret (keys endpoint, accessKey, secretKey, bucket, region) in each run's namespace with the "
                   "object store for artifacts, checkpoints and datasets (default cairn-objectstore).")
@click.pass_context
def operator_cmd(ctx: click.Context, namespaces, sidecar_image, image_pull_policy, database_secret,  # noqa: ANN001
                 metrics_port, liveness_port, objectstore_secret) -> None:
    """Run the TrainingRun operator."""
    import dataclasses
    import os

    import kopf

    import cairn.controller  # noqa: F401  (registers the handlers)
    from cairn.controller.handlers import Operator
    from cairn.controller.settings import ControllerSettings
    from cairn.rundir import Env
    from cairn.store import db as store_db

    defaults = ControllerSettings.from_env()
    flags = {"sidecar_image": sidecar_image, "image_pull_policy": image_pull_policy, "database_secret": database_secret}
    pod = dataclasses.replace(defaults.pod, **{k: v for k, v in flags.items() if v})
    if objectstore_secret is not None:  # set but empty: no object store at all
        pod = dataclasses.replace(pod, objectstore_secret=objectstore_secret)
    settings = dataclasses.replace(defaults, namespaces=tuple(namespaces), metrics_port=metrics_port,
                                   liveness_port=liveness_port, pod=pod,
                                   database_url=ctx.obj.get("database_url") or defaults.database_url)
    op = Operator.connect(settings)
    store_db.check_reachable(op.store.engine)
    logging.getLogger("cairn").setLevel(logging.INFO)
    liveness_host = os.environ.get(Env.LIVENESS_HOST, "0.0.0.0")
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=f"http://{liveness_host}:{liveness_port}/healthz" if liveness_port else None,
        memo=kopf.Memo(operator=op),
    )


@cli.command()
def sidecar() -> None:
    """The tracking sidecar of a TrainingRun pod (configured by the operator through CAIRN_* env)."""
    from cairn.agent.sidecar import SidecarConfig, run_sidecar

    logging.getLogger("cairn").setLevel(logging.INFO)
    try:
        cfg = SidecarConfig.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(0 if run_sidecar(cfg) else 3)


@cli.command()
def prepare() -> None:
    """The prepare step of a TrainingRun pod: dataset digest check, checkpoint restore on a retry."""
    from cairn.agent.prepare import PrepareConfig, run_prepare
    from cairn.objectstore import ObjectStoreError, S3Config

    logging.getLogger("cairn").setLevel(logging.INFO)
    try:
        cfg = PrepareConfig.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        s3 = S3Config.from_env()
    except ObjectStoreError as exc:
        logging.getLogger("cairn.prepare").error("object store settings: %s", exc)
        s3 = None
    sys.exit(run_prepare(cfg, s3))


@cli.command("run", context_settings={"ignore_unknown_options": True})
@click.option("-e", "--experiment", default="default", show_default=True)
@click.option("-n", "--name", help="Display name of the run.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter for the run (repeatable); typed as JSON when it parses, else a string.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, experiment: str, name: str | None, params: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run COMMAND as a tracked run: cairn run -p lr=0.1 -- python train.py"""
    from cairn.cli.local import run_locally

    try:
        parsed = parse_params(params)
    except BadParam as exc:
        raise click.BadParameter(str(exc), param_hint="-p/--param") from None
    store = _store(ctx)
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


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.pass_context
def sync(ctx: click.Context, run_dir: str) -> None:
    """Ingest a run recorded offline (the SDK without an agent) into the store."""
    ctx.invoke(agent, run_dir=run_dir, run_id=None, metrics_files=(), once=True, exit_on_finish=False,
               drain_timeout=60.0, poll_interval=0.5, batch_bytes=8 << 20)


def main() -> None:
    cli(prog_name="cairn")


if __name__ == "__main__":
    main()
