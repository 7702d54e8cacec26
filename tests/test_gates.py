"""The evaluation gate's decision procedure (cairn.gates) on simulated paired data with known effects,
plus its guards, slices, pairing, input errors and stored form. The simulations use 1,000 resamples per
comparison (the gate's default is 10,000) to keep the module fast; `pytest -s` prints the rates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from cairn.gates import Comparison, Example, GateSpec, Guard, Verdict, decide
from cairn.gates.stats import bootstrap_mean_deltas

SIMULATION_RESAMPLES = 1_000


def examples(values: dict[str, np.ndarray], slices: dict[str, np.ndarray] | None = None,
             prefix: str = "e") -> list[Example]:
    n = len(next(iter(values.values())))
    labels = slices or {}
    return [Example(id=f"{prefix}{i}", metrics={name: float(column[i]) for name, column in values.items()},
                    slices=tuple(label for label, inside in labels.items() if inside[i]))
            for i in range(n)]


def paired_accuracy(rng: np.random.Generator, n: int, both_right: float, only_baseline: float,
                    only_candidate: float) -> tuple[np.ndarray, np.ndarray]:
    """0/1 correctness of two models on the same n examples, with the given chances of each outcome pair;
    the true accuracy difference is only_candidate - only_baseline."""
    draw = rng.random(n)
    baseline = (draw < both_right + only_baseline).astype(float)
    candidate = ((draw < both_right) | ((draw >= both_right + only_baseline)
                                         & (draw < both_right + only_baseline + only_candidate))).astype(float)
    return candidate, baseline


def promotion_rate(spec: GateSpec, trials: int, make_data) -> float:
    rng = np.random.default_rng(2026)
    promoted = 0
    for trial in range(trials):
        candidate, baseline = make_data(rng)
        verdict = decide(GateSpec(**{**spec.__dict__, "seed": trial}),
                         examples({spec.primary: candidate}), examples({spec.primary: baseline}))
        promoted += verdict.passed
    return promoted / trials


def binomial_slack(rate: float, trials: int) -> float:
    """Three standard errors of an observed rate over `trials` comparisons."""
    return 3 * math.sqrt(rate * (1 - rate) / trials)


# --- the simulations from issue 14 ---

def test_no_true_accuracy_difference_promotes_at_most_one_minus_confidence():
    spec = GateSpec("correct", "higher", min_improvement=0.0, resamples=SIMULATION_RESAMPLES)
    rate = promotion_rate(spec, 1_000, lambda rng: paired_accuracy(rng, 200, 0.7, 0.05, 0.05))
    print(f"\nnull, accuracy, margin 0, 200 examples, 1,000 comparisons: promoted {rate:.3f}")
    assert rate <= 1 - spec.confidence


def test_no_true_difference_with_a_declared_margin_promotes_at_most_one_minus_confidence():
    spec = GateSpec("score", "higher", min_improvement=0.05, resamples=SIMULATION_RESAMPLES)
    rate = promotion_rate(spec, 1_000, lambda rng: (rng.exponential(1.0, 200), rng.exponential(1.0, 200)))
    print(f"\nnull, skewed continuous score, margin 0.05, 200 examples, 1,000 comparisons: promoted {rate:.3f}")
    assert rate <= 1 - spec.confidence


def test_a_continuous_metric_at_the_boundary_promotes_at_about_one_minus_confidence():
    # A true improvement exactly equal to the margin is the hardest null case: a level-0.05 test promotes
    # about 5% of the time, so the observed rate may sit a few standard errors either side of it.
    spec = GateSpec("score", "higher", min_improvement=0.1, resamples=SIMULATION_RESAMPLES)

    def at_the_margin(rng):
        shared = rng.normal(size=200)
        return shared + rng.exponential(1.0, 200) + 0.1, shared + rng.exponential(1.0, 200)

    rate = promotion_rate(spec, 1_000, at_the_margin)
    print(f"\ntrue improvement = margin, continuous, 200 examples, 1,000 comparisons: promoted {rate:.3f}")
    alpha = 1 - spec.confidence
    assert rate <= alpha + binomial_slack(alpha, 1_000)


def test_a_true_effect_twice_the_margin_is_promoted_in_most_comparisons():
    spec = GateSpec("correct", "higher", min_improvement=0.02, resamples=SIMULATION_RESAMPLES)
    rate = promotion_rate(spec, 200, lambda rng: paired_accuracy(rng, 1_500, 0.7, 0.01, 0.05))
    print(f"\naccuracy +0.04 with margin 0.02, 1,500 examples, 200 comparisons: promoted {rate:.3f}")
    assert rate >= 0.8


def test_the_bootstrap_resamples_whole_examples_and_keeps_every_metric_paired():
    """Speed is measured by `python3 -m bench.gates` (10,000 resamples of 10,000 examples, target 1 s)."""
    rng = np.random.default_rng(0)
    first = rng.normal(size=2_000)
    deltas = np.column_stack([first, 2 * first])  # the second metric moves with the first, example by example
    means = bootstrap_mean_deltas(deltas, 2_000, np.random.default_rng(1))
    assert means.shape == (2_000, 2)
    assert abs(means[:, 0].std() - first.std() / np.sqrt(2_000)) < 0.002
    assert np.allclose(means[:, 1], 2 * means[:, 0])  # the same examples drawn for both metrics


# --- the decision, case by case ---

def clear_win(rng: np.random.Generator, n: int = 1_000) -> tuple[np.ndarray, np.ndarray]:
    return paired_accuracy(rng, n, 0.7, 0.02, 0.12)


def test_a_clear_win_passes_and_every_number_is_reported():
    candidate, baseline = clear_win(np.random.default_rng(1))
    verdict = decide(GateSpec("correct", "higher", 0.02), examples({"correct": candidate}),
                     examples({"correct": baseline}))
    assert verdict.decision == "pass" and verdict.passed
    primary = verdict.primary
    assert primary.candidate == pytest.approx(candidate.mean()) and primary.baseline == pytest.approx(baseline.mean())
    assert primary.delta == pytest.approx(candidate.mean() - baseline.mean())
    assert 0.02 < primary.ci_low < primary.delta < primary.ci_high
    assert primary.n == verdict.paired == 1_000
    wins, losses = int(((candidate == 1) & (baseline == 0)).sum()), int(((candidate == 0) & (baseline == 1)).sum())
    assert primary.p_value == pytest.approx(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)
    assert f"{primary.delta:.4g}" in verdict.reason


def test_a_clearly_worse_candidate_fails():
    candidate, baseline = clear_win(np.random.default_rng(2))
    verdict = decide(GateSpec("correct", "higher", 0.0), examples({"correct": baseline}),
                     examples({"correct": candidate}))
    assert verdict.decision == "fail" and not verdict.passed
    assert verdict.primary.ci_high < 0


def test_identical_models_fail_the_primary_metric_and_hold_an_untouched_guard():
    correct = (np.random.default_rng(12).random(500) < 0.8).astype(float)
    latency = np.random.default_rng(13).normal(50, 5, 500)
    same = examples({"correct": correct, "latency_ms": latency})
    spec = GateSpec("correct", "higher", 0.0, guards=(Guard("latency_ms", "lower", tolerance=0.0),))
    verdict = decide(spec, same, same)
    assert (verdict.primary.ci_low, verdict.primary.ci_high, verdict.primary.p_value) == (0.0, 0.0, 1.0)
    assert verdict.primary.decision == "fail" and verdict.guards[0].decision == "pass"
    assert verdict.decision == "fail"


def test_lower_is_better_is_read_the_right_way_round():
    rng = np.random.default_rng(3)
    baseline = rng.normal(100, 5, 500)
    candidate = baseline - 3 + rng.normal(0, 1, 500)
    spec = GateSpec("latency_ms", "lower", min_improvement=1.0)
    assert decide(spec, examples({"latency_ms": candidate}), examples({"latency_ms": baseline})).decision == "pass"
    assert decide(spec, examples({"latency_ms": baseline}), examples({"latency_ms": candidate})).decision == "fail"


def test_not_enough_evidence_when_the_interval_straddles_the_margin():
    rng = np.random.default_rng(4)
    baseline = rng.normal(0, 1, 300)
    candidate = baseline + 0.05 + rng.normal(0, 1, 300)
    verdict = decide(GateSpec("score", "higher", 0.05), examples({"score": candidate}), examples({"score": baseline}))
    assert verdict.primary.ci_low < 0.05 < verdict.primary.ci_high
    assert verdict.decision == "not_enough_evidence" and not verdict.passed
    assert "cannot tell" in verdict.reason


def test_mcnemar_holds_back_a_win_the_bootstrap_alone_would_pass():
    # 4 wins, no losses among 40: every resample but a few keeps a win, yet p = 1/16 > 0.05.
    baseline = np.zeros(40)
    candidate = np.zeros(40)
    candidate[:4] = 1.0
    verdict = decide(GateSpec("correct", "higher", 0.0), examples({"correct": candidate}),
                     examples({"correct": baseline}))
    assert verdict.primary.ci_low > 0
    assert verdict.primary.p_value == pytest.approx(1 / 16)
    assert verdict.decision == "not_enough_evidence" and "McNemar" in verdict.reason
    candidate[4] = 1.0
    passed = decide(GateSpec("correct", "higher", 0.0), examples({"correct": candidate}),
                    examples({"correct": baseline}))
    assert passed.primary.p_value == pytest.approx(1 / 32) and passed.decision == "pass"


def test_too_few_examples_is_not_enough_evidence():
    candidate, baseline = np.ones(20), np.zeros(20)
    verdict = decide(GateSpec("correct", "higher", 0.0), examples({"correct": candidate}),
                     examples({"correct": baseline}))
    assert verdict.decision == "not_enough_evidence" and "fewer than 30" in verdict.reason
    assert decide(GateSpec("correct", "higher", 0.0, min_examples=10), examples({"correct": candidate}),
                  examples({"correct": baseline})).decision == "pass"


def with_latency(rng: np.random.Generator, extra_ms: float) -> tuple[dict, dict]:
    candidate, baseline = clear_win(rng)
    latency = rng.normal(50, 5, len(baseline))
    return ({"correct": candidate, "latency_ms": latency + extra_ms + rng.normal(0, 0.5, len(baseline))},
            {"correct": baseline, "latency_ms": latency})


def test_a_guard_broken_beyond_its_tolerance_blocks_the_gate():
    candidate, baseline = with_latency(np.random.default_rng(5), extra_ms=4.0)
    spec = GateSpec("correct", "higher", 0.02, guards=(Guard("latency_ms", "lower", tolerance=2.0),))
    verdict = decide(spec, examples(candidate), examples(baseline))
    assert verdict.primary.decision == "pass"
    (guard,) = verdict.guards
    assert guard.name == "latency_ms" and guard.decision == "fail" and guard.threshold == -2.0
    assert guard.ci_low > 2.0
    assert verdict.decision == "fail" and "latency_ms" in verdict.reason


def test_a_guard_within_its_tolerance_holds():
    candidate, baseline = with_latency(np.random.default_rng(6), extra_ms=0.5)
    spec = GateSpec("correct", "higher", 0.02, guards=(Guard("latency_ms", "lower", tolerance=2.0),))
    verdict = decide(spec, examples(candidate), examples(baseline))
    assert verdict.guards[0].decision == "pass" and verdict.guards[0].ci_high < 2.0
    assert verdict.decision == "pass"


def test_a_guard_that_may_or_may_not_hold_is_not_enough_evidence():
    candidate, baseline = with_latency(np.random.default_rng(7), extra_ms=2.0)
    spec = GateSpec("correct", "higher", 0.02, guards=(Guard("latency_ms", "lower", tolerance=2.0),))
    verdict = decide(spec, examples(candidate), examples(baseline))
    assert verdict.guards[0].ci_low < 2.0 < verdict.guards[0].ci_high
    assert verdict.decision == "not_enough_evidence"


def test_a_slice_made_worse_blocks_the_gate_even_when_the_whole_improves():
    rng = np.random.default_rng(8)
    candidate, baseline = clear_win(rng, 2_000)
    rare = np.arange(2_000) % 20 == 0
    baseline[rare] = 1.0
    candidate[rare] = np.arange(rare.sum()) % 2
    slices = {"rare": rare, "common": ~rare}
    spec = GateSpec("correct", "higher", 0.0, slices=("rare", "common"), slice_tolerance=0.05)
    verdict = decide(spec, examples({"correct": candidate}, slices), examples({"correct": baseline}, slices))
    assert verdict.primary.decision == "pass"
    by_name = {s.name: s for s in verdict.slices}
    assert by_name["rare"].decision == "fail" and by_name["rare"].n == 100 and by_name["rare"].delta == -0.5
    assert by_name["common"].decision == "pass" and by_name["common"].n == 1_900
    assert verdict.decision == "fail" and "rare" in verdict.reason


def test_examples_on_one_side_only_are_counted_and_left_out():
    rng = np.random.default_rng(9)
    candidate, baseline = clear_win(rng)
    extra_candidate = examples({"correct": np.ones(7)}, prefix="only-candidate-")
    extra_baseline = examples({"correct": np.ones(3)}, prefix="only-baseline-")
    spec = GateSpec("correct", "higher", 0.02, max_unpaired_fraction=0.02)
    verdict = decide(spec, examples({"correct": candidate}) + extra_candidate,
                     examples({"correct": baseline}) + extra_baseline)
    assert (verdict.paired, verdict.unpaired_candidate, verdict.unpaired_baseline) == (1_000, 7, 3)
    assert verdict.primary.candidate == pytest.approx(candidate.mean())
    assert verdict.decision == "pass"
    strict = decide(GateSpec("correct", "higher", 0.02), examples({"correct": candidate}) + extra_candidate,
                    examples({"correct": baseline}) + extra_baseline)
    assert strict.decision == "fail" and "10 of 1010 example ids" in strict.reason


def test_the_verdict_does_not_depend_on_the_order_of_examples():
    candidate, baseline = clear_win(np.random.default_rng(10), 300)
    spec = GateSpec("correct", "higher", 0.02, resamples=2_000, seed=3)
    ordered = decide(spec, examples({"correct": candidate}), examples({"correct": baseline}))
    shuffled = decide(spec, examples({"correct": candidate})[::-1], examples({"correct": baseline}))
    assert shuffled == ordered


def test_the_verdict_round_trips_through_json():
    candidate, baseline = with_latency(np.random.default_rng(11), extra_ms=0.5)
    slices = {"even": np.arange(1_000) % 2 == 0}
    spec = GateSpec("correct", "higher", 0.02, guards=(Guard("latency_ms", "lower", 2.0),), slices=("even",),
                    slice_tolerance=0.1)
    verdict = decide(spec, examples(candidate, slices), examples(baseline, slices))
    stored = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert stored["primary"]["ci_low"] == verdict.primary.ci_low
    assert Verdict.from_dict(stored) == verdict
    assert isinstance(Verdict.from_dict(stored).guards[0], Comparison)
    with pytest.raises(ValueError, match="not a gate verdict"):
        Verdict.from_dict({**stored, "primary": {"name": "correct"}})


# --- input errors ---

def one(metrics: dict, example_id: str = "a", slices: tuple[str, ...] = ()) -> Example:
    return Example(example_id, metrics, slices)


@pytest.mark.parametrize(("candidate", "baseline", "message"), [
    ([one({"acc": 1.0})], [one({"correct": 1.0})], "candidate example 'a' has no metric 'correct'"),
    ([one({"correct": math.nan})], [one({"correct": 1.0})], "metric 'correct' is nan, not a finite number"),
    ([one({"correct": 1.0})], [one({"correct": math.inf})], "baseline example 'a'.*inf, not a finite number"),
    ([one({"correct": "yes"})], [one({"correct": 1.0})], "'correct' is not a number: 'yes'"),
    ([one({"correct": 1.0}), one({"correct": 0.0})], [one({"correct": 1.0})], "id 'a' appears more than once"),
    ([one({"correct": 1.0}, "a")], [one({"correct": 1.0}, "b")], "no example id was evaluated by both"),
    ([{"correct": 1.0}], [one({"correct": 1.0})], "candidate item 0 is a dict, not an Example"),
    ([one({"correct": 1.0}, "")], [one({"correct": 1.0})], "candidate item 0 has no example id"),
])
def test_unusable_examples_are_refused_by_name(candidate, baseline, message):
    with pytest.raises(ValueError, match=message):
        decide(GateSpec("correct", "higher", 0.0), candidate, baseline)


def test_slices_must_agree_and_have_examples():
    spec = GateSpec("correct", "higher", 0.0, slices=("night",))
    with pytest.raises(ValueError, match="example 'a' is in slice 'night' for the candidate only"):
        decide(spec, [one({"correct": 1.0}, slices=("night",))], [one({"correct": 1.0})])
    with pytest.raises(ValueError, match="slice 'night' has no example evaluated by both"):
        decide(spec, [one({"correct": 1.0})], [one({"correct": 1.0})])


def test_a_guarded_metric_must_be_present():
    spec = GateSpec("correct", "higher", 0.0, guards=(Guard("latency_ms", "lower", 1.0),))
    with pytest.raises(ValueError, match="baseline example 'a' has no metric 'latency_ms' \\(it has: correct\\)"):
        decide(spec, [one({"correct": 1.0, "latency_ms": 3.0})], [one({"correct": 1.0})])


@pytest.mark.parametrize(("build", "message"), [
    (lambda: GateSpec("", "higher", 0.0), "primary metric must be a non-empty string"),
    (lambda: GateSpec("acc", "up", 0.0), "primary direction must be 'higher' or 'lower', got 'up'"),
    (lambda: GateSpec("acc", "higher", -0.1), "min_improvement must be a finite number >= 0"),
    (lambda: GateSpec("acc", "higher", math.nan), "min_improvement must be a finite number >= 0"),
    (lambda: GateSpec("acc", "higher", 0.0, confidence=1.0), "confidence must be a number between 0.5 and 1"),
    (lambda: GateSpec("acc", "higher", 0.0, confidence=0.4), "confidence must be a number between 0.5 and 1"),
    (lambda: GateSpec("acc", "higher", 0.0, resamples=10), "resamples must be an integer from 100"),
    (lambda: GateSpec("acc", "higher", 0.0, slices=("a", "a")), "a slice is declared twice"),
    (lambda: GateSpec("acc", "higher", 0.0, guards=(Guard("l", "lower", 1.0), Guard("l", "lower", 2.0))),
     "a metric is guarded twice"),
    (lambda: GateSpec("acc", "higher", 0.0, max_unpaired_fraction=1.5), "max_unpaired_fraction must be between"),
    (lambda: Guard("latency_ms", "lower", -1.0), "guard 'latency_ms' tolerance must be a finite number >= 0"),
    (lambda: Guard("latency_ms", "faster", 1.0), "guard 'latency_ms' direction must be 'higher' or 'lower'"),
])
def test_an_invalid_spec_is_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()
