"""Plain data the store takes and returns; no SQLAlchemy objects cross this line."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, NamedTuple


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


@dataclass
class IngestBatch:
    """Everything read from one stretch of a source file, committed in one transaction."""

    metrics: list[MetricPoint] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    run_info: dict[str, Any] | None = None  # the SDK's "run" record: experiment, name, environment, code
    artifacts: list[ArtifactInfo] = field(default_factory=list)
    finish: dict[str, Any] | None = None

    def is_empty(self) -> bool:
        return not (self.metrics or self.params or self.tags or self.run_info or self.artifacts or self.finish)


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
    status: str
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
class RunDetail:
    summary: RunSummary
    params: dict[str, Any]
    tags: dict[str, str]
    environment: dict[str, Any]
    code: dict[str, Any]
    artifacts: list[ArtifactInfo]
    datasets: list[dict[str, Any]]
    cluster: dict[str, Any]
    ingest: dict[str, Any]
    # {"complete": bool | None, "pending": int | None}: the sidecar's final upload flush
    uploads: dict[str, Any] = field(default_factory=dict)
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


@dataclass(frozen=True)
class HistoryBucket:
    """One bucket of a downsampled series: the last point in it plus its min and max."""

    step: int
    value: float
    min_value: float
    max_value: float
    count: int
