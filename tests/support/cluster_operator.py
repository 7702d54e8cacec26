"""Running the operator against the local cluster: PostgreSQL reachable from pods, the CRD, the operator."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from .cluster import Kubectl, wait_until
from .servers import free_port

REPO = Path(__file__).resolve().parents[2]
NODE_IP = "10.213.0.1"  # the local cluster's node (hack/cluster.sh), reachable from every pod

def install_crd(kubectl: Kubectl) -> None:
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    crds = sorted(f"crd/{path.name.removesuffix('.yaml')}" for path in (REPO / "crds").glob("*.yaml"))
    kubectl.run("wait", "--for=condition=Established", *crds, "--timeout=60s")


def database_secret(kubectl: Kubectl, namespace: str, url: str) -> None:
    kubectl.apply({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cairn-database", "namespace": namespace},
        "data": {"url": base64.b64encode(url.encode()).decode()},
    }, namespace=namespace)


class OperatorProcess:
    """``cairn operator`` on the host, watching one namespace, with the cluster's kubeconfig."""

    def __init__(self, kubeconfig: Path, namespace: str, database_url: str, log_path: Path) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.argv = [
            sys.executable, "-m", "cairn.cli.main", "-v", "--database-url", database_url, "operator",
            "--namespace", namespace, "--sidecar-image", "cairn:dev", "--image-pull-policy", "Never",
            "--metrics-port", str(self.metrics_port), "--liveness-port", str(self.liveness_port),
        ]
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OperatorProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, 60, "the operator's liveness endpoint")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def wait_phase(kubectl: Kubectl, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 180) -> dict:
    def check():  # noqa: ANN202
        tr = kubectl.get("trainingrun", name, namespace)
        return tr if (tr.get("status") or {}).get("phase") in phases else None
    return wait_until(check, timeout, f"TrainingRun {name} to reach {phases}", interval=1)


def trainingrun(name: str, command: list[str], **spec) -> dict:  # noqa: ANN003
    return {
        "apiVersion": "cairn.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name},
        "spec": {"image": "cairn:dev", "command": command, **spec},
    }


def prometheus_pod_job(kubeconfig: Path, namespace: str) -> list[dict]:
    """A stock Prometheus pod job (kubernetes_sd) for the pods of ``namespace`` annotated prometheus.io/scrape."""
    return [{
        "job_name": "kubernetes-pods",
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig),
                                   "namespaces": {"names": [namespace]}}],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep",
             "regex": "true"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "action": "replace",
             "target_label": "__metrics_path__", "regex": "(.+)"},
            {"source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "action": "replace", "regex": "(.+);(.+)", "replacement": "$1:$2", "target_label": "__address__"},
        ],
    }]


def python_trainer(code: str) -> list[str]:
    return ["python3", "-c", code]


def objectstore_secret(kubectl: Kubectl, namespace: str, minio, bucket: str,  # noqa: ANN001 - a MinioServer
                       name: str = "cairn-objectstore") -> None:
    """The Secret the operator's pods read the object store from (MinIO must listen on NODE_IP)."""
    values = {"endpoint": minio.url, "accessKey": minio.access_key, "secretKey": minio.secret_key,
              "bucket": bucket, "region": minio.region}
    kubectl.apply({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }, namespace=namespace)
