"""What differs between PostgreSQL and SQLite, behind one seam chosen once per store.

PostgreSQL writes metric rows with ``COPY`` and reads a series back with binary ``COPY``; SQLite
inserts and selects in batches and cannot store NaN (it becomes NULL). Both dialects' ``INSERT``
constructs offer the same ``on_conflict_do_*`` upserts.
"""

from __future__ import annotations

import io
import math
import uuid
from typing import Protocol, Sequence

from sqlalchemy import Double, case, cast, func, insert, null, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from cairn.store import pgcopy
from cairn.store.db import StoreError
from cairn.store.entities import MetricPoint
from cairn.store.models import Metric

SQLITE_INSERT_CHUNK = 5000
COPY_CHUNK_CHARS = 1 << 20  # psycopg2 reads 8 KiB per call by default: one call per ~100 rows
NUMBER_PATTERN = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"  # a JSON number


class Backend(Protocol):
    def insert(self, table):  # noqa: ANN001, ANN201
        """The dialect's ``INSERT`` construct, which has ``on_conflict_do_nothing/update``."""

    def stored_float(self, value: float) -> float | None:
        """A float as its column can hold it."""

    def write_metrics(self, session: Session, run_id: uuid.UUID, points: Sequence[MetricPoint]) -> None:
        """Append metric rows in the session's transaction."""

    def read_history(self, conn: Connection, run_id: uuid.UUID, key: str) -> list[MetricPoint]:
        """Every point of one series ordered by step, then by arrival; NULL values read as NaN."""

    def number_in_text(self, column):  # noqa: ANN001, ANN201
        """``column`` (text) as a float where it holds a plain decimal number, else NULL."""


def nan_if_null(value: float | None) -> float:
    return math.nan if value is None else value


class PostgresBackend:
    def insert(self, table):  # noqa: ANN001, ANN201
        return postgresql.insert(table)

    def stored_float(self, value: float) -> float:
        return value

    def write_metrics(self, session: Session, run_id: uuid.UUID, points: Sequence[MetricPoint]) -> None:
        rows = pgcopy.encode_metric_rows(str(run_id), points)
        raw = session.connection().connection.dbapi_connection
        with raw.cursor() as cur:
            cur.copy_expert(f"COPY metrics ({', '.join(pgcopy.METRIC_COLUMNS)}) FROM STDIN", io.StringIO(rows),
                            size=COPY_CHUNK_CHARS)

    def read_history(self, conn: Connection, run_id: uuid.UUID, key: str) -> list[MetricPoint]:
        """Through ``COPY ... (FORMAT binary)``: about twice as fast as ``fetchall`` on 1M points.

        ``value`` is never NULL on PostgreSQL; COALESCE keeps every row the same size regardless.
        """
        buf = io.BytesIO()
        with conn.connection.dbapi_connection.cursor() as cur:
            query = cur.mogrify(
                "SELECT step, timestamp_ms, COALESCE(value, 'NaN'::float8) FROM metrics"
                " WHERE run_id = %s AND key = %s ORDER BY step, id", (str(run_id), key)).decode()
            cur.copy_expert(f"COPY ({query}) TO STDOUT (FORMAT binary)", buf)
        try:
            with buf.getbuffer() as data:
                return pgcopy.decode_history(key, data)
        except pgcopy.CopyFormatError as exc:
            raise StoreError(f"unexpected COPY output from the server: {exc}") from exc
        finally:
            buf.close()


    def number_in_text(self, column):  # noqa: ANN001, ANN201
        return case((column.regexp_match(NUMBER_PATTERN), cast(column, Double)), else_=null())


class SqliteBackend:
    def insert(self, table):  # noqa: ANN001, ANN201
        return sqlite.insert(table)

    def stored_float(self, value: float) -> float | None:
        return None if math.isnan(value) else value

    def write_metrics(self, session: Session, run_id: uuid.UUID, points: Sequence[MetricPoint]) -> None:
        rows = [
            {"run_id": run_id, "key": p.key, "step": p.step, "timestamp_ms": p.timestamp_ms,
             "value": None if math.isnan(p.value) else p.value}
            for p in points
        ]
        for i in range(0, len(rows), SQLITE_INSERT_CHUNK):
            session.execute(insert(Metric), rows[i: i + SQLITE_INSERT_CHUNK])

    def read_history(self, conn: Connection, run_id: uuid.UUID, key: str) -> list[MetricPoint]:
        rows = conn.execute(
            select(Metric.step, Metric.timestamp_ms, Metric.value)
            .where(Metric.run_id == run_id, Metric.key == key)
            .order_by(Metric.step, Metric.id)
        ).all()
        return [MetricPoint(key, step, ts, nan_if_null(v)) for step, ts, v in rows]


    def number_in_text(self, column):  # noqa: ANN001, ANN201
        # SQLite has no regular expressions; json_type is 'integer' or 'real' for exactly a JSON number
        # (the GLOB first, because json_type raises on text that is not JSON).
        plain = column.op("NOT GLOB")("*[^0-9eE.+-]*") & (func.json_valid(column) == 1)
        return case((plain & func.json_type(column).in_(("integer", "real")), cast(column, Double)), else_=null())


def backend_for(engine: Engine) -> Backend:
    return PostgresBackend() if engine.dialect.name == "postgresql" else SqliteBackend()
