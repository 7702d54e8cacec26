"""How long the evaluation gate's paired bootstrap takes (target: 10,000 resamples of 10,000 examples in
under a second), next to scipy.stats.bootstrap computing the same interval on the same data.

    python3 -m bench.gates [--examples 10000] [--resamples 10000] [--repeats 3]   # from the repository root

Prints the best of --repeats wall-clock times of each, their ratio, and both intervals (they agree to
the bootstrap's own noise).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from cairn.gates.stats import bootstrap_mean_deltas, percentile_bounds

TARGET_S = 1.0
CONFIDENCE = 0.95


def best_of(repeats: int, fn) -> tuple[float, object]:  # noqa: ANN001
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    # Per-example differences of a 0/1 metric between two models that agree on 85% of the examples.
    rng = np.random.default_rng(0)
    deltas = rng.choice([-1.0, 0.0, 1.0], p=[0.06, 0.85, 0.09], size=(args.examples, 1))

    ours_s, means = best_of(args.repeats, lambda: bootstrap_mean_deltas(deltas, args.resamples,
                                                                       np.random.default_rng(1)))
    low, high = percentile_bounds(means, CONFIDENCE)
    scipy_s, result = best_of(args.repeats, lambda: stats.bootstrap(
        (deltas[:, 0],), np.mean, n_resamples=args.resamples, confidence_level=2 * CONFIDENCE - 1,
        method="percentile", vectorized=True, random_state=np.random.default_rng(1)))
    ci = result.confidence_interval
    print(f"paired bootstrap, {args.resamples:,} resamples of {args.examples:,} examples (best of {args.repeats}):")
    print(f"  cairn.gates          {ours_s:7.3f} s   interval [{low[0]:+.5f}, {high[0]:+.5f}]")
    print(f"  scipy.stats.bootstrap {scipy_s:6.3f} s   interval [{ci.low:+.5f}, {ci.high:+.5f}]")
    print(f"  ratio scipy / cairn.gates: {scipy_s / ours_s:.2f}")
    verdict = "PASS" if ours_s < TARGET_S else "FAIL"
    print(f"  target {TARGET_S:.1f} s: {verdict} (time / target {ours_s / TARGET_S:.2f})")
    return 0 if ours_s < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
