"""Evaluation gates: does a candidate model beat the current one on the same examples, by a margin that
matters, without breaking its guard metrics or slices? Pure (no I/O); see docs/evaluation-gates.md."""

from cairn.gates.decide import decide
from cairn.gates.model import Comparison, Example, GateSpec, Guard, Verdict, gate_spec_from

__all__ = ["Comparison", "Example", "GateSpec", "Guard", "Verdict", "decide", "gate_spec_from"]
