"""The cluster demo, installed the way a site installs Cairn: with its Helm chart.

    bash examples/demo-cluster.sh           # installs what is missing, then runs this
    bash examples/demo-cluster.sh --down    # removes the release, the demo namespaces and their data

Brings up the local Kubernetes cluster (building it on first use), builds the images, installs the
chart into ``cairn-system`` with its bundled PostgreSQL and MinIO, applies examples/trainingrun.yaml
in the ``cairn-demo`` namespace, follows it to the end and prints the record: the tracked run, its
artifacts downloaded from the object store and checked against their sha256, and the live metric as
a Prometheus scraped it. Running it again upgrades the release in place and trains again.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "cairn"
RELEASE, SYSTEM, TENANT = "cairn", "cairn-system", "cairn-demo"
RUN = "digits"
DATA = Path("/var/lib/cairn-demo")  # the stores' volumes, kept across re-runs
STORAGE_CLASS = "cairn-demo-local"
STORES = {"postgresql": 999, "minio": 1000}  # the uid each server runs as: a host path gets no fsGroup


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def sh(*argv: str, env: dict[str, str] | None = None, capture: bool = False, check: bool = True,
       stdin: str | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, text=True, env=env, input=stdin, timeout=timeout,
                          capture_output=capture)


def last_line(*argv: str) -> str:
    """The last line a build script prints: the path or name of what it built."""
    return sh(*argv, capture=True).stdout.strip().splitlines()[-1]


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    for line in sh("bash", str(REPO / "hack/cluster.sh"), "env", capture=True).stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = os.path.expandvars(value.strip('"'))
    return env


class Cluster:
    def __init__(self, env: dict[str, str], helm: str) -> None:
        self.env, self.helm_bin = env, helm

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return sh("kubectl", *args, env=self.env, capture=True, check=check, stdin=stdin, timeout=600)

    def apply(self, obj: dict) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(obj))

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = sh(self.helm_bin, "--kubeconfig", self.env["KUBECONFIG"], "-n", SYSTEM, *args, env=self.env,
                    capture=True, check=False, timeout=900)
        if check and result.returncode != 0:
            raise SystemExit(f"helm {args[0]} failed:\n{result.stderr}{result.stdout}")
        return result

    def secret(self, name: str, key: str) -> str:
        return base64.b64decode(self.get("secret", name, "-n", SYSTEM)["data"][key]).decode()

    def pod_ip(self, name: str) -> str:
        return self.get("pod", name, "-n", SYSTEM)["status"]["podIP"]


def volumes(cluster: Cluster) -> None:
    """Host-path PersistentVolumes bound in advance to the stores' claims (the local cluster has no
    dynamic provisioner)."""
    for store, uid in STORES.items():
        path = DATA / store
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, uid)
        cluster.apply({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{TENANT}-{store}"},
            "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": STORAGE_CLASS, "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": str(path), "type": "Directory"},
                     "claimRef": {"namespace": SYSTEM, "name": f"data-{RELEASE}-{store}-0"}},
        })


def adopt_kept_objects(cluster: Cluster) -> None:
    """The CRDs and their admission policies outlive `helm uninstall` (and may have been applied
    with kubectl): hand the ones that exist to this release, as Helm requires to take them over."""
    names = cluster.kubectl("get", "-f", str(REPO / "crds"), "--ignore-not-found", "-o", "name").stdout.split()
    for name in names:
        cluster.kubectl("annotate", "--overwrite", name, f"meta.helm.sh/release-name={RELEASE}",
                        f"meta.helm.sh/release-namespace={SYSTEM}")
        cluster.kubectl("label", "--overwrite", name, "app.kubernetes.io/managed-by=Helm")


def values(postgres_image: str, minio_image: str) -> dict:
    def image(ref: str) -> dict:
        repository, tag = ref.rsplit(":", 1)
        return {"repository": repository, "tag": tag, "pullPolicy": "Never"}

    persistence = {"size": "2Gi", "storageClass": STORAGE_CLASS}
    return {
        "image": {"tag": "dev", "pullPolicy": "Never"},
        "trainingPods": {"imagePullPolicy": "Never"},
        "operator": {"watchNamespaces": [TENANT]},
        "postgresql": {"enabled": True, "image": image(postgres_image), "persistence": persistence},
        "minio": {"enabled": True, "image": image(minio_image), "persistence": persistence},
    }


def prometheus_config(kubeconfig: str, rules: Path) -> str:
    """A stock Prometheus pod job (kubernetes_sd), as a site's Prometheus would find training pods."""
    job = {
        "job_name": "kubernetes-pods", "scrape_interval": "1s",
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": kubeconfig, "namespaces": {"names": [TENANT]}}],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep",
             "regex": "true"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "action": "replace",
             "target_label": "__metrics_path__", "regex": "(.+)"},
            {"source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "action": "replace", "regex": "(.+);(.+)", "replacement": "$1:$2", "target_label": "__address__"},
        ],
    }
    return json.dumps({"global": {"evaluation_interval": "5s"}, "rule_files": [str(rules)], "scrape_configs": [job]})


def start_prometheus(cluster: Cluster, binary: str, work: Path) -> tuple[subprocess.Popen, str]:
    """Prometheus on this host with the release's alert rules (ConfigMap <release>-alerts)."""
    rules = work / "cairn-alerts.yaml"
    rules.write_text(cluster.get("configmap", f"{RELEASE}-alerts", "-n", SYSTEM)["data"]["cairn-alerts.yaml"])
    (work / "prometheus.yml").write_text(prometheus_config(cluster.env["KUBECONFIG"], rules))
    port = 9390
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=open(work / "prometheus.log", "w"))
    return proc, f"http://127.0.0.1:{port}"


def prom_query(url: str, query: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=10) as r:
        return json.load(r)["data"]["result"]


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"Prometheus did not become ready at {url} in {timeout:.0f} s")


def researcher_token(cluster: Cluster) -> str:
    """A ServiceAccount of the tenant with the cluster's `view` role there (which the chart extends to
    TrainingRuns): what a researcher of that team holds, and all the server needs to know."""
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "researcher", "namespace": TENANT}})
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "researcher-view", "namespace": TENANT},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                   "subjects": [{"kind": "ServiceAccount", "name": "researcher", "namespace": TENANT}]})
    return cluster.kubectl("-n", TENANT, "create", "token", "researcher", "--duration=1h").stdout.strip()


def read_through_the_server(cluster: Cluster, token: str, port: int = 8080) -> list[dict]:
    """The tenant's runs from `cairn server`, reached the way a researcher does: kubectl port-forward."""
    forward = subprocess.Popen(["kubectl", "-n", SYSTEM, "port-forward", f"svc/{RELEASE}-server", f"{port}:80"],
                               env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/namespaces/{TENANT}/runs",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return json.load(r)["runs"]
            except OSError as exc:
                if forward.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"cairn server did not answer through port-forward: {exc} "
                                     f"{forward.stderr.read() if forward.poll() is not None else ''}") from exc
                time.sleep(1)
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def follow(cluster: Cluster, timeout: float = 900) -> dict:
    last, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        tr = cluster.get("trainingrun", RUN, "-n", TENANT)
        status = tr.get("status") or {}
        line = (status.get("phase"), status.get("step"), status.get("metric"))
        if status.get("phase") and line != last:
            print(f"  phase={status['phase']:<10} step={status.get('step', '-')!s:<6} "
                  f"val_acc={status.get('metric', '-')}", flush=True)
            last = line
        if status.get("phase") in ("Succeeded", "Failed") and status.get("metric"):
            return tr
        time.sleep(1)
    raise SystemExit(f"the TrainingRun did not finish in {timeout:.0f} s: kubectl -n {TENANT} describe tr {RUN}")


def down(cluster: Cluster) -> int:
    step(f"removing the release {RELEASE}, the namespaces {SYSTEM} and {TENANT}, and {DATA}")
    cluster.kubectl("-n", TENANT, "delete", "trainingrun", "--all", "--wait=true", "--timeout=120s", check=False)
    cluster.helm("uninstall", RELEASE, "--wait", "--timeout", "5m", check=False)
    for ns in (TENANT, SYSTEM):
        cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=180s", check=False)
    for store in STORES:
        cluster.kubectl("delete", "pv", f"{TENANT}-{store}", "--ignore-not-found", check=False)
    shutil.rmtree(DATA, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", action="store_true", help="remove the demo's release, namespaces and data")
    args = parser.parse_args()

    step("local Kubernetes cluster (the first run compiles Kubernetes from Go modules: ~15 minutes)")
    sh("bash", str(REPO / "hack/cluster.sh"), "up")
    step("Helm and Prometheus from their Go modules (cached under ~/.cache/cairn)")
    cluster = Cluster(cluster_env(), last_line("bash", str(REPO / "hack/build-helm.sh")))
    if args.down:
        return down(cluster)
    prometheus_bin = last_line("bash", str(REPO / "hack/build-prometheus.sh"))
    step("images: Cairn (operator, sidecar, example trainer), PostgreSQL and MinIO, loaded into the node")
    sh("bash", str(REPO / "hack/build-image.sh"))
    sh("bash", str(REPO / "hack/build-postgres-image.sh"))
    postgres_image = "localhost/cairn-postgres:15"
    minio_image = last_line("bash", str(REPO / "hack/build-minio-image.sh"))

    step(f"helm upgrade --install {RELEASE} charts/cairn -n {SYSTEM} (bundled PostgreSQL and MinIO)")
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM}})
    # A tenant: the admin enables the namespace, and the chart's admission policy then admits its runs.
    cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": TENANT, "labels": {"cairn.dev/tenant": "enabled"}}})
    volumes(cluster)
    adopt_kept_objects(cluster)
    work = Path(tempfile.mkdtemp(prefix="cairn-demo-"))
    (work / "values.json").write_text(json.dumps(values(postgres_image, minio_image)))
    cluster.helm("upgrade", "--install", RELEASE, str(CHART), "-f", str(work / "values.json"), "--wait",
                 "--timeout", "8m")
    print(cluster.kubectl("-n", SYSTEM, "get", "pods").stdout, end="")

    prometheus, prom_url = start_prometheus(cluster, prometheus_bin, work)
    try:
        wait_ready(prom_url)
        step(f"kubectl -n {TENANT} apply -f examples/trainingrun.yaml, followed to the end")
        cluster.kubectl("-n", TENANT, "delete", "trainingrun", RUN, "--ignore-not-found", "--wait=true",
                        "--timeout=120s")
        cluster.kubectl("-n", TENANT, "apply", "-f", str(REPO / "examples/trainingrun.yaml"))
        tr = follow(cluster)
        print(cluster.kubectl("-n", TENANT, "get", "tr", RUN, "-o", "wide").stdout, end="")
        run_id = tr["metadata"]["uid"]

        # This host reaches the bundled servers at their pod addresses, with the release's credentials.
        cli_env = dict(cluster.env, CAIRN_DATABASE_URL=(
            f"postgresql+psycopg2://cairn:{cluster.secret(f'{RELEASE}-postgresql', 'password')}"
            f"@{cluster.pod_ip(f'{RELEASE}-postgresql-0')}:5432/cairn"),
            CAIRN_S3_ENDPOINT=f"http://{cluster.pod_ip(f'{RELEASE}-minio-0')}:9000",
            CAIRN_S3_ACCESS_KEY="cairn", CAIRN_S3_SECRET_KEY=cluster.secret(f"{RELEASE}-minio", "rootPassword"))
        step("the tracked record (cairn runs show)")
        sh(sys.executable, "-m", "cairn", "runs", "show", run_id, env=cli_env)
        step("its artifacts in MinIO, downloaded and checked against their sha256 (cairn runs download)")
        sh(sys.executable, "-m", "cairn", "runs", "artifacts", run_id, env=cli_env)
        sh(sys.executable, "-m", "cairn", "runs", "download", run_id, "-d", str(work / "artifacts"), env=cli_env)

        step("the live metric as Prometheus scraped it from the tracking sidecar")
        query = f'last_over_time(cairn_run_metric{{namespace="{TENANT}",trainingrun="{RUN}",key="val_acc"}}[15m])'
        found = prom_query(prom_url, query)
        for series in found:
            print(f"  {query} = {series['value'][1]} (run {series['metric']['run']})")
        if not found:
            print(f"  no samples: the run ended before the first scrape (see {work / 'prometheus.log'})")
        step("the run in cairn server (REST API and web UI), read with a researcher's Kubernetes token")
        for row in read_through_the_server(cluster, researcher_token(cluster)):
            print(f"  {row['name']:<10} {row['status']:<9} experiment={row['experiment']} "
                  f"val_acc={row['metrics'].get('val_acc', {}).get('value')}")
    finally:
        prometheus.send_signal(signal.SIGTERM)
        prometheus.wait(timeout=30)
    print(f"""
The release stays installed. To open the web UI:
  eval "$(bash hack/cluster.sh env)"
  kubectl -n {SYSTEM} port-forward svc/{RELEASE}-server 8080:80     # then open http://127.0.0.1:8080
  kubectl -n {TENANT} create token researcher                       # paste it when the UI asks
Remove it all with: bash examples/demo-cluster.sh --down""")
    return 0 if tr["status"]["phase"] == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
