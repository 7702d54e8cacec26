"""The ``cairn`` command, run as a user runs it: a subprocess against a real store."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cairn.cli.main import cli
from cairn.store import TrackingStore
from cairn.store.entities import IngestBatch, MetricPoint

TRAIN = textwrap.dedent(
    """
    import sys, cairn
    cairn.init(config={"lr": 0.01, "epochs": 3, "optimizer": "sgd"})
    c = cairn.config
    assert isinstance(c.lr, float) and isinstance(c.epochs, int), (type(c.lr), type(c.epochs))
    loss = 1.0
    for epoch in range(c.epochs):
        loss *= 1 - c.lr
        cairn.log({"loss": loss, "acc": 1 - loss}, step=epoch)
    print("trained with", c.optimizer)
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    """
)


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(TRAIN)
    return path


def cairn_cmd(url: str | None, *args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    if home is not None:
        env["CAIRN_HOME"] = str(home)
    pre = ["--database-url", url] if url else []
    return subprocess.run([sys.executable, "-m", "cairn", *pre, *args],
                          capture_output=True, text=True, env=env, timeout=120)


def local_run(url: str, script: Path, *params: str, exit_code: int = 0, experiment: str = "cli") -> str:
    args = ["run", "-e", experiment]
    for p in params:
        args += ["-p", p]
    r = cairn_cmd(url, *args, "--", sys.executable, str(script), str(exit_code))
    assert r.returncode == exit_code, r.stderr
    (run,) = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith("run ")]
    return run


def test_run_records_typed_params_status_and_exit_code(store_url, script, cairn_home):
    run_id = local_run(store_url, script, "lr=0.5", "epochs=5", "optimizer=adam")
    d = TrackingStore(store_url).get_run(run_id)
    assert d.params == {"lr": 0.5, "epochs": 5, "optimizer": "adam"}
    assert d.summary.status == "FINISHED" and d.summary.exit_code == 0
    assert d.summary.metrics["loss"].count == 5 and d.summary.metrics["loss"].step == 4
    assert d.summary.metrics["loss"].value == pytest.approx(0.5 ** 5)


def test_failing_command_is_recorded_failed_with_its_exit_code(store_url, script, cairn_home):
    run_id = local_run(store_url, script, exit_code=3)
    d = TrackingStore(store_url).get_run(run_id)
    assert d.summary.status == "FAILED" and d.summary.exit_code == 3


def test_command_that_cannot_start(sqlite_url, cairn_home):
    r = cairn_cmd(sqlite_url, "run", "--", "/no/such/program")
    assert r.returncode == 127 and "could not start '/no/such/program'" in r.stderr
    (run,) = TrackingStore(sqlite_url).list_runs()
    assert run.status == "FAILED" and run.exit_code == 127


def test_malformed_param_is_a_usage_error_naming_it(sqlite_url, script, cairn_home):
    r = cairn_cmd(sqlite_url, "run", "-p", "lr0.1", "--", sys.executable, str(script))
    assert r.returncode == 2
    assert "-p/--param" in r.stderr and "lr0.1" in r.stderr
    assert TrackingStore(sqlite_url).list_runs() == []


def test_unknown_and_ambiguous_run_ids(sqlite_url, script, cairn_home):
    r = cairn_cmd(sqlite_url, "runs", "show", "ffffffff")
    assert r.returncode == 1 and "no run matches id 'ffffffff'" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreachable_database_is_one_line_without_the_password(script, cairn_home):
    r = cairn_cmd("postgresql://cairn:hunter2@127.0.0.1:1/cairn", "runs", "list")
    assert r.returncode == 1
    assert "cannot reach the database" in r.stderr and "127.0.0.1:1" in r.stderr
    assert "hunter2" not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_a_password_written_unencoded_never_shows_in_a_cli_error(script, cairn_home):
    r = cairn_cmd("postgresql://cairn:p@ss:w/rd%@127.0.0.1:1/cairn", "runs", "list")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot reach the database at postgresql+psycopg2://cairn:***@127.0.0.1:1/cairn" in r.stderr
    assert [piece for piece in ("p@ss", "ss:w", "w/rd", "rd%") if piece in r.stderr + r.stdout] == []


def test_default_store_is_sqlite_under_cairn_home(script, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "CAIRN_DATABASE_URL"}
    r = subprocess.run([sys.executable, "-m", "cairn", "run", "--", sys.executable, str(script)],
                       capture_output=True, text=True, env=dict(env, CAIRN_HOME=str(home), COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    assert (home / "cairn.db").exists()
    listed = cairn_cmd(None, "runs", "list", home=home)
    assert "FINISHED" in listed.stdout and "default" in listed.stdout


def test_show_list_compare_and_experiments(store_url, script, cairn_home):
    slow = local_run(store_url, script, "lr=0.05", experiment="sweep")
    fast = local_run(store_url, script, "lr=0.5", experiment="sweep")

    show = cairn_cmd(store_url, "runs", "show", fast[:8])
    assert show.returncode == 0, show.stderr
    assert fast in show.stdout and "0.5" in show.stdout and "loss" in show.stdout

    as_json = json.loads(cairn_cmd(store_url, "runs", "show", fast, "-o", "json").stdout)
    assert as_json["params"]["lr"] == 0.5 and as_json["status"] == "FINISHED"
    assert as_json["environment"]["python_version"].startswith("3.")

    listed = cairn_cmd(store_url, "runs", "list", "-e", "sweep", "--sort", "loss")
    rows = [line for line in listed.stdout.splitlines() if slow[:8] in line or fast[:8] in line]
    assert [fast[:8] in rows[0], slow[:8] in rows[1]] == [True, True], listed.stdout

    compare = cairn_cmd(store_url, "runs", "compare", slow, fast)
    assert compare.returncode == 0, compare.stderr
    lr_row = next(line for line in compare.stdout.splitlines() if " lr " in f" {line} ")
    assert "0.05" in lr_row and "0.5" in lr_row
    assert "epochs" not in compare.stdout  # equal params are hidden unless --all-params
    loss_row = next(line for line in compare.stdout.splitlines() if "loss" in line)
    assert loss_row.rstrip().rstrip("│ ").endswith(fast[:8])  # lower loss wins

    experiments = cairn_cmd(store_url, "experiments", "list")
    assert "sweep" in experiments.stdout and " 2 " in experiments.stdout


def test_export_csv_and_json_hold_every_point(store_url, script, cairn_home, tmp_path):
    run_id = local_run(store_url, script, "epochs=4")
    out = cairn_cmd(store_url, "runs", "export", run_id)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert sorted((r["key"], int(r["step"])) for r in rows) == sorted(
        (k, s) for k in ("acc", "loss") for s in range(4))
    assert float(next(r for r in rows if r["key"] == "loss" and r["step"] == "0")["value"]) == pytest.approx(0.99)

    doc = json.loads(cairn_cmd(store_url, "runs", "export", run_id, "-o", "json").stdout)
    assert doc["params"]["epochs"] == 4 and [p[0] for p in doc["history"]["loss"]] == [0, 1, 2, 3]

    into = tmp_path / "points.yaml"
    written = cairn_cmd(store_url, "runs", "export", run_id, "-o", "yaml", "--file", str(into), "-k", "acc")
    assert written.returncode == 0 and written.stdout == "", written.stderr
    assert list(yaml.safe_load(into.read_text())["history"]) == ["acc"]


def test_db_upgrade_is_repeatable(postgres_server, cairn_home):
    url = postgres_server.create_database("cli_upgrade")
    first = cairn_cmd(url, "db", "upgrade")
    assert first.returncode == 0 and "schema empty ->" in first.stdout, first.stderr
    again = cairn_cmd(url, "db", "upgrade")
    assert again.returncode == 0
    current = cairn_cmd(url, "db", "current")
    rev = current.stdout.split()[1].rstrip(",")
    assert current.stdout.strip().endswith(rev)


def test_unmigrated_postgres_says_how_to_fix_it(postgres_server, cairn_home):
    url = postgres_server.create_database("cli_empty")
    r = cairn_cmd(url, "runs", "list")
    assert r.returncode == 1 and "cairn db upgrade" in r.stderr


def test_offline_run_synced_later(sqlite_url, tmp_path, cairn_home):
    run_dir = tmp_path / "offline"
    code = f"import cairn\ncairn.init(run_dir={str(run_dir)!r})\nfor s in range(10): cairn.log({{'x': s}}, step=s)\n"
    subprocess.run([sys.executable, "-c", code], check=True)
    r = cairn_cmd(sqlite_url, "sync", str(run_dir))
    assert r.returncode == 0 and "ingested 10 points" in r.stderr
    (run,) = TrackingStore(sqlite_url).list_runs()
    assert run.metrics["x"].count == 10 and run.status == "FINISHED"


# -- output formats, run references, namespaces (in process: the same code a user's shell runs) --
A, B = "aaaa1111-0000-4000-8000-000000000001", "aaaa2222-0000-4000-8000-000000000002"
RETRY_OLD, RETRY_NEW = "bbbb1111-0000-4000-8000-000000000003", "cccc1111-0000-4000-8000-000000000004"
LOCAL = "dddd1111-0000-4000-8000-000000000005"


def seeded(url: str) -> TrackingStore:
    """Runs of TrainingRuns in two namespaces (one name used twice) and a local run."""
    store = TrackingStore(url)
    for rid, namespace, name in ((A, "team-a", "train"), (B, "team-b", "train"), (RETRY_OLD, "team-b", "retry"),
                                 (RETRY_NEW, "team-b", "retry"), (LOCAL, None, "laptop")):
        store.create_run(experiment="sweep" if namespace else "local", name=name, run_id=rid,
                         params={"lr": 0.1, "layers": 2}, namespace=namespace)
        points = [MetricPoint("loss", s, 1000 + s, 1.0 / (s + 1)) for s in range(3)]
        points.append(MetricPoint("grad_norm", 0, 1000, float("nan") if rid == A else 2.5))
        store.ingest_batch(rid, "records.jsonl", IngestBatch(metrics=points), 1, 1)
        store.finish_run(rid, "FINISHED", 0)
    return store


def invoke(url: str, *args: str):  # noqa: ANN201
    result = CliRunner().invoke(cli, ["--database-url", url, *args], prog_name="cairn")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_runs_list_as_json_and_yaml_is_the_store_data(store_url, cairn_home, fmt):
    store = seeded(store_url)
    result = invoke(store_url, "runs", "list", "-o", fmt)
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    expected = store.list_runs(limit=50)
    assert [r["id"] for r in listed] == [r.id for r in expected]
    by_id = {r["id"]: r for r in listed}
    for run in expected:
        got = by_id[run.id]
        assert (got["experiment"], got["namespace"], got["name"], got["status"], got["exit_code"]) == (
            run.experiment, run.namespace, run.name, run.status, run.exit_code)
        assert got["metrics"]["loss"] == {"step": 2, "value": pytest.approx(1 / 3), "min": pytest.approx(1 / 3),
                                          "max": 1.0, "count": 3}
        assert got["start_time"] == run.start_time.isoformat()
    assert by_id[A]["metrics"]["grad_norm"]["value"] == "NaN"  # JSON has no NaN: a string, as documented
    assert by_id[B]["metrics"]["grad_norm"]["value"] == 2.5
    assert {r["status"] for r in listed} == {"FINISHED"}  # no Rich markup


def test_runs_list_as_csv_has_a_column_per_metric(store_url, cairn_home):
    store = seeded(store_url)
    result = invoke(store_url, "runs", "list", "-o", "csv", "-e", "sweep")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0])[:5] == ["id", "experiment", "namespace", "name", "status"]
    assert {r["id"] for r in rows} == {r.id for r in store.list_runs(experiment="sweep")}
    row = next(r for r in rows if r["id"] == A)
    assert (row["namespace"], row["name"], row["exit_code"]) == ("team-a", "train", "0")
    assert float(row["loss"]) == pytest.approx(1 / 3) and row["grad_norm"] == "NaN"


def test_namespace_option_filters_runs_as_in_kubectl(store_url, cairn_home):
    seeded(store_url)
    ids = [r["id"] for r in json.loads(invoke(store_url, "runs", "list", "-n", "team-b", "-o", "json").stdout)]
    assert sorted(ids) == sorted([B, RETRY_OLD, RETRY_NEW])
    assert json.loads(invoke(store_url, "runs", "list", "--namespace", "nowhere", "-o", "json").stdout) == []
    assert len(json.loads(invoke(store_url, "runs", "list", "--limit", "2", "-o", "json").stdout)) == 2


def test_runs_are_found_by_id_prefix_or_namespace_and_name(store_url, cairn_home):
    seeded(store_url)

    def shown(ref: str) -> str:
        result = invoke(store_url, "runs", "show", ref, "-o", "json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["id"]

    assert shown("aaaa1") == A and shown(A.upper()) == A and shown("team-b/train") == B

    ambiguous = invoke(store_url, "runs", "show", "aaaa")
    assert ambiguous.exit_code == 1 and "ambiguous" in ambiguous.stderr
    assert A in ambiguous.stderr and B in ambiguous.stderr

    reused = invoke(store_url, "runs", "show", "team-b/retry")
    assert reused.exit_code == 1 and RETRY_OLD in reused.stderr and RETRY_NEW in reused.stderr

    for ref, message in (("eeee", "no run matches id 'eeee'"), ("team-a/nope", "no run of TrainingRun team-a/nope")):
        missing = invoke(store_url, "runs", "show", ref)
        assert missing.exit_code == 1 and message in missing.stderr

    half = invoke(store_url, "runs", "show", "team-a/")
    assert half.exit_code == 2 and "NAMESPACE/TRAININGRUN-NAME" in half.stderr

    history = invoke(store_url, "runs", "history", "team-a/train", "loss", "-o", "json")
    assert [b["step"] for b in json.loads(history.stdout)] == [0, 1, 2]
    compared = json.loads(invoke(store_url, "runs", "compare", "team-a/train", "aaaa2", "-o", "json").stdout)
    assert compared["runs"] == [A, B] and compared["params"] == {}
    assert compared["metrics"]["loss"]["best_run"] == "tie"


def test_show_experiments_history_and_db_as_documents(sqlite_url, cairn_home):
    seeded(sqlite_url)
    as_json = json.loads(invoke(sqlite_url, "runs", "show", "team-a/train", "-o", "json").stdout)
    as_yaml = yaml.safe_load(invoke(sqlite_url, "runs", "show", "team-a/train", "-o", "yaml").stdout)
    assert as_json == as_yaml
    assert as_json["params"] == {"lr": 0.1, "layers": 2} and as_json["cluster"]["namespace"] == "team-a"
    assert as_json["metrics"]["grad_norm"]["value"] == "NaN"

    experiments = json.loads(invoke(sqlite_url, "experiments", "list", "-o", "json").stdout)
    # Experiments are per namespace: team-a's "sweep" and team-b's are two.
    assert [(e["namespace"], e["name"], e["runs"]) for e in experiments] == \
        [(None, "local", 1), ("team-a", "sweep", 1), ("team-b", "sweep", 3)]
    rows = list(csv.DictReader(io.StringIO(invoke(sqlite_url, "experiments", "list", "-o", "csv").stdout)))
    assert [(r["namespace"], r["name"], r["runs"]) for r in rows] == \
        [("", "local", "1"), ("team-a", "sweep", "1"), ("team-b", "sweep", "3")]
    only_b = json.loads(invoke(sqlite_url, "experiments", "list", "-n", "team-b", "-o", "json").stdout)
    assert [(e["namespace"], e["name"], e["runs"]) for e in only_b] == [("team-b", "sweep", 3)]

    history = list(csv.DictReader(io.StringIO(invoke(sqlite_url, "runs", "history", A, "loss").stdout)))
    assert [(int(r["step"]), float(r["last"])) for r in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]

    revisions = json.loads(invoke(sqlite_url, "db", "current", "-o", "json").stdout)
    assert revisions["current"] == revisions["needed"]


def test_help_lists_user_commands_and_in_pod_roles_apart():
    r = subprocess.run([sys.executable, "-m", "cairn", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    commands, _, roles = r.stdout.partition("In-pod roles:")
    listed = lambda text: {line.split()[0] for line in text.split("Commands:")[-1].splitlines()  # noqa: E731
                           if line.startswith("  ") and not line.startswith("   ")}
    assert listed(commands) == {"datasets", "db", "evals", "experiments", "models", "run", "runs", "server", "sync"}
    assert listed(roles) == {"agent", "operator", "prepare", "sidecar"}


@pytest.mark.parametrize("command", [("experiments", "list"), ("runs", "list")])
def test_tables_are_not_cut_when_output_is_piped(sqlite_url, cairn_home, command):
    long_name = "a-very-long-experiment-name-" * 6
    long_run = "a-very-long-run-name-" * 4
    TrackingStore(sqlite_url).create_run(experiment=long_name, name=long_run)
    env = dict(os.environ, COLUMNS="60")
    r = subprocess.run([sys.executable, "-m", "cairn", "--database-url", sqlite_url, *command],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    [row] = [line for line in r.stdout.splitlines() if long_name in line]
    if command[0] == "runs":
        assert long_run in row and "RUNNING" in row, r.stdout
