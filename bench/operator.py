"""Operator benchmark on the local cluster: apply → pod-created latency next to a batch/v1 Job, and
operator memory with 1,000 TrainingRuns.

    python bench/operator.py [--latency-runs 40] [--scale 1000]

Needs the local cluster (hack/cluster.sh up). Pods go to simulated kwok nodes (added here with
``hack/cluster.sh kwok``), so nothing runs in containers: the figures are the control plane's
and the operator's alone. The Job baseline is the same pod created by the Job controller.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from tests.support.servers import PostgresServer, free_port

REPO = Path(__file__).resolve().parents[1]

KWOK = {"nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}


def cluster_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(REPO / "hack/cluster.sh"), "env"], check=True, capture_output=True,
                         text=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = os.path.expandvars(value.strip('"'))
    return env


ENV = cluster_env()


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    r = subprocess.run(["kubectl", *args], env=ENV, input=input, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr}")
    return r.stdout


class PodWatch:
    """Client-side arrival time of each new pod in a namespace, keyed by a label's value."""

    def __init__(self, namespace: str, label: str) -> None:
        self.seen: dict[str, float] = {}
        self.proc = subprocess.Popen(
            ["kubectl", "-n", namespace, "get", "pods", "--watch", "--output-watch-events", "-o",
             "jsonpath={.type} {.object.metadata.labels." + label.replace(".", "\\.") + "}{'\\n'}"],
            env=ENV, stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            parts = line.split()
            if len(parts) == 2 and parts[0] == "ADDED":
                self.seen.setdefault(parts[1], time.perf_counter())

    def stop(self) -> None:
        self.proc.terminate()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency(namespace: str, kind: str, runs: int) -> list[float]:
    label = "cairn.dev/trainingrun" if kind == "TrainingRun" else "job-name"
    watch = PodWatch(namespace, label)
    time.sleep(1.0)
    out = []
    for i in range(runs):
        name = f"{kind.lower()}-{i}"
        if kind == "TrainingRun":
            doc = {"apiVersion": "cairn.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name},
                   "spec": {"image": "cairn:dev", "command": ["python3", "-c", "pass"], **KWOK}}
        else:
            doc = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                   "spec": {"backoffLimit": 0, "template": {"spec": {
                       "restartPolicy": "Never", **KWOK,
                       "containers": [{"name": "c", "image": "cairn:dev", "command": ["python3", "-c", "pass"]}]}}}}
        t0 = time.perf_counter()
        kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(doc))
        deadline = time.monotonic() + 60
        while name not in watch.seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no pod for {kind} {name} after 60 s")
            time.sleep(0.002)
        out.append(watch.seen[name] - t0)
        time.sleep(0.2)
    watch.stop()
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def scale(namespace: str, count: int, operator: subprocess.Popen) -> dict:
    idle = rss_mib(operator.pid)
    t0 = time.perf_counter()
    for start in range(0, count, 100):
        items = [{"apiVersion": "cairn.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": f"scale-{i}"},
                  "spec": {"image": "cairn:dev", "command": ["python3", "-c", "pass"], **KWOK}}
                 for i in range(start, min(count, start + 100))]
        kubectl("-n", namespace, "create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    peak = idle
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        phases = kubectl("-n", namespace, "get", "tr", "-o", "jsonpath={.items[*].status.phase}").split()
        peak = max(peak, rss_mib(operator.pid))
        if phases.count("Running") >= count:
            break
        time.sleep(2)
    else:
        raise RuntimeError(f"only {phases.count('Running')} of {count} TrainingRuns Running after 30 minutes")
    all_running = time.perf_counter() - t0
    time.sleep(15)  # a timer round over every run
    return {"idle_mib": idle, "peak_mib": max(peak, rss_mib(operator.pid)), "steady_mib": rss_mib(operator.pid),
            "all_running_s": all_running}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-runs", type=int, default=40)
    ap.add_argument("--scale", type=int, default=1000)
    args = ap.parse_args()
    nodes = max(2, -(-args.scale // 100))
    subprocess.run(["bash", str(REPO / "hack/cluster.sh"), "kwok", str(nodes)], check=True, env=ENV)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/trainingruns.cairn.dev", "--timeout=60s")
    namespace = f"cairn-bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    pg = PostgresServer().init().start()
    operator = None
    try:
        url = pg.create_database("bench")
        subprocess.run([sys.executable, "-m", "cairn.cli.main", "--database-url", url, "db", "upgrade"], check=True,
                       capture_output=True)
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cairn-database"},
                  "data": {"url": base64.b64encode(url.encode()).decode()}}
        kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(secret))
        log = open(REPO / "bench" / "operator-bench.log", "w")
        operator = subprocess.Popen(
            [sys.executable, "-m", "cairn.cli.main", "--database-url", url, "operator", "-n", namespace,
             "--sidecar-image", "cairn:dev", "--image-pull-policy", "Never", "--metrics-port", str(free_port()),
             "--liveness-port", str(free_port())], env=ENV, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(5)

        print(f"apply -> pod created, {args.latency_runs} sequential creations each (client-side clock)")
        results = {kind: latency(namespace, kind, args.latency_runs) for kind in ("Job", "TrainingRun")}
        for kind, values in results.items():
            print(f"  {kind:<12} p50 {statistics.median(values) * 1000:7.1f} ms   p99 {percentile(values, 0.99) * 1000:7.1f} ms")
        ratio50 = statistics.median(results["TrainingRun"]) / statistics.median(results["Job"])
        ratio99 = percentile(results["TrainingRun"], 0.99) / percentile(results["Job"], 0.99)
        print(f"  TrainingRun / Job: p50 x{ratio50:.2f}, p99 x{ratio99:.2f}")

        kubectl("-n", namespace, "delete", "tr,job", "--all", "--wait=true")
        print(f"\noperator memory with {args.scale} TrainingRuns on {nodes} kwok nodes")
        s = scale(namespace, args.scale, operator)
        print(f"  RSS idle {s['idle_mib']:.0f} MiB, peak {s['peak_mib']:.0f} MiB, steady {s['steady_mib']:.0f} MiB"
              f" ({(s['steady_mib'] - s['idle_mib']) * 1024 / args.scale:.0f} KiB per run);"
              f" all {args.scale} Running after {s['all_running_s']:.0f} s")
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=60)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        pg.destroy()


if __name__ == "__main__":
    sys.exit(main())
