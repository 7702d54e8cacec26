"""The Grafana dashboards after real TrainingRuns on the local cluster: a stock Prometheus pod job scrapes the runs'
sidecars and the operator's metrics port; every panel's query, with its variables filled from their own label
queries, returns data. The cluster has no GPUs, so the GPU panels are left out (tests/test_dashboards.py covers
them with the fake NVML library). Needs the project image with this branch's sidecar (hack/build-image.sh)."""

from __future__ import annotations

import pytest

from tests.support.cluster_operator import prometheus_pod_job, trainingrun, wait_phase
from tests.support.dashboards import load, query_every_panel, targets

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TRAINER = """
import os, pathlib, time, cairn
cairn.init()
pathlib.Path(os.environ["CAIRN_RUN_DIR"], "metrics", "bad.jsonl").write_text("not json\\n")  # one rejected line
for s in range(480):
    cairn.log({"loss": 1.0 / (s + 1), "acc": s / 480}, step=s)
    time.sleep(0.25)
"""
RUNS = ("digits-a", "digits-b")
NO_GPU_HERE = frozenset({"GPU utilisation", "GPU memory", "GPU power", "GPU temperature", "GPU utilisation by run",
                         "GPU-hours by namespace (in range)", "GPUs held by namespace"})


def test_every_panel_returns_data_after_real_training_runs(kubeconfig, kubectl, namespace, running_operator,
                                                           prometheus_factory):
    prom = prometheus_factory([
        *prometheus_pod_job(kubeconfig, namespace),
        {"job_name": "cairn-operator",
         "static_configs": [{"targets": [f"127.0.0.1:{running_operator.metrics_port}"]}]},
    ])
    for name in RUNS:
        kubectl.apply(trainingrun(name, ["python3", "-c", TRAINER], experiment="digits"), namespace=namespace)
    # A run that fails once, is retried, and fails: retries and failures by reason.
    kubectl.apply(trainingrun("broken", ["python3", "-c", "raise SystemExit(3)"], experiment="digits",
                              backoffLimit=1), namespace=namespace)
    for name in RUNS:
        wait_phase(kubectl, namespace, name, ("Running",), timeout=180)
    wait_phase(kubectl, namespace, "broken", ("Failed",), timeout=180)

    choices = {
        "overview": {"namespace": [namespace]},
        "run": {"namespace": [namespace], "experiment": ["digits"], "run": ["digits-a"], "metric": ["acc", "loss"]},
        "compare": {"namespace": [namespace], "experiment": ["digits"], "run": list(RUNS), "metric": ["loss"]},
    }
    # Ranges wide enough to hold the runs' start (queue wait) and the retry, minutes ago by now.
    results, empty = query_every_panel(prom, choices, skip=NO_GPU_HERE, timeout=90,
                                       built_ins={"$__rate_interval": "1m", "$__range": "15m"})
    assert not empty, f"queries with no data: {empty}"
    assert set(results) == {(n, title) for n in choices for title, _ in targets(load(n)) if title not in NO_GPU_HERE}
    assert {r["metric"]["trainingrun"] for r in results[("compare", "$metric by run")]} == set(RUNS)
    assert {r["metric"]["reason"] for r in results[("overview", "Failures by reason")]} == {"UserError"}
    assert {r["metric"]["reason"] for r in results[("overview", "Retries by reason")]} == {"UserError"}
    queue_wait = float(results[("overview", "Queue wait p95 (created → running)")][0]["value"][1])
    assert 0 < queue_wait < 180
    (attempts,) = results[("run", "Attempts (first, retries, resumes)")]
    assert attempts["value"][1] == "1"
