"""The SDK writes a complete, replayable record of a run to its directory and nothing else."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cairn
from cairn import sdk

pytestmark = pytest.mark.usefixtures("fresh_sdk")


def read_records(run_dir):
    with open(run_dir / "records.jsonl") as f:
        return [json.loads(line) for line in f]


def test_init_records_identity_params_environment_and_code(tmp_path):
    run = cairn.init(experiment="exp", name="first", config={"lr": 0.1}, run_dir=str(tmp_path / "r"))
    cairn.finish()
    first = read_records(tmp_path / "r")[0]
    assert first["type"] == "run" and first["run_id"] == run.id
    assert first["experiment"] == "exp" and first["name"] == "first"
    assert first["params"] == {"lr": 0.1}
    env = first["environment"]
    assert env["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert env["hostname"] and "numpy" in {k.lower() for k in env["packages"]}
    visible = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout if shutil.which(
        "nvidia-smi") else ""
    assert env["gpu_count"] == len([line for line in visible.splitlines() if line.startswith("GPU ")])


def test_code_version_is_taken_from_the_git_checkout(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    cairn.init(run_dir=str(tmp_path / "r"))
    cairn.finish()
    code = read_records(tmp_path / "r")[0]["code"]
    assert code["commit"] == head and code["dirty"] is False
    (repo / "train.py").write_text("print(2)\n")
    assert sdk.code_version(str(repo))["dirty"] is True


@pytest.mark.parametrize("remote, recorded", [
    ("https://oauth2:glpat-SECRET@git.example.org/ml/digits.git", "https://git.example.org/ml/digits.git"),
    ("https://user:p%40ss@git.example.org:8443/ml/digits", "https://git.example.org:8443/ml/digits"),
    ("git@git.example.org:ml/digits.git", "git@git.example.org:ml/digits.git"),
    ("ssh://git@git.example.org/ml/digits.git", "ssh://git@git.example.org/ml/digits.git"),
    ("ssh://git:hunter2@git.example.org/ml/digits.git", "ssh://git.example.org/ml/digits.git"),
])
def test_the_recorded_remote_carries_no_credentials(tmp_path, remote, recorded):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "remote", "add", "origin", remote], check=True)
    (repo / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    assert sdk.code_version(str(repo))["repository"] == recorded


def test_log_records_steps_numpy_scalars_nan_and_inf(tmp_path):
    cairn.init(run_dir=str(tmp_path / "r"), capture_env=False)
    cairn.log({"loss": np.float32(0.5), "count": np.int64(3), "acc": 0.9})
    cairn.log({"loss": float("nan"), "grad": float("inf")})
    cairn.log({"loss": 0.25}, step=10)
    cairn.log({"loss": 0.2})
    cairn.finish()
    metrics = [r for r in read_records(tmp_path / "r") if r["type"] == "metric"]
    assert [m["step"] for m in metrics] == [0, 1, 10, 11]
    assert metrics[0]["values"] == {"loss": 0.5, "count": 3, "acc": 0.9}
    assert math.isnan(metrics[1]["values"]["loss"]) and metrics[1]["values"]["grad"] == math.inf
    seqs = [r["seq"] for r in read_records(tmp_path / "r")]
    assert seqs == list(range(len(seqs)))


def test_injected_params_override_code_defaults_and_later_changes_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("CAIRN_PARAMS", json.dumps({"lr": 0.5, "sweep": True}))
    cairn.init(config={"lr": 0.1, "epochs": 3}, run_dir=str(tmp_path / "r"), capture_env=False)
    assert dict(cairn.config) == {"lr": 0.5, "epochs": 3, "sweep": True}
    assert cairn.config.lr == 0.5
    cairn.config.batch_size = 64
    cairn.finish()
    recs = read_records(tmp_path / "r")
    assert recs[0]["params"] == {"lr": 0.5, "epochs": 3, "sweep": True}
    assert {"type": "params", "params": {"batch_size": 64}}.items() <= recs[1].items()


def test_params_file_in_the_run_dir_is_read(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "params.json").write_text(json.dumps({"lr": 3}))
    cairn.init(config={"lr": 1}, run_dir=str(tmp_path / "r"), capture_env=False)
    assert cairn.config.lr == 3


def test_log_artifact_keeps_a_copy_that_later_edits_do_not_change(tmp_path):
    run = cairn.init(run_dir=str(tmp_path / "r"), capture_env=False)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights-v1")
    rel = cairn.log_artifact(str(model))
    model.unlink()
    model.write_bytes(b"weights-v2")
    cairn.finish()
    assert rel == "artifacts/model.bin"
    assert (tmp_path / "r" / rel).read_bytes() == b"weights-v1"
    assert {"type": "artifact", "path": rel}.items() <= read_records(tmp_path / "r")[1].items()
    assert run.id


def test_finish_records_status_and_exit_code(tmp_path):
    cairn.init(run_dir=str(tmp_path / "r"), capture_env=False)
    cairn.finish(exit_code=3)
    last = read_records(tmp_path / "r")[-1]
    assert last["type"] == "finish" and last["status"] == "FAILED" and last["exit_code"] == 3


def test_a_run_finishes_only_with_a_final_status(tmp_path):
    run = cairn.init(run_dir=str(tmp_path / "r"), capture_env=False)
    with pytest.raises(ValueError, match="not RUNNING"):
        run.finish(0, status="RUNNING")
    run.finish(137, status="KILLED")
    last = read_records(tmp_path / "r")[-1]
    assert (last["status"], last["exit_code"]) == ("KILLED", 137)


def test_disabled_mode_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CAIRN_MODE", "disabled")
    cairn.init(run_dir=str(tmp_path / "r"))
    cairn.log({"loss": 1.0})
    cairn.finish()
    assert not (tmp_path / "r").exists()


def test_log_before_init_says_what_to_do():
    with pytest.raises(RuntimeError, match="cairn.init"):
        cairn.log({"loss": 1.0})


def test_importing_cairn_needs_only_the_standard_library(tmp_path):
    code = (
        "import sys, cairn\n"
        "cairn.init(run_dir=sys.argv[1], capture_env=False)\n"
        "cairn.log({'x': 1.0})\n"
        "cairn.finish()\n"
        "third_party = [m for m in ('sqlalchemy', 'click', 'rich', 'psycopg2', 'alembic', 'numpy') if m in sys.modules]\n"
        "print(third_party)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_an_uncaught_exception_marks_the_run_failed(tmp_path):
    code = "import cairn, sys\ncairn.init(run_dir=sys.argv[1], capture_env=False)\ncairn.log({'x': 1.0})\nraise ValueError('boom')\n"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True)
    assert done.returncode == 1
    last = read_records(tmp_path / "r")[-1]
    assert last["type"] == "finish" and last["status"] == "FAILED"


def test_records_reach_the_file_without_finish_within_the_flush_interval(tmp_path):
    import time

    cairn.init(run_dir=str(tmp_path / "r"), capture_env=False)
    cairn.log({"x": 1.0})
    deadline = time.time() + 5
    while time.time() < deadline:
        if any(r["type"] == "metric" for r in read_records(tmp_path / "r")):
            break
        time.sleep(0.05)
    assert any(r["type"] == "metric" for r in read_records(tmp_path / "r"))


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 1 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_records_wait_in_memory_while_the_disk_is_full_and_land_once_when_it_frees(small_filesystem, capfd):
    run = cairn.init(experiment="full-disk", run_dir=str(small_filesystem / "run"), capture_env=False)
    filler = small_filesystem / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the file system to the last block
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    for step in range(2000):
        cairn.log({"loss": 1.0 / (step + 1), "acc": step / 2000}, step=step)
    with pytest.raises(OSError):
        run.flush()
    with pytest.raises(OSError):
        run.flush()
    warnings = [line for line in capfd.readouterr().err.splitlines() if "cannot write records" in line]
    assert len(warnings) == 1, warnings

    filler.unlink()
    cairn.finish()
    assert "written to" in capfd.readouterr().err
    lines = (small_filesystem / "run" / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole: no half-written record
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert [r["step"] for r in records if r["type"] == "metric"] == list(range(2000))
    assert records[-1]["type"] == "finish"
