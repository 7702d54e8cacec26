"""Real servers for tests and benchmarks, started from the machine's packages on loopback."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
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
