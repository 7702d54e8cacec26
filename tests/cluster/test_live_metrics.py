"""A stock Prometheus pod job (kubernetes_sd) finds a running TrainingRun and scrapes its live loss and
system metrics."""

from __future__ import annotations

import pytest

from tests.support.cluster_operator import prometheus_pod_job, trainingrun, wait_phase

pytestmark = pytest.mark.cluster

TRAINER = """
import time, cairn
cairn.init()
for s in range(240):
    cairn.log({"loss": 1.0 / (s + 1), "noise": 0.0}, step=s)
    time.sleep(0.25)
"""


def test_prometheus_scrapes_a_running_run_and_loses_it_when_it_ends(
        kubeconfig, kubectl, namespace, running_operator, prometheus_factory):
    prom = prometheus_factory(prometheus_pod_job(kubeconfig, namespace))
    kubectl.apply(trainingrun("live", ["python3", "-c", TRAINER],
                              tracking={"headlineMetric": "loss", "exportKeys": ["loss"]}), namespace=namespace)
    tr = wait_phase(kubectl, namespace, "live", ("Running",), timeout=120)
    query = f'cairn_run_metric{{namespace="{namespace}",trainingrun="live",key="loss"}}'
    (series,) = prom.wait_for(query, timeout=90)
    assert series["metric"]["run"] == tr["metadata"]["uid"] and series["metric"]["experiment"] == "default"
    assert 0 < float(series["value"][1]) <= 1.0
    later = prom.wait_for(f"max_over_time(cairn_run_step{{trainingrun=\"live\",namespace=\"{namespace}\"}}[1m])",
                          predicate=lambda r: r and float(r[0]["value"][1]) >= 20, timeout=60)
    assert later
    assert prom.query(f'cairn_run_metric{{namespace="{namespace}",key="noise"}}') == []  # not exported
    # the trainer's system metrics (sampled every 10 s) are exported whatever exportKeys says; no GPU here
    (rss,) = prom.wait_for(f'cairn_run_metric{{namespace="{namespace}",key="system/memory.rss_bytes"}}', timeout=60)
    assert 2**20 < float(rss["value"][1]) < 2**32
    assert prom.query(f'cairn_run_gpu_utilization_ratio{{namespace="{namespace}"}}') == []
    wait_phase(kubectl, namespace, "live", ("Succeeded",), timeout=180)
    prom.wait_for(query, predicate=lambda r: r == [], timeout=60)
