"""The operator's store writes against a real PostgreSQL that is stopped and started: they wait while it
is away (bounded, oldest first, the latest columns per run), land when it returns, create a missing
row, and a write the store refuses is dropped and counted instead of holding up the others."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cairn.api import from_manifest
from cairn.controller import handlers as H
from cairn.controller.metrics import StoreWritesCollector
from cairn.controller.runtime import StoreWrite, StoreWrites
from cairn.rundir import RunStatus
from cairn.store import TrackingStore, db
from tests.support.cluster import wait_until
from tests.support.servers import PostgresServer


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL of this module's own, since its tests stop it."""
    server = PostgresServer().init().start()
    yield server
    server.destroy()


@pytest.fixture
def store(own_postgres) -> TrackingStore:
    url = own_postgres.create_database(f"w{uuid.uuid4().hex[:10]}")
    db.upgrade(db.get_engine(url))
    store = TrackingStore(url, check_schema=False)
    yield store
    if not own_postgres.running():  # a failed test may leave it stopped
        own_postgres.start()
    store.engine.dispose()


def store_writes(store: TrackingStore, **kwargs) -> StoreWrites:  # noqa: ANN003
    return StoreWrites(lambda uid, write: H.write_run(store, uid, write), lambda: db.ensure_schema(store.engine),
                       H.store_unavailable, **kwargs)


def trainingrun(name: str = "mnist"):  # noqa: ANN201
    return from_manifest({"metadata": {"name": name, "namespace": "ml", "uid": str(uuid.uuid4())},
                          "spec": {"image": "trainer:1", "command": ["python3", "train.py"], "experiment": "exp"}})


def status_of(store: TrackingStore, uid: str) -> RunStatus | None:
    return store.run_status(uid)


def test_writes_wait_while_the_store_is_down_and_land_when_it_returns(store, own_postgres):
    writes = store_writes(store)
    registry = CollectorRegistry()
    registry.register(StoreWritesCollector(writes))
    tr = trainingrun()
    own_postgres.stop()
    started = time.monotonic()
    writes.submit(tr.uid, StoreWrite({}, tr, create=True))
    writes.submit(tr.uid, StoreWrite({"status": RunStatus.RUNNING, "attempts": 1}, tr))
    assert time.monotonic() - started < 5  # the handler is not held up
    assert (writes.up, writes.pending()) == (False, 1)
    metrics = generate_latest(registry).decode()
    assert "cairn_store_up 0.0" in metrics and "cairn_store_pending_writes 1.0" in metrics

    own_postgres.start()
    assert writes.flush()
    assert (writes.up, writes.pending()) == (True, 0)
    assert status_of(store, tr.uid) == RunStatus.RUNNING
    assert store.get_run(tr.uid).cluster.attempts == 1
    assert "cairn_store_up 1.0" in generate_latest(registry).decode()


def test_the_writes_thread_catches_up_once_the_store_returns(store, own_postgres):
    own_postgres.stop()
    writes = store_writes(store)
    writes.start()
    try:
        tr = trainingrun()
        writes.submit(tr.uid, StoreWrite({"status": RunStatus.KILLED, "reason": "TrainingRun deleted"}, tr))
        wait_until(lambda: writes.up is False, 10, "the writes thread to find the store down")
        own_postgres.start()
        wait_until(lambda: writes.pending() == 0, 30, "the waiting write to land")
    finally:
        writes.stop()
    assert status_of(store, tr.uid) == RunStatus.KILLED


def test_a_run_without_a_row_gets_one_with_its_columns(store):
    writes = store_writes(store)
    tr = trainingrun()
    end = dt.datetime.now(dt.timezone.utc)
    writes.submit(tr.uid, StoreWrite({"status": RunStatus.KILLED, "end_time": end}, tr))
    assert writes.pending() == 0
    run = store.get_run(tr.uid)
    assert (run.summary.status, run.summary.name, run.summary.experiment) == ("KILLED", "mnist", "exp")


def test_at_most_max_runs_wait_and_each_keeps_its_latest_columns(store, own_postgres):
    writes = store_writes(store, max_runs=2)
    first, second, third = trainingrun("a"), trainingrun("b"), trainingrun("c")
    own_postgres.stop()
    for tr in (first, second, third):
        writes.submit(tr.uid, StoreWrite({"status": RunStatus.PENDING}, tr, create=True))
    writes.submit(third.uid, StoreWrite({"status": RunStatus.RUNNING}, third))
    writes.submit(third.uid, StoreWrite({"status": RunStatus.FINISHED, "exit_code": 0}, third))
    assert writes.pending() == 2 and writes.dropped == {"overflow": 1, "refused": 0}

    own_postgres.start()
    assert writes.flush()
    assert status_of(store, first.uid) is None  # the oldest was dropped
    assert status_of(store, second.uid) == RunStatus.PENDING
    assert (status_of(store, third.uid), store.get_run(third.uid).summary.exit_code) == (RunStatus.FINISHED, 0)


def test_a_refused_write_is_dropped_and_counted_and_the_next_one_lands(store, own_postgres):
    writes = store_writes(store)
    bad, good = trainingrun("bad"), trainingrun("good")
    own_postgres.stop()
    writes.submit(bad.uid, StoreWrite({"attempts": "many"}, bad, create=True))  # not an integer column value
    writes.submit(good.uid, StoreWrite({"status": RunStatus.RUNNING}, good, create=True))
    own_postgres.start()
    assert writes.flush()
    assert writes.dropped == {"overflow": 0, "refused": 1}
    assert status_of(store, good.uid) == RunStatus.RUNNING
