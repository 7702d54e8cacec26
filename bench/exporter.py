"""How long the sidecar takes to render /metrics with 100 live keys (target: at most 50 ms).

    python3 -m bench.exporter [--keys 100] [--scrapes 200]     # from the repository root

Times full HTTP scrapes of the sidecar's exporter (prometheus_client's server, as in the pod)
while a thread keeps feeding new points, the way the agent does during training.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import urllib.request

from cairn.agent.exporter import LiveState, serve
from bench.servers import free_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--scrapes", type=int, default=200)
    args = ap.parse_args()
    keys = [f"metric_{i:03d}" for i in range(args.keys)]
    state = LiveState(frozenset(keys))  # the per-run cap is lifted here to measure the stated size
    port = free_port()
    serve(state, {"namespace": "bench", "experiment": "bench", "run": "r", "trainingrun": "bench"}, port,
          addr="127.0.0.1")
    stop = threading.Event()

    def feed() -> None:
        step = 0
        while not stop.is_set():
            state.observe([(k, step, 0, step * 0.001) for k in keys])
            step += 1
            time.sleep(0.001)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(0.2)
    times, size = [], 0
    for _ in range(args.scrapes):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            size = len(r.read())
        times.append(time.perf_counter() - t0)
    stop.set()
    times.sort()
    p50, p99 = statistics.median(times) * 1000, times[int(0.99 * (len(times) - 1))] * 1000
    print(f"/metrics with {args.keys} live keys ({size} bytes), {args.scrapes} scrapes while points arrive:")
    print(f"  p50 {p50:.2f} ms   p99 {p99:.2f} ms   target 50 ms: {'PASS' if p99 <= 50 else 'MISS'} (p99 / target {p99 / 50:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
