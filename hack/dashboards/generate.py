"""Cairn's Grafana dashboards as code (grafana-foundation-sdk), written to charts/cairn/files/dashboards/*.json.

    python3 hack/dashboards/generate.py            # rewrite the committed JSON
    python3 hack/dashboards/generate.py --check    # exit 1 when the committed JSON is stale

Three dashboards: ``overview`` (the operator: runs by phase, GPU-hours by namespace, queue wait, failures by
reason), ``run`` (one TrainingRun: chosen metrics, step rate, system metrics, ingest lag, attempts) and ``compare``
(several TrainingRuns' curves overlaid). Every series is one the operator (cairn/controller/metrics.py) or the
tracking sidecar (cairn/agent/exporter.py) exports; tests/test_dashboards.py runs each panel's query against a
real Prometheus scraping both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

OUTPUT = Path(__file__).resolve().parents[2] / "charts" / "cairn" / "files" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The live run series' labels, as the sidecar sets them; the "run" variable picks a TrainingRun by name.
RUN = 'namespace="$namespace", experiment="$experiment", trainingrun="$run"'
RUNS = 'namespace="$namespace", experiment="$experiment", trainingrun=~"$run"'


def query(expr: str, legend: str = "", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def curves(title: str, *queries: prometheus.Dataquery, unit: str = "short", width: int = 12) -> timeseries.Panel:
    legend = (common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
              .placement(LegendPlacement.BOTTOM))
    panel = timeseries.Panel().title(title).datasource(DATASOURCE).unit(unit).span(width).height(8).legend(legend)
    for index, q in enumerate(queries):
        panel = panel.with_target(q.ref_id(chr(ord("A") + index)))
    return panel


def number(title: str, q: prometheus.Dataquery, unit: str = "short", width: int = 6) -> stat.Panel:
    reduce = common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
    return (stat.Panel().title(title).datasource(DATASOURCE).unit(unit).span(width).height(5)
            .reduce_options(reduce).with_target(q.ref_id("A")))


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def label_variable(name: str, label: str, series: str, multi: bool = False,
                   include_all: bool = False) -> dashboard.QueryVariable:
    options_query = f"label_values({series}, {label})"
    variable = (dashboard.QueryVariable(name).label(name).datasource(DATASOURCE)
                .query({"query": options_query, "refId": name})
                .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC).multi(multi))
    if include_all:
        variable = variable.include_all(True).all_value(".*")
    return variable


def overview() -> dashboard.Dashboard:
    ns = 'namespace=~"$namespace"'
    quantile = "histogram_quantile({q}, sum by (le) (increase(cairn_apply_to_running_seconds_bucket[$__range])))"
    return (
        dashboard.Dashboard("Cairn / Overview").uid("cairn-overview").tags(["cairn"]).refresh("1m")
        .time("now-6h", "now").timezone("browser")
        .with_variable(datasource_variable())
        .with_variable(label_variable("namespace", "namespace", "cairn_trainingrun_attempts", multi=True,
                                      include_all=True))
        .with_row(dashboard.Row("TrainingRuns"))
        .with_panel(curves("TrainingRuns by phase", query("sum by (phase) (cairn_trainingruns)", "{{phase}}")))
        .with_panel(curves("Failures by reason", query(
            f"count by (reason) (cairn_trainingrun_failed_timestamp_seconds{{{ns}}})", "{{reason}}")))
        .with_panel(number("Queue wait p50 (created → running)", query(quantile.format(q=0.5), instant=True), "s"))
        .with_panel(number("Queue wait p95 (created → running)", query(quantile.format(q=0.95), instant=True), "s"))
        .with_panel(number("Retries in range", query("sum(increase(cairn_retries_total[$__range]))", instant=True)))
        .with_panel(number("TrainingRuns running", query('sum(cairn_trainingruns{phase="Running"})', instant=True)))
        .with_row(dashboard.Row("GPUs"))
        .with_panel(curves("GPU-hours by namespace (in range)", query(
            f"sum by (namespace) (increase(cairn_gpu_seconds_total{{{ns}}}[$__range])) / 3600", "{{namespace}}",
            instant=True)))
        .with_panel(curves("GPUs held by namespace", query(
            f"sum by (namespace) (rate(cairn_gpu_seconds_total{{{ns}}}[$__rate_interval]))", "{{namespace}}")))
        .with_row(dashboard.Row("Operator"))
        .with_panel(curves("Retries by reason", query(
            "sum by (reason) (increase(cairn_retries_total[$__rate_interval]))", "{{reason}}")))
        .with_panel(curves("Reconcile duration p95", query(
            "histogram_quantile(0.95, sum by (le) (rate(cairn_reconcile_duration_seconds_bucket[$__rate_interval])))",
            "p95"), unit="s"))
        .with_panel(table.Panel().title("Live runs").datasource(DATASOURCE).span(24).height(8)
                    .show_header(True).with_target(query(f"cairn_run_step{{{ns}}}", instant=True).ref_id("A")))
    )


def run() -> dashboard.Dashboard:
    def live(family: str, legend: str = "") -> prometheus.Dataquery:
        return query(f"{family}{{{RUN}}}", legend)

    def system(pattern: str) -> prometheus.Dataquery:
        return query(f'cairn_run_metric{{{RUN}, key=~"system/{pattern}"}}', "{{key}}")

    return (
        dashboard.Dashboard("Cairn / Run").uid("cairn-run").tags(["cairn"]).refresh("30s")
        .time("now-3h", "now").timezone("browser")
        .with_variable(datasource_variable())
        .with_variable(label_variable("namespace", "namespace", "cairn_run_step"))
        .with_variable(label_variable("experiment", "experiment", 'cairn_run_step{namespace="$namespace"}'))
        .with_variable(label_variable("run", "trainingrun",
                                      'cairn_run_step{namespace="$namespace", experiment="$experiment"}'))
        .with_variable(label_variable("metric", "key", f'cairn_run_metric{{{RUN}, key!~"system/.*"}}',
                                      multi=True, include_all=True))
        .with_row(dashboard.Row("Training"))
        .with_panel(curves("Chosen metrics", query(f'cairn_run_metric{{{RUN}, key=~"$metric", key!~"system/.*"}}',
                                                   "{{key}}")))
        .with_panel(curves("Step", live("cairn_run_step", "step"), width=6))
        .with_panel(curves("Steps per second", live("cairn_run_steps_per_second", "steps/s"), width=6))
        .with_panel(curves("Attempts (first, retries, resumes)", query(
            'cairn_trainingrun_attempts{namespace="$namespace", trainingrun="$run"}', "attempts"), width=6))
        .with_panel(number("Seconds since the last new step", query(
            f"time() - cairn_run_last_progress_timestamp_seconds{{{RUN}}}", instant=True), "s"))
        .with_row(dashboard.Row("System"))
        .with_panel(curves("GPU utilisation", live("cairn_run_gpu_utilization_ratio", "GPU {{gpu}}"),
                           unit="percentunit"))
        .with_panel(curves("GPU memory", live("cairn_run_gpu_memory_used_bytes", "used GPU {{gpu}}"),
                           live("cairn_run_gpu_memory_total_bytes", "total GPU {{gpu}}"), unit="bytes"))
        .with_panel(curves("GPU power", live("cairn_run_gpu_power_watts", "GPU {{gpu}}"), unit="watt"))
        .with_panel(curves("GPU temperature", live("cairn_run_gpu_temperature_celsius", "GPU {{gpu}}"),
                           unit="celsius"))
        .with_panel(curves("CPU", system(r"cpu\\..*"), unit="percent"))
        .with_panel(curves("Memory", system(r"memory\\..*"), unit="bytes"))
        .with_row(dashboard.Row("Ingest"))
        .with_panel(curves("Ingest lag", live("cairn_run_ingest_lag_seconds", "lag"), unit="s", width=8))
        .with_panel(curves("Ingest backlog", live("cairn_run_ingest_backlog_bytes", "backlog"), unit="bytes",
                           width=8))
        .with_panel(curves("Rejected lines by reason", query(
            f"sum by (reason) (increase(cairn_run_rejected_lines_total{{{RUN}}}[$__rate_interval]))", "{{reason}}"),
            width=8))
    )


def compare() -> dashboard.Dashboard:
    return (
        dashboard.Dashboard("Cairn / Compare runs").uid("cairn-compare").tags(["cairn"]).refresh("30s")
        .time("now-6h", "now").timezone("browser")
        .with_variable(datasource_variable())
        .with_variable(label_variable("namespace", "namespace", "cairn_run_step"))
        .with_variable(label_variable("experiment", "experiment", 'cairn_run_step{namespace="$namespace"}'))
        .with_variable(label_variable("run", "trainingrun",
                                      'cairn_run_step{namespace="$namespace", experiment="$experiment"}',
                                      multi=True, include_all=True))
        .with_variable(label_variable("metric", "key", f'cairn_run_metric{{{RUNS}, key!~"system/.*"}}'))
        .with_panel(curves("$metric by run", query(f'cairn_run_metric{{{RUNS}, key="$metric"}}', "{{trainingrun}}"),
                           width=24))
        .with_panel(curves("Step by run", query(f"cairn_run_step{{{RUNS}}}", "{{trainingrun}}")))
        .with_panel(curves("Steps per second by run", query(f"cairn_run_steps_per_second{{{RUNS}}}",
                                                            "{{trainingrun}}")))
        .with_panel(curves("GPU utilisation by run", query(
            f"avg by (trainingrun) (cairn_run_gpu_utilization_ratio{{{RUNS}}})", "{{trainingrun}}"),
            unit="percentunit"))
        .with_panel(curves("Attempts by run", query(
            'cairn_trainingrun_attempts{namespace="$namespace", trainingrun=~"$run"}', "{{trainingrun}}")))
    )


DASHBOARDS = {"overview": overview, "run": run, "compare": compare}


def render() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    files = {}
    for name, build in DASHBOARDS.items():
        model = build().build()
        for panel_id, panel in enumerate(model.panels, start=1):  # unique ids: links and "view panel" use them
            panel.id_val = panel_id
        files[f"{name}.json"] = json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
    return files


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [name for name, text in files.items()
                 if not (OUTPUT / name).exists() or (OUTPUT / name).read_text() != text]
        for name in stale:
            print(f"stale: {OUTPUT / name} (run python3 hack/dashboards/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUTPUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
