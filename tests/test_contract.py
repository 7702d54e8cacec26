"""The run pod's contract lives in cairn.rundir: no CAIRN_* name is spelled anywhere else, and importing
any cairn module reads no file, whatever the environment says."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "operator" / "cairn"
CAIRN_NAME = re.compile(r"^CAIRN_[A-Z0-9_]+$")


def cairn_names_outside_rundir() -> list[str]:
    """``file:line: name`` for every string literal or keyword argument that is a CAIRN_* name."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "rundir.py" and path.parent == SOURCE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            elif isinstance(node, ast.keyword) and node.arg:
                name = node.arg
            else:
                continue
            if CAIRN_NAME.match(name):
                found.append(f"{path.relative_to(SOURCE)}:{node.lineno}: {name}")
    return found


def test_cairn_variable_names_are_spelled_only_in_rundir():
    assert cairn_names_outside_rundir() == [], "use cairn.rundir.Env"


def test_the_agent_does_not_import_pod_building():
    for path in (SOURCE / "agent").glob("*.py"):
        assert "cairn.podspec" not in path.read_text() and "from cairn import podspec" not in path.read_text(), path


# Runs in a fresh interpreter (-P: the working directory is not on sys.path). Records every file
# opened, made or listed on behalf of cairn's own code (a dependency that reads, say, /proc at its own
# import is its business), imports every cairn module, and prints what it saw outside the
# interpreter's and the source's files.
IMPORT_EVERYTHING = r"""
import json, os, pkgutil, sys, sysconfig
stdlib = tuple(os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib"))
site = tuple(os.path.realpath(p) for p in sys.path if "-packages" in p)
allowed = tuple({os.path.realpath(p) for p in (*sys.path, *sysconfig.get_paths().values()) if p})
touched = []

def on_behalf_of_cairn():
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if os.path.realpath(name).startswith(site):
            return False
        if not (name.startswith("<frozen") or os.path.realpath(name).startswith(stdlib)):
            return True
        frame = frame.f_back
    return True

def hook(event, args):
    if event in ("open", "os.mkdir", "os.listdir", "os.scandir", "os.remove", "os.rename") and args:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            real = os.path.realpath(os.fsdecode(path))
            if not real.startswith(allowed) and on_behalf_of_cairn():
                touched.append(f"{event} {real}")

sys.addaudithook(hook)
import cairn
modules = [m.name for m in pkgutil.walk_packages(cairn.__path__, "cairn.")
           if ".migrations" not in m.name and not m.name.endswith("__main__")]
for name in modules:
    __import__(name)
print(json.dumps({"modules": modules, "touched": touched}))
"""


@pytest.mark.parametrize("layout", ["missing run directory", "unparsable files"])
def test_importing_any_cairn_module_reads_no_file(tmp_path, layout):
    run_dir = tmp_path / "run"
    if layout == "unparsable files":
        run_dir.mkdir()
        for name in ("resume.json", "params.json", "dataset.json", ".cairn-uploads.json", "records.jsonl"):
            (run_dir / name).write_text("{not json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
    env.update(CAIRN_RUN_DIR=str(run_dir), CAIRN_DATASET_DIR=str(run_dir / "dataset"), CAIRN_PARAMS="{not json",
               CAIRN_PARAMS_FILE=str(run_dir / "params.json"), CAIRN_HOME=str(tmp_path / "home"),
               CAIRN_METRICS_PORT="not a port", CAIRN_S3_ENDPOINT="ftp://nowhere", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-P", "-c", IMPORT_EVERYTHING], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert "cairn.rundir" in seen["modules"] and "cairn.sdk" in seen["modules"]
    assert seen["touched"] == []
    assert not (tmp_path / "home").exists() and sorted(p.name for p in tmp_path.iterdir()) == (
        ["run"] if layout == "unparsable files" else [])


def test_the_cli_every_pod_role_starts_from_leaves_the_statistics_unloaded():
    """The operator and the sidecar run as `cairn operator` / `cairn sidecar` under memory limits: the gate's
    numpy and scipy (about 75 MiB) are imported only by the command that decides, and in the operator only
    when an Evaluation's verdict is due."""
    probe = ("import sys, cairn.cli.main, cairn.controller; "
             "print(sorted(m for m in ('numpy', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
