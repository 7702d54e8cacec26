"""Shared fixtures: a real PostgreSQL server for the session, fresh databases per test."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import PostgresServer  # noqa: E402

from cairn.store import db  # noqa: E402
from cairn.store.store import TrackingStore  # noqa: E402

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().init().start()
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    url = postgres_server.create_database(f"t{os.getpid()}_{next(_db_counter)}")
    db.upgrade(db.get_engine(url))
    return url


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
