"""The tracking store: every read and write of runs, parameters, metrics and artifacts."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from operator import itemgetter
from typing import Any, Iterable, Sequence

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cairn.messages import one_line
from cairn.rundir import RunStatus, safe_relative_path
from cairn.store import db, summaries
from cairn.store.backends import Backend, backend_for, nan_if_null
from cairn.store.entities import (
    ArtifactInfo,
    ClusterInfo,
    CodeVersion,
    DatasetRecord,
    Environment,
    EvalExample,
    ExperimentSummary,
    HistoryBucket,
    IngestBatch,
    IngestPosition,
    IngestSummary,
    LatestValue,
    MetricPoint,
    ResumeInfo,
    RunDetail,
    RunSummary,
    SourceProgress,
    Uploads,
)
from cairn.store.models import CodeVersion as CodeVersionRow
from cairn.store.models import Environment as EnvironmentRow
from cairn.store.models import (
    Artifact,
    Dataset,
    EvalExampleRow,
    Experiment,
    IngestProgress,
    LatestMetric,
    Metric,
    MetricSummary,
    Param,
    Resume,
    Run,
    Tag,
    utcnow,
)
from cairn.store.registry import ModelRegistry, param_value
from cairn.store.search import RunSearch

FINAL_STATUSES = tuple(status.value for status in RunStatus if status.is_final)


class RunNotFound(db.StoreError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run matches id {run_id!r}", code="RUN_NOT_FOUND")


def _as_uuid(run_id: str | uuid.UUID) -> uuid.UUID:
    if isinstance(run_id, uuid.UUID):
        return run_id
    try:
        return uuid.UUID(str(run_id))
    except ValueError:
        raise RunNotFound(str(run_id)) from None


def _param_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _environment(row: EnvironmentRow) -> Environment:
    return Environment(row.python_version, row.platform, row.hostname, row.cuda_version, row.driver_version,
                       row.gpu_model, row.gpu_count, row.packages or {})


def _ingest_summary(progress: Iterable[IngestProgress]) -> IngestSummary:
    sources, rejected = {}, {}
    for p in progress:
        sources[p.source] = SourceProgress(p.offset, p.lines, p.points)
        for reason, n in (p.rejected or {}).items():
            rejected[reason] = rejected.get(reason, 0) + n
    return IngestSummary(sources, sum(s.points for s in sources.values()), rejected)


def _merged_counts(counts: dict[str, int] | None, more: dict[str, int]) -> dict[str, int]:
    merged = dict(counts or {})
    for reason, n in more.items():
        merged[reason] = merged.get(reason, 0) + n
    return merged


class TrackingStore(RunSearch, ModelRegistry):
    """One store contract for PostgreSQL (production) and SQLite (the embedded default); the model
    registry's methods come from ``ModelRegistry``, the readers' run search from ``RunSearch``."""

    def __init__(self, url: str | None = None, engine: Engine | None = None, check_schema: bool = True) -> None:
        self.engine = engine or db.get_engine(url)
        self.url = str(self.engine.url)
        self.backend: Backend = backend_for(self.engine)
        if check_schema:
            db.ensure_schema(self.engine)

    def _session(self):  # noqa: ANN202
        return db.session_scope(self.engine)

    # -- experiments and runs -------------------------------------------------------------------
    def _experiment_id(self, session: Session, name: str, namespace: str | None) -> int:
        """The id of experiment ``name`` of ``namespace`` (None: outside a cluster), made if new."""
        namespace = namespace or ""
        session.execute(self.backend.insert(Experiment).values(name=name, namespace=namespace, created_at=utcnow())
                        .on_conflict_do_nothing())
        return session.execute(select(Experiment.id).where(Experiment.namespace == namespace,
                                                           Experiment.name == name)).scalar_one()

    def create_run(
        self,
        experiment: str = "default",
        name: str | None = None,
        run_id: str | uuid.UUID | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        status: RunStatus = RunStatus.RUNNING,
        start_time: dt.datetime | None = None,
        **cluster_fields: Any,
    ) -> str:
        """Create a run (idempotent for a given ``run_id``) and return its id."""
        rid = _as_uuid(run_id) if run_id else uuid.uuid4()
        with self._session() as s:
            exp_id = self._experiment_id(s, experiment, cluster_fields.get("namespace"))
            s.execute(
                self.backend.insert(Run)
                .values(
                    id=rid,
                    name=name,
                    experiment_id=exp_id,
                    status=status,
                    start_time=start_time if start_time is not None
                    else (utcnow() if status == RunStatus.RUNNING else None),
                    created_at=utcnow(),
                    attempts=0,
                    **cluster_fields,
                )
                .on_conflict_do_nothing()
            )
            if params:
                self._upsert_params(s, rid, params)
            if tags:
                self._upsert_tags(s, rid, tags)
        return str(rid)

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set run columns (status, end_time, exit_code, node_name, image_digest, ...)."""
        rid = _as_uuid(run_id)
        with self._session() as s:
            done = s.execute(update(Run).where(Run.id == rid).values(**fields))
            if done.rowcount == 0:
                raise RunNotFound(run_id)

    def run_status(self, run_id: str) -> RunStatus | None:
        """The run's status, or None when the store has no such run yet."""
        with self._session() as s:
            status = s.execute(select(Run.status).where(Run.id == _as_uuid(run_id))).scalar_one_or_none()
        return None if status is None else RunStatus(status)

    def finish_run(self, run_id: str, status: RunStatus, exit_code: int | None,
                   end_time: dt.datetime | None = None) -> None:
        self.update_run(run_id, status=status, exit_code=exit_code, end_time=end_time or utcnow())

    def record_code(self, run_id: str, repository: str | None, commit: str, dirty: bool = False) -> None:
        values = {"repository": repository, "commit": commit, "dirty": dirty}
        with self._session() as s:
            stmt = self.backend.insert(CodeVersionRow).values(run_id=_as_uuid(run_id), **values)
            s.execute(stmt.on_conflict_do_update(index_elements=["run_id"], set_=values))

    def record_dataset(self, run_id: str, uri: str, digest: str | None, pinned_digest: str | None = None,
                       object_count: int | None = None, total_bytes: int | None = None) -> None:
        """Record the dataset a run reads. A ``None`` digest (the operator, before the prepare step
        has computed it) never erases one already recorded."""
        rid = _as_uuid(run_id)
        digested_at = utcnow() if digest is not None else None
        with self._session() as s:
            stmt = self.backend.insert(Dataset).values(run_id=rid, uri=uri, digest=digest, pinned_digest=pinned_digest,
                                                object_count=object_count, total_bytes=total_bytes,
                                                digested_at=digested_at)
            ex, cur = stmt.excluded, Dataset.__table__.c
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["run_id", "uri"],
                    set_={"digest": func.coalesce(ex.digest, cur.digest),
                          "pinned_digest": ex.pinned_digest,
                          "object_count": func.coalesce(ex.object_count, cur.object_count),
                          "total_bytes": func.coalesce(ex.total_bytes, cur.total_bytes),
                          "digested_at": func.coalesce(ex.digested_at, cur.digested_at)},
                )
            )

    def record_resume(self, run_id: str, attempt: int, step: int, uri: str, from_attempt: int | None = None) -> None:
        """Attempt ``attempt`` starts from the checkpoint at ``step`` (idempotent per attempt)."""
        values = {"step": step, "uri": uri, "from_attempt": from_attempt}
        with self._session() as s:
            stmt = self.backend.insert(Resume).values(run_id=_as_uuid(run_id), attempt=attempt, created_at=utcnow(),
                                                      **values)
            s.execute(stmt.on_conflict_do_update(index_elements=["run_id", "attempt"], set_=values))

    def resolve_run_id(self, prefix: str, namespace: str | None = None) -> str:
        """A full run id from an unambiguous prefix (as with git commits), among ``namespace``'s runs
        when one is given."""
        prefix = prefix.strip().lower()
        try:
            rid = uuid.UUID(prefix)
        except ValueError:
            rid = None
        with self._session() as s:
            found = s.get(Run, rid) if rid is not None else None
            if rid is not None:
                if found is None or (namespace is not None and found.namespace != namespace):
                    raise RunNotFound(prefix)
                return str(rid)
            if len(prefix) < 4 or any(c not in "0123456789abcdef-" for c in prefix):
                raise RunNotFound(prefix)
            q = select(Run.id) if namespace is None else select(Run.id).where(Run.namespace == namespace)
            # UUIDs are compared as text; the prefix is a short literal so a scan is fine here.
            ids = [str(r) for r in s.execute(q).scalars() if str(r).startswith(prefix)]
        if not ids:
            raise RunNotFound(prefix)
        if len(ids) > 1:
            raise db.StoreError(f"run id prefix {prefix!r} is ambiguous: {', '.join(sorted(ids)[:5])}",
                                code="AMBIGUOUS_RUN_ID")
        return ids[0]

    def run_ids_named(self, namespace: str, name: str) -> list[str]:
        """Ids of the runs of TrainingRun ``namespace/name``, newest first (a name can be reused)."""
        with self._session() as s:
            q = select(Run.id).where(Run.namespace == namespace, Run.name == name).order_by(Run.created_at.desc())
            return [str(rid) for rid in s.execute(q).scalars()]

    # -- parameters, tags -----------------------------------------------------------------------
    def _upsert_params(self, s: Session, rid: uuid.UUID, params: dict[str, Any]) -> None:
        stmt = self.backend.insert(Param).values(
            [{"run_id": rid, "key": k, "value": _param_text(v)} for k, v in params.items()])
        s.execute(stmt.on_conflict_do_update(index_elements=["run_id", "key"], set_={"value": stmt.excluded.value}))

    def _upsert_tags(self, s: Session, rid: uuid.UUID, tags: dict[str, str]) -> None:
        stmt = self.backend.insert(Tag).values([{"run_id": rid, "key": k, "value": str(v)} for k, v in tags.items()])
        s.execute(stmt.on_conflict_do_update(index_elements=["run_id", "key"], set_={"value": stmt.excluded.value}))

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        with self._session() as s:
            self._upsert_params(s, _as_uuid(run_id), params)

    # -- ingest ---------------------------------------------------------------------------------
    def ingest_progress(self, run_id: str, source: str) -> tuple[int, int]:
        """(byte offset, line number) already committed for a source file of a run."""
        return self.ingest_position(run_id, source)[:2]

    def ingest_position(self, run_id: str, source: str) -> IngestPosition:
        """Offset, line number and file identity committed for a source file of a run."""
        with self._session() as s:
            row = s.get(IngestProgress, (_as_uuid(run_id), source))
            if row is None:
                return IngestPosition(0, 0)
            return IngestPosition(row.offset, row.lines, row.head_bytes, row.head_sha256)

    def ingest_batch(
        self,
        run_id: str,
        source: str,
        batch: IngestBatch,
        offset: int,
        lines: int,
        rejected: dict[str, int] | None = None,
        start: int | None = None,
        head: tuple[int, str] | None = None,
    ) -> None:
        """Commit a batch and the source offset it ends at, atomically.

        A crash before the commit leaves the old offset, so the agent re-reads the same lines;
        a crash after it leaves the new one. Either way each point is stored exactly once.
        With ``start`` (the offset the batch was read from) the commit is a compare-and-set: when
        another writer has moved the offset since, nothing is stored and ``IngestConflict`` is
        raised. ``head`` is the file's identity, (bytes, sha256 of them), kept from the first batch.
        ``BatchRefused`` says the database refused the batch's data, which no retry can change.
        """
        rid = _as_uuid(run_id)
        try:
            with self._session() as s:
                # First, so that on SQLite the write lock is taken before anything is read.
                claimed = start is not None and self._claim_progress(s, rid, source, start, offset, lines,
                                                                      len(batch.metrics), rejected or {})
                self._write_batch(s, rid, batch)
                if not claimed:
                    self._advance_progress(s, rid, source, offset, lines, len(batch.metrics), rejected or {},
                                           head, exclusive=start is not None)
        except db.StoreError:
            raise
        except Exception as exc:
            if db.refused_for_its_data(self.engine, exc):
                raise db.BatchRefused(one_line(exc)) from exc
            raise

    def count_rejections(self, run_id: str, source: str, rejected: dict[str, int]) -> None:
        """Add rejection counts to a source without moving its offset (a file found replaced)."""
        with self._session() as s:
            row = s.get(IngestProgress, (_as_uuid(run_id), source), with_for_update=True)
            if row is None:
                raise db.StoreError(f"run {run_id} has no ingest progress for {source}", code="NO_INGEST_PROGRESS")
            row.rejected = _merged_counts(row.rejected, rejected)

    def _write_batch(self, s: Session, rid: uuid.UUID, batch: IngestBatch) -> None:
        if batch.run_info is not None:
            self._apply_run_info(s, rid, batch.run_info)
        elif s.get(Run, rid) is None:
            s.execute(
                self.backend.insert(Run)
                .values(id=rid, experiment_id=self._experiment_id(s, "default", None), status=RunStatus.RUNNING,
                        start_time=utcnow(), created_at=utcnow(), attempts=0)
                .on_conflict_do_nothing()
            )
        if batch.params:
            self._upsert_params(s, rid, batch.params)
        if batch.tags:
            self._upsert_tags(s, rid, batch.tags)
        if batch.metrics:
            self.backend.write_metrics(s, rid, batch.metrics)
            self._update_latest(s, rid, batch.metrics)
            self._update_summaries(s, rid, batch.metrics)
        for art in batch.artifacts:
            self._upsert_artifact(s, rid, art)
        if batch.examples:
            self._upsert_examples(s, rid, batch.examples, batch.attempt or 0)
        if batch.finish is not None:
            fin = batch.finish
            end = dt.datetime.fromtimestamp(fin.ts, dt.timezone.utc) if fin.ts else utcnow()
            s.execute(
                update(Run)
                .where(Run.id == rid, Run.status.notin_(FINAL_STATUSES))
                .values(status=fin.status, exit_code=fin.exit_code, end_time=end)
            )

    def _upsert_examples(self, s: Session, rid: uuid.UUID, examples: list[EvalExample], attempt: int) -> None:
        """One row per (run, example id): the last record wins, but never over a later attempt's."""
        latest = {e.id: e for e in examples}  # one statement cannot touch a row twice
        now = utcnow()
        stmt = self.backend.insert(EvalExampleRow).values(
            [{"run_id": rid, "example_id": e.id, "metrics": e.metrics, "slices": e.slices, "attempt": attempt,
              "created_at": now} for e in latest.values()])
        ex = stmt.excluded
        s.execute(stmt.on_conflict_do_update(
            index_elements=["run_id", "example_id"],
            set_={"metrics": ex.metrics, "slices": ex.slices, "attempt": ex.attempt, "created_at": ex.created_at},
            where=ex.attempt >= EvalExampleRow.__table__.c.attempt))

    def eval_examples(self, run_id: str) -> list[EvalExample]:
        """The run's evaluation examples, one per id, ordered by id."""
        with self._session() as s:
            rows = s.execute(select(EvalExampleRow).where(EvalExampleRow.run_id == _as_uuid(run_id))
                             .order_by(EvalExampleRow.example_id)).scalars()
            return [EvalExample(r.example_id, dict(r.metrics), list(r.slices)) for r in rows]

    def _apply_run_info(self, s: Session, rid: uuid.UUID, info: dict[str, Any]) -> None:
        # A run the operator recorded keeps its experiment; only a new one (local mode) takes the record's.
        existing = s.get(Run, rid)
        exp_id = existing.experiment_id if existing is not None else \
            self._experiment_id(s, info.get("experiment") or "default", None)
        start = dt.datetime.fromtimestamp(info["ts"], dt.timezone.utc) if info.get("ts") else utcnow()
        s.execute(
            self.backend.insert(Run)
            .values(id=rid, name=info.get("name"), experiment_id=exp_id, status=RunStatus.RUNNING,
                    start_time=start, created_at=utcnow(), attempts=0)
            .on_conflict_do_nothing()
        )
        if info.get("name"):
            s.execute(update(Run).where(Run.id == rid, Run.name.is_(None)).values(name=info["name"]))
        if info.get("params"):
            self._upsert_params(s, rid, info["params"])
        if info.get("tags"):
            self._upsert_tags(s, rid, info["tags"])
        env = info.get("environment") or {}
        if env:
            values = {
                "python_version": env.get("python_version"),
                "platform": env.get("platform"),
                "hostname": env.get("hostname"),
                "packages": env.get("packages"),
                "cuda_version": env.get("cuda_version"),
                "driver_version": env.get("driver_version"),
                "gpu_model": env.get("gpu_model"),
                "gpu_count": env.get("gpu_count"),
                "captured_at": utcnow(),
            }
            stmt = self.backend.insert(EnvironmentRow).values(run_id=rid, **values)
            s.execute(stmt.on_conflict_do_update(index_elements=["run_id"], set_=values))
        code = info.get("code") or {}
        if code.get("commit"):
            values = {k: code.get(k) for k in ("repository", "commit", "branch", "dirty")}
            stmt = self.backend.insert(CodeVersionRow).values(run_id=rid, **values)
            s.execute(stmt.on_conflict_do_update(index_elements=["run_id"], set_=values))

    def _update_latest(self, s: Session, rid: uuid.UUID, points: Iterable[MetricPoint]) -> None:
        # Group the points by key in one pass, then summarise each key with C-level builtins.
        by_key: dict[str, list[MetricPoint]] = {}
        for p in points:
            group = by_key.get(p[0])
            if group is None:
                by_key[p[0]] = [p]
            else:
                group.append(p)
        rows = []
        for key, group in by_key.items():
            steps = list(map(itemgetter(1), group))
            last_step = max(steps)
            # The latest point is the last one at the highest step.
            latest = group[len(steps) - 1 - steps[::-1].index(last_step)]
            finite = [v for v in map(itemgetter(3), group) if not math.isnan(v)]
            rows.append({
                "run_id": rid, "key": key, "step": last_step, "timestamp_ms": latest.timestamp_ms,
                "value": self.backend.stored_float(latest.value),
                "min_value": min(finite) if finite else None, "max_value": max(finite) if finite else None,
                "count": len(group),
            })
        stmt = self.backend.insert(LatestMetric).values(rows)
        ex, cur_t = stmt.excluded, LatestMetric.__table__.c
        newer = ex.step >= cur_t.step
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=["run_id", "key"],
                set_={
                    "step": case((newer, ex.step), else_=cur_t.step),
                    "timestamp_ms": case((newer, ex.timestamp_ms), else_=cur_t.timestamp_ms),
                    "value": case((newer, ex.value), else_=cur_t.value),
                    "min_value": case(
                        (cur_t.min_value.is_(None) | (ex.min_value < cur_t.min_value), ex.min_value),
                        else_=cur_t.min_value,
                    ),
                    "max_value": case(
                        (cur_t.max_value.is_(None) | (ex.max_value > cur_t.max_value), ex.max_value),
                        else_=cur_t.max_value,
                    ),
                    "count": cur_t.count + ex.count,
                },
            )
        )

    def _update_summaries(self, s: Session, rid: uuid.UUID, points: Sequence[MetricPoint]) -> None:
        rows = [
            {"run_id": rid, "key": key, "level": level, "bucket": index, "last_step": b.last_step,
             "last_timestamp_ms": b.last_timestamp_ms, "last_value": self.backend.stored_float(b.last_value),
             "min_value": b.min_value, "max_value": b.max_value, "count": b.count}
            for key, level, index, b in summaries.summarise(points)
        ]
        # Core executemany with RETURNING: compiled once (cached) and sent as multi-row VALUES pages
        # ("insertmanyvalues"), which SQLAlchemy does for an upsert only when it returns something.
        # Without it psycopg2 makes a round trip per row; a multi-row VALUES construct would be
        # compiled anew for every batch, which costs more than the write.
        stmt = self.backend.insert(MetricSummary.__table__)
        ex, cur = stmt.excluded, MetricSummary.__table__.c
        newer = ex.last_step >= cur.last_step
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id", "key", "level", "bucket"],
            set_={
                "last_step": case((newer, ex.last_step), else_=cur.last_step),
                "last_timestamp_ms": case((newer, ex.last_timestamp_ms), else_=cur.last_timestamp_ms),
                "last_value": case((newer, ex.last_value), else_=cur.last_value),
                "min_value": case((cur.min_value.is_(None) | (ex.min_value < cur.min_value), ex.min_value),
                                  else_=cur.min_value),
                "max_value": case((cur.max_value.is_(None) | (ex.max_value > cur.max_value), ex.max_value),
                                  else_=cur.max_value),
                "count": cur.count + ex.count,
            },
        )
        s.connection().execute(stmt.returning(cur.level), rows)

    def _upsert_artifact(self, s: Session, rid: uuid.UUID, art: ArtifactInfo) -> None:
        if safe_relative_path(art.path) != art.path:  # raises UnsafePath for what could escape a directory
            raise ValueError(f"artifact path {art.path!r} is not normalised")
        values = {"uri": art.uri, "size": art.size, "sha256": art.sha256, "kind": art.kind, "step": art.step,
                  "attempt": art.attempt, "uploaded_at": art.uploaded_at}
        stmt = self.backend.insert(Artifact).values(run_id=rid, path=art.path, created_at=utcnow(), **values)
        s.execute(stmt.on_conflict_do_update(index_elements=["run_id", "path"], set_=values))

    def record_artifacts(self, run_id: str, artifacts: Iterable[ArtifactInfo]) -> None:
        """Upsert artifacts by (run, path) in one transaction: recording the same file again never
        adds a row, and the files of one checkpoint appear together or not at all."""
        with self._session() as s:
            for art in artifacts:
                self._upsert_artifact(s, _as_uuid(run_id), art)

    @staticmethod
    def _artifact_info(a: Artifact) -> ArtifactInfo:
        return ArtifactInfo(a.path, a.uri, a.size, a.sha256, a.kind, a.step, a.attempt, a.uploaded_at)

    def list_artifacts(self, run_id: str, kind: str | None = None) -> list[ArtifactInfo]:
        """A run's artifacts (and checkpoints) ordered by path."""
        q = select(Artifact).where(Artifact.run_id == _as_uuid(run_id))
        if kind:
            q = q.where(Artifact.kind == kind)
        with self._session() as s:
            return [self._artifact_info(a) for a in s.execute(q.order_by(Artifact.path)).scalars()]

    def latest_checkpoint(self, run_id: str) -> tuple[int, list[ArtifactInfo]] | None:
        """The highest step with a checkpoint in the object store, and its files; None when there is none."""
        rid = _as_uuid(run_id)
        uploaded = and_(Artifact.run_id == rid, Artifact.kind == "checkpoint", Artifact.step.is_not(None),
                        Artifact.uploaded_at.is_not(None))
        with self._session() as s:
            step = s.execute(select(func.max(Artifact.step)).where(uploaded)).scalar_one_or_none()
            if step is None:
                return None
            rows = s.execute(select(Artifact).where(uploaded, Artifact.step == step).order_by(Artifact.path)).scalars()
            return step, [self._artifact_info(a) for a in rows]

    def resumes(self, run_id: str) -> list[ResumeInfo]:
        with self._session() as s:
            rows = s.execute(select(Resume).where(Resume.run_id == _as_uuid(run_id)).order_by(Resume.attempt))
            return [ResumeInfo(r.attempt, r.step, r.from_attempt, r.uri) for r in rows.scalars()]

    def _claim_progress(self, s: Session, rid: uuid.UUID, source: str, start: int, offset: int, lines: int,
                        points: int, rejected: dict[str, int]) -> bool:
        """Move the source's offset from ``start`` to ``offset`` if it is still at ``start``.

        False when the source has no progress yet and ``start`` is 0 (the first batch inserts it);
        ``IngestConflict`` when another writer has moved it. On PostgreSQL the UPDATE locks the row,
        so a second writer waits for the first to commit and then finds the offset moved.
        """
        here = (IngestProgress.run_id == rid) & (IngestProgress.source == source)
        moved = s.execute(
            update(IngestProgress).where(here, IngestProgress.offset == start)
            .values(offset=offset, lines=lines, points=IngestProgress.points + points, updated_at=utcnow())
        )
        if moved.rowcount == 1:
            if rejected:
                row = s.get(IngestProgress, (rid, source))
                row.rejected = _merged_counts(row.rejected, rejected)
            return True
        stored = s.execute(select(IngestProgress.offset).where(here)).scalar_one_or_none()
        if stored is None and start == 0:
            return False
        raise db.IngestConflict(f"{source} of run {rid} is at byte {stored} in the store, not at {start} where this "
                                f"batch starts: another agent ingests it too")

    def _advance_progress(self, s: Session, rid: uuid.UUID, source: str, offset: int, lines: int,
                          points: int, rejected: dict[str, int], head: tuple[int, str] | None = None,
                          exclusive: bool = False) -> None:
        """Insert the source's progress, or move it forward. ``exclusive``: the caller claimed the
        source as new, so a row that appeared meanwhile means another writer got there first."""
        head_bytes, head_sha256 = head if head is not None else (None, None)
        if exclusive:
            inserted = s.execute(
                self.backend.insert(IngestProgress)
                .values(run_id=rid, source=source, offset=offset, lines=lines, points=points, rejected=dict(rejected),
                        head_bytes=head_bytes, head_sha256=head_sha256, updated_at=utcnow())
                .on_conflict_do_nothing()
            )
            if inserted.rowcount != 1:
                raise db.IngestConflict(f"{source} of run {rid} was started by another agent meanwhile")
            return
        row = s.get(IngestProgress, (rid, source), with_for_update=True)  # no-op on SQLite
        if row is None:
            s.add(IngestProgress(run_id=rid, source=source, offset=offset, lines=lines, points=points,
                                 rejected=dict(rejected), head_bytes=head_bytes, head_sha256=head_sha256))
            return
        if offset < row.offset:
            raise db.StoreError(
                f"ingest of {source} for run {rid} would move back from byte {row.offset} to {offset}",
                code="INGEST_OFFSET_REGRESSION",
            )
        row.offset, row.lines, row.points = offset, lines, row.points + points
        row.rejected = _merged_counts(row.rejected, rejected)

    # -- reads ----------------------------------------------------------------------------------
    def _latest(self, s: Session, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[str, LatestValue]]:
        out: dict[uuid.UUID, dict[str, LatestValue]] = {rid: {} for rid in run_ids}
        if not run_ids:
            return out
        for m in s.execute(select(LatestMetric).where(LatestMetric.run_id.in_(run_ids))).scalars():
            out[m.run_id][m.key] = LatestValue(m.key, m.step, nan_if_null(m.value), m.min_value, m.max_value, m.count)
        return out

    def latest_metrics(self, run_ids: Sequence[str]) -> dict[str, dict[str, LatestValue]]:
        """Latest value per key for each run, in one query (what the operator copies into status)."""
        with self._session() as s:
            found = self._latest(s, [_as_uuid(r) for r in run_ids])
        return {str(rid): values for rid, values in found.items()}

    def _summaries(self, s: Session, rows: Sequence[tuple[Run, str]]) -> list[RunSummary]:
        latest = self._latest(s, [r.id for r, _ in rows])
        return [
            RunSummary(str(r.id), r.name, exp, RunStatus(r.status), r.start_time, r.end_time, r.exit_code, latest[r.id],
                       r.namespace)
            for r, exp in rows
        ]

    def list_runs(
        self,
        experiment: str | None = None,
        status: RunStatus | None = None,
        sort_metric: str | None = None,
        ascending: bool = False,
        limit: int = 100,
        namespace: str | None = None,
    ) -> list[RunSummary]:
        with self._session() as s:
            q = select(Run, Experiment.name).join(Experiment, Run.experiment_id == Experiment.id)
            if experiment:
                q = q.where(Experiment.name == experiment)
            if namespace:
                q = q.where(Run.namespace == namespace)
            if status:
                q = q.where(Run.status == status.upper())
            if sort_metric:
                q = q.outerjoin(LatestMetric, and_(LatestMetric.run_id == Run.id, LatestMetric.key == sort_metric))
                col = LatestMetric.value.asc() if ascending else LatestMetric.value.desc()
                q = q.order_by(LatestMetric.value.is_(None), col, Run.created_at.desc())
            else:
                q = q.order_by(Run.created_at.desc())
            rows = s.execute(q.limit(limit)).all()
            return self._summaries(s, rows)

    def get_run(self, run_id: str) -> RunDetail:
        rid = _as_uuid(run_id)
        with self._session() as s:
            row = s.execute(
                select(Run, Experiment.name).join(Experiment, Run.experiment_id == Experiment.id).where(Run.id == rid)
            ).first()
            if row is None:
                raise RunNotFound(run_id)
            run = row[0]
            summary = self._summaries(s, [row])[0]
            params = {p.key: param_value(p.value)
                      for p in s.execute(select(Param).where(Param.run_id == rid)).scalars()}
            tags = {t.key: t.value for t in s.execute(select(Tag).where(Tag.run_id == rid)).scalars()}
            env_row = s.get(EnvironmentRow, rid)
            code_row = s.get(CodeVersionRow, rid)
            arts = [
                self._artifact_info(a)
                for a in s.execute(select(Artifact).where(Artifact.run_id == rid).order_by(Artifact.path)).scalars()
            ]
            datasets = [
                DatasetRecord(d.uri, d.digest, d.pinned_digest, d.object_count, d.total_bytes)
                for d in s.execute(select(Dataset).where(Dataset.run_id == rid)).scalars()
            ]
            resumes = [ResumeInfo(r.attempt, r.step, r.from_attempt, r.uri) for r in
                       s.execute(select(Resume).where(Resume.run_id == rid).order_by(Resume.attempt)).scalars()]
            progress = list(s.execute(select(IngestProgress).where(IngestProgress.run_id == rid)).scalars())
            return RunDetail(
                summary, params, tags,
                environment=_environment(env_row) if env_row else None,
                code=CodeVersion(code_row.repository, code_row.commit, code_row.branch, code_row.dirty)
                if code_row else None,
                artifacts=arts,
                datasets=datasets,
                cluster=ClusterInfo(run.namespace, run.k8s_uid, run.image, run.image_digest, run.node_name,
                                    run.gpu_product, run.resources, run.attempts or 0, run.reason),
                ingest=_ingest_summary(progress),
                uploads=Uploads(run.artifacts_uploaded, run.artifacts_pending),
                resumes=resumes,
            )

    def list_experiments(self, namespace: str | None = None) -> list[ExperimentSummary]:
        """Every experiment (of ``namespace`` when given; "" names those outside a cluster)."""
        with self._session() as s:
            q = (
                select(Experiment.name, func.count(Run.id), func.max(Run.start_time), Experiment.namespace)
                .outerjoin(Run, Run.experiment_id == Experiment.id)
                .group_by(Experiment.namespace, Experiment.name)
                .order_by(Experiment.name, Experiment.namespace)
            )
            if namespace is not None:
                q = q.where(Experiment.namespace == namespace)
            return [ExperimentSummary(name, n, last, ns or None) for name, n, last, ns in s.execute(q).all()]

    def metric_keys(self, run_id: str) -> list[str]:
        with self._session() as s:
            q = select(LatestMetric.key).where(LatestMetric.run_id == _as_uuid(run_id)).order_by(LatestMetric.key)
            return list(s.execute(q).scalars())

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every point of one series, ordered by step (then by arrival)."""
        rid = _as_uuid(run_id)
        with self.engine.connect() as conn:
            return self.backend.read_history(conn, rid, key)

    def downsampled_history(self, run_id: str, key: str, max_points: int = 1000) -> list[HistoryBucket]:
        """At most ``max_points`` buckets of about equal step width: last point, min, max and count in each.

        Keeping min and max means a spike survives downsampling, which plain decimation loses. Read
        from the summaries kept at ingest (``store/summaries.py``): the database merges fewer than 8
        summary rows into each bucket returned, whatever the series' length; a series spanning fewer than
        ``8 * max_points`` steps is read point by point.
        """
        if max_points < 1:
            raise ValueError(f"max_points must be at least 1, not {max_points}")
        rid = _as_uuid(run_id)
        with self.engine.connect() as conn:
            series = and_(Metric.run_id == rid, Metric.key == key)
            # Two subqueries: SQLite reads a lone MIN or MAX from the end of the index, both at once by a scan.
            first, last = conn.execute(select(select(func.min(Metric.step)).where(series).scalar_subquery(),
                                              select(func.max(Metric.step)).where(series).scalar_subquery())).one()
            if first is None:
                return []
            level = summaries.choose_level(first, last, max_points)
            if level is None:
                by_step = summaries.point_buckets(self.backend.read_history(conn, rid, key), 0)
                return summaries.merged(by_step.items(), first, last, max_points)
            width_bits = summaries.LEVEL_BITS * level
            first_index, last_index = first >> width_bits, last >> width_bits
            span = last_index - first_index + 1
            # The database merges the level's buckets into output groups as summaries.merged would (the
            # last point of a group is that of its highest bucket), so at most max_points rows travel.
            this_series = and_(MetricSummary.run_id == rid, MetricSummary.key == key, MetricSummary.level == level)
            group = ((MetricSummary.bucket - first_index) * max_points // span).label("grp")  # span >= max_points
            groups = (
                select(group, func.min(MetricSummary.min_value).label("mn"),
                       func.max(MetricSummary.max_value).label("mx"), func.sum(MetricSummary.count).label("n"),
                       func.max(MetricSummary.bucket).label("last_bucket"))
                .where(this_series).group_by(group).subquery()
            )
            rows = conn.execute(
                select(MetricSummary.last_step, MetricSummary.last_value, groups.c.mn, groups.c.mx, groups.c.n,
                       MetricSummary.last_timestamp_ms)
                .join(groups, and_(this_series, MetricSummary.bucket == groups.c.last_bucket))
                .order_by(groups.c.grp)
            ).all()
        return [HistoryBucket(step, nan_if_null(v), mn, mx, int(n), ts) for step, v, mn, mx, n, ts in rows]
