"""The chart's alert rules: valid for promtool, each alert firing and quiet in promtool's unit tests, rendered as a
PrometheusRule only where that API exists, and two alerts firing for real in a Prometheus: a stalled run (a real
sidecar whose trainer stops logging) and the store unreachable (the operator's store writes, PostgreSQL stopped).

Helm, Prometheus and promtool are built from their Go modules (hack/build-helm.sh, hack/build-prometheus.sh).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from prometheus_client import CollectorRegistry, start_http_server

from cairn.api import from_manifest
from cairn.controller import handlers as H
from cairn.controller.metrics import StoreWritesCollector
from cairn.controller.runtime import StoreWrite, StoreWrites
from cairn.rundir import RunStatus
from cairn.store import TrackingStore, db
from tests.support.servers import (PostgresServer, built_binary, clean_env, free_port, promtool_binary,
                                   start_sidecar)

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "cairn"
PROMTOOL_TESTS = REPO / "tests" / "alerts" / "alerts_test.yaml"
DATABASE = "externalDatabase.url=postgresql://cairn:pw@db.internal:5432/cairn"
RULES_API = "monitoring.coreos.com/v1/PrometheusRule"
ALERTS = {"CairnRunStalled", "CairnRunGpuIdle", "CairnRunFailed", "CairnRunIngestBacklogGrowing",
          "CairnStoreUnreachable", "CairnOperatorDown"}


@pytest.fixture(scope="module")
def helm() -> str:
    return built_binary("build-helm.sh")


@pytest.fixture(scope="module")
def promtool() -> str:
    return promtool_binary()


def render(helm: str, *sets: str, numbers: dict[str, float] | None = None,
           api_versions: tuple[str, ...] = ()) -> list[dict]:
    """``sets`` as ``--set``; ``numbers`` as ``--set-json`` (``--set`` makes a string of a fraction)."""
    args = [helm, "template", "cairn", str(CHART), "--namespace", "cairn-system", "--show-only",
            "templates/alerts.yaml", "--set", DATABASE]
    for s in sets:
        args += ["--set", s]
    for key, number in (numbers or {}).items():
        args += ["--set-json", f"{key}={json.dumps(number)}"]
    for api in api_versions:
        args += ["--api-versions", api]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0 and "could not find template" in result.stderr:
        return []  # nothing rendered
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def rules_file(helm: str, *sets: str, numbers: dict[str, float] | None = None) -> str:
    """The plain rules file the chart puts in its ConfigMap."""
    (configmap,) = render(helm, *sets, numbers=numbers)
    assert configmap["kind"] == "ConfigMap"
    return configmap["data"]["cairn-alerts.yaml"]


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


def firing(prom, alertname: str) -> list[dict]:  # noqa: ANN001 - a PrometheusServer
    return [a for a in prom.alerts() if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def _unix(rfc3339: str) -> float:
    """Prometheus' RFC 3339 time (nanoseconds) as Unix time."""
    whole, _, fraction = rfc3339.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.timezone.utc).timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def test_rules_pass_promtool_check_with_defaults_and_tuned_values(helm, promtool, tmp_path):
    tuned = ("alerts.runStalled.for=90s", "alerts.runFailed.severity=page",
             "alerts.operatorDown.selector=job=\"kubernetes-pods\"\\,app_kubernetes_io_name=\"cairn\"")
    numbers = {"alerts.runStalled.minutes": 10, "alerts.gpuIdle.ratio": 0.2, "alerts.ingestBacklog.minBytes": 10**9}
    for name, sets, tuned_numbers in (("defaults", (), None), ("tuned", tuned, numbers)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(rules_file(helm, *sets, numbers=tuned_numbers))
        result = promtool_run(promtool, "check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 6 rules found" in result.stdout

    rules = {r["alert"]: r for g in yaml.safe_load((tmp_path / "tuned.yaml").read_text())["groups"] for r in g["rules"]}
    assert set(rules) == ALERTS
    sources = (REPO / "operator/cairn/controller/metrics.py").read_text() + \
        (REPO / "operator/cairn/agent/exporter.py").read_text()
    for family in {m for r in rules.values() for m in re.findall(r"\bcairn_\w+", r["expr"])}:
        assert f'"{family}"' in sources, f"an alert uses {family}, which no code exports"
    assert rules["CairnRunStalled"]["expr"].endswith("/ 60 > 10") and rules["CairnRunStalled"]["for"] == "90s"
    assert rules["CairnRunGpuIdle"]["expr"].endswith("< 0.2")
    assert rules["CairnRunFailed"]["labels"]["severity"] == "page"
    assert "cairn_run_ingest_backlog_bytes > 1000000000" in rules["CairnRunIngestBacklogGrowing"]["expr"]
    assert rules["CairnOperatorDown"]["expr"] == 'absent(up{job="kubernetes-pods",app_kubernetes_io_name="cairn"} == 1)'


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests(helm, promtool, tmp_path):
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text())
    checks = [c for t in cases["tests"] for c in t["alert_rule_test"]]
    assert {c["alertname"] for c in checks if c["exp_alerts"]} == ALERTS  # each one fires
    assert {c["alertname"] for c in checks if not c["exp_alerts"]} == ALERTS  # and each one stays quiet
    (tmp_path / cases["rule_files"][0]).write_text(rules_file(helm))
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    result = promtool_run(promtool, "test", "rules", str(tmp_path / PROMTOOL_TESTS.name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_prometheus_rule_only_where_the_api_exists_and_a_config_map_otherwise(helm):
    plain = yaml.safe_load(rules_file(helm))
    (rule,) = render(helm, "alerts.prometheusRule.enabled=true", "alerts.prometheusRule.labels.release=kps",
                     api_versions=(RULES_API,))
    assert (rule["apiVersion"], rule["kind"], rule["metadata"]["name"]) == ("monitoring.coreos.com/v1",
                                                                           "PrometheusRule", "cairn-alerts")
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == plain  # the same rules as the plain file

    for sets, apis in ((("alerts.prometheusRule.enabled=true",), ()),  # asked for, but no API: the plain file
                       ((), (RULES_API,))):  # the API, but not asked for
        (configmap,) = render(helm, *sets, api_versions=apis)
        assert configmap["kind"] == "ConfigMap" and yaml.safe_load(configmap["data"]["cairn-alerts.yaml"]) == plain
    assert render(helm, "alerts.enabled=false", "alerts.prometheusRule.enabled=true", api_versions=(RULES_API,)) == []


TRAINER = """
import pathlib, sys, time, cairn
cairn.init()
stop = time.monotonic() + float(sys.argv[1])
step = 0
while time.monotonic() < stop:
    cairn.log({"loss": 1.0 / (step + 1)}, step=step)
    cairn.run.flush()
    step += 1
    time.sleep(0.1)
pathlib.Path(sys.argv[2]).write_text(str(time.time()))  # the last step is logged: the run stalls from here
time.sleep(float(sys.argv[3]))
cairn.finish()
"""


@pytest.mark.slow
def test_a_stalled_run_fires_in_a_real_prometheus(helm, sqlite_url, tmp_path, prometheus_factory):
    """A real sidecar exports a real trainer's steps; the trainer logs steps for longer than the stall threshold,
    then stops logging. The chart's rule, with a 5 s threshold, fires only after the last step."""
    threshold_s, training_s = 5, 10
    rules = tmp_path / "cairn-alerts.yaml"
    rules.write_text(rules_file(helm, "alerts.runStalled.for=2s",
                                numbers={"alerts.runStalled.minutes": threshold_s / 60}))
    port = free_port()
    run_dir, stalled_file = tmp_path / "run", tmp_path / "stalled-since"
    side_env = dict(CAIRN_RUN_ID="0b4e7f2a-6c1d-4f5e-8a9b-3c2d1e0f4a5b", CAIRN_DATABASE_URL=sqlite_url,
                    CAIRN_METRICS_PORT=str(port), CAIRN_NAMESPACE="ml", CAIRN_EXPERIMENT="digits",
                    CAIRN_RUN_NAME="digits", CAIRN_PARAMS=json.dumps({}))
    sidecar = start_sidecar(run_dir, side_env)
    trainer = None
    try:
        prom = prometheus_factory({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "run", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
        })
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(training_s), str(stalled_file), "60"],
                                   env=clean_env(CAIRN_RUN_DIR=str(run_dir), CAIRN_RUN_ID=side_env["CAIRN_RUN_ID"]))
        deadline = time.monotonic() + training_s + 45
        while not (alerts := firing(prom, "CairnRunStalled")):
            assert time.monotonic() < deadline, f"CairnRunStalled not firing: {prom.alerts()}"
            assert trainer.poll() is None, "the trainer ended early"
            time.sleep(0.5)
        (alert,) = alerts
        assert {k: alert["labels"][k] for k in ("namespace", "trainingrun", "severity")} == \
            {"namespace": "ml", "trainingrun": "digits", "severity": "warning"}
        assert alert["annotations"]["summary"] == "TrainingRun ml/digits is stalled"
        # Pending from when the threshold passed after the last step, not while steps came in.
        stalled_since = float(stalled_file.read_text())
        active_at = _unix(alert["activeAt"])
        assert stalled_since + threshold_s - 1.5 <= active_at <= stalled_since + threshold_s + 5
    finally:
        for proc in (trainer, sidecar):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        if trainer is not None:
            trainer.wait(timeout=30)
        sidecar.communicate(timeout=60)


@pytest.mark.slow
def test_store_unreachable_fires_while_the_store_is_down_and_resolves_when_it_is_back(helm, tmp_path,
                                                                                      prometheus_factory):
    """The operator's store writes against a real PostgreSQL, their metrics served over HTTP as the operator
    serves them: the chart's rule (with `for: 2s`) fires once the store is stopped and a write waits, and the
    alert is gone once the store is back and the write landed."""
    rules = tmp_path / "cairn-alerts.yaml"
    rules.write_text(rules_file(helm, "alerts.storeUnreachable.for=2s"))
    postgres = PostgresServer().init().start()
    store = TrackingStore(postgres.create_database("alerts"), check_schema=False)
    db.upgrade(store.engine)
    writes = StoreWrites(lambda uid, write: H.write_run(store, uid, write), lambda: db.ensure_schema(store.engine),
                         H.store_unavailable)
    registry = CollectorRegistry()
    registry.register(StoreWritesCollector(writes))
    tr = from_manifest({"metadata": {"name": "digits", "namespace": "ml", "uid": str(uuid.uuid4())},
                        "spec": {"image": "trainer:1", "command": ["python3", "train.py"], "experiment": "digits"}})
    writes.submit(tr.uid, StoreWrite({}, tr, create=True))  # the store answers: up
    port = free_port()
    http, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "cairn-metrics", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
        })
        prom.wait_for("cairn_store_up == 1", timeout=30)
        assert firing(prom, "CairnStoreUnreachable") == []

        postgres.stop()
        writes.submit(tr.uid, StoreWrite({"status": RunStatus.RUNNING}, tr))
        assert (writes.up, writes.pending()) == (False, 1)
        deadline = time.monotonic() + 30
        while not (alerts := firing(prom, "CairnStoreUnreachable")):
            assert time.monotonic() < deadline, f"CairnStoreUnreachable not firing: {prom.alerts()}"
            time.sleep(0.5)
        assert [(a["labels"]["severity"], a["labels"]["job"]) for a in alerts] == [("critical", "cairn-metrics")]
        assert firing(prom, "CairnOperatorDown") == []  # the operator itself is scraped fine

        postgres.start()
        assert writes.flush() and writes.pending() == 0
        assert store.run_status(tr.uid) == RunStatus.RUNNING
        deadline = time.monotonic() + 30
        while [a for a in prom.alerts() if a["labels"]["alertname"] == "CairnStoreUnreachable"]:
            assert time.monotonic() < deadline, f"CairnStoreUnreachable still active: {prom.alerts()}"
            time.sleep(0.5)
    finally:
        http.shutdown()
        store.engine.dispose()
        postgres.destroy()
