"""A reader of a ``cairn server`` over HTTP, for the CLI's remote mode (``cairn --server URL``).

``RemoteStore`` answers the read calls the CLI's commands make with the same entities ``TrackingStore``
returns, so every command renders the same output whichever it talks to. It sends the current
kubeconfig's credentials (a bearer token, from a token, a token file or an exec plugin, as the
kubernetes client's config loader finds them). Standard library HTTP only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, NoReturn

from cairn.rundir import RunStatus
from cairn.store.db import StoreError
from cairn.store.entities import ExperimentSummary, HistoryBucket, LatestValue, RunSummary

DEFAULT_NAMESPACE = "default"
TIMEOUT_SECONDS = 60
MAX_RESPONSE_BYTES = 256 << 20  # a response is bounded like any other untrusted input
MAX_PAGE_SIZE = 1000  # what the server takes


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


class RemoteStore:
    """The read side of ``TrackingStore``, through a ``cairn server``."""

    def __init__(self, base_url: str, token: str | None = None, namespace: str | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StoreError(f"--server {base_url!r} is not an http(s) URL", code="BAD_SERVER_URL")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.namespace = namespace or DEFAULT_NAMESPACE

    def _get(self, path: str, query: list[tuple[str, Any]] | None = None) -> Any:  # noqa: ANN401 - JSON
        url = f"{self.base_url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS) as r:
                body = r.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            self._refused(exc)
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError(f"cannot reach {self.base_url}: {getattr(exc, 'reason', exc)}",
                              code="SERVER_UNREACHABLE") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise RemoteError(f"{url} answered more than {MAX_RESPONSE_BYTES} bytes", code="RESPONSE_TOO_LARGE")
        try:
            return json.loads(body)
        except ValueError:
            raise RemoteError(f"{url} answered something that is not JSON", code="BAD_RESPONSE") from None

    @staticmethod
    def _refused(exc: urllib.error.HTTPError) -> NoReturn:
        try:
            message = json.loads(exc.read(64 << 10)).get("error") or exc.reason
        except (ValueError, AttributeError):
            message = exc.reason
        code = {401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "RUN_NOT_FOUND"}.get(exc.code, "SERVER_ERROR")
        raise RemoteError(f"the server answered {exc.code}: {message}", code=code) from None

    # -- what the CLI's read commands call ------------------------------------------------------
    def list_experiments(self, namespace: str | None = None) -> list[ExperimentSummary]:
        """As ``TrackingStore.list_experiments``; "" (local runs) is read through the server's ``default``."""
        doc = self._get(f"namespaces/{urllib.parse.quote(namespace or self.namespace)}/experiments")
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
            doc = self._get(f"namespaces/{urllib.parse.quote(namespace or self.namespace)}/runs", query)
            found += [self._summary(r) for r in doc["runs"]]
            if not doc.get("next_page_token") or len(found) >= limit:
                break
            query = [q for q in query if q[0] != "page_token"] + [("page_token", doc["next_page_token"])]
        return found[:limit]

    @staticmethod
    def _summary(r: dict[str, Any]) -> RunSummary:
        return RunSummary(r["id"], r["name"], r["experiment"], RunStatus(r["status"]), parse_time(r["start_time"]),
                          parse_time(r["end_time"]), r.get("exit_code"),
                          {k: latest_value(k, m) for k, m in r["metrics"].items()}, r["namespace"])

    def resolve_run_id(self, ref: str) -> str:
        """The server looks runs up by full id only (within the namespace)."""
        return ref.strip().lower()

    def downsampled_history(self, run_id: str, key: str, max_points: int = 1000) -> list[HistoryBucket]:
        doc = self._get(f"namespaces/{urllib.parse.quote(self.namespace)}/runs/{urllib.parse.quote(run_id)}/metrics/"
                        f"{urllib.parse.quote(key)}", [("max_points", max_points)])
        return [HistoryBucket(step, number(value), lo, hi, count, None if ts is None else round(ts * 1000))
                for step, ts, value, lo, hi, count in doc["points"]]

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)
        raise StoreError(f"cairn --server does not offer what this command reads ({name}) yet; use --database-url",
                         code="NOT_REMOTE")
