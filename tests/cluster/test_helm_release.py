"""The Helm chart on the real local cluster: install, train, RBAC, helm test, upgrade, uninstall.

One release per module, in its own namespace, with the locally built image (cairn:dev, never
pulled) and an external PostgreSQL started by the test on the node's address. The operator
watches only that namespace, so it never touches other tests' TrainingRuns. The tests run in
file order: each builds on the release the previous ones left.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from minio import Minio

from tests.support.cluster import Kubectl, wait_until
from tests.support.cluster_operator import NODE_IP, python_trainer, trainingrun, wait_phase
from tests.support.servers import PostgresServer, read_object

from cairn.store import TrackingStore, db  # noqa: E402
from cairn.store.entities import Uploads  # noqa: E402

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "cairn"
TRAINER = python_trainer("import cairn; cairn.init(); cairn.log({'loss': 1.0}, step=0); cairn.finish()")
# Writes a model file: with an object store it must end up there, checksummed.
MODEL_TRAINER = python_trainer(
    "import cairn; cairn.init(); cairn.log({'loss': 1.0}, step=0); "
    "open('/tmp/model.bin', 'wb').write(b'weights' * 1000); cairn.log_artifact('/tmp/model.bin'); cairn.finish()")
# Cluster-scoped objects of the CRD files: kept by `helm uninstall`, so a later release adopts them.
KEPT = tuple((doc["kind"].lower(), doc["metadata"]["name"])
             for path in sorted((REPO / "crds").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc)
TIMINGS: dict[str, float] = {}


@dataclass
class Release:
    name: str
    namespace: str
    helm: Path
    kubeconfig: Path
    values: Path
    host_url: str  # the test PostgreSQL as this host reaches it

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.helm), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args],
                                check=False, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
        return result

    @property
    def operator(self) -> str:
        return f"{self.name}-operator"

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-operator"


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    out = subprocess.run(["bash", str(REPO / "hack" / "build-helm.sh")], check=True, capture_output=True, text=True,
                         timeout=40 * 60)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def chart_postgres():
    server = PostgresServer(extra_listen=(NODE_IP,)).init().start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def chart_namespace(kubectl: Kubectl):
    name = f"cairn-chart-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    kubectl.run("label", "namespace", name, "cairn.dev/tenant=enabled")
    wait_until(lambda: kubectl.run("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
               60, f"the default ServiceAccount in {name}")
    yield name
    # Without an operator the TrainingRuns' finalizers would hold the namespace forever.
    names = kubectl.run("-n", name, "get", "trainingruns", "-o", "name", check=False).stdout.split()
    for tr in names:
        kubectl.run("-n", name, "patch", tr, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def only_this_tenant(namespace: str) -> dict:
    """The release's tenancy policy bound to its own namespace: the cluster is shared with other tests."""
    return {"admission": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}


def adopt_kept_objects(kubectl: Kubectl, release: str, namespace: str) -> None:
    """Hand the cluster's CRD and admission policy to this release, as `helm install` requires.

    They outlive every release (keep policy) and other tests apply them with kubectl, so they
    usually exist already; Helm adopts an object whose ownership annotations name the release.
    """
    for kind, name in KEPT:
        if kubectl.run("get", kind, name, check=False).returncode != 0:
            continue
        kubectl.run("annotate", "--overwrite", kind, name, f"meta.helm.sh/release-name={release}",
                    f"meta.helm.sh/release-namespace={namespace}")
        kubectl.run("label", "--overwrite", kind, name, "app.kubernetes.io/managed-by=Helm")


@pytest.fixture(scope="module")
def release(kubeconfig, kubectl, cairn_image, chart_namespace, chart_postgres, helm_bin, tmp_path_factory):
    ns = chart_namespace
    host_url = chart_postgres.create_database(ns.replace("-", "_"))  # empty: the chart's hook migrates it
    values = tmp_path_factory.mktemp("chart") / "values.json"
    values.write_text(json.dumps({
        "image": {"repository": "cairn", "tag": "dev", "pullPolicy": "Never"},
        "trainingPods": {"imagePullPolicy": "Never"},
        "externalDatabase": {"url": host_url.replace("127.0.0.1", NODE_IP)},
        "operator": {"watchNamespaces": [ns]},
        "tenancy": only_this_tenant(ns),
    }))
    rel = Release(f"cairn-{ns.rsplit('-', 1)[1]}", ns, helm_bin, kubeconfig, values, host_url)
    adopt_kept_objects(kubectl, rel.name, ns)
    t0 = time.monotonic()
    result = rel.run("install", rel.name, str(CHART), "-f", str(values), "--wait", "--timeout", "4m", check=False)
    if result.returncode != 0:
        why = diagnose(kubectl, ns)
        rel.run("uninstall", rel.name, "--wait", check=False)  # a failed release still owns cluster objects
        pytest.fail(f"helm install failed:\n{result.stderr}{result.stdout}\n{why}")
    TIMINGS["install"] = time.monotonic() - t0
    yield rel
    rel.run("uninstall", rel.name, "--wait", check=False)
    print(f"chart timings: {TIMINGS}")


def diagnose(kubectl: Kubectl, namespace: str) -> str:
    """What went wrong in the namespace: pods, recent events, the last log lines of each pod."""
    out = [kubectl.run("-n", namespace, "get", "pods,jobs", "-o", "wide", check=False).stdout,
           kubectl.run("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout[-3000:]]
    for pod in kubectl.run("-n", namespace, "get", "pods", "-o", "name", check=False).stdout.split():
        out.append(f"--- {pod}\n" + kubectl.run("-n", namespace, "logs", pod, "--all-containers", "--tail=30",
                                                  check=False).stdout[-3000:])
    return "\n".join(out)


def operator_pods(kubectl: Kubectl, rel: Release) -> list[dict]:
    out = kubectl.run("-n", rel.namespace, "get", "pods", "-l",
                      f"app.kubernetes.io/instance={rel.name},app.kubernetes.io/component=operator", "-o", "json")
    return json.loads(out.stdout)["items"]


def can_i(kubectl: Kubectl, rel: Release, verb: str, resource: str, namespace: str | None = None) -> bool:
    """``kubectl auth can-i`` as the operator's ServiceAccount; "pods/exec" names a subresource."""
    ns = ["-n", namespace] if namespace else []
    resource, _, sub = resource.partition("/")
    sub_args = [f"--subresource={sub}"] if sub else []  # kubectl reads "pods/x" as the pod named x
    result = kubectl.run("auth", "can-i", verb, resource, *sub_args, *ns, f"--as={rel.service_account}",
                         check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def operator_metrics(kubectl: Kubectl, rel: Release) -> str:
    """The operator's /metrics through the API server's service proxy."""
    path = f"/api/v1/namespaces/{rel.namespace}/services/{rel.name}-metrics:metrics/proxy/metrics"
    return kubectl.run("get", "--raw", path).stdout


def train(kubectl: Kubectl, rel: Release, name: str, trainer: list[str] = TRAINER) -> dict:
    kubectl.apply(trainingrun(name, trainer), namespace=rel.namespace)
    t0 = time.monotonic()
    tr = wait_phase(kubectl, rel.namespace, name, ("Succeeded", "Failed"), timeout=240)
    TIMINGS[f"train {name}"] = time.monotonic() - t0
    logs = kubectl.run("-n", rel.namespace, "logs", f"deployment/{rel.operator}", check=False).stdout
    assert tr["status"]["phase"] == "Succeeded", (tr["status"], logs[-6000:])
    # the chart's RBAC is enough: the operator was never refused anything
    assert "Forbidden" not in logs, [line for line in logs.splitlines() if "Forbidden" in line][:5]
    return tr


def test_operator_runs_in_cluster_with_the_charts_service_account(kubectl, release):
    dep = kubectl.get("deployment", release.operator, release.namespace)
    assert dep["status"].get("readyReplicas") == 1
    [pod] = operator_pods(kubectl, release)
    assert pod["spec"]["serviceAccountName"] == release.operator
    assert pod["status"]["phase"] == "Running"
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    c = pod["spec"]["containers"][0]
    assert c["image"] == "cairn:dev" and c["imagePullPolicy"] == "Never"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    # the pre-install hook migrated the empty database, then cleaned up after itself
    engine = db.get_engine(release.host_url)
    assert db.current_revision(engine) == db.head_revision()
    assert kubectl.run("-n", release.namespace, "get", "job,secret", f"{release.name}-migrate",
                       check=False).returncode != 0
    crd = kubectl.get("customresourcedefinition", "trainingruns.cairn.dev")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name


def test_trainingrun_succeeds_and_is_recorded_in_the_store(kubectl, release):
    tr = train(kubectl, release, "hello")
    status = tr["status"]
    assert status["attempts"] == 1 and status["exitCode"] == 0
    run = TrackingStore(release.host_url).get_run(tr["metadata"]["uid"])
    assert run.summary.status == "FINISHED" and run.summary.exit_code == 0
    assert run.summary.metrics["loss"].value == 1.0 and run.summary.metrics["loss"].step == 0
    # the credentials reach the sidecar only, by reference to the chart's Secret
    pod = kubectl.get("pod", status["podName"], release.namespace)
    sidecar = pod["spec"]["initContainers"][0]
    trainer = pod["spec"]["containers"][0]
    assert sidecar["image"] == "cairn:dev" and sidecar["imagePullPolicy"] == "Never"
    url_env = next(e for e in sidecar["env"] if e["name"] == "CAIRN_DATABASE_URL")
    assert url_env["valueFrom"]["secretKeyRef"] == {"name": "cairn-database", "key": "url"}
    assert not [e for e in trainer["env"] if "DATABASE" in e["name"]]
    secret = kubectl.get("secret", "cairn-database", release.namespace)
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name
    # a normal start: the sidecar's startup probe passed at once, the kubelet warned of nothing
    events = json.loads(kubectl.run("-n", release.namespace, "get", "events", "-o", "json",
                                    f"--field-selector=involvedObject.name={status['podName']}").stdout)["items"]
    assert any(e["reason"] == "Started" for e in events), [e["reason"] for e in events]
    assert not [e["message"] for e in events if e["type"] == "Warning" and e["reason"] == "Unhealthy"]
    # the operator counted it, as Prometheus would scrape it through the metrics Service
    metrics = wait_until(lambda: (m := operator_metrics(kubectl, release)) and
                         'cairn_trainingruns{phase="Succeeded"} 1.0' in m and m, 30, "the Succeeded gauge")
    assert "cairn_reconcile_duration_seconds_count" in metrics


def test_the_charts_tenancy_policy_refuses_a_run_that_reads_cairn_secrets(kubectl, release):
    doc = trainingrun("snoop", python_trainer("print(1)"),
                      env=[{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "cairn-database", "key": "url"}}}])
    r = kubectl.run("-n", release.namespace, "create", "--dry-run=server", "-f", "-", input=json.dumps(doc),
                    check=False)
    assert r.returncode != 0 and f"{release.name}-tenancy" in r.stderr, r.stderr
    assert "spec.env[0].valueFrom.secretKeyRef.name: cairn-database is a Secret Cairn manages" in r.stderr


def test_rbac_allows_exactly_what_the_operator_needs(kubectl, release):
    ns = release.namespace
    for verb in ("get", "list", "watch", "patch", "delete"):
        assert can_i(kubectl, release, verb, "trainingruns.cairn.dev", ns), verb
    assert can_i(kubectl, release, "patch", "trainingruns.cairn.dev/status", ns)
    assert can_i(kubectl, release, "create", "trainingruns.cairn.dev", ns)  # an Evaluation's runs of its suite
    for resource in ("models.cairn.dev/status", "evaluations.cairn.dev/status"):
        assert can_i(kubectl, release, "patch", resource, ns), resource
    for verb in ("create", "get", "list", "watch", "delete"):
        assert can_i(kubectl, release, verb, "pods", ns), verb
    assert can_i(kubectl, release, "create", "events", ns)
    assert can_i(kubectl, release, "get", "nodes")
    for verb in ("list", "watch"):  # Kopf's observers of CRDs and of the watched namespaces
        assert can_i(kubectl, release, verb, "customresourcedefinitions.apiextensions.k8s.io"), verb
        assert can_i(kubectl, release, verb, "namespaces"), verb
    denied = [("get", "secrets", ns), ("list", "secrets", "kube-system"), ("get", "secrets", "default"),
              ("get", "configmaps", ns), ("create", "deployments.apps", ns),
              ("update", "trainingruns.cairn.dev", ns),
              ("update", "trainingruns.cairn.dev/status", ns),
              ("patch", "pods", ns), ("patch", "pods/status", ns), ("create", "pods/exec", ns),
              ("delete", "nodes", None), ("list", "nodes", None), ("patch", "nodes", None),
              ("get", "namespaces", None), ("delete", "namespaces", None),
              ("get", "customresourcedefinitions.apiextensions.k8s.io", None),
              ("patch", "customresourcedefinitions.apiextensions.k8s.io", None),
              ("create", "rolebindings.rbac.authorization.k8s.io", ns), ("impersonate", "serviceaccounts", ns)]
    for verb, resource, namespace in denied:
        assert not can_i(kubectl, release, verb, resource, namespace), (verb, resource, namespace)


def test_server_is_ready_answers_through_its_service_and_may_only_ask_for_reviews(kubectl, release):
    server = f"{release.name}-server"
    dep = wait_until(lambda: (d := kubectl.get("deployment", server, release.namespace))["status"]
                     .get("readyReplicas") == 1 and d, 120, "the server to become Ready")
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == ["cairn", "server"]
    # Through the Service, by the API server's service proxy (as `kubectl port-forward` would reach it).
    health = kubectl.run("get", "--raw", f"/api/v1/namespaces/{release.namespace}/services/{server}:http/proxy"
                                         "/api/v1/healthz")
    assert json.loads(health.stdout) == {"status": "ok"}
    anonymous = kubectl.run("get", "--raw", f"/api/v1/namespaces/{release.namespace}/services/{server}:http/proxy"
                                            f"/api/v1/namespaces/{release.namespace}/runs", check=False)
    # The proxy forwards no credentials: the server's 401, as kubectl words it.
    assert anonymous.returncode != 0 and "the server has asked for the client to provide credentials" in anonymous.stderr
    account = f"--as=system:serviceaccount:{release.namespace}:{server}"
    for resource in ("tokenreviews.authentication.k8s.io", "subjectaccessreviews.authorization.k8s.io"):
        assert kubectl.run("auth", "can-i", "create", resource, account, check=False).stdout.strip() == "yes"
    for verb, resource in (("get", "secrets"), ("list", "trainingruns.cairn.dev"), ("list", "pods")):
        assert kubectl.run("auth", "can-i", verb, resource, "-n", release.namespace, account,
                           check=False).stdout.strip() == "no", (verb, resource)


def test_helm_test_finds_the_store_reachable_and_migrated(release):
    result = release.run("test", release.name, "--timeout", "3m")
    out = result.stdout + result.stderr
    assert "Phase:          Succeeded" in out, out
    assert f"schema {db.head_revision()}, needed {db.head_revision()}" in out, out  # the pod's log, printed by helm
    assert "/api/v1/healthz: {'status': 'ok'}" in out, out  # the server's test pod


def test_upgrade_to_namespaced_rbac_keeps_runs_and_data(kubectl, release):
    t0 = time.monotonic()
    release.run("upgrade", release.name, str(CHART), "-f", str(release.values), "--set", "rbac.clusterWide=false",
                "--wait", "--timeout", "5m")
    TIMINGS["upgrade"] = time.monotonic() - t0
    ns = release.namespace
    # a Role in the watched namespace replaced the ClusterRole; nothing outside the namespace now
    assert kubectl.run("get", "clusterrole", release.operator, check=False).returncode != 0
    assert kubectl.get("role", release.operator, ns)["rules"][0]["resources"] == ["trainingruns"]
    assert can_i(kubectl, release, "list", "trainingruns.cairn.dev", ns)
    assert not can_i(kubectl, release, "list", "trainingruns.cairn.dev", "default")
    assert not can_i(kubectl, release, "create", "pods", "default")
    assert can_i(kubectl, release, "get", "nodes")
    # the first run survived with its record; a new one trains under the namespaced Role
    before = kubectl.get("trainingrun", "hello", ns)
    assert before["status"]["phase"] == "Succeeded"
    store = TrackingStore(release.host_url)
    assert store.get_run(before["metadata"]["uid"]).summary.status == "FINISHED"
    after = train(kubectl, release, "hello-again")
    assert store.get_run(after["metadata"]["uid"]).summary.metrics["loss"].value == 1.0


def test_uninstall_leaves_no_operator_but_keeps_the_crd_runs_and_data(kubectl, release):
    t0 = time.monotonic()
    release.run("uninstall", release.name, "--wait", "--timeout", "3m")
    TIMINGS["uninstall"] = time.monotonic() - t0
    ns = release.namespace
    wait_until(lambda: not operator_pods(kubectl, release), 60, "the operator pods to go")
    assert kubectl.run("-n", ns, "get", "deployment", release.operator, check=False).returncode != 0
    assert kubectl.run("get", "clusterrole", f"{release.name}-cluster", check=False).returncode != 0
    for kind, name in KEPT:
        assert kubectl.run("get", kind, name, check=False).returncode == 0, (kind, name)
    store = TrackingStore(release.host_url)
    for name in ("hello", "hello-again"):
        tr = kubectl.get("trainingrun", name, ns)
        assert tr["status"]["phase"] == "Succeeded"
        assert store.get_run(tr["metadata"]["uid"]).summary.status == "FINISHED"


# -- the bundled PostgreSQL and MinIO ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def postgres_image(kubeconfig) -> str:
    """PostgreSQL from Debian packages as an image in the node (hack/build-postgres-image.sh)."""
    subprocess.run(["bash", str(REPO / "hack" / "build-postgres-image.sh")], check=True, timeout=30 * 60)
    return "localhost/cairn-postgres:15"


@pytest.fixture(scope="module")
def minio_image(kubeconfig) -> str:
    """The MinIO server built from its Go module, as an image in the node (hack/build-minio-image.sh)."""
    out = subprocess.run(["bash", str(REPO / "hack" / "build-minio-image.sh")], check=True, timeout=40 * 60,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def bundled_namespace(kubectl: Kubectl, helm_bin: Path, kubeconfig: Path):
    """A namespace, host-path PersistentVolumes bound in advance to the stores' claims, clean-up.

    The host directories are made by root, as an admin's `mkdir` makes them: not writable by the
    servers' users until the chart's volume-permissions init container chowns them."""
    name = f"cairn-chart-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    kubectl.run("label", "namespace", name, "cairn.dev/tenant=enabled")
    release = f"cairn-{name.rsplit('-', 1)[1]}"
    volumes = {}
    for store in ("postgresql", "minio"):
        data = Path("/var/tmp") / f"{name}-{store}"
        data.mkdir(mode=0o755)
        volumes[f"{name}-{store}"] = data
        kubectl.apply({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{name}-{store}"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": name,
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(data), "type": "Directory"},
                     "claimRef": {"namespace": name, "name": f"data-{release}-{store}-0"}},
        })
    yield name, release
    subprocess.run([str(helm_bin), "--kubeconfig", str(kubeconfig), "-n", name, "uninstall", release, "--wait"],
                   check=False, capture_output=True, timeout=300)
    for tr in kubectl.run("-n", name, "get", "trainingruns", "-o", "name", check=False).stdout.split():
        kubectl.run("-n", name, "patch", tr, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    kubectl.run("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)
    for pv, data in volumes.items():
        kubectl.run("delete", "pv", pv, "--wait=false", check=False)
        shutil.rmtree(data, ignore_errors=True)


def bundled_values(path: Path, namespace: str, postgres_image: str, minio_image: str, chown: bool) -> Path:
    """Values for the bundled PostgreSQL and MinIO on the fixture's volumes (chowned by the chart or not)."""
    repository, tag = postgres_image.rsplit(":", 1)
    minio_repository, minio_tag = minio_image.rsplit(":", 1)
    path.write_text(json.dumps({
        "image": {"tag": "dev", "pullPolicy": "Never"},
        "trainingPods": {"imagePullPolicy": "Never"},
        "operator": {"watchNamespaces": [namespace]},
        "tenancy": only_this_tenant(namespace),
        "rbac": {"clusterWide": False},
        "postgresql": {"enabled": True, "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                       "persistence": {"size": "1Gi", "storageClass": namespace},
                       "volumePermissions": {"enabled": chown}},
        "minio": {"enabled": True, "image": {"repository": minio_repository, "tag": minio_tag, "pullPolicy": "Never"},
                  "persistence": {"size": "1Gi", "storageClass": namespace},
                  "volumePermissions": {"enabled": chown}},
    }))
    return path


def test_bundled_store_on_a_volume_it_cannot_write_says_so_at_once(
        kubectl, cairn_image, postgres_image, minio_image, helm_bin, kubeconfig, bundled_namespace, tmp_path):
    ns, name = bundled_namespace
    values = bundled_values(tmp_path / "values.json", ns, postgres_image, minio_image, chown=False)
    rel = Release(name, ns, helm_bin, kubeconfig, values, host_url="")
    adopt_kept_objects(kubectl, name, ns)
    rel.run("install", name, str(CHART), "-f", str(values), "--timeout", "2m")  # no --wait: it would only time out

    def refusal(store: str) -> str | None:
        pod = kubectl.run("-n", ns, "get", "pod", f"{name}-{store}-0", "-o", "json", check=False)
        statuses = json.loads(pod.stdout)["status"].get("initContainerStatuses", []) if pod.returncode == 0 else []
        for status in statuses:
            if status["name"] == "check-volume":
                ended = status["state"].get("terminated") or status.get("lastState", {}).get("terminated") or {}
                return ended.get("message") if ended.get("exitCode") == 1 else None
        return None

    t0 = time.monotonic()
    for store, uid in (("postgresql", 999), ("minio", 1000)):
        message = wait_until(lambda: refusal(store), 90, f"{store}'s volume check to refuse")
        assert f"the {store} data volume, is not writable by uid {uid}: it is owned by uid 0 with mode 755" in message
        assert f"{store}.volumePermissions.enabled=true" in message
    TIMINGS["a bundled store's unwritable volume reported"] = time.monotonic() - t0
    logs = kubectl.run("-n", ns, "logs", f"{name}-postgresql-0", "-c", "check-volume").stdout
    assert "is not writable by uid 999" in logs  # what NOTES.txt tells the admin to run


def test_bundled_stores_install_train_upgrade_reinstall_keep_credentials_and_data(
        kubectl, cairn_image, postgres_image, minio_image, helm_bin, kubeconfig, bundled_namespace, tmp_path):
    ns, name = bundled_namespace
    # the host directories are root's: the chart's init container chowns them to the servers' users
    values = bundled_values(tmp_path / "values.json", ns, postgres_image, minio_image, chown=True)
    rel = Release(name, ns, helm_bin, kubeconfig, values, host_url="")
    adopt_kept_objects(kubectl, name, ns)
    t0 = time.monotonic()
    result = rel.run("install", name, str(CHART), "-f", str(values), "--wait", "--timeout", "4m", check=False)
    if result.returncode != 0:
        pytest.fail(f"helm install failed:\n{result.stderr}{result.stdout}\n{diagnose(kubectl, ns)}")
    TIMINGS["install with PostgreSQL and MinIO"] = time.monotonic() - t0

    def store_url() -> str:  # the in-cluster server, reached from this host at its pod address
        secret = kubectl.get("secret", f"{name}-postgresql", ns)["data"]
        password = base64.b64decode(secret["password"]).decode()
        ip = kubectl.get("pod", f"{name}-postgresql-0", ns)["status"]["podIP"]
        return f"postgresql://cairn:{password}@{ip}:5432/cairn"

    def store() -> TrackingStore:
        return TrackingStore(store_url())

    passwords = {"postgresql": kubectl.get("secret", f"{name}-postgresql", ns)["data"]["password"],
                 "minio": kubectl.get("secret", f"{name}-minio", ns)["data"]["rootPassword"]}
    first = train(kubectl, rel, "bundled", MODEL_TRAINER)
    detail = store().get_run(first["metadata"]["uid"])
    assert detail.summary.metrics["loss"].value == 1.0
    # the model went to the bundled MinIO (bucket made by the sidecar), checksummed in the store
    [model] = detail.artifacts
    expected = hashlib.sha256(b"weights" * 1000).hexdigest()
    assert model.uri == f"s3://cairn/{ns}/default/{first['metadata']['uid']}/artifacts/model.bin", model.uri
    assert model.sha256 == expected and detail.uploads == Uploads(complete=True, pending=0)
    minio = Minio(f"{kubectl.get('pod', f'{name}-minio-0', ns)['status']['podIP']}:9000", secure=False,
                  access_key="cairn", secret_key=base64.b64decode(passwords["minio"]).decode())
    assert hashlib.sha256(read_object(minio, "cairn", model.uri.removeprefix("s3://cairn/"))).hexdigest() == expected

    # the upgrade keeps the generated password (read back from the release's Secret) and the data
    t0 = time.monotonic()
    result = rel.run("upgrade", name, str(CHART), "-f", str(values), "--set", "operator.resources.limits.memory=600Mi",
                     "--wait", "--timeout", "4m", check=False)
    if result.returncode != 0:
        pytest.fail(f"helm upgrade failed:\n{result.stderr}{result.stdout}\n{diagnose(kubectl, ns)}")
    TIMINGS["upgrade with PostgreSQL and MinIO"] = time.monotonic() - t0
    assert kubectl.get("secret", f"{name}-postgresql", ns)["data"]["password"] == passwords["postgresql"]
    assert kubectl.get("secret", f"{name}-minio", ns)["data"]["rootPassword"] == passwords["minio"]
    [pod] = operator_pods(kubectl, rel)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "600Mi"
    second = train(kubectl, rel, "bundled-again")
    s = store()
    assert s.get_run(first["metadata"]["uid"]).summary.status == "FINISHED"
    assert s.get_run(second["metadata"]["uid"]).summary.status == "FINISHED"
    out = rel.run("test", name, "--timeout", "3m")
    assert "Phase:          Succeeded" in out.stdout, out.stdout + out.stderr
    assert f"minio http://{name}-minio.{ns}.svc:9000: HTTP 200" in out.stdout + out.stderr

    rel.run("uninstall", name, "--wait", "--timeout", "3m")
    wait_until(lambda: not operator_pods(kubectl, rel), 60, "the operator pods to go")
    for component in ("postgresql", "minio"):  # the data outlives the release, and so do its credentials
        assert kubectl.get("persistentvolumeclaim", f"data-{name}-{component}-0", ns)["status"]["phase"] == "Bound"
    assert kubectl.get("secret", f"{name}-postgresql", ns)["data"]["password"] == passwords["postgresql"]
    assert kubectl.get("secret", f"{name}-minio", ns)["data"]["rootPassword"] == passwords["minio"]
    assert kubectl.run("-n", ns, "get", "secret", f"{name}-store", check=False).returncode != 0

    # install again: the kept Secrets unlock the kept data, so the first run and its model are still there
    adopt_kept_objects(kubectl, name, ns)
    t0 = time.monotonic()
    result = rel.run("install", name, str(CHART), "-f", str(values), "--wait", "--timeout", "4m", check=False)
    if result.returncode != 0:
        pytest.fail(f"helm install after uninstall failed:\n{result.stderr}{result.stdout}\n{diagnose(kubectl, ns)}")
    TIMINGS["reinstall with kept PostgreSQL and MinIO"] = time.monotonic() - t0
    assert store().get_run(first["metadata"]["uid"]).summary.status == "FINISHED"
    minio_ip = kubectl.get("pod", f"{name}-minio-0", ns)["status"]["podIP"]
    download = tmp_path / "download"
    env = dict(os.environ, CAIRN_S3_ENDPOINT=f"http://{minio_ip}:9000", CAIRN_S3_ACCESS_KEY="cairn",
               CAIRN_S3_SECRET_KEY=base64.b64decode(passwords["minio"]).decode())
    fetched = subprocess.run([sys.executable, "-m", "cairn", "--database-url", store_url(), "runs", "download",
                              first["metadata"]["uid"], "-d", str(download)],
                             capture_output=True, text=True, env=env, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    assert "sha256 verified" in fetched.stderr
    assert hashlib.sha256((download / "artifacts" / "model.bin").read_bytes()).hexdigest() == expected
