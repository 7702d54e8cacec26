"""The training-side SDK. Standard library only: training images must not need anything else.

Every call appends to ``<run dir>/records.jsonl`` through an in-memory buffer that a background
thread writes out; nothing here touches the network. The ingest agent (``cairn agent``, the
sidecar in a cluster) commits that file to the store exactly once.

Settings come from the environment, so code written for a laptop runs unchanged under
``cairn run`` or the operator:

``CAIRN_RUN_ID``        attach to a run created elsewhere (the operator, ``cairn run``)
``CAIRN_RUN_DIR``       where records go (default ``./cairn-runs/<run id>``)
``CAIRN_EXPERIMENT``    experiment name (default ``default``)
``CAIRN_RUN_NAME``      display name
``CAIRN_PARAMS``        JSON object of parameters; these override ``init(config=...)`` defaults
``CAIRN_PARAMS_FILE``   the same, as a file (default ``<run dir>/params.json`` when present)
``CAIRN_CODE_REPOSITORY``, ``CAIRN_CODE_COMMIT``  code version, when git is not in the image
``CAIRN_MODE=disabled`` every call becomes a no-op
``CAIRN_SYSTEM_METRICS=off``  no ``system/*`` metrics (also ``init(system_metrics=False)``)
``CAIRN_SYSTEM_METRICS_INTERVAL``  seconds between system samples (default 10, at least 1)
``CAIRN_NVML_LIBRARY``  path of ``libnvidia-ml.so.1`` where the loader does not find it (and in tests)

System metrics: a daemon thread samples CPU, memory and GPUs and logs them as ``system/*`` metrics
(``cairn.sdk.system`` lists the keys); it stops at ``finish()``.

Checkpoints: ``cairn.save_checkpoint(path_or_dir, step=...)`` keeps a copy under
``checkpoints/<step>/`` of the run directory (the sidecar uploads it). When a retried attempt
starts, the latest uploaded checkpoint is already restored there and ``cairn.resume_from`` says
where (``.path``, ``.step``); it is None on a fresh start.

Evaluation: ``cairn.log_example(id, {"correct": 1.0}, slices=["lang:de"])`` records one example's
result (finite numbers per metric, optional slice labels); the store keeps one row per (run, example
id), the last one logged winning, so an evaluation that is retried or resumed may log an example again.

Datasets: with ``spec.dataset.stage`` the dataset is already copied in when the trainer starts,
and ``cairn.dataset_dir`` names the directory (``CAIRN_DATASET_DIR``); None otherwise.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import threading
import time
import uuid
from typing import Any, Mapping, NamedTuple

from cairn import rundir
from cairn.rundir import Env, RunStatus
from cairn.sdk.environment import capture_environment, code_version
from cairn.sdk.system import DEFAULT_INTERVAL_S, NVML_LIBRARY, SystemSampler

FLUSH_INTERVAL_S = 1.0
FLUSH_AT_RECORDS = 5000
# While the run directory cannot be written (a full disk), records wait in memory up to these bounds;
# past them new records are dropped and counted, never the ones already kept.
MAX_BUFFERED_RECORDS = 200_000
MAX_UNWRITTEN_BYTES = 64 * 1024 * 1024
FINISH_WRITE_TIMEOUT_S = 30.0


class Config(dict):
    """The run's parameters: a dict that also allows ``config.lr``.

    Changes made after ``init`` are recorded as parameters of the run.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        _record_params({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        changes = dict(*args, **kwargs)
        super().update(changes)
        _record_params(changes)

    def _replace(self, values: Mapping[str, Any]) -> None:
        super().clear()
        super().update(values)


class Resume(NamedTuple):
    """The checkpoint this attempt starts from (restored before the trainer started)."""

    path: str  # what was passed to save_checkpoint, restored: a file or a directory
    step: int
    dir: str  # <run dir>/checkpoints/<step>
    attempt: int | None  # this attempt
    from_attempt: int | None  # the attempt that saved it


def _read_resume(run_dir: str | None) -> Resume | None:
    if not run_dir:
        return None
    try:
        with open(os.path.join(run_dir, rundir.RESUME_FILE), encoding="utf-8") as f:
            doc = json.load(f)
        return Resume(doc["path"], int(doc["step"]), doc["dir"], doc.get("attempt"), doc.get("from_attempt"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


config = Config()
run: "Run | None" = None


def __getattr__(name: str) -> Any:
    # Read when asked for, never at import: importing the SDK must not touch files or depend on the
    # environment of the moment. init() sets resume_from for the run it starts.
    if name == "resume_from":
        return _read_resume(os.environ.get(Env.RUN_DIR))
    if name == "dataset_dir":
        return os.environ.get(Env.DATASET_DIR) or None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _coerce(value: Any) -> Any:
    """JSON fallback for numpy scalars and friends: anything with ``__float__``/``__int__``."""
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if hasattr(value, "__int__") and not hasattr(value, "__float__"):
        return int(value)
    if hasattr(value, "__float__"):
        return float(value)
    return repr(value)


def _dumps(record: dict) -> str:
    return json.dumps(record, default=_coerce, separators=(",", ":"))


def _read_injected_params(run_dir: str) -> dict:
    if os.environ.get(Env.PARAMS):
        return json.loads(os.environ[Env.PARAMS])
    path = os.environ.get(Env.PARAMS_FILE) or os.path.join(run_dir, rundir.PARAMS_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


class Run:
    """One tracked run, writing to its run directory."""

    def __init__(
        self,
        run_id: str,
        run_dir: str,
        experiment: str,
        name: str | None,
        disabled: bool = False,
    ) -> None:
        self.id = run_id
        self.dir = run_dir
        self.experiment = experiment
        self.name = name
        self.disabled = disabled
        self._seq = 0
        self._next_step = 0
        self._buffer: list[tuple] = []
        self._unwritten = b""  # serialised records a failed write left behind, possibly from mid-line
        self._dropped = 0  # records refused while the buffer was full
        self._write_error: str | None = None  # set while writes fail; one warning per outage
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._file = None
        self._flusher: threading.Thread | None = None
        self.system_sampler: SystemSampler | None = None
        if not disabled:
            os.makedirs(os.path.join(run_dir, rundir.ARTIFACTS_DIR), exist_ok=True)
            self._file = open(os.path.join(run_dir, rundir.RECORDS_FILE), "ab", buffering=0)
            self._flusher = threading.Thread(target=self._flush_loop, name="cairn-flush", daemon=True)
            self._flusher.start()

    # -- hot path -------------------------------------------------------------------------------
    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """Record metric values at a step (the next step after the last one when omitted).

        Costs a dict copy and a list append; serialisation happens on the flush thread.
        """
        if self.disabled:
            return
        with self._lock:
            if len(self._buffer) >= MAX_BUFFERED_RECORDS:
                self._dropped += 1
                return
            if step is None:
                step = self._next_step
            self._next_step = step + 1
            self._buffer.append((rundir.METRIC, self._seq, step, time.time(), dict(data)))
            self._seq += 1
            if len(self._buffer) >= FLUSH_AT_RECORDS:
                self._wake.set()

    def _log_system(self, values: dict[str, float]) -> None:
        """Record system metrics at the trainer's latest step, which they never move."""
        with self._lock:
            if self._closed:
                return
            if len(self._buffer) >= MAX_BUFFERED_RECORDS:
                self._dropped += 1
                return
            step = max(self._next_step - 1, 0)
            self._buffer.append((rundir.METRIC, self._seq, step, time.time(), values))
            self._seq += 1

    def start_system_metrics(self, interval: float = DEFAULT_INTERVAL_S, nvml_library: str = NVML_LIBRARY) -> None:
        if self.disabled or self.system_sampler is not None:
            return
        self.system_sampler = SystemSampler(self._log_system, interval, nvml_library).start()

    # -- everything else ------------------------------------------------------------------------
    def _append(self, kind: str, payload: dict) -> None:
        if self.disabled:
            return
        with self._lock:
            if len(self._buffer) >= MAX_BUFFERED_RECORDS and kind != rundir.FINISH:
                self._dropped += 1
                return
            self._buffer.append((kind, self._seq, payload))
            self._seq += 1

    def _serialise(self, item: tuple) -> str:
        if item[0] == rundir.METRIC:
            _, seq, step, ts, values = item
            return _dumps({"seq": seq, "type": rundir.METRIC, "step": step, "ts": ts, "values": values})
        kind, seq, payload = item
        return _dumps({"seq": seq, "type": kind, **payload})

    def flush(self) -> None:
        """Write buffered records to the run directory.

        A failed write (``OSError``, e.g. a full disk) raises after keeping every record not yet
        written, a half-written line's remainder included, so the next flush completes the file
        exactly; the backlog is bounded (``MAX_BUFFERED_RECORDS``, ``MAX_UNWRITTEN_BYTES``).
        """
        if self._file is None:
            return
        with self._write_lock:
            with self._lock:
                pending, self._buffer = self._buffer, []
            data = self._unwritten + "".join(self._serialise(item) + "\n" for item in pending).encode("utf-8")
            if len(data) > MAX_UNWRITTEN_BYTES:
                keep = data.rfind(b"\n", 0, MAX_UNWRITTEN_BYTES) + 1
                self._dropped += data.count(b"\n", keep)
                data = data[:keep]
            written = 0
            try:
                while written < len(data):
                    written += os.write(self._file.fileno(), data[written:])
            except OSError as exc:
                self._unwritten = data[written:]
                if self._write_error is None:
                    self._write_error = str(exc)
                    print(f"cairn: cannot write records to {self.dir} ({exc}); keeping them in memory "
                          f"(up to {MAX_BUFFERED_RECORDS} records) until it can", file=sys.stderr)
                raise
            self._unwritten = b""
            if self._write_error is not None:
                self._write_error = None
                lost = f"; {self._dropped} record(s) beyond the bound were dropped" if self._dropped else ""
                print(f"cairn: records are written to {self.dir} again{lost}", file=sys.stderr)

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            try:
                self.flush()
            except OSError:  # a full disk must not stop training; flush kept the records and warned
                pass

    def log_example(self, example_id: str | int, metrics: Mapping[str, float],
                    slices: list[str] | None = None) -> None:
        """Record one evaluation example: its id, its metrics and optional slice labels.

        ``cairn.log_example("q-17", {"correct": 1.0, "latency_ms": 41.5}, slices=["lang:de", "long"])``.
        Logging the same id again replaces what was logged for it (the last one wins). The agent checks
        the limits (``cairn.rundir.MAX_EXAMPLE_*``, finite numbers) and rejects and counts a bad record.
        """
        payload = {"id": example_id, "metrics": dict(metrics), "ts": time.time()}
        if slices:
            payload["slices"] = list(slices)
        self._append(rundir.EXAMPLE, payload)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._append(rundir.PARAMS, {"params": dict(params)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._append(rundir.TAGS, {"tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str, name: str | None = None) -> str:
        """Keep a file (or a directory, recursively) as an artifact of the run.

        The file is hard-linked (or copied) into ``<run dir>/artifacts/`` so later changes to the
        original do not change what was recorded. Returns the artifact's path in the run.
        """
        if self.disabled:
            return path
        name = name or os.path.basename(os.path.normpath(path))
        target = os.path.join(self.dir, rundir.ARTIFACTS_DIR, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.abspath(path) != os.path.abspath(target):
            if os.path.isdir(path):
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                if os.path.exists(target):
                    os.unlink(target)
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)
        files = (
            [os.path.join(dp, f) for dp, _, fs in os.walk(target) for f in fs]
            if os.path.isdir(target)
            else [target]
        )
        for f in sorted(files):
            self._append(rundir.ARTIFACT, {"path": os.path.relpath(f, self.dir)})
        return os.path.relpath(target, self.dir)

    def save_checkpoint(self, path: str, step: int | None = None) -> str:
        """Keep a checkpoint (a file or a directory) of ``step`` (default: the last logged step).

        It is copied to ``<run dir>/checkpoints/<step>/<name>`` — a copy, so the caller may
        overwrite its file for the next checkpoint — and appears there whole (written under a
        hidden name, then renamed). Saving a path already inside that directory copies nothing.
        Returns the checkpoint's path in the run directory.
        """
        if self.disabled:
            return path
        if step is None:
            with self._lock:
                step = max(self._next_step - 1, 0)
        step = int(step)
        if step < 0:
            raise ValueError(f"checkpoint steps are >= 0, not {step}")
        base = os.path.join(self.dir, rundir.CHECKPOINTS_DIR)
        final = os.path.join(base, str(step))
        source = os.path.abspath(path)
        name = os.path.basename(os.path.normpath(path))
        if not os.path.exists(source):
            raise FileNotFoundError(path)
        if source != final and not source.startswith(final + os.sep):
            tmp = os.path.join(base, f".{step}-{uuid.uuid4().hex[:8]}")
            os.makedirs(tmp)
            target = os.path.join(tmp, name)
            if os.path.isdir(source):
                shutil.copytree(source, target)
            else:
                shutil.copyfile(source, target)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
            source = os.path.join(final, name)
        files = ([os.path.join(dp, f) for dp, _, fs in os.walk(source) for f in fs]
                 if os.path.isdir(source) else [source])
        for f in sorted(files):
            self._append(rundir.ARTIFACT, {"path": os.path.relpath(f, self.dir)})
        return os.path.relpath(source, self.dir)

    def finish(self, exit_code: int | None = 0, status: RunStatus | str | None = None) -> None:
        """Record how the run ended: FINISHED for exit code 0 (or None), FAILED otherwise, unless
        ``status`` (a final one) says so."""
        if self._closed:
            return
        if status is None:
            status = RunStatus.FINISHED if not exit_code else RunStatus.FAILED
        status = RunStatus(status)
        if not status.is_final:
            raise ValueError(f"a run finishes as FINISHED, FAILED or KILLED, not {status}")
        if self.system_sampler is not None:
            self.system_sampler.stop()
        with self._lock:
            self._buffer.append((rundir.FINISH, self._seq, {"status": status.value, "exit_code": exit_code,
                                                           "ts": time.time()}))
            self._seq += 1
            self._closed = True
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        deadline = time.monotonic() + FINISH_WRITE_TIMEOUT_S
        while True:
            try:
                self.flush()
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    print(f"cairn: gave up writing the last records to {self.dir} after "
                          f"{FINISH_WRITE_TIMEOUT_S:.0f} s: {exc}", file=sys.stderr)
                    return
                time.sleep(1.0)
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def init(
    experiment: str | None = None,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    run_dir: str | None = None,
    run_id: str | None = None,
    capture_env: bool = True,
    system_metrics: bool = True,
) -> Run:
    """Start (or attach to) a run and return it; also sets ``cairn.run`` and ``cairn.config``.

    ``config`` holds the code's defaults; parameters injected by ``cairn run -p`` or a
    TrainingRun override them, so the same script serves sweeps unchanged. ``system_metrics``
    (unless ``CAIRN_SYSTEM_METRICS=off``) samples CPU, memory and GPUs as ``system/*`` metrics.
    """
    global run
    if run is not None and not run._closed:
        return run
    disabled = os.environ.get(Env.MODE, "").lower() == "disabled"
    run_id = run_id or os.environ.get(Env.RUN_ID) or str(uuid.uuid4())
    run_dir = run_dir or os.environ.get(Env.RUN_DIR) or os.path.join("cairn-runs", run_id)
    experiment = experiment or os.environ.get(Env.EXPERIMENT) or "default"
    name = name or os.environ.get(Env.RUN_NAME)

    params = dict(config or {})
    params.update(_read_injected_params(run_dir))
    globals()["config"]._replace(params)

    run = Run(run_id, os.path.abspath(run_dir), experiment, name, disabled=disabled)
    resume = globals()["resume_from"] = _read_resume(run.dir)
    if disabled:
        return run
    if resume is not None:
        run._next_step = resume.step + 1  # cairn.log() without a step continues after the checkpoint
    code = code_version() if capture_env else {}
    if os.environ.get(Env.CODE_COMMIT):
        code = {
            "repository": os.environ.get(Env.CODE_REPOSITORY),
            "commit": os.environ[Env.CODE_COMMIT],
            "dirty": False,
        }
    run._append(
        rundir.RUN,
        {
            "run_id": run_id,
            "experiment": experiment,
            "name": name,
            "params": params,
            "tags": {k: str(v) for k, v in (tags or {}).items()},
            "environment": capture_environment() if capture_env else {},
            "code": code,
            "ts": time.time(),
        },
    )
    run.flush()
    if system_metrics and _system_metrics_on():
        run.start_system_metrics(_system_metrics_interval(), os.environ.get(Env.NVML_LIBRARY) or NVML_LIBRARY)
    atexit.register(_finish_at_exit)
    _install_excepthook()
    return run


def _system_metrics_on() -> bool:
    return os.environ.get(Env.SYSTEM_METRICS, "").strip().lower() not in ("off", "false", "0", "no")


def _system_metrics_interval() -> float:
    text = os.environ.get(Env.SYSTEM_METRICS_INTERVAL, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        return float(text)
    except ValueError:
        print(f"cairn: {Env.SYSTEM_METRICS_INTERVAL}={text!r} is not a number of seconds; "
              f"sampling every {DEFAULT_INTERVAL_S:.0f} s", file=sys.stderr)
        return DEFAULT_INTERVAL_S


def _record_params(changes: Mapping[str, Any]) -> None:
    if run is not None and not run._closed:
        run.log_params(changes)


def _require_run() -> Run:
    if run is None:
        raise RuntimeError("no active run: call cairn.init() first")
    return run


def log(data: Mapping[str, Any], step: int | None = None) -> None:
    """Record metrics, e.g. ``cairn.log({"loss": 0.3, "acc": 0.9}, step=10)``."""
    _require_run().log(data, step)


def log_example(example_id: str | int, metrics: Mapping[str, float], slices: list[str] | None = None) -> None:
    """Record one evaluation example, e.g. ``cairn.log_example("q-17", {"correct": 1.0}, slices=["lang:de"])``."""
    _require_run().log_example(example_id, metrics, slices)


def log_artifact(path: str, name: str | None = None) -> str:
    return _require_run().log_artifact(path, name)


def save_checkpoint(path: str, step: int | None = None) -> str:
    """Keep a checkpoint of ``step``; a retried attempt finds the latest in ``cairn.resume_from``."""
    return _require_run().save_checkpoint(path, step)


def finish(exit_code: int | None = 0) -> None:
    global run
    if run is not None:
        run.finish(exit_code)


_failed = False


def _finish_at_exit() -> None:
    if run is not None and not run._closed:
        run.finish(1 if _failed else 0)


def _install_excepthook() -> None:
    previous = sys.excepthook

    def hook(exc_type, exc, tb):  # noqa: ANN001
        global _failed
        _failed = True
        previous(exc_type, exc, tb)

    sys.excepthook = hook
