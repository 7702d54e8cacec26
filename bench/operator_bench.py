"""Operator benchmark on the local cluster, next to a batch/v1 Job on the same simulated nodes.

    python -m bench.operator_bench [--latency-runs 30] [--scale 1000] [--idle-window 300]
    python -m bench.operator_bench --latency-runs 0 --scale 10000 --idle-window 0

Run it from the repository root with the local cluster up (``hack/cluster.sh up``) and the
``cairn`` package importable (``PYTHONPATH=operator`` or an editable install). Pods go to kwok
nodes (added here with ``hack/cluster.sh kwok``), so nothing runs in containers: the figures are
the control plane's and the operator's alone. It starts its own throwaway PostgreSQL for the
operator's store and the operator on this machine, then measures:

1. operator RSS with ``--scale`` TrainingRuns Running, and how long until all of them were;
2. with those runs still Running, one object at a time, TrainingRun (operator) beside Job (Job
   controller): apply → pod created, and pod phase change → owner status updated: the pod runs
   (kwok) → the TrainingRun's phase is Running; the pod succeeds (the bench sets the TrainingRun
   pod's status, kwok completes the Job's at once) → phase Succeeded / ``status.succeeded`` is 1;
3. operator CPU over ``--idle-window`` seconds once all the ``--scale`` runs have finished.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.servers import Postgres, free_port

REPO = Path(__file__).resolve().parents[1]
KWOK = {"nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}
PODS_PER_NODE = 110


def cluster_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(REPO / "hack/cluster.sh"), "env"], check=True, capture_output=True,
                         text=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = os.path.expandvars(value.strip('"'))
    return env


ENV = cluster_env()


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:  # noqa: A002
    r = subprocess.run(["kubectl", *args], env=ENV, input=input, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr}")
    return r.stdout


class Watch:
    """Client-side time at which each (owner name, state) was first seen by a ``kubectl --watch``."""

    def __init__(self, namespace: str, resource: str, template: str, states) -> None:  # noqa: ANN001
        self.seen: dict[tuple[str, str], float] = {}
        self._states = states
        self.proc = subprocess.Popen(["kubectl", "-n", namespace, "get", resource, "--watch", "-o",
                                      f"jsonpath={template}{{'\\n'}}"], env=ENV, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            now = time.perf_counter()
            parts = line.split()
            if not parts:
                continue
            for state in self._states(parts[1:]):
                self.seen.setdefault((parts[0], state), now)

    def wait(self, name: str, state: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while (name, state) not in self.seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not {state} after {timeout:.0f} s")
            time.sleep(0.002)
        return self.seen[(name, state)]

    def stop(self) -> None:
        self.proc.terminate()


def pod_watch(namespace: str) -> Watch:
    # The owner's name from either label, then the pod's phase; "Created" on the first sight.
    labels = "{.metadata.labels.cairn\\.dev/trainingrun}{.metadata.labels.job-name}"
    return Watch(namespace, "pods", labels + " {.status.phase}", lambda rest: ["Created", *rest])


def owner_watch(namespace: str, kind: str) -> Watch:
    if kind == "TrainingRun":
        return Watch(namespace, "trainingruns.cairn.dev", "{.metadata.name} {.status.phase}", lambda rest: rest)

    return Watch(namespace, "jobs", "{.metadata.name} succeeded={.status.succeeded}",
                 lambda rest: ["Succeeded"] if "succeeded=1" in rest else [])


def manifest(kind: str, name: str) -> dict:
    if kind == "TrainingRun":
        return {"apiVersion": "cairn.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name},
                "spec": {"image": "cairn:dev", "command": ["python3", "-c", "pass"], **KWOK}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", **KWOK,
                "containers": [{"name": "c", "image": "cairn:dev", "command": ["python3", "-c", "pass"]}]}}}}


def core_api():  # noqa: ANN201
    from kubernetes import client, config

    config.load_kube_config(config_file=ENV["KUBECONFIG"])
    return client.CoreV1Api()


def release_trainingruns(namespace: str) -> None:
    """Drop the operator's finalizer from the bench's TrainingRuns once the operator has stopped, so
    deleting the namespace does not wait for an operator that will not come back (the bench's store
    is thrown away with them)."""
    from kubernetes import client

    custom = client.CustomObjectsApi()
    names = [item["metadata"]["name"] for item in
             custom.list_namespaced_custom_object("cairn.dev", "v1alpha1", namespace, "trainingruns")["items"]]
    patch = {"metadata": {"finalizers": None}}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: custom.patch_namespaced_custom_object(
            "cairn.dev", "v1alpha1", namespace, "trainingruns", name, patch), names))


def succeed_pod(core, namespace: str, name: str) -> None:  # noqa: ANN001
    """What the kubelet reports when the trainer and the sidecar have exited 0."""
    pod = core.read_namespaced_pod_status(name, namespace)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pod.status.phase = "Succeeded"
    for cs in (pod.status.container_statuses or []) + (pod.status.init_container_statuses or []):
        cs.ready = False
        cs.state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}
    core.replace_namespaced_pod_status(name, namespace, pod)


def first_pods(namespace: str) -> dict[str, str]:
    """The first attempt's pod name of each TrainingRun in the namespace (the name carries the uid's hash)."""
    from cairn.podspec import pod_name

    items = json.loads(kubectl("-n", namespace, "get", "trainingruns.cairn.dev", "-o", "json"))["items"]
    return {tr["metadata"]["name"]: pod_name(tr["metadata"]["name"], tr["metadata"]["uid"], 1) for tr in items}


def latency(namespace: str, kind: str, runs: int, core) -> dict[str, list[float]]:  # noqa: ANN001
    pods, owners = pod_watch(namespace), owner_watch(namespace, kind)
    time.sleep(1.0)
    out: dict[str, list[float]] = {"created": [], "running": [], "succeeded": []}
    try:
        for i in range(runs):
            name = f"{kind.lower()}-{i}"
            t0 = time.perf_counter()
            kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(manifest(kind, name)))
            out["created"].append(pods.wait(name, "Created") - t0)
            if kind == "TrainingRun":  # kwok completes a Job's pod before the Job reports it ready
                out["running"].append(owners.wait(name, "Running") - pods.wait(name, "Running"))
                succeed_pod(core, namespace, first_pods(namespace)[name])
            out["succeeded"].append(owners.wait(name, "Succeeded") - pods.wait(name, "Succeeded"))
            time.sleep(0.2)
    finally:
        pods.stop()
        owners.stop()
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phases(namespace: str) -> list[str]:
    return kubectl("-n", namespace, "get", "trainingruns.cairn.dev", "-o", "jsonpath={.items[*].status.phase}").split()


def wait_all(namespace: str, phase: str, count: int, pid: int, timeout: float) -> tuple[float, float]:
    """Seconds until ``count`` TrainingRuns are in ``phase``, and the operator's peak RSS meanwhile."""
    t0, peak = time.perf_counter(), 0.0
    while True:
        seen = phases(namespace)
        peak = max(peak, rss_mib(pid))
        if seen.count(phase) >= count:
            return time.perf_counter() - t0, peak
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"only {seen.count(phase)} of {count} TrainingRuns {phase} after {timeout:.0f} s")
        time.sleep(2)


def scale(namespace: str, count: int, pid: int) -> dict:
    idle = rss_mib(pid)
    t0 = time.perf_counter()
    for start in range(0, count, 100):
        items = [manifest("TrainingRun", f"scale-{i}") for i in range(start, min(count, start + 100))]
        kubectl("-n", namespace, "create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                         "items": items}))
    created = time.perf_counter() - t0
    running_s, peak = wait_all(namespace, "Running", count, pid, timeout=max(1800, count * 0.5))
    time.sleep(15)  # a status-metrics round over every Running run
    return {"idle_mib": idle, "created_s": created, "all_running_s": created + running_s,
            "peak_mib": max(peak, rss_mib(pid)), "steady_mib": rss_mib(pid)}


def finish_all(namespace: str, count: int, pid: int, core) -> float:  # noqa: ANN001
    pods = first_pods(namespace)
    names = [pods[f"scale-{i}"] for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: succeed_pod(core, namespace, n), names))
    return wait_all(namespace, "Succeeded", count, pid, timeout=max(600, count * 0.2))[0]


def idle_cpu(pid: int, window: float) -> float:
    """Share of one core the operator used over ``window`` seconds."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return (cpu_seconds(pid) - before) / (time.monotonic() - t0)


def print_latency(results: dict[str, dict[str, list[float]]]) -> None:
    titles = {"created": "apply -> pod created", "running": "pod Running -> owner status Running",
              "succeeded": "pod Succeeded -> owner status Succeeded"}
    for step, title in titles.items():
        print(f"  {title}")
        for kind, values in results.items():
            v = values[step]
            if not v:
                continue
            print(f"    {kind:<12} p50 {statistics.median(v) * 1000:8.1f} ms   p99 {percentile(v, 0.99) * 1000:8.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-runs", type=int, default=30, help="objects per kind for the latency figures (0: skip)")
    ap.add_argument("--scale", type=int, default=1000, help="TrainingRuns for the memory figure (0: skip)")
    ap.add_argument("--idle-window", type=float, default=300, help="seconds of idle CPU measurement (0: skip)")
    args = ap.parse_args()
    nodes = max(2, -(-args.scale // (PODS_PER_NODE - 10)))
    subprocess.run(["bash", str(REPO / "hack/cluster.sh"), "kwok", str(nodes)], check=True, env=ENV)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/trainingruns.cairn.dev", "--timeout=60s")
    namespace = f"cairn-bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    pg = Postgres()
    operator = None
    core = core_api()
    try:
        pg.start()
        url = pg.create_database("bench")
        subprocess.run([sys.executable, "-m", "cairn.cli.main", "--database-url", url, "db", "upgrade"], check=True,
                       capture_output=True)
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cairn-database"},
                  "data": {"url": base64.b64encode(url.encode()).decode()}}
        kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(secret))
        log = open(REPO / "bench" / "operator-bench.log", "w")
        operator = subprocess.Popen(
            [sys.executable, "-m", "cairn.cli.main", "--database-url", url, "operator", "--namespace", namespace,
             "--sidecar-image", "cairn:dev", "--image-pull-policy", "Never", "--metrics-port", str(free_port()),
             "--liveness-port", str(free_port())], env=ENV, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(5)

        if args.scale:
            print(f"operator with {args.scale} TrainingRuns on {nodes} kwok nodes")
            s = scale(namespace, args.scale, operator.pid)
            print(f"  all {args.scale} Running {s['all_running_s']:.0f} s after the first was created"
                  f" (creating them took {s['created_s']:.0f} s)")
            print(f"  RSS idle {s['idle_mib']:.0f} MiB, peak {s['peak_mib']:.0f} MiB, steady {s['steady_mib']:.0f} MiB"
                  f" ({(s['steady_mib'] - s['idle_mib']) * 1024 / args.scale:.0f} KiB per run)")

        if args.latency_runs:
            print(f"\nlatency, {args.latency_runs} objects of each kind one after another (client-side clock),"
                  f" {args.scale} TrainingRuns Running beside them")
            results = {kind: latency(namespace, kind, args.latency_runs, core) for kind in ("Job", "TrainingRun")}
            print_latency(results)

        if args.scale and args.idle_window:
            took = finish_all(namespace, args.scale, operator.pid, core)
            print(f"\n  all {args.scale} Succeeded {took:.0f} s after their pods")
            time.sleep(10)
            share = idle_cpu(operator.pid, args.idle_window)
            print(f"  idle CPU over {args.idle_window:.0f} s holding {args.scale} finished runs:"
                  f" {share * 100:.2f}% of a core; RSS {rss_mib(operator.pid):.0f} MiB")
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=60)
        release_trainingruns(namespace)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        subprocess.run(["bash", str(REPO / "hack/cluster.sh"), "kwok", "0"], check=False, env=ENV)
        pg.destroy()


if __name__ == "__main__":
    sys.exit(main())
