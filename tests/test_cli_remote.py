"""CLI remote mode: the same command gives the same output with --database-url and with --server against
a real `cairn server` on the same PostgreSQL store; credentials come from the kubeconfig."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from click.testing import CliRunner

from cairn.cli.main import cli
from cairn.client import kubeconfig_identity
from cairn.store import TrackingStore, db
from cairn.store.entities import IngestBatch, MetricPoint
from tests.support.servers import free_port


NO_KUBECONFIG = {"KUBECONFIG": "/nonexistent/kubeconfig", "CAIRN_SERVER": None, "CAIRN_DATABASE_URL": None}


@pytest.fixture(scope="module")
def served_store(postgres_server, tmp_path_factory):
    """A store with three runs of two experiments, and a cairn server reading it; (database URL, server URL, runs).
    One for the module: filling it and starting the server are most of the cost."""
    postgres_url = postgres_server.create_database("cli_remote")
    db.upgrade(db.get_engine(postgres_url))
    tmp_path = tmp_path_factory.mktemp("cli-remote")
    store = TrackingStore(postgres_url)
    runs = []
    for i, (exp, acc) in enumerate([("vision", 0.7), ("vision", 0.9), ("nlp", 0.8)]):
        rid = store.create_run(exp, name=f"r{i}", params={"lr": 0.1 * (i + 1), "opt": "adam"})
        pts = [MetricPoint("acc", s, 1_700_000_000_000 + s, acc * s / 4_999) for s in range(5_000)]
        pts += [MetricPoint("loss", s, 1_700_000_000_000 + s, 1.0 / (1 + s)) for s in range(0, 5_000, 7)]
        store.ingest_batch(rid, "f", IngestBatch(metrics=pts), offset=1, lines=1)
        runs.append(rid)
    store.finish_run(runs[0], "FINISHED", 0)
    store.finish_run(runs[2], "FAILED", 3)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cairn", "server", "--database-url", postgres_url,
                                 "--port", str(port), "--auth", "none"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"{url}/api/v1/healthz", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        yield postgres_url, url, runs
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        store.engine.dispose()


def output(*args: str, **env: str) -> str:
    result = CliRunner().invoke(cli, list(args), prog_name="cairn", env={**NO_KUBECONFIG, **env})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [
    ("experiments", "list", "-o", "json"),
    ("experiments", "list", "-o", "csv"),
    ("experiments", "list"),
    ("runs", "list", "-o", "json"),
    ("runs", "list", "--sort", "acc", "-o", "csv"),
    ("runs", "list", "--sort", "loss", "-o", "yaml"),
    ("runs", "list", "-e", "vision", "-s", "FINISHED"),
])
def test_a_read_command_prints_the_same_through_the_server(served_store, command):
    database_url, server_url, _ = served_store
    local = output("--database-url", database_url, *command)
    assert output("--server", server_url, *command) == local
    assert len(local.splitlines()) > 1


def test_a_downsampled_series_is_the_same_through_the_server(served_store):
    database_url, server_url, runs = served_store
    for run, key, points in [(runs[1], "acc", "100"), (runs[2], "loss", "50"), (runs[0], "acc", "10000")]:
        local = output("--database-url", database_url, "runs", "history", run, key, "--points", points, "-o", "json")
        assert output("runs", "history", run, key, "--points", points, "-o", "json", CAIRN_SERVER=server_url) == local
        assert len(yaml.safe_load(local)) == min(int(points), 5_000 if key == "acc" else 715)


def test_a_command_the_server_does_not_offer_says_so(served_store):
    _, server_url, runs = served_store
    result = CliRunner().invoke(cli, ["--server", server_url, "runs", "show", runs[0]], prog_name="cairn",
                                env=NO_KUBECONFIG)
    assert result.exit_code == 1
    assert "cairn --server does not offer" in result.output and "--database-url" in result.output


def test_an_unknown_run_through_the_server_is_a_clear_error(served_store):
    _, server_url, _ = served_store
    result = CliRunner().invoke(cli, ["--server", server_url, "runs", "history", "0" * 32, "acc"], prog_name="cairn",
                                env=NO_KUBECONFIG)
    assert result.exit_code == 1
    assert "404" in result.output


def test_the_kubeconfig_gives_the_token_and_namespace(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "team",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"tokenFile": str(token_file)}},
                  {"name": "t", "user": {"token": "inline-token"}}],
        "contexts": [{"name": "team", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
                     {"name": "other", "context": {"cluster": "c", "user": "t"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert kubeconfig_identity() == ("from-a-file", "team-a")
    doc = yaml.safe_load(kubeconfig.read_text())
    doc["current-context"] = "other"
    kubeconfig.write_text(yaml.safe_dump(doc))
    assert kubeconfig_identity() == ("inline-token", None)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert kubeconfig_identity() == (None, None)
