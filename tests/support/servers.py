"""Real servers for tests and benchmarks, started from the machine's packages on loopback."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return os.path.dirname(pg_ctl)
    raise RuntimeError("PostgreSQL server binaries not found: install the Debian package postgresql")


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 that can be stopped and started again.

    PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
    """

    def __init__(self, port: int | None = None, extra_listen: tuple[str, ...] = ()) -> None:
        """``extra_listen``: addresses besides 127.0.0.1, e.g. the local cluster's node IP for pods."""
        self.extra_listen = extra_listen
        self.bindir = _postgres_bindir()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cairn-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.password = "cairn-test"
        self.as_root = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        argv = [os.path.join(self.bindir, args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *argv] if self.as_root else argv

    def init(self) -> "PostgresServer":
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run(
            self._cmd("initdb", "-D", str(self.data), "-U", "cairn", "-A", "md5", f"--pwfile={pwfile}", "-E", "UTF8"),
            check=True,
            capture_output=True,
        )
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                f"\nlisten_addresses = '{','.join(('127.0.0.1', *self.extra_listen))}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\nfsync = on\n"
                "max_connections = 200\nshared_buffers = 256MB\n"
            )
        if self.extra_listen:
            with open(self.data / "pg_hba.conf", "a") as f:
                for addr in self.extra_listen:
                    prefix = addr.rsplit(".", 1)[0] + ".0/24"
                    f.write(f"host all all {prefix} md5\n")
        return self

    def start(self) -> "PostgresServer":
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"),
            check=True,
            capture_output=True,
        )
        return self

    def running(self) -> bool:
        status = subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "status"), capture_output=True)
        return status.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"),
            check=False,
            capture_output=True,
        )

    def create_database(self, name: str) -> str:
        env = dict(os.environ, PGPASSWORD=self.password)
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "cairn", "-d", "postgres", "-q",
             "-c", f'CREATE DATABASE "{name}"'],
            check=True, capture_output=True, env=env,
        )
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://cairn:{self.password}@127.0.0.1:{self.port}/{database}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError("PostgreSQL did not come up")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


REPO_ROOT = Path(__file__).resolve().parents[2]


def _http(method: str, url: str, timeout: float = 5.0, data: bytes | None = None,
          cafile: Path | None = None) -> tuple[int, bytes]:
    import ssl
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method=method, data=data)
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_http_ok(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float,
                  cafile: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if _http("GET", url, timeout=1.0, cafile=cafile)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready at {url} after {timeout}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate(proc: subprocess.Popen | None, kill: bool = False, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def built_binary(script: str, build: bool = True, *args: str) -> str:
    """The binary ``hack/SCRIPT ARGS...`` builds (cached by version); built first (minutes, once) if missing."""
    path_of = REPO_ROOT / "hack" / script
    path = subprocess.run(["bash", str(path_of), *args, "--print-bin"], check=True, capture_output=True,
                          text=True).stdout.strip()
    if not os.access(path, os.X_OK):
        if not build:
            raise RuntimeError(f"not built: run hack/{script} {' '.join(args)} (expected {path})")
        # Progress goes to stderr, which pytest shows with -s or when the fixture fails.
        subprocess.run(["bash", str(path_of), *args], check=True, stdout=subprocess.DEVNULL)
    return path


def minio_binary(build: bool = True) -> str:
    """The MinIO server built from its Go module."""
    return built_binary("build-minio.sh", build)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without CAIRN_* and AWS_* settings, plus ``extra``: what a fresh
    container of a pod starts from."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}, **extra}


def start_sidecar(run_dir: Path, env: dict[str, str], timeout: float = 30) -> subprocess.Popen:
    """``cairn sidecar`` for ``run_dir`` as in a pod (``env`` on top of ``clean_env()``), returned
    once it has prepared the run directory, as the kubelet's startup probe waits for it."""
    proc = subprocess.Popen([sys.executable, "-m", "cairn.cli.main", "sidecar"],
                            env=clean_env(**env, CAIRN_RUN_DIR=str(run_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not (Path(run_dir) / ".sidecar-ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise AssertionError(f"the sidecar did not get ready:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    return proc


def read_object(client, bucket: str, key: str) -> bytes:  # noqa: ANN001 - a minio.Minio
    """The whole object, with the connection handed back to the client's pool."""
    resp = client.get_object(bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


class MinioServer:
    """A single-drive MinIO server with generated credentials; stop() and start() keep port and data."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, tls: bool = False) -> None:
        self.binary = minio_binary()
        self.tls = tls
        self.host = host
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cairn-minio-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.access_key = "cairn-" + os.urandom(6).hex()
        self.secret_key = os.urandom(20).hex()
        self.region = "us-east-1"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """host:port, as ``minio.Minio`` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def ca_pem(self) -> str:
        """With ``tls``: the PEM of the throwaway CA that signed the server's certificate."""
        return (self.dir / "ca.crt").read_text()

    def _make_certificates(self) -> None:
        """A CA and a server certificate for the loopback address, as MinIO's certs dir wants them."""
        certs = self.dir / "certs"
        if (certs / "public.crt").exists():
            return
        certs.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.dir)

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=cairn test CA", "-keyout", "ca.key", "-out", "ca.crt")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", f"/CN={self.host}", "-keyout", "certs/private.key", "-out", "server.csr")
        (self.dir / "san.ext").write_text(f"subjectAltName=IP:{self.host},DNS:localhost\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", "certs/public.crt")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60) -> MinioServer:
        if self.running:
            return self
        self.data.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self._make_certificates()
        env = dict(
            os.environ,
            MINIO_ROOT_USER=self.access_key,
            MINIO_ROOT_PASSWORD=self.secret_key,
            MINIO_REGION=self.region,
            MINIO_BROWSER="off",
            MINIO_UPDATE="off",
            MINIO_CALLHOME_ENABLE="off",
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "server", str(self.data), "--address", self.endpoint,
                 "--certs-dir", str(self.dir / "certs"), "--quiet", "--anonymous"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        try:
            _wait_http_ok(f"{self.url}/minio/health/ready", self.proc, self.log, "MinIO", timeout,
                          cafile=self.dir / "ca.crt" if self.tls else None)
        except BaseException:
            _terminate(self.proc, kill=True)
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill=True``); the data stays for start()."""
        _terminate(self.proc, kill=kill)

    def client(self, **kwargs):
        """A ``minio.Minio`` client; ``kwargs`` go to it (e.g. ``http_client`` to set retries)."""
        import minio

        if self.tls and "http_client" not in kwargs:
            import ssl

            import urllib3

            kwargs["http_client"] = urllib3.PoolManager(ssl_context=ssl.create_default_context(cadata=self.ca_pem))
        kwargs = {"secure": self.tls, "region": self.region, **kwargs}
        return minio.Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, **kwargs)

    def env(self) -> dict[str, str]:
        """The usual S3 client variables for a subprocess."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region, "AWS_ENDPOINT_URL": self.url}

    def destroy(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def prometheus_binary(build: bool = True) -> str:
    """Prometheus built from its Go module (Debian's lacks Kubernetes service discovery)."""
    return built_binary("build-prometheus.sh", build)


def promtool_binary(build: bool = True) -> str:
    """promtool from the same Go module build as :func:`prometheus_binary`."""
    return built_binary("build-prometheus.sh", build, "promtool")


class PrometheusServer:
    """A Prometheus server on loopback with a generated config; ``reload()`` swaps the config live.

    ``config`` is a list of scrape configs (dicts, as in prometheus.yml's ``scrape_configs``), a
    whole config as a dict, or a whole config as YAML text. Dicts are written as JSON, which
    Prometheus reads as YAML. Scrapes and rule evaluation run every ``interval``; a new target's
    first scrape comes about 5 s after start or reload (use ``wait_for``).
    """

    def __init__(self, config: list | dict | str | None = None, interval: str = "1s",
                 port: int | None = None) -> None:
        self.binary = prometheus_binary()
        self.interval = interval
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cairn-prom-"))
        self.config_file = self.dir / "prometheus.yml"
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._write_config(config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self, config: list | dict | str | None) -> None:
        import json

        if isinstance(config, str):
            text = config
        else:
            if config is None or isinstance(config, list):
                config = {"scrape_configs": list(config or [])}
            config = dict(config)
            config.setdefault("global", {"scrape_interval": self.interval, "scrape_timeout": self.interval,
                                         "evaluation_interval": self.interval})
            text = json.dumps(config, indent=2)
        self.config_file.write_text(text)

    def start(self, timeout: float = 60) -> PrometheusServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config_file}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                 "--storage.tsdb.retention.time=1d", "--log.level=warn",
                 # Hidden flag: the scrape manager applies new targets at once rather than on its
                 # own 5 s tick. Discovery still hands them over on a fixed 5 s tick, so a new
                 # target's first scrape comes about 5 s after start or reload.
                 "--scrape.discovery-reload-interval=200ms"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.dir,
            )
        try:
            _wait_http_ok(f"{self.url}/-/ready", self.proc, self.log, "Prometheus", timeout)
        except BaseException:
            _terminate(self.proc, kill=True)
            raise
        return self

    def reload(self, config: list | dict | str) -> None:
        self._write_config(config)
        status, body = _http("POST", f"{self.url}/-/reload", timeout=30, data=b"")
        if status != 200:
            raise RuntimeError(f"Prometheus rejected the config ({status}): {body.decode(errors='replace')}")

    def _api(self, path: str, **params: str) -> object:
        import json
        import urllib.parse

        status, body = _http("GET", f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30)
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise RuntimeError(f"Prometheus /api/v1/{path} failed ({status}): {reply.get('error', body[:500])}")
        return reply["data"]

    def query(self, promql: str, at: float | None = None) -> list:
        """An instant query: the ``result`` list (for a vector, ``[{"metric": {...}, "value": [t, "v"]}]``)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = str(at)
        return self._api("query", **params)["result"]

    def wait_for(self, promql: str, predicate=bool, timeout: float = 30, poll: float = 0.2) -> list:
        """Poll ``query(promql)`` until ``predicate(result)`` holds; returns that result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{promql!r}: still {result!r} after {timeout}s")
            time.sleep(poll)

    def alerts(self) -> list:
        """``/api/v1/alerts``: the pending and firing alerts, each with labels, annotations, state and activeAt."""
        return self._api("alerts")["alerts"]

    def targets(self) -> list:
        return self._api("targets", state="active")["activeTargets"]

    def stop(self) -> None:
        _terminate(self.proc)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
