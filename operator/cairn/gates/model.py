"""What a gate declares (GateSpec, Guard), what it is fed (Example) and what it answers (Verdict)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

DIRECTIONS = ("higher", "lower")
MIN_RESAMPLES = 100
MAX_RESAMPLES = 1_000_000


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_finite_at_least_zero(value: object, what: str) -> None:
    _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
             and value >= 0, f"{what} must be a finite number >= 0, got {value!r}")


def _check_direction(direction: object, what: str) -> None:
    _require(direction in DIRECTIONS, f"{what} must be 'higher' or 'lower', got {direction!r}")


def _check_name(name: object, what: str) -> None:
    _require(isinstance(name, str) and name.strip() != "", f"{what} must be a non-empty string, got {name!r}")


@dataclass(frozen=True)
class Guard:
    """A metric the candidate must not make worse by more than `tolerance` (in the metric's units)."""

    metric: str
    direction: str
    tolerance: float

    def __post_init__(self) -> None:
        _check_name(self.metric, "guard metric")
        _check_direction(self.direction, f"guard {self.metric!r} direction")
        _check_finite_at_least_zero(self.tolerance, f"guard {self.metric!r} tolerance")


@dataclass(frozen=True)
class GateSpec:
    """A model's declared evaluation; docs/evaluation-gates.md says what each number means.

    `confidence` is one-sided: the primary metric's improvement must exceed `min_improvement` with
    probability `confidence`, and each guard and slice must be shown no worse than its tolerance at the
    same level. A slice's metric is the primary metric over the examples carrying that label, held to
    `slice_tolerance`. Fewer than `min_examples` paired examples (overall or in a slice) is not enough
    evidence; more than `max_unpaired_fraction` of all example ids seen on one side only fails the gate.
    """

    primary: str
    direction: str
    min_improvement: float
    confidence: float = 0.95
    guards: tuple[Guard, ...] = ()
    slices: tuple[str, ...] = ()
    resamples: int = 10_000
    seed: int = 0
    slice_tolerance: float = 0.0
    min_examples: int = 30
    max_unpaired_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_name(self.primary, "primary metric")
        _check_direction(self.direction, "primary direction")
        _check_finite_at_least_zero(self.min_improvement, "min_improvement")
        _require(isinstance(self.confidence, float) and 0.5 < self.confidence < 1,
                 f"confidence must be a number between 0.5 and 1 (exclusive), got {self.confidence!r}")
        _require(isinstance(self.guards, tuple) and all(isinstance(g, Guard) for g in self.guards),
                 "guards must be a tuple of Guard")
        guarded = [g.metric for g in self.guards]
        _require(len(set(guarded)) == len(guarded), f"a metric is guarded twice: {sorted(guarded)}")
        _require(isinstance(self.slices, tuple), "slices must be a tuple of slice labels")
        for label in self.slices:
            _check_name(label, "slice label")
        _require(len(set(self.slices)) == len(self.slices), f"a slice is declared twice: {sorted(self.slices)}")
        _require(isinstance(self.resamples, int) and MIN_RESAMPLES <= self.resamples <= MAX_RESAMPLES,
                 f"resamples must be an integer from {MIN_RESAMPLES} to {MAX_RESAMPLES}, got {self.resamples!r}")
        _require(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        _check_finite_at_least_zero(self.slice_tolerance, "slice_tolerance")
        _require(isinstance(self.min_examples, int) and self.min_examples >= 2,
                 f"min_examples must be an integer >= 2, got {self.min_examples!r}")
        _require(isinstance(self.max_unpaired_fraction, (int, float)) and 0 <= self.max_unpaired_fraction <= 1,
                 f"max_unpaired_fraction must be between 0 and 1, got {self.max_unpaired_fraction!r}")


GATE_FIELDS = {"primary": "primary", "direction": "direction", "minImprovement": "min_improvement",
               "confidence": "confidence", "slices": "slices", "sliceTolerance": "slice_tolerance",
               "minExamples": "min_examples", "maxUnpairedFraction": "max_unpaired_fraction",
               "resamples": "resamples", "seed": "seed"}
GUARD_FIELDS = ("metric", "direction", "tolerance")


def gate_spec_from(manifest: Mapping[str, Any]) -> GateSpec:
    """A GateSpec from its manifest form (camelCase keys, as a resource's spec spells them, ``guards`` a
    list of {metric, direction, tolerance}); an unknown or missing key is a ValueError naming it."""
    _require(isinstance(manifest, Mapping), f"a gate is a mapping, got {type(manifest).__name__}")
    unknown = sorted(set(manifest) - set(GATE_FIELDS) - {"guards"})
    _require(not unknown, f"unknown gate field(s) {unknown}; known: {sorted([*GATE_FIELDS, 'guards'])}")
    guards = manifest.get("guards") or []
    _require(isinstance(guards, list), f"guards must be a list, got {type(guards).__name__}")
    parsed = []
    for i, guard in enumerate(guards):
        _require(isinstance(guard, Mapping) and set(guard) == set(GUARD_FIELDS),
                 f"guards[{i}] must have exactly the keys {list(GUARD_FIELDS)}, got {guard!r}")
        parsed.append(Guard(guard["metric"], guard["direction"], guard["tolerance"]))
    fields = {GATE_FIELDS[k]: v for k, v in manifest.items() if k != "guards"}
    if isinstance(fields.get("slices"), list):
        fields["slices"] = tuple(fields["slices"])
    if isinstance(fields.get("confidence"), int) and not isinstance(fields.get("confidence"), bool):
        fields["confidence"] = float(fields["confidence"])
    missing = [k for k, f in GATE_FIELDS.items() if f in ("primary", "direction", "min_improvement") and f not in fields]
    _require(not missing, f"a gate needs {missing}")
    return GateSpec(guards=tuple(parsed), **fields)


@dataclass(frozen=True)
class Example:
    """One evaluated example: its metric values for one model and the slice labels it belongs to."""

    id: str
    metrics: Mapping[str, float]
    slices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """One metric compared on paired examples (or the primary metric within one slice).

    `delta` = candidate - baseline and [`ci_low`, `ci_high`] is its bootstrap interval, in the metric's
    units whatever the direction: each end is a one-sided bound at the gate's confidence. `threshold`
    is what the improvement's bound had to clear, counted in the better direction: the minimum
    improvement for the primary metric, minus the tolerance for a guard or slice. `decision` is this
    comparison's own "pass", "fail" (shown beyond the threshold on the wrong side) or
    "not_enough_evidence". `p_value` is McNemar's exact one-sided test, for a 0/1 primary metric only.
    """

    name: str
    candidate: float
    baseline: float
    delta: float
    ci_low: float
    ci_high: float
    n: int
    passed: bool
    reason: str
    p_value: float | None = None
    direction: str = "higher"
    threshold: float = 0.0
    decision: str = "not_enough_evidence"


@dataclass(frozen=True)
class Verdict:
    """The gate's answer and every number behind it; `to_dict` is JSON-ready, `from_dict` reads it back."""

    passed: bool
    decision: str
    reason: str
    primary: Comparison
    guards: tuple[Comparison, ...]
    slices: tuple[Comparison, ...]
    paired: int
    unpaired_candidate: int
    unpaired_baseline: int
    confidence: float = 0.95
    resamples: int = 10_000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["guards"] = list(out["guards"])
        out["slices"] = list(out["slices"])
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        try:
            return cls(**{
                **d,
                "primary": Comparison(**d["primary"]),
                "guards": tuple(Comparison(**g) for g in d["guards"]),
                "slices": tuple(Comparison(**s) for s in d["slices"]),
            })
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a gate verdict: {error}") from error
