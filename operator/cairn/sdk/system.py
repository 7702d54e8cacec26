"""System metrics of the training process: CPU, memory and GPUs, sampled every few seconds.

A daemon thread started by ``cairn.init()`` logs ``system/*`` metrics of the run through the normal
record path, as W&B does. Standard library only: GPUs are read through NVML with ``ctypes``
(``libnvidia-ml.so.1``), or with ``nvidia-smi`` when the library cannot be loaded but the binary
exists. Every probe is best-effort: what cannot be read is left out, never an error for the trainer.

Keys (``<i>`` is the NVML device index, as the container sees its GPUs):

``system/cpu.percent``                     CPU of the process and its descendants, % of one core
``system/cpu.container_percent``           CPU of the container (cgroup), % of one core
``system/memory.rss_bytes``                resident memory of the process and its descendants (summed)
``system/memory.container_bytes``          memory of the container (cgroup ``memory.current``)
``system/memory.container_limit_bytes``    its limit (``memory.max``), when it has one
``system/gpu.<i>.utilization_percent``     GPU busy time, %
``system/gpu.<i>.memory_used_bytes``, ``system/gpu.<i>.memory_total_bytes``
``system/gpu.<i>.temperature_celsius``, ``system/gpu.<i>.power_watts``

System points carry the trainer's latest step (they never move it) and the time they were sampled:
plot them against time.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from cairn.rundir import SYSTEM_METRIC_PREFIX as PREFIX

log = logging.getLogger("cairn.sdk.system")

DEFAULT_INTERVAL_S = 10.0
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 3600.0
STOP_WAIT_S = 1.0  # finish() waits this long for a sample in progress; a later one is discarded anyway
NVML_LIBRARY = "libnvidia-ml.so.1"
NVIDIA_SMI_TIMEOUT_S = 5.0
MAX_PROCESSES = 8192  # /proc entries looked at per sample to find the process tree
MAX_GPUS = 64
UNLIMITED_BYTES = 1 << 62  # cgroup v1 writes "no limit" as a number near 2^63
NVIDIA_SMI_FIELDS = ("index", "utilization.gpu", "memory.used", "memory.total", "temperature.gpu", "power.draw")
MIB = 1024 * 1024


# -- pure parsing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime
    children_ticks: int  # cutime + cstime: children that exited and were waited for
    rss_pages: int


def parse_proc_stat(text: str) -> ProcStat:
    """One ``/proc/<pid>/stat`` line. The command name may hold spaces and parentheses, so the fields
    are counted from the last ``)``."""
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    pid = int(head.split("(", 1)[0])
    # fields[0] is field 3 of proc(5) (state): field N is fields[N - 3]
    return ProcStat(pid=pid, ppid=int(fields[1]), cpu_ticks=int(fields[11]) + int(fields[12]),
                    children_ticks=int(fields[13]) + int(fields[14]), rss_pages=int(fields[21]))


def descendants(root: int, parents: Mapping[int, int]) -> set[int]:
    """``root`` and every process below it, from a pid → parent pid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def parse_cgroup_cpu_stat(text: str) -> float | None:
    """CPU seconds from cgroup v2 ``cpu.stat`` (``usage_usec``)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "usage_usec":
            return int(value) / 1e6
    return None


def parse_memory_limit(text: str) -> int | None:
    """A cgroup memory limit in bytes; None for none (``max``, or v1's number near 2^63)."""
    text = text.strip()
    if text == "max":
        return None
    value = int(text)
    return None if value >= UNLIMITED_BYTES else value


def percent(used_s: float, elapsed_s: float) -> float:
    """CPU seconds used over wall seconds, as % of one core (never negative: a child that exited
    unwaited takes its seconds with it)."""
    return max(0.0, 100.0 * used_s / elapsed_s) if elapsed_s > 0 else 0.0


def bounded_interval(seconds: float) -> float:
    if not math.isfinite(seconds):
        return DEFAULT_INTERVAL_S
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, seconds))


def _smi_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_nvidia_smi_query(csv_text: str) -> dict[str, float]:
    """``system/gpu.*`` values from ``nvidia-smi --query-gpu=<NVIDIA_SMI_FIELDS> --format=csv,noheader,nounits``."""
    out: dict[str, float] = {}
    for line in csv_text.splitlines()[:MAX_GPUS]:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(NVIDIA_SMI_FIELDS) or not parts[0].isdigit():
            continue
        index, util, used_mib, total_mib, temp, power = parts
        values = {"utilization_percent": _smi_number(util), "temperature_celsius": _smi_number(temp),
                  "power_watts": _smi_number(power)}
        used, total = _smi_number(used_mib), _smi_number(total_mib)
        values["memory_used_bytes"] = None if used is None else used * MIB
        values["memory_total_bytes"] = None if total is None else total * MIB
        out.update({f"{PREFIX}gpu.{index}.{name}": v for name, v in values.items() if v is not None})
    return out


# -- GPUs ---------------------------------------------------------------------------------------

class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


NVML_SUCCESS = 0
NVML_TEMPERATURE_GPU = 0


class Nvml:
    """The few NVML calls the sampler needs, through ``ctypes``."""

    def __init__(self, library: str) -> None:
        self.lib = ctypes.CDLL(library)
        for name in ("nvmlInit_v2", "nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2",
                     "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetTemperature",
                     "nvmlDeviceGetPowerUsage", "nvmlShutdown"):
            getattr(self.lib, name).restype = ctypes.c_int  # AttributeError when the library lacks one
        if self.lib.nvmlInit_v2() != NVML_SUCCESS:
            raise OSError(f"nvmlInit failed in {library}")
        count = ctypes.c_uint()
        if self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != NVML_SUCCESS:
            raise OSError(f"nvmlDeviceGetCount failed in {library}")
        self.handles = []
        for i in range(min(count.value, MAX_GPUS)):
            handle = ctypes.c_void_p()
            if self.lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(handle)) == NVML_SUCCESS:
                self.handles.append((i, handle))

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        lib = self.lib
        for i, handle in self.handles:
            key = f"{PREFIX}gpu.{i}."
            util, mem, temp, power = _Utilization(), _Memory(), ctypes.c_uint(), ctypes.c_uint()
            if lib.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(util)) == NVML_SUCCESS:
                out[key + "utilization_percent"] = float(util.gpu)
            if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) == NVML_SUCCESS:
                out[key + "memory_used_bytes"] = float(mem.used)
                out[key + "memory_total_bytes"] = float(mem.total)
            if lib.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU, ctypes.byref(temp)) == NVML_SUCCESS:
                out[key + "temperature_celsius"] = float(temp.value)
            if lib.nvmlDeviceGetPowerUsage(handle, ctypes.byref(power)) == NVML_SUCCESS:
                out[key + "power_watts"] = power.value / 1000.0  # milliwatts
        return out

    def close(self) -> None:
        self.lib.nvmlShutdown()


def nvidia_smi_sample() -> dict[str, float]:
    done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}",
                           "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    return parse_nvidia_smi_query(done.stdout) if done.returncode == 0 else {}


def open_gpu_source(library: str) -> tuple[str, Callable[[], dict[str, float]] | None, Callable[[], None]]:
    """How GPUs are read here: ("nvml", sample, close), ("nvidia-smi", sample, noop) or ("none", None, noop)."""
    try:
        nvml = Nvml(library)
    except (OSError, AttributeError) as exc:
        if shutil.which("nvidia-smi"):
            log.debug("NVML unavailable (%s); reading GPUs with nvidia-smi", exc)
            return "nvidia-smi", nvidia_smi_sample, lambda: None
        log.debug("no GPU metrics: NVML unavailable (%s) and no nvidia-smi", exc)
        return "none", None, lambda: None
    if not nvml.handles:
        log.debug("no GPU metrics: NVML sees no device")
        nvml.close()
        return "none", None, lambda: None
    return "nvml", nvml.sample, nvml.close


# -- CPU and memory -----------------------------------------------------------------------------

class HostReader:
    """CPU seconds and memory of the process tree (``/proc``) and of its container (cgroup v2, else v1)."""

    def __init__(self, pid: int | None = None, proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> None:
        self.pid = pid or os.getpid()
        self.proc = proc
        self.cgroup = cgroup
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        self.page_bytes = os.sysconf("SC_PAGE_SIZE")

    def _read(self, *parts: str) -> str | None:
        try:
            with open(os.path.join(*parts), encoding="ascii") as f:
                return f.read()
        except (OSError, ValueError):
            return None

    def process_tree(self) -> tuple[float, int] | None:
        """CPU seconds and summed RSS bytes of this process and its descendants."""
        stats: dict[int, ProcStat] = {}
        try:
            entries = os.scandir(self.proc)
        except OSError:
            return None
        with entries:
            for n, entry in enumerate(entries):
                if n >= MAX_PROCESSES:
                    break
                if entry.name.isdigit():
                    text = self._read(self.proc, entry.name, "stat")
                    if text:
                        try:
                            stat = parse_proc_stat(text)
                        except (ValueError, IndexError):
                            continue
                        stats[stat.pid] = stat
        own = stats.get(self.pid)
        if own is None:
            return None
        tree = descendants(self.pid, {pid: s.ppid for pid, s in stats.items()})
        ticks = own.children_ticks + sum(stats[pid].cpu_ticks for pid in tree)
        rss = sum(stats[pid].rss_pages for pid in tree) * self.page_bytes
        return ticks * self.tick_s, rss

    def container_cpu_s(self) -> float | None:
        text = self._read(self.cgroup, "cpu.stat")
        if text is not None:
            return parse_cgroup_cpu_stat(text)
        text = self._read(self.cgroup, "cpuacct", "cpuacct.usage")
        return int(text) / 1e9 if text and text.strip().isdigit() else None

    def container_memory(self) -> tuple[int | None, int | None]:
        """Bytes in use and the limit (None: none or unreadable)."""
        for used_file, limit_file in (("memory.current", "memory.max"),
                                      (os.path.join("memory", "memory.usage_in_bytes"),
                                       os.path.join("memory", "memory.limit_in_bytes"))):
            used = self._read(self.cgroup, used_file)
            if used is not None and used.strip().isdigit():
                limit = self._read(self.cgroup, limit_file)
                try:
                    return int(used), None if limit is None else parse_memory_limit(limit)
                except ValueError:
                    return int(used), None
        return None, None


# -- the sampler --------------------------------------------------------------------------------

class SystemSampler:
    """Samples every ``interval`` seconds on a daemon thread and hands each sample to ``emit``.

    Never raises into the trainer: a sample that fails is skipped (the first failure is logged)."""

    def __init__(self, emit: Callable[[dict[str, float]], None], interval: float = DEFAULT_INTERVAL_S,
                 nvml_library: str = NVML_LIBRARY, host: HostReader | None = None) -> None:
        self.emit = emit
        self.interval = bounded_interval(interval)
        self.nvml_library = nvml_library
        self.host = host or HostReader()
        self.gpu_source = "none"
        self.samples = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cairn-system-metrics", daemon=True)
        self._last: tuple[float, float | None, float | None] | None = None  # (monotonic, tree cpu s, container cpu s)

    def start(self) -> "SystemSampler":
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _loop(self) -> None:
        close: Callable[[], None] = lambda: None  # noqa: E731
        try:
            self.gpu_source, gpu_sample, close = open_gpu_source(self.nvml_library)
            self.sample_once(gpu_sample)  # the first reading only sets the CPU baseline
            while not self._stop.wait(self.interval):
                values = self.sample_once(gpu_sample)
                if values and not self._stop.is_set():
                    self.emit(values)
                    self.samples += 1
        except Exception as exc:  # noqa: BLE001 - system metrics must never disturb training
            log.warning("system metrics stopped: %s: %s", type(exc).__name__, exc)
        finally:
            try:
                close()
            except Exception:  # noqa: BLE001
                pass

    def sample_once(self, gpu_sample: Callable[[], dict[str, float]] | None) -> dict[str, float]:
        """One reading of everything; CPU % needs the previous reading, so the first has none."""
        values: dict[str, float] = {}
        try:
            now = time.monotonic()
            tree = self.host.process_tree()
            container_cpu = self.host.container_cpu_s()
            used, limit = self.host.container_memory()
            if tree is not None:
                values[PREFIX + "memory.rss_bytes"] = float(tree[1])
            if used is not None:
                values[PREFIX + "memory.container_bytes"] = float(used)
            if limit is not None:
                values[PREFIX + "memory.container_limit_bytes"] = float(limit)
            if self._last is not None:
                then, tree_then, container_then = self._last
                if tree is not None and tree_then is not None:
                    values[PREFIX + "cpu.percent"] = percent(tree[0] - tree_then, now - then)
                if container_cpu is not None and container_then is not None:
                    values[PREFIX + "cpu.container_percent"] = percent(container_cpu - container_then, now - then)
            self._last = (now, None if tree is None else tree[0], container_cpu)
            if gpu_sample is not None:
                values.update(gpu_sample())
        except Exception as exc:  # noqa: BLE001 - one bad reading costs its sample, never the thread
            self.failures += 1
            if self.failures == 1:
                log.warning("a system metrics sample failed: %s: %s", type(exc).__name__, exc)
        return values
