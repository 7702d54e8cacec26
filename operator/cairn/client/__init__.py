"""A reader of a ``cairn server`` over HTTP, for the CLI's remote mode (``cairn --server URL``).

``RemoteStore`` answers the read calls the CLI's commands make with the same entities ``TrackingStore``
returns, so every command renders the same output whichever it talks to; artifacts download through the
server, verified by their sha256 as in database mode. It sends the current
kubeconfig's credentials (a bearer token, from a token, a token file or an exec plugin, as the
kubernetes client's config loader finds them). Standard library HTTP only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from cairn.objectstore import CHUNK, ChecksumMismatch
from cairn.rundir import RunStatus
from cairn.store import RunNotFound
from cairn.store.db import StoreError
from cairn.store.entities import (
    ArtifactInfo,
    ClusterInfo,
    CodeVersion,
    DatasetRecord,
    Environment,
    Evaluation,
    ExperimentSummary,
    HistoryBucket,
    IngestSummary,
    LatestValue,
    MetricPoint,
    ModelDetail,
    ModelSummary,
    ResumeInfo,
    RunDetail,
    RunSummary,
    Uploads,
)

DEFAULT_NAMESPACE = "default"
TIMEOUT_SECONDS = 60
MAX_RESPONSE_BYTES = 256 << 20  # a response is bounded like any other untrusted input
MAX_PAGE_SIZE = 1000  # what the server takes
SHOWN_AMBIGUOUS_IDS = 5


class RemoteError(StoreError):
    """The server refused or failed a call; the message is the server's, with the HTTP status."""


def kubeconfig_identity() -> tuple[str | None, str | None]:
    """(bearer token, namespace) of the current kubeconfig context; None for what it does not give."""
    from kubernetes import client, config

    configuration = client.Configuration()
    # Read now: the kubernetes package takes $KUBECONFIG (a list of files, like kubectl's) once, at import.
    files = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        config.load_kube_config(config_file=files, client_configuration=configuration)
        _, current = config.list_kube_config_contexts(config_file=files)
    except (config.ConfigException, OSError):
        return None, None
    auth = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken") or ""
    namespace = (current or {}).get("context", {}).get("namespace")
    return auth.removeprefix("Bearer ").strip() or None, namespace


def parse_time(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def number(value: float | None) -> float:
    """The server writes NaN (and infinities) as null."""
    return math.nan if value is None else float(value)


def latest_value(key: str, m: dict[str, Any]) -> LatestValue:
    return LatestValue(key, m["step"], number(m["value"]), m.get("min"), m.get("max"), m.get("count", 0))


def entity(kind: Any, data: Any) -> Any:  # noqa: ANN401 - a type and JSON data in, that type's value out
    """``data`` (as the server's ``entity_json`` wrote it) as a value of ``kind``: a store entity, a list or
    dict of them, a time, a number (null reads as NaN where the entity holds no None) or plain JSON."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        return None if data is None and len(present) < len(args) else entity(present[0], data)
    if origin is list:
        return [entity(args[0], item) for item in data]
    if origin is dict:
        return {key: entity(args[1], item) for key, item in data.items()}
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: entity(hints[f.name], data[f.name]) for f in dataclasses.fields(kind)
                       if f.name in data})
    if kind is dt.datetime:
        return parse_time(data)
    if kind is float:
        return number(data)
    if kind is RunStatus:
        return RunStatus(data)
    return data


def run_detail(doc: dict[str, Any]) -> RunDetail:
    """A ``RunDetail`` from the server's run document."""
    return RunDetail(
        summary=RemoteStore.summary(doc), params=doc["param_values"], tags=doc["tags"],
        environment=entity(Environment | None, doc["environment"]), code=entity(CodeVersion | None, doc["code"]),
        artifacts=entity(list[ArtifactInfo], doc["artifacts"]), datasets=entity(list[DatasetRecord], doc["datasets"]),
        cluster=entity(ClusterInfo, doc["cluster"]), ingest=entity(IngestSummary, doc["ingest"]),
        uploads=entity(Uploads, doc["uploads"]), resumes=entity(list[ResumeInfo], doc["resumes"]))


class RemoteStore:
    """The read side of ``TrackingStore``, through a ``cairn server``."""

    def __init__(self, base_url: str, token: str | None = None, namespace: str | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StoreError(f"--server {base_url!r} is not an http(s) URL", code="BAD_SERVER_URL")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.namespace = namespace or DEFAULT_NAMESPACE

    def _open(self, path: str, query: list[tuple[str, Any]] | None = None, accept: str = "application/json",
              missing: str = "RUN_NOT_FOUND") -> Any:  # noqa: ANN401 - the open HTTP response
        url = f"{self.base_url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as exc:
            self._refused(exc, missing)
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError(f"cannot reach {self.base_url}: {getattr(exc, 'reason', exc)}",
                              code="SERVER_UNREACHABLE") from None

    def _read(self, path: str, query: list[tuple[str, Any]] | None = None, accept: str = "application/json",
              missing: str = "RUN_NOT_FOUND") -> bytes:
        with self._open(path, query, accept, missing) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
        if len(body) > MAX_RESPONSE_BYTES:
            raise RemoteError(f"{path} answered more than {MAX_RESPONSE_BYTES} bytes", code="RESPONSE_TOO_LARGE")
        return body

    def _get(self, path: str, query: list[tuple[str, Any]] | None = None,
             missing: str = "RUN_NOT_FOUND") -> Any:  # noqa: ANN401 - JSON
        try:
            return json.loads(self._read(path, query, missing=missing))
        except ValueError:
            raise RemoteError(f"{path} answered something that is not JSON", code="BAD_RESPONSE") from None

    @staticmethod
    def _refused(exc: urllib.error.HTTPError, missing: str) -> NoReturn:
        try:
            message = json.loads(exc.read(64 << 10)).get("error") or exc.reason
        except (ValueError, AttributeError):
            message = exc.reason
        code = {401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: missing}.get(exc.code, "SERVER_ERROR")
        raise RemoteError(f"the server answered {exc.code}: {message}", code=code) from None

    def _in(self, namespace: str | None = None) -> str:
        return f"namespaces/{urllib.parse.quote(namespace or self.namespace, safe='')}"

    def _of_run(self, run_id: str) -> str:
        return f"{self._in()}/runs/{urllib.parse.quote(run_id, safe='')}"

    # -- what the CLI's read commands call ------------------------------------------------------
    def list_experiments(self, namespace: str | None = None) -> list[ExperimentSummary]:
        """As ``TrackingStore.list_experiments``; "" (local runs) is read through the server's ``default``."""
        doc = self._get(f"{self._in(namespace)}/experiments")
        found = [ExperimentSummary(e["name"], e["runs"], parse_time(e["last_start_time"]), e["namespace"])
                 for e in doc["experiments"]]
        return found if namespace is None else [e for e in found if (e.namespace or "") == namespace]

    def list_runs(self, experiment: str | None = None, status: RunStatus | str | None = None,
                  sort_metric: str | None = None, ascending: bool = False, limit: int = 100,
                  namespace: str | None = None) -> list[RunSummary]:
        query: list[tuple[str, Any]] = [("page_size", min(limit, MAX_PAGE_SIZE))]
        if experiment:
            query.append(("experiment", experiment))
        if status:
            query.append(("status", str(status).upper()))
        if sort_metric:
            query.append(("order_by", f"metrics.{sort_metric} {'asc' if ascending else 'desc'}"))
        found: list[RunSummary] = []
        pages = -(-limit // MAX_PAGE_SIZE)  # bounded: never more pages than the limit needs
        for _ in range(pages):
            doc = self._get(f"{self._in(namespace)}/runs", query)
            found += [self.summary(r) for r in doc["runs"]]
            if not doc.get("next_page_token") or len(found) >= limit:
                break
            query = [q for q in query if q[0] != "page_token"] + [("page_token", doc["next_page_token"])]
        return found[:limit]

    @staticmethod
    def summary(r: dict[str, Any]) -> RunSummary:
        return RunSummary(r["id"], r["name"], r["experiment"], RunStatus(r["status"]), parse_time(r["start_time"]),
                          parse_time(r["end_time"]), r.get("exit_code"),
                          {k: latest_value(k, m) for k, m in r["metrics"].items()}, r["namespace"])

    def resolve_run_id(self, ref: str) -> str:
        """As ``TrackingStore.resolve_run_id``, among the runs of the namespace: a full id or an unambiguous prefix."""
        prefix = ref.strip().lower()
        try:
            full = str(uuid.UUID(prefix))
        except ValueError:
            full = None
        if full is not None:
            if full not in self._resolved(self._in(), prefix=full):
                raise RunNotFound(prefix)
            return full
        if len(prefix) < 4 or any(c not in "0123456789abcdef-" for c in prefix):
            raise RunNotFound(prefix)
        ids = self._resolved(self._in(), prefix=prefix)
        if not ids:
            raise RunNotFound(prefix)
        if len(ids) > 1:
            raise StoreError(f"run id prefix {prefix!r} is ambiguous: {', '.join(ids[:SHOWN_AMBIGUOUS_IDS])}",
                             code="AMBIGUOUS_RUN_ID")
        return ids[0]

    def run_ids_named(self, namespace: str, name: str) -> list[str]:
        return self._resolved(self._in(namespace), name=name)

    def _resolved(self, within: str, **ref: str) -> list[str]:
        return self._get(f"{within}/runs:resolve", list(ref.items()))["ids"]

    def get_run(self, run_id: str) -> RunDetail:
        return run_detail(self._get(self._of_run(run_id)))

    def metric_keys(self, run_id: str) -> list[str]:
        return self._get(self._of_run(run_id))["metric_keys"]

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every point of the series, as the server streams it (seconds back to whole milliseconds)."""
        body = self._read(f"{self._of_run(run_id)}/metrics/{urllib.parse.quote(key)}", [("full", "true")],
                          accept="application/x-ndjson")
        try:
            rows = [json.loads(line) for line in body.splitlines() if line]
            return [MetricPoint(key, step, round(ts * 1000), number(value)) for step, ts, value in rows]
        except (ValueError, TypeError):
            raise RemoteError(f"the series {key} of run {run_id} came back malformed", code="BAD_RESPONSE") from None

    def list_artifacts(self, run_id: str) -> list[ArtifactInfo]:
        return entity(list[ArtifactInfo], self._get(f"{self._of_run(run_id)}/artifacts")["artifacts"])

    def download_artifact(self, run_id: str, artifact: ArtifactInfo, dest: Path,
                          progress: Callable[[int], None]) -> None:
        """The artifact's bytes through the server into ``dest`` (by way of ``dest.part``, renamed only when
        the sha256 is the one the store recorded, and the one the server sent with them)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        size = 0
        with self._open(f"{self._of_run(run_id)}/artifacts/{urllib.parse.quote(artifact.path)}",
                        accept="application/octet-stream") as response, open(part, "wb") as out:
            sent = response.headers.get("X-Cairn-SHA256")
            for chunk in iter(lambda: response.read(CHUNK), b""):
                size += len(chunk)
                if size > artifact.size:  # more than the store recorded: it cannot be the artifact
                    break
                out.write(chunk)
                digest.update(chunk)
                progress(len(chunk))
        if digest.hexdigest() != artifact.sha256 or sent != artifact.sha256:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{artifact.uri}: sha256 {digest.hexdigest()} (the server sent {sent}) but the "
                                   f"store recorded {artifact.sha256}")
        os.replace(part, dest)

    # -- the model registry -----------------------------------------------------------------------
    def list_models(self, namespace: str | None = None) -> list[ModelSummary]:
        """The models of ``namespace``, else of the kubeconfig's namespace (a server lists one namespace)."""
        return entity(list[ModelSummary], self._get(f"{self._in(namespace)}/models")["models"])

    def get_model(self, namespace: str, name: str) -> ModelDetail:
        return entity(ModelDetail, self._get(f"{self._in(namespace)}/models/{urllib.parse.quote(name, safe='')}",
                                             missing="MODEL_NOT_FOUND"))

    def evaluations(self, namespace: str, name: str, version: int | None = None) -> list[Evaluation]:
        doc = self._get(f"{self._in(namespace)}/models/{urllib.parse.quote(name, safe='')}/evaluations",
                        [] if version is None else [("version", version)], missing="MODEL_NOT_FOUND")
        return entity(list[Evaluation], doc["evaluations"])

    def downsampled_history(self, run_id: str, key: str, max_points: int = 1000) -> list[HistoryBucket]:
        doc = self._get(f"{self._of_run(run_id)}/metrics/{urllib.parse.quote(key)}", [("max_points", max_points)])
        return [HistoryBucket(step, number(value), lo, hi, count, None if ts is None else round(ts * 1000))
                for step, ts, value, lo, hi, count in doc["points"]]

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)
        raise StoreError(f"cairn --server does not offer what this command reads ({name}) yet; use --database-url",
                         code="NOT_REMOTE")
