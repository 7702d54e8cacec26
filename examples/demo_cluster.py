"""The cluster demo: a TrainingRun trained on the local cluster and tracked in PostgreSQL.

    bash examples/demo-cluster.sh        # installs what is missing, then runs this

Brings up the local Kubernetes cluster (building it on first use), starts PostgreSQL on the node's
address, installs the CRD, starts the operator, applies examples/trainingrun.yaml, follows it to
the end and prints the run's record. The cluster stays up afterwards (hack/cluster.sh down stops it).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODE_IP = "10.213.0.1"
NAMESPACE = "cairn-demo"


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    return subprocess.run(argv, check=True, text=True, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(database: str) -> tuple[str, Callable[[], None]]:
    """A throwaway PostgreSQL from the Debian package (hack/install-test-deps.sh) that the operator
    reaches on 127.0.0.1 and the pods on NODE_IP: (URL of a new ``database`` on loopback, a function
    that stops the server and deletes its files). PostgreSQL refuses to run as root, so as root it
    runs as ``postgres``."""
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    work = Path(tempfile.mkdtemp(prefix="cairn-demo-pg-"))
    data, password, port = work / "data", "cairn-demo", free_port()
    (work / "pw").write_text(password)
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        for path in (work, work / "pw"):
            shutil.chown(path, "postgres", "postgres")
    sh(*as_postgres, f"{bindir}/initdb", "-D", str(data), "-U", "cairn", "-A", "md5", f"--pwfile={work / 'pw'}",
       "-E", "UTF8", capture_output=True)
    with open(data / "postgresql.conf", "a") as f:
        f.write(f"\nlisten_addresses = '127.0.0.1,{NODE_IP}'\nport = {port}\nunix_socket_directories = '{work}'\n")
    with open(data / "pg_hba.conf", "a") as f:
        f.write(f"host all all {NODE_IP.rsplit('.', 1)[0]}.0/24 md5\n")
    pg_ctl = [*as_postgres, f"{bindir}/pg_ctl", "-D", str(data)]
    sh(*pg_ctl, "-l", str(work / "server.log"), "-w", "start", capture_output=True)

    def stop() -> None:
        sh(*pg_ctl, "-m", "fast", "-w", "stop", capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    try:
        sh(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "cairn", database,
           env=dict(os.environ, PGPASSWORD=password))
    except subprocess.CalledProcessError:
        stop()
        raise
    return f"postgresql+psycopg2://cairn:{password}@127.0.0.1:{port}/{database}", stop


def cluster_env() -> dict[str, str]:
    out = sh("bash", str(REPO / "hack/cluster.sh"), "env", capture_output=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = os.path.expandvars(value.strip('"'))
    return env


def main() -> int:
    step("local Kubernetes cluster (the first run compiles Kubernetes from Go modules: ~15 minutes)")
    sh("bash", str(REPO / "hack/cluster.sh"), "up")
    step("project image with the tracking sidecar and the example trainer")
    sh("bash", str(REPO / "hack/build-image.sh"))
    env = cluster_env()

    def kubectl(*args: str, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
        return subprocess.run(["kubectl", *args], env=env, text=True, check=kw.pop("check", True), **kw)

    step(f"PostgreSQL on {NODE_IP} (reachable from pods), migrated with cairn db upgrade")
    host_url, stop_postgres = start_postgres("cairn")
    operator = None
    try:
        sh(sys.executable, "-m", "cairn", "--database-url", host_url, "db", "upgrade")

        step("CRD, namespace and the sidecar's database Secret")
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/trainingruns.cairn.dev", "--timeout=60s")
        kubectl("create", "namespace", NAMESPACE, check=False, capture_output=True)
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cairn-database", "namespace": NAMESPACE},
                  "data": {"url": base64.b64encode(host_url.replace("127.0.0.1", NODE_IP).encode()).decode()}}
        kubectl("apply", "-f", "-", input=json.dumps(secret), capture_output=True)
        kubectl("-n", NAMESPACE, "delete", "trainingrun", "digits", "--ignore-not-found", "--wait=true",
                capture_output=True)

        step("operator (cairn operator)")
        log = open(REPO / "cairn-operator.log", "w")
        operator = subprocess.Popen(
            [sys.executable, "-m", "cairn", "--database-url", host_url, "operator", "-n", NAMESPACE,
             "--sidecar-image", "cairn:dev", "--image-pull-policy", "Never",
             "--metrics-port", str(free_port()), "--liveness-port", str(free_port())],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(3)

        step("kubectl apply -f examples/trainingrun.yaml, followed to the end")
        kubectl("-n", NAMESPACE, "apply", "-f", str(REPO / "examples/trainingrun.yaml"))
        last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if operator.poll() is not None:
                raise SystemExit(f"the operator exited; see {REPO / 'cairn-operator.log'}")
            tr = json.loads(kubectl("-n", NAMESPACE, "get", "tr", "digits", "-o", "json", capture_output=True).stdout)
            status = tr.get("status") or {}
            line = (status.get("phase"), status.get("step"), status.get("metric"))
            if line != last and status.get("phase"):
                print(f"  phase={status.get('phase'):<10} step={status.get('step', '-')!s:<6} "
                      f"val_acc={status.get('metric', '-')}", flush=True)
                last = line
            if status.get("phase") in ("Succeeded", "Failed") and status.get("metric"):
                break
            time.sleep(1)
        kubectl("-n", NAMESPACE, "get", "tr", "digits", "-o", "wide")

        step("the tracked record (cairn runs show)")
        sh(sys.executable, "-m", "cairn", "--database-url", host_url, "runs", "show", tr["metadata"]["uid"])
        return 0 if status.get("phase") == "Succeeded" else 1
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        stop_postgres()


if __name__ == "__main__":
    sys.exit(main())
