"""Ingest benchmark (issue 2): Cairn's SDK → agent → PostgreSQL path against an MLflow tracking server.

One run, one throwaway PostgreSQL (``bench/servers.py``) holding two databases: ``cairn`` (the
Cairn schema, via ``cairn.store.db.upgrade``) and ``mlflow`` (migrated by ``mlflow server`` itself).
It prints:

(a) the cost of one ``cairn.log`` call with 10 scalars against ``mlflow.log_metrics`` with 10
    scalars, synchronous and ``synchronous=False``, sent to the MLflow tracking server;
(b) end-to-end committed points/s: a writer process logs N steps x 10 scalars with the SDK while
    an ``IngestAgent`` commits them to PostgreSQL, against ``MlflowClient().log_batch`` at 1,000
    metrics per request; both counts are checked in the database afterwards;
(c) raw COPY of the same rows into the same ``metrics`` table (the ceiling);
(d) reading a 1M-point history of one key, in full and downsampled to 1,000 buckets;

then the targets with PASS/MISS. ``--quick`` is a smoke run of under a minute.

``--tenancy`` runs (b) alone, alternately as the schema owner (the shared ``public`` schema) and as a
namespace's role in its own schema (``cairn.tenancy``), and prints the cost of the isolation (goal ≤ 10%).

    pip install -e '.[bench]'
    python3 -m bench.ingest            # from the repository root; default sizes: 3 to 4 minutes on 2 cores
    python3 -m bench.ingest --quick
    python3 -m bench.ingest --tenancy --points 500000
"""

from __future__ import annotations

import argparse
import io
import itertools
import multiprocessing as mp
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

# The MLflow client and server must not phone home: set before mlflow is imported anywhere.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job workers competing for the 2 cores
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
os.environ.update(QUIET_ENV)
for _var in [v for v in os.environ if v.startswith("CAIRN_")]:  # the SDK must not attach to some other run
    del os.environ[_var]

from cairn.store import db  # noqa: E402
from bench.servers import Postgres, free_port  # noqa: E402

KEYS = [f"metric_{i}" for i in range(10)]
SEED = 20240607
COPY_SQL = "COPY metrics (run_id, key, step, timestamp_ms, value) FROM STDIN"


# -- helpers ------------------------------------------------------------------------------------
def step_values(seed: int = SEED):
    """The same 10 values per step for every contender."""
    rng = random.Random(seed)
    while True:
        yield {k: rng.random() for k in KEYS}


def pct(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in microseconds."""
    i = min(len(sorted_ns) - 1, max(0, round(q / 100 * len(sorted_ns)) - 1))
    return sorted_ns[i] / 1000


def latency_summary(samples: list[int]) -> dict:
    s = sorted(samples)
    return {"n": len(s), "p50_us": pct(s, 50), "p99_us": pct(s, 99), "mean_us": sum(s) / len(s) / 1000}


def run_outside_transaction(engine, sql: str) -> None:  # noqa: ANN001
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(sql)


def checkpoint(engine) -> None:  # noqa: ANN001
    """Start each timed write phase with no dirty pages left over from the previous one."""
    run_outside_transaction(engine, "CHECKPOINT")


def scalar(engine, sql: str, *args):  # noqa: ANN001, ANN201
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()[0]
    finally:
        raw.close()


def copy_rows_text(run_id: str, steps: int, keys: list[str], ts_ms: int, seed: int = SEED) -> str:
    """Rows in the text format the store sends to COPY (``cairn.store.pgcopy.encode_metric_rows``).

    With ``keys=KEYS`` the values are those of ``step_values(seed)``: one draw per key, in order.
    """
    buf = io.StringIO()
    draw = random.Random(seed).random
    for step in range(steps):
        buf.writelines(f"{run_id}\t{k}\t{step}\t{ts_ms}\t{draw()!r}\n" for k in keys)
    return buf.getvalue()


# -- MLflow server ------------------------------------------------------------------------------
class MlflowServer:
    def __init__(self, backend_uri: str, workdir: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.artifacts = workdir / "mlflow-artifacts"
        self.artifacts.mkdir(parents=True)
        self.log_path = workdir / "mlflow-server.log"
        self.backend_uri = backend_uri
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "MlflowServer":
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_uri,
            "--default-artifact-root", self.artifacts.as_uri(),
            "--no-serve-artifacts",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     env=dict(os.environ, **QUIET_ENV), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server did not answer /health in {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: uvicorn and its worker
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self._log.close()


# -- (a) cost of one call -----------------------------------------------------------------------
def bench_cairn_log(workdir: Path, calls: int) -> dict:
    import cairn

    run = cairn.init(experiment="bench-latency", run_dir=str(workdir / "latency-run"), capture_env=False)
    payloads = list(itertools.islice(step_values(), 1000))  # built up front: only the call is timed
    pc = time.perf_counter_ns
    samples = [0] * calls
    start = pc()
    for i in range(calls):
        d = payloads[i % 1000]
        t0 = pc()
        cairn.log(d, step=i)
        samples[i] = pc() - t0
    run.flush()  # serialisation happens here and on the flush thread: count it in the amortised cost
    total = pc() - start
    cairn.finish()
    out = latency_summary(samples)
    out["amortised_us"] = total / calls / 1000
    return out


def bench_mlflow_log(uri: str, calls: int, synchronous: bool) -> dict:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-latency")
    payloads = list(itertools.islice(step_values(), 1000))
    pc = time.perf_counter_ns
    samples = [0] * calls
    with mlflow.start_run() as active:
        for i in range(20):  # warm the HTTP connection pool and the server's code paths
            mlflow.log_metrics(payloads[i], step=calls + i, synchronous=synchronous)
        mlflow.flush_async_logging()
        start = pc()
        for i in range(calls):
            d = payloads[i % 1000]
            t0 = pc()
            mlflow.log_metrics(d, step=i, synchronous=synchronous)
            samples[i] = pc() - t0
        t0 = pc()
        mlflow.flush_async_logging()
        drain = pc() - t0
        total = pc() - start
        run_id = active.info.run_id
    out = latency_summary(samples)
    out["amortised_us"] = total / calls / 1000
    out["drain_s"] = drain / 1e9
    out["run_id"] = run_id
    return out


# -- (b) end to end -----------------------------------------------------------------------------
def sdk_writer(run_dir: str, run_id: str, steps: int, started) -> None:  # noqa: ANN001
    """The training process: logs ``steps`` x 10 scalars as fast as it can, then finishes."""
    import cairn

    cairn.init(experiment="bench-e2e", run_dir=run_dir, run_id=run_id)
    values = step_values()
    started.put(time.time())
    for step in range(steps):
        cairn.log(next(values), step=step)
    cairn.finish()


def bench_cairn_e2e(store, workdir: Path, steps: int, poll_interval: float, profile: bool) -> dict:  # noqa: ANN001
    from cairn.agent.ingest import IngestAgent

    run_id = str(uuid.uuid4())
    run_dir = workdir / "e2e-run"
    agent = IngestAgent(run_dir, store=store, run_id=run_id, poll_interval=poll_interval)
    stop = threading.Event()
    result: list[bool] = []
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)

    def agent_main() -> None:
        if profiler is not None:
            profiler.start()
        try:
            result.append(agent.run(stop, exit_on_finish=True))
        finally:
            if profiler is not None:
                profiler.stop()

    ctx = mp.get_context("spawn")
    started = ctx.Queue()
    thread = threading.Thread(target=agent_main, name="ingest-agent", daemon=True)
    thread.start()
    writer = ctx.Process(target=sdk_writer, args=(str(run_dir), run_id, steps, started))
    writer.start()
    t0 = started.get(timeout=120)
    writer.join()
    thread.join(timeout=600)
    if thread.is_alive():
        stop.set()
        thread.join()
        raise RuntimeError("the agent did not see the run finish within 10 minutes")
    if writer.exitcode != 0:
        raise RuntimeError(f"SDK writer exited with {writer.exitcode}")
    if result != [True]:
        raise RuntimeError("the agent stopped with lines not ingested")
    elapsed = agent.stats.last_commit - t0
    stored = scalar(store.engine, "SELECT count(*) FROM metrics WHERE run_id = %s", run_id)
    expected = steps * len(KEYS)
    if stored != expected or agent.stats.rejected:
        raise RuntimeError(f"cairn stored {stored} points, expected {expected}; rejected {agent.stats.rejected}")
    summarised = scalar(store.engine, "SELECT sum(count) FROM latest_metrics WHERE run_id = %s", run_id)
    if summarised != expected:
        raise RuntimeError(f"latest_metrics counts {summarised} points, expected {expected}")
    out = {"points": stored, "seconds": elapsed, "points_per_s": stored / elapsed, "commits": agent.stats.commits,
           "run_id": run_id}
    if profiler is not None:
        out["profile"] = profiler.output_text(unicode=False, color=False, show_all=False)
    return out


def bench_mlflow_e2e(uri: str, engine, steps: int, per_request: int = 1000) -> dict:  # noqa: ANN001
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    exp = client.create_experiment(f"bench-e2e-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(exp).info.run_id
    # Requests are built before the clock starts (this favours MLflow): only sending and committing is timed.
    ts = int(time.time() * 1000)
    values = step_values()
    metrics = []
    for step in range(steps):
        vals = next(values)
        metrics.extend(Metric(k, vals[k], ts, step) for k in KEYS)
    batches = [metrics[i : i + per_request] for i in range(0, len(metrics), per_request)]
    t0 = time.time()
    for batch in batches:
        client.log_batch(run_id, metrics=batch)
    elapsed = time.time() - t0
    stored = scalar(engine, "SELECT count(*) FROM metrics WHERE run_uuid = %s", run_id)
    if stored != len(metrics):
        raise RuntimeError(f"MLflow stored {stored} points, expected {len(metrics)}")
    return {"points": stored, "seconds": elapsed, "points_per_s": stored / elapsed, "requests": len(batches)}


def bench_tenancy(admin_url: str, workdir: Path, steps: int, poll_interval: float, rounds: int) -> dict:
    """(b) and (c) as the admin and as a tenant role, alternating ``rounds`` times; each rate, and the
    cost of the isolation from the medians."""
    import secrets

    from cairn.store import TrackingStore
    from cairn.tenancy.database import provision_database

    stores = {"admin": TrackingStore(admin_url),
              "tenant": TrackingStore(provision_database(admin_url, "bench-team", secrets.token_urlsafe(18)))}
    rates: dict[tuple[str, str], list[float]] = {(kind, who): [] for kind in ("e2e", "copy") for who in stores}
    for i in range(rounds):
        for who in (("admin", "tenant") if i % 2 == 0 else ("tenant", "admin")):
            checkpoint(stores["admin"].engine)
            shutil.rmtree(workdir / "e2e-run", ignore_errors=True)
            rates["e2e", who].append(bench_cairn_e2e(stores[who], workdir, steps, poll_interval, False)["points_per_s"])
            checkpoint(stores["admin"].engine)
            rates["copy", who].append(bench_raw_copy(stores[who], steps)["points_per_s"])
    cost = {kind: 1 - statistics.median(rates[kind, "tenant"]) / statistics.median(rates[kind, "admin"])
            for kind in ("e2e", "copy")}
    return {"rates": rates, "cost": cost}


# -- (c) raw COPY -------------------------------------------------------------------------------
def bench_raw_copy(store, steps: int) -> dict:  # noqa: ANN001
    run_id = store.create_run(experiment="bench-raw-copy")
    data = copy_rows_text(run_id, steps, KEYS, int(time.time() * 1000))
    raw = store.engine.raw_connection()
    try:
        t0 = time.time()
        with raw.cursor() as cur:
            cur.copy_expert(COPY_SQL, io.StringIO(data), size=1 << 20)
        raw.commit()
        elapsed = time.time() - t0
    finally:
        raw.close()
    stored = scalar(store.engine, "SELECT count(*) FROM metrics WHERE run_id = %s", run_id)
    if stored != steps * len(KEYS):
        raise RuntimeError(f"raw COPY stored {stored} rows, expected {steps * len(KEYS)}")
    return {"points": stored, "seconds": elapsed, "points_per_s": stored / elapsed}


# -- (d) history reads --------------------------------------------------------------------------
def read_history(url: str, run_id: str, points: int, repeats: int, results) -> None:  # noqa: ANN001
    """Time the reads in a fresh process, as the CLI would make them.

    The bench process has MLflow and everything before loaded; every garbage collection pass
    while a million points are built would walk all of that too.
    """
    from cairn.store import TrackingStore

    store = TrackingStore(url)
    full, down = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        hist = store.metric_history(run_id, "loss")
        full.append(time.perf_counter() - t0)
        if len(hist) != points:
            raise RuntimeError(f"metric_history returned {len(hist)} points, expected {points}")
        del hist
        t0 = time.perf_counter()
        buckets = store.downsampled_history(run_id, "loss", 1000)
        down.append(time.perf_counter() - t0)
        if not 0 < len(buckets) <= 1000 or sum(b.count for b in buckets) != points:
            raise RuntimeError(f"downsampled_history returned {len(buckets)} buckets")
    results.put({"points": points, "full_s": statistics.median(full), "full_all": full,
                 "down_s": statistics.median(down), "down_all": down})


def bench_history(store, url: str, points: int, repeats: int = 3) -> dict:  # noqa: ANN001
    """The series is stored as the agent stores it (``ingest_batch``, 20,000 points a batch), so that
    the summaries ``downsampled_history`` reads are kept too."""
    from cairn.store.entities import IngestBatch, MetricPoint

    run_id = store.create_run(experiment="bench-history")
    draw = random.Random(SEED + 1).random
    ts_ms = int(time.time() * 1000)
    for start in range(0, points, 20_000):
        end = min(points, start + 20_000)
        batch = IngestBatch(metrics=[MetricPoint("loss", step, ts_ms, draw()) for step in range(start, end)])
        store.ingest_batch(run_id, "metrics.jsonl", batch, offset=end, lines=end)
    # What autovacuum does after a load this size; done now so that it does not run beside the reads.
    run_outside_transaction(store.engine, "VACUUM ANALYZE metrics")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    reader = ctx.Process(target=read_history, args=(url, run_id, points, repeats, results))
    reader.start()
    out = results.get(timeout=600)
    reader.join()
    return out


# -- report -------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(r: dict) -> str:
    a_c, a_s, a_a = r["cairn_log"], r["mlflow_sync"], r["mlflow_async"]
    b_c, b_m, c = r["cairn_e2e"], r["mlflow_e2e"], r["raw_copy"]
    d = r["history"]

    def call(name: str, a: dict, fmt: str) -> str:
        return row(name, f"{a['n']:,}", *(format(a[k], fmt) for k in ("p50_us", "p99_us", "mean_us", "amortised_us")))

    def rate(name: str, b: dict) -> str:
        return row(name, f"{b['points']:,}", f"{b['seconds']:.2f}", f"{b['points_per_s']:,.0f}")

    lines = [
        "(a) cost of one call with 10 scalars (µs)",
        "",
        row("call", "calls", "p50", "p99", "mean", "amortised"),
        "|---|---:|---:|---:|---:|---:|",
        call("`cairn.log`", a_c, ".2f"),
        call("`mlflow.log_metrics` (synchronous)", a_s, ",.0f"),
        call("`mlflow.log_metrics(synchronous=False)`", a_a, ",.1f"),
        "",
        (
            "amortised = wall time of the whole loop, including serialisation (cairn: the final flush; MLflow "
            f"async: waiting for its queue to drain, {a_a['drain_s']:.2f} s), divided by the calls."
        ),
        "",
        "(b, c) committed points/s on the same PostgreSQL",
        "",
        row("path", "points", "seconds", "points/s"),
        "|---|---:|---:|---:|",
        rate("cairn SDK → agent → PostgreSQL", b_c),
        rate("MLflow server, `log_batch` × 1,000", b_m),
        rate("raw COPY of the same rows (ceiling)", c),
        "",
        f"(d) history of one key, {d['points']:,} points (median of {len(d['full_all'])})",
        "",
        row("read", "seconds"),
        "|---|---:|",
        row("`metric_history`", f"{d['full_s']:.3f}"),
        row("`downsampled_history(…, 1000)`", f"{d['down_s']:.3f}"),
        "",
    ]
    ratio_a = a_c["p50_us"] / a_s["p50_us"]
    ratio_b = b_c["points_per_s"] / b_m["points_per_s"]
    ratio_c = b_c["points_per_s"] / c["points_per_s"]
    size_note = "" if d["points"] >= 1_000_000 else f" (measured at {d['points']:,} points; the target is for 1M)"
    lines += [
        "Targets",
        "",
        row("target", "measured", "result"),
        "|---|---:|---|",
        row("(a) cairn.log p50 ≤ 1/100 of mlflow sync p50", f"1/{1 / ratio_a:,.0f}", verdict(ratio_a <= 0.01)),
        row("(b) cairn e2e ≥ 10× MLflow", f"{ratio_b:,.1f}×", verdict(ratio_b >= 10)),
        row("(b) cairn e2e ≥ 1/3 of raw COPY", f"{ratio_c:.2f} (1/{1 / ratio_c:.1f})", verdict(ratio_c >= 1 / 3)),
        row(f"(d) 1M-point history ≤ 2 s{size_note}", f"{d['full_s']:.2f} s", verdict(d["full_s"] <= 2.0)),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of under a minute")
    p.add_argument("--points", type=int, help="points for the cairn end-to-end and raw COPY runs (default 1,000,000)")
    p.add_argument("--mlflow-points", type=int, help="points sent to the MLflow server (default 200,000)")
    p.add_argument("--log-calls", type=int, help="timed cairn.log calls (default 200,000)")
    p.add_argument("--mlflow-calls", type=int, help="timed synchronous mlflow.log_metrics calls (default 1,000)")
    p.add_argument("--mlflow-async-calls", type=int, help="timed synchronous=False calls (default 2,000)")
    p.add_argument("--history-points", type=int, help="points in the history read (default 1,000,000)")
    p.add_argument("--poll-interval", type=float, default=0.5, help="agent poll interval when idle (its default)")
    p.add_argument("--profile-agent", action="store_true", help="profile the agent with pyinstrument and print it")
    p.add_argument("--tenancy", action="store_true", help="only (b), as the schema owner and as a tenant role")
    p.add_argument("--rounds", type=int, default=3, help="with --tenancy: runs of each (alternating)")
    args = p.parse_args(argv)
    quick = {"points": 50_000, "mlflow_points": 20_000, "log_calls": 20_000, "mlflow_calls": 100,
             "mlflow_async_calls": 500, "history_points": 100_000}
    full = {"points": 1_000_000, "mlflow_points": 200_000, "log_calls": 200_000, "mlflow_calls": 1_000,
            "mlflow_async_calls": 2_000, "history_points": 1_000_000}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("points", "mlflow_points"):
        if getattr(args, name) % len(KEYS):
            p.error(f"--{name.replace('_', '-')} must be a multiple of {len(KEYS)} (10 scalars per step)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cairn.store import TrackingStore

    workdir = Path(tempfile.mkdtemp(prefix="cairn-bench-"))
    pg = Postgres()
    mlflow_server = None
    results: dict = {}
    began = time.time()

    def say(msg: str) -> None:
        print(f"[{time.time() - began:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        pg.start()
        cairn_url = pg.create_database("cairn")
        if args.tenancy:
            db.upgrade(db.get_engine(cairn_url))
            say(f"(b) as the schema owner and as a tenant role, {args.points:,} points x {args.rounds}")
            t = bench_tenancy(cairn_url, workdir, args.points // len(KEYS), args.poll_interval, args.rounds)
            print("| path | role | points/s (each run) |\n| --- | --- | --- |")
            for (kind, who), rates in t["rates"].items():
                print(f"| {kind} | {who} | {', '.join(f'{r:,.0f}' for r in rates)} |")
            for kind, cost in t["cost"].items():
                print(f"isolation cost, {kind} (medians): {cost:.1%} {verdict(cost <= 0.10)} (goal ≤ 10%)")
            return 0
        mlflow_url = pg.create_database("mlflow")
        engine = db.get_engine(cairn_url)
        db.upgrade(engine)
        store = TrackingStore(engine=engine)
        mlflow_engine = db.get_engine(mlflow_url)
        say(f"PostgreSQL on 127.0.0.1:{pg.port}; starting the MLflow server")
        mlflow_server = MlflowServer(mlflow_url, workdir).start()
        say(f"MLflow server at {mlflow_server.uri}")

        say(f"(a) cairn.log x {args.log_calls:,}")
        results["cairn_log"] = bench_cairn_log(workdir, args.log_calls)
        say(f"(a) mlflow.log_metrics synchronous x {args.mlflow_calls:,}")
        results["mlflow_sync"] = bench_mlflow_log(mlflow_server.uri, args.mlflow_calls, synchronous=True)
        say(f"(a) mlflow.log_metrics synchronous=False x {args.mlflow_async_calls:,}")
        results["mlflow_async"] = bench_mlflow_log(mlflow_server.uri, args.mlflow_async_calls, synchronous=False)
        n = scalar(mlflow_engine, "SELECT count(*) FROM metrics WHERE run_uuid = %s", results["mlflow_async"]["run_id"])
        if n != (args.mlflow_async_calls + 20) * len(KEYS):
            raise RuntimeError(f"MLflow async run holds {n} points after flush_async_logging")

        checkpoint(engine)
        say(f"(c) raw COPY of {args.points:,} rows")
        results["raw_copy"] = bench_raw_copy(store, args.points // len(KEYS))
        checkpoint(engine)
        say(f"(b) cairn SDK -> agent -> PostgreSQL, {args.points:,} points")
        results["cairn_e2e"] = bench_cairn_e2e(store, workdir, args.points // len(KEYS), args.poll_interval,
                                               args.profile_agent)
        checkpoint(engine)
        say(f"(b) MLflow log_batch, {args.mlflow_points:,} points")
        results["mlflow_e2e"] = bench_mlflow_e2e(mlflow_server.uri, mlflow_engine, args.mlflow_points // len(KEYS))
        say(f"(d) history of {args.history_points:,} points")
        results["history"] = bench_history(store, cairn_url, args.history_points)
        say("done")
    finally:
        if mlflow_server is not None:
            mlflow_server.stop()
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)

    if args.profile_agent:
        print(results["cairn_e2e"]["profile"])
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
