"""The compare page of the web UI with 10 runs x 100,000 points each, loaded and drawn in headless Chromium.

    python3 -m bench.ui_compare [--runs 10] [--points 100000] [--repeats 5]

Fills a throwaway local store (SQLite under a temporary CAIRN_HOME) through the store's ingest path,
starts ``cairn server`` on a free port, then opens ``#/compare`` in Debian's chromium (Selenium,
/usr/bin/chromedriver) with a full page load each time. The figure is the page's own clock when the
chart first drew (``data-drawn-ms``: milliseconds since navigation start, so HTML, bundle, API calls and
drawing together). Target: 1 s. Needs the built UI (hack/build-ui.sh).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cairn.rundir import RunStatus
from cairn.store import TrackingStore, db
from cairn.store.entities import IngestBatch, MetricPoint

REPO = Path(__file__).resolve().parent.parent
KEY = "train/loss"
BATCH = 20_000
TARGET_MS = 1000
WAIT_S = 300
# When the last API response of the page ended, on the page's clock.
LAST_RESPONSE_MS = ("return Math.max(...performance.getEntriesByType('resource')"
                    ".filter(e => e.name.includes('/api/v1/')).map(e => e.responseEnd))")


def fill(store: TrackingStore, runs: int, points: int) -> list[str]:
    rng = random.Random(7)
    ids = []
    t0_ms = 1_750_000_000_000
    for r in range(runs):
        run_id = store.create_run(experiment="ui-bench", name=f"bench-{r}", params={"lr": 0.01 * (r + 1), "seed": r})
        for start in range(0, points, BATCH):
            batch = IngestBatch(metrics=[
                MetricPoint(KEY, step, t0_ms + step * 100, 2.0 / (1 + step * (r + 1) / points) + rng.random() * 0.05)
                for step in range(start, min(points, start + BATCH))])
            store.ingest_batch(run_id, "bench", batch, offset=start + BATCH, lines=BATCH)
        store.finish_run(run_id, RunStatus.FINISHED, 0)
        ids.append(run_id)
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "api/v1/healthz", timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("cairn server did not start") from None
            time.sleep(0.2)


def browser() -> webdriver.Chrome:
    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not (REPO / "operator/cairn/server/ui/dist/index.html").is_file():
        raise SystemExit("the UI is not built: run hack/build-ui.sh")

    with tempfile.TemporaryDirectory(prefix="cairn-ui-bench-") as home:
        url = f"sqlite:///{Path(home) / 'cairn.db'}"
        db.upgrade(db.get_engine(url))
        t0 = time.perf_counter()
        ids = fill(TrackingStore(url), args.runs, args.points)
        print(f"filled {args.runs} runs x {args.points:,} points in {time.perf_counter() - t0:.1f} s")

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
        env.update(CAIRN_HOME=home, PYTHONPATH=str(REPO / "operator"))
        server_log = open(Path(home) / "server.log", "w+")  # noqa: SIM115 - read back on failure, closed below
        server = subprocess.Popen([sys.executable, "-m", "cairn", "server", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=server_log, stderr=subprocess.STDOUT)
        driver = None
        try:
            base = f"http://127.0.0.1:{port}/"
            wait_healthy(base, server)
            driver = browser()
            query = "&".join(f"run={i}" for i in ids) + f"&key={KEY}"
            figures, after_data = [], []
            for repeat in range(args.repeats + 1):  # the first load warms the server's and the browser's caches
                driver.get(f"{base}?load={repeat}#/compare/default?{query}")
                chart = WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, ".chart[data-drawn-ms], .error"))[0]
                if "error" in chart.get_attribute("class"):
                    server_log.seek(0)
                    raise SystemExit(f"the compare page ({driver.current_url}) says: {chart.text}\n"
                                     f"server log:\n{server_log.read()[-1500:]}")
                series = int(chart.get_attribute("data-series"))
                assert series == args.runs, f"{series} series drawn, {args.runs} expected"
                if repeat:
                    drawn = int(chart.get_attribute("data-drawn-ms"))
                    figures.append(drawn)
                    after_data.append(drawn - driver.execute_script(LAST_RESPONSE_MS))
            points = int(chart.get_attribute("data-points"))
        finally:
            if driver is not None:
                driver.quit()
            server.terminate()
            server.wait(timeout=10)
            server_log.close()

    p50 = statistics.median(figures)
    print(f"compare page, {args.runs} runs x {args.points:,} points ({points:,} x values drawn after downsampling): "
          f"loaded and drawn in p50 {p50:.0f} ms, max {max(figures)} ms over {len(figures)} loads "
          f"(target {TARGET_MS} ms: {'met' if p50 <= TARGET_MS else 'missed'}); of which the browser's share after "
          f"the last curve arrived (parse, align, draw): p50 {statistics.median(after_data):.0f} ms")


if __name__ == "__main__":
    main()
