"""The contract between the containers of a run pod, in one place. Standard library only; no I/O.

Training code (through the SDK or plain JSON lines), the tracking sidecar, the prepare step, the
pod builder and the CLI agree on what is written here and nowhere else: the run-directory layout
and file names, the record kinds of ``records.jsonl``, the prepare step's exit codes, the run
statuses, and the names of every ``CAIRN_*`` environment variable.
"""

from __future__ import annotations

import enum
import os
import stat

# ---------------------------------------------------------------------------------------------
# Run-directory layout (relative to the run directory)

RECORDS_FILE = "records.jsonl"  # what the SDK writes: one JSON record per line
METRICS_DIR = "metrics"  # metrics/*.jsonl: plain {"step": N, "key": value} lines without the SDK
ARTIFACTS_DIR = "artifacts"  # uploaded by the sidecar
CHECKPOINTS_DIR = "checkpoints"  # checkpoints/<step>/...: uploaded, and restored on a retry
DATASET_DIR = "dataset"  # spec.dataset.stage: the dataset, copied in by the prepare step (not uploaded)
PARAMS_FILE = "params.json"  # the run's parameters, written by the sidecar before the trainer starts
RESUME_FILE = "resume.json"  # written by the prepare step when an attempt resumes from a checkpoint
DATASET_FILE = "dataset.json"  # written by the prepare step: the dataset's digest, object count and bytes
READY_FILE = ".sidecar-ready"  # the sidecar's startup probe waits for it; the trainer starts after
UPLOADS_STATE_FILE = ".cairn-uploads.json"  # what the uploader has put in the object store

# Where the run directory is mounted in a cluster pod.
POD_RUN_DIR = "/cairn/run"

# ---------------------------------------------------------------------------------------------
# Record kinds in records.jsonl (each line also carries "seq" and "type")

RUN = "run"  # run identity, config, environment and code version, written once by init()
METRIC = "metric"  # {"step": int, "ts": float seconds, "values": {key: number}}
PARAMS = "params"  # {"params": {key: scalar}} added after init (config.update)
TAGS = "tags"  # {"tags": {key: str}}
ARTIFACT = "artifact"  # {"path": path relative to the run dir}
FINISH = "finish"  # {"status": "FINISHED"|"FAILED", "exit_code": int|None, "ts": float}
EXAMPLE = "example"  # {"id": str, "metrics": {key: finite number}, "slices": [str], "ts": float}: one eval example

# Metric keys under this prefix are the SDK's system metrics (CPU, memory, GPUs; cairn.sdk.system).
# The sidecar exports them live whatever spec.tracking.exportKeys says.
SYSTEM_METRIC_PREFIX = "system/"

MAX_KEY_LENGTH = 250
MAX_PATH_LENGTH = 1024
# Bounds of an example record: its id, its metrics and its slice labels.
MAX_EXAMPLE_ID_LENGTH = 255
MAX_EXAMPLE_METRICS = 64
MAX_EXAMPLE_SLICES = 32
MAX_SLICE_LENGTH = 128


class UnsafePath(ValueError):
    """A path from the run directory that could name something outside it."""


def safe_relative_path(path: str) -> str:
    """``path`` as the normalised relative POSIX path every artifact is stored and downloaded under.

    Refuses what could reach outside the directory it is joined to: an absolute path, a ``..``
    segment, a backslash, a NUL, an empty path. ``./`` and doubled slashes are dropped.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePath("an empty path")
    if len(path) > MAX_PATH_LENGTH:
        raise UnsafePath(f"a path longer than {MAX_PATH_LENGTH} characters")
    if "\0" in path or "\\" in path:
        raise UnsafePath(f"{path[:200]!r} holds a NUL or a backslash")
    if path.startswith("/"):
        raise UnsafePath(f"{path[:200]!r} is absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"{path[:200]!r} has a '..' segment")
    if not parts:
        raise UnsafePath(f"{path[:200]!r} names no file")
    return "/".join(parts)


def why_not_regular_file(root: str | os.PathLike, rel: str) -> str | None:
    """None when ``root/rel`` is a regular file reached without following any symbolic link; else why
    not, one of ``missing``, ``symlink``, ``fifo``, ``socket``, ``device``, ``directory``, ``not_a_directory``
    (a component on the way is a file)."""
    current = os.fspath(root)
    parts = rel.split("/")
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except OSError:
            return "missing"
        if stat.S_ISLNK(mode):
            return "symlink"
        if i < len(parts) - 1 and not stat.S_ISDIR(mode):
            return "not_a_directory"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISDIR(mode):
        return "directory"
    return "device"


def regular_file_below(root: str | os.PathLike, rel: str) -> bool:
    """Whether ``root/rel`` is a regular file reached without following any symbolic link."""
    return why_not_regular_file(root, rel) is None


class RunStatus(str, enum.Enum):
    """A run's status in the store, shared by the SDK, agent, controller and CLI."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)


# ---------------------------------------------------------------------------------------------
# Exit codes of the prepare step (an init container); anything else non-zero is transient.

PREPARE_TRANSIENT_EXIT = 1  # the stores stayed away past the prepare timeout: retried free
PREPARE_DATASET_MISMATCH_EXIT = 12  # the dataset's digest differs from spec.dataset.sha256
PREPARE_DATASET_UNAVAILABLE_EXIT = 13  # no object store settings, no such bucket, access denied

# ---------------------------------------------------------------------------------------------
# Environment variables. Every CAIRN_* name the project reads or sets is spelled here once.


class Env:
    """``CAIRN_*`` variable names, grouped by who reads them."""

    # The trainer (the SDK) and local mode
    RUN_ID = "CAIRN_RUN_ID"
    RUN_DIR = "CAIRN_RUN_DIR"
    RUN_NAME = "CAIRN_RUN_NAME"
    EXPERIMENT = "CAIRN_EXPERIMENT"
    PARAMS = "CAIRN_PARAMS"
    PARAMS_FILE = "CAIRN_PARAMS_FILE"
    ATTEMPT = "CAIRN_ATTEMPT"
    NAMESPACE = "CAIRN_NAMESPACE"
    MODE = "CAIRN_MODE"  # "disabled": every SDK call is a no-op
    HOME = "CAIRN_HOME"  # local mode's store and run directories
    CODE_REPOSITORY = "CAIRN_CODE_REPOSITORY"
    CODE_COMMIT = "CAIRN_CODE_COMMIT"
    DATASET_URI = "CAIRN_DATASET_URI"
    DATASET_SHA256 = "CAIRN_DATASET_SHA256"
    DATASET_DIR = "CAIRN_DATASET_DIR"
    MODEL_URI = "CAIRN_MODEL_URI"  # an Evaluation's runs: where the evaluated version's files are
    SYSTEM_METRICS = "CAIRN_SYSTEM_METRICS"  # "off" (or "false", "0"): no system/* metrics
    SYSTEM_METRICS_INTERVAL = "CAIRN_SYSTEM_METRICS_INTERVAL"  # seconds between samples (at least 1)
    NVML_LIBRARY = "CAIRN_NVML_LIBRARY"  # path of libnvidia-ml.so.1, for odd installs and tests

    # The store (sidecar, prepare step, operator, CLI)
    DATABASE_URL = "CAIRN_DATABASE_URL"

    # The sidecar
    HEADLINE_METRIC = "CAIRN_HEADLINE_METRIC"
    EXPORT_KEYS = "CAIRN_EXPORT_KEYS"
    DRAIN_TIMEOUT = "CAIRN_DRAIN_TIMEOUT"
    MAX_BATCH_POINTS = "CAIRN_MAX_BATCH_POINTS"
    TERMINATION_LOG = "CAIRN_TERMINATION_LOG"

    # cairn server (cairn.server.settings)
    SERVER_HOST = "CAIRN_SERVER_HOST"
    SERVER_PORT = "CAIRN_SERVER_PORT"
    SERVER_AUTH = "CAIRN_SERVER_AUTH"
    SERVER_CACHE_TTL_SECONDS = "CAIRN_SERVER_CACHE_TTL_SECONDS"
    SERVER_CACHE_MAX_ENTRIES = "CAIRN_SERVER_CACHE_MAX_ENTRIES"
    SERVER_PROXY_USER_HEADER = "CAIRN_SERVER_PROXY_USER_HEADER"
    SERVER_PROXY_GROUPS_HEADER = "CAIRN_SERVER_PROXY_GROUPS_HEADER"
    SERVER_PROXY_SECRET_HEADER = "CAIRN_SERVER_PROXY_SECRET_HEADER"
    SERVER_PROXY_SECRET = "CAIRN_SERVER_PROXY_SECRET"
    SERVER = "CAIRN_SERVER"  # the CLI's remote mode: the URL of a cairn server to read from

    # The prepare step
    PREPARE_TIMEOUT = "CAIRN_PREPARE_TIMEOUT"

    # The object store
    S3_ENDPOINT = "CAIRN_S3_ENDPOINT"
    S3_ACCESS_KEY = "CAIRN_S3_ACCESS_KEY"
    S3_SECRET_KEY = "CAIRN_S3_SECRET_KEY"
    S3_BUCKET = "CAIRN_S3_BUCKET"
    S3_REGION = "CAIRN_S3_REGION"
    S3_CA_BUNDLE = "CAIRN_S3_CA_BUNDLE"
    S3_PART_SIZE = "CAIRN_S3_PART_SIZE"

    # The operator
    NAMESPACES = "CAIRN_NAMESPACES"
    SIDECAR_IMAGE = "CAIRN_SIDECAR_IMAGE"
    IMAGE_PULL_POLICY = "CAIRN_IMAGE_PULL_POLICY"
    DATABASE_SECRET = "CAIRN_DATABASE_SECRET"
    DATABASE_SECRET_KEY = "CAIRN_DATABASE_SECRET_KEY"
    OBJECTSTORE_SECRET = "CAIRN_OBJECTSTORE_SECRET"
    METRICS_PORT = "CAIRN_METRICS_PORT"
    LIVENESS_PORT = "CAIRN_LIVENESS_PORT"
    LIVENESS_HOST = "CAIRN_LIVENESS_HOST"
    TENANCY = "CAIRN_TENANCY"
    TENANT_SHARED_PREFIXES = "CAIRN_TENANT_SHARED_PREFIXES"
    TENANT_S3_SECRET = "CAIRN_TENANT_S3_SECRET"
