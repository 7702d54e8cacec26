"""Artifacts, checkpoints and datasets on the local cluster, with a real MinIO and PostgreSQL.

MinIO listens on the node address so pods reach it; the operator's pods get it from the
``cairn-objectstore`` Secret.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys

import pytest

from cairn import objectstore as S3
from cairn.podspec import pod_name
from cairn.store import TrackingStore
from cairn.store.entities import DatasetRecord, Uploads
from tests.support.cluster import wait_until
from tests.support.cluster_operator import objectstore_secret, python_trainer, trainingrun, wait_phase
from tests.support.servers import read_object

pytestmark = pytest.mark.cluster
BUCKET = "cairn-runs"


@pytest.fixture
def objectstore(kubectl, namespace, cluster_minio):
    objectstore_secret(kubectl, namespace, cluster_minio, BUCKET)
    return cluster_minio


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_keys(client, prefix: str) -> list[str]:  # noqa: ANN001
    return sorted(o.object_name for o in client.list_objects(BUCKET, prefix=prefix, recursive=True))


CHECKPOINTING = """
import os, random, cairn
cairn.init()
random.seed(7)
for step in range(1, 21):
    cairn.log({"loss": 1.0 / step}, step=step)
    if step % 10 == 0:
        with open("/tmp/ckpt.bin", "wb") as f:
            f.write(b"checkpoint at %d " % step + bytes(random.getrandbits(8) for _ in range(4096)))
        cairn.save_checkpoint("/tmp/ckpt.bin", step=step)
with open("/tmp/model.bin", "wb") as f:
    f.write(os.urandom(7 << 20))
cairn.log_artifact("/tmp/model.bin")
cairn.finish()
"""


def test_a_run_keeps_its_model_and_two_checkpoints_in_minio(kubectl, namespace, running_operator, store_urls,
                                                            objectstore, tmp_path):
    kubectl.apply(trainingrun("ckpt", python_trainer(CHECKPOINTING), experiment="digits"), namespace=namespace)
    tr = wait_phase(kubectl, namespace, "ckpt", ("Succeeded", "Failed"), timeout=240)
    assert tr["status"]["phase"] == "Succeeded", (tr["status"], running_operator.log())
    uid = tr["metadata"]["uid"]

    store = TrackingStore(store_urls[0])
    detail = store.get_run(uid)
    prefix = f"{namespace}/digits/{uid}/"
    expected = ["artifacts/model.bin", "checkpoints/10/ckpt.bin", "checkpoints/20/ckpt.bin"]
    client = objectstore.client()
    assert object_keys(client, prefix) == [prefix + p for p in expected]
    assert [a.path for a in detail.artifacts] == expected
    for a in detail.artifacts:
        assert a.uri == f"s3://{BUCKET}/{prefix}{a.path}"
        data = read_object(client, BUCKET, prefix + a.path)
        assert sha(data) == a.sha256 and len(data) == a.size and a.attempt == 1
    assert {a.path: a.step for a in detail.artifacts if a.kind == "checkpoint"} == {
        "checkpoints/10/ckpt.bin": 10, "checkpoints/20/ckpt.bin": 20}
    assert detail.uploads == Uploads(complete=True, pending=0)
    assert detail.summary.metrics["loss"].count == 20

    # `cairn runs download` on this machine gets the same bytes back, verified.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
    env.update(CAIRN_S3_ENDPOINT=objectstore.url, CAIRN_S3_ACCESS_KEY=objectstore.access_key,
               CAIRN_S3_SECRET_KEY=objectstore.secret_key)
    out = tmp_path / "download"
    got = subprocess.run([sys.executable, "-m", "cairn", "--database-url", store_urls[0], "runs", "download",
                          uid[:8], "-d", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    for a in detail.artifacts:
        assert (out / a.path).read_bytes() == read_object(client, BUCKET, prefix + a.path)


DATASET = {"train/part-0.csv": b"x,y\n1,2\n", "train/part-1.csv": b"x,y\n3,4\n", "meta.json": b'{"rows": 2}'}
# Reads the staged copy and checks it is the data whose digest was pinned (same formula).
STAGED_TRAINER = """
import hashlib, os
import cairn
cairn.init()
root, h, files = cairn.dataset_dir, hashlib.sha256(), []
for d, _, names in os.walk(root):
    files += [os.path.relpath(os.path.join(d, n), root) for n in names]
for rel in sorted(files, key=str.encode):
    data = open(os.path.join(root, rel), "rb").read()
    h.update(b"%s\\0%d\\0%s\\n" % (rel.encode(), len(data), hashlib.sha256(data).hexdigest().encode()))
assert h.hexdigest() == cairn.config.digest, (root, files)
cairn.log({"files": len(files)}, step=0)
cairn.finish()
"""


def test_a_pinned_dataset_mismatch_fails_before_the_trainer_starts_and_a_match_trains_on_its_staged_copy(
        kubectl, namespace, running_operator, store_urls, objectstore):
    client = objectstore.client()
    for key, data in DATASET.items():
        client.put_object(BUCKET, f"datasets/{namespace}/{key}", io.BytesIO(data), len(data))
    uri = f"s3://{BUCKET}/datasets/{namespace}"
    digest = S3.digest_entries([(k, len(v), sha(v)) for k, v in DATASET.items()])
    stale = sha(b"last month's data")
    trainer = python_trainer("import cairn; cairn.init(); cairn.log({'loss': 1.0}, step=0); cairn.finish()")
    kubectl.apply(trainingrun("pinned-wrong", trainer, dataset={"uri": uri, "sha256": stale}, backoffLimit=3),
                  trainingrun("pinned-right", python_trainer(STAGED_TRAINER), params={"digest": digest},
                              dataset={"uri": uri, "sha256": digest, "stage": True}),
                  namespace=namespace)

    tr = wait_phase(kubectl, namespace, "pinned-wrong", ("Failed", "Succeeded"), timeout=180)
    status = tr["status"]
    assert status["phase"] == "Failed" and status["reason"] == "DatasetMismatch", status
    assert digest in status["message"] and stale in status["message"] and uri in status["message"]
    assert status["attempts"] == 1  # not retried, whatever backoffLimit says
    pod = kubectl.get("pod", pod_name("pinned-wrong", tr["metadata"]["uid"], 1), namespace)
    (trainer_status,) = pod["status"]["containerStatuses"]
    assert "terminated" not in trainer_status["state"] and "running" not in trainer_status["state"]
    assert not trainer_status.get("lastState", {}).get("terminated")  # the trainer never ran
    store = TrackingStore(store_urls[0])
    wrong = store.get_run(tr["metadata"]["uid"])
    assert wrong.datasets == [DatasetRecord(uri, digest, pinned_digest=stale, object_count=3,
                                            total_bytes=sum(map(len, DATASET.values())))]
    assert wrong.summary.status == "FAILED" and "DatasetMismatch" in wrong.cluster.reason

    ok = wait_phase(kubectl, namespace, "pinned-right", ("Failed", "Succeeded"), timeout=180)
    assert ok["status"]["phase"] == "Succeeded", ok["status"]
    right = store.get_run(ok["metadata"]["uid"])
    assert right.datasets[0].digest == digest == right.datasets[0].pinned_digest
    # staged: the trainer found every object in its pod, byte for byte, under cairn.dataset_dir
    assert right.summary.metrics["files"].value == len(DATASET)


RESUMING = """
import cairn
cairn.init()
resume = cairn.resume_from
start = 1
if resume is not None:
    with open(resume.path, "rb") as f:
        saved = f.read()
    assert saved == b"state at %d" % resume.step, saved
    cairn.log({"resumed_from": resume.step}, step=resume.step + 1)
    start = resume.step + 1
for step in range(start, 31):
    cairn.log({"loss": 1.0 / step}, step=step)
    if step % 10 == 0 and step < 30:
        with open("/tmp/state.bin", "wb") as f:
            f.write(b"state at %d" % step)
        cairn.save_checkpoint("/tmp/state.bin", step=step)
    if step == 20 and resume is None:
        cairn.run.flush()
        # Killed after its second checkpoint: by the kernel, for memory (the trainer is PID 1 of its
        # container, so it cannot SIGKILL itself).
        hog = bytearray(1 << 30)
cairn.finish()
"""


def test_a_run_killed_after_its_second_checkpoint_resumes_from_it(kubectl, namespace, running_operator, store_urls,
                                                                  objectstore):
    kubectl.apply(trainingrun("resume", python_trainer(RESUMING), backoffLimit=1, resources={"memory": "128Mi"}),
                  namespace=namespace)
    tr = wait_phase(kubectl, namespace, "resume", ("Succeeded", "Failed"), timeout=300)
    status = tr["status"]
    assert status["phase"] == "Succeeded", (status, running_operator.log())
    assert status["attempts"] == 2 and status["failures"] == 1
    uid = tr["metadata"]["uid"]
    first = kubectl.get("pod", pod_name("resume", uid, 1), namespace)["status"]["containerStatuses"][0]["state"]["terminated"]
    assert first["reason"] == "OOMKilled"

    store = TrackingStore(store_urls[0])
    detail = store.get_run(uid)
    assert [(r.attempt, r.step, r.from_attempt) for r in detail.resumes] == [(2, 20, 1)]
    assert detail.summary.metrics["resumed_from"].value == 20
    loss_steps = [p.step for p in store.metric_history(uid, "loss")]
    assert loss_steps == list(range(1, 31))  # 1-20 from attempt 1, 21-30 from attempt 2: nothing twice
    assert {a.path: a.attempt for a in detail.artifacts} == {"checkpoints/10/state.bin": 1,
                                                              "checkpoints/20/state.bin": 1}
    assert detail.uploads == Uploads(complete=True, pending=0)

    def pods_done():  # noqa: ANN202
        out = kubectl.run("-n", namespace, "get", "pods", "-l", "cairn.dev/trainingrun=resume", "-o", "name").stdout
        return sorted(out.split()) == sorted(f"pod/{pod_name('resume', uid, attempt)}" for attempt in (1, 2))
    wait_until(pods_done, 30, "both attempts' pods")
    second = kubectl.get("pod", pod_name("resume", uid, 2), namespace)
    assert [c["name"] for c in second["spec"]["initContainers"]] == ["cairn-prepare", "cairn-sidecar"]


EVALUATING = """
import cairn
cairn.init()
resume = cairn.resume_from
start = 0 if resume is None else int(open(resume.path).read())
for i in range(start, 60):
    cairn.log_example(f"ex-{i:02d}", {"correct": float(i % 3 != 0), "resumed": float(resume is not None)},
                      slices=[f"shard:{i % 4}"])
    if i == 39:
        with open("/tmp/next.txt", "w") as f:
            f.write("40")
        cairn.save_checkpoint("/tmp/next.txt", step=i)
    if i == 49 and resume is None:
        cairn.run.flush()
        hog = bytearray(1 << 30)  # killed by the kernel after logging 40-49, which the next attempt logs again
cairn.finish()
"""


def test_an_eval_pod_killed_mid_way_resumes_and_each_example_is_stored_once(kubectl, namespace, running_operator,
                                                                            store_urls, objectstore):
    kubectl.apply(trainingrun("evaluate", python_trainer(EVALUATING), backoffLimit=1, resources={"memory": "128Mi"}),
                  namespace=namespace)
    tr = wait_phase(kubectl, namespace, "evaluate", ("Succeeded", "Failed"), timeout=300)
    assert tr["status"]["phase"] == "Succeeded", (tr["status"], running_operator.log())
    assert tr["status"]["attempts"] == 2
    examples = TrackingStore(store_urls[0]).eval_examples(tr["metadata"]["uid"])
    assert [e.id for e in examples] == [f"ex-{i:02d}" for i in range(60)]
    # 0-39 from the first attempt; 40-49, logged by both, and 50-59 from the resumed one.
    assert [e.metrics["resumed"] for e in examples] == [0.0] * 40 + [1.0] * 20
    assert all(e.metrics["correct"] == float(int(e.id[3:]) % 3 != 0) for e in examples)
    assert all(e.slices == [f"shard:{int(e.id[3:]) % 4}"] for e in examples)
