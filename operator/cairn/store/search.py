"""Run search for readers such as ``cairn server``: filters, sorting and pagination done by the database.

``RunSearch`` is mixed into ``TrackingStore``. A page of runs costs one counting query, one query for the
page's ids and one per kind of detail (params, tags, latest metrics) for those ids only, so the cost follows
the page size and the indexes, not the number of runs in the store.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from cairn.rundir import RunStatus
from cairn.store.backends import Backend, nan_if_null
from cairn.store.entities import LatestValue
from cairn.store.models import Experiment, LatestMetric, Param, Run, Tag

DEFAULT_NAMESPACE = "default"  # where runs recorded outside Kubernetes (no namespace) belong
Operator = Literal["=", "!=", "<", "<=", ">", ">="]
OPERATORS: tuple[str, ...] = ("!=", "<=", ">=", "=", "<", ">")  # two-character ones first, for parsing
FILTER_FIELDS = ("status", "name", "experiment")
ORDER_FIELDS = ("start_time", "end_time", "name", "status", "experiment")
MAX_COMPARED_RUNS = 10


class SearchError(ValueError):
    """A filter, sort key or page token the search cannot take; the message says which and why."""


@dataclass(frozen=True)
class RunFilter:
    """``kind`` is ``params``, ``metrics``, ``tags`` or ``field`` (a column of the run: ``key`` is one of
    ``FILTER_FIELDS``)."""

    kind: str
    key: str
    op: Operator
    value: str


@dataclass(frozen=True)
class RunOrder:
    kind: str  # params, metrics, tags or field (``key`` one of ORDER_FIELDS)
    key: str
    descending: bool = False


@dataclass(frozen=True)
class RunRow:
    """A run as a table of runs shows it: identity, status, times and every param, tag and latest metric."""

    id: str
    name: str | None
    namespace: str | None
    experiment: str
    status: RunStatus
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, LatestValue] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None


@dataclass(frozen=True)
class RunPage:
    runs: list[RunRow]
    total: int  # runs matching the filters, over all pages
    next_offset: int | None  # None: this is the last page


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _compare(left: ColumnElement, op: Operator, right: Any) -> ColumnElement:
    return {"=": left == right, "!=": left != right, "<": left < right, "<=": left <= right,
            ">": left > right, ">=": left >= right}[op]


def param_text(stored: str) -> str:
    """A parameter's stored JSON text as a person reads it: a string without its quotes, anything else as JSON."""
    try:
        value = json.loads(stored)
    except ValueError:
        return stored
    return value if isinstance(value, str) else stored


def in_namespace(namespace: str) -> ColumnElement:
    """Runs of ``namespace``; runs recorded without one belong to ``default``."""
    if namespace == DEFAULT_NAMESPACE:
        return or_(Run.namespace == namespace, Run.namespace.is_(None))
    return Run.namespace == namespace


class RunSearch:
    """Search methods of ``TrackingStore`` (which provides ``backend`` and ``_session``)."""

    backend: Backend

    # -- conditions -------------------------------------------------------------------------------
    def _text_condition(self, column: ColumnElement, op: Operator, value: str, stored_as_json: bool) -> ColumnElement:
        """Numbers compare as numbers (rows that hold no number never match); other values as text."""
        number = _number(value)
        if number is not None:
            return _compare(self.backend.number_in_text(column), op, number)
        if stored_as_json:
            text = json.dumps(value)  # a string parameter is stored with its quotes
            if op in ("=", "!="):
                matches = column.in_((text, value))
                return matches if op == "=" else ~matches
            return _compare(column, op, text)
        return _compare(column, op, value)

    def _filter_condition(self, f: RunFilter) -> ColumnElement:
        if f.kind == "metrics":
            number = _number(f.value)
            if number is None:
                raise SearchError(f"metrics.{f.key} compares with a number, not {f.value!r}")
            return exists().where(LatestMetric.run_id == Run.id, LatestMetric.key == f.key,
                                  _compare(LatestMetric.value, f.op, number))
        if f.kind == "params":
            return exists().where(Param.run_id == Run.id, Param.key == f.key,
                                  self._text_condition(Param.value, f.op, f.value, stored_as_json=True))
        if f.kind == "tags":
            return exists().where(Tag.run_id == Run.id, Tag.key == f.key,
                                  self._text_condition(Tag.value, f.op, f.value, stored_as_json=False))
        if f.kind == "field" and f.key == "status":
            if f.op not in ("=", "!="):
                raise SearchError(f"status takes = or !=, not {f.op}")
            status = f.value.upper()
            if status not in RunStatus.__members__:
                raise SearchError(f"status {f.value!r} is none of {', '.join(RunStatus.__members__)}")
            return _compare(Run.status, f.op, status)
        if f.kind == "field" and f.key == "name":
            return _compare(Run.name, f.op, f.value)
        if f.kind == "field" and f.key == "experiment":
            return _compare(Experiment.name, f.op, f.value)
        raise SearchError(f"cannot filter on {f.kind}.{f.key}")

    def _sort_columns(self, q, order: RunOrder):  # noqa: ANN001, ANN202
        """The query joined with what ``order`` sorts by, and the ORDER BY terms (missing values last)."""
        if order.kind == "metrics":
            latest = aliased(LatestMetric)
            q = q.outerjoin(latest, and_(latest.run_id == Run.id, latest.key == order.key))
            sort_values = [latest.value]
        elif order.kind in ("params", "tags"):
            table = aliased(Param if order.kind == "params" else Tag)
            q = q.outerjoin(table, and_(table.run_id == Run.id, table.key == order.key))
            # Numbers before text, each in its own order: 2 < 10, and "b" after "a".
            sort_values = [self.backend.number_in_text(table.value), table.value]
        elif order.kind == "field" and order.key in ORDER_FIELDS:
            sort_values = [Experiment.name if order.key == "experiment" else getattr(Run, order.key)]
        else:
            raise SearchError(f"cannot sort by {order.kind}.{order.key}")
        terms = [sort_values[-1].is_(None)]
        for value in sort_values:
            terms.append(value.desc().nulls_last() if order.descending else value.asc().nulls_last())
        return q, terms

    # -- the search -------------------------------------------------------------------------------
    def search_runs(self, namespace: str, filters: Sequence[RunFilter] = (), order_by: Sequence[RunOrder] = (),
                    limit: int = 100, offset: int = 0) -> RunPage:
        """The runs of ``namespace`` that pass every filter, sorted (newest start first by default), one page."""
        conditions = [in_namespace(namespace), *(self._filter_condition(f) for f in filters)]
        base = select(Run.id).join(Experiment, Run.experiment_id == Experiment.id).where(*conditions)
        q, terms = base, []
        for order in order_by or [RunOrder("field", "start_time", descending=True)]:
            q, more = self._sort_columns(q, order)
            terms += more
        q = q.order_by(*terms, Run.created_at.desc(), Run.id).limit(limit).offset(offset)
        with self._session() as s:
            total = s.execute(select(func.count()).select_from(base.subquery())).scalar_one()
            ids = list(s.execute(q).scalars())
            rows = self._run_rows(s, ids)
        more = offset + len(ids) < total
        return RunPage(rows, total, offset + len(ids) if more and ids else None)

    def run_ids_starting(self, namespace: str, prefix: str) -> list[str]:
        """Ids of ``namespace``'s runs that start with ``prefix`` (lower case, as written with dashes), sorted."""
        with self._session() as s:
            # UUIDs compare as text; the column's text form differs between databases, so the match is made here.
            ids = s.execute(select(Run.id).where(in_namespace(namespace))).scalars()
            return sorted(str(rid) for rid in ids if str(rid).startswith(prefix))

    def run_rows(self, run_ids: Sequence[str], namespace: str) -> list[RunRow]:
        """The runs of ``namespace`` among ``run_ids``, in that order; ids of other namespaces or of no run
        are left out."""
        wanted = []
        for run_id in run_ids:
            try:
                wanted.append(uuid.UUID(str(run_id)))
            except ValueError:
                continue
        with self._session() as s:
            found = set(s.execute(select(Run.id).where(Run.id.in_(wanted), in_namespace(namespace))).scalars())
            return self._run_rows(s, [rid for rid in wanted if rid in found])

    def _run_rows(self, s: Session, ids: Sequence[uuid.UUID]) -> list[RunRow]:
        if not ids:
            return []
        # Plain column rows, not ORM objects: a page is read once and thrown away, no identity map needed.
        runs = {r.id: r for r in s.execute(
            select(Run.id, Run.name, Run.namespace, Experiment.name.label("experiment"), Run.status, Run.start_time,
                   Run.end_time, Run.exit_code)
            .join(Experiment, Run.experiment_id == Experiment.id).where(Run.id.in_(ids)))}
        params: dict[uuid.UUID, dict[str, str]] = {rid: {} for rid in ids}
        for rid, key, value in s.execute(select(Param.run_id, Param.key, Param.value).where(Param.run_id.in_(ids))):
            params[rid][key] = param_text(value)
        tags: dict[uuid.UUID, dict[str, str]] = {rid: {} for rid in ids}
        for rid, key, value in s.execute(select(Tag.run_id, Tag.key, Tag.value).where(Tag.run_id.in_(ids))):
            tags[rid][key] = value
        metrics: dict[uuid.UUID, dict[str, LatestValue]] = {rid: {} for rid in ids}
        latest = select(LatestMetric.run_id, LatestMetric.key, LatestMetric.step, LatestMetric.value,
                        LatestMetric.min_value, LatestMetric.max_value, LatestMetric.count)
        for rid, key, step, value, low, high, count in s.execute(latest.where(LatestMetric.run_id.in_(ids))):
            metrics[rid][key] = LatestValue(key, step, nan_if_null(value), low, high, count)
        rows = []
        for rid in ids:
            run = runs[rid]
            rows.append(RunRow(str(rid), run.name, run.namespace, run.experiment, RunStatus(run.status), run.start_time,
                               run.end_time, dict(sorted(params[rid].items())), dict(sorted(metrics[rid].items())),
                               dict(sorted(tags[rid].items())), run.exit_code))
        return rows

    def namespace_experiments(self, namespace: str) -> list[tuple[str, str | None, int, dt.datetime | None]]:
        """(experiment, its namespace (None: local runs), runs, last start time) for each experiment with runs
        in ``namespace``, by name."""
        q = (select(Experiment.name, Experiment.namespace, func.count(Run.id), func.max(Run.start_time))
             .join(Run, Run.experiment_id == Experiment.id).where(in_namespace(namespace))
             .group_by(Experiment.name, Experiment.namespace).order_by(Experiment.name, Experiment.namespace))
        with self._session() as s:
            return [(name, ns or None, n, last) for name, ns, n, last in s.execute(q).all()]

    def run_in_namespace(self, run_id: str, namespace: str) -> bool:
        """Whether ``run_id`` names a run of ``namespace`` (False for anything that is no run id)."""
        try:
            rid = uuid.UUID(str(run_id))
        except ValueError:
            return False
        with self._session() as s:
            return s.execute(select(Run.id).where(Run.id == rid, in_namespace(namespace))).first() is not None
