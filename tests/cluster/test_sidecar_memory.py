"""The sidecar catches up on a wide backlog after a database outage inside a 128Mi memory limit.

Needs the ``cairn:dev`` image built from this checkout (the sidecar's batch bound by points).
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from cairn.api import from_manifest
from cairn.podspec import SIDECAR, TRAINER, PodSettings, build_pod
from cairn.store import TrackingStore, db
from tests.support.cluster import wait_until
from tests.support.cluster_operator import NODE_IP, database_secret, python_trainer, trainingrun

pytestmark = pytest.mark.cluster

SIDECAR_MEMORY = "128Mi"
STEPS, KEYS = 1400, 200  # about 8 MiB of records.jsonl: what used to be one batch
RELEASE = "/cairn/run/database-is-back"
TRAINER_CODE = f"""
import os, time, cairn
cairn.init(system_metrics=False)  # the points are counted exactly: no system/* samples beside them
for step in range({STEPS}):
    cairn.log({{f"layer_{{i:03d}}/grad_norm": step * 0.001 + i for i in range({KEYS})}}, step=step)
cairn.run.flush()
print("backlog written", flush=True)
while not os.path.exists({RELEASE!r}):
    time.sleep(0.2)
cairn.finish()
"""


def peak_rss_mib(kubectl, namespace: str, pod: str) -> float:  # noqa: ANN001
    """The sidecar process's peak resident memory (VmHWM of the container's first process)."""
    status = kubectl.run("-n", namespace, "exec", pod, "-c", SIDECAR, "--", "cat", "/proc/1/status").stdout
    (line,) = [x for x in status.splitlines() if x.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def test_sidecar_catches_up_on_a_wide_backlog_after_an_outage_within_128mi(
        kubectl, namespace, cairn_image, cluster_postgres):
    host_url = cluster_postgres.create_database(namespace.replace("-", "_"))
    db.upgrade(db.get_engine(host_url))
    database_secret(kubectl, namespace, host_url.replace("127.0.0.1", NODE_IP))
    run_id = str(uuid.uuid4())
    tr = from_manifest({**trainingrun("wide", python_trainer(TRAINER_CODE)),
                        "metadata": {"name": "wide", "namespace": namespace, "uid": run_id}})
    pod = build_pod(tr, PodSettings(sidecar_image=cairn_image, image_pull_policy="Never",
                                    sidecar_memory=SIDECAR_MEMORY, objectstore_secret=""), 1, run_id)
    del pod["metadata"]["ownerReferences"]  # no TrainingRun exists: the garbage collector would delete the pod

    cluster_postgres.stop("immediate")
    try:
        kubectl.apply(pod, namespace=namespace)
        wait_until(lambda: "backlog written" in kubectl.run("-n", namespace, "logs", pod["metadata"]["name"], "-c",
                                                             TRAINER, check=False).stdout,
                   300, "the trainer to write its backlog while the database is down", interval=1)
    finally:
        cluster_postgres.start()

    store = TrackingStore(host_url)
    wait_until(lambda: store.get_run(run_id).ingest.points == STEPS * KEYS if store.run_status(run_id) else False,
               300, "the backlog to be ingested", interval=1)
    peak = peak_rss_mib(kubectl, namespace, pod["metadata"]["name"])
    print(f"sidecar peak RSS catching up on {STEPS * KEYS:,} points: {peak:.1f} MiB (limit {SIDECAR_MEMORY})")
    kubectl.run("-n", namespace, "exec", pod["metadata"]["name"], "-c", TRAINER, "--", "touch", RELEASE)

    def ended():  # noqa: ANN202
        p = kubectl.get("pod", pod["metadata"]["name"], namespace)
        return p if p.get("status", {}).get("phase") in ("Succeeded", "Failed") else None
    done = wait_until(ended, 180, "the pod to end", interval=1)
    (sidecar,) = done["status"]["initContainerStatuses"]
    assert done["status"]["phase"] == "Succeeded"
    assert sidecar["restartCount"] == 0 and sidecar["state"]["terminated"]["exitCode"] == 0, sidecar
    assert peak < 128
    with db.get_engine(host_url).connect() as c:
        rows, series = c.execute(text("SELECT count(*), count(DISTINCT (key, step)) FROM metrics")).one()
    assert rows == series == STEPS * KEYS
    assert store.get_run(run_id).summary.status == "FINISHED"
