"""The Python packages as a site installs them: the distribution `cairn-tracking` (import package `cairn`).

- The base wheel has no dependencies: installed as docs/install.md's Dockerfile does, into a fresh venv, it
  brings nothing else, and `import cairn` and a training script's cairn.log write a run directory.
- Then hack/wheelhouse.sh's wheels (the bundle's wheels/) add `cairn-tracking[cli]` with pip's network off
  (`--no-index`), and `cairn run` (local mode) records a run that `cairn runs list` shows.

The dependencies' wheels are fetched from PyPI once and cached by pyproject.toml's hash (~/.cache/cairn).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from cairn import rundir as R

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DIST = PROJECT["name"]
TRAIN = """
import cairn
cairn.init(experiment="packaging", config={"lr": 0.1})
for step in range(5):
    cairn.log({"loss": 1.0 / (step + 1)}, step=step)
cairn.finish()
print("trained with", cairn.__file__)
"""


def venv_env(venv: Path, **extra: str) -> dict[str, str]:
    """A venv's environment: no PYTHONPATH (the repository's code must not leak in), no CAIRN_* settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("CAIRN_")}
    return {**env, "PATH": f"{venv / 'bin'}:{env['PATH']}", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def make_venv(path: Path) -> Path:
    """A venv without pip of its own (quicker): this interpreter's pip installs into it (``pip --python``)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=300)
    return path


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args],
                          capture_output=True, text=True, timeout=600, env=venv_env(venv), check=False)


def installed(venv: Path) -> set[str]:
    """The distributions in the venv, as the venv's own Python lists them (quicker than pip list)."""
    listing = "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
    result = subprocess.run([str(venv / "bin" / "python"), "-c", listing], capture_output=True, text=True,
                            timeout=60, env=venv_env(venv), check=False)
    assert result.returncode == 0, result.stderr
    return {name.lower().replace("_", "-") for name in result.stdout.split()}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(["bash", str(REPO / "hack" / "wheelhouse.sh"), str(out)], capture_output=True, text=True,
                            timeout=1800, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def project_wheel(wheelhouse: Path) -> Path:
    (wheel,) = wheelhouse.glob(f"{DIST.replace('-', '_')}-{PROJECT['version']}-*.whl")
    return wheel


def test_the_wheel_declares_no_dependency_outside_its_extras(wheelhouse):
    with zipfile.ZipFile(project_wheel(wheelhouse)) as whl:
        (metadata,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        lines = whl.read(metadata).decode().splitlines()
    requires = [line.removeprefix("Requires-Dist: ") for line in lines if line.startswith("Requires-Dist: ")]
    assert requires, "the extras' requirements are missing"
    assert [r for r in requires if "extra ==" not in r] == []
    extras = {line.removeprefix("Provides-Extra: ") for line in lines if line.startswith("Provides-Extra: ")}
    assert {"cli", "store", "operator", "server", "gates", "test"} <= extras


def dockerfile_pip_install() -> list[str]:
    """The arguments of docs/install.md's ``RUN pip install ...`` line for a training image."""
    (line,) = [line for line in (REPO / "docs" / "install.md").read_text().splitlines()
               if line.startswith("RUN pip install ")]
    return shlex.split(line.removeprefix("RUN pip ").split("&&")[0])


def test_the_sdk_alone_then_the_cli_extra_offline_in_a_fresh_venv(wheelhouse, tmp_path):
    venv = make_venv(tmp_path / "venv")
    # As the docs' Dockerfile does, with the whole wheelhouse offered: the base install takes nothing from it.
    args = [str(wheelhouse) if arg == "/tmp/wheels" else arg for arg in dockerfile_pip_install()]
    assert args == ["install", "--no-index", "--find-links", str(wheelhouse), DIST]
    result = pip(venv, "install", "--no-compile", *args[1:])
    assert result.returncode == 0, result.stderr
    assert installed(venv) == {DIST}
    (tmp_path / "train.py").write_text(TRAIN)
    run_dir = tmp_path / "run"
    result = subprocess.run([str(venv / "bin" / "python"), "train.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=venv_env(venv, CAIRN_RUN_DIR=str(run_dir)), check=False)
    assert result.returncode == 0, result.stderr
    assert f"trained with {venv}" in result.stdout  # the installed package, not the repository's
    records = [json.loads(line) for line in (run_dir / R.RECORDS_FILE).read_text().splitlines()]
    losses = [r for r in records if r["type"] == R.METRIC and "loss" in r["values"]]
    assert [r["step"] for r in losses] == [0, 1, 2, 3, 4]
    assert records[-1]["type"] == R.FINISH
    # nothing but the standard library was there to import
    missing = subprocess.run([str(venv / "bin" / "python"), "-c", "import sqlalchemy"], capture_output=True,
                             timeout=60, env=venv_env(venv), check=False)
    assert missing.returncode != 0

    # The CLI on top, from the wheelhouse alone.
    result = pip(venv, "install", "--no-compile", "--no-index", "--find-links", str(wheelhouse), f"{DIST}[cli]")
    assert result.returncode == 0, result.stderr
    assert {"click", "sqlalchemy", "alembic", "rich"} <= installed(venv)
    assert not {"kopf", "kubernetes", "numpy", "scipy"} & installed(venv)  # the operator's, not the CLI's
    env = venv_env(venv, CAIRN_HOME=str(tmp_path / "home"))
    cairn = str(venv / "bin" / "cairn")
    result = subprocess.run([cairn, "--version"], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0 and PROJECT["version"] in result.stdout, result.stdout + result.stderr
    result = subprocess.run([cairn, "run", "-e", "packaging", "--", str(venv / "bin" / "python"), "train.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([cairn, "runs", "list", "-o", "json"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert (run["experiment"], run["status"]) == ("packaging", "FINISHED")
    # The evaluation gate's libraries are the gates extra's: without them, a clear message.
    (tmp_path / "gate.yaml").write_text("primary: acc\n")
    result = subprocess.run([cairn, "evals", "compare", "digits", "2", "--gate", "gate.yaml", "--candidate-run", "a",
                             "--baseline-run", "b"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env=env, check=False)
    assert result.returncode == 1 and "pip install 'cairn-tracking[gates]'" in result.stderr, result.stderr
