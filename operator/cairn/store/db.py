"""Engines, sessions and schema versions: the one place that knows database URLs."""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cairn.rundir import Env

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class StoreError(Exception):
    """A store problem a user can act on; ``code`` names it for scripts."""

    def __init__(self, message: str, code: str = "STORE_ERROR") -> None:
        super().__init__(message)
        self.code = code


class IngestConflict(StoreError):
    """Another writer committed lines of the same source first: the batch was not stored."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="INGEST_OFFSET_CONFLICT")


class BatchRefused(StoreError):
    """The database refused a batch for what it holds (a value it cannot store), not for being away:
    sending the same batch again cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="BATCH_REFUSED")


def refused_for_its_data(engine: Engine, exc: BaseException) -> bool:
    """Whether ``exc`` from a write is the data's fault rather than the database's (unreachable,
    restarting, out of disk, a lock timeout: those are ``OperationalError``/``InterfaceError``)."""
    dbapi = engine.dialect.loaded_dbapi
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return False
    if isinstance(orig, dbapi.Error):
        return isinstance(orig, (dbapi.DataError, dbapi.IntegrityError, dbapi.ProgrammingError,
                                 dbapi.NotSupportedError))
    # Raised by the driver or SQLAlchemy before the server sees the value (an integer too large).
    return isinstance(orig, (ValueError, TypeError, OverflowError))


def cairn_home() -> Path:
    return Path(os.environ.get(Env.HOME) or Path.home() / ".cairn")


def default_database_url() -> str:
    """``CAIRN_DATABASE_URL``, else an SQLite file under ``CAIRN_HOME`` (the embedded default)."""
    url = os.environ.get(Env.DATABASE_URL)
    if url:
        return url
    home = cairn_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'cairn.db'}"


def normalise_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2 (SQLAlchemy 2.1 would pick psycopg 3 for ``postgresql://``)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
    cur = dbapi_connection.cursor()
    # WAL lets the CLI read while an agent writes; busy_timeout waits out the writer's lock.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    url = normalise_url(url or default_database_url())
    if url.startswith("sqlite"):
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    return engine


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, always close."""
    session = sessionmaker(bind=engine, expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(engine: Engine):  # noqa: ANN202
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; returns (before, after)."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), "head")
    return before, head_revision()


def check_reachable(engine: Engine) -> None:
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise StoreError(
            f"cannot reach the database at {redact(str(engine.url))}: {exc.orig}".strip(),
            code="DATABASE_UNREACHABLE",
        ) from exc


def ensure_schema(engine: Engine) -> None:
    """Refuse an out-of-date schema with the command that fixes it.

    The embedded SQLite default is upgraded in place: there is no one else to run migrations.
    """
    check_reachable(engine)
    if engine.dialect.name == "sqlite":
        if current_revision(engine) != head_revision():
            upgrade(engine)
        return
    current = current_revision(engine)
    if current != head_revision():
        have = current or ("empty database" if not inspect(engine).get_table_names() else "unversioned")
        raise StoreError(
            f"database schema is at {have}, this Cairn needs {head_revision()}: "
            f"run `cairn db upgrade` (database {redact(str(engine.url))})",
            code="SCHEMA_OUT_OF_DATE",
        )
