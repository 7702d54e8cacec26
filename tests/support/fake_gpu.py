"""Stand-ins for a GPU, which this machine lacks: a fake ``libnvidia-ml.so.1`` compiled from C with
fixed readings, and a fake ``nvidia-smi``. The only fakes the tests use (nothing else cannot exist here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# Two devices. Device 1 has no power sensor (NVML_ERROR_NOT_SUPPORTED), as some boards do.
FAKE_NVML_DEVICES = 2
FAKE_NVML_READINGS = {
    0: {"utilization_percent": 37.0, "memory_used_bytes": 3 * 2**30, "memory_total_bytes": 80 * 2**30,
        "temperature_celsius": 61.0, "power_watts": 215.5},
    1: {"utilization_percent": 88.0, "memory_used_bytes": 5 * 2**30, "memory_total_bytes": 80 * 2**30,
        "temperature_celsius": 70.0},
}

FAKE_NVML_C = r"""
typedef struct { unsigned int gpu, memory; } util_t;
typedef struct { unsigned long long total, free, used; } mem_t;
static const unsigned int UTIL[] = {37, 88}, TEMP[] = {61, 70};
static const unsigned long long USED[] = {3ULL << 30, 5ULL << 30}, TOTAL = 80ULL << 30;
static int ready = 0;
static int dev(void *h) { return (int)(long)h - 1; }
int nvmlInit_v2(void) { ready = 1; return 0; }
int nvmlShutdown(void) { ready = 0; return 0; }
int nvmlDeviceGetCount_v2(unsigned int *n) { if (!ready) return 1; *n = 2; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) {
    if (i > 1) return 2; *h = (void *)(long)(i + 1); return 0; }
int nvmlDeviceGetUtilizationRates(void *h, util_t *u) { u->gpu = UTIL[dev(h)]; u->memory = 10; return 0; }
int nvmlDeviceGetMemoryInfo(void *h, mem_t *m) {
    m->total = TOTAL; m->used = USED[dev(h)]; m->free = TOTAL - m->used; return 0; }
int nvmlDeviceGetTemperature(void *h, int sensor, unsigned int *t) {
    if (sensor != 0) return 2; *t = TEMP[dev(h)]; return 0; }
int nvmlDeviceGetPowerUsage(void *h, unsigned int *mw) { if (dev(h) == 1) return 3; *mw = 215500; return 0; }
"""

# What `nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw
# --format=csv,noheader,nounits` prints on a two-GPU machine whose second board reports no power.
FAKE_NVIDIA_SMI_ROWS = "0, 12, 2048, 40960, 45, 98.25\n1, 0, 0, 40960, 40, [N/A]\n"
FAKE_NVIDIA_SMI_READINGS = {
    0: {"utilization_percent": 12.0, "memory_used_bytes": 2048 * 2**20, "memory_total_bytes": 40960 * 2**20,
        "temperature_celsius": 45.0, "power_watts": 98.25},
    1: {"utilization_percent": 0.0, "memory_used_bytes": 0.0, "memory_total_bytes": 40960 * 2**20,
        "temperature_celsius": 40.0},
}


def build_fake_nvml(directory: Path, source: str = FAKE_NVML_C) -> Path:
    """Compile ``source`` into ``directory/libnvidia-ml.so.1`` with gcc; returns its path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the fake NVML library (apt-get install gcc)")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fake_nvml.c").write_text(source)
    lib = directory / "libnvidia-ml.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(directory / "fake_nvml.c")], check=True)
    return lib


def install_fake_nvidia_smi(bin_dir: Path, rows: str = FAKE_NVIDIA_SMI_ROWS, hang: bool = False) -> Path:
    """An ``nvidia-smi`` in ``bin_dir`` that prints ``rows`` for a ``--query-gpu``, or with ``hang``
    never answers (one process, as the real one, so a timeout's kill ends it)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    answer = "exec sleep 600\n" if hang else f"printf '%s' '{rows}'\n"
    script.write_text('#!/bin/sh\ncase "$1" in --query-gpu=*) ;; *) exit 9 ;; esac\n' + answer)
    script.chmod(0o755)
    return script
