"""The ingest agent commits what a run directory holds to the store exactly once, whatever happens."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from cairn import sdk
from cairn.agent.ingest import IngestAgent, sha256_file
from cairn.store import TrackingStore, db
from tests.support.servers import PostgresServer, clean_env, start_sidecar

pytestmark = pytest.mark.usefixtures("fresh_sdk")
RUN_ID = "0b6f7d2e-6a55-4c1e-9d0b-1f1b2b3c4d5e"


def ingest_once(run_dir: Path, store: TrackingStore, **kw) -> IngestAgent:
    agent = IngestAgent(run_dir, store=store, **kw)
    stop = threading.Event()
    stop.set()
    assert agent.run(stop, drain_timeout=10)
    return agent


def point_counts(url: str, run_id: str) -> Counter:
    """(key, step) -> how many rows the store holds for it."""
    with db.get_engine(url).connect() as c:
        rows = c.execute(
            text("SELECT key, step, count(*) FROM metrics WHERE run_id = :r GROUP BY key, step"),
            {"r": run_id if "postgresql" in url else run_id.replace("-", "")},
        ).all()
    return Counter({(k, s): n for k, s, n in rows})


def test_sdk_run_arrives_complete(store, tmp_path):
    run_dir = tmp_path / "run"
    run = sdk.init(experiment="digits", name="baseline", config={"lr": 0.1, "layers": 3}, run_dir=str(run_dir))
    for step in range(200):
        sdk.log({"loss": 1.0 / (step + 1), "acc": step / 200}, step=step)
    (tmp_path / "model.bin").write_bytes(os.urandom(4096))
    sdk.log_artifact(str(tmp_path / "model.bin"))
    sdk.finish()

    agent = ingest_once(run_dir, store)
    assert agent.stats.points == 400 and not agent.stats.rejected

    d = store.get_run(run.id)
    assert d.summary.status == "FINISHED" and d.summary.exit_code == 0
    assert d.summary.experiment == "digits" and d.summary.name == "baseline"
    assert d.params == {"lr": 0.1, "layers": 3}
    assert d.environment.python_version.startswith("3.") and d.environment.packages
    assert d.summary.metrics["loss"].step == 199 and d.summary.metrics["loss"].count == 200
    assert d.summary.metrics["acc"].max_value == pytest.approx(199 / 200)
    assert [p.step for p in store.metric_history(run.id, "loss")] == list(range(200))
    (art,) = d.artifacts
    assert art.path == "artifacts/model.bin" and art.size == 4096
    assert art.sha256 == sha256_file(tmp_path / "model.bin")


def test_second_pass_adds_nothing(store, tmp_path):
    run = sdk.init(run_dir=str(tmp_path / "run"))
    for step in range(50):
        sdk.log({"x": step}, step=step)
    sdk.finish()
    ingest_once(tmp_path / "run", store)
    again = ingest_once(tmp_path / "run", store)
    assert again.stats.points == 0
    assert store.get_run(run.id).summary.metrics["x"].count == 50


def test_half_written_line_waits_for_its_newline(store, tmp_path):
    run = sdk.init(run_dir=str(tmp_path / "run"))
    sdk.log({"x": 1.0}, step=1)
    sdk.run.flush()
    records = tmp_path / "run" / "records.jsonl"
    line = json.dumps({"seq": 99, "type": "metric", "step": 2, "ts": time.time(), "values": {"x": 2.0}}) + "\n"
    with open(records, "a") as f:
        f.write(line[:20])
    first = ingest_once(tmp_path / "run", store)
    assert first.stats.points == 1 and not first.stats.rejected
    with open(records, "a") as f:
        f.write(line[20:])
    second = ingest_once(tmp_path / "run", store)
    assert second.stats.points == 1 and not second.stats.rejected
    assert [p.step for p in store.metric_history(run.id, "x")] == [1, 2]


def test_metrics_file_from_a_program_without_the_sdk(store, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "metrics").mkdir(parents=True)
    lines = [
        '{"step": 0, "loss": 2.5, "lr": 0.1}',
        '{"step": 1, "loss": 1.5}',
        "not json at all",
        '{"step": "two", "loss": 1.0}',
        '{"step": 3, "loss": "low"}',
        '{"step": 4, "": 1.0}',
        '{"step": 5, "loss": NaN}',
        '{"step": 6, "loss": 0.5, "ts": 1700000000.5}',
    ]
    (run_dir / "metrics" / "train.jsonl").write_text("\n".join(lines) + "\n")
    agent = ingest_once(run_dir, store, run_id=RUN_ID)

    assert agent.stats.points == 5  # loss at steps 0, 1, 5, 6 and lr at step 0
    history = store.metric_history(RUN_ID, "loss")
    assert [p.step for p in history] == [0, 1, 5, 6]
    assert history[2].value != history[2].value  # NaN kept as NaN
    assert history[3].timestamp_ms == 1700000000500
    rejected = store.get_run(RUN_ID).ingest.rejected
    assert rejected == {"bad_json": 1, "bad_step": 1, "non_numeric": 1, "empty_key": 1}, rejected


def test_rejections_are_logged_with_line_numbers(store, tmp_path, caplog):
    run_dir = tmp_path / "run"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "metrics" / "m.jsonl").write_text('{"step": 0, "a": 1}\n{oops\n{"step": 2, "a": 3}\n')
    with caplog.at_level("WARNING", logger="cairn.agent"):
        ingest_once(run_dir, store, run_id=RUN_ID)
    assert any("metrics/m.jsonl line 2" in r.getMessage() and "bad_json" in r.getMessage() for r in caplog.records)
    assert [p.step for p in store.metric_history(RUN_ID, "a")] == [0, 2]


def test_missing_artifact_is_reported_not_fatal(store, tmp_path):
    run_dir = tmp_path / "run"
    run = sdk.init(run_dir=str(run_dir))
    sdk.run._append("artifact", {"path": "artifacts/gone.bin"})
    sdk.log({"x": 1}, step=0)
    sdk.finish()
    ingest_once(run_dir, store)
    d = store.get_run(run.id)
    assert d.ingest.rejected == {"missing_artifact": 1}
    assert d.summary.metrics["x"].count == 1 and d.summary.status == "FINISHED"


WRITER = textwrap.dedent(
    """
    import sys, time, cairn
    steps = int(sys.argv[2])
    cairn.init(run_dir=sys.argv[1], run_id=sys.argv[3], config={"steps": steps})
    for step in range(steps):
        cairn.log({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
        if step % 500 == 0:
            time.sleep(0.01)
    cairn.finish()
    """
)


def start_agent(run_dir: Path, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cairn.cli.main", "--database-url", url, "agent", "--run-dir", str(run_dir),
         "--exit-on-finish", "--poll-interval", "0.02", "--batch-bytes", "20000", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkill_at_random_instants_never_loses_or_duplicates(postgres_url, tmp_path):
    """An agent killed -9 over and over while the trainer writes: each point is stored once."""
    steps = 20000
    run_dir = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), str(steps), RUN_ID], env=dict(os.environ))
    procs = [writer]
    rng = random.Random(7)
    kills = 0
    try:
        while kills < 25:
            agent = start_agent(run_dir, postgres_url)
            procs.append(agent)
            time.sleep(rng.uniform(0.3, 1.2))
            if agent.poll() is not None:
                break  # it finished the whole run before this kill
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            kills += 1
        assert writer.wait(timeout=120) == 0
        final = start_agent(run_dir, postgres_url)
        procs.append(final)
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert kills >= 5, "the agent finished too fast for the kills to land mid-stream"

    counts = point_counts(postgres_url, RUN_ID)
    assert len(counts) == 2 * steps
    assert set(counts.values()) == {1}
    d = TrackingStore(postgres_url).get_run(RUN_ID)
    assert d.summary.status == "FINISHED" and d.params == {"steps": steps}
    assert d.summary.metrics["loss"].count == steps and d.summary.metrics["loss"].step == steps - 1


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    server = PostgresServer().init().start()
    yield server
    server.destroy()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
@pytest.mark.postgres
def test_database_outage_keeps_backlog_and_drains_it(own_postgres, tmp_path):
    url = own_postgres.create_database("outage")
    db.upgrade(db.get_engine(url))
    run_dir = tmp_path / "run"
    # The points are counted exactly: no system/* samples beside them.
    run = sdk.init(run_dir=str(run_dir), config={"lr": 0.01}, system_metrics=False)
    agent = IngestAgent(run_dir, database_url=url, poll_interval=0.05)
    stop = threading.Event()
    result: dict[str, bool] = {}
    thread = threading.Thread(target=lambda: result.setdefault("ok", agent.run(stop, exit_on_finish=True)))
    thread.start()

    for step in range(1000):
        sdk.log({"loss": float(step)}, step=step)
    sdk.run.flush()
    wait_for(lambda: agent.stats.points == 1000)

    own_postgres.stop("immediate")
    started = time.perf_counter()
    for step in range(1000, 3000):
        sdk.log({"loss": float(step)}, step=step)
    logging_cost = time.perf_counter() - started
    sdk.run.flush()
    wait_for(lambda: agent.stats.errors >= 2)
    assert agent.stats.points == 1000 and thread.is_alive()
    assert logging_cost < 1.0  # training never waits for the store

    own_postgres.start()
    sdk.finish()
    thread.join(timeout=90)
    assert result.get("ok") is True
    counts = point_counts(url, run.id)
    assert len(counts) == 3000 and set(counts.values()) == {1}
    assert TrackingStore(url).get_run(run.id).summary.status == "FINISHED"


# Each step waits 5 ms, as a trainer waits for its GPU, then logs three values; it prints the
# wall-clock time of every step.
PACED_TRAINER = """
import json, sys, time
import cairn
cairn.init(system_metrics=False)  # every (key, step) is counted once: no system/* samples beside them
stamps, step, end = [], 0, time.time() + float(sys.argv[1])
while time.time() < end:
    time.sleep(0.005)
    cairn.log({"loss": 1.0 / (step + 1), "acc": step / 1e6, "lr": 0.1}, step=step)
    stamps.append(time.time())
    step += 1
cairn.finish()
json.dump(stamps, sys.stdout)
"""


@pytest.mark.slow
@pytest.mark.postgres
def test_database_away_for_a_minute_mid_run_costs_the_trainer_nothing_and_every_point_arrives_once(
        own_postgres, tmp_path):
    url = own_postgres.create_database("minute")
    db.upgrade(db.get_engine(url))
    run_dir, run_id = tmp_path / "run", "3f9a1c2e-7b4d-4e6f-8a0b-1c2d3e4f5a6b"
    sidecar = start_sidecar(run_dir, {"CAIRN_RUN_ID": run_id, "CAIRN_ATTEMPT": "1", "CAIRN_DATABASE_URL": url})
    try:
        trainer = subprocess.Popen([sys.executable, "-c", PACED_TRAINER, "80"], stdout=subprocess.PIPE, text=True,
                                   env=clean_env(CAIRN_RUN_DIR=str(run_dir), CAIRN_RUN_ID=run_id))
        wait_for(lambda: point_counts(url, run_id), timeout=30)  # points are flowing
        time.sleep(5)
        down = time.time()
        own_postgres.stop("immediate")
        time.sleep(60)
        own_postgres.start()
        up = time.time()
        stamps = json.loads(trainer.communicate(timeout=120)[0])
        assert trainer.returncode == 0
        sidecar.send_signal(signal.SIGTERM)  # what the kubelet does once the trainer has exited
        out, _ = sidecar.communicate(timeout=120)
    finally:
        for proc in (sidecar,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sidecar.returncode == 0, out[-3000:]
    assert "store unavailable, retrying" in out, out[-3000:]

    def rate(start: float, end: float) -> float:
        return sum(start <= t < end for t in stamps) / (end - start)

    before, during = rate(stamps[0], down), rate(down, up)
    assert during >= 0.9 * before, f"{during:.1f} steps/s with the database away, {before:.1f} before"
    counts = point_counts(url, run_id)
    assert len(counts) == 3 * len(stamps) and set(counts.values()) == {1}
    assert TrackingStore(url).get_run(run_id).summary.status == "FINISHED"


@pytest.mark.postgres
def test_agent_started_while_database_is_down_catches_up(own_postgres, tmp_path):
    url = own_postgres.create_database("late")
    db.upgrade(db.get_engine(url))
    own_postgres.stop("fast")
    run_dir = tmp_path / "run"
    run = sdk.init(run_dir=str(run_dir))
    for step in range(300):
        sdk.log({"x": step}, step=step)
    sdk.finish()

    proc = start_agent(run_dir, url)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("store unavailable, retrying" in line for line in err_lines):
            assert proc.poll() is None, "the agent gave up while the database was down"
            assert time.monotonic() < deadline, f"the agent never said the store was away: {err_lines}"
            time.sleep(0.1)
        own_postgres.start()
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.returncode == 0, "".join(err_lines)
    counts = point_counts(url, run.id)
    assert len(counts) == 300 and set(counts.values()) == {1}


def test_sigterm_drains_before_exit(store_url, tmp_path):
    run_dir = tmp_path / "run"
    run = sdk.init(run_dir=str(run_dir))
    proc = start_agent(run_dir, store_url)
    for step in range(5000):
        sdk.log({"x": step}, step=step)
    sdk.run.flush()
    store = TrackingStore(store_url)
    wait_for(lambda: store.ingest_progress(run.id, "records.jsonl")[0] > 0)
    for step in range(5000, 10000):
        sdk.log({"x": step}, step=step)
    sdk.run.flush()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert store.get_run(run.id).summary.metrics["x"].count == 10000


def test_artifact_records_that_could_leave_the_run_directory_are_refused(store, tmp_path):
    run_dir = tmp_path / "run"
    run = sdk.init(run_dir=str(run_dir))
    deep = run_dir / "artifacts" / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (run_dir / "pwned").write_text("inside the run dir, reached through a link")
    (run_dir / "artifacts" / "deep").symlink_to(deep, target_is_directory=True)
    (run_dir / "artifacts" / "link.txt").symlink_to(run_dir / "pwned")
    (run_dir / "artifacts" / "ok.txt").write_text("fine")
    for path in ("artifacts/deep/../../../../pwned", "/etc/passwd", "artifacts/link.txt", "artifacts//./ok.txt"):
        sdk.run._append("artifact", {"path": path})
    sdk.finish()
    ingest_once(run_dir, store)
    d = store.get_run(run.id)
    assert d.ingest.rejected == {"unsafe_path": 2, "missing_artifact": 1}
    assert [a.path for a in d.artifacts] == ["artifacts/ok.txt"]


def test_lines_the_database_cannot_store_are_counted_and_ingest_goes_on_to_finish(store, tmp_path):
    run_dir = tmp_path / "run"
    run = sdk.init(run_dir=str(run_dir))
    sdk.log({"loss": 1.0}, step=0)
    sdk.run.flush()
    with open(run_dir / "records.jsonl", "ab") as f:
        f.write(b"[" * 100_000 + b"\n")
        f.write(b'{"seq": 90, "type": "metric", "step": 1, "values": {"loss\\ud800": 0.5}}\n')
        f.write(b'{"seq": 91, "type": "tags", "tags": {"team": "a\\u0000b"}}\n')
    sdk.log({"loss": 0.5}, step=2)
    sdk.finish()
    ingest_once(run_dir, store)
    d = store.get_run(run.id)
    assert d.ingest.rejected == {"bad_json": 1, "bad_text": 2}
    assert d.summary.status == "FINISHED" and d.summary.metrics["loss"].count == 2


def test_the_manifest_and_the_operator_tags_win_over_what_the_code_logs(store_url, tmp_path):
    store = TrackingStore(store_url)
    manifest = {"lr": 0.1, "epochs": 3}
    store.create_run(experiment="digits", run_id=RUN_ID, params=manifest, status="PENDING",
                     tags={"cairn.mode": "kubernetes", "kubernetes.namespace": "ml"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [
        {"seq": 1, "type": "run", "run_id": RUN_ID, "experiment": "digits", "environment": {},
         "params": {"lr": 0.5, "epochs": 3, "batch": 32}, "tags": {"kubernetes.namespace": "other"}},
        {"seq": 2, "type": "params", "params": {"epochs": 3.0, "lr": 0.7, "dropout": 0.2}},
        {"seq": 3, "type": "tags", "tags": {"cairn.mode": "local", "team": "vision"}},
    ]
    (run_dir / "records.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    ingest_once(run_dir, store, run_id=RUN_ID, manifest_params=manifest)
    d = store.get_run(RUN_ID)
    assert json.dumps(d.params, sort_keys=True) == json.dumps(
        {"lr": 0.1, "epochs": 3, "batch": 32, "dropout": 0.2, "code.lr": 0.7}, sort_keys=True)
    assert d.tags == {"cairn.mode": "kubernetes", "kubernetes.namespace": "ml", "team": "vision",
                      "code.cairn.mode": "local", "code.kubernetes.namespace": "other"}

    env = dict(os.environ, CAIRN_DATABASE_URL=store_url, COLUMNS="200")
    shown = subprocess.run([sys.executable, "-m", "cairn", "runs", "show", RUN_ID], capture_output=True, text=True,
                           env=env, check=True).stdout
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in shown.splitlines() if "│" in line]
    assert "the code logged (not used)" in shown
    assert ["lr", "0.1", "0.7"] in rows and ["epochs", "3", ""] in rows
    assert not [row for row in rows if row[0] == "code.lr"]  # shown beside lr, not as a row of its own
    assert "kubernetes.namespace=ml (the code logged 'other', kept as code.kubernetes.namespace)" in shown
    got = json.loads(subprocess.run([sys.executable, "-m", "cairn", "runs", "show", RUN_ID, "-o", "json"],
                                    capture_output=True, text=True, env=env, check=True).stdout)
    assert got["code_overrides"] == {"params": {"lr": 0.7},
                                     "tags": {"cairn.mode": "local", "kubernetes.namespace": "other"}}
