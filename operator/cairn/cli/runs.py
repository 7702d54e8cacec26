"""``cairn runs``: list, inspect, compare and export runs, and fetch their artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click
from rich.table import Table

from cairn.cli.context import RUN_REF_HELP, resolve_run, store_of
from cairn.cli.output import (
    CSV,
    JSON,
    TABLE,
    YAML,
    console,
    err_console,
    fmt_bytes,
    fmt_duration,
    fmt_status,
    fmt_time,
    fmt_value,
    output_option,
    plain,
    write_document,
    write_rows,
)
from cairn.agent.precedence import CODE_PREFIX, is_reserved_tag
from cairn.api import GROUP, KIND, VERSION
from cairn.api.types import MAX_NAME_LENGTH, SPEC_TAG
from cairn.cli.params import lower_is_better
from cairn.rundir import Env, UnsafePath, safe_relative_path
from cairn.store.entities import ArtifactInfo, RunDetail, RunSummary


@click.group()
def runs() -> None:
    """List, inspect, compare and export runs."""


# -- list ---------------------------------------------------------------------------------------
RUN_COLUMNS = ["id", "experiment", "namespace", "name", "status", "start_time", "end_time", "duration_s", "exit_code"]


def summary_to_dict(s: RunSummary) -> dict[str, Any]:
    return {
        "id": s.id, "experiment": s.experiment, "namespace": s.namespace, "name": s.name, "status": s.status,
        "start_time": s.start_time, "end_time": s.end_time, "duration_s": s.duration_s, "exit_code": s.exit_code,
        "metrics": {k: {"step": v.step, "value": v.value, "min": v.min_value, "max": v.max_value, "count": v.count}
                    for k, v in s.metrics.items()},
    }


def run_rows(summaries: list[RunSummary]) -> tuple[list[dict[str, Any]], list[str]]:
    """One flat row per run, with the latest value of each metric as a column (renamed if it clashes)."""
    keys = sorted({k for s in summaries for k in s.metrics})
    metric_columns = {k: f"metric:{k}" if k in RUN_COLUMNS else k for k in keys}
    rows = []
    for s in summaries:
        row = summary_to_dict(s)
        row.pop("metrics")
        row.update({metric_columns[k]: v.value for k, v in s.metrics.items()})
        rows.append(row)
    return rows, RUN_COLUMNS + list(metric_columns.values())


@runs.command("list")
@click.option("-e", "--experiment", help="Only runs of this experiment.")
@click.option("-n", "--namespace", help="Only runs of TrainingRuns in this Kubernetes namespace.")
@click.option("-s", "--status", type=click.Choice(["RUNNING", "FINISHED", "FAILED", "KILLED", "PENDING"],
                                                  case_sensitive=False))
@click.option("--sort", "sort_metric", metavar="METRIC", help="Sort by the latest value of a metric (best first).")
@click.option("--asc/--desc", "ascending", default=None,
              help="Sort direction (default: by the metric's name, loss ascending).")
@click.option("--limit", default=50, show_default=True, help="At most this many runs.")
@output_option(TABLE, JSON, YAML, CSV)
@click.pass_context
def runs_list(ctx: click.Context, experiment: str | None, namespace: str | None, status: str | None,
              sort_metric: str | None, ascending: bool | None, limit: int, output: str) -> None:
    """List runs, newest first or best first by a metric."""
    if sort_metric and ascending is None:
        ascending = lower_is_better(sort_metric)
    found = store_of(ctx).list_runs(experiment, status, sort_metric, bool(ascending), limit, namespace=namespace)
    if output == CSV:
        write_rows(*run_rows(found))
    elif output != TABLE:
        write_document([summary_to_dict(s) for s in found], output)
    else:
        console.print(runs_table(found, sort_metric))


def runs_table(found: list[RunSummary], sort_metric: str | None) -> Table:
    keys = _headline_keys(found, sort_metric)
    with_namespace = any(r.namespace for r in found)
    table = Table(title=f"{len(found)} run(s)")
    for col in ("id", "experiment", *(("namespace",) if with_namespace else ()), "name", "status", "started",
                "duration"):
        table.add_column(col)
    for k in keys:
        table.add_column(k, justify="right")
    for r in found:
        table.add_row(r.id[:8], r.experiment, *((r.namespace or "",) if with_namespace else ()), r.name or "",
                      fmt_status(r.status), fmt_time(r.start_time), fmt_duration(r.duration_s),
                      *[fmt_value(r.metrics[k].value) if k in r.metrics else "-" for k in keys])
    return table


def _headline_keys(rows: list[RunSummary], first: str | None, limit: int = 4) -> list[str]:
    keys = [first] if first else []
    for r in rows:
        for k in sorted(r.metrics):
            if k not in keys and len(keys) < limit:
                keys.append(k)
    return keys


# -- show ---------------------------------------------------------------------------------------
@runs.command("show", epilog=RUN_REF_HELP)
@click.argument("run")
@click.option("--packages", is_flag=True, help="List every installed package of the run's environment.")
@output_option(TABLE, JSON, YAML)
@click.pass_context
def runs_show(ctx: click.Context, run: str, packages: bool, output: str) -> None:
    """Everything recorded about one run."""
    store = store_of(ctx)
    detail = store.get_run(resolve_run(store, run))
    if output == TABLE:
        print_run(detail, packages)
    else:
        write_document(detail_to_dict(detail), output)


def detail_to_dict(d: RunDetail) -> dict[str, Any]:
    s = d.summary
    return {
        "id": s.id, "name": s.name, "experiment": s.experiment, "status": s.status,
        "start_time": s.start_time, "end_time": s.end_time, "duration_s": s.duration_s, "exit_code": s.exit_code,
        "params": d.params, "tags": d.tags, "environment": d.environment, "code": d.code,
        "metrics": summary_to_dict(s)["metrics"],
        "artifacts": d.artifacts, "datasets": d.datasets, "cluster": d.cluster.recorded(),
        "ingest": d.ingest, "uploads": d.uploads, "resumes": d.resumes, "code_overrides": code_overrides(d),
    }


def code_overrides(d: RunDetail) -> dict[str, dict[str, Any]]:
    """What the code logged for parameters of the manifest and tags the operator records: the recorded
    values are kept and the code's stored beside them as ``code.<key>``."""
    def overridden(values: dict[str, Any], recorded: Callable[[str], bool]) -> dict[str, Any]:
        return {k[len(CODE_PREFIX):]: v for k, v in sorted(values.items())
                if k.startswith(CODE_PREFIX) and recorded(k[len(CODE_PREFIX):])}

    return {"params": overridden(d.params, lambda key: key in d.params), "tags": overridden(d.tags, is_reserved_tag)}


def print_run(d: RunDetail, packages: bool = False) -> None:
    s = d.summary
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for label, value in (
        ("run", s.id), ("name", s.name or "-"), ("experiment", s.experiment), ("status", fmt_status(s.status)),
        ("started", fmt_time(s.start_time)), ("duration", fmt_duration(s.duration_s)),
        ("exit code", "-" if s.exit_code is None else str(s.exit_code)),
    ):
        head.add_row(label, value)
    if d.code:
        head.add_row("code", f"{d.code.repository or '?'} @ {d.code.commit}" + (" (dirty)" if d.code.dirty else ""))
    env = d.environment
    if env:
        gpu = f"{env.gpu_count or 0} x {env.gpu_model}" if env.gpu_model else "none"
        head.add_row("environment", f"python {env.python_version} on {env.hostname}, GPU: {gpu}"
                     + (f", CUDA {env.cuda_version}" if env.cuda_version else "")
                     + f", {len(env.packages)} packages")
    for k, v in d.cluster.recorded().items():
        head.add_row(k.replace("_", " "), str(v))
    for ds in d.datasets:
        head.add_row("dataset", f"{ds.uri} sha256:{ds.digest}")
    if d.uploads.complete is not None:
        head.add_row("uploads", "all in the object store" if d.uploads.complete
                     else f"{d.uploads.pending} file(s) not uploaded")
    for r in d.resumes:
        head.add_row("resumed", f"attempt {r.attempt} from checkpoint step {r.step}")
    rejected = d.ingest.rejected
    head.add_row("ingested", f"{d.ingest.points} points"
                 + (f", rejected lines/values: {rejected}" if rejected else ""))
    overrides = code_overrides(d)
    for k, v in overrides["tags"].items():
        head.add_row("reserved tag", f"{k}={d.tags.get(k, '-')} (the code logged {v!r}, kept as {CODE_PREFIX}{k})")
    console.print(head)
    if d.params:
        t = Table(title="params")
        t.add_column("key")
        t.add_column("value")
        if overrides["params"]:
            t.add_column("the code logged (not used)")
        shown_beside = {CODE_PREFIX + k for k in overrides["params"]}
        for k, v in sorted(d.params.items()):
            if k in shown_beside:
                continue
            beside = [json.dumps(overrides["params"][k]) if k in overrides["params"] else ""]
            t.add_row(k, json.dumps(v), *(beside if overrides["params"] else []))
        console.print(t)
    if s.metrics:
        t = Table(title="metrics")
        for col in ("key", "step", "last", "min", "max", "points"):
            t.add_column(col, justify="left" if col == "key" else "right")
        for k, v in sorted(s.metrics.items()):
            t.add_row(k, str(v.step), fmt_value(v.value), fmt_value(v.min_value), fmt_value(v.max_value),
                      str(v.count))
        console.print(t)
    if d.artifacts:
        t = Table(title="artifacts")
        for col in ("path", "size", "sha256", "uri"):
            t.add_column(col)
        for a in d.artifacts:
            t.add_row(a.path, str(a.size), a.sha256[:16], a.uri)
        console.print(t)
    if packages and env and env.packages:
        console.print("packages: " + ", ".join(f"{k}=={v}" for k, v in env.packages.items()))


# -- compare ------------------------------------------------------------------------------------
def compare_runs(details: list[RunDetail], all_params: bool) -> dict[str, Any]:
    """Params (those that differ, or all) and per metric the final and best values and the best run."""
    ids = [d.summary.id for d in details]
    params = {}
    for k in sorted(set().union(*(d.params for d in details))):
        values = [d.params.get(k) for d in details]
        differs = any(v != values[0] for v in values) or not all(k in d.params for d in details)
        if differs or all_params:
            params[k] = {"values": values, "differs": differs}
    metrics = {}
    for k in sorted(set().union(*(d.summary.metrics for d in details))):
        minimise = lower_is_better(k)
        latest = [d.summary.metrics.get(k) for d in details]
        best = [None if v is None else (v.min_value if minimise else v.max_value) for v in latest]
        ranked = [(b, rid) for b, rid in zip(best, ids) if b is not None]
        best_value = (min if minimise else max)(b for b, _ in ranked) if ranked else None
        leaders = [rid for b, rid in ranked if b == best_value]
        metrics[k] = {"lower_is_better": minimise, "final": [None if v is None else v.value for v in latest],
                      "best": best, "best_run": leaders[0] if len(leaders) == 1 else ("tie" if leaders else None)}
    return {"runs": ids, "params": params, "metrics": metrics}


REPRODUCES_ANNOTATION = "cairn.dev/reproduces"
REPRODUCTION_SUFFIX = "-repro"


def pinned_image(image: str, digest: str) -> str:
    """``image`` pinned to ``digest``: its repository (tag and any digest dropped) @ the digest."""
    repository = image.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    return f"{repository}@{digest}"


def reproduction(d: RunDetail, name: str | None = None, by_image_id: bool = False) -> dict[str, Any]:
    """A TrainingRun that trains again what run ``d`` trained: its recorded spec, pinned to the image digest
    (``REPOSITORY@DIGEST``, or the bare digest ``by_image_id``), code commit and dataset digest the run had,
    with the run's params. A ValueError says what the record lacks to pin it."""
    s, cluster = d.summary, d.cluster
    recorded = d.tags.get(SPEC_TAG)
    if not recorded or not cluster.namespace:
        raise ValueError(f"run {s.id} was not recorded from a TrainingRun with its spec: nothing to reproduce from")
    if not cluster.image_digest or not cluster.image:
        raise ValueError(f"run {s.id} has no recorded image digest (its pod never started): it cannot be pinned")
    spec = json.loads(recorded)
    spec["image"] = cluster.image_digest if by_image_id else pinned_image(cluster.image, cluster.image_digest)
    if d.code is not None:
        spec["code"] = {k: v for k, v in (("repository", d.code.repository), ("commit", d.code.commit)) if v}
    if d.datasets:
        dataset = d.datasets[0]
        digest = dataset.digest or dataset.pinned_digest
        if not digest:
            raise ValueError(f"run {s.id} read {dataset.uri} without a recorded digest: it cannot be pinned")
        spec["dataset"] = {**spec.get("dataset", {}), "uri": dataset.uri, "sha256": digest}
    spec["params"] = {k: v for k, v in sorted(d.params.items()) if not k.startswith(CODE_PREFIX)}
    base = (s.name or s.id[:8])[: MAX_NAME_LENGTH - len(REPRODUCTION_SUFFIX)]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": name or base + REPRODUCTION_SUFFIX, "namespace": cluster.namespace,
                     "annotations": {REPRODUCES_ANNOTATION: s.id}},
        "spec": spec,
    }


@runs.command("reproduce", epilog=RUN_REF_HELP)
@click.argument("run")
@click.option("--name", help=f"Name of the new TrainingRun (default: the run's name + {REPRODUCTION_SUFFIX}).")
@click.option("--by-image-id", is_flag=True,
              help="Name the image by its recorded digest alone (sha256:...), not REPOSITORY@DIGEST: for an image "
                   "loaded onto the nodes without a registry, whose recorded digest is its image ID.")
@output_option(YAML, JSON, default=YAML)
@click.pass_context
def runs_reproduce(ctx: click.Context, run: str, name: str | None, by_image_id: bool, output: str) -> None:
    """Write a TrainingRun that trains RUN again, pinned to the image digest, code commit, dataset digest and
    params it had (its env is not recorded: add what the trainer needs). Apply it with kubectl apply -f -."""
    store = store_of(ctx)
    try:
        manifest = reproduction(store.get_run(resolve_run(store, run)), name, by_image_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    write_document(manifest, output)


@runs.command("compare", epilog=RUN_REF_HELP)
@click.argument("runs_", metavar="RUN RUN...", nargs=-1, required=True)
@click.option("--all-params", is_flag=True, help="Show parameters that are equal in every run too.")
@output_option(TABLE, JSON, YAML)
@click.pass_context
def runs_compare(ctx: click.Context, runs_: tuple[str, ...], all_params: bool, output: str) -> None:
    """Parameters that differ and final/best metrics, side by side."""
    if len(runs_) < 2:
        raise click.UsageError("compare needs at least two runs")
    store = store_of(ctx)
    details = [store.get_run(resolve_run(store, r)) for r in runs_]
    compared = compare_runs(details, all_params)
    if output != TABLE:
        write_document(compared, output)
        return
    short = [rid[:8] for rid in compared["runs"]]
    params = Table(title="params" if all_params else "params that differ")
    params.add_column("param")
    for i in short:
        params.add_column(i)
    for k, p in compared["params"].items():
        params.add_row(k, *[json.dumps(v) if k in d.params else "-" for v, d in zip(p["values"], details)],
                       style="bold" if p["differs"] else None)
    console.print(params)
    metrics = Table(title="metrics: final (best)")
    metrics.add_column("metric")
    for i in short:
        metrics.add_column(i, justify="right")
    metrics.add_column("best run")
    for k, m in compared["metrics"].items():
        cells = ["-" if f is None and b is None else f"{fmt_value(f)} ({fmt_value(b)})"
                 for f, b in zip(m["final"], m["best"])]
        winner = m["best_run"][:8] if m["best_run"] not in (None, "tie") else (m["best_run"] or "-")
        metrics.add_row(k + (" ↓" if m["lower_is_better"] else " ↑"), *cells, winner)
    console.print(metrics)


# -- series -------------------------------------------------------------------------------------
@runs.command("export", epilog=RUN_REF_HELP)
@click.argument("run")
@output_option(CSV, JSON, YAML, default=CSV)
@click.option("--file", "out", type=click.File("w"), default="-", help="File to write (default: stdout).")
@click.option("-k", "--key", "keys", multiple=True, help="Only these metrics (repeatable).")
@click.pass_context
def runs_export(ctx: click.Context, run: str, output: str, out, keys: tuple[str, ...]) -> None:  # noqa: ANN001
    """Every metric point of a run (CSV: key,step,timestamp_ms,value; JSON/YAML: the run record and series)."""
    store = store_of(ctx)
    rid = resolve_run(store, run)
    keys = keys or tuple(store.metric_keys(rid))
    if output == CSV:
        write_rows(({"key": p.key, "step": p.step, "timestamp_ms": p.timestamp_ms, "value": p.value}
                    for k in keys for p in store.metric_history(rid, k)),
                   ["key", "step", "timestamp_ms", "value"], out)
        return
    doc = detail_to_dict(store.get_run(rid))
    doc["history"] = {k: [[p.step, p.timestamp_ms, p.value] for p in store.metric_history(rid, k)] for k in keys}
    write_document(doc, output, out)


@runs.command("history", epilog=RUN_REF_HELP)
@click.argument("run")
@click.argument("key")
@click.option("--points", default=1000, show_default=True, help="At most this many buckets.")
@output_option(CSV, TABLE, JSON, YAML, default=CSV)
@click.pass_context
def runs_history(ctx: click.Context, run: str, key: str, points: int, output: str) -> None:
    """A downsampled series: per bucket of steps, the last value with the min and max."""
    store = store_of(ctx)
    rows = [{"step": b.step, "last": b.value, "min": b.min_value, "max": b.max_value, "points": b.count}
            for b in store.downsampled_history(resolve_run(store, run), key, points)]
    columns = ["step", "last", "min", "max", "points"]
    if output == CSV:
        write_rows(rows, columns)
    elif output != TABLE:
        write_document(rows, output)
    else:
        table = Table(title=f"{key}: {len(rows)} bucket(s)")
        for col in columns:
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(str(r["step"]), fmt_value(r["last"]), fmt_value(r["min"]), fmt_value(r["max"]),
                          str(r["points"]))
        console.print(table)


# -- artifacts ----------------------------------------------------------------------------------
ARTIFACT_COLUMNS = ["path", "kind", "step", "attempt", "size", "sha256", "uri", "uploaded_at"]


@runs.command("artifacts", epilog=RUN_REF_HELP)
@click.argument("run")
@output_option(TABLE, JSON, YAML, CSV)
@click.pass_context
def runs_artifacts(ctx: click.Context, run: str, output: str) -> None:
    """List a run's artifacts and checkpoints: where they are, their size and sha256."""
    store = store_of(ctx)
    rid = resolve_run(store, run)
    detail = store.get_run(rid)
    arts = detail.artifacts
    if output == CSV:
        write_rows((plain(a) for a in arts), ARTIFACT_COLUMNS)
        return
    if output != TABLE:
        write_document({"run": rid, "uploads": detail.uploads, "resumes": detail.resumes, "artifacts": arts}, output)
        return
    table = Table(title=f"{len(arts)} artifact(s) of run {rid[:8]}")
    for col in ARTIFACT_COLUMNS[:-1]:
        table.add_column(col, justify="right" if col in ("step", "attempt", "size") else "left", overflow="fold")
    for a in arts:
        table.add_row(a.path, a.kind, "-" if a.step is None else str(a.step),
                      "-" if a.attempt is None else str(a.attempt), fmt_bytes(a.size), a.sha256[:16], a.uri)
    console.print(table)
    uploads = detail.uploads
    if uploads.complete is True:
        console.print("[green]every file of the run reached the object store[/]")
    elif uploads.complete is False:
        console.print(f"[red]{uploads.pending} file(s) could not be uploaded before the pod ended[/]")
    for r in detail.resumes:
        console.print(f"attempt {r.attempt} resumed from checkpoint step {r.step}"
                      + (f" (saved by attempt {r.from_attempt})" if r.from_attempt else ""))


def select_artifacts(arts: list[ArtifactInfo], path: str | None) -> list[ArtifactInfo]:
    """Artifacts named by PATH: the path itself, a directory of them, or a path below artifacts/."""
    if not path:
        return list(arts)
    path = path.strip("/")
    for candidate in (path, f"artifacts/{path}"):
        chosen = [a for a in arts if a.path == candidate or a.path.startswith(candidate + "/")]
        if chosen:
            return chosen
    return []


@runs.command("download", epilog=RUN_REF_HELP)
@click.argument("run")
@click.argument("path", required=False)
@click.option("-d", "--dest", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to write into; files keep their path in the run "
                   "(artifacts/..., checkpoints/<step>/...).")
@click.pass_context
def runs_download(ctx: click.Context, run: str, path: str | None, dest: str) -> None:
    """Fetch a run's artifacts (all, or those under PATH) and verify each one's sha256.

    The object store comes from CAIRN_S3_ENDPOINT, CAIRN_S3_ACCESS_KEY and CAIRN_S3_SECRET_KEY
    (or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); with --server the files come
    through the server instead.
    """
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from cairn import objectstore as S3

    store = store_of(ctx)
    rid = resolve_run(store, run)
    arts = select_artifacts(store.list_artifacts(rid), path)
    if not arts:
        raise click.ClickException(f"run {rid[:8]} has no artifact {path!r}" if path
                                   else f"run {rid[:8]} has no artifacts")
    from cairn.client import RemoteStore

    client = None
    through_server = isinstance(store, RemoteStore)  # the server holds the object store's credentials
    if not through_server and any(a.uri.startswith("s3://") for a in arts):
        try:
            cfg = S3.S3Settings().connection()
        except S3.ObjectStoreError as exc:
            raise click.ClickException(str(exc)) from None
        if cfg is None:
            raise click.ClickException(f"the artifacts are in the object store: set {Env.S3_ENDPOINT}, "
                                       f"{Env.S3_ACCESS_KEY} and {Env.S3_SECRET_KEY}")
        client = cfg.client()
    out = Path(dest)
    bad = []
    targets = []
    for a in arts:
        try:
            targets.append((a, destination_inside(out, a.path)))
        except UnsafePath as exc:
            bad.append(f"refused to write artifact {a.path[:200]!r}: {exc}")
    arts = [a for a, _ in targets]
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(f"{len(arts)} file(s)", total=sum(a.size for a in arts))
        advance = lambda n: progress.advance(task, n)  # noqa: E731
        for a, target in targets:
            progress.update(task, description=a.path)
            try:
                if through_server:
                    store.download_artifact(rid, a, target, advance)
                elif a.uri.startswith("s3://"):
                    bucket, key = S3.parse_s3_uri(a.uri)
                    S3.download_file(client, bucket, key, target, a.sha256, progress=advance)
                else:
                    _copy_local(a.uri, target, a.sha256, advance)
            except S3.ChecksumMismatch as exc:
                bad.append(str(exc))
            except Exception as exc:  # noqa: BLE001
                bad.append(f"{a.path}: {type(exc).__name__}: {exc}")
        progress.update(task, description="done")
    if bad:
        for line in bad:
            err_console.print(f"[red]error:[/red] {line}", highlight=False)
        sys.exit(1)
    click.echo(f"downloaded {len(arts)} file(s), {fmt_bytes(sum(a.size for a in arts))}, sha256 verified, "
               f"into {out}", err=True)


def destination_inside(out: Path, path: str) -> Path:
    """Where artifact ``path`` goes under ``out``: refused (``UnsafePath``) unless it is a safe relative
    path that still resolves inside ``out`` (a symbolic link already in ``out`` cannot lead elsewhere)."""
    target = out / safe_relative_path(path)
    root = out.resolve()
    if root not in target.resolve().parents:
        raise UnsafePath(f"{path[:200]!r} would be written outside {out}")
    return target


def _copy_local(uri: str, dest: Path, expected: str, advance: Callable[[int], None]) -> None:
    """A local (file://) artifact, copied with the same verification as a download."""
    from cairn.objectstore import CHUNK, ChecksumMismatch

    src = Path(unquote(urlsplit(uri).path))
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


PROMETHEUS_TIMEOUT_S = 10
PROMETHEUS_MAX_BYTES = 16 << 20


def _object_store(required: bool):  # noqa: ANN202 - an S3Config or None
    from cairn import objectstore as S3

    try:
        cfg = S3.S3Settings().connection()
    except S3.ObjectStoreError as exc:
        raise click.ClickException(str(exc)) from None
    if cfg is None and required:
        raise click.ClickException(f"the run has objects in the object store: set {Env.S3_ENDPOINT}, "
                                   f"{Env.S3_ACCESS_KEY} and {Env.S3_SECRET_KEY}")
    return cfg


def run_objects(cfg, detail: RunDetail) -> list[tuple[str, str, int]]:  # noqa: ANN001
    """(bucket, key, size) of the run's objects: everything under its prefix, and any recorded
    artifact elsewhere that still exists."""
    from minio.error import S3Error

    from cairn import objectstore as S3

    client, s = cfg.client(), detail.summary
    prefix = S3.run_prefix(s.namespace or "", s.experiment, s.id)
    found = {}
    if cfg.bucket:
        found = {(cfg.bucket, key): size for key, size in S3.objects_under(client, cfg.bucket, prefix)}
    for art in detail.artifacts:
        if art.uri.startswith("s3://") and S3.parse_s3_uri(art.uri) not in found:
            bucket, key = S3.parse_s3_uri(art.uri)
            try:
                found[(bucket, key)] = client.stat_object(bucket, key).size
            except S3Error as exc:
                if exc.code != "NoSuchKey":
                    raise
    return sorted((bucket, key, size) for (bucket, key), size in found.items())


def prometheus_series(url: str, run_id: str) -> list[str]:
    """Names of the live series Prometheus holds for the run (label ``run``)."""
    from urllib.parse import urlencode
    from urllib.request import urlopen

    query = urlencode({"match[]": f'{{run="{run_id}"}}'})
    try:
        with urlopen(f"{url.rstrip('/')}/api/v1/series?{query}", timeout=PROMETHEUS_TIMEOUT_S) as resp:
            body = json.loads(resp.read(PROMETHEUS_MAX_BYTES))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"Prometheus at {url}: {exc}") from None
    return sorted({series["__name__"] for series in body.get("data") or []})


def where_document(store, rid: str, prometheus: str | None) -> dict[str, Any]:  # noqa: ANN001
    from cairn.store import db
    from cairn.store.erasure import run_row_counts

    detail = store.get_run(rid)
    tables = run_row_counts(store, rid)
    uses_s3 = any(a.uri.startswith("s3://") for a in detail.artifacts)
    cfg = _object_store(required=uses_s3)
    objects = run_objects(cfg, detail) if cfg is not None else []
    doc: dict[str, Any] = {
        "run": rid, "namespace": detail.summary.namespace, "experiment": detail.summary.experiment,
        "database": {"url": db.redact(store.url), "tables": tables},
        "objects": [{"uri": f"s3://{b}/{k}", "size": size} for b, k, size in objects],
        "object_bytes": sum(size for _, _, size in objects),
    }
    if prometheus:
        doc["prometheus"] = {"url": prometheus, "series": prometheus_series(prometheus, rid)}
    return doc


def print_where(doc: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    for col in ("where", "what", "amount"):
        table.add_column(col)
    for name, n in doc["database"]["tables"].items():
        table.add_row(doc["database"]["url"], f"table {name}", f"{n} row(s)")
    for obj in doc["objects"]:
        table.add_row("object store", obj["uri"], fmt_bytes(obj["size"]))
    for series in (doc.get("prometheus") or {}).get("series", []):
        table.add_row(doc["prometheus"]["url"], f"series {series}", "live")
    console.print(table)


@runs.command("where", epilog=RUN_REF_HELP)
@click.argument("run")
@click.option("--prometheus", metavar="URL", help="Also list the run's live series in this Prometheus.")
@output_option(TABLE, JSON, YAML)
@click.pass_context
def runs_where(ctx: click.Context, run: str, prometheus: str | None, output: str) -> None:
    """Every place the run's data lives: database tables and their rows, objects and their sizes, and
    (with --prometheus) live series. The object store comes from the CAIRN_S3_* variables."""
    store = store_of(ctx)
    doc = where_document(store, resolve_run(store, run), prometheus)
    if output != TABLE:
        write_document(doc, output)
        return
    print_where(doc, f"run {doc['run']}")


@runs.command("delete", epilog=RUN_REF_HELP)
@click.argument("run")
@click.option("--yes", is_flag=True, help="Really delete: without it nothing is removed.")
@output_option(TABLE, JSON, YAML)
@click.pass_context
def runs_delete(ctx: click.Context, run: str, yes: bool, output: str) -> None:
    """Erase a run: its objects, then every row of it; reports what was removed. Prometheus series are
    not removed (they age out with Prometheus's retention)."""
    from cairn import objectstore as S3
    from cairn.store.erasure import delete_run_rows

    store = store_of(ctx)
    rid = resolve_run(store, run)
    found = where_document(store, rid, None)
    if not yes:
        print_where(found, f"run {rid} (nothing deleted)")
        raise click.ClickException("this deletes the run's rows and objects for good: add --yes")
    by_bucket: dict[str, list[str]] = {}
    for obj in found["objects"]:
        bucket, key = S3.parse_s3_uri(obj["uri"])
        by_bucket.setdefault(bucket, []).append(key)
    cfg = _object_store(required=bool(by_bucket))
    failed = [msg for bucket, keys in by_bucket.items() for msg in S3.remove_objects(cfg.client(), bucket, keys)]
    if failed:  # the rows stay, so `runs where` still finds what is left
        raise click.ClickException(f"{len(failed)} object(s) not deleted, rows kept: " + "; ".join(failed[:5]))
    removed = {"run": rid, "database": {"url": found["database"]["url"], "tables": delete_run_rows(store, rid)},
               "objects": found["objects"], "object_bytes": found["object_bytes"]}
    if output != TABLE:
        write_document(removed, output)
        return
    print_where(removed, f"run {rid}: removed")
