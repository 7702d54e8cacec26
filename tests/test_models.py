"""Per-example eval records (SDK → records → ingest → store, exactly once) and the model registry: lineage,
aliases, the promotion gate, the audit trail and the CLI, on SQLite and PostgreSQL."""

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
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text

import cairn
from cairn.agent.ingest import IngestAgent
from cairn.agent.records import BAD_EXAMPLE, parse_lines
from cairn.cli.main import cli
from cairn.cli.models import identity_from
from cairn.rundir import RECORDS_FILE, RunStatus
from cairn.store import ModelNotFound, PromotionRefused, RegistrationRefused, StoreError, TrackingStore
from cairn.store.entities import ArtifactInfo, EvalExample, IngestBatch

pytestmark = pytest.mark.usefixtures("fresh_sdk")
RUN_ID = "5d0c6a8e-0f2b-4c55-8a43-6b1f9e2d7c10"
PASS = {"passed": True, "reason": "accuracy 0.91 vs 0.89, +0.02 [0.01, 0.03] at 95%"}
FAIL = {"passed": False, "reason": "accuracy 0.87 vs 0.89: -0.02 [-0.03, -0.01], worse at 95%"}


def ingest_all(run_dir: Path, store: TrackingStore, **kw) -> IngestAgent:
    agent = IngestAgent(run_dir, store=store, **kw)
    stop = threading.Event()
    stop.set()
    assert agent.run(stop, drain_timeout=10)
    return agent


def example_rows(store: TrackingStore) -> int:
    """Rows of eval_examples in the store (each test's store holds one run's)."""
    with store.engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM eval_examples")).scalar_one()


# -- per-example records ----------------------------------------------------------------------------
def test_examples_logged_through_the_sdk_are_stored_once_and_bad_ones_counted(store, tmp_path):
    run_dir = tmp_path / "run"
    run = cairn.init(run_dir=str(run_dir), run_id=RUN_ID, experiment="eval", capture_env=False)
    cairn.log_example("q-1", {"correct": 1.0, "latency_ms": 41}, slices=["lang:de", "long"])
    cairn.log_example(2, {"correct": 0.0})
    cairn.log_example("q-1", {"correct": 0.0, "latency_ms": 40.5}, slices=["lang:de"])  # again: the last wins
    bad = [("", {"correct": 1.0}, None), ("q-3", {"correct": float("nan")}, None), ("q-4", {"correct": "yes"}, None),
           ("q-5", {}, None), ("q-6", {"correct": 1.0}, ["s"] * 33), ("q" * 256, {"correct": 1.0}, None),
           ("q-7", {"correct": 10 ** 400}, None), ("q-8", {"k" * 251: 1.0}, None), ("q-9", {"x": 1.0}, [""])]
    for example_id, metrics, slices in bad:
        run.log_example(example_id, metrics, slices)
    cairn.finish()

    ingest_all(run_dir, store)
    assert store.eval_examples(RUN_ID) == [EvalExample("2", {"correct": 0.0}, []),
                                           EvalExample("q-1", {"correct": 0.0, "latency_ms": 40.5}, ["lang:de"])]
    assert example_rows(store) == 2
    assert store.get_run(RUN_ID).ingest.rejected == {BAD_EXAMPLE: len(bad)}
    assert store.run_status(RUN_ID) == RunStatus.FINISHED


@pytest.mark.parametrize(("record", "problem"), [
    ({"id": None, "metrics": {"a": 1}}, "id is not a non-empty string"),
    ({"id": "x", "metrics": [1]}, "metrics is not a non-empty object"),
    ({"id": "x", "metrics": {"a": True}}, "metric 'a' is not a number"),
    ({"id": "x", "metrics": {"a": float("inf")}}, "metric 'a' is not finite"),
    ({"id": "x", "metrics": {f"m{i}": 1 for i in range(65)}}, "more than 64 metrics"),
    ({"id": "x", "metrics": {"a": 1}, "slices": "lang:de"}, "slices is not a list"),
    ({"id": "x", "metrics": {"a": 1}, "slices": ["s" * 129]}, "is not a label of 1 to 128 characters"),
])
def test_a_bad_example_record_is_rejected_naming_what_is_wrong(record, problem):
    line = json.dumps({"seq": 0, "type": "example", **record}).encode() + b"\n"
    parsed = parse_lines([line], 7, now_ms=0)
    assert parsed.batch.examples == []
    assert [(r.line, r.reason) for r in parsed.rejections] == [(7, BAD_EXAMPLE)]
    assert problem in parsed.rejections[0].detail


class StoreLostAfterCommits(TrackingStore):
    """The real store, whose connection is lost just after its ``commits``-th batch was committed."""

    def __init__(self, url: str, commits: int) -> None:
        super().__init__(url)
        self.commits_left = commits

    def ingest_batch(self, *args, **kwargs) -> None:
        super().ingest_batch(*args, **kwargs)
        self.commits_left -= 1
        if self.commits_left == 0:
            raise ConnectionError("connection lost after the commit")


def test_an_agent_restarted_mid_file_stores_each_example_once(store_url, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rounds, ids = 3, 400
    lines = [json.dumps({"seq": 0, "type": "run", "run_id": RUN_ID, "experiment": "eval", "ts": 1.7e9})]
    # Each id is logged once per round, the value saying which round: the last round's must be what stays.
    lines += [json.dumps({"seq": 1 + r * ids + i, "type": "example", "id": f"ex-{i}", "metrics": {"round": r},
                          "slices": [f"shard:{i % 4}"]}) for r in range(rounds) for i in range(ids)]
    lines.append(json.dumps({"seq": 1 + rounds * ids, "type": "finish", "status": "FINISHED", "ts": 1.7e9 + 5}))
    (run_dir / RECORDS_FILE).write_text("\n".join(lines) + "\n")

    crashing = StoreLostAfterCommits(store_url, commits=3)
    first = IngestAgent(run_dir, store=crashing, max_batch_bytes=16_384)
    with pytest.raises(ConnectionError):
        first.ingest_available()
    store = TrackingStore(store_url)
    offset, committed_lines = store.ingest_progress(RUN_ID, RECORDS_FILE)
    assert 0 < offset < (run_dir / RECORDS_FILE).stat().st_size, "the crash did not land mid-file"

    second = ingest_all(run_dir, store, max_batch_bytes=16_384)
    assert committed_lines + second.stats.lines == len(lines), "a line was ingested twice or not at all"
    assert store.ingest_progress(RUN_ID, RECORDS_FILE) == ((run_dir / RECORDS_FILE).stat().st_size, len(lines))
    stored = store.eval_examples(RUN_ID)
    assert example_rows(store) == ids
    assert sorted(e.id for e in stored) == sorted(f"ex-{i}" for i in range(ids))
    assert {e.metrics["round"] for e in stored} == {rounds - 1}
    assert all(e.slices == [f"shard:{int(e.id[3:]) % 4}"] for e in stored)
    assert store.run_status(RUN_ID) == RunStatus.FINISHED


EXAMPLE_WRITER = textwrap.dedent(
    """
    import sys, time, cairn
    ids = int(sys.argv[2])
    cairn.init(run_dir=sys.argv[1], run_id=sys.argv[3], capture_env=False)
    for rnd in range(2):
        for i in range(ids):
            cairn.log_example(f"ex-{i}", {"round": rnd})
            if i % 500 == 0:
                time.sleep(0.01)
    cairn.finish()
    """
)


@pytest.mark.slow
@pytest.mark.postgres
def test_an_agent_killed_at_random_instants_stores_every_example_once_with_its_last_value(postgres_url, tmp_path):
    ids = 10_000
    run_dir = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-c", EXAMPLE_WRITER, str(run_dir), str(ids), RUN_ID],
                              env=dict(os.environ))
    procs, kills, rng = [writer], 0, random.Random(11)

    def agent() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "cairn.cli.main", "--database-url", postgres_url, "agent",
                                 "--run-dir", str(run_dir), "--exit-on-finish", "--poll-interval", "0.02",
                                 "--batch-bytes", "20000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    try:
        while kills < 15:
            victim = agent()
            time.sleep(rng.uniform(0.3, 1.0))
            if victim.poll() is not None:
                break
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills += 1
        assert writer.wait(timeout=120) == 0
        final = agent()
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert kills >= 3, "the agent finished too fast for the kills to land mid-stream"
    store = TrackingStore(postgres_url)
    examples = store.eval_examples(RUN_ID)
    assert example_rows(store) == ids and len(examples) == ids
    assert {e.metrics["round"] for e in examples} == {1.0}
    assert store.ingest_progress(RUN_ID, RECORDS_FILE) == ((run_dir / RECORDS_FILE).stat().st_size, 2 * ids + 2)


def test_a_retried_attempt_replaces_an_example_and_an_earlier_attempt_never_does(store):
    rid = store.create_run("eval")
    store.ingest_batch(rid, "attempt-1/records.jsonl", IngestBatch(
        examples=[EvalExample("a", {"correct": 0.0}), EvalExample("b", {"correct": 1.0}),
                  EvalExample("a", {"correct": 1.0}, ["late"])], attempt=1), 10, 3)
    assert store.eval_examples(rid) == [EvalExample("a", {"correct": 1.0}, ["late"]),
                                        EvalExample("b", {"correct": 1.0})]
    store.ingest_batch(rid, "attempt-2/records.jsonl", IngestBatch(examples=[EvalExample("a", {"correct": 0.5})],
                                                                   attempt=2), 10, 1)
    # A stale agent of attempt 1 that commits late cannot undo what attempt 2 stored.
    store.ingest_batch(rid, "attempt-1/records.jsonl", IngestBatch(examples=[EvalExample("a", {"correct": 0.0}),
                                                                             EvalExample("c", {"correct": 0.0})],
                                                                   attempt=1), 20, 5)
    assert store.eval_examples(rid) == [EvalExample("a", {"correct": 0.5}), EvalExample("b", {"correct": 1.0}),
                                        EvalExample("c", {"correct": 0.0})]


# -- the registry -----------------------------------------------------------------------------------
def finished_run(store: TrackingStore, files: dict[str, bytes] | None = None, status=RunStatus.FINISHED,
                 **cluster) -> str:
    rid = store.create_run("train", params={"lr": 0.1, "layers": 4, "arch": "resnet"}, **cluster)
    store.record_code(rid, "https://git.example/team/model.git", "9f1c2e7" + "0" * 33)
    store.record_dataset(rid, "s3://data/digits/", "d" * 64, object_count=3, total_bytes=300)
    files = {"artifacts/model/weights.pt": b"w" * 100, "artifacts/model/config.json": b"{}",
             "artifacts/report.html": b"<p>"} if files is None else files
    store.record_artifacts(rid, [ArtifactInfo(path, f"s3://bucket/ns/train/{rid}/{path}", len(data),
                                              f"{len(data):064x}") for path, data in files.items()])
    store.finish_run(rid, status, 0 if status == RunStatus.FINISHED else 1)
    return rid


def test_register_copies_the_lineage_and_the_digest_of_every_model_file(store):
    rid = finished_run(store, image_digest="sha256:" + "e" * 64)
    version = store.register_model_version("team-a", "digits", rid, "kube:alice@prod")
    assert (version.namespace, version.model, version.version, version.run_id) == ("team-a", "digits", 1, rid)
    assert version.image_digest == "sha256:" + "e" * 64
    assert (version.code_repository, version.code_commit) == ("https://git.example/team/model.git",
                                                              "9f1c2e7" + "0" * 33)
    assert (version.dataset_uri, version.dataset_digest) == ("s3://data/digits/", "d" * 64)
    assert version.params == {"lr": 0.1, "layers": 4, "arch": "resnet"}
    assert [(f.path, f.size, f.sha256) for f in version.files] == [
        ("artifacts/model/config.json", 2, f"{2:064x}"), ("artifacts/model/weights.pt", 100, f"{100:064x}")]
    assert version.files[1].uri == f"s3://bucket/ns/train/{rid}/artifacts/model/weights.pt"

    again = store.register_model_version("team-a", "digits", rid, "kube:bob@prod", path="report.html")
    assert again.version == 2 and [f.path for f in again.files] == ["artifacts/report.html"]
    shown = store.get_model("team-a", "digits")
    assert [v.version for v in shown.versions] == [1, 2] and shown.versions[0] == version
    assert [(a.action, a.version, a.who) for a in shown.audit] == [("register", 1, "kube:alice@prod"),
                                                                   ("register", 2, "kube:bob@prod")]


def test_register_refuses_an_unfinished_run_and_one_without_the_files(store):
    for status in (RunStatus.RUNNING, RunStatus.FAILED):
        rid = finished_run(store, status=status)
        with pytest.raises(RegistrationRefused, match=f"is {status.value}: only a run that finished"):
            store.register_model_version("team-a", "digits", rid, "me")
    rid = finished_run(store, files={"artifacts/log.txt": b"x"})
    with pytest.raises(RegistrationRefused, match=r"no artifact files at 'artifacts/model'.*artifacts/log.txt"):
        store.register_model_version("team-a", "digits", rid, "me")
    with pytest.raises(RegistrationRefused, match="'..' segment"):
        store.register_model_version("team-a", "digits", rid, "me", path="../model")
    assert store.list_models() == []


def test_promotion_needs_a_passing_evaluation_against_the_holder(store):
    rid = finished_run(store)
    for _ in range(3):
        store.register_model_version("team-a", "digits", rid, "me")
    first = store.promote("team-a", "digits", 1, "production", "me")  # nobody holds it yet: no gate
    assert (first.version, first.previous_version, first.forced, first.changed) == (1, None, False, True)

    with pytest.raises(PromotionRefused, match="no evaluation of version 2 against version 1 .the holder of "
                                               "'production'. is stored"):
        store.promote("team-a", "digits", 2, "production", "me")
    store.record_evaluation("team-a", "digits", 2, 1, FAIL, eval_run_ids=[rid], dataset_sha256="d" * 64,
                            eval_image_digest="sha256:" + "f" * 64)
    store.record_evaluation("team-a", "digits", 2, None, PASS)  # passing against no baseline opens nothing
    store.record_evaluation("team-a", "digits", 3, 1, PASS)  # nor does another version's pass
    with pytest.raises(PromotionRefused) as refused:
        store.promote("team-a", "digits", 2, "production", "me")
    assert "did not pass its latest evaluation against version 1" in str(refused.value)
    assert FAIL["reason"] in str(refused.value)
    assert store.get_model("team-a", "digits").aliases[0].version == 1

    store.record_evaluation("team-a", "digits", 2, 1, PASS)
    moved = store.promote("team-a", "digits", 2, "production", "kube:carol@prod")
    assert (moved.version, moved.previous_version, moved.forced) == (2, 1, False)
    # The evaluation was against version 1; version 2 holds the alias now, so version 3 must be evaluated again.
    with pytest.raises(PromotionRefused, match="against version 2"):
        store.promote("team-a", "digits", 3, "production", "me")
    store.record_evaluation("team-a", "digits", 3, 2, PASS)
    store.record_evaluation("team-a", "digits", 3, 2, FAIL)  # the latest verdict is the one that counts
    with pytest.raises(PromotionRefused, match="did not pass"):
        store.promote("team-a", "digits", 3, "production", "me")

    store.promote("team-a", "digits", 3, "candidate", "me")  # aliases are independent
    shown = store.get_model("team-a", "digits")
    assert {a.alias: a.version for a in shown.aliases} == {"candidate": 3, "production": 2}
    assert [(v.version, v.aliases) for v in shown.versions] == [(1, []), (2, ["production"]), (3, ["candidate"])]
    assert [(e.candidate_version, e.baseline_version, e.passed) for e in shown.evaluations] == [
        (2, 1, False), (2, None, True), (3, 1, True), (2, 1, True), (3, 2, True), (3, 2, False)]
    assert shown.evaluations[0].eval_run_ids == [rid] and shown.evaluations[0].verdict == FAIL
    assert [(e.baseline_version, e.passed) for e in store.evaluations("team-a", "digits", 3)] == [
        (1, True), (2, True), (2, False)]
    promotions = [(a.version, a.alias, a.previous_version, a.who) for a in shown.audit if a.action == "promote"]
    assert promotions == [(1, "production", None, "me"), (2, "production", 1, "kube:carol@prod"),
                          (3, "candidate", None, "me")]


def test_force_needs_a_reason_and_is_audited_with_who_and_why(store):
    rid = finished_run(store)
    store.register_model_version("team-a", "digits", rid, "me", alias="production")
    store.register_model_version("team-a", "digits", rid, "me")
    for reason in (None, "  "):
        with pytest.raises(PromotionRefused, match="--force needs --reason"):
            store.promote("team-a", "digits", 2, "production", "me", force=True, reason=reason)
    forced = store.promote("team-a", "digits", 2, "production", "kube:dave@prod", force=True,
                           reason="hotfix for incident 4711")
    assert (forced.version, forced.previous_version, forced.forced) == (2, 1, True)
    last = store.get_model("team-a", "digits").audit[-1]
    assert (last.action, last.version, last.alias, last.previous_version, last.who, last.reason, last.forced) == (
        "promote", 2, "production", 1, "kube:dave@prod", "hotfix for incident 4711", True)
    assert last.at is not None


def test_register_with_an_alias_only_takes_a_free_one(store):
    rid = finished_run(store)
    v1 = store.register_model_version("team-a", "digits", rid, "me", alias="candidate")
    assert v1.aliases == ["candidate"]
    with pytest.raises(RegistrationRefused, match="alias 'candidate' of team-a/digits is held by version 1"):
        store.register_model_version("team-a", "digits", rid, "me", alias="candidate")
    assert [v.version for v in store.get_model("team-a", "digits").versions] == [1]
    for bad in ("Production", "1", "a b", "x" * 64):
        with pytest.raises(StoreError, match="alias .* is not valid"):
            store.promote("team-a", "digits", 1, bad, "me")


def test_namespaces_keep_models_apart(store):
    rid = finished_run(store)
    for namespace in ("team-a", "team-b", "team-a"):
        store.register_model_version(namespace, "digits", rid, "me", alias=None)
    store.promote("team-a", "digits", 1, "production", "me")
    store.promote("team-b", "digits", 1, "production", "me")
    store.record_evaluation("team-a", "digits", 2, 1, PASS)
    with pytest.raises(ModelNotFound, match="team-b/digits has no version 2"):
        store.record_evaluation("team-b", "digits", 2, 1, PASS)
    store.promote("team-a", "digits", 2, "production", "me")
    listed = {(m.namespace, m.name): (m.versions, m.latest_version, m.aliases) for m in store.list_models()}
    assert listed == {("team-a", "digits"): (2, 2, {"production": 2}), ("team-b", "digits"): (1, 1, {"production": 1})}
    assert [m.namespace for m in store.list_models("team-b")] == ["team-b"]
    assert store.evaluations("team-b", "digits") == []
    with pytest.raises(ModelNotFound, match="model team-c/digits not found"):
        store.get_model("team-c", "digits")
    with pytest.raises(StoreError, match="namespace 'Team_A' is not valid"):
        store.register_model_version("Team_A", "digits", rid, "me")


def test_a_verdict_needs_passed_and_reason(store):
    rid = finished_run(store)
    store.register_model_version("team-a", "digits", rid, "me")
    for verdict in ({"passed": True}, {"passed": "yes", "reason": "r"}, {"reason": "r"},
                    {"passed": True, "reason": "r", "delta": float("nan")}):
        with pytest.raises(StoreError, match="verdict"):
            store.record_evaluation("team-a", "digits", 1, None, verdict)
    with pytest.raises(StoreError, match="eval run ids must be run ids"):
        store.record_evaluation("team-a", "digits", 1, None, PASS, eval_run_ids=["not-a-run"])
    assert store.evaluations("team-a", "digits") == []


# -- the CLI ----------------------------------------------------------------------------------------
def invoke(url: str, *args: str):  # noqa: ANN201
    return CliRunner().invoke(cli, ["--database-url", url, *args], prog_name="cairn")


def test_who_is_the_kubeconfig_user_and_context_else_the_local_user():
    kubeconfig = {"current-context": "prod", "contexts": [{"name": "dev", "context": {"user": "bob"}},
                                                          {"name": "prod", "context": {"user": "alice"}}]}
    assert identity_from(kubeconfig, "carol") == "kube:alice@prod"
    assert identity_from({"current-context": "gone", "contexts": kubeconfig["contexts"]}, "carol") == "local:carol"
    assert identity_from("not a mapping", "carol") == "local:carol"
    assert identity_from(None, None) == "local:unknown"


def test_cli_registers_refuses_forces_and_shows_the_audit(store_url, cairn_home, tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"current-context": "prod",
                                          "contexts": [{"name": "prod", "context": {"user": "alice"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    store = TrackingStore(store_url)
    rid = finished_run(store)

    registered = invoke(store_url, "models", "register", "digits", "--run", rid[:8], "-n", "team-a", "--alias",
                        "production", "-o", "json")
    assert registered.exit_code == 0, registered.output
    doc = json.loads(registered.stdout)
    assert (doc["version"], doc["run_id"], doc["registered_by"], doc["aliases"]) == (1, rid, "kube:alice@prod",
                                                                                       ["production"])
    assert invoke(store_url, "models", "register", "digits", "--run", rid, "-n", "team-a").exit_code == 0

    refused = invoke(store_url, "models", "promote", "digits", "2", "--alias", "production", "-n", "team-a")
    assert refused.exit_code == 1 and "no evaluation of version 2 against version 1" in refused.stderr
    store.record_evaluation("team-a", "digits", 2, 1, FAIL)
    refused = invoke(store_url, "models", "promote", "digits", "2", "--alias", "production", "-n", "team-a")
    assert refused.exit_code == 1 and FAIL["reason"] in refused.stderr
    no_reason = invoke(store_url, "models", "promote", "digits", "2", "--alias", "production", "-n", "team-a",
                       "--force")
    assert no_reason.exit_code == 2 and "--force needs --reason" in no_reason.stderr
    forced = invoke(store_url, "models", "promote", "digits", "2", "--alias", "production", "-n", "team-a",
                    "--force", "--reason", "rollback of a bad release")
    assert forced.exit_code == 0 and "production → version 2" in forced.stdout

    shown = json.loads(invoke(store_url, "models", "show", "digits", "-n", "team-a", "-o", "json").stdout)
    assert {a["alias"]: a["version"] for a in shown["aliases"]} == {"production": 2}
    assert shown["audit"][-1] | {"at": None} == {
        "action": "promote", "version": 2, "alias": "production", "previous_version": 1, "who": "kube:alice@prod",
        "at": None, "reason": "rollback of a bad release", "forced": True}
    assert [f["sha256"] for f in shown["versions"][0]["files"]] == [f"{2:064x}", f"{100:064x}"]
    table = invoke(store_url, "models", "show", "digits", "-n", "team-a")
    assert table.exit_code == 0 and "rollback of a bad release" in table.stdout

    evals = yaml.safe_load(invoke(store_url, "evals", "show", "digits", "2", "-n", "team-a", "-o", "yaml").stdout)
    assert [(e["candidate_version"], e["baseline_version"], e["passed"], e["verdict"]) for e in evals] == [
        (2, 1, False, FAIL)]
    listed = json.loads(invoke(store_url, "models", "list", "-o", "json").stdout)
    assert [(m["namespace"], m["name"], m["versions"], m["aliases"]) for m in listed] == [
        ("team-a", "digits", 2, {"production": 2})]
    assert json.loads(invoke(store_url, "models", "list", "-n", "team-b", "-o", "json").stdout) == []
    missing = invoke(store_url, "models", "show", "digits")
    assert missing.exit_code == 1 and "model default/digits not found" in missing.stderr


# -- evaluations through the gate -------------------------------------------------------------------
def eval_run(store: TrackingStore, accuracy: float, seed: int, dataset_digest: str = "a" * 64,
             image_digest: str = "sha256:" + "b" * 64, examples: int = 400) -> str:
    """A finished evaluation run whose per-example `correct` is 1 with probability ``accuracy``."""
    rid = store.create_run("eval", image_digest=image_digest)
    store.record_dataset(rid, "s3://data/digits-eval/", dataset_digest, object_count=1, total_bytes=10)
    rng = random.Random(seed)
    store.ingest_batch(rid, "records.jsonl", IngestBatch(examples=[
        EvalExample(f"ex-{i}", {"correct": float(rng.random() < accuracy)}) for i in range(examples)]), 1, examples)
    store.finish_run(rid, RunStatus.FINISHED, 0)
    return rid


def test_evals_compare_decides_stores_the_verdict_and_promotion_follows_it(store_url, cairn_home, tmp_path):
    store = TrackingStore(store_url)
    for alias in ("production", None, None):
        rid = finished_run(store)
        args = ["models", "register", "digits", "--run", rid, "-n", "team-a"]
        assert invoke(store_url, *args, *(["--alias", alias] if alias else [])).exit_code == 0
    gate = tmp_path / "gate.yaml"
    gate.write_text("primary: correct\ndirection: higher\nminImprovement: 0.02\nconfidence: 0.95\n")
    baseline = eval_run(store, 0.70, seed=1)

    def compare(version: int, candidate: str, *extra: str):  # noqa: ANN202
        return invoke(store_url, "evals", "compare", "digits", str(version), "--gate", str(gate), "--candidate-run",
                      candidate, "--baseline-run", baseline, "-n", "team-a", *extra)

    better = compare(2, eval_run(store, 0.90, seed=2))
    assert better.exit_code == 0, better.output
    assert "PASS" in better.stdout and "stored as evaluation" in better.stdout
    assert invoke(store_url, "models", "promote", "digits", "2", "--alias", "production", "-n",
                  "team-a").exit_code == 0

    # Version 2 now holds production: version 3, no better than the baseline's 0.70, is refused with numbers.
    worse = compare(3, eval_run(store, 0.70, seed=3), "-o", "json")
    assert worse.exit_code == 1
    stored = json.loads(worse.stdout)
    assert (stored["candidate_version"], stored["baseline_version"], stored["passed"]) == (3, 2, False)
    assert stored["verdict"]["primary"]["name"] == "correct" and stored["verdict"]["paired"] == 400
    refused = invoke(store_url, "models", "promote", "digits", "3", "--alias", "production", "-n", "team-a")
    assert refused.exit_code == 1 and stored["verdict"]["reason"] in refused.stderr

    # Results on another dataset (or from another evaluation image) are never paired, and nothing is stored.
    before = len(store.evaluations("team-a", "digits"))
    other_data = compare(3, eval_run(store, 0.99, seed=4, dataset_digest="c" * 64))
    assert other_data.exit_code == 1 and "different datasets" in other_data.stderr
    other_image = compare(3, eval_run(store, 0.99, seed=5, image_digest="sha256:" + "d" * 64))
    assert other_image.exit_code == 1 and "different images" in other_image.stderr
    assert len(store.evaluations("team-a", "digits")) == before


def test_evals_compare_refuses_a_gate_file_it_cannot_read(store_url, cairn_home, tmp_path):
    store = TrackingStore(store_url)
    assert invoke(store_url, "models", "register", "digits", "--run", finished_run(store), "--alias",
                  "production").exit_code == 0
    gate = tmp_path / "gate.yaml"
    gate.write_text("primary: correct\ndirection: up\nminImprovement: 0.02\n")
    bad = invoke(store_url, "evals", "compare", "digits", "1", "--gate", str(gate), "--candidate-run", "x",
                 "--baseline-run", "y")
    assert bad.exit_code == 1 and "primary direction must be 'higher' or 'lower', got 'up'" in bad.stderr
    gate.write_text("primary: correct\ndirection: higher\nminImprovment: 0.02\n")
    typo = invoke(store_url, "evals", "compare", "digits", "1", "--gate", str(gate), "--candidate-run", "x",
                  "--baseline-run", "y")
    assert typo.exit_code == 1 and "unknown gate field(s) ['minImprovment']" in typo.stderr
