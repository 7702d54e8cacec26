"""Peak memory of the ingest agent catching up on a backlog: wide lines, one batch at a time.

A run directory holds 8 MiB of 200-key metric lines, the backlog a sidecar finds after a database
outage. A fresh process ingests it with ``IngestAgent`` and reports its peak RSS (``ru_maxrss``)
and its RSS once the imports are done, once bounded only by bytes (8 MiB a batch, as before issue
12) and once by the default points per batch as well. PostgreSQL is the one the sidecar talks to.

    python3 -m bench.ingest_memory                 # from the repository root: under a minute
    python3 -m bench.ingest_memory --backend sqlite
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from bench.servers import Postgres

KEYS_PER_LINE = 200
BACKLOG_BYTES = 8 << 20
UNBOUNDED = 1 << 62


def write_backlog(run_dir: Path, run_id: str) -> int:
    """8 MiB of 200-key lines after a run record; returns the number of points."""
    run_dir.mkdir(parents=True)
    points = 0
    with open(run_dir / "records.jsonl", "w") as f:
        f.write(json.dumps({"type": "run", "run_id": run_id, "experiment": "memory"}) + "\n")
        step = 0
        while f.tell() < BACKLOG_BYTES:
            values = {f"layer_{i:03d}/grad_norm": step * 0.001 + i for i in range(KEYS_PER_LINE)}
            f.write(json.dumps({"type": "metric", "step": step, "ts": 1.7e9 + step, "values": values}) + "\n")
            points += KEYS_PER_LINE
            step += 1
    return points


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / (1 << 20)


def child(url: str, run_dir: str, max_batch_points: int) -> None:
    from cairn.agent.ingest import IngestAgent
    from cairn.store import TrackingStore

    store = TrackingStore(url)
    agent = IngestAgent(run_dir, store=store, max_batch_points=max_batch_points)
    ready = rss_mib()
    stop = threading.Event()
    stop.set()
    agent.run(stop, drain_timeout=600)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ready_mib": ready, "peak_mib": peak, "points": agent.stats.points,
                      "commits": agent.stats.commits}))


def measure(url: str, workdir: Path, max_batch_points: int) -> dict:
    run_id = str(uuid.uuid4())
    run_dir = workdir / run_id
    expected = write_backlog(run_dir, run_id)
    out = subprocess.run([sys.executable, "-m", "bench.ingest_memory", "--child", url, str(run_dir),
                          str(max_batch_points)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["points"] != expected:
        raise SystemExit(f"ingested {result['points']} points, expected {expected}")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    from cairn.agent.ingest import MAX_BATCH_POINTS
    from cairn.store import db

    workdir = Path(tempfile.mkdtemp(prefix="cairn-bench-memory-"))
    server = None
    if args.backend == "postgres":
        server = Postgres()
        server.start()
        url = server.create_database("memory")
    else:
        url = f"sqlite:///{workdir / 'cairn.db'}"
    try:
        db.upgrade(db.get_engine(url))
        print(f"8 MiB backlog of {KEYS_PER_LINE}-key lines into {args.backend}")
        for label, bound in (("bytes only (8 MiB)", UNBOUNDED), (f"{MAX_BATCH_POINTS:,} points", MAX_BATCH_POINTS)):
            r = measure(url, workdir, bound)
            print(f"  batch bound {label:<20} peak RSS {r['peak_mib']:6.1f} MiB (after imports {r['ready_mib']:.1f}),"
                  f" {r['points']:,} points in {r['commits']} commits")
    finally:
        if server is not None:
            server.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
