"""`cairn server` reads against MLflow's server on the same data, printed side by side.

One throwaway PostgreSQL holds two databases: ``cairn`` and ``mlflow``. Both get N runs × 20 params ×
5 metrics (default 10,000) and one run with a 1,000,000-point key. Then, through each real HTTP server:

- the runs table: a page of 100 runs filtered by a param and a metric, sorted by a metric (and a second
  query sorted by a param); Cairn ``GET /api/v1/namespaces/default/runs``, MLflow ``runs/search``;
- the curve: the 1M-point key downsampled to 2,000 points; Cairn ``.../metrics/{key}?max_points=2000``,
  MLflow ``metrics/get-history-bulk-interval`` (what its UI draws charts from, ``max_results=2000``).

Cairn's store is filled as the ingest agent fills it for the curve (``ingest_batch``, 20,000 points a
batch, so the summaries are kept as in production) and with bulk inserts for the 10,000 runs' rows.
MLflow's is filled through its REST API (``log-batch``). Without MLflow installed the bench says so and
reports Cairn's figures alone. ``--mlflow-python`` names an interpreter that has mlflow (a venv of its
own, so that mlflow's pins never touch Cairn's environment).

    python3 -m bench.server [--runs 10000] [--points 1000000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

for _var in [v for v in os.environ if v.startswith("CAIRN_")]:  # nothing of another setup leaks in
    del os.environ[_var]

from bench.servers import Postgres, free_port  # noqa: E402

QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
OPTIMIZERS = ("adam", "sgd", "adamw", "lion")
METRICS = ("val_acc", "val_loss", "train_loss", "lr_final", "throughput")
PARAMS = ("optimizer", "lr") + tuple(f"p{i}" for i in range(18))
CURVE_KEY = "loss"
BATCH_POINTS = 20_000
SEED = 20261129


def run_values(i: int) -> tuple[dict[str, str], dict[str, float]]:
    rng = random.Random(SEED + i)
    params = {"optimizer": OPTIMIZERS[i % len(OPTIMIZERS)], "lr": f"{rng.choice([1e-4, 3e-4, 1e-3, 3e-3]):g}"}
    params.update({f"p{k}": str(rng.randrange(1000)) for k in range(18)})
    return params, {m: rng.random() for m in METRICS}


def curve(points: int) -> list[tuple[int, int, float]]:
    rng = random.Random(SEED)
    t0 = 1_700_000_000_000
    return [(s, t0 + s, 1.0 / (1 + s / 1000) + rng.random() * 0.01) for s in range(points)]


def timed(fetch, repeats: int) -> dict:  # noqa: ANN001
    fetch()  # warm: connection pools, caches, the first query plan
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fetch()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"p50": statistics.median(times), "p95": times[min(len(times) - 1, int(len(times) * 0.95))]}


def get_json(url: str, data: dict | None = None) -> dict:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


# -- Cairn --------------------------------------------------------------------------------------
def fill_cairn(url: str, runs: int, points: int) -> tuple[str, float]:
    """The runs' rows in bulk, then the curve through ``ingest_batch``; the curve's run id and ingest seconds."""
    from sqlalchemy import insert

    from cairn.store import TrackingStore, db
    from cairn.store.entities import IngestBatch, MetricPoint
    from cairn.store.models import Experiment, LatestMetric, Param, Run

    db.upgrade(db.get_engine(url))
    store = TrackingStore(url)
    now = dt.datetime.now(dt.timezone.utc)
    with store.engine.begin() as conn:
        exp_id = conn.execute(insert(Experiment).values(name="bench", created_at=now)
                              .returning(Experiment.id)).scalar_one()
        for start in range(0, runs, 1000):
            run_rows, param_rows, metric_rows = [], [], []
            for i in range(start, min(runs, start + 1000)):
                rid = uuid.UUID(int=random.Random(SEED - i).getrandbits(128), version=4)
                params, metrics = run_values(i)
                t = now - dt.timedelta(minutes=runs - i)
                run_rows.append({"id": rid, "name": f"run-{i}", "experiment_id": exp_id, "status": "FINISHED",
                                 "start_time": t, "end_time": t, "created_at": t, "attempts": 1})
                param_rows += [{"run_id": rid, "key": k, "value": json.dumps(v)} for k, v in params.items()]
                metric_rows += [{"run_id": rid, "key": k, "step": 100, "timestamp_ms": 0, "value": v, "min_value": v,
                                 "max_value": v, "count": 1} for k, v in metrics.items()]
            conn.execute(insert(Run), run_rows)
            conn.execute(insert(Param), param_rows)
            conn.execute(insert(LatestMetric), metric_rows)
    curve_run = store.create_run("bench-curve", name="curve")
    pts = [MetricPoint(CURVE_KEY, s, ts, v) for s, ts, v in curve(points)]
    t0 = time.perf_counter()
    for i in range(0, len(pts), BATCH_POINTS):
        end = min(len(pts), i + BATCH_POINTS)
        store.ingest_batch(curve_run, "metrics.jsonl", IngestBatch(metrics=pts[i:end]), offset=end, lines=end)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return curve_run, time.perf_counter() - t0


def bench_cairn(url: str, curve_run: str, runs: int, repeats: int, workdir: Path) -> dict:
    port = free_port()
    log = workdir / "cairn-server.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "operator")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cairn", "server", "--database-url", url, "--port", str(port),
                                 "--auth", "none"], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_http(f"{base}/healthz", proc, log)
        by_metric = f"{base}/namespaces/default/runs?" + urllib.parse.urlencode(
            [("filter", "params.optimizer = adam"), ("filter", "metrics.val_acc >= 0.5"),
             ("order_by", "metrics.val_acc desc"), ("page_size", "100")])
        by_param = f"{base}/namespaces/default/runs?" + urllib.parse.urlencode(
            [("filter", "metrics.val_loss < 0.5"), ("order_by", "params.p3 asc"), ("page_size", "100")])
        down = f"{base}/namespaces/default/runs/{curve_run}/metrics/{CURVE_KEY}?max_points=2000"
        page = get_json(by_metric)
        expected = sum(1 for i in range(runs) if run_values(i)[0]["optimizer"] == "adam"
                       and run_values(i)[1]["val_acc"] >= 0.5)
        if page["total"] != expected or len(page["runs"]) != min(100, expected):
            raise RuntimeError(f"Cairn's runs page has total {page['total']}, expected {expected}")
        points = get_json(down)["points"]
        if not 0 < len(points) <= 2000:
            raise RuntimeError(f"Cairn's curve has {len(points)} points")
        return {"runs_by_metric": timed(lambda: get_json(by_metric), repeats),
                "runs_by_param": timed(lambda: get_json(by_param), repeats),
                "curve_2000": timed(lambda: get_json(down), repeats), "curve_points": len(points)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- MLflow -------------------------------------------------------------------------------------
def mlflow_python(given: str | None) -> str | None:
    for python in [given] if given else [sys.executable]:
        found = subprocess.run([python, "-c", "import mlflow"], capture_output=True)
        if found.returncode == 0:
            return python
    return None


def fill_mlflow(api: str, runs: int, points: int) -> tuple[str, str]:
    exp = get_json(f"{api}/experiments/create", {"name": "bench"})["experiment_id"]

    def one(i: int) -> None:
        params, metrics = run_values(i)
        rid = get_json(f"{api}/runs/create", {"experiment_id": exp, "run_name": f"run-{i}",
                                              "start_time": 1_700_000_000_000 + i})["run"]["info"]["run_id"]
        get_json(f"{api}/runs/log-batch", {
            "run_id": rid, "params": [{"key": k, "value": v} for k, v in params.items()],
            "metrics": [{"key": k, "value": v, "timestamp": 0, "step": 100} for k, v in metrics.items()]})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(runs)))
    curve_run = get_json(f"{api}/runs/create", {"experiment_id": exp, "run_name": "curve"})["run"]["info"]["run_id"]
    pts = curve(points)

    def chunk(i: int) -> None:
        get_json(f"{api}/runs/log-batch", {"run_id": curve_run, "metrics": [
            {"key": CURVE_KEY, "value": v, "timestamp": ts, "step": s} for s, ts, v in pts[i:i + 1000]]})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(chunk, range(0, len(pts), 1000)))
    return exp, curve_run


def bench_mlflow(python: str, url: str, runs: int, points: int, repeats: int, workdir: Path) -> dict:
    port = free_port()
    log = workdir / "mlflow-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, "-m", "mlflow", "server", "--backend-store-uri", url, "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1", "--no-serve-artifacts",
                                 "--default-artifact-root", str(workdir / "mlflow-artifacts")],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **QUIET_ENV})
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api/2.0/mlflow"
    try:
        wait_http(f"{base}/health", proc, log, timeout=300)
        t0 = time.perf_counter()
        exp, curve_run = fill_mlflow(api, runs, points)
        fill_s = time.perf_counter() - t0
        search = {"experiment_ids": [exp], "max_results": 100,
                  "filter": "params.optimizer = 'adam' and metrics.val_acc >= 0.5",
                  "order_by": ["metrics.val_acc DESC"]}
        by_param = {"experiment_ids": [exp], "max_results": 100, "filter": "metrics.val_loss < 0.5",
                    "order_by": ["params.p3 ASC"]}
        down = f"{base}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?" + urllib.parse.urlencode(
            {"run_ids": curve_run, "metric_key": CURVE_KEY, "max_results": 2000})
        found = get_json(f"{api}/runs/search", search).get("runs", [])
        if len(found) != 100:
            raise RuntimeError(f"MLflow's search returned {len(found)} runs")
        return {"fill_s": fill_s,
                "runs_by_metric": timed(lambda: get_json(f"{api}/runs/search", search), repeats),
                "runs_by_param": timed(lambda: get_json(f"{api}/runs/search", by_param), repeats),
                "curve_2000": timed(lambda: get_json(down), repeats),
                "curve_points": len(get_json(down).get("metrics", []))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def report(cairn: dict, mlflow: dict | None) -> None:
    print("\n| read | Cairn p50 ms | Cairn p95 ms | MLflow p50 ms | MLflow p95 ms | MLflow / Cairn (p50) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, label in (("runs_by_metric", "runs page: param + metric filter, sort by metric"),
                        ("runs_by_param", "runs page: metric filter, sort by param"),
                        ("curve_2000", "1M-point key downsampled to 2,000")):
        c = cairn[name]
        m = mlflow[name] if mlflow else None
        cells = [f"{c['p50'] * 1000:.1f}", f"{c['p95'] * 1000:.1f}"]
        cells += ([f"{m['p50'] * 1000:.1f}", f"{m['p95'] * 1000:.1f}", f"{m['p50'] / c['p50']:.1f}×"] if m
                  else ["-"] * 3)
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--mlflow-python", help="an interpreter with mlflow installed (default: this one)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cairn-bench-server-"))
    pg = Postgres()
    pg.start()
    try:
        url = pg.create_database("cairn")
        t0 = time.perf_counter()
        curve_run, ingest_s = fill_cairn(url, args.runs, args.points)
        print(f"Cairn: filled {args.runs} runs and a {args.points}-point key in {time.perf_counter() - t0:.1f} s "
              f"(the key through ingest_batch with summaries: {ingest_s:.1f} s, "
              f"{args.points / ingest_s:,.0f} points/s)")
        cairn = bench_cairn(url, curve_run, args.runs, args.repeats, workdir)
        python = mlflow_python(args.mlflow_python)
        mlflow = None
        if python is None:
            print("MLflow not installed: pip install mlflow")
        else:
            mlflow = bench_mlflow(python, pg.create_database("mlflow"), args.runs, args.points, args.repeats,
                                  workdir)
            print(f"MLflow: filled through its REST API in {mlflow['fill_s']:.1f} s")
        print(json.dumps({"cairn": cairn, "mlflow": mlflow}, indent=1))
        report(cairn, mlflow)
    finally:
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
