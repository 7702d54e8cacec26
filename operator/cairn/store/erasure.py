"""Where a run's rows are, and erasing them: what ``cairn runs where`` and ``cairn runs delete`` show
and do on the database's side (sites with data-protection duties need both)."""

from __future__ import annotations

from sqlalchemy import delete, func, select

from cairn.store import db
from cairn.store.models import (
    Artifact,
    CodeVersion,
    Dataset,
    Environment,
    EvalExampleRow,
    IngestProgress,
    LatestMetric,
    Metric,
    ModelVersionRow,
    Param,
    RegisteredModel,
    Resume,
    Run,
    Tag,
)
from cairn.store.tracking import RunNotFound, TrackingStore, _as_uuid

# Every table holding rows of one run, children first (metrics has no foreign key to cascade from).
RUN_TABLES = (Metric, LatestMetric, Param, Tag, Artifact, Dataset, Resume, Environment, CodeVersion, IngestProgress,
              EvalExampleRow, Run)


class RunIsModelSource(db.StoreError):
    def __init__(self, run_id: str, versions: list[str]) -> None:
        super().__init__(f"run {run_id} is the source of model version(s) {', '.join(versions)}: "
                         "delete those versions first", code="RUN_IS_MODEL_SOURCE")


def _run_column(table):  # noqa: ANN001, ANN202
    return table.id if table is Run else table.run_id


def run_row_counts(store: TrackingStore, run_id: str) -> dict[str, int]:
    """Rows of the run per table (tables without any left out); ``RunNotFound`` when there is no run."""
    rid = _as_uuid(run_id)
    with db.session_scope(store.engine) as s:
        counts = {t.__tablename__: s.execute(select(func.count()).where(_run_column(t) == rid)).scalar_one()
                  for t in (*RUN_TABLES, ModelVersionRow)}
    if counts["runs"] == 0:
        raise RunNotFound(run_id)
    return {table: n for table, n in counts.items() if n}


def delete_run_rows(store: TrackingStore, run_id: str) -> dict[str, int]:
    """Delete every row of the run in one transaction; the rows deleted per table. Refused while a
    model version was registered from the run."""
    rid = _as_uuid(run_id)
    with db.session_scope(store.engine) as s:
        versions = s.execute(select(RegisteredModel.namespace, RegisteredModel.name, ModelVersionRow.version)
                             .join(RegisteredModel, RegisteredModel.id == ModelVersionRow.model_id)
                             .where(ModelVersionRow.run_id == rid)).all()
        if versions:
            raise RunIsModelSource(run_id, [f"{ns}/{name}:{v}" for ns, name, v in versions])
        deleted = {t.__tablename__: s.execute(delete(t).where(_run_column(t) == rid)).rowcount for t in RUN_TABLES}
        if deleted["runs"] == 0:
            raise RunNotFound(run_id)
    return {table: n for table, n in deleted.items() if n}
