"""Zero egress, measured on the node: no packet from a pod leaves for an address outside the cluster.

The local cluster's node is this machine (hack/cluster.sh): pods sit on bridge cairn0 in POD_CIDR,
services are virtual addresses in SERVICE_CIDR, the stores listen on the node's address. A chain the
test creates in the mangle table's PREROUTING (before routing, so a packet to an address with no
route is counted too, and before service addresses are translated) counts every packet from the pod
range whose destination is none of: the pod, service or kwok ranges, or an address of the node.

The counter is shown able to fail: a pod that talks to the test's own "outside" host (a network
namespace behind a veth, at an address outside every range, never a real outside address) is
counted. Then a whole TrainingRun (a staged dataset, metrics exported live and scraped, checkpoints,
an artifact) runs with the counter at zero.

Needs root (iptables, ip netns) and the image with the code under test (the lead rebuilds it).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from cairn import objectstore as S3
from cairn.podspec import METRICS_PORT
from tests.support.cluster import wait_until
from tests.support.cluster_operator import objectstore_secret, python_trainer, trainingrun, wait_phase

pytestmark = pytest.mark.cluster

# hack/cluster.sh's ranges.
POD_CIDR = "10.213.0.0/24"
CLUSTER_RANGES = (POD_CIDR, "10.214.0.0/24", "10.215.0.0/16")
# TEST-NET-3 (RFC 5737): documentation addresses, routed here to the test's own namespace only.
OUTSIDE_NODE_SIDE, OUTSIDE_HOST = "203.0.113.1", "203.0.113.2"
OUTSIDE_PORT = 8080
BUCKET = "cairn-egress"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


class EgressCounter:
    """A mangle/PREROUTING chain counting packets from pods to addresses outside the cluster and node."""

    def __init__(self) -> None:
        self.chain = f"CAIRN-EGRESS-{uuid.uuid4().hex[:6].upper()}"

    def install(self) -> "EgressCounter":
        sh("iptables", "-t", "mangle", "-N", self.chain)
        for cidr in CLUSTER_RANGES:
            sh("iptables", "-t", "mangle", "-A", self.chain, "-d", cidr, "-j", "RETURN")
        sh("iptables", "-t", "mangle", "-A", self.chain, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN")
        sh("iptables", "-t", "mangle", "-A", self.chain, "-m", "comment", "--comment", "outside", "-j", "RETURN")
        sh("iptables", "-t", "mangle", "-I", "PREROUTING", "1", "-s", POD_CIDR, "-j", self.chain)
        return self

    def remove(self) -> None:
        sh("iptables", "-t", "mangle", "-D", "PREROUTING", "-s", POD_CIDR, "-j", self.chain, check=False)
        sh("iptables", "-t", "mangle", "-F", self.chain, check=False)
        sh("iptables", "-t", "mangle", "-X", self.chain, check=False)

    def packets(self) -> int:
        out = sh("iptables", "-t", "mangle", "-L", self.chain, "-v", "-x", "-n").stdout
        (line,) = [line for line in out.splitlines() if "/* outside */" in line]
        return int(line.split()[0])

    def zero(self) -> None:
        sh("iptables", "-t", "mangle", "-Z", self.chain)


@pytest.fixture(scope="module")
def egress() -> Iterator[EgressCounter]:
    counter = EgressCounter()
    try:
        yield counter.install()
    finally:
        counter.remove()


@pytest.fixture(scope="module")
def outside_host(tmp_path_factory) -> Iterator[str]:
    """A network namespace at OUTSIDE_HOST, routed from the node, serving HTTP on OUTSIDE_PORT."""
    tag = uuid.uuid4().hex[:6]
    netns, node_end, far_end = f"cairn-out-{tag}", f"co{tag}", f"ci{tag}"
    server = None
    try:
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", node_end, "type", "veth", "peer", "name", far_end)
        sh("ip", "link", "set", far_end, "netns", netns)
        sh("ip", "addr", "add", f"{OUTSIDE_NODE_SIDE}/30", "dev", node_end)
        sh("ip", "link", "set", node_end, "up")
        for cmd in (["addr", "add", f"{OUTSIDE_HOST}/30", "dev", far_end], ["link", "set", far_end, "up"],
                    ["link", "set", "lo", "up"], ["route", "add", "default", "via", OUTSIDE_NODE_SIDE]):
            sh("ip", "netns", "exec", netns, "ip", *cmd)
        root = tmp_path_factory.mktemp("outside")
        (root / "index.html").write_text("outside\n")
        server = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-m", "http.server", str(OUTSIDE_PORT),
                                   "--bind", OUTSIDE_HOST, "--directory", str(root)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: sh("ip", "netns", "exec", netns, "python3", "-c",
                              f"import socket; socket.create_connection(('{OUTSIDE_HOST}', {OUTSIDE_PORT}), 1)",
                              check=False).returncode == 0, 30, "the outside host's HTTP server")
        yield OUTSIDE_HOST
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        sh("ip", "link", "del", node_end, check=False)
        sh("ip", "netns", "del", netns, check=False)


REACH_OUTSIDE = f"""
import urllib.request
print(urllib.request.urlopen("http://{OUTSIDE_HOST}:{OUTSIDE_PORT}/", timeout=10).read().decode().strip())
"""


def test_the_counter_sees_a_pod_that_reaches_the_outside_host(kubectl, namespace, cairn_image, egress, outside_host):
    """The measure can fail: a plain pod (no Cairn policy in its namespace) that talks outside is counted."""
    egress.zero()
    kubectl.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "leak"},
                   "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                            "containers": [{"name": "leak", "image": cairn_image, "imagePullPolicy": "Never",
                                            "command": python_trainer(REACH_OUTSIDE)}]}}, namespace=namespace)
    wait_until(lambda: kubectl.get("pod", "leak", namespace)["status"].get("phase") in ("Succeeded", "Failed"),
               120, "the pod that reaches outside")
    assert kubectl.run("-n", namespace, "logs", "leak").stdout.strip() == "outside"
    assert egress.packets() > 0


STAGED_RUN = """
import os, time, cairn
cairn.init()
files = sorted(os.listdir(os.path.join(cairn.dataset_dir, "train")))
for step in range(1, 31):
    cairn.log({"loss": 1.0 / step, "files": len(files)}, step=step)
    if step % 15 == 0:
        with open("/tmp/ckpt.bin", "wb") as f:
            f.write(b"checkpoint %d" % step * 1000)
        cairn.save_checkpoint("/tmp/ckpt.bin", step=step)
    time.sleep(0.5)
with open("/tmp/model.bin", "wb") as f:
    f.write(os.urandom(1 << 20))
cairn.log_artifact("/tmp/model.bin")
cairn.finish()
"""
DATASET = {"train/part-0.csv": b"x,y\n1,2\n", "train/part-1.csv": b"x,y\n3,4\n"}


def live_loss(pod_ip: str) -> float | None:
    """The loss on the sidecar's metrics port, read the way a scraper on the node does; None before it serves."""
    try:
        with urllib.request.urlopen(f"http://{pod_ip}:{METRICS_PORT}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    found = re.search(r'cairn_run_metric\{[^}]*key="loss"[^}]*\} (\S+)', text)
    return float(found.group(1)) if found else None


def test_a_whole_run_sends_zero_packets_outside_the_cluster(kubectl, namespace, running_operator, store_urls,
                                                           cluster_minio, egress):
    objectstore_secret(kubectl, namespace, cluster_minio, BUCKET)
    client = cluster_minio.client()
    for key, data in DATASET.items():
        client.put_object(BUCKET, f"{namespace}/datasets/{key}", io.BytesIO(data), len(data))
    uri = f"s3://{BUCKET}/{namespace}/datasets"
    digest = S3.digest_entries([(k, len(v), hashlib.sha256(v).hexdigest()) for k, v in DATASET.items()])
    egress.zero()
    kubectl.apply(trainingrun("sealed", python_trainer(STAGED_RUN), experiment="airgap",
                              dataset={"uri": uri, "sha256": digest, "stage": True},
                              tracking={"headlineMetric": "loss", "exportKeys": ["loss"]}), namespace=namespace)
    tr = wait_phase(kubectl, namespace, "sealed", ("Running", "Succeeded", "Failed"), timeout=180)
    assert tr["status"]["phase"] == "Running", (tr["status"], running_operator.log())
    pod_ip = kubectl.get("pod", tr["status"]["podName"], namespace)["status"]["podIP"]
    loss = wait_until(lambda: live_loss(pod_ip), 60, "the live loss on the sidecar's metrics port")
    assert 0 < loss <= 1.0
    tr = wait_phase(kubectl, namespace, "sealed", ("Succeeded", "Failed"), timeout=240)
    assert tr["status"]["phase"] == "Succeeded", (tr["status"], running_operator.log())
    prefix = f"{namespace}/airgap/{tr['metadata']['uid']}/"
    objects = client.list_objects(BUCKET, prefix=prefix, recursive=True)
    keys = sorted(o.object_name.removeprefix(prefix) for o in objects)
    assert keys == ["artifacts/model.bin", "checkpoints/15/ckpt.bin", "checkpoints/30/ckpt.bin"]
    assert egress.packets() == 0
    print(json.dumps({"egress_packets": egress.packets(), "objects": keys}))
