"""System metrics sampled in the training process (CPU, memory, GPUs) reach the store as system/* metrics.

There is no GPU here: NVML is a fake library compiled from C and nvidia-smi a fake script
(tests/support/fake_gpu.py); everything else is real (/proc, cgroups, the agent, SQLite, PostgreSQL).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cairn
from cairn.agent.ingest import IngestAgent
from cairn.sdk import system
from cairn.sdk.system import (
    SystemSampler, bounded_interval, descendants, parse_memory_limit, parse_nvidia_smi_query,
    parse_proc_stat,
)
from tests.support.fake_gpu import (
    FAKE_NVIDIA_SMI_READINGS, FAKE_NVIDIA_SMI_ROWS, FAKE_NVML_DEVICES, FAKE_NVML_READINGS, build_fake_nvml,
    install_fake_nvidia_smi,
)
from tests.support.servers import clean_env

pytestmark = pytest.mark.usefixtures("fresh_sdk")
RUN_ID = "5d0c1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f"
BUSY_S = 5.5  # long enough for two samples a second apart even on a loaded machine
IDLE_S = 3.5
GPU_FIELDS = ("utilization_percent", "memory_used_bytes", "memory_total_bytes", "temperature_celsius", "power_watts")


def gpu_values(values: dict[str, float]) -> dict[int, dict[str, float]]:
    """{device: {field: value}} from system/gpu.<i>.<field> keys."""
    out: dict[int, dict[str, float]] = {}
    for key, value in values.items():
        if key.startswith("system/gpu."):
            _, index, name = key.split(".", 2)
            out.setdefault(int(index), {})[name] = value
    return out


# -- pure parsing -------------------------------------------------------------------------------

def test_proc_stat_with_a_command_name_holding_spaces_and_parentheses():
    fields = ["S", "41"] + ["0"] * 9 + ["150", "50", "7", "3"] + ["0"] * 6 + ["2560"] + ["0"] * 20
    stat = parse_proc_stat(f"4242 (my (odd) name) {' '.join(fields)}")
    assert (stat.pid, stat.ppid, stat.cpu_ticks, stat.children_ticks, stat.rss_pages) == (4242, 41, 200, 10, 2560)


def test_process_tree_and_limits():
    assert descendants(10, {10: 1, 11: 10, 12: 11, 13: 1, 14: 13, 15: 12}) == {10, 11, 12, 15}
    assert parse_memory_limit("max\n") is None
    assert parse_memory_limit("9223372036854771712\n") is None  # cgroup v1: no limit
    assert parse_memory_limit("2147483648\n") == 2**31
    assert [bounded_interval(s) for s in (0.01, 5, 1e9, float("nan"))] == [1.0, 5, 3600.0, system.DEFAULT_INTERVAL_S]


def test_nvidia_smi_rows_skip_what_a_board_does_not_report():
    values = gpu_values(parse_nvidia_smi_query(FAKE_NVIDIA_SMI_ROWS + "garbage line\n"))
    assert values == FAKE_NVIDIA_SMI_READINGS


# -- the sampler in this process ----------------------------------------------------------------

def collect_samples(sampler: SystemSampler, samples: list, count: int, timeout: float = 20) -> None:
    sampler.start()
    deadline = time.monotonic() + timeout
    while len(samples) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    sampler.stop()
    assert len(samples) >= count, f"{len(samples)} samples in {timeout} s"


def test_without_a_gpu_there_are_no_gpu_keys_one_debug_line_and_no_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no nvidia-smi
    samples: list[dict] = []
    sampler = SystemSampler(samples.append, interval=1, nvml_library=str(tmp_path / "absent" / "libnvidia-ml.so.1"))
    with caplog.at_level(logging.DEBUG, logger="cairn.sdk.system"):
        collect_samples(sampler, samples, 2)
    assert sampler.gpu_source == "none" and sampler.failures == 0
    assert not [k for s in samples for k in s if k.startswith("system/gpu.")]
    assert {"system/cpu.percent", "system/memory.rss_bytes"} <= set(samples[0])
    lines = [r for r in caplog.records if r.name == "cairn.sdk.system"]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG and "no GPU metrics" in lines[0].getMessage()


def test_gpus_through_nvml(tmp_path):
    lib = build_fake_nvml(tmp_path / "nvml")
    samples: list[dict] = []
    sampler = SystemSampler(samples.append, interval=1, nvml_library=str(lib))
    collect_samples(sampler, samples, 1)
    assert sampler.gpu_source == "nvml"
    assert gpu_values(samples[0]) == FAKE_NVML_READINGS  # device 1 has no power sensor: no key, no error


@pytest.mark.parametrize("broken", ["not an ELF file", "a library without the NVML functions"])
def test_a_broken_nvml_library_falls_back_to_nvidia_smi(tmp_path, monkeypatch, broken):
    if broken.startswith("not"):
        lib = tmp_path / "libnvidia-ml.so.1"
        lib.write_text("this is not a shared object\n")
    else:
        lib = build_fake_nvml(tmp_path / "nvml", source="int nvmlInit_v2(void) { return 0; }\n")
    install_fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    samples: list[dict] = []
    sampler = SystemSampler(samples.append, interval=1, nvml_library=str(lib))
    collect_samples(sampler, samples, 1)
    assert sampler.gpu_source == "nvidia-smi"
    assert gpu_values(samples[0]) == FAKE_NVIDIA_SMI_READINGS


def test_a_hanging_nvidia_smi_costs_its_gpu_values_only(tmp_path, monkeypatch):
    install_fake_nvidia_smi(tmp_path / "bin", hang=True)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(system, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    samples: list[dict] = []
    sampler = SystemSampler(samples.append, interval=1, nvml_library=str(tmp_path / "absent.so"))
    started = time.monotonic()
    collect_samples(sampler, samples, 1)
    assert time.monotonic() - started < 10
    assert sampler.gpu_source == "nvidia-smi" and sampler.failures >= 1
    assert "system/cpu.percent" in samples[0] and not gpu_values(samples[0])


def test_the_sampler_stops_with_finish(tmp_path, monkeypatch):
    monkeypatch.setenv("CAIRN_SYSTEM_METRICS_INTERVAL", "1")
    run = cairn.init(run_dir=str(tmp_path / "r"), capture_env=False)
    sampler = run.system_sampler
    deadline = time.monotonic() + 20
    while sampler.samples < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sampler.samples >= 1
    cairn.finish()
    assert not sampler._thread.is_alive()
    written = (tmp_path / "r" / "records.jsonl").read_bytes()
    time.sleep(2.5)  # two more intervals: nothing is sampled or written after the finish record
    assert (tmp_path / "r" / "records.jsonl").read_bytes() == written
    assert json.loads(written.splitlines()[-1])["type"] == "finish"


def test_system_metrics_can_be_turned_off(tmp_path, monkeypatch):
    assert cairn.init(run_dir=str(tmp_path / "a"), capture_env=False, system_metrics=False).system_sampler is None
    cairn.finish()
    monkeypatch.setenv("CAIRN_SYSTEM_METRICS", "off")
    assert cairn.init(run_dir=str(tmp_path / "b"), capture_env=False).system_sampler is None
    cairn.finish()
    monkeypatch.setenv("CAIRN_SYSTEM_METRICS", "")
    assert cairn.init(run_dir=str(tmp_path / "c"), capture_env=False).system_sampler is not None


# -- a trainer process, through the agent into the store ------------------------------------------

TRAINER = """
import sys, time, cairn
cairn.init(experiment="system")
cairn.log({"loss": 1.0}, step=0)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:  # busy: system points at step 0
    pass
cairn.log({"loss": 0.5}, step=1)
time.sleep(float(sys.argv[2]))  # idle: system points at step 1
cairn.finish()
"""


@pytest.fixture(scope="module")
def trainer_run_dir(tmp_path_factory) -> Path:
    """The run directory of a trainer that was busy, then idle, sampled every second with two fake GPUs."""
    base = tmp_path_factory.mktemp("system")
    lib = build_fake_nvml(base / "nvml")
    run_dir = base / "run"
    env = clean_env(CAIRN_RUN_DIR=str(run_dir), CAIRN_RUN_ID=RUN_ID, CAIRN_SYSTEM_METRICS_INTERVAL="1",
                    CAIRN_NVML_LIBRARY=str(lib))
    done = subprocess.run([sys.executable, "-c", TRAINER, str(BUSY_S), str(IDLE_S)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # nothing to say when all goes well
    return run_dir


def test_system_metrics_reach_the_store(trainer_run_dir, store, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trainer_run_dir, run_dir)
    stop = threading.Event()
    stop.set()
    assert IngestAgent(run_dir, store=store).run(stop, drain_timeout=10)

    keys = set(store.metric_keys(RUN_ID))
    expected_gpu = {f"system/gpu.{i}.{f}" for i in range(FAKE_NVML_DEVICES) for f in GPU_FIELDS} - {
        "system/gpu.1.power_watts"}
    assert {k for k in keys if k.startswith("system/gpu.")} == expected_gpu
    assert {"system/cpu.percent", "system/memory.rss_bytes"} <= keys
    cgroup = Path("/sys/fs/cgroup")
    has_container_memory = (cgroup / "memory.current").exists() or (cgroup / "memory/memory.usage_in_bytes").exists()
    assert ("system/memory.container_bytes" in keys) == has_container_memory
    for device, readings in FAKE_NVML_READINGS.items():
        for name, value in readings.items():
            assert {p.value for p in store.metric_history(RUN_ID, f"system/gpu.{device}.{name}")} == {value}

    cpu = store.metric_history(RUN_ID, "system/cpu.percent")
    busy = [p.value for p in cpu if p.step == 0]
    idle = [p.value for p in cpu if p.step == 1][1:]  # the first idle sample may straddle the switch
    assert len(busy) >= 2 and len(idle) >= 1, cpu
    assert max(busy) >= 25, busy  # a busy loop holds one core (less on a loaded machine)
    assert max(idle) < min(busy) / 2, (busy, idle)  # relative: a loaded machine slows both phases
    times = [p.timestamp_ms for p in cpu]
    assert times == sorted(times) and all(800 <= b - a <= 5000 for a, b in zip(times, times[1:])), times
    rss = store.metric_history(RUN_ID, "system/memory.rss_bytes")
    assert all(5 * 2**20 < p.value < 4 * 2**30 for p in rss), rss
    # system points carry the trainer's step and never move it
    latest = store.latest_metrics([RUN_ID])[RUN_ID]
    assert max(v.step for v in latest.values()) == latest["loss"].step == 1
