"""The store on both real backends: PostgreSQL (production) and SQLite (embedded default)."""

import math
import uuid

import pytest

from cairn.rundir import RunStatus
from cairn.store import RunNotFound, TrackingStore, db
from cairn.store.entities import ArtifactInfo, CodeVersion, IngestBatch, MetricPoint, RunFinish


def points(key, steps, value=lambda s: float(s), ts=1_700_000_000_000):
    return [MetricPoint(key, s, ts + s, value(s)) for s in steps]


def test_create_run_is_idempotent_and_params_keep_their_types(store):
    rid = str(uuid.uuid4())
    params = {"lr": 0.1, "layers": 3, "name": "resnet", "amp": True, "drop": None, "sizes": [1, 2]}
    assert store.create_run("exp", name="a", run_id=rid, params=params) == rid
    assert store.create_run("exp", name="a", run_id=rid, params=params) == rid
    d = store.get_run(rid)
    assert d.params == params
    assert d.summary.experiment == "exp" and d.summary.status == "RUNNING"
    assert [e.runs for e in store.list_experiments()] == [1]


def test_ingest_batch_keeps_latest_min_max_and_count_across_batches(store):
    rid = store.create_run("exp")
    store.ingest_batch(rid, "f", IngestBatch(metrics=points("loss", range(0, 10), lambda s: 10.0 - s)), 100, 10)
    # A late, out-of-order point updates min/count but not the latest value.
    store.ingest_batch(rid, "f", IngestBatch(metrics=points("loss", [3], lambda s: -5.0)), 120, 11)
    latest = store.get_run(rid).summary.metrics["loss"]
    assert (latest.step, latest.value, latest.min_value, latest.max_value, latest.count) == (9, 1.0, -5.0, 10.0, 11)
    assert store.ingest_progress(rid, "f") == (120, 11)
    assert len(store.metric_history(rid, "loss")) == 11


def test_nan_infinity_negative_values_and_large_steps_round_trip(store):
    rid = store.create_run("exp")
    vals = [math.nan, math.inf, -math.inf, -2.5, -1e-300, 1.5]
    max_step = (1 << 63) - 1
    steps = [0, 1, 2, 3, max_step - 1, max_step]
    sent = [MetricPoint("x\ty", step, 1 << 50, v) for step, v in zip(steps, vals)]
    store.ingest_batch(rid, "f", IngestBatch(metrics=sent), 1, 1)
    got = store.metric_history(rid, "x\ty")
    assert [p[:3] for p in got] == [p[:3] for p in sent]
    assert math.isnan(got[0].value) and [p.value for p in got[1:]] == vals[1:]
    latest = store.get_run(rid).summary.metrics["x\ty"]
    assert (latest.step, latest.value, latest.min_value, latest.count) == (max_step, 1.5, -math.inf, 6)


def test_history_is_one_series_whole_in_step_then_arrival_order(store):
    rid = store.create_run("exp")
    first = [MetricPoint("loss", s, 1_700_000_000_000 + s, 1.0 / (s + 1)) for s in (5, 1, 3)]
    again = [MetricPoint("loss", 3, 1_800_000_000_000, -2.5), MetricPoint("acc", 3, 7, 0.5)]
    store.ingest_batch(rid, "f", IngestBatch(metrics=first), 10, 1)
    store.ingest_batch(rid, "f", IngestBatch(metrics=again), 20, 2)
    assert store.metric_history(rid, "loss") == [
        ("loss", 1, 1_700_000_000_001, 0.5), ("loss", 3, 1_700_000_000_003, 0.25),
        ("loss", 3, 1_800_000_000_000, -2.5), ("loss", 5, 1_700_000_000_005, 1.0 / 6)]
    assert store.metric_history(rid, "acc") == [("acc", 3, 7, 0.5)]
    assert store.metric_history(rid, "missing") == []
    assert store.metric_history(store.create_run("exp"), "loss") == []


def test_a_batch_commits_only_from_the_offset_the_store_holds(store):
    rid = store.create_run("exp")
    store.ingest_batch(rid, "f", IngestBatch(metrics=points("a", [0])), 50, 1, start=0, head=(50, "ab" * 32))
    for stale_start in (0, 20):
        with pytest.raises(db.IngestConflict, match="another agent"):
            store.ingest_batch(rid, "f", IngestBatch(metrics=points("a", [1])), 90, 2, {"bad_json": 1},
                               start=stale_start)
    store.ingest_batch(rid, "f", IngestBatch(metrics=points("a", [2])), 80, 2, start=50)
    assert [p.step for p in store.metric_history(rid, "a")] == [0, 2]
    assert store.ingest_position(rid, "f") == (80, 2, 50, "ab" * 32)
    assert store.get_run(rid).ingest.rejected == {} and store.get_run(rid).ingest.points == 2


def test_a_value_the_database_cannot_hold_refuses_the_batch_and_leaves_nothing(store):
    rid = store.create_run("exp")
    batch = IngestBatch(metrics=points("a", [0]) + [MetricPoint("a", 1 << 63, 0, 1.0)], params={"p": 1})
    with pytest.raises(db.BatchRefused):
        store.ingest_batch(rid, "f", batch, 10, 1, start=0)
    assert store.metric_history(rid, "a") == [] and store.get_run(rid).params == {}
    assert store.ingest_position(rid, "f") == (0, 0, None, None)


def test_offset_and_rows_commit_together_and_never_move_back(store):
    rid = store.create_run("exp")
    store.ingest_batch(rid, "f", IngestBatch(metrics=points("a", [0])), 50, 1, {"bad_json": 2})
    store.ingest_batch(rid, "f", IngestBatch(), 80, 2, {"bad_json": 1, "non_numeric": 1})
    with pytest.raises(db.StoreError, match="move back"):
        store.ingest_batch(rid, "f", IngestBatch(metrics=points("a", [1])), 10, 3)
    assert len(store.metric_history(rid, "a")) == 1  # the refused batch left nothing behind
    assert store.get_run(rid).ingest.rejected == {"bad_json": 3, "non_numeric": 1}


def test_run_record_environment_code_artifacts_and_finish(store):
    rid = str(uuid.uuid4())
    info = {
        "run_id": rid, "experiment": "offline", "name": "n", "params": {"lr": 1}, "tags": {"t": "v"}, "ts": 1.7e9,
        "environment": {"python_version": "3.11.7", "hostname": "h", "packages": {"numpy": "2.0"},
                        "gpu_model": "NVIDIA H100", "gpu_count": 8, "cuda_version": "12.4"},
        "code": {"repository": "git@x:y.git", "commit": "abc123", "dirty": True},
    }
    art = ArtifactInfo("artifacts/m.bin", "file:///m.bin", 10, "0" * 64)
    store.ingest_batch(rid, "records.jsonl", IngestBatch(run_info=info, artifacts=[art],
                                                         finish=RunFinish(RunStatus.FINISHED, 0, 1.7e9 + 60)), 10, 1)
    d = store.get_run(rid)
    assert d.summary.experiment == "offline" and d.summary.status == "FINISHED" and d.summary.duration_s == 60
    assert d.params == {"lr": 1} and d.tags == {"t": "v"}
    assert d.environment.gpu_model == "NVIDIA H100" and d.environment.packages == {"numpy": "2.0"}
    assert d.code == CodeVersion("git@x:y.git", "abc123", None, True)
    assert d.artifacts == [art]


def test_finish_from_the_sdk_does_not_override_a_terminal_status(store):
    rid = store.create_run("exp")
    store.finish_run(rid, RunStatus.KILLED, None)
    store.ingest_batch(rid, "f", IngestBatch(finish=RunFinish(RunStatus.FINISHED, 0)), 1, 1)
    assert store.get_run(rid).summary.status is RunStatus.KILLED


def test_list_runs_filters_and_sorts_by_a_metric(store):
    ids = {}
    for name, acc in (("low", 0.5), ("high", 0.9), ("none", None)):
        ids[name] = store.create_run("exp" if name != "none" else "other", name=name)
        if acc is not None:
            store.ingest_batch(ids[name], "f", IngestBatch(metrics=[MetricPoint("acc", 1, 0, acc)]), 1, 1)
    store.finish_run(ids["low"], "FAILED", 1)
    assert [r.name for r in store.list_runs(sort_metric="acc")] == ["high", "low", "none"]
    assert [r.name for r in store.list_runs(sort_metric="acc", ascending=True)] == ["low", "high", "none"]
    assert [r.name for r in store.list_runs(experiment="exp", status="failed")] == ["low"]


def test_run_ids_resolve_from_unambiguous_prefixes(store):
    rid = store.create_run("exp")
    assert store.resolve_run_id(rid[:8]) == rid
    assert store.resolve_run_id(rid.upper()) == rid
    with pytest.raises(RunNotFound):
        store.resolve_run_id("ffffffff-0000")
    with pytest.raises(RunNotFound):
        store.get_run(str(uuid.uuid4()))


def test_downsampled_history_keeps_spikes_and_bounds_the_point_count(store):
    rid = store.create_run("exp")
    pts = points("loss", range(10_000), lambda s: 1.0)
    pts[5_001] = MetricPoint("loss", 5_001, 0, 100.0)
    store.ingest_batch(rid, "f", IngestBatch(metrics=pts), 1, 1)
    buckets = store.downsampled_history(rid, "loss", max_points=100)
    assert len(buckets) == 100
    assert sum(b.count for b in buckets) == 10_000
    assert max(b.max_value for b in buckets) == 100.0
    assert buckets[-1].step == 9_999 and buckets[-1].value == 1.0
    small = store.downsampled_history(rid, "loss", max_points=20_000)
    assert len(small) == 10_000
    assert store.downsampled_history(rid, "missing") == []


def test_postgres_schema_out_of_date_is_refused_with_the_fix(postgres_server):
    url = postgres_server.create_database(f"empty_{uuid.uuid4().hex[:8]}")
    with pytest.raises(db.StoreError) as err:
        TrackingStore(url)
    assert err.value.code == "SCHEMA_OUT_OF_DATE"
    assert "cairn db upgrade" in str(err.value) and postgres_server.password not in str(err.value)


def test_unreachable_database_error_names_the_url_without_the_password():
    with pytest.raises(db.StoreError) as err:
        TrackingStore("postgresql://cairn:s3cret@127.0.0.1:1/cairn")
    assert err.value.code == "DATABASE_UNREACHABLE"
    assert "127.0.0.1:1/cairn" in str(err.value) and "s3cret" not in str(err.value)


RAW_PASSWORD = "p@ss:w/rd%"  # written into URLs as it is, not percent-encoded
PASSWORD_PIECES = (RAW_PASSWORD, "p@ss", "ss:w", "w/rd", "rd%")


def test_a_password_written_unencoded_connects_and_never_shows_in_errors(postgres_server, postgres_url):
    import psycopg2
    from sqlalchemy.engine import make_url

    role = f"odd_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(make_url(postgres_url).render_as_string(hide_password=False)
                            .replace("postgresql+psycopg2", "postgresql"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE ROLE "{role}" LOGIN SUPERUSER PASSWORD %s', (RAW_PASSWORD,))
    conn.close()
    where = f"127.0.0.1:{postgres_server.port}/{make_url(postgres_url).database}"
    run = TrackingStore(f"postgresql://{role}:{RAW_PASSWORD}@{where}").create_run(experiment="odd")
    assert TrackingStore(postgres_url).get_run(run).summary.experiment == "odd"

    with pytest.raises(db.StoreError) as wrong:
        TrackingStore(f"postgresql://{role}:{RAW_PASSWORD}x@{where}")
    assert wrong.value.code == "DATABASE_UNREACHABLE"
    assert f'password authentication failed for user "{role}"' in str(wrong.value)
    with pytest.raises(db.StoreError) as away:
        TrackingStore(f"postgresql://{role}:{RAW_PASSWORD}@127.0.0.1:1/cairn")
    assert f"postgresql+psycopg2://{role}:***@127.0.0.1:1/cairn" in str(away.value)
    for message in (str(wrong.value), str(away.value)):
        assert [piece for piece in PASSWORD_PIECES if piece in message] == []


def test_a_url_that_does_not_parse_is_named_without_its_password():
    with pytest.raises(db.StoreError) as err:
        TrackingStore("postgresql://cairn:s3cret@db.example:not-a-port/cairn")
    assert err.value.code == "BAD_DATABASE_URL"
    assert "postgresql+psycopg2://cairn:***@db.example:not-a-port/cairn cannot be parsed" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_password_redaction_in_messages():
    url = f"postgresql://cairn:{RAW_PASSWORD}@h/d"
    assert db.redact_text(f"auth failed: {RAW_PASSWORD} / p%40ss%3Aw%2Frd%25", url) == "auth failed: *** / ***"
    assert db.redact_text("a password of 2 letters is left alone: ab", "postgresql://u:ab@h/d").endswith(": ab")
    assert db.normalise_url("sqlite:////tmp/at@home.db") == "sqlite:////tmp/at@home.db"
    assert db.normalise_url("postgresql://u:already%40encoded@h/d") == "postgresql+psycopg2://u:already%40encoded@h/d"


def test_embedded_sqlite_default_is_created_and_migrated_on_first_use(cairn_home):
    store = TrackingStore()
    assert store.engine.dialect.name == "sqlite"
    assert (cairn_home / "cairn.db").exists()
    assert db.current_revision(store.engine) == db.head_revision()


def test_postgres_urls_are_pinned_to_psycopg2():
    assert db.normalise_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert db.normalise_url("postgres://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert db.normalise_url("sqlite:///x.db") == "sqlite:///x.db"
