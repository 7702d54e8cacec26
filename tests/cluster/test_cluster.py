"""The local cluster behaves like a real Kubernetes cluster with GPU nodes.

These are the guarantees the operator builds on: a Ready node that advertises
`nvidia.com/gpu`, GPU accounting done by the real scheduler, containers from the locally built
image, native sidecars, CEL validation of custom resources and RBAC for ServiceAccounts.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.cluster import Kubectl, wait_until

pytestmark = pytest.mark.cluster

GPU = "nvidia.com/gpu"
HACK = Path(__file__).resolve().parents[2] / "hack"
NODE_GPUS = 4


def _pod(name: str, image: str, command: list[str], gpus: int | None = None, **spec) -> dict:
    container: dict = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
    }
    if gpus is not None:
        container["resources"] = {"limits": {GPU: str(gpus)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 10,
                 "containers": [container], **spec},
    }


def _phase(kubectl: Kubectl, namespace: str, name: str) -> str:
    return kubectl.get("pod", name, namespace).get("status", {}).get("phase", "")


def _wait_for_phase(kubectl: Kubectl, namespace: str, name: str, phase: str, timeout: float = 180) -> dict:
    def reached() -> str | None:
        current = _phase(kubectl, namespace, name)
        if current == "Failed" and phase != "Failed":
            pod = kubectl.get("pod", name, namespace)
            logs = kubectl.run("-n", namespace, "logs", name, "--all-containers", check=False)
            pytest.fail(f"pod {name} failed: {json.dumps(pod['status'], indent=1)}\n{logs.stdout}")
        return current if current == phase else None

    wait_until(reached, timeout, f"pod {namespace}/{name} to reach {phase}")
    return kubectl.get("pod", name, namespace)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_node_is_ready_and_advertises_gpus(kubectl: Kubectl) -> None:
    nodes = json.loads(kubectl.run("get", "nodes", "-o", "json").stdout)["items"]
    real = [n for n in nodes if "kwok.x-k8s.io/node" not in n["metadata"].get("annotations", {})]
    assert len(real) == 1, [n["metadata"]["name"] for n in real]
    node = real[0]
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["allocatable"][GPU] == str(NODE_GPUS)
    assert node["status"]["capacity"][GPU] == str(NODE_GPUS)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == str(NODE_GPUS)
    # The node runs real containers: kubelet reports a container runtime.
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.36.")


def test_api_server_reports_the_built_version(kubectl: Kubectl) -> None:
    version = json.loads(kubectl.run("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.36.")
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]


def test_one_gpu_pod_runs_the_local_image_to_completion(kubectl: Kubectl, namespace: str,
                                                         cairn_image: str) -> None:
    script = (
        "import cairn, os, sys; "
        "print('cairn image ok', sys.version_info[:2], os.path.dirname(cairn.__file__))"
    )
    kubectl.apply(_pod("one-gpu", cairn_image, ["python3", "-c", script], gpus=1), namespace=namespace)

    pod = _wait_for_phase(kubectl, namespace, "one-gpu", "Succeeded")

    assert pod["spec"]["nodeName"]
    assert pod["spec"]["containers"][0]["resources"]["limits"][GPU] == "1"
    logs = kubectl.run("-n", namespace, "logs", "one-gpu").stdout
    assert "cairn image ok (3, 11) /opt/cairn/venv/lib/python3.11/site-packages/cairn" in logs


def test_pod_asking_for_more_gpus_than_exist_stays_pending(kubectl: Kubectl, namespace: str,
                                                          cairn_image: str) -> None:
    kubectl.apply(_pod("too-many-gpus", cairn_image, ["true"], gpus=NODE_GPUS + 1), namespace=namespace)

    def unschedulable() -> dict | None:
        pod = kubectl.get("pod", "too-many-gpus", namespace)
        for cond in pod.get("status", {}).get("conditions", []):
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return cond
        return None

    cond = wait_until(unschedulable, 60, "the scheduler to mark the pod Unschedulable")
    assert cond["status"] == "False"
    assert f"Insufficient {GPU}" in cond["message"]
    pod = kubectl.get("pod", "too-many-gpus", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


SIDECAR = """
import os, signal, sys, time
open('/shared/sidecar-started', 'w').close()
print('sidecar started', flush=True)
def stop(*_):
    after = os.path.exists('/shared/main-finished')
    print('sidecar stopping, main finished before: %s' % after, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.2)
"""

MAIN = """
import os, sys, time
if not os.path.exists('/shared/sidecar-started'):
    print('main started before the sidecar', flush=True)
    sys.exit(1)
print('main running with the sidecar up', flush=True)
time.sleep(1)
open('/shared/main-finished', 'w').close()
print('main done', flush=True)
"""


def test_native_sidecar_starts_first_and_stops_after_main(kubectl: Kubectl, namespace: str,
                                                          cairn_image: str) -> None:
    pod = _pod("with-sidecar", cairn_image, ["python3", "-c", MAIN],
               volumes=[{"name": "shared", "emptyDir": {}}])
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "shared", "mountPath": "/shared"}]
    pod["spec"]["initContainers"] = [{
        "name": "sidecar",
        "image": cairn_image,
        "imagePullPolicy": "Never",
        "restartPolicy": "Always",
        "command": ["python3", "-c", SIDECAR],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        # The main container starts only once this passes.
        "startupProbe": {"exec": {"command": ["test", "-e", "/shared/sidecar-started"]},
                         "periodSeconds": 1, "failureThreshold": 60},
    }]
    kubectl.apply(pod, namespace=namespace)

    # With restartPolicy Never the pod completes when main exits; kubelet then stops the sidecar.
    def sidecar_terminated() -> dict | None:
        status = kubectl.get("pod", "with-sidecar", namespace).get("status", {})
        if status.get("phase") == "Failed":
            pytest.fail(f"pod failed: {json.dumps(status, indent=1)}")
        sidecars = status.get("initContainerStatuses", [])
        if status.get("phase") == "Succeeded" and sidecars and "terminated" in sidecars[0]["state"]:
            return status
        return None

    status = wait_until(sidecar_terminated, 180, "the pod to succeed and its sidecar to stop")

    main = status["containerStatuses"][0]["state"]["terminated"]
    sidecar = status["initContainerStatuses"][0]["state"]["terminated"]
    assert main["exitCode"] == 0
    assert _ts(sidecar["startedAt"]) <= _ts(main["startedAt"])
    assert _ts(sidecar["finishedAt"]) >= _ts(main["finishedAt"])
    sidecar_logs = kubectl.run("-n", namespace, "logs", "with-sidecar", "-c", "sidecar").stdout
    assert "sidecar started" in sidecar_logs
    assert "sidecar stopping, main finished before: True" in sidecar_logs
    main_logs = kubectl.run("-n", namespace, "logs", "with-sidecar", "-c", "main").stdout
    assert "main running with the sidecar up" in main_logs


def test_crd_cel_rule_rejects_invalid_object_with_its_message(kubectl: Kubectl) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.cel.cairn.dev"
    message = "spec.minReplicas must not exceed spec.maxReplicas"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"ranges.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {"minReplicas": {"type": "integer"},
                                       "maxReplicas": {"type": "integer"}},
                        "x-kubernetes-validations": [
                            {"rule": "self.minReplicas <= self.maxReplicas", "message": message},
                        ],
                    }},
                }},
            }],
        },
    }
    kubectl.apply(crd)
    try:
        kubectl.run("wait", "--for=condition=Established", f"crd/ranges.{group}", "--timeout=60s")

        def obj(name: str, lo: int, hi: int) -> dict:
            return {"apiVersion": f"{group}/v1", "kind": "Range",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"minReplicas": lo, "maxReplicas": hi}}

        # Discovery can lag the Established condition by a moment; retry only that error.
        def apply_valid() -> bool:
            result = kubectl.apply(obj("valid", 1, 3), check=False)
            if result.returncode != 0 and "no matches for kind" not in result.stderr:
                pytest.fail(f"valid object rejected: {result.stderr}")
            return result.returncode == 0

        wait_until(apply_valid, 60, "kubectl to discover the new CRD")

        rejected = kubectl.apply(obj("invalid", 5, 2), check=False)
        assert rejected.returncode != 0
        assert message in rejected.stderr
        assert "Invalid value" in rejected.stderr
        missing = kubectl.run("-n", "default", "get", f"ranges.{group}", "invalid", check=False)
        assert missing.returncode != 0 and "NotFound" in missing.stderr
    finally:
        kubectl.run("delete", "crd", f"ranges.{group}", "--wait=false", check=False)


def test_rbac_denies_a_service_account_what_its_role_does_not_grant(kubectl: Kubectl,
                                                                    namespace: str) -> None:
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "pod-reader"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "reader-reads-pods"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]},
        namespace=namespace,
    )
    token = kubectl.run("-n", namespace, "create", "token", "reader", "--duration=10m").stdout.strip()
    admin = json.loads(kubectl.run("config", "view", "--raw", "-o", "json").stdout)
    cluster = admin["clusters"][0]["cluster"]

    # Authenticate as the ServiceAccount with its bound token only: no admin credentials.
    with tempfile.TemporaryDirectory() as tmp:
        sa_config = Path(tmp) / "kubeconfig"
        sa_config.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "reader", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "reader"}}],
            "current-context": "c",
        }))
        as_reader = Kubectl(kubectl.binary, sa_config)

        whoami = json.loads(as_reader.run("auth", "whoami", "-o", "json").stdout)
        assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
        assert as_reader.run("-n", namespace, "get", "pods").returncode == 0

        def forbidden(*args: str) -> subprocess.CompletedProcess[str]:
            result = as_reader.run("-n", namespace, *args, check=False)
            assert result.returncode != 0, f"{args} was allowed"
            assert "forbidden" in result.stderr.lower(), result.stderr
            return result

        denied = forbidden("get", "secrets")
        user = f"system:serviceaccount:{namespace}:reader"
        assert f'User "{user}" cannot list resource "secrets"' in denied.stderr
        forbidden("delete", "pod", "anything")
        forbidden("create", "configmap", "x", "--from-literal=a=b")
        assert as_reader.run("auth", "can-i", "list", "pods", "-n", "kube-system",
                             check=False).stdout.strip() == "no"


IN_CLUSTER_WHOAMI = """
import json, os, ssl, urllib.request
sa = '/var/run/secrets/kubernetes.io/serviceaccount'
host, port = os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']
req = urllib.request.Request(
    'https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews' % (host, port),
    data=json.dumps({'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}).encode(),
    headers={'Authorization': 'Bearer ' + open(sa + '/token').read(),
             'Content-Type': 'application/json'},
    method='POST')
ctx = ssl.create_default_context(cafile=sa + '/ca.crt')
review = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
print('in-cluster user:', review['status']['userInfo']['username'], 'via', host)
"""


def test_pod_reaches_the_api_server_through_the_kubernetes_service(kubectl: Kubectl, namespace: str,
                                                                   cairn_image: str) -> None:
    # What an in-cluster operator does: the service's ClusterIP (kube-proxy), the mounted
    # ServiceAccount token and the cluster CA.
    kubectl.apply(_pod("whoami", cairn_image, ["python3", "-c", IN_CLUSTER_WHOAMI]), namespace=namespace)

    _wait_for_phase(kubectl, namespace, "whoami", "Succeeded")

    service_ip = kubectl.get("service", "kubernetes", "default")["spec"]["clusterIP"]
    logs = kubectl.run("-n", namespace, "logs", "whoami").stdout
    assert f"in-cluster user: system:serviceaccount:{namespace}:default via {service_ip}" in logs


CLUSTER_DNS_LOOKUP = """
import socket, time
deadline = time.monotonic() + 30
while True:
    try:
        names = ['kubernetes.default.svc.cluster.local', 'kubernetes.default', 'probe']
        print('resolved', *[socket.gethostbyname(n) for n in names])
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
"""


def test_pods_resolve_service_names_through_cluster_dns(kubectl: Kubectl, namespace: str,
                                                         cairn_image: str) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe"},
                   "spec": {"ports": [{"port": 80}]}}, namespace=namespace)
    probe_ip = kubectl.get("service", "probe", namespace)["spec"]["clusterIP"]
    kubernetes_ip = kubectl.get("service", "kubernetes", "default")["spec"]["clusterIP"]

    kubectl.apply(_pod("lookup", cairn_image, ["python3", "-c", CLUSTER_DNS_LOOKUP]), namespace=namespace)

    _wait_for_phase(kubectl, namespace, "lookup", "Succeeded")
    logs = kubectl.run("-n", namespace, "logs", "lookup").stdout
    assert f"resolved {kubernetes_ip} {kubernetes_ip} {probe_ip}" in logs


def test_kwok_nodes_schedule_gpu_pods_without_running_them(kubectl: Kubectl, namespace: str) -> None:
    # Simulated nodes for scale tests: tainted, labelled type=kwok, never running a container.
    subprocess.run(["bash", str(HACK / "cluster.sh"), "kwok", "2"], check=True, timeout=30 * 60)
    try:
        nodes = json.loads(kubectl.run("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == ["kwok-node-0", "kwok-node-1"]
        taint = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
        for node in nodes:
            assert node["status"]["allocatable"][GPU] == "8"
            assert taint in node["spec"]["taints"]

        pod = _pod("on-kwok", "cairn:dev", ["python3", "-c", "print('never runs')"], gpus=6,
                   nodeSelector={"type": "kwok"},
                   tolerations=[{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}])
        kubectl.apply(pod, namespace=namespace)

        def running() -> dict | None:
            status = kubectl.get("pod", "on-kwok", namespace)
            return status if status.get("status", {}).get("phase") == "Running" else None

        status = wait_until(running, 60, "the simulated pod to be Running")
        assert status["spec"]["nodeName"].startswith("kwok-node-")
        assert status["status"]["podIP"].startswith("10.215.")
        # A second 6-GPU pod fits only on the other simulated node: GPU accounting is real.
        pod["metadata"]["name"] = "on-kwok-2"
        kubectl.apply(pod, namespace=namespace)
        wait_until(lambda: kubectl.get("pod", "on-kwok-2", namespace)["spec"].get("nodeName"), 60,
                   "the second pod to be scheduled")
        second = kubectl.get("pod", "on-kwok-2", namespace)["spec"]["nodeName"]
        assert second.startswith("kwok-node-") and second != status["spec"]["nodeName"]
    finally:
        kubectl.run("-n", namespace, "delete", "pod", "--all", "--wait=false", check=False)
        subprocess.run(["bash", str(HACK / "cluster.sh"), "kwok", "0"], check=True, timeout=120)
