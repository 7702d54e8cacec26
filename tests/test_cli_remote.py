"""CLI remote mode: the same command gives the same output with --database-url and with --server against
a real `cairn server` on the same PostgreSQL store; credentials come from the kubeconfig."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cairn.api.types import SPEC_TAG
from cairn.cli.main import cli
from cairn.client import kubeconfig_identity
from cairn.store import TrackingStore, db
from cairn.store.entities import ArtifactInfo, IngestBatch, MetricPoint
from tests.support.servers import free_port


NO_KUBECONFIG = {"KUBECONFIG": "/nonexistent/kubeconfig", "CAIRN_SERVER": None, "CAIRN_DATABASE_URL": None}


UPLOADED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
WEIGHTS = bytes(range(256)) * 5000  # 1.2 MiB: more than one streamed chunk


def trained_run(store: TrackingStore, minio_server, bucket: str, local_dir) -> str:  # noqa: ANN001
    """A finished run of a TrainingRun with everything `runs show` prints: cluster fields, code, dataset, a
    resume, uploads that did not all finish, and artifacts in MinIO, in a local file and one whose bytes
    are not the ones recorded; registered as model `digits` (alias production) with an evaluation."""
    rid = store.create_run("vision", name="trained", params={"lr": 0.05, "layers": 4, "arch": "resnet"},
                           tags={"team": "cv", SPEC_TAG: json.dumps({"image": "reg/train:1", "gpus": 2})},
                           namespace="default", k8s_uid="uid-1", image="reg/train:1",
                           image_digest="sha256:" + "e" * 64, node_name="gpu-node-1", gpu_product="H100",
                           resources={"nvidia.com/gpu": 2})
    store.record_code(rid, "https://git.example/cv.git", "9f1c2e7" + "0" * 33, dirty=True)
    store.record_dataset(rid, "s3://data/digits/", "d" * 64, object_count=3, total_bytes=300)
    store.record_resume(rid, 2, 40, f"s3://{bucket}/ckpt/40", from_attempt=1)
    environment = {"python_version": "3.12.1", "hostname": "trainer-0", "packages": {"torch": "2.4.0"},
                   "gpu_model": "NVIDIA H100", "gpu_count": 2, "cuda_version": "12.4"}
    store.ingest_batch(rid, "f", IngestBatch(
        metrics=[MetricPoint("acc", s, 1_700_000_000_000 + s, s / 99) for s in range(100)],
        run_info={"run_id": rid, "experiment": "vision", "environment": environment}), offset=1, lines=1)
    client = minio_server.client()
    client.put_object(bucket, f"{rid}/weights.pt", io.BytesIO(WEIGHTS), len(WEIGHTS))
    client.put_object(bucket, f"{rid}/bad.bin", io.BytesIO(b"not these bytes"), 15)
    config = local_dir / "config.json"
    config.write_bytes(b'{"layers": 4}')
    store.record_artifacts(rid, [
        ArtifactInfo("artifacts/model/weights.pt", f"s3://{bucket}/{rid}/weights.pt", len(WEIGHTS),
                     hashlib.sha256(WEIGHTS).hexdigest(), uploaded_at=UPLOADED),
        ArtifactInfo("artifacts/model/config.json", config.as_uri(), 13,
                     hashlib.sha256(config.read_bytes()).hexdigest()),
        ArtifactInfo("artifacts/bad.bin", f"s3://{bucket}/{rid}/bad.bin", 15, "0" * 64, uploaded_at=UPLOADED),
        ArtifactInfo("checkpoints/40/state.pt", f"s3://{bucket}/ckpt/40", 7, "1" * 64, kind="checkpoint", step=40,
                     attempt=1, uploaded_at=UPLOADED),
    ])
    store.update_run(rid, artifacts_uploaded=False, artifacts_pending=2, attempts=2, reason="Evicted")
    store.finish_run(rid, "FINISHED", 0)
    store.register_model_version("default", "digits", rid, "kube:alice@prod", alias="production")
    store.register_model_version("default", "digits", rid, "kube:bob@prod")
    store.record_evaluation("default", "digits", 2, 1, {"passed": True, "reason": "better by 0.02", "delta": 0.02},
                            eval_run_ids=[rid], dataset_sha256="d" * 64)
    return rid


@pytest.fixture(scope="module")
def served_store(postgres_server, minio_server, tmp_path_factory):
    """A store with three runs of two experiments and a trained run of a TrainingRun, and a cairn server reading
    it with the object store's credentials; (database URL, server URL, runs, object store env). One for the
    module: filling it and starting the server are most of the cost."""
    postgres_url = postgres_server.create_database("cli_remote")
    db.upgrade(db.get_engine(postgres_url))
    tmp_path = tmp_path_factory.mktemp("cli-remote")
    store = TrackingStore(postgres_url)
    minio_server.start()
    bucket = f"cli-remote-{os.getpid()}"
    minio_server.client().make_bucket(bucket)
    s3_env = {"CAIRN_S3_ENDPOINT": minio_server.url, "CAIRN_S3_ACCESS_KEY": minio_server.access_key,
              "CAIRN_S3_SECRET_KEY": minio_server.secret_key, "CAIRN_S3_REGION": minio_server.region}
    runs = []
    for i, (exp, acc) in enumerate([("vision", 0.7), ("vision", 0.9), ("nlp", 0.8)]):
        # The first two ids share the prefix abcd: one that names neither alone.
        rid = store.create_run(exp, name=f"r{i}", params={"lr": 0.1 * (i + 1), "opt": "adam"},
                               run_id=f"abcd{i}000-0000-4000-8000-00000000000{i}" if i < 2 else None)
        pts = [MetricPoint("acc", s, 1_700_000_000_000 + s, acc * s / 4_999) for s in range(5_000)]
        pts += [MetricPoint("loss", s, 1_700_000_000_000 + s, 1.0 / (1 + s)) for s in range(0, 5_000, 7)]
        store.ingest_batch(rid, "f", IngestBatch(metrics=pts), offset=1, lines=1)
        runs.append(rid)
    store.finish_run(runs[0], "FINISHED", 0)
    store.finish_run(runs[2], "FAILED", 3)
    runs.append(trained_run(store, minio_server, bucket, tmp_path))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **s3_env}
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
        yield postgres_url, url, runs, s3_env
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
    database_url, server_url, _, _ = served_store
    local = output("--database-url", database_url, *command)
    assert output("--server", server_url, *command) == local
    assert len(local.splitlines()) > 1


def test_a_downsampled_series_is_the_same_through_the_server(served_store):
    database_url, server_url, runs, _ = served_store
    for run, key, points in [(runs[1], "acc", "100"), (runs[2], "loss", "50"), (runs[0], "acc", "10000")]:
        local = output("--database-url", database_url, "runs", "history", run, key, "--points", points, "-o", "json")
        assert output("runs", "history", run, key, "--points", points, "-o", "json", CAIRN_SERVER=server_url) == local
        assert len(yaml.safe_load(local)) == min(int(points), 5_000 if key == "acc" else 715)


RUN_COMMANDS = [
    ("runs", "show", "{trained}"),
    ("runs", "show", "{trained}", "-o", "json", "--packages"),
    ("runs", "show", "{first}", "-o", "yaml"),
    ("runs", "show", "default/trained"),
    ("runs", "show", "{trained_prefix}", "-o", "json"),
    ("runs", "compare", "{first}", "{second}", "{trained}"),
    ("runs", "compare", "{first}", "{trained}", "--all-params", "-o", "json"),
    ("runs", "export", "{first}"),
    ("runs", "export", "{trained}", "-k", "acc", "-o", "json"),
    ("runs", "artifacts", "{trained}"),
    ("runs", "artifacts", "{trained}", "-o", "json"),
    ("runs", "artifacts", "{trained}", "-o", "csv"),
    ("runs", "reproduce", "{trained}"),
    ("models", "list"),
    ("models", "list", "-o", "json"),
    ("models", "show", "digits"),
    ("models", "show", "digits", "-o", "yaml"),
    ("evals", "show", "digits"),
    ("evals", "show", "digits", "2", "-o", "json"),
]


@pytest.mark.parametrize("command", RUN_COMMANDS, ids=" ".join)
def test_a_run_or_model_command_prints_the_same_through_the_server(served_store, command):
    database_url, server_url, runs, _ = served_store
    names = {"first": runs[0], "second": runs[1], "trained": runs[3], "trained_prefix": runs[3][:8]}
    args = [part.format(**names) for part in command]
    local = output("--database-url", database_url, *args)
    assert output("--server", server_url, *args) == local
    assert len(local.splitlines()) > 3


def downloaded(*args: str, **env: str) -> tuple[int, str, dict[str, bytes]]:
    """(exit code, output, every file under the destination by path) of `cairn ... runs download ... -d DEST`."""
    dest = args[args.index("-d") + 1]
    result = CliRunner().invoke(cli, list(args), prog_name="cairn", env={**NO_KUBECONFIG, **env})
    files = {str(p.relative_to(dest)): p.read_bytes() for p in sorted(Path(dest).rglob("*")) if p.is_file()}
    return result.exit_code, result.output, files


def test_download_through_the_server_gives_the_same_verified_files(served_store, tmp_path):
    database_url, server_url, runs, s3_env = served_store
    local = downloaded("--database-url", database_url, "runs", "download", runs[3], "model", "-d",
                       str(tmp_path / "db"), **s3_env)
    remote = downloaded("--server", server_url, "runs", "download", runs[3], "model", "-d", str(tmp_path / "remote"))
    assert local[0] == remote[0] == 0, local[1] + remote[1]
    assert remote[2] == local[2] == {"artifacts/model/config.json": b'{"layers": 4}',
                                     "artifacts/model/weights.pt": WEIGHTS}
    assert "sha256 verified" in remote[1]


def test_a_download_whose_bytes_are_not_the_recorded_ones_fails_and_leaves_no_file(served_store, tmp_path):
    database_url, server_url, runs, s3_env = served_store
    for mode in (["--database-url", database_url], ["--server", server_url]):
        dest = tmp_path / mode[0].strip("-")
        code, text, files = downloaded(*mode, "runs", "download", runs[3], "bad.bin", "-d", str(dest), **s3_env)
        assert code == 1
        assert "sha256" in text and "0" * 64 in text
        assert files == {}


def test_a_command_the_server_does_not_offer_says_so(served_store):
    _, server_url, runs, _ = served_store
    result = CliRunner().invoke(cli, ["--server", server_url, "models", "register", "digits", "--run", runs[3]],
                                prog_name="cairn", env=NO_KUBECONFIG)
    assert result.exit_code == 1
    assert "cairn --server does not offer" in result.output and "--database-url" in result.output


@pytest.mark.parametrize("ref", ["0" * 32, "ffff", "zz", "other/trained", "abcd"])
def test_an_unknown_or_ambiguous_run_through_the_server_is_the_same_error(served_store, ref):
    database_url, server_url, runs, _ = served_store
    outputs = []
    for mode in (["--database-url", database_url], ["--server", server_url]):
        result = CliRunner().invoke(cli, [*mode, "runs", "show", ref], prog_name="cairn", env=NO_KUBECONFIG)
        assert result.exit_code == 1
        outputs.append(result.output)
    assert outputs[1] == outputs[0]
    if ref == "abcd":  # the two runs whose ids start so
        assert "ambiguous" in outputs[0] and runs[0] in outputs[0] and runs[1] in outputs[0]
    else:
        assert "no run" in outputs[0] and ref.split("/")[-1] in outputs[0]


def test_a_missing_model_through_the_server_is_a_clear_error(served_store):
    _, server_url, _, _ = served_store
    result = CliRunner().invoke(cli, ["--server", server_url, "models", "show", "nothing"], prog_name="cairn",
                                env=NO_KUBECONFIG)
    assert result.exit_code == 1
    assert "404" in result.output and "default/nothing not found" in result.output


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
