"""Parsing of ``-p key=value`` options (pure)."""

from __future__ import annotations

import json
from typing import Any


class BadParam(ValueError):
    pass


def parse_param(text: str) -> tuple[str, Any]:
    """``lr=0.1`` → ("lr", 0.1); JSON scalars are typed, anything else stays a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadParam(f"expected KEY=VALUE, got {text!r}")
    if len(key) > 250:
        raise BadParam(f"parameter name longer than 250 characters: {key[:40]}...")
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    return key, value


def parse_params(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return dict(parse_param(item) for item in items)


LOWER_IS_BETTER = ("loss", "error", "err", "mse", "mae", "rmse", "perplexity", "ppl", "wer", "cer", "time", "latency")


def lower_is_better(key: str) -> bool:
    """Whether the best value of a metric is its minimum, judged from its name."""
    name = key.lower().replace("-", "_").replace("/", "_").replace(".", "_")
    return any(part in LOWER_IS_BETTER for part in name.split("_")) or name.endswith("loss")
