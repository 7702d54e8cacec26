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

from cairn.store import TrackingStore

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
    return subprocess.run([sys.executable, "-m", "cairn.cli.main", *pre, *args],
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


def test_default_store_is_sqlite_under_cairn_home(script, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "CAIRN_DATABASE_URL"}
    r = subprocess.run([sys.executable, "-m", "cairn.cli.main", "run", "--", sys.executable, str(script)],
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

    as_json = json.loads(cairn_cmd(store_url, "runs", "show", fast, "--json").stdout)
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


def test_export_csv_and_json_hold_every_point(store_url, script, cairn_home):
    run_id = local_run(store_url, script, "epochs=4")
    out = cairn_cmd(store_url, "runs", "export", run_id, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert sorted((r["key"], int(r["step"])) for r in rows) == sorted(
        (k, s) for k in ("acc", "loss") for s in range(4))
    assert float(next(r for r in rows if r["key"] == "loss" and r["step"] == "0")["value"]) == pytest.approx(0.99)

    doc = json.loads(cairn_cmd(store_url, "runs", "export", run_id, "--format", "json").stdout)
    assert doc["params"]["epochs"] == 4 and [p[0] for p in doc["history"]["loss"]] == [0, 1, 2, 3]


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
