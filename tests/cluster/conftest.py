"""Fixtures for tests against the real local cluster started by hack/cluster.sh.

`kubeconfig` brings the cluster up once per session (or reuses a running one) and yields the
admin kubeconfig; `cairn_image` builds the project image and imports it into the node;
`kubectl` runs the freshly built kubectl against the cluster; `namespace` gives each test its
own namespace and deletes it afterwards. `cluster_postgres` (per module), `store_urls` and
`running_operator` give a test the operator on this host with a fresh database; `cluster` gives it
`tests.support.fake_kubelet.Cluster` on a Node object of its own that no kubelet runs. Every wait polls
with a deadline, never a bare sleep.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from cairn.api.types import GPU_PRODUCT_LABEL
from cairn.store import db
from tests.support.cluster import Kubectl, wait_until
from tests.support.cluster_operator import NODE_IP, OperatorProcess, database_secret, install_crd
from tests.support.fake_kubelet import GPU_PRODUCT, Cluster
from tests.support.servers import MinioServer, PostgresServer

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
UP_TIMEOUT_S = 60 * 60  # a cold machine compiles Kubernetes first
IMAGE_TIMEOUT_S = 30 * 60
IMAGE = "cairn:dev"


def _cluster_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(HACK / "cluster.sh"), "env"], check=True,
                         capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """Bring the cluster up (a no-op when it already runs) and yield the admin kubeconfig."""
    subprocess.run(["bash", str(HACK / "cluster.sh"), "up"], check=True, timeout=UP_TIMEOUT_S)
    yield Path(_cluster_env()["KUBECONFIG"])


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    bin_dir = subprocess.run(["bash", str(HACK / "build-k8s.sh"), "--print-bin-dir"], check=True,
                             capture_output=True, text=True).stdout.strip()
    return Kubectl(Path(bin_dir) / "kubectl", kubeconfig)


@pytest.fixture(scope="session")
def cairn_image(kubeconfig: Path) -> str:
    """Build the project image from this checkout and import it into the node's containerd."""
    if os.environ.get("CAIRN_SKIP_IMAGE_BUILD") != "1":
        subprocess.run(["bash", str(HACK / "build-image.sh")], check=True, timeout=IMAGE_TIMEOUT_S)
    return IMAGE


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace with its default ServiceAccount ready; deleted after the test."""
    name = f"cairn-test-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    wait_until(lambda: kubectl.run("-n", name, "get", "serviceaccount", "default",
                                   check=False).returncode == 0,
               60, f"the default ServiceAccount in {name}")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def cluster_postgres():
    server = PostgresServer(extra_listen=(NODE_IP,)).init().start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def cluster_minio(request):
    """A MinIO on the node's address, which pods reach, with the bucket the test module names as ``BUCKET``."""
    server = MinioServer(host=NODE_IP).start()
    server.client().make_bucket(request.module.BUCKET)
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


@pytest.fixture(scope="module")
def api_client(kubeconfig, kubectl) -> client.ApiClient:
    install_crd(kubectl)
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def test_node(api_client) -> Iterator[str]:
    """A Node object without a kubelet, carrying a GPU product label."""
    core = client.CoreV1Api(api_client)
    name = f"cairn-handlers-{uuid.uuid4().hex[:8]}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels={GPU_PRODUCT_LABEL: GPU_PRODUCT})))
    yield name
    core.delete_node(name)


@pytest.fixture
def cluster(api_client, namespace, test_node) -> Iterator[Cluster]:
    cluster = Cluster(api_client, namespace, test_node)
    yield cluster
    # No kubelet confirms a graceful deletion on the test's node: remove the pods at once.
    cluster.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
