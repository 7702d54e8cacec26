"""What the benchmarks start for themselves: a free port and a throwaway PostgreSQL on loopback."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL on loopback for a benchmark's store (as root, run as user postgres)."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [shutil.which("pg_ctl") or ""]
        if not found[-1]:
            raise SystemExit("PostgreSQL server binaries not found: install the Debian package postgresql")
        self.bindir = os.path.dirname(found[-1])
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cairn-bench-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        argv = [os.path.join(self.bindir, tool), *args]
        subprocess.run(["runuser", "-u", "postgres", "--", *argv] if self.as_root else argv, check=True,
                       capture_output=True)

    def start(self) -> None:
        """Start the server (trust authentication on loopback)."""
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "cairn", "-A", "trust", "-E", "UTF8")
        with open(data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                    "max_connections = 200\nshared_buffers = 256MB\n")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start")

    def create_database(self, name: str) -> str:
        """A fresh database; its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "cairn", name)
        return f"postgresql+psycopg2://cairn@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
