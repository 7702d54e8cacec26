"""A tenant's PostgreSQL schema and LOGIN role, made and kept with the admin's engine.

Each namespace gets schema ``tenant_<namespace>`` holding Cairn's tables (the Alembic migrations run
with that schema as ``search_path``, so the version table lives there too) and a role of the same name
with USAGE on that schema alone and DML on its tables. Its URL carries ``options=-csearch_path=<schema>``,
so ``COPY`` and every query work unchanged; the database refuses it everything else. Row-level security
is not used: PostgreSQL refuses ``COPY FROM`` into a table that has it.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from cairn.store import db
from cairn.tenancy.naming import SCHEMA_PREFIX, schema_name

VERSION_TABLE = "alembic_version"


def tenant_url(admin_url: str, namespace: str, password: str | None = None) -> str:
    """``admin_url`` logging in as the namespace's role (with ``password``; None keeps the admin's
    credentials, for the operator's own writes) and looking only at its schema."""
    return _schema_url(admin_url, schema_name(namespace), password)


def _schema_url(admin_url: str, schema: str, password: str | None = None) -> str:
    url = make_url(db.normalise_url(admin_url))
    if password is not None:
        url = url.set(username=schema, password=password)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def upgrade_tenant_schemas(admin_url: str) -> dict[str, tuple[str | None, str]]:
    """Migrate every tenant schema of the database (``cairn db upgrade`` after a new Cairn) and grant
    its role the tables a migration added; (before, after) per schema."""
    admin = db.get_engine(admin_url)
    with admin.connect() as conn:
        schemas = conn.execute(text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :prefix ORDER BY nspname"),
                               {"prefix": SCHEMA_PREFIX.replace("_", "\\_") + "%"}).scalars().all()
    done = {}
    for schema in schemas:
        engine = db.get_engine(_schema_url(admin_url, schema))
        done[schema] = db.upgrade(engine)
        engine.dispose()
        with admin.begin() as conn:
            _grant(conn, schema)
    return done


def _lock_key(schema: str) -> int:
    return int.from_bytes(hashlib.sha256(schema.encode()).digest()[:8], "big", signed=True)


def provision_database(admin_url: str, namespace: str, password: str) -> str:
    """Make (or bring up to date) the namespace's schema and role, give the role ``password``, and
    return its URL. Idempotent; a new password replaces the old one (rotation)."""
    schema = schema_name(namespace)
    admin: Engine = db.get_engine(admin_url)
    key = {"key": _lock_key(schema)}
    # Two operators (or two handlers) provisioning one namespace take turns; the lock is the session's.
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), key)
        try:
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            db.upgrade(db.get_engine(tenant_url(admin_url, namespace)))
            with admin.begin() as conn:
                _ensure_role(conn, schema, password)
                _grant(conn, schema)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), key)
    return tenant_url(admin_url, namespace, password)


def _ensure_role(conn, schema: str, password: str) -> None:  # noqa: ANN001
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": schema}).first()
    verb = "ALTER" if exists else "CREATE"
    # psycopg2 binds parameters on the client, so the password is quoted as a literal here.
    conn.execute(text(f'{verb} ROLE "{schema}" WITH LOGIN NOINHERIT NOCREATEDB NOCREATEROLE PASSWORD :pw'),
                 {"pw": password})


def _grant(conn, schema: str) -> None:  # noqa: ANN001
    """USAGE on its schema, DML on its tables, read-only on the schema version, nothing elsewhere."""
    for statement in (
        f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC',
        f'GRANT USAGE ON SCHEMA "{schema}" TO "{schema}"',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{schema}"',
        f'REVOKE INSERT, UPDATE, DELETE ON "{schema}".{VERSION_TABLE} FROM "{schema}"',
        f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{schema}"',
    ):
        conn.execute(text(statement))
