"""The ``cairn server`` application: the read API of ``docs/server.md`` over ``TrackingStore``.

Every ``/api/v1`` route but ``healthz`` first establishes who calls (401 when nobody can be told) and
then whether they may read the namespace (403 naming it); only then is the store asked, so a reply never
tells whether a run exists in a namespace the caller cannot read. Routes are plain functions: FastAPI runs
them in its thread pool, where the store's and the review calls' blocking I/O belongs.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlsplit

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from cairn.objectstore import parse_s3_uri
from cairn.server.access import Access, AccessUnavailable, Identity, Unauthenticated
from cairn.server.query import QueryError, parse_filter, parse_order
from cairn.server.settings import AuthMode, ServerSettings
from cairn.server.tenants import ObjectStoreUnset, Stores, TenantUnavailable
from cairn.store import RunNotFound, TrackingStore
from cairn.store.entities import LatestValue, RunDetail
from cairn.store.registry import ModelNotFound
from cairn.store.search import MAX_COMPARED_RUNS, RunRow, SearchError

UI_DIST = Path(__file__).parent / "ui" / "dist"
STREAM_CHUNK_POINTS = 10_000
DOWNLOAD_CHUNK = 1 << 20
MAX_RESOLVED_IDS = 100  # a NAMESPACE/NAME reused more often than this is listed in part
RUN_ID_PREFIX = re.compile(r"[0-9a-f-]{4,36}")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- JSON shapes ---------------------------------------------------------------------------------
def iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:  # SQLite hands back naive times, stored in UTC
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: they read as null."""
    return value if value is not None and math.isfinite(value) else None


def entity_json(value: Any) -> Any:  # noqa: ANN401 - any store entity
    """A store entity (dataclasses, lists, dicts, times, numbers) as JSON data, field by field."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: entity_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): entity_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [entity_json(v) for v in value]
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, float):
        return finite(value)
    return value


def metric_json(m: LatestValue) -> dict[str, Any]:
    return {"value": finite(m.value), "step": m.step, "min": finite(m.min_value), "max": finite(m.max_value),
            "count": m.count}


def run_row_json(row: RunRow) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "namespace": row.namespace, "experiment": row.experiment,
            "status": row.status.value, "start_time": iso(row.start_time), "end_time": iso(row.end_time),
            "exit_code": row.exit_code,
            "params": row.params, "metrics": {k: metric_json(m) for k, m in row.metrics.items()}, "tags": row.tags}


def run_detail_json(row: RunRow, detail: RunDetail, metric_keys: list[str]) -> dict[str, Any]:
    env, code, cluster, summary = detail.environment, detail.code, detail.cluster, detail.summary
    return {
        **run_row_json(row),
        "environment": None if env is None else {
            "python_version": env.python_version, "platform": env.platform, "hostname": env.hostname,
            "cuda_version": env.cuda_version, "driver_version": env.driver_version, "gpu_model": env.gpu_model,
            "gpu_count": env.gpu_count, "packages": env.packages},
        "code": None if code is None else {"repository": code.repository, "commit": code.commit,
                                           "dirty": code.dirty, "branch": code.branch},
        "image": {"ref": cluster.image, "digest": cluster.image_digest},
        "datasets": [{"uri": d.uri, "digest": d.digest, "pinned_digest": d.pinned_digest,
                      "object_count": d.object_count, "total_bytes": d.total_bytes} for d in detail.datasets],
        "hardware": {"node": cluster.node_name, "gpu_product": cluster.gpu_product, "resources": cluster.resources},
        "attempts": cluster.attempts,
        "reason": cluster.reason,
        "resumes": [{"attempt": r.attempt, "step": r.step, "from_attempt": r.from_attempt, "uri": r.uri}
                    for r in detail.resumes],
        "metric_keys": metric_keys,
        "exit_code": summary.exit_code,
        "duration_seconds": summary.duration_s,
        "ingest": {"points": detail.ingest.points, "rejected": detail.ingest.rejected,
                   "sources": {name: {"offset": p.offset, "lines": p.lines, "points": p.points}
                               for name, p in detail.ingest.sources.items()}},
        # "params" above is the text a person reads; these keep each value's JSON type
        "param_values": entity_json(detail.params),
        "cluster": entity_json(cluster),
        "artifacts": entity_json(detail.artifacts),
        "uploads": entity_json(detail.uploads),
    }


def token_for_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def offset_of(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["offset"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise ApiError(400, "page_token is not one this server gave out") from None
    if not isinstance(offset, int) or offset < 0:
        raise ApiError(400, "page_token is not one this server gave out")
    return offset


def caller(request: Request) -> Identity:
    """Who sends the request, as the app's ``Access`` tells; 401 when it cannot tell."""
    try:
        return request.app.state.access.identify(request.headers)
    except Unauthenticated as exc:
        raise ApiError(401, str(exc)) from None
    except AccessUnavailable as exc:
        raise ApiError(503, str(exc)) from None


Caller = Annotated[Identity, Depends(caller)]


# -- the application -----------------------------------------------------------------------------
def create_app(settings: ServerSettings, stores: Stores, access: Access) -> FastAPI:
    """The API (and the web UI when its assets are built); ``stores`` gives the store and the object store
    to read a namespace from (``server.tenants``), ``access`` decides who may read it."""
    app = FastAPI(title="Cairn", version="1", docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    app.state.access = access

    @app.exception_handler(ApiError)
    def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(TenantUnavailable)
    def tenant_unavailable(request: Request, exc: TenantUnavailable) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=400)

    def check(identity: Identity, namespace: str, verb: str) -> TrackingStore:
        try:
            allowed = access.allowed(identity, namespace, verb)
        except AccessUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        if not allowed:
            raise ApiError(403, f"{identity.user} may not {verb} trainingruns in namespace {namespace}")
        return stores.store(namespace)

    def run_of(store: TrackingStore, namespace: str, run_id: str) -> RunRow:
        rows = store.run_rows([run_id], namespace)
        if not rows:
            raise ApiError(404, f"no run {run_id} in namespace {namespace}")
        return rows[0]

    @app.get("/api/v1/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/whoami")
    def whoami(identity: Caller) -> dict[str, Any]:
        return {"user": identity.user, "groups": list(identity.groups), "auth": access.mode.value}

    @app.get("/api/v1/namespaces/{ns}/experiments")
    def experiments(ns: str, identity: Caller) -> dict[str, Any]:
        store = check(identity, ns, "list")
        return {"experiments": [{"name": name, "namespace": exp_ns, "runs": n, "last_start_time": iso(last)}
                                for name, exp_ns, n, last in store.namespace_experiments(ns)]}

    @app.get("/api/v1/namespaces/{ns}/runs")
    def runs(ns: str, identity: Caller, experiment: str | None = None, status: str | None = None,
             filter: Annotated[list[str], Query()] = [],  # noqa: A002, B006 - the query parameter's name
             order_by: Annotated[list[str], Query()] = [],  # noqa: B006
             page_size: Annotated[int, Query(ge=1, le=1000)] = 100, page_token: str | None = None) -> dict[str, Any]:
        store = check(identity, ns, "list")
        try:
            filters = [parse_filter(text) for text in filter]
            if experiment:
                filters.append(parse_filter(f"experiment = {experiment}"))
            if status:
                filters.append(parse_filter(f"status = {status}"))
            orders = [parse_order(text) for text in order_by]
            page = store.search_runs(ns, filters, orders, limit=page_size, offset=offset_of(page_token))
        except (QueryError, SearchError) as exc:
            raise ApiError(400, str(exc)) from None
        return {"runs": [run_row_json(r) for r in page.runs], "total": page.total,
                "next_page_token": None if page.next_offset is None else token_for_offset(page.next_offset)}

    @app.get("/api/v1/namespaces/{ns}/runs:resolve")
    def resolve(ns: str, identity: Caller, prefix: str | None = None, name: str | None = None) -> dict[str, Any]:
        """Ids of the namespace's runs whose id starts with ``prefix`` (sorted), or of its TrainingRun ``name``
        (newest first); the caller decides what none or several mean."""
        store = check(identity, ns, "list")
        if (prefix is None) == (name is None):
            raise ApiError(400, "give prefix (a run id or its first characters) or name (a TrainingRun's)")
        if prefix is not None:
            if not RUN_ID_PREFIX.fullmatch(prefix.lower()):
                raise ApiError(400, f"prefix {prefix[:40]!r} is not 4 to 36 characters of a run id")
            return {"ids": store.run_ids_starting(ns, prefix.lower())[:MAX_RESOLVED_IDS]}
        return {"ids": store.run_ids_named(ns, name)[:MAX_RESOLVED_IDS]}

    @app.get("/api/v1/namespaces/{ns}/runs/{run_id}")
    def run(ns: str, run_id: str, identity: Caller) -> dict[str, Any]:
        store = check(identity, ns, "get")
        row = run_of(store, ns, run_id)
        try:
            detail = store.get_run(row.id)
        except RunNotFound:  # deleted in between
            raise ApiError(404, f"no run {run_id} in namespace {ns}") from None
        return run_detail_json(row, detail, store.metric_keys(row.id))

    @app.get("/api/v1/namespaces/{ns}/runs/{run_id}/metrics/{key:path}", response_model=None)
    def metric(ns: str, run_id: str, key: str, identity: Caller,
               max_points: Annotated[int, Query(ge=1, le=100_000)] = 2000,
               full: bool = False) -> dict[str, Any] | StreamingResponse:
        store = check(identity, ns, "get")
        row = run_of(store, ns, run_id)
        if full:
            points = store.metric_history(row.id, key)

            def lines() -> Iterator[bytes]:
                for i in range(0, len(points), STREAM_CHUNK_POINTS):
                    yield "".join(json.dumps([p.step, p.timestamp_ms / 1000, finite(p.value)]) + "\n"
                                  for p in points[i:i + STREAM_CHUNK_POINTS]).encode()

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        buckets = store.downsampled_history(row.id, key, max_points)
        return {"key": key, "downsampled": True,
                "points": [[b.step, None if b.timestamp_ms is None else b.timestamp_ms / 1000, finite(b.value),
                            finite(b.min_value), finite(b.max_value), b.count] for b in buckets]}

    @app.get("/api/v1/namespaces/{ns}/compare")
    def compare(ns: str, identity: Caller, run: Annotated[list[str], Query()] = [],  # noqa: B006
                key: Annotated[list[str], Query()] = []) -> dict[str, Any]:  # noqa: B006
        store = check(identity, ns, "get")
        if not 1 <= len(run) <= MAX_COMPARED_RUNS:
            raise ApiError(400, f"compare takes 1 to {MAX_COMPARED_RUNS} runs, not {len(run)}")
        rows = store.run_rows(run, ns)
        missing = sorted(set(run) - {r.id for r in rows})
        if missing:
            raise ApiError(404, f"no run {', '.join(missing)} in namespace {ns}")
        names = sorted({name for r in rows for name in r.params})
        differing = {name: {r.id: r.params.get(name) for r in rows} for name in names
                     if len({r.params.get(name) for r in rows}) > 1}
        common = set.intersection(*(set(store.metric_keys(r.id)) for r in rows))
        keys = [k for k in key if k in common] if key else sorted(common)
        return {"runs": [run_row_json(r) for r in rows], "params_differing": differing, "metric_keys": keys}

    @app.get("/api/v1/namespaces/{ns}/runs/{run_id}/artifacts")
    def artifacts(ns: str, run_id: str, identity: Caller) -> dict[str, Any]:
        store = check(identity, ns, "get")
        row = run_of(store, ns, run_id)
        return {"artifacts": entity_json(store.list_artifacts(row.id))}

    @app.get("/api/v1/namespaces/{ns}/runs/{run_id}/artifacts/{path:path}", response_model=None)
    def artifact(ns: str, run_id: str, path: str, identity: Caller) -> StreamingResponse | FileResponse:
        store = check(identity, ns, "get")
        row = run_of(store, ns, run_id)
        found = [a for a in store.list_artifacts(row.id) if a.path == path]
        if not found:
            raise ApiError(404, f"run {row.id} has no artifact {path}")
        art = found[0]
        headers = {"X-Cairn-SHA256": art.sha256,
                   "Content-Disposition": f"attachment; filename*=UTF-8''{quote(Path(art.path).name)}"}
        if art.uri.startswith("s3://"):
            bucket, key = parse_s3_uri(art.uri)
            try:  # opened here, so that a missing object is a 502 rather than a cut-off 200
                response = stores.open_object(ns, bucket, key)
            except ObjectStoreUnset as exc:
                raise ApiError(503, str(exc)) from None
            except TenantUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the object store says, the caller gets one line
                raise ApiError(502, f"the object store cannot give {art.uri}: {type(exc).__name__}") from None
            return StreamingResponse(object_bytes(response), media_type="application/octet-stream",
                                     headers={**headers, "Content-Length": str(art.size)})
        if art.uri.startswith("file://") and settings.auth == AuthMode.NONE:
            # Only the local server reads files, and only the ones its own store recorded.
            local = Path(unquote(urlsplit(art.uri).path))
            if not local.is_file():
                raise ApiError(404, f"artifact {path} is no longer at {local}")
            return FileResponse(local, media_type="application/octet-stream", headers=headers)
        raise ApiError(404, f"artifact {path} of run {row.id} is not in the object store")

    @app.get("/api/v1/namespaces/{ns}/models")
    def models(ns: str, identity: Caller) -> dict[str, Any]:
        store = check(identity, ns, "list")
        return {"models": entity_json(store.list_models(ns))}

    @app.get("/api/v1/namespaces/{ns}/models/{name}")
    def model(ns: str, name: str, identity: Caller) -> dict[str, Any]:
        store = check(identity, ns, "get")
        try:
            return entity_json(store.get_model(ns, name))
        except ModelNotFound as exc:
            raise ApiError(404, str(exc)) from None

    @app.get("/api/v1/namespaces/{ns}/models/{name}/evaluations")
    def evaluations(ns: str, name: str, identity: Caller,
                    version: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        store = check(identity, ns, "get")
        try:
            return {"evaluations": entity_json(store.evaluations(ns, name, version))}
        except ModelNotFound as exc:
            raise ApiError(404, str(exc)) from None

    if (UI_DIST / "index.html").is_file():
        app.mount("/assets", StaticFiles(directory=UI_DIST / "assets", check_dir=False), name="assets")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(UI_DIST / "index.html")

    return app


def object_bytes(response: Any) -> Iterator[bytes]:  # noqa: ANN401 - urllib3's response
    try:
        yield from response.stream(DOWNLOAD_CHUNK)
    finally:
        response.close()
        response.release_conn()
