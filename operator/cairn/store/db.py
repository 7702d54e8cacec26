"""Engines, sessions and schema versions: the one place that knows database URLs."""

from __future__ import annotations

import contextlib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cairn.rundir import Env

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
REDACTED = "***"
MIN_REDACTED_LENGTH = 3  # a shorter password would blank out letters all over the message
# scheme://user[:password]@host...: the userinfo runs to the last "@", since an unencoded password
# may itself hold "@", ":" or "/".
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@(?P<rest>[^@]*)$", re.DOTALL)
_RAW_IN_USERINFO = re.compile(r"[@:/?#\[\]]|%(?![0-9A-Fa-f]{2})")


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


def _userinfo(url: str) -> tuple[str, str, str | None, str] | None:
    """(scheme://, user, password or None, what follows the "@") of a URL with a userinfo, as written.
    None for SQLite, whose "URL" is a file path that may hold an "@"."""
    m = _USERINFO.match(url)
    if m is None or url.startswith("sqlite"):
        return None
    user, colon, password = m["userinfo"].partition(":")
    return m["scheme"], user, password if colon else None, m["rest"]


def _encoded(part: str) -> str:
    """A user name or password as a URL must hold it: left alone when already encoded (or plain)."""
    return quote(part, safe="") if _RAW_IN_USERINFO.search(part) else part


def normalise_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2 (SQLAlchemy 2.1 would pick psycopg 3 for ``postgresql://``), and
    percent-encode a user name or password written unencoded (``p@ss:w/rd%``): parsed as it is, part of
    the password would become the host and show up in connection errors."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg2://" + url[len(prefix):]
    parts = _userinfo(url)
    if parts is None:
        return url
    scheme, user, password, rest = parts
    userinfo = _encoded(user) + ("" if password is None else ":" + _encoded(password))
    return f"{scheme}{userinfo}@{rest}"


def redact(url: str) -> str:
    """``url`` with its password hidden, whether or not it parses."""
    url = normalise_url(url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        parts = _userinfo(url)
        if parts is None:
            return url
        scheme, user, password, rest = parts
        return f"{scheme}{user}{'' if password is None else ':' + REDACTED}@{rest}"


def redact_text(text: str, url: str) -> str:
    """``text`` (a driver's error message, a log line) without the password of ``url`` in any spelling."""
    parts = _userinfo(normalise_url(url))
    if parts is None or not parts[2]:
        return text
    encoded = parts[2]
    for secret in sorted({encoded, unquote(encoded)}, key=len, reverse=True):
        if len(secret) >= MIN_REDACTED_LENGTH:
            text = text.replace(secret, REDACTED)
    return text


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
    try:
        make_url(url)
    except (ArgumentError, ValueError):
        # Their messages quote the URL, or the piece of it that would not parse.
        raise StoreError(f"the database URL {redact(url)} cannot be parsed", code="BAD_DATABASE_URL") from None
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
        url = engine.url.render_as_string(hide_password=False)
        raise StoreError(
            f"cannot reach the database at {redact(url)}: {redact_text(str(exc.orig), url)}".strip(),
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
