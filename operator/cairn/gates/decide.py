"""The gate's decision: does the candidate beat the baseline on paired examples, with every guard and
slice holding? Pure: examples in, a Verdict out."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cairn.gates.model import Comparison, Example, GateSpec, Verdict
from cairn.gates.stats import bootstrap_mean_deltas, is_binary, mcnemar_p_value, percentile_bounds


@dataclass(frozen=True)
class _Test:
    """What one comparison must show: an improvement above `threshold` (strictly, for the primary metric)
    or at least `threshold` (a guard or slice, whose threshold is minus its tolerance)."""

    name: str
    direction: str
    threshold: float
    strict: bool


def _value(example: Example, metric: str, side: str) -> float:
    if metric not in example.metrics:
        known = ", ".join(sorted(map(str, example.metrics))) or "none"
        raise ValueError(f"{side} example {example.id!r} has no metric {metric!r} (it has: {known})")
    value = example.metrics[metric]
    # The first check is only a fast path: numbers.Real's isinstance is slow and most values are floats.
    if not isinstance(value, (float, int)) and not isinstance(value, numbers.Real):
        raise ValueError(f"{side} example {example.id!r}: metric {metric!r} is not a number: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{side} example {example.id!r}: metric {metric!r} is {value!r}, not a finite number")
    return float(value)


def _by_id(examples: Sequence[Example], side: str,
           metrics: Sequence[str]) -> dict[str, tuple[Example, tuple[float, ...]]]:
    """Each example by id, with its values of `metrics` in that order."""
    by_id: dict[str, tuple[Example, tuple[float, ...]]] = {}
    for position, example in enumerate(examples):
        if not isinstance(example, Example):
            raise ValueError(f"{side} item {position} is a {type(example).__name__}, not an Example")
        if not isinstance(example.id, str) or not example.id:
            raise ValueError(f"{side} item {position} has no example id (got {example.id!r})")
        if example.id in by_id:
            raise ValueError(f"{side} example id {example.id!r} appears more than once")
        if not isinstance(example.metrics, Mapping):
            raise ValueError(f"{side} example {example.id!r}: metrics must be a mapping of name to number")
        if not isinstance(example.slices, (tuple, list)) or not all(isinstance(s, str) for s in example.slices):
            raise ValueError(f"{side} example {example.id!r}: slices must be a tuple of labels")
        by_id[example.id] = example, tuple(_value(example, metric, side) for metric in metrics)
    return by_id


def _membership(pairs: Sequence[tuple[Example, Example]], labels: Sequence[str]) -> np.ndarray:
    """Rows: paired examples; columns: declared slices. Both sides must agree on which declared slices
    an example belongs to."""
    member = np.zeros((len(pairs), len(labels)), dtype=bool)
    for row, (candidate, baseline) in enumerate(pairs):
        for column, label in enumerate(labels):
            inside = label in candidate.slices
            if inside != (label in baseline.slices):
                raise ValueError(f"example {candidate.id!r} is in slice {label!r} for "
                                 f"{'the candidate' if inside else 'the baseline'} only")
            member[row, column] = inside
    return member


def _compare(test: _Test, candidate: np.ndarray, baseline: np.ndarray, means: np.ndarray, spec: GateSpec,
             p_value: float | None = None) -> Comparison:
    n = len(candidate)
    delta_low, delta_high = (float(bound) for bound in percentile_bounds(means, spec.confidence))
    delta = float(candidate.mean() - baseline.mean())
    sign = 1.0 if test.direction == "higher" else -1.0
    gain, gain_low, gain_high = sign * delta, *sorted((sign * delta_low, sign * delta_high))
    level = f"{spec.confidence:.0%} confidence"
    mcnemar = "" if p_value is None else f", McNemar p = {p_value:.4g}"
    shown = (f"{test.name}: improvement {gain:.4g} (from {gain_low:.4g} to {gain_high:.4g} at {level}, "
             f"{n} paired examples{mcnemar})")
    cleared = gain_low > test.threshold if test.strict else gain_low >= test.threshold
    missed = gain_high <= test.threshold if test.strict else gain_high < test.threshold
    alpha = 1 - spec.confidence
    wanted = (f"more than {test.threshold:.4g}" if test.strict
              else f"at least {test.threshold:.4g} (worse by no more than the tolerance)")
    if n < spec.min_examples:
        decision = "not_enough_evidence"
        reason = f"{test.name}: only {n} paired examples, fewer than {spec.min_examples}"
    elif missed:
        decision, reason = "fail", f"{shown}; it has to be {wanted} and is not"
    elif not cleared:
        decision, reason = "not_enough_evidence", f"{shown}; cannot tell whether it is {wanted}"
    elif p_value is not None and p_value > alpha:
        decision, reason = "not_enough_evidence", f"{shown}; McNemar's exact test is above {alpha:.4g}"
    else:
        decision, reason = "pass", f"{shown}; {wanted}"
    return Comparison(name=test.name, candidate=float(candidate.mean()), baseline=float(baseline.mean()),
                      delta=delta, ci_low=delta_low, ci_high=delta_high, n=n, passed=decision == "pass",
                      reason=reason, p_value=p_value, direction=test.direction, threshold=test.threshold,
                      decision=decision)


def _unpaired_reason(spec: GateSpec, paired: int, only_candidate: int, only_baseline: int) -> str | None:
    total = paired + only_candidate + only_baseline
    fraction = (only_candidate + only_baseline) / total
    if fraction <= spec.max_unpaired_fraction:
        return None
    return (f"{only_candidate + only_baseline} of {total} example ids ({fraction:.2%}) were evaluated by one "
            f"model only ({only_candidate} candidate, {only_baseline} baseline), more than the allowed "
            f"{spec.max_unpaired_fraction:.2%}")


def decide(spec: GateSpec, candidate: Sequence[Example], baseline: Sequence[Example]) -> Verdict:
    """Pair the examples by id and decide; docs/evaluation-gates.md explains the procedure.

    Raises ValueError naming the example and metric for unusable input (a missing metric, a value that
    is not a finite number, a duplicate id, no example in both, a declared slice without examples)."""
    metrics = (spec.primary, *(guard.metric for guard in spec.guards))
    candidates = _by_id(candidate, "candidate", metrics)
    baselines = _by_id(baseline, "baseline", metrics)
    # Sorted ids: the same examples give the same verdict whatever order they arrive in.
    paired_ids = sorted(candidates.keys() & baselines.keys())
    if not paired_ids:
        raise ValueError("no example id was evaluated by both the candidate and the baseline")
    pairs = [(candidates[i][0], baselines[i][0]) for i in paired_ids]
    candidate_values = np.array([candidates[i][1] for i in paired_ids])
    baseline_values = np.array([baselines[i][1] for i in paired_ids])
    deltas = candidate_values - baseline_values
    member = _membership(pairs, spec.slices)
    for column, label in enumerate(spec.slices):
        if not member[:, column].any():
            raise ValueError(f"slice {label!r} has no example evaluated by both models")

    rng = np.random.default_rng(spec.seed)
    means = bootstrap_mean_deltas(deltas, spec.resamples, rng)
    binary = is_binary(candidate_values[:, 0]) and is_binary(baseline_values[:, 0])
    sign = 1.0 if spec.direction == "higher" else -1.0
    primary = _compare(_Test(spec.primary, spec.direction, spec.min_improvement, strict=True),
                       candidate_values[:, 0], baseline_values[:, 0], means[:, 0], spec,
                       p_value=mcnemar_p_value(sign * deltas[:, 0]) if binary else None)
    guards = tuple(
        _compare(_Test(guard.metric, guard.direction, -guard.tolerance, strict=False),
                 candidate_values[:, column], baseline_values[:, column], means[:, column], spec)
        for column, guard in enumerate(spec.guards, start=1))
    slices = []
    for column, label in enumerate(spec.slices):
        rows = member[:, column]
        slice_means = bootstrap_mean_deltas(deltas[rows, :1], spec.resamples, rng)
        slices.append(_compare(_Test(label, spec.direction, -spec.slice_tolerance, strict=False),
                               candidate_values[rows, 0], baseline_values[rows, 0], slice_means[:, 0], spec))

    only_candidate, only_baseline = len(candidates) - len(pairs), len(baselines) - len(pairs)
    unpaired = _unpaired_reason(spec, len(pairs), only_candidate, only_baseline)
    comparisons = (primary, *guards, *slices)
    failed = [c.reason for c in comparisons if c.decision == "fail"]
    undecided = [c.reason for c in comparisons if c.decision == "not_enough_evidence"]
    if unpaired or failed:
        decision, reasons = "fail", [*([unpaired] if unpaired else []), *failed]
    elif undecided:
        decision, reasons = "not_enough_evidence", undecided
    else:
        decision = "pass"
        reasons = [primary.reason, f"{len(guards)} guard(s) and {len(slices)} slice(s) held"]
    return Verdict(passed=decision == "pass", decision=decision, reason="; ".join(reasons), primary=primary,
                   guards=guards, slices=tuple(slices), paired=len(pairs), unpaired_candidate=only_candidate,
                   unpaired_baseline=only_baseline, confidence=spec.confidence, resamples=spec.resamples,
                   seed=spec.seed)
