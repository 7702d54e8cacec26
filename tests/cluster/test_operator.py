"""The operator on the real local cluster: TrainingRuns become tracked GPU pods, retried and recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from clusterlib import wait_until
from operatorlib import (NODE_IP, OperatorProcess, database_secret, install_crd, python_trainer, trainingrun,
                         wait_phase)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers import PostgresServer  # noqa: E402

from cairn.store import db  # noqa: E402
from cairn.store.store import TrackingStore  # noqa: E402

pytestmark = pytest.mark.cluster
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trainingrun.yaml"


@pytest.fixture(scope="module")
def cluster_postgres():
    server = PostgresServer(extra_listen=(NODE_IP,)).init().start()
    yield server
    server.destroy()


@pytest.fixture
def store_urls(cluster_postgres, namespace):
    """(URL for the operator on this host, URL for pods) of a fresh, migrated database."""
    host_url = cluster_postgres.create_database(namespace.replace("-", "_"))
    db.upgrade(db.get_engine(host_url))
    return host_url, host_url.replace("127.0.0.1", NODE_IP)


@pytest.fixture
def running_operator(kubeconfig, kubectl, cairn_image, namespace, store_urls, tmp_path):
    install_crd(kubectl)
    host_url, pod_url = store_urls
    database_secret(kubectl, namespace, pod_url)
    op = OperatorProcess(kubeconfig, namespace, host_url, tmp_path / "operator.log").start()
    yield op
    op.stop()
    print(op.log())


def test_sample_trainingrun_is_trained_and_tracked(kubectl, namespace, running_operator, store_urls):
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["params"]["epochs"] = 4
    kubectl.apply(manifest, namespace=namespace)
    seen = set()

    def finished():  # noqa: ANN202
        tr = kubectl.get("trainingrun", "digits", namespace)
        phase = (tr.get("status") or {}).get("phase")
        seen.add(phase)
        return tr if phase in ("Succeeded", "Failed") else None

    tr = wait_until(finished, 240, "the digits TrainingRun to finish", interval=0.5)
    status = tr["status"]
    assert status["phase"] == "Succeeded", (status, running_operator.log())
    assert {"Pending", "Running"} <= seen
    assert status["exitCode"] == 0 and status["attempts"] == 1
    assert status["nodeName"] == "cairn-node" and status["gpuProduct"] == "NVIDIA-H100-80GB-HBM3"
    assert status["imageDigest"].startswith("sha256:")

    pod = kubectl.get("pod", status["podName"], namespace)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["cairn-sidecar"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    states = {cs["name"]: cs["state"] for cs in pod["status"]["initContainerStatuses"] + pod["status"]["containerStatuses"]}
    assert states["trainer"]["terminated"]["exitCode"] == 0
    assert states["cairn-sidecar"]["terminated"]["exitCode"] == 0  # drained, then exited cleanly

    store = TrackingStore(store_urls[0])
    run = store.get_run(tr["metadata"]["uid"])
    assert run.summary.status == "FINISHED" and run.summary.exit_code == 0
    assert run.params["lr"] == 0.2 and run.params["epochs"] == 4
    assert run.cluster["node_name"] == "cairn-node" and run.cluster["gpu_product"] == "NVIDIA-H100-80GB-HBM3"
    assert run.cluster["image_digest"] == status["imageDigest"]
    assert run.environment["python_version"].startswith("3.11")
    assert run.summary.metrics["val_acc"].count == 4 and run.summary.metrics["val_acc"].value > 0.8
    assert run.summary.metrics["loss"].count == 4 * (1347 // 64)
    assert [a.path for a in run.artifacts] == ["artifacts/model.npz"]

    def shown():  # noqa: ANN202
        out = kubectl.run("-n", namespace, "get", "tr", "digits", "--no-headers").stdout.split()
        return out if len(out) >= 6 and out[3] != "<none>" else None
    name, phase, gpus, step, metric, value = wait_until(shown, 30, "step and metric in kubectl get tr")[:6]
    assert (phase, gpus, metric) == ("Succeeded", "1", "val_acc")
    assert int(step) == run.summary.metrics["loss"].step and float(value) == pytest.approx(
        run.summary.metrics["val_acc"].value, rel=1e-4)
