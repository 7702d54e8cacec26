"""Artifacts, checkpoints and datasets in a real MinIO, recorded in a real store.

Uploads hash what they send and land once per path whatever happens to MinIO; downloads verify;
the dataset digest is deterministic; the prepare step fails a mismatched dataset and restores the
latest checkpoint on a retry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cairn import objectstore as S3
from cairn import podspec, rundir, sdk
from cairn.agent.prepare import PrepareSettings, run_prepare
from cairn.agent.uploader import ArtifactUploader, checkpoint_step, group_of
from cairn.api import from_manifest
from cairn.controller import failures, reconcile
from cairn.store import TrackingStore
from cairn.store.entities import ArtifactInfo, DatasetRecord, Uploads
from tests.support.servers import clean_env, read_object, start_sidecar

pytestmark = pytest.mark.usefixtures("fresh_sdk")
RUN_ID = "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_config(server, bucket: str | None) -> S3.S3Config:
    return S3.S3Config(server.endpoint, False, server.access_key, server.secret_key, bucket, server.region)


def keys(client, bucket: str, prefix: str = "") -> list[str]:  # noqa: ANN001
    return sorted(o.object_name for o in client.list_objects(bucket, prefix=prefix or None, recursive=True))


@pytest.fixture
def pg_store(postgres_url) -> TrackingStore:
    store = TrackingStore(postgres_url)
    store.create_run(experiment="digits", run_id=RUN_ID, status="RUNNING")
    return store


def make_uploader(run_dir: Path, store: TrackingStore, cfg: S3.S3Config, **kw) -> ArtifactUploader:  # noqa: ANN003
    kw.setdefault("settle_s", 0.0)
    kw.setdefault("poll_interval", 0.1)
    return ArtifactUploader(run_dir, RUN_ID, cfg, S3.run_prefix("ml", "digits", RUN_ID), store=store, **kw)


def s3_from_env(monkeypatch, env: dict[str, str]) -> S3.S3Config | None:
    """The object store as a process with exactly ``env`` (of the CAIRN_S3_* and AWS_* names) sees it."""
    for var in list(os.environ):
        if var.startswith(("CAIRN_S3_", "AWS_")):
            monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return S3.S3Settings().connection()


def write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# -- pure pieces ---------------------------------------------------------------------------------
def test_uris_prefixes_and_part_sizes():
    assert S3.parse_s3_uri("s3://b/a/b/c") == ("b", "a/b/c")
    assert S3.dataset_prefix("s3://b/data") == ("b", "data/") and S3.dataset_prefix("s3://b") == ("b", "")
    assert S3.run_prefix("ml", "digits", "r1") == "ml/digits/r1"
    with pytest.raises(S3.ObjectStoreError):
        S3.parse_s3_uri("file:///x")
    assert S3.part_size_for(10 * MiB, 5 * MiB) == 5 * MiB
    assert S3.part_size_for(1, 1) == S3.MIN_PART_SIZE
    huge = 1 << 40
    assert -(-huge // S3.part_size_for(huge)) <= S3.MAX_PARTS


def test_checkpoint_paths_group_by_step():
    assert checkpoint_step("checkpoints/20/model.npz") == 20 and group_of("checkpoints/20/a/b") == "checkpoints/20"
    assert checkpoint_step("checkpoints/latest.pt") is None and group_of("artifacts/m.pt") == "artifacts/m.pt"


def test_dataset_digest_formula_is_order_independent():
    entries = [("b.txt", 3, sha(b"bbb")), ("a/x.bin", 1, sha(b"x"))]
    expected = hashlib.sha256(
        b"a/x.bin\x001\x00" + sha(b"x").encode() + b"\nb.txt\x003\x00" + sha(b"bbb").encode() + b"\n").hexdigest()
    assert S3.digest_entries(entries) == S3.digest_entries(entries[::-1]) == expected
    assert S3.digest_entries([]) == hashlib.sha256(b"").hexdigest()


# -- uploads -------------------------------------------------------------------------------------
def test_artifacts_and_checkpoints_upload_with_sha256_and_s3_uris(minio_server, minio_bucket, pg_store, tmp_path):
    run_dir = tmp_path / "run"
    files = {
        "artifacts/model.npz": write(run_dir / "artifacts/model.npz", os.urandom(300_000)),
        "artifacts/eval/report.json": write(run_dir / "artifacts/eval/report.json", b'{"acc": 0.9}'),
        "checkpoints/10/ckpt.bin": write(run_dir / "checkpoints/10/ckpt.bin", os.urandom(1000)),
        "checkpoints/20/ckpt.bin": write(run_dir / "checkpoints/20/ckpt.bin", os.urandom(1000)),
    }
    write(run_dir / "checkpoints/.30-tmp/ckpt.bin", b"half written")  # hidden: not yet renamed into place
    up = make_uploader(run_dir, pg_store, s3_config(minio_server, minio_bucket), attempt=1)
    assert up.upload_available() == 0

    client = minio_server.client()
    prefix = f"ml/digits/{RUN_ID}/"
    assert keys(client, minio_bucket) == sorted(prefix + p for p in files)
    arts = {a.path: a for a in pg_store.list_artifacts(RUN_ID)}
    assert set(arts) == set(files)
    for path, data in files.items():
        a = arts[path]
        assert a.uri == f"s3://{minio_bucket}/{prefix}{path}" and a.size == len(data) and a.sha256 == sha(data)
        assert sha(read_object(client, minio_bucket, prefix + path)) == a.sha256
        assert a.attempt == 1 and a.uploaded_at is not None
    assert (arts["checkpoints/20/ckpt.bin"].kind, arts["checkpoints/20/ckpt.bin"].step) == ("checkpoint", 20)
    assert (arts["artifacts/model.npz"].kind, arts["artifacts/model.npz"].step) == ("artifact", None)
    step, ckpt = pg_store.latest_checkpoint(RUN_ID)
    assert step == 20 and [a.path for a in ckpt] == ["checkpoints/20/ckpt.bin"]

    # Nothing changed: a second pass uploads nothing; a changed file goes again, to the same key.
    assert up.upload_available() == 0 and up.stats.uploaded == 4
    new = write(run_dir / "artifacts/model.npz", os.urandom(1234))
    assert up.upload_available() == 0 and up.stats.uploaded == 5
    assert pg_store.list_artifacts(RUN_ID, kind="artifact")[1].sha256 == sha(new)
    assert len(pg_store.list_artifacts(RUN_ID)) == 4 and len(keys(client, minio_bucket)) == 4


def test_https_endpoint_signed_by_the_sites_ca_and_a_bucket_made_on_first_upload(minio_factory, pg_store, tmp_path,
                                                                                 monkeypatch):
    server = minio_factory(tls=True)  # a certificate from a CA no trust store knows
    env = {"CAIRN_S3_ENDPOINT": server.url, "CAIRN_S3_ACCESS_KEY": server.access_key,
           "CAIRN_S3_SECRET_KEY": server.secret_key, "CAIRN_S3_BUCKET": "runs"}
    assert server.url.startswith("https://")
    untrusting = s3_from_env(monkeypatch, env).client()
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.bucket_exists("runs")
    with pytest.raises(S3.ObjectStoreError, match="CAIRN_S3_CA_BUNDLE"):
        s3_from_env(monkeypatch, {**env, "CAIRN_S3_CA_BUNDLE": "not a certificate"}).client()
    ca_file = tmp_path / "site-ca.pem"
    ca_file.write_text(server.ca_pem)
    assert s3_from_env(monkeypatch, {**server.env(), "AWS_CA_BUNDLE": str(ca_file)}).ca_bundle == server.ca_pem

    cfg = s3_from_env(monkeypatch, {**env, "CAIRN_S3_CA_BUNDLE": server.ca_pem})
    run_dir = tmp_path / "run"
    data = write(run_dir / "artifacts/model.bin", os.urandom(10_000))
    up = make_uploader(run_dir, pg_store, cfg)
    assert up.upload_available() == 0  # the bucket did not exist: the uploader made it
    [art] = pg_store.list_artifacts(RUN_ID)
    assert art.uri == f"s3://runs/ml/digits/{RUN_ID}/artifacts/model.bin" and art.sha256 == sha(data)
    assert sha(read_object(server.client(), "runs", f"ml/digits/{RUN_ID}/artifacts/model.bin")) == sha(data)
    assert S3.ensure_bucket(cfg.client(), "runs") is False  # already there: nothing to do, no error


def test_write_only_credentials_upload_into_a_bucket_they_cannot_list(minio_server, minio_bucket, pg_store, tmp_path):
    from minio import MinioAdmin
    from minio.credentials import StaticProvider

    admin = MinioAdmin(endpoint=minio_server.endpoint, secure=False,
                       credentials=StaticProvider(minio_server.access_key, minio_server.secret_key))
    user, secret = f"writer-{minio_bucket}", os.urandom(16).hex()
    admin.user_add(user, secret)
    admin.policy_add(f"put-{minio_bucket}", policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [f"arn:aws:s3:::{minio_bucket}/*"]}]})
    admin.attach_policy([f"put-{minio_bucket}"], user=user)
    cfg = S3.S3Config(minio_server.endpoint, False, user, secret, minio_bucket, minio_server.region)
    run_dir = tmp_path / "run"
    data = write(run_dir / "artifacts/model.bin", b"weights")
    up = make_uploader(run_dir, pg_store, cfg)
    assert up.upload_available() == 0  # no HEAD/list right: the uploads go ahead all the same
    assert read_object(minio_server.client(), minio_bucket, f"ml/digits/{RUN_ID}/artifacts/model.bin") == data


def test_large_file_goes_multipart_in_small_parts(minio_server, minio_bucket, pg_store, tmp_path):
    run_dir = tmp_path / "run"
    data = write(run_dir / "artifacts/weights.bin", os.urandom(12 * MiB + 123))
    up = make_uploader(run_dir, pg_store, s3_config(minio_server, minio_bucket), part_size=5 * MiB)
    assert up.upload_available() == 0
    key = f"ml/digits/{RUN_ID}/artifacts/weights.bin"
    stat = minio_server.client().stat_object(minio_bucket, key)
    assert stat.size == len(data) and stat.etag.endswith("-3")  # three parts: 5 + 5 + 2 MiB
    (art,) = pg_store.list_artifacts(RUN_ID)
    assert art.sha256 == sha(data) == sha(read_object(minio_server.client(), minio_bucket, key))


def test_a_file_still_being_written_waits_and_a_checkpoint_is_recorded_whole(minio_server, minio_bucket, pg_store,
                                                                            tmp_path):
    run_dir = tmp_path / "run"
    write(run_dir / "checkpoints/5/a.bin", b"a" * 100)
    up = make_uploader(run_dir, pg_store, s3_config(minio_server, minio_bucket), settle_s=3600)
    assert up.upload_available() == 1  # written just now: not settled
    assert pg_store.list_artifacts(RUN_ID) == [] and keys(minio_server.client(), minio_bucket) == []
    old = time.time() - 10
    os.utime(run_dir / "checkpoints/5/a.bin", (old, old))
    write(run_dir / "checkpoints/5/b.bin", b"b" * 100)  # the same step, still fresh
    assert up.upload_available() == 2
    assert pg_store.latest_checkpoint(RUN_ID) is None  # a is up, but the step is not recorded without b
    assert up.upload_available(final=True) == 0  # the final flush takes everything
    step, files = pg_store.latest_checkpoint(RUN_ID)
    assert step == 5 and [f.path for f in files] == ["checkpoints/5/a.bin", "checkpoints/5/b.bin"]


def test_minio_stopped_mid_upload_then_restarted_every_artifact_arrives_exactly_once(
        minio_factory, pg_store, tmp_path, monkeypatch):
    server = minio_factory()
    server.client().make_bucket("runs")
    run_dir = tmp_path / "run"
    files = {f"artifacts/small-{i}.txt": write(run_dir / f"artifacts/small-{i}.txt", os.urandom(100 + i))
             for i in range(5)}
    files["artifacts/big.bin"] = write(run_dir / "artifacts/big.bin", os.urandom(16 * MiB))
    files["checkpoints/100/model.bin"] = write(run_dir / "checkpoints/100/model.bin", os.urandom(6 * MiB))

    # Stop MinIO (SIGKILL) once 7 MiB of big.bin have been read, i.e. in the middle of its
    # multipart upload, and bring it back 3 s later.
    killed = threading.Event()
    real_read = S3.HashingReader.read

    def read(self, size=-1):  # noqa: ANN001, ANN202
        data = real_read(self, size)
        if self.bytes > 7 * MiB and self.bytes < 16 * MiB and not killed.is_set():
            killed.set()
            server.stop(kill=True)
            threading.Timer(3.0, server.start).start()
        return data

    monkeypatch.setattr(S3.HashingReader, "read", read)
    up = make_uploader(run_dir, pg_store, s3_config(server, "runs"), part_size=5 * MiB)
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("ok", up.run(stop, drain_timeout=120)))
    started = time.monotonic()
    thread.start()
    # Training goes on meanwhile: the run directory stays writable and nothing waits on MinIO.
    for i in range(50):
        (run_dir / "metrics.jsonl").open("a").write(json.dumps({"step": i}) + "\n")
    assert killed.wait(60), "the upload never reached the middle of big.bin"
    time.sleep(0.5)
    stop.set()  # the trainer exits while MinIO is still down: the final flush has to wait it out
    thread.join(150)
    assert not thread.is_alive() and result["ok"] is True, up.stats
    assert up.stats.errors >= 1 and time.monotonic() - started > 3

    client = server.client()
    prefix = f"ml/digits/{RUN_ID}/"
    assert keys(client, "runs") == sorted(prefix + p for p in files)  # each path once, nothing else
    arts = pg_store.list_artifacts(RUN_ID)
    assert sorted(a.path for a in arts) == sorted(files)  # one row per file
    for a in arts:
        assert a.sha256 == sha(files[a.path]) == sha(read_object(client, "runs", prefix + a.path))
    assert pg_store.get_run(RUN_ID).uploads == Uploads(complete=True, pending=0)

    # A restarted sidecar that lost its state uploads again: still one object and one row per file.
    (run_dir / rundir.UPLOADS_STATE_FILE).unlink()
    again = make_uploader(run_dir, pg_store, s3_config(server, "runs"))
    assert again.upload_available(final=True) == 0 and again.stats.uploaded == len(files)
    assert keys(client, "runs") == sorted(prefix + p for p in files)
    assert sorted(a.path for a in pg_store.list_artifacts(RUN_ID)) == sorted(files)


def test_final_flush_records_what_could_not_be_uploaded(minio_factory, pg_store, tmp_path):
    server = minio_factory()
    server.client().make_bucket("runs")
    run_dir = tmp_path / "run"
    write(run_dir / "artifacts/a.txt", b"a")
    up = make_uploader(run_dir, pg_store, s3_config(server, "runs"))
    server.stop(kill=True)
    started = time.monotonic()
    assert up.flush(time.monotonic() + 3) is False
    assert time.monotonic() - started < 20
    assert pg_store.get_run(RUN_ID).uploads == Uploads(complete=False, pending=1)


def test_store_keeps_one_row_per_path_the_latest_uploaded_checkpoint_and_resumes(store):
    import datetime as dt

    from cairn.store.entities import ArtifactInfo

    rid = store.create_run(experiment="digits", run_id=RUN_ID)
    now = dt.datetime.now(dt.timezone.utc)

    def art(path: str, step: int | None, uploaded: bool = True, digest: str = "a" * 64) -> ArtifactInfo:
        return ArtifactInfo(path, f"s3://b/{path}" if uploaded else f"file:///{path}", 1, digest, "checkpoint", step,
                            1, now if uploaded else None)

    store.record_artifacts(rid, [art("checkpoints/10/x", 10), art("checkpoints/10/y", 10)])
    store.record_artifacts(rid, [art("checkpoints/10/x", 10, digest="b" * 64)])  # again: updated, not added
    store.record_artifacts(rid, [art("checkpoints/30/x", 30, uploaded=False)])  # local only: not resumable
    assert len(store.list_artifacts(rid)) == 3 and store.list_artifacts(rid)[0].sha256 == "b" * 64
    step, files = store.latest_checkpoint(rid)
    assert step == 10 and [f.path for f in files] == ["checkpoints/10/x", "checkpoints/10/y"]
    assert files[0].attempt == 1 and files[0].uploaded_at is not None

    store.record_resume(rid, 2, 10, "s3://b/checkpoints/10/", 1)
    store.record_resume(rid, 2, 10, "s3://b/checkpoints/10/", 1)
    assert [(r.attempt, r.step, r.from_attempt) for r in store.resumes(rid)] == [(2, 10, 1)]

    store.record_dataset(rid, "s3://d/x", "c" * 64, None, 3, 100)
    store.record_dataset(rid, "s3://d/x", None, "c" * 64)  # the operator again, without a digest
    assert store.get_run(rid).datasets == [DatasetRecord("s3://d/x", "c" * 64, "c" * 64, 3, 100)]
    store.update_run(rid, artifacts_uploaded=False, artifacts_pending=2)
    assert store.get_run(rid).uploads == Uploads(complete=False, pending=2)


# -- downloads -----------------------------------------------------------------------------------
def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_S3", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "cairn", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120, **kw)


def test_cairn_runs_download_reproduces_the_bytes_and_refuses_a_tampered_object(
        minio_server, minio_bucket, pg_store, postgres_url, tmp_path):
    run_dir = tmp_path / "run"
    model = write(run_dir / "artifacts/model.npz", os.urandom(7 * MiB))
    ckpt = write(run_dir / "checkpoints/20/ckpt.bin", os.urandom(5000))
    make_uploader(run_dir, pg_store, s3_config(minio_server, minio_bucket)).upload_available()
    env = minio_server.env()  # AWS_* variables, as a user's shell would have them

    listing = cli("--database-url", postgres_url, "runs", "artifacts", RUN_ID[:8], "-o", "json", env=env)
    assert listing.returncode == 0, listing.stderr
    doc = json.loads(listing.stdout)
    assert [a["path"] for a in doc["artifacts"]] == ["artifacts/model.npz", "checkpoints/20/ckpt.bin"]
    assert doc["artifacts"][0]["sha256"] == sha(model)
    table = cli("--database-url", postgres_url, "runs", "artifacts", RUN_ID, env=env)
    assert table.returncode == 0 and "model.npz" in table.stdout and "checkpoint" in table.stdout

    out = tmp_path / "out"
    got = cli("--database-url", postgres_url, "runs", "download", RUN_ID, "-d", str(out), env=env)
    assert got.returncode == 0, got.stderr
    assert "sha256 verified" in got.stderr
    assert (out / "artifacts/model.npz").read_bytes() == model
    assert (out / "checkpoints/20/ckpt.bin").read_bytes() == ckpt

    one = tmp_path / "one"
    got = cli("--database-url", postgres_url, "runs", "download", RUN_ID, "model.npz", "-d", str(one), env=env)
    assert got.returncode == 0, got.stderr
    assert [p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file()] == ["artifacts/model.npz"]

    missing = cli("--database-url", postgres_url, "runs", "download", RUN_ID, "nope.bin", env=env)
    assert missing.returncode == 1 and "no artifact 'nope.bin'" in missing.stderr

    no_creds = cli("--database-url", postgres_url, "runs", "download", RUN_ID, "-d", str(tmp_path / "x"))
    assert no_creds.returncode == 1 and "CAIRN_S3_ENDPOINT" in no_creds.stderr

    evil = b"not the model"
    minio_server.client().put_object(minio_bucket, f"ml/digits/{RUN_ID}/artifacts/model.npz", io.BytesIO(evil),
                                     len(evil))
    bad = tmp_path / "bad"
    got = cli("--database-url", postgres_url, "runs", "download", RUN_ID, "model.npz", "-d", str(bad), env=env)
    assert got.returncode == 1 and "sha256" in got.stderr and sha(model) in got.stderr
    assert not (bad / "artifacts/model.npz").exists()


# -- datasets ------------------------------------------------------------------------------------
def put(client, bucket: str, key: str, data: bytes) -> None:  # noqa: ANN001
    client.put_object(bucket, key, io.BytesIO(data), len(data))


DATA = {"train/0.csv": b"1,2\n3,4\n", "train/1.csv": b"5,6\n", "labels.json": b"[0, 1]", "empty.txt": b""}


def test_dataset_digest_is_deterministic_and_sees_every_change(minio_server, minio_bucket):
    client = minio_server.client()
    for key, data in DATA.items():
        put(client, minio_bucket, f"a/mnist/{key}", data)
    for key, data in reversed(DATA.items()):  # another place, uploaded in another order
        put(client, minio_bucket, f"b/copy/{key}", data)
    put(client, minio_bucket, "b/copy/train/", b"")  # a folder marker, as some tools make them
    put(client, minio_bucket, "a/mnist-other/x", b"not under a/mnist/")

    first = S3.dataset_digest(client, f"s3://{minio_bucket}/a/mnist")
    expected = S3.digest_entries([(k, len(v), sha(v)) for k, v in DATA.items()])
    assert (first.digest, first.objects, first.bytes) == (expected, 4, sum(map(len, DATA.values())))
    assert S3.dataset_digest(client, f"s3://{minio_bucket}/a/mnist/").digest == expected
    assert S3.dataset_digest(client, f"s3://{minio_bucket}/b/copy", workers=1).digest == expected

    put(client, minio_bucket, "a/mnist/train/1.csv", b"5,7\n")  # same size, one byte differs
    changed = S3.dataset_digest(client, f"s3://{minio_bucket}/a/mnist").digest
    put(client, minio_bucket, "a/mnist/train/1.csv", DATA["train/1.csv"])
    assert S3.dataset_digest(client, f"s3://{minio_bucket}/a/mnist").digest == expected
    put(client, minio_bucket, "a/mnist/extra", b"")
    added = S3.dataset_digest(client, f"s3://{minio_bucket}/a/mnist").digest
    assert len({expected, changed, added}) == 3


def test_cairn_datasets_digest_prints_the_pin(minio_server, minio_bucket):
    client = minio_server.client()
    for key, data in DATA.items():
        put(client, minio_bucket, f"d/{key}", data)
    got = cli("datasets", "digest", f"s3://{minio_bucket}/d", env=minio_server.env())
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == S3.digest_entries([(k, len(v), sha(v)) for k, v in DATA.items()])


def prepare_cfg(run_dir: Path, url: str, **kw) -> PrepareSettings:  # noqa: ANN003
    return PrepareSettings(run_dir=run_dir, run_id=RUN_ID, attempt=kw.pop("attempt", 1), namespace="ml",
                           experiment="digits", database_url=url, termination_log=str(run_dir.parent / "term.log"),
                           prepare_timeout=kw.pop("prepare_timeout", 30), **kw)


def test_prepare_fails_a_mismatched_dataset_with_both_digests_and_records_a_match(
        minio_server, minio_bucket, pg_store, postgres_url, tmp_path):
    client = minio_server.client()
    for key, data in DATA.items():
        put(client, minio_bucket, f"mnist/{key}", data)
    uri = f"s3://{minio_bucket}/mnist"
    digest = S3.digest_entries([(k, len(v), sha(v)) for k, v in DATA.items()])
    wrong = "0" * 64
    cfg = s3_config(minio_server, None)

    code = run_prepare(prepare_cfg(tmp_path / "r1", postgres_url, dataset_uri=uri, dataset_sha256=wrong), cfg)
    assert code == rundir.PREPARE_DATASET_MISMATCH_EXIT
    message = (tmp_path / "term.log").read_text()
    assert digest in message and wrong in message and uri in message
    assert pg_store.get_run(RUN_ID).datasets == [
        DatasetRecord(uri, digest, pinned_digest=wrong, object_count=4, total_bytes=sum(map(len, DATA.values())))]

    code = run_prepare(prepare_cfg(tmp_path / "r2", postgres_url, dataset_uri=uri, dataset_sha256=digest), cfg)
    assert code == 0
    assert json.loads((tmp_path / "r2/dataset.json").read_text())["sha256"] == digest
    assert pg_store.get_run(RUN_ID).datasets[0].pinned_digest == digest
    # The operator records the dataset again (no digest) when it restarts: the digest stays.
    pg_store.record_dataset(RUN_ID, uri, None, digest)
    assert pg_store.get_run(RUN_ID).datasets[0].digest == digest

    assert run_prepare(prepare_cfg(tmp_path / "r3", postgres_url, dataset_uri=uri), None) == \
        rundir.PREPARE_DATASET_UNAVAILABLE_EXIT
    assert "no object store" in (tmp_path / "term.log").read_text()
    assert run_prepare(prepare_cfg(tmp_path / "r4", postgres_url, dataset_uri="s3://no-such-bucket/x"), cfg) == \
        rundir.PREPARE_DATASET_UNAVAILABLE_EXIT


def test_prepare_stages_the_very_dataset_it_digests(
        minio_server, minio_bucket, pg_store, postgres_url, tmp_path):
    client = minio_server.client()
    for key, data in DATA.items():
        put(client, minio_bucket, f"mnist/{key}", data)
    put(client, minio_bucket, "mnist-other/x", b"not in the dataset")
    uri = f"s3://{minio_bucket}/mnist"
    digest = S3.digest_entries([(k, len(v), sha(v)) for k, v in DATA.items()])
    cfg = s3_config(minio_server, None)
    run_dir = tmp_path / "run"
    stage = run_dir / "dataset"
    (stage / "old").mkdir(parents=True)
    (stage / "old/leftover.bin").write_bytes(b"from an earlier try")

    code = run_prepare(prepare_cfg(run_dir, postgres_url, dataset_uri=uri, dataset_sha256=digest,
                                   dataset_dir=stage), cfg)
    assert code == 0
    staged = {p.relative_to(stage).as_posix(): p.read_bytes() for p in stage.rglob("*") if p.is_file()}
    assert staged == DATA  # every object at its key, byte for byte, and nothing else
    assert json.loads((run_dir / "dataset.json").read_text())["sha256"] == digest
    assert S3.dataset_digest(client, uri).digest == digest  # staging does not change the digest

    # MinIO refuses such keys; other S3 stores keep them, and none may lead out of the directory
    # or make two objects one file.
    assert S3.staged_path(stage, "train/0.csv") == stage / "train" / "0.csv"
    for key in ("../../etc/passwd", "train/../../x", "/abs", "a//b", "./a", ""):
        with pytest.raises(S3.ObjectStoreError, match="no safe path"):
            S3.staged_path(stage, key)


def test_prepare_restores_the_latest_checkpoint_and_the_sdk_resumes_from_it(
        minio_server, minio_bucket, pg_store, postgres_url, tmp_path):
    first = tmp_path / "attempt1"
    write(first / "checkpoints/10/ckpt", b"step 10")
    saved = write(first / "checkpoints/20/ckpt/weights.bin", os.urandom(6000))
    write(first / "checkpoints/20/ckpt/meta.json", b'{"step": 20}')
    make_uploader(first, pg_store, s3_config(minio_server, minio_bucket), attempt=1).upload_available()

    second = tmp_path / "attempt2"
    assert run_prepare(prepare_cfg(second, postgres_url, attempt=2), s3_config(minio_server, minio_bucket)) == 0
    assert (second / "checkpoints/20/ckpt/weights.bin").read_bytes() == saved
    assert not (second / "checkpoints/10").exists()
    resume = json.loads((second / "resume.json").read_text())
    assert resume["step"] == 20 and resume["path"] == str(second / "checkpoints/20/ckpt")
    (r,) = pg_store.resumes(RUN_ID)
    assert (r.attempt, r.step, r.from_attempt) == (2, 20, 1)
    assert r.uri == f"s3://{minio_bucket}/ml/digits/{RUN_ID}/checkpoints/20/"

    # The restored files count as uploaded: the second attempt's sidecar does not send them again.
    up = make_uploader(second, pg_store, s3_config(minio_server, minio_bucket), attempt=2)
    assert up.upload_available(final=True) == 0 and up.stats.uploaded == 0

    trainer = """
import cairn
cairn.init()
r = cairn.resume_from
print(r.step, open(r.path + "/meta.json").read())
cairn.log({"loss": 0.5})
cairn.finish()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env.update(CAIRN_RUN_DIR=str(second), CAIRN_RUN_ID=RUN_ID)
    out = subprocess.run([sys.executable, "-c", trainer], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '20 {"step": 20}'
    metric = [json.loads(line) for line in (second / "records.jsonl").read_text().splitlines()
              if '"metric"' in line]
    assert metric[0]["step"] == 21  # cairn.log without a step continues after the checkpoint


def test_prepare_without_checkpoints_starts_fresh(minio_server, minio_bucket, pg_store, postgres_url, tmp_path):
    run_dir = tmp_path / "r"
    assert run_prepare(prepare_cfg(run_dir, postgres_url, attempt=3), s3_config(minio_server, minio_bucket)) == 0
    assert not (run_dir / "resume.json").exists() and pg_store.resumes(RUN_ID) == []


# -- the SDK -------------------------------------------------------------------------------------
def test_save_checkpoint_copies_into_a_step_directory_atomically(tmp_path):
    run = sdk.init(run_dir=str(tmp_path / "run"), capture_env=False)
    src = tmp_path / "model.pt"
    src.write_bytes(b"v1")
    for step in range(3):
        sdk.log({"loss": 1.0}, step=step)
    assert sdk.save_checkpoint(str(src)) == "checkpoints/2/model.pt"  # the last logged step
    src.write_bytes(b"v2")  # the caller overwrites its file: the checkpoint keeps v1
    assert (Path(run.dir) / "checkpoints/2/model.pt").read_bytes() == b"v1"
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "sub/w.bin").write_bytes(b"w")
    assert sdk.save_checkpoint(str(d), step=7) == "checkpoints/7/ckpt"
    assert sdk.save_checkpoint(str(src), step=7) == "checkpoints/7/model.pt"  # the same step again: replaced
    assert sorted(os.listdir(Path(run.dir) / "checkpoints")) == ["2", "7"]  # no hidden leftovers
    sdk.finish()
    paths = [json.loads(line)["path"] for line in (Path(run.dir) / "records.jsonl").read_text().splitlines()
             if '"artifact"' in line]
    assert paths == ["checkpoints/2/model.pt", "checkpoints/7/ckpt/sub/w.bin", "checkpoints/7/model.pt"]
    assert sdk.resume_from is None


def test_local_mode_records_checkpoints_as_local_files(sqlite_url, cairn_home, tmp_path):
    script = tmp_path / "t.py"
    script.write_text("import cairn, pathlib\ncairn.init()\np = pathlib.Path('m.bin'); p.write_bytes(b'abc')\n"
                      "cairn.log({'loss': 1}, step=4)\ncairn.save_checkpoint('m.bin')\ncairn.log_artifact('m.bin')\n")
    got = cli("--database-url", sqlite_url, "run", "--", sys.executable, str(script), cwd=tmp_path,
              env={"CAIRN_HOME": str(cairn_home)})
    assert got.returncode == 0, got.stderr
    store = TrackingStore(sqlite_url)
    (run,) = store.list_runs()
    arts = {a.path: a for a in store.list_artifacts(run.id)}
    assert set(arts) == {"checkpoints/4/m.bin", "artifacts/m.bin"}
    assert arts["checkpoints/4/m.bin"].uri.startswith("file://") and arts["checkpoints/4/m.bin"].step == 4
    assert arts["artifacts/m.bin"].sha256 == sha(b"abc") and arts["artifacts/m.bin"].uploaded_at is None
    out = tmp_path / "dl"
    got = cli("--database-url", sqlite_url, "runs", "download", run.id, "-d", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "checkpoints/4/m.bin").read_bytes() == b"abc"


# -- the sidecar, end to end in processes --------------------------------------------------------
TRAINER = """
import os, cairn
cairn.init()
for step in range(1, 31):
    cairn.log({"loss": 1.0 / step}, step=step)
    if step in (10, 20):
        with open("ckpt.bin", "wb") as f:
            f.write(b"weights at %d" % step)
        cairn.save_checkpoint("ckpt.bin", step=step)
with open("model.bin", "wb") as f:
    f.write(os.urandom(6 << 20))
cairn.log_artifact("model.bin")
os.makedirs(os.path.join(os.environ["CAIRN_RUN_DIR"], "artifacts", "plots"), exist_ok=True)
with open(os.path.join(os.environ["CAIRN_RUN_DIR"], "artifacts", "plots", "loss.svg"), "w") as f:
    f.write("<svg/>")  # written straight into artifacts/, no SDK call
cairn.finish()
"""


def test_sidecar_uploads_everything_when_the_trainer_exits(minio_server, minio_bucket, pg_store, postgres_url,
                                                           tmp_path):
    run_dir = tmp_path / "run"
    env = clean_env()
    s3_env = {"CAIRN_S3_ENDPOINT": minio_server.url, "CAIRN_S3_ACCESS_KEY": minio_server.access_key,
              "CAIRN_S3_SECRET_KEY": minio_server.secret_key, "CAIRN_S3_BUCKET": minio_bucket,
              "CAIRN_S3_PART_SIZE": str(5 * MiB)}
    sidecar = start_sidecar(run_dir, {**s3_env, "CAIRN_RUN_ID": RUN_ID, "CAIRN_ATTEMPT": "1",
                                      "CAIRN_DATABASE_URL": postgres_url, "CAIRN_NAMESPACE": "ml",
                                      "CAIRN_EXPERIMENT": "digits"})
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-c", TRAINER], cwd=work, check=True,
                   env={**env, "CAIRN_RUN_DIR": str(run_dir), "CAIRN_RUN_ID": RUN_ID})
    sidecar.send_signal(signal.SIGTERM)
    out, _ = sidecar.communicate(timeout=90)
    assert sidecar.returncode == 0, out

    expected = {"artifacts/model.bin": (work / "model.bin").read_bytes(),
                "artifacts/plots/loss.svg": b"<svg/>",
                "checkpoints/10/ckpt.bin": b"weights at 10", "checkpoints/20/ckpt.bin": b"weights at 20"}
    client = minio_server.client()
    prefix = f"ml/digits/{RUN_ID}/"
    assert keys(client, minio_bucket) == sorted(prefix + p for p in expected)
    detail = pg_store.get_run(RUN_ID)
    assert {a.path: a.sha256 for a in detail.artifacts} == {p: sha(d) for p, d in expected.items()}
    assert all(a.uri == f"s3://{minio_bucket}/{prefix}{a.path}" for a in detail.artifacts)
    assert detail.uploads == Uploads(complete=True, pending=0)
    assert detail.summary.metrics["loss"].count == 30 and detail.summary.status == "FINISHED"


# -- the pod and the operator's decision ---------------------------------------------------------
def trainingrun(**spec):  # noqa: ANN003, ANN201
    return from_manifest({"metadata": {"name": "mnist", "namespace": "ml", "uid": "uid-1"},
                          "spec": {"image": "trainer:1", "command": ["python3", "train.py"], **spec}})


def test_object_store_credentials_reach_only_cairns_containers():
    ds = {"uri": "s3://data/mnist", "sha256": "a" * 64}
    pod = podspec.build_pod(trainingrun(dataset=ds), podspec.PodSettings(objectstore_secret="s3"), 1, "r")
    prepare, sidecar = pod["spec"]["initContainers"]
    (trainer,) = pod["spec"]["containers"]
    assert prepare["name"] == "cairn-prepare" and prepare["command"] == ["cairn", "prepare"]
    assert "restartPolicy" not in prepare  # a plain init container: it ends before the sidecar starts
    for c in (prepare, sidecar):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"].startswith("CAIRN_S3_")}
        assert refs["CAIRN_S3_SECRET_KEY"] == {"name": "s3", "key": "secretKey", "optional": True}
        assert set(refs) == {"CAIRN_S3_ENDPOINT", "CAIRN_S3_ACCESS_KEY", "CAIRN_S3_SECRET_KEY", "CAIRN_S3_BUCKET",
                             "CAIRN_S3_REGION", "CAIRN_S3_CA_BUNDLE"}
    assert not any(e["name"].startswith("CAIRN_S3_") or "valueFrom" in e for e in trainer["env"])
    env = {e["name"]: e.get("value") for e in prepare["env"]}
    assert env["CAIRN_DATASET_URI"] == "s3://data/mnist" and env["CAIRN_DATASET_SHA256"] == "a" * 64
    assert prepare["volumeMounts"] == sidecar["volumeMounts"]  # the run directory and its own /tmp
    assert trainer["volumeMounts"][0] in prepare["volumeMounts"]
    assert prepare["securityContext"]["allowPrivilegeEscalation"] is False


def test_prepare_runs_only_with_a_dataset_or_on_a_retry():
    assert [c["name"] for c in podspec.build_pod(trainingrun(), podspec.PodSettings(), 1, "r")["spec"]
            ["initContainers"]] == ["cairn-sidecar"]
    retry_pod = podspec.build_pod(trainingrun(), podspec.PodSettings(), 2, "r")
    assert [c["name"] for c in retry_pod["spec"]["initContainers"]] == ["cairn-prepare", "cairn-sidecar"]
    off = podspec.build_pod(trainingrun(), podspec.PodSettings(objectstore_secret=""), 2, "r")
    assert not any(e["name"].startswith("CAIRN_S3_") for c in off["spec"]["initContainers"] for e in c["env"])


def prepare_failed_pod(code: int, message: str) -> dict:
    return {"metadata": {"name": "mnist-1"}, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "trainer", "state": {"waiting": {"reason": "PodInitializing"}}}], "initContainerStatuses": [
        {"name": "cairn-prepare", "state": {"terminated": {"exitCode": code, "reason": "Error", "message": message}}},
        {"name": "cairn-sidecar", "state": {"waiting": {"reason": "PodInitializing"}}}]}}


def test_a_dataset_mismatch_fails_the_run_at_once_with_both_digests():
    import datetime as dt

    message = "dataset s3://d/x has digest " + "b" * 64 + " but spec.dataset.sha256 pins " + "a" * 64
    pod = prepare_failed_pod(12, message)
    assert failures.classify_pod_failure(pod) == (failures.FailureKind.DATASET_MISMATCH, message)
    tr = from_manifest({"metadata": {"name": "mnist", "generation": 1},
                        "spec": {"image": "i", "command": ["c"], "backoffLimit": 5},
                        "status": {"phase": "Pending", "attempts": 1}})
    plan = reconcile.plan(tr, pod, None, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert plan.status["phase"] == "Failed" and plan.status["reason"] == "DatasetMismatch"
    assert "a" * 64 in plan.status["message"] and "b" * 64 in plan.status["message"]
    assert plan.create_attempt is None and plan.store["status"] == "FAILED"

    kind, why = failures.classify_pod_failure(prepare_failed_pod(13, "dataset s3://x/y: S3Error: NoSuchBucket"))
    assert kind == failures.FailureKind.DATASET_UNAVAILABLE and "NoSuchBucket" in why
    kind, why = failures.classify_pod_failure(prepare_failed_pod(1, "object store unavailable"))
    assert kind == failures.FailureKind.INFRASTRUCTURE and "prepare step failed" in why
    plan = reconcile.plan(tr, prepare_failed_pod(1, "x"), None, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert plan.status.get("retryAfter") and plan.status.get("phase") != "Failed"


# -- fault behaviour: the object store or the database away while training ---------------------
SLOW_TRAINER = """
import time, cairn
cairn.init()
started = time.monotonic()
for step in range(1, 401):
    cairn.log({"loss": 1.0 / step}, step=step)
    if step % 100 == 0:
        with open("state.bin", "wb") as f:
            f.write(b"%d" % step * 1000)
        cairn.save_checkpoint("state.bin", step=step)
    time.sleep(0.02)
print(time.monotonic() - started)
cairn.finish()
"""


def sidecar_and_trainer(run_id: str, run_dir: Path, database_url: str, s3_env: dict,
                        before_sigterm=lambda: None) -> tuple[float, str]:  # noqa: ANN001
    """A sidecar process and the trainer beside it, as in a pod; (training seconds, sidecar log)."""
    env = clean_env()
    sidecar = start_sidecar(run_dir, {**s3_env, "CAIRN_RUN_ID": run_id, "CAIRN_ATTEMPT": "1",
                                      "CAIRN_DATABASE_URL": database_url, "CAIRN_NAMESPACE": "ml",
                                      "CAIRN_EXPERIMENT": "digits"})
    work = run_dir.parent / f"{run_dir.name}-work"
    work.mkdir()
    trained = subprocess.run([sys.executable, "-c", SLOW_TRAINER], cwd=work, check=True, capture_output=True,
                             text=True, env={**env, "CAIRN_RUN_DIR": str(run_dir), "CAIRN_RUN_ID": run_id})
    before_sigterm()
    sidecar.send_signal(signal.SIGTERM)  # the trainer has exited: what the kubelet does next
    out, _ = sidecar.communicate(timeout=120)
    assert sidecar.returncode == 0, out
    return float(trained.stdout.strip()), out


def test_minio_down_while_training_costs_the_trainer_nothing_and_the_backlog_drains(
        minio_factory, pg_store, postgres_url, tmp_path):
    server = minio_factory()
    server.client().make_bucket("runs")
    s3_env = {"CAIRN_S3_ENDPOINT": server.url, "CAIRN_S3_ACCESS_KEY": server.access_key,
              "CAIRN_S3_SECRET_KEY": server.secret_key, "CAIRN_S3_BUCKET": "runs"}
    baseline, _ = sidecar_and_trainer(RUN_ID, tmp_path / "up", postgres_url, s3_env)

    other = "8d2f3e4a-5b6c-4d7e-9f0a-1b2c3d4e5f60"
    pg_store.create_run(experiment="digits", run_id=other, status="RUNNING")
    server.stop(kill=True)  # away for the whole of training, back just before the pod's end
    elapsed, out = sidecar_and_trainer(other, tmp_path / "down", postgres_url, s3_env, before_sigterm=server.start)
    assert "upload failed, retrying" in out, out
    assert elapsed < baseline * 1.5 + 2, (elapsed, baseline)  # training did not wait for MinIO
    client = server.client()
    prefix = f"ml/digits/{other}/"
    steps = (100, 200, 300, 400)
    assert keys(client, "runs", prefix) == [f"{prefix}checkpoints/{s}/state.bin" for s in steps]
    detail = pg_store.get_run(other)
    assert {a.path: a.sha256 for a in detail.artifacts} == {
        f"checkpoints/{s}/state.bin": sha(b"%d" % s * 1000) for s in steps}
    assert detail.uploads == Uploads(complete=True, pending=0)
    assert detail.summary.metrics["loss"].count == 400


def test_database_down_uploads_go_on_and_each_row_arrives_once_when_it_returns(minio_server, minio_bucket, tmp_path):
    from tests.support.servers import PostgresServer

    from cairn.store import db

    pg = PostgresServer().init().start()
    try:
        url = pg.create_database("uploads")
        db.upgrade(db.get_engine(url))
        store = TrackingStore(url)
        store.create_run(experiment="digits", run_id=RUN_ID, status="RUNNING")
        run_dir = tmp_path / "run"
        files = {f"artifacts/f{i}.bin": write(run_dir / f"artifacts/f{i}.bin", os.urandom(1000 + i))
                 for i in range(3)}
        pg.stop("immediate")
        up = make_uploader(run_dir, store, s3_config(minio_server, minio_bucket))
        for _ in range(2):
            with pytest.raises(Exception):
                up.upload_available()
        assert up.stats.uploaded == 3  # every file is in MinIO; only the rows wait for the database
        assert len(keys(minio_server.client(), minio_bucket)) == 3
        pg.start()
        assert up.upload_available() == 0
        assert up.stats.uploaded == 3  # nothing went twice
        arts = store.list_artifacts(RUN_ID)
        assert sorted(a.path for a in arts) == sorted(files)
        assert all(a.sha256 == sha(files[a.path]) for a in arts)
    finally:
        pg.destroy()


def test_links_and_fifos_the_trainer_makes_are_not_uploaded(minio_server, minio_bucket, pg_store, tmp_path):
    run_dir = tmp_path / "run"
    secret = write(tmp_path / "elsewhere" / "secret.txt", b"not the run's")
    model = write(run_dir / "artifacts/model.npz", os.urandom(1000))
    (run_dir / "artifacts/secret.txt").symlink_to(tmp_path / "elsewhere" / "secret.txt")
    (run_dir / "artifacts/linked-dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    os.mkfifo(run_dir / "artifacts/pipe")
    up = make_uploader(run_dir, pg_store, s3_config(minio_server, minio_bucket), attempt=1)
    up.notify("artifacts/linked-dir/secret.txt")  # as an artifact record naming it would
    started = time.monotonic()
    assert up.upload_available() == 0
    assert time.monotonic() - started < 10  # the FIFO did not block the pass
    assert [a.path for a in pg_store.list_artifacts(RUN_ID)] == ["artifacts/model.npz"]
    assert keys(minio_server.client(), minio_bucket) == [f"ml/digits/{RUN_ID}/artifacts/model.npz"]
    assert pg_store.list_artifacts(RUN_ID)[0].sha256 == sha(model) != sha(secret)


def test_download_refuses_paths_that_leave_the_destination(sqlite_url, tmp_path):
    from sqlalchemy import create_engine, text

    store = TrackingStore(sqlite_url)
    run = store.create_run(experiment="digits", status="FINISHED")
    source = write(tmp_path / "src" / "model.bin", b"weights")
    good = ArtifactInfo("artifacts/model.bin", source_uri := (tmp_path / "src" / "model.bin").as_uri(), len(source),
                        sha(source), "artifact")
    store.record_artifacts(run, [good])
    with pytest.raises(ValueError):  # the store keeps only normalised relative paths
        store.record_artifacts(run, [ArtifactInfo("artifacts/deep/../../../../pwned", source_uri, 7, sha(source),
                                                  "artifact")])
    # A row written before that rule (or by hand) is refused again by the download.
    with create_engine(sqlite_url).begin() as conn:
        conn.execute(text("INSERT INTO artifacts (run_id, path, uri, size, sha256, kind, created_at) "
                          "SELECT run_id, :p, uri, size, sha256, kind, created_at FROM artifacts"),
                     {"p": "artifacts/deep/../../../../pwned"})
    out = tmp_path / "a" / "b" / "out"
    got = cli("--database-url", sqlite_url, "runs", "download", run, "-d", str(out))
    assert got.returncode == 1 and "refused to write artifact" in got.stderr and "'..'" in got.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "a" / "pwned").exists()
    assert (out / "artifacts/model.bin").read_bytes() == b"weights"

    # A link already in the destination cannot lead a file elsewhere either.
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "artifacts").symlink_to(tmp_path / "elsewhere2", target_is_directory=True)
    (tmp_path / "elsewhere2").mkdir()
    got = cli("--database-url", sqlite_url, "runs", "download", run, "model.bin", "-d", str(linked))
    assert got.returncode == 1 and "outside" in got.stderr
    assert list((tmp_path / "elsewhere2").iterdir()) == []


def test_files_that_are_not_regular_are_counted_once_by_reason(minio_server, minio_bucket, pg_store, tmp_path):
    from cairn.agent.exporter import LiveState

    run_dir = tmp_path / "run"
    write(run_dir / "artifacts/model.npz", b"weights")
    write(tmp_path / "elsewhere" / "secret.txt", b"not the run's")
    (run_dir / "artifacts/secret.txt").symlink_to(tmp_path / "elsewhere" / "secret.txt")
    (run_dir / "artifacts/linked-dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    os.mkfifo(run_dir / "artifacts/pipe")
    (run_dir / "checkpoints").mkdir()
    os.mkfifo(run_dir / "checkpoints/pipe")
    up = make_uploader(run_dir, pg_store, s3_config(minio_server, minio_bucket), attempt=1)
    up.live = LiveState(frozenset())
    up.notify("artifacts/linked-dir/secret.txt")
    for _ in range(3):  # every pass sees them again; each is counted once
        assert up.upload_available() == 0
    assert dict(up.stats.skipped) == {"symlink": 3, "fifo": 2}
    assert dict(up.live.skipped_files) == {"symlink": 3, "fifo": 2}


def test_a_forged_upload_state_is_checked_against_the_store(minio_server, minio_bucket, pg_store, tmp_path):
    run_dir = tmp_path / "run"
    cfg = s3_config(minio_server, minio_bucket)
    kept = write(run_dir / "artifacts/kept.bin", os.urandom(300))
    first = make_uploader(run_dir, pg_store, cfg, attempt=1)
    assert first.upload_available() == 0
    # The trainer rewrites the state file: two files it never let the sidecar upload are "done",
    # one of them with an uri and sha256 of its choosing still to be recorded.
    hidden = write(run_dir / "artifacts/hidden.bin", os.urandom(200))
    forged = write(run_dir / "artifacts/forged.bin", os.urandom(100))
    state = json.loads((run_dir / ".cairn-uploads.json").read_text())
    for rel, recorded in (("artifacts/hidden.bin", True), ("artifacts/forged.bin", False)):
        st = os.stat(run_dir / rel)
        state[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": "0" * 64,
                      "uri": "s3://elsewhere/not-this-run", "attempt": 1, "recorded": recorded}
    (run_dir / ".cairn-uploads.json").write_text(json.dumps(state))
    restarted = make_uploader(run_dir, pg_store, cfg, attempt=1)
    assert restarted.upload_available() == 0
    assert restarted.stats.uploaded == 2  # kept.bin, confirmed by the store, is not sent again
    prefix = f"ml/digits/{RUN_ID}/artifacts"
    arts = {a.path: a for a in pg_store.list_artifacts(RUN_ID)}
    for rel, data in (("artifacts/kept.bin", kept), ("artifacts/hidden.bin", hidden),
                      ("artifacts/forged.bin", forged)):
        assert (arts[rel].sha256, arts[rel].uri) == (sha(data), f"s3://{minio_bucket}/ml/digits/{RUN_ID}/{rel}")
        assert read_object(minio_server.client(), minio_bucket, f"{prefix}/{rel.split('/')[1]}") == data


def test_a_state_file_that_is_not_an_object_or_too_large_is_ignored(tmp_path):
    from cairn.agent import uploader
    from cairn.agent.uploader import load_state

    (tmp_path / ".cairn-uploads.json").write_text('[1, 2]')
    assert load_state(tmp_path) == {}
    (tmp_path / ".cairn-uploads.json").write_text('{"a": {"size": 1}, "b": 3}')
    assert load_state(tmp_path) == {}
    entry = {"size": 1, "mtime_ns": 2, "ino": 3, "sha256": "0" * 64, "uri": "s3://b/k"}
    (tmp_path / ".cairn-uploads.json").write_text(json.dumps({"artifacts/a": entry}))
    assert list(load_state(tmp_path)) == ["artifacts/a"]
    padding = "x" * uploader.MAX_STATE_BYTES  # a trainer filling the sidecar's memory
    (tmp_path / ".cairn-uploads.json").write_text(json.dumps({"artifacts/a": entry, "padding": padding}))
    assert load_state(tmp_path) == {}
