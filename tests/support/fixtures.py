"""Fixtures shared by every test module, registered by tests/conftest.py.

A real PostgreSQL server for the session with a fresh database per test, SQLite stores, MinIO and
Prometheus servers, a clean ``CAIRN_HOME`` and an SDK reset after each test.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from cairn import sdk
from cairn.store import db
from cairn.store import TrackingStore

from .servers import MinioServer, PostgresServer, PrometheusServer

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().init().start()
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres_server):
    url = postgres_server.create_database(f"t{os.getpid()}_{next(_db_counter)}")
    db.upgrade(db.get_engine(url))
    yield url
    db.get_engine(url).dispose()  # one database per test: keep idle pools from piling up


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'cairn.db'}"
    db.upgrade(db.get_engine(url))
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def store(store_url) -> TrackingStore:
    return TrackingStore(store_url)


@pytest.fixture
def cairn_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CAIRN_HOME", str(home))
    for var in ("CAIRN_RUN_ID", "CAIRN_RUN_DIR", "CAIRN_PARAMS", "CAIRN_PARAMS_FILE", "CAIRN_EXPERIMENT",
                "CAIRN_DATABASE_URL", "CAIRN_MODE", "CAIRN_RUN_NAME"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def fresh_sdk(cairn_home):
    """The SDK as a new process has it after the test: no current run, no resume point, no config.

    Modules whose tests start SDK runs use it with ``pytestmark = pytest.mark.usefixtures("fresh_sdk")``.
    """
    yield
    if sdk.run is not None:
        sdk.run.finish()
    sdk.run = None
    sdk.resume_from = None
    sdk.config._replace({})


# --- MinIO and Prometheus (tests/support/servers.py) -------------------------------------------
_bucket_counter = itertools.count()


@pytest.fixture(scope="session")
def minio_server() -> MinioServer:
    """MinIO for the session (built by hack/build-minio.sh on first use). A test that stops it
    starts it again; tests that kill it for good use ``minio_factory``."""
    server = MinioServer().start()
    yield server
    server.destroy()


@pytest.fixture
def minio_bucket(minio_server) -> str:
    """A new empty bucket on the session's MinIO."""
    minio_server.start()
    name = f"t{os.getpid()}-{next(_bucket_counter)}"
    minio_server.client().make_bucket(name)
    return name


@pytest.fixture
def minio_factory():
    """``make(**MinioServer kwargs) -> MinioServer``, started; all destroyed after the test."""
    servers: list[MinioServer] = []

    def make(**kwargs) -> MinioServer:
        server = MinioServer(**kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.destroy()


@pytest.fixture
def prometheus_factory():
    """``make(config=None, interval="1s") -> PrometheusServer``, started; all destroyed after the test.
    ``config``: a list of scrape configs, a whole config dict, or YAML text."""
    servers: list[PrometheusServer] = []

    def make(config=None, interval: str = "1s") -> PrometheusServer:
        server = PrometheusServer(config, interval=interval)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.destroy()
