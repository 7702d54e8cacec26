"""The committed Grafana dashboards (charts/cairn/files/dashboards/*.json) as Grafana would run their queries:
each query variable's options from its own ``label_values`` query, the chosen values filled into every panel's
PromQL."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[2] / "charts" / "cairn" / "files" / "dashboards"
# Grafana's built-in range variables, as a dashboard a minute after the runs started would fill them.
BUILT_INS = {"$__rate_interval": "15s", "$__range": "1m"}


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def targets(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def fill(expr: str, values: dict[str, str]) -> str:
    """``$name`` replaced as Grafana does: longest names first, so ``$run`` does not eat ``$runs``."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name if name.startswith("$") else f"${name}", values[name])
    return expr


def label_values(prometheus_url: str, label: str, series: str) -> list[str]:
    """``/api/v1/label/<label>/values`` for ``series``: what Grafana's ``label_values(series, label)`` lists."""
    url = f"{prometheus_url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": series})
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())["data"]


def resolve_variables(prometheus_url: str, dashboard: dict, choose: dict[str, list[str]],
                      built_ins: dict[str, str] | None = None) -> dict[str, str]:
    """Each query variable's options from its own ``label_values`` query (earlier variables filled in), then
    ``choose[name]`` picked from those options: one value as is, several as Grafana's ``(a|b)`` regex."""
    values: dict[str, str] = dict(built_ins or BUILT_INS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        options = label_values(prometheus_url, match[2], fill(match[1], values))
        wanted = choose[variable["name"]]
        assert set(wanted) <= set(options), f"${variable['name']}: {wanted} not among {options}"
        values[variable["name"]] = wanted[0] if len(wanted) == 1 else "(" + "|".join(wanted) + ")"
    return values


def query_every_panel(prom, choices: dict[str, dict[str, list[str]]],  # noqa: ANN001 - a PrometheusServer
                      skip: frozenset[str] = frozenset(), timeout: float = 60, built_ins: dict[str, str] | None = None,
                      ) -> tuple[dict[tuple[str, str], list], list[tuple[str, str, str]]]:
    """Every query of every panel of the dashboards named in ``choices`` (variables chosen as there), except the
    panels titled in ``skip``, retried until it returns data or ``timeout`` has passed for all together.
    ``built_ins`` replaces :data:`BUILT_INS`. Returns ((dashboard, panel title) -> the series of all its
    queries, [(dashboard, title, promql) of each query that returned nothing])."""
    results: dict[tuple[str, str], list] = {}
    empty: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + timeout
    for name, choose in choices.items():
        dashboard = load(name)
        values = resolve_variables(prom.url, dashboard, choose, built_ins)
        for title, expr in targets(dashboard):
            if title in skip:
                continue
            promql = fill(expr, values)
            assert "$" not in promql, promql
            while not (result := prom.query(promql)) and time.monotonic() < deadline:
                time.sleep(0.5)
            if not result:
                empty.append((name, title, promql))
            results.setdefault((name, title), []).extend(result)
    return results, empty
