"""The statistics behind a gate: a paired bootstrap of mean differences and McNemar's exact test."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

# Example indices drawn per chunk of resamples: bounds the working memory (8 bytes each) for any sample size;
# chunks that fit in the CPU cache run about twice as fast as larger ones.
CHUNK_DRAWS = 500_000


def bootstrap_mean_deltas(deltas: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Resample the examples (rows of `deltas`, one column per metric) with replacement `resamples` times
    and return each resample's column means, shape (resamples, metrics). All metrics share the same
    resampled examples, so the pairing and the metrics' correlation are kept."""
    n, metrics = deltas.shape
    columns = np.ascontiguousarray(deltas.T)
    means = np.empty((resamples, metrics))
    rows = max(1, CHUNK_DRAWS // n)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        picks = rng.integers(0, n, size=(stop - start, n))
        for column in range(metrics):
            means[start:stop, column] = np.take(columns[column], picks).sum(axis=1) / n
    return means


def percentile_bounds(means: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the value the true mean exceeds, and the value it stays under, each at `confidence`."""
    low, high = np.quantile(means, [1 - confidence, confidence], axis=0)
    return low, high


def is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def mcnemar_p_value(gains: np.ndarray) -> float:
    """McNemar's exact one-sided test on paired 0/1 outcomes, `gains` being +1 where only the candidate
    did better, -1 where only the baseline did, 0 where they agree: the chance of at least this many
    candidate wins among the disagreements if either model were as likely to win each one."""
    wins = int((gains > 0).sum())
    disagreements = wins + int((gains < 0).sum())
    if disagreements == 0:
        return 1.0
    return float(binomtest(wins, disagreements, 0.5, alternative="greater").pvalue)
