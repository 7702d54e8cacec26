"""Plain data the store takes and returns; no SQLAlchemy objects cross this line."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cairn.rundir import RunStatus


class MetricPoint(NamedTuple):
    """One point of a series (a tuple: the ingest path makes millions of these)."""

    key: str
    step: int
    timestamp_ms: int
    value: float


@dataclass(frozen=True)
class ArtifactInfo:
    path: str
    uri: str
    size: int
    sha256: str
    kind: str = "artifact"
    step: int | None = None
    attempt: int | None = None
    uploaded_at: dt.datetime | None = None  # None: a local file (file:// uri), not in the object store


@dataclass(frozen=True)
class RunFinish:
    """The SDK's finish record: how the training process ended."""

    status: RunStatus
    exit_code: int | None = None
    ts: float | None = None  # seconds since the epoch; None: when the record is committed


@dataclass(frozen=True)
class EvalExample:
    """One example's result from evaluation code: its metrics (finite numbers) and slice labels."""

    id: str
    metrics: dict[str, float]
    slices: list[str] = field(default_factory=list)


@dataclass
class IngestBatch:
    """Everything read from one stretch of a source file, committed in one transaction."""

    metrics: list[MetricPoint] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    run_info: dict[str, Any] | None = None  # the SDK's "run" record: experiment, name, environment, code
    artifacts: list[ArtifactInfo] = field(default_factory=list)
    finish: RunFinish | None = None
    examples: list[EvalExample] = field(default_factory=list)
    attempt: int | None = None  # the pod attempt that wrote the lines (None: a local run)

    def is_empty(self) -> bool:
        return not (self.metrics or self.params or self.tags or self.run_info or self.artifacts or self.finish
                    or self.examples)


class IngestPosition(NamedTuple):
    """Where ingest of one source file stands, and which file that was (see ``IngestProgress``)."""

    offset: int
    lines: int
    head_bytes: int | None = None
    head_sha256: str | None = None


@dataclass(frozen=True)
class LatestValue:
    key: str
    step: int
    value: float
    min_value: float | None
    max_value: float | None
    count: int


@dataclass(frozen=True)
class RunSummary:
    id: str
    name: str | None
    experiment: str
    status: RunStatus
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    exit_code: int | None
    metrics: dict[str, LatestValue] = field(default_factory=dict)
    namespace: str | None = None  # of the TrainingRun; None for a run outside Kubernetes

    @property
    def duration_s(self) -> float | None:
        if self.start_time and self.end_time:
            return (self.end_time - self.start_time).total_seconds()
        return None


@dataclass(frozen=True)
class Environment:
    """Where the training process ran, as the SDK captured it."""

    python_version: str | None = None
    platform: str | None = None
    hostname: str | None = None
    cuda_version: str | None = None
    driver_version: str | None = None
    gpu_model: str | None = None
    gpu_count: int | None = None
    packages: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CodeVersion:
    repository: str | None
    commit: str
    branch: str | None = None
    dirty: bool = False


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset a run reads: ``digest`` as computed in the pod, ``pinned_digest`` as the spec demands."""

    uri: str
    digest: str | None
    pinned_digest: str | None = None
    object_count: int | None = None
    total_bytes: int | None = None


@dataclass(frozen=True)
class ClusterInfo:
    """Where a TrainingRun's run ran in the cluster; all empty for a local run."""

    namespace: str | None = None
    k8s_uid: str | None = None
    image: str | None = None
    image_digest: str | None = None
    node_name: str | None = None
    gpu_product: str | None = None
    resources: dict[str, Any] | None = None
    attempts: int = 0
    reason: str | None = None

    def recorded(self) -> dict[str, Any]:
        """The fields that hold something, by name."""
        return {name: value for name, value in vars(self).items() if value not in (None, 0)}


@dataclass(frozen=True)
class SourceProgress:
    """How far ingest has read one source file of a run."""

    offset: int
    lines: int
    points: int


@dataclass(frozen=True)
class IngestSummary:
    sources: dict[str, SourceProgress] = field(default_factory=dict)
    points: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # rejected lines and values per reason


@dataclass(frozen=True)
class Uploads:
    """The sidecar's final upload flush; both None until it has reported."""

    complete: bool | None = None
    pending: int | None = None


@dataclass(frozen=True)
class RunDetail:
    summary: RunSummary
    params: dict[str, Any]
    tags: dict[str, str]
    environment: Environment | None
    code: CodeVersion | None
    artifacts: list[ArtifactInfo]
    datasets: list[DatasetRecord]
    cluster: ClusterInfo
    ingest: IngestSummary
    uploads: Uploads = field(default_factory=Uploads)
    resumes: list["ResumeInfo"] = field(default_factory=list)


@dataclass(frozen=True)
class ResumeInfo:
    """Attempt ``attempt`` started from the checkpoint at ``step`` (saved by ``from_attempt``)."""

    attempt: int
    step: int
    from_attempt: int | None
    uri: str


@dataclass(frozen=True)
class ExperimentSummary:
    name: str
    runs: int
    last_start: dt.datetime | None
    namespace: str | None = None  # None: runs outside a cluster


@dataclass(frozen=True)
class HistoryBucket:
    """One bucket of a downsampled series: the last point in it (step, value, timestamp) plus the min
    and max of its finite values (None when it holds only NaN) and its point count."""

    step: int
    value: float
    min_value: float | None
    max_value: float | None
    count: int
    timestamp_ms: int


# -- the model registry ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFile:
    """A file of a model version: where it is and the sha256 recorded when the run uploaded it."""

    path: str
    uri: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelVersion:
    """A registered version and its lineage, copied from its run when it was registered."""

    namespace: str
    model: str
    version: int
    run_id: str
    path: str
    image_digest: str | None
    code_repository: str | None
    code_commit: str | None
    dataset_uri: str | None
    dataset_digest: str | None
    params: dict[str, Any]
    files: list[ModelFile]
    registered_by: str
    created_at: dt.datetime
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelAlias:
    alias: str
    version: int
    set_at: dt.datetime
    set_by: str


@dataclass(frozen=True)
class Evaluation:
    """A candidate version evaluated against a baseline; ``verdict`` holds at least ``passed`` and ``reason``."""

    id: int
    candidate_version: int
    baseline_version: int | None
    eval_run_ids: list[str]
    dataset_sha256: str | None
    eval_image_digest: str | None
    passed: bool
    verdict: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class AuditEntry:
    """One thing done to a model: ``register`` a version, ``promote`` one to an alias (``forced`` past the gate)."""

    action: str
    version: int | None
    alias: str | None
    previous_version: int | None
    who: str
    at: dt.datetime
    reason: str | None
    forced: bool


@dataclass(frozen=True)
class ModelSummary:
    namespace: str
    name: str
    versions: int
    latest_version: int | None
    aliases: dict[str, int]
    created_at: dt.datetime


@dataclass(frozen=True)
class ModelDetail:
    namespace: str
    name: str
    created_at: dt.datetime
    versions: list[ModelVersion]
    aliases: list[ModelAlias]
    evaluations: list[Evaluation]
    audit: list[AuditEntry]


@dataclass(frozen=True)
class Promotion:
    """What a promotion did: ``alias`` now names ``version`` (``previous_version`` before; ``changed`` False
    when it already did), ``forced`` when it went past a refusing gate."""

    alias: str
    version: int
    previous_version: int | None
    forced: bool
    changed: bool
