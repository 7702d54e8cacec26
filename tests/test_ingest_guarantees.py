"""What ingest promises whatever the run directory holds, on both real stores: every line is stored
once or rejected with a reason, the finish record always lands, two agents never store a line
twice, and a file replaced under its name is reported instead of read from mid-line."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from cairn.agent.ingest import SOURCE_REPLACED, SOURCE_TRUNCATED, IngestAgent
from cairn.agent.records import STORE_REJECTED
from cairn.rundir import RECORDS_FILE
from cairn.store import TrackingStore, db


def run_record(run_id: str, **fields) -> dict:
    return {"type": "run", "run_id": run_id, "experiment": "fuzz", "ts": 1.7e9, **fields}


def write_lines(path: Path, records: list[dict | bytes]) -> None:
    with open(path, "ab") as f:
        for rec in records:
            f.write(rec if isinstance(rec, bytes) else json.dumps(rec).encode() + b"\n")


def ingest_until_drained(run_dir: Path, store: TrackingStore, **kw) -> IngestAgent:
    agent = IngestAgent(run_dir, store=store, **kw)
    stop = threading.Event()
    stop.set()
    assert agent.run(stop, drain_timeout=10), "lines were left behind"
    return agent


def stored_points(store: TrackingStore, run_id: str) -> Counter:
    """(key, step, value) -> how many rows the store holds for it."""
    return Counter((p.key, p.step, p.value) for key in store.metric_keys(run_id)
                   for p in store.metric_history(run_id, key))


# -- the fuzzer -------------------------------------------------------------------------------------
# What a database can store as text: no NUL, no lone surrogate (both are refused: see BAD_LINES).
storable = st.characters(exclude_categories=("Cs",), exclude_characters="\0")
keys = st.text(storable, min_size=1, max_size=30)
plain_keys = keys.filter(lambda k: k not in ("step", "ts", "timestamp", "time", "type"))
values = st.floats(allow_nan=False, width=64)
steps = st.integers(0, (1 << 63) - 1)
good_lines = st.one_of(
    st.builds(lambda step, vals: {"type": "metric", "step": step, "ts": 1.7e9, "values": vals},
              steps, st.dictionaries(keys, values, min_size=1, max_size=5)),
    st.builds(lambda step, vals: {"step": step, **vals}, steps, st.dictionaries(plain_keys, values, min_size=1,
                                                                                max_size=5)),
    st.builds(lambda p: {"type": "params", "params": p},
              st.dictionaries(keys, values | st.text(storable, max_size=10))),
    st.builds(lambda t: {"type": "tags", "tags": t}, st.dictionaries(keys, keys)),
)
# Lines each rejected exactly once, whatever is around them; several reach the database without the checks.
BAD_LINES = [
    b"[" * 100_000 + b"\n",
    b'{"type": "metric", "step": 1, "values": {"loss\\ud800": 0.5}}\n',
    b'{"type": "metric", "step": 1, "values": {"lo\\u0000ss": 0.5}}\n',
    b'{"type": "tags", "tags": {"team": "a\\u0000b"}}\n',
    b'{"type": "params", "params": {"k\\u0000": 1}}\n',
    b'{"type": "finish", "status": "FINISHED", "ts": "x"}\n',
    b'{"type": "run", "experiment": "e", "ts": 1e300}\n',
    b'{"type": "run", "experiment": "e", "code": "abc"}\n',
    b'{"type": "run", "experiment": "e", "tags": ["a"]}\n',
    b'{"type": "run", "experiment": "e", "name": "' + b"n" * 300 + b'"}\n',
    b'{"type": "run", "experiment": "e", "environment": {"gpu_count": "8"}}\n',
    b'{"type": "metric", "step": 1, "values": {"' + b"k" * 251 + b'": 0.5}}\n',
    b'{"type": "metric", "step": -1, "values": {"loss": 0.5}}\n',
    b'{"step": 2, "loss": "low"}\n',
    b'{"type": "metric", "step": 1, "ts": 1e300, "values": {"loss": 0.5}}\n',
    b"not json\n",
]
lines_in_a_run = st.lists(st.tuples(st.booleans(), good_lines, st.sampled_from(range(len(BAD_LINES)))), max_size=25)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines_in_a_run)
def test_fuzzed_lines_are_stored_once_or_counted_and_the_finish_record_lands(store, tmp_path, picks):
    run_id = str(uuid.uuid4())
    run_dir = tmp_path / run_id
    run_dir.mkdir()
    chosen = [good if is_good else BAD_LINES[bad] for is_good, good, bad in picks]
    write_lines(run_dir / RECORDS_FILE, [run_record(run_id), *chosen, {"type": "finish", "exit_code": 0}])
    ingest_until_drained(run_dir, store, max_batch_bytes=64 << 10, max_batch_points=50)

    expected = Counter()
    params, tags = {}, {}
    for rec in chosen:
        if isinstance(rec, bytes):
            continue
        if rec.get("type") == "params":
            params.update(rec["params"])
        elif rec.get("type") == "tags":  # the tags the operator owns are kept beside it, under code.
            tags.update({f"code.{k}" if k.startswith(("kubernetes.", "cairn.")) else k: v
                         for k, v in rec["tags"].items()})
        else:
            vals = rec["values"] if "values" in rec else {k: v for k, v in rec.items() if k != "step"}
            expected.update((k, rec["step"], v) for k, v in vals.items())
    detail = store.get_run(run_id)
    assert stored_points(store, run_id) == expected
    assert detail.params == params and detail.tags == tags
    assert sum(detail.ingest.rejected.values()) == sum(isinstance(rec, bytes) for rec in chosen)
    assert detail.summary.status == "FINISHED" and detail.summary.exit_code == 0


# -- what only the database refuses -----------------------------------------------------------------
def refuse_metric_key(url: str, key: str) -> None:
    """Make the database itself refuse points of ``key``, as it refuses a value it cannot hold."""
    with db.get_engine(url).begin() as conn:
        if url.startswith("sqlite"):
            conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON metrics WHEN NEW.key = '{key}' "
                              "BEGIN SELECT RAISE(ABORT, 'refused key'); END"))
        else:
            conn.execute(text(f"ALTER TABLE metrics ADD CONSTRAINT refuse CHECK (key <> '{key}')"))


def test_a_line_the_database_refuses_is_rejected_with_its_message_and_every_other_line_goes_in(
        store_url, tmp_path, caplog):
    store = TrackingStore(store_url)
    refuse_metric_key(store_url, "refused")
    run_id = str(uuid.uuid4())
    records = [run_record(run_id)]
    records += [{"type": "metric", "step": s, "values": {"loss": float(s)}} for s in range(40)]
    records.insert(23, {"type": "metric", "step": 99, "values": {"loss": 1.0, "refused": 2.0}})
    records.append({"type": "finish", "status": "FAILED", "exit_code": 3})
    write_lines(tmp_path / RECORDS_FILE, records)
    with caplog.at_level(logging.WARNING, logger="cairn.agent"):
        agent = ingest_until_drained(tmp_path, store)

    detail = store.get_run(run_id)
    assert stored_points(store, run_id) == Counter(("loss", s, float(s)) for s in range(40))
    assert detail.ingest.rejected == {STORE_REJECTED: 1}
    assert detail.summary.status == "FAILED" and detail.summary.exit_code == 3
    assert f"line 24 skipped: {STORE_REJECTED}: " in caplog.text and "refuse" in caplog.text
    assert agent.stats.errors == 0  # refused for its data: never retried as if the store were away


# -- two agents on one run directory ----------------------------------------------------------------
def test_two_agents_on_one_run_directory_store_every_point_once(store, tmp_path):
    run_id = str(uuid.uuid4())
    records = [run_record(run_id)] + [{"type": "metric", "step": s, "values": {"loss": float(s), "acc": 0.5}}
                                      for s in range(3000)]
    write_lines(tmp_path / RECORDS_FILE, records + [{"type": "finish"}])
    agents = [IngestAgent(tmp_path, store=store, max_batch_bytes=2048, poll_interval=0.01) for _ in range(2)]
    stop = threading.Event()
    results = []
    threads = [threading.Thread(target=lambda a=a: results.append(a.run(stop, exit_on_finish=True))) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert results == [True, True]
    assert stored_points(store, run_id) == Counter(
        (k, s, v) for s in range(3000) for k, v in (("loss", float(s)), ("acc", 0.5)))
    assert sum(a.stats.points for a in agents) == 6000
    assert store.get_run(run_id).ingest.points == 6000


def test_an_agent_whose_offset_went_stale_stores_nothing_twice(store, tmp_path):
    """The race of two agents, in a fixed order: B has committed up to some offset, A carries on from
    the store's offset to the end, more lines come, then B resumes from the offset it remembers."""
    run_id = str(uuid.uuid4())
    path = tmp_path / RECORDS_FILE
    write_lines(path, [run_record(run_id)] + [{"step": s, "loss": float(s)} for s in range(100)])
    late = IngestAgent(tmp_path, store=store)
    assert late.ingest_available() == 100
    with path.open("a") as f:
        f.writelines(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in range(100, 400))
    assert IngestAgent(tmp_path, store=store).ingest_available() == 300
    with path.open("a") as f:
        f.writelines(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in range(400, 500))

    # Read from its stale offset, B's batch ends past the stored one: only the offset check stops it.
    assert late.ingest_available() == 100

    assert stored_points(store, run_id) == Counter(("loss", s, float(s)) for s in range(500))
    assert store.get_run(run_id).ingest.points == 500


# -- a file replaced or truncated under its name ----------------------------------------------------
def first_run(tmp_path: Path, store: TrackingStore) -> tuple[str, Path]:
    run_id = str(uuid.uuid4())
    path = tmp_path / RECORDS_FILE
    write_lines(path, [run_record(run_id)] + [{"step": s, "loss": float(s)} for s in range(10)])
    ingest_until_drained(tmp_path, store)
    assert len(stored_points(store, run_id)) == 10
    return run_id, path


def test_a_replaced_file_is_reported_and_not_read_from_mid_line(store, tmp_path, caplog):
    run_id, path = first_run(tmp_path, store)
    replacement = [run_record(run_id, name="again")] + [{"step": s, "loss": -float(s)} for s in range(100)]
    path.unlink()
    write_lines(path, replacement)
    with caplog.at_level(logging.ERROR, logger="cairn.agent"):
        agent = ingest_until_drained(tmp_path, store)
        ingest_until_drained(tmp_path, store)  # reported once, not on every start

    assert stored_points(store, run_id) == Counter(("loss", s, float(s)) for s in range(10))
    assert store.get_run(run_id).ingest.rejected == {SOURCE_REPLACED: 2}
    assert agent.stats.rejected == {SOURCE_REPLACED: 1} and agent.stats.commits == 0
    assert f"{RECORDS_FILE}: source replaced after" in caplog.text


def test_a_truncated_file_is_reported_once_by_an_agent(store, tmp_path, caplog):
    run_id, path = first_run(tmp_path, store)
    agent = IngestAgent(tmp_path, store=store, run_id=run_id)  # as the sidecar is told it
    with open(path, "r+b") as f:
        f.truncate(40)
    with caplog.at_level(logging.ERROR, logger="cairn.agent"):
        for _ in range(3):
            assert agent.ingest_available() == 0

    assert store.get_run(run_id).ingest.rejected == {SOURCE_TRUNCATED: 1}
    assert caplog.text.count("source truncated after") == 1
    assert len(stored_points(store, run_id)) == 10


# -- a batch is bounded by points -------------------------------------------------------------------
def test_a_batch_of_wide_lines_is_cut_at_max_batch_points_and_every_point_lands_once(store, tmp_path):
    run_id = str(uuid.uuid4())
    write_lines(tmp_path / RECORDS_FILE, [run_record(run_id)] + [
        {"step": s, **{f"k{i}": float(s * i) for i in range(200)}} for s in range(50)])
    agent = ingest_until_drained(tmp_path, store, max_batch_points=1000)

    assert agent.stats.commits == 10 and agent.stats.points == 10_000
    assert stored_points(store, run_id) == Counter((f"k{i}", s, float(s * i)) for s in range(50) for i in range(200))
