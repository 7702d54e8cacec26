"""Fixtures for tests against the real local cluster started by hack/cluster.sh.

`kubeconfig` brings the cluster up once per session (or reuses a running one) and yields the
admin kubeconfig; `cairn_image` builds the project image and imports it into the node;
`kubectl` runs the freshly built kubectl against the cluster; `namespace` gives each test its
own namespace and deletes it afterwards. Every wait polls with a deadline, never a bare sleep.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterlib import Kubectl, wait_until

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
