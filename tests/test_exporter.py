"""Live run metrics: bounded, current while the run trains, gone when it ends, scraped by a real Prometheus."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cairn.agent.exporter import MAX_KEYS, MAX_SYSTEM_KEYS, LiveState, RunCollector, export_keys
from tests.support.fake_gpu import build_fake_nvml
from tests.support.servers import clean_env, free_port, start_sidecar

LABELS = {"namespace": "ml", "experiment": "digits", "run": "r1", "trainingrun": "digits"}


def render(state: LiveState) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(state, LABELS))
    return generate_latest(registry).decode()


def test_only_exported_keys_and_their_newest_step():
    state = LiveState(export_keys(["loss"], "val_acc"))
    state.observe([("loss", 1, 0, 0.9), ("acc", 1, 0, 0.5), ("loss", 3, 0, 0.7), ("loss", 2, 0, 0.8),
                   ("val_acc", 3, 0, 0.6)])
    text = render(state)
    assert 'cairn_run_metric{experiment="digits",key="loss",namespace="ml",run="r1",trainingrun="digits"} 0.7' in text
    assert 'key="val_acc"' in text and 'key="acc"' not in text
    assert 'cairn_run_step{experiment="digits",namespace="ml",run="r1",trainingrun="digits"} 3.0' in text


def test_default_keys_and_the_cap():
    assert "loss" in export_keys([], None)
    assert len(export_keys([f"k{i}" for i in range(50)], "headline")) == MAX_KEYS
    assert "headline" in export_keys([f"k{i}" for i in range(50)], "headline")


def test_steps_per_second_and_rejections():
    state = LiveState(export_keys([], None))
    state.observe([("loss", 0, 0, 1.0)], now=100.0)
    state.observe([("loss", 50, 0, 0.5)], now=110.0)
    assert state.steps_per_second() == pytest.approx(5.0)
    state.rejected.update({"bad_json": 2})
    assert 'cairn_run_rejected_lines_total{experiment="digits",namespace="ml",reason="bad_json"' in render(state)


def test_last_progress_is_the_start_until_a_step_and_moves_only_with_a_new_step():
    before = time.time()
    state = LiveState(export_keys([], None))
    assert before <= state.progress_at <= time.time()  # no step yet: the sidecar's start
    state.observe([("loss", 5, 0, 1.0)], now=10.0, wall=1_000.0)
    state.observe([("loss", 5, 0, 0.9), ("loss", 3, 0, 0.8)], now=20.0, wall=2_000.0)  # no newer step
    assert state.progress_at == 1_000.0
    state.observe([("acc", 6, 0, 0.5)], now=30.0, wall=3_000.0)  # any key's new step is progress
    assert state.progress_at == 3_000.0
    line = 'cairn_run_last_progress_timestamp_seconds{experiment="digits",namespace="ml",run="r1",trainingrun="digits"}'
    assert f"{line} 3000.0" in render(state)


def test_a_finished_run_has_no_series():
    state = LiveState(export_keys([], None))
    state.observe([("loss", 1, 0, 0.5)])
    state.finished = True
    assert "cairn_run" not in render(state)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def wait_for(predicate, timeout=30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("not reached in time")


TRAINER = """
import sys, time, cairn
cairn.init()
for s in range(int(sys.argv[1])):
    cairn.log({"loss": 1.0 / (s + 1), "grad_norm": 3.0}, step=s)
    time.sleep(0.01)
cairn.run.flush()
time.sleep(float(sys.argv[2]))
cairn.finish()
"""


@pytest.mark.slow
def test_sidecar_exports_while_training_and_drops_series_at_the_end(sqlite_url, tmp_path, prometheus_factory):
    port = free_port()
    run_dir = tmp_path / "run"
    env = clean_env()
    side_env = dict(CAIRN_RUN_ID="6a1f0c52-1d5e-4a8e-9c3d-2e4f6a8b0c1d",
                    CAIRN_DATABASE_URL=sqlite_url, CAIRN_METRICS_PORT=str(port), CAIRN_EXPORT_KEYS="loss",
                    CAIRN_NAMESPACE="ml", CAIRN_EXPERIMENT="digits", CAIRN_RUN_NAME="digits",
                    CAIRN_PARAMS=json.dumps({}))
    sidecar = start_sidecar(run_dir, side_env)
    trainer = None
    try:
        prom = prometheus_factory([{"job_name": "run", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}])
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER, "200", "15"],
                                   env=dict(env, CAIRN_RUN_DIR=str(run_dir), CAIRN_RUN_ID=side_env["CAIRN_RUN_ID"]))
        # The trainer holds its last value (step 199) for 15 s before finishing: Prometheus sees it.
        result = prom.wait_for('cairn_run_metric{key="loss",trainingrun="digits"}',
                               predicate=lambda r: r and float(r[0]["value"][1]) == pytest.approx(1 / 200),
                               timeout=40)
        assert result[0]["metric"]["namespace"] == "ml" and result[0]["metric"]["experiment"] == "digits"
        text = scrape(port)
        assert 'key="grad_norm"' not in text  # not exported
        assert "cairn_run_steps_per_second" in text and "cairn_run_ingest_backlog_bytes" in text
        assert trainer.wait(timeout=60) == 0
        wait_for(lambda: "cairn_run_metric{" not in scrape(port))  # finish record read: series dropped
        prom.wait_for('cairn_run_metric{trainingrun="digits"}', predicate=lambda r: r == [], timeout=30)
    finally:
        for proc in (trainer, sidecar):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        out, _ = sidecar.communicate(timeout=60)
    assert sidecar.returncode == 0, out


def test_system_metrics_are_exported_whatever_the_keys_and_gpus_by_device():
    state = LiveState(export_keys(["loss"], None))
    state.observe([("loss", 4, 0, 0.5), ("system/cpu.percent", 4, 0, 97.0), ("system/cpu.percent", 4, 0, 99.0),
                   ("system/gpu.0.utilization_percent", 4, 0, 37.0), ("system/gpu.1.memory_used_bytes", 4, 0, 2.0**30),
                   ("system/gpu.1.power_watts", 4, 0, 215.5), ("system/gpu.0.fan_speed", 4, 0, 40.0)])
    text = render(state)
    assert ('cairn_run_metric{experiment="digits",key="system/cpu.percent",namespace="ml",run="r1",'
            'trainingrun="digits"} 99.0') in text  # sampled against time: the newest at a step wins
    assert 'cairn_run_gpu_utilization_ratio{experiment="digits",gpu="0",namespace="ml"' in text
    assert 'gpu="0",namespace="ml",run="r1",trainingrun="digits"} 0.37' in text
    assert 'cairn_run_gpu_memory_used_bytes{experiment="digits",gpu="1",' in text
    assert 'cairn_run_gpu_power_watts{experiment="digits",gpu="1",namespace="ml",run="r1",trainingrun="digits"} 215.5' \
        in text
    assert 'key="system/gpu.0.utilization_percent"' not in text  # one series per reading, under its GPU family
    assert 'key="system/gpu.0.fan_speed"' in text  # a GPU reading without a family stays a plain metric
    assert 'cairn_run_step{experiment="digits",namespace="ml",run="r1",trainingrun="digits"} 4.0' in text


def test_system_keys_the_trainer_makes_up_are_bounded():
    state = LiveState(export_keys([], None))
    state.observe([(f"system/made_up_{i}", i, 0, 1.0) for i in range(500)])
    state.observe([("system/made_up_0", 501, 0, 2.0), ("system/made_up_499", 501, 0, 2.0)])
    text = render(state)
    assert text.count('key="system/made_up_') == 2 * MAX_SYSTEM_KEYS  # cairn_run_metric and cairn_run_metric_step
    assert 'key="system/made_up_0",namespace="ml",run="r1",trainingrun="digits"} 2.0' in text
    assert 'key="system/made_up_499"' not in text


@pytest.mark.slow
def test_the_sidecar_exports_the_gpus_the_trainer_samples(sqlite_url, tmp_path):
    lib = build_fake_nvml(tmp_path / "nvml")
    port = free_port()
    run_dir = tmp_path / "run"
    run_id = "7b2e1d40-2c6f-4b9a-8d1e-3f5a7c9e0b2d"
    sidecar = start_sidecar(run_dir, dict(CAIRN_RUN_ID=run_id, CAIRN_DATABASE_URL=sqlite_url,
                                          CAIRN_METRICS_PORT=str(port), CAIRN_PARAMS="{}"))
    trainer = None
    try:
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER, "5", "15"],
                                   env=clean_env(CAIRN_RUN_DIR=str(run_dir), CAIRN_RUN_ID=run_id,
                                                 CAIRN_SYSTEM_METRICS_INTERVAL="1", CAIRN_NVML_LIBRARY=str(lib)))
        def gpu_series() -> str | None:
            text = scrape(port)
            return text if "cairn_run_gpu_utilization_ratio{" in text else None

        text = wait_for(gpu_series)
        assert 'gpu="0",namespace="",run="%s",trainingrun=""} 0.37' % run_id in text
        assert 'gpu="1",namespace="",run="%s",trainingrun=""} 0.88' % run_id in text
        assert 'key="system/cpu.percent"' in text
        assert trainer.wait(timeout=60) == 0
        wait_for(lambda: "cairn_run_gpu_utilization_ratio{" not in scrape(port))  # finished: series gone
    finally:
        for proc in (trainer, sidecar):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        out, _ = sidecar.communicate(timeout=60)
    assert sidecar.returncode == 0, out
