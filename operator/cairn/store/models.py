"""SQLAlchemy tables of the tracking store. ORM rows never leave ``cairn.store``."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONDoc = JSON().with_variant(JSONB(), "postgresql")
# SQLite has no 64-bit autoincrement other than INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_experiments_namespace_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The Kubernetes namespace of its runs; "" for runs outside a cluster (local mode).
    namespace: Mapped[str] = mapped_column(String(253), default="", server_default="")
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str | None] = mapped_column(String(255))
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="RUNNING", index=True)
    start_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    namespace: Mapped[str | None] = mapped_column(String(253))
    k8s_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    image: Mapped[str | None] = mapped_column(Text)
    image_digest: Mapped[str | None] = mapped_column(Text)
    node_name: Mapped[str | None] = mapped_column(String(253))
    gpu_product: Mapped[str | None] = mapped_column(String(255))
    resources: Mapped[dict | None] = mapped_column(JSONDoc)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Set by the sidecar's final flush: every file of artifacts/ and checkpoints/ is in the object
    # store (True) or ``artifacts_pending`` of them could not be uploaded (False); NULL: not known.
    artifacts_uploaded: Mapped[bool | None] = mapped_column(Boolean)
    artifacts_pending: Mapped[int | None] = mapped_column(Integer)


class Param(Base):
    __tablename__ = "params"
    # Run search filters and sorts across runs by key (store/search.py); values are not indexed where
    # they are free text, which can outgrow a btree entry.
    __table_args__ = (Index("ix_params_key", "key"),)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    # JSON text of the value, so 1, 1.0, "1" and true stay distinct when a run is repeated.
    value: Mapped[str] = mapped_column(Text)


class Tag(Base):
    __tablename__ = "tags"
    # Run search filters and sorts across runs by key (store/search.py); values are not indexed where
    # they are free text, which can outgrow a btree entry.
    __table_args__ = (Index("ix_tags_key", "key"),)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Metric(Base):
    """One point of one series. No uniqueness: a key may be logged twice at one step.

    Exactly-once comes from ``IngestProgress``: the offset advances in the transaction that
    inserts the rows. ``value`` is NULL for NaN on SQLite, which cannot store NaN.
    """

    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    key: Mapped[str] = mapped_column(String(250))
    step: Mapped[int] = mapped_column(BigInteger)
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (Index("ix_metrics_run_key_step", "run_id", "key", "step"),)


class LatestMetric(Base):
    """Latest, min, max and count per series, kept current by every ingest batch."""

    __tablename__ = "latest_metrics"
    # Run search: a metric's values across runs, for filters and sorts (store/search.py).
    __table_args__ = (Index("ix_latest_metrics_key_value", "key", "value"),)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger)
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float | None] = mapped_column(Double)
    min_value: Mapped[float | None] = mapped_column(Double)
    max_value: Mapped[float | None] = mapped_column(Double)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class MetricSummary(Base):
    """One fixed step bucket of one series at one level (width ``8**level`` steps, see
    ``store/summaries.py``), written in the ingest batch's transaction like the points it sums up."""

    __tablename__ = "metric_summaries"
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_step: Mapped[int] = mapped_column(BigInteger)
    last_timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    last_value: Mapped[float | None] = mapped_column(Double)
    min_value: Mapped[float | None] = mapped_column(Double)
    max_value: Mapped[float | None] = mapped_column(Double)
    count: Mapped[int] = mapped_column(BigInteger)


class Artifact(Base):
    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    uri: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32), default="artifact")
    step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempt: Mapped[int | None] = mapped_column(Integer)  # the attempt whose pod produced it
    uploaded_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))  # NULL: a local file:// row
    __table_args__ = (UniqueConstraint("run_id", "path", name="uq_artifacts_run_path"),)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    digest: Mapped[str | None] = mapped_column(String(128))
    pinned_digest: Mapped[str | None] = mapped_column(String(128))
    object_count: Mapped[int | None] = mapped_column(BigInteger)
    total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    digested_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("run_id", "uri", name="uq_datasets_run_uri"),)


class Resume(Base):
    """An attempt that started from a checkpoint of an earlier attempt (restored by the prepare step)."""

    __tablename__ = "resumes"
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger)
    from_attempt: Mapped[int | None] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)  # the checkpoint's prefix in the object store
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Environment(Base):
    __tablename__ = "environments"
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    python_version: Mapped[str | None] = mapped_column(String(32))
    platform: Mapped[str | None] = mapped_column(Text)
    hostname: Mapped[str | None] = mapped_column(String(255))
    packages: Mapped[dict | None] = mapped_column(JSONDoc)
    cuda_version: Mapped[str | None] = mapped_column(String(32))
    driver_version: Mapped[str | None] = mapped_column(String(64))
    gpu_model: Mapped[str | None] = mapped_column(String(255))
    gpu_count: Mapped[int | None] = mapped_column(Integer)
    captured_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CodeVersion(Base):
    __tablename__ = "code_versions"
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    repository: Mapped[str | None] = mapped_column(Text)
    commit: Mapped[str | None] = mapped_column(String(64))
    branch: Mapped[str | None] = mapped_column(String(255))
    dirty: Mapped[bool | None] = mapped_column(Boolean)


class IngestProgress(Base):
    """How far the agent has read each source file of a run; advanced with the rows it covers."""

    __tablename__ = "ingest_progress"
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(512), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    lines: Mapped[int] = mapped_column(BigInteger, default=0)
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[dict] = mapped_column(JSONDoc, default=dict)
    # The file's identity: the sha256 of its first ``head_bytes`` bytes when the first batch was
    # committed, so a file replaced under the same name is noticed instead of read from mid-line.
    head_bytes: Mapped[int | None] = mapped_column(Integer)
    head_sha256: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class EvalExampleRow(Base):
    """One evaluation example of a run. One row per (run, example id): the last record ingested wins,
    except that an earlier attempt never replaces what a later one stored."""

    __tablename__ = "eval_examples"
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    example_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    metrics: Mapped[dict] = mapped_column(JSONDoc)
    slices: Mapped[list] = mapped_column(JSONDoc)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # 0: a run outside Kubernetes
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# -- the model registry ---------------------------------------------------------------------------
VERSION_KEY = ["model_versions.model_id", "model_versions.version"]  # a version by (model, version number)


class RegisteredModel(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(String(253))
    name: Mapped[str] = mapped_column(String(253))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_models_namespace_name"),)


class ModelVersionRow(Base):
    """A version of a model, with the lineage copied from the run it was registered from."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id"), index=True)
    path: Mapped[str] = mapped_column(Text)  # the run-directory path its files were taken from
    image_digest: Mapped[str | None] = mapped_column(Text)
    code_repository: Mapped[str | None] = mapped_column(Text)
    code_commit: Mapped[str | None] = mapped_column(String(64))
    dataset_uri: Mapped[str | None] = mapped_column(Text)
    dataset_digest: Mapped[str | None] = mapped_column(String(128))
    params: Mapped[dict] = mapped_column(JSONDoc)
    registered_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)


class ModelFileRow(Base):
    __tablename__ = "model_files"
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class ModelAliasRow(Base):
    __tablename__ = "model_aliases"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    set_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    set_by: Mapped[str] = mapped_column(String(255))
    __table_args__ = (ForeignKeyConstraint(["model_id", "version"], VERSION_KEY, name="fk_model_aliases_version"),)


class ModelEvaluationRow(Base):
    """An evaluation of a candidate version against a baseline; ``verdict`` is the gate's own JSON."""

    __tablename__ = "model_evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    candidate_version: Mapped[int] = mapped_column(Integer)
    baseline_version: Mapped[int | None] = mapped_column(Integer)
    eval_run_ids: Mapped[list] = mapped_column(JSONDoc)
    dataset_sha256: Mapped[str | None] = mapped_column(String(128))
    eval_image_digest: Mapped[str | None] = mapped_column(Text)
    passed: Mapped[bool] = mapped_column(Boolean)
    verdict: Mapped[dict] = mapped_column(JSONDoc)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (
        ForeignKeyConstraint(["model_id", "candidate_version"], VERSION_KEY, name="fk_model_evaluations_candidate"),
        ForeignKeyConstraint(["model_id", "baseline_version"], VERSION_KEY, name="fk_model_evaluations_baseline"),
        Index("ix_model_evaluations_pair", "model_id", "candidate_version", "baseline_version"),
    )


class ModelAuditRow(Base):
    """What was done to a model, by whom, when and why: registrations, alias moves, forced ones."""

    __tablename__ = "model_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    version: Mapped[int | None] = mapped_column(Integer)
    alias: Mapped[str | None] = mapped_column(String(63))
    previous_version: Mapped[int | None] = mapped_column(Integer)  # the alias's holder before the move
    who: Mapped[str] = mapped_column(String(255))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
