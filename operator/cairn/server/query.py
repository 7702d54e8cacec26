"""Pure parsing of the runs endpoint's ``filter`` and ``order_by`` texts into the store's search terms."""

from __future__ import annotations

import re

from cairn.store.search import FILTER_FIELDS, OPERATORS, ORDER_FIELDS, RunFilter, RunOrder

PREFIXES = ("params", "metrics", "tags")
MAX_KEY_CHARS = 250
FILTER = re.compile(r"\s*(?P<term>[^=!<>]+?)\s*(?P<op>!=|<=|>=|=|<|>)\s*(?P<value>.*?)\s*", re.S)


class QueryError(ValueError):
    """A filter or sort text that cannot be read; the message quotes it."""


def _term(text: str, what: str, fields: tuple[str, ...]) -> tuple[str, str]:
    """``(kind, key)`` of ``params.lr`` / ``metrics.val_acc`` / ``tags.team`` or of a run field."""
    prefix, dot, key = text.partition(".")
    if dot and prefix in PREFIXES:
        if not key or len(key) > MAX_KEY_CHARS:
            raise QueryError(f"{what} {text!r}: the key after {prefix}. must be 1 to {MAX_KEY_CHARS} characters")
        return prefix, key
    if text in fields:
        return "field", text
    raise QueryError(f"{what} {text!r}: expected params.KEY, metrics.KEY, tags.KEY or one of {', '.join(fields)}")


def parse_filter(text: str) -> RunFilter:
    """``params.lr = 0.1``, ``metrics.val_acc >= 0.9``, ``tags.team = nlp``, ``status = RUNNING``."""
    match = FILTER.fullmatch(text)
    if match is None:
        raise QueryError(f"filter {text!r}: expected KEY OP VALUE with OP one of {' '.join(OPERATORS)}")
    kind, key = _term(match["term"], "filter", FILTER_FIELDS)
    if not match["value"]:
        raise QueryError(f"filter {text!r}: no value after {match['op']}")
    return RunFilter(kind, key, match["op"], match["value"])  # type: ignore[arg-type]


def parse_order(text: str) -> RunOrder:
    """``metrics.val_acc desc``, ``params.lr asc``, ``start_time`` (ascending unless ``desc``)."""
    name, _, direction = text.strip().rpartition(" ")
    if direction.lower() not in ("asc", "desc"):
        name, direction = text.strip(), "asc"
    kind, key = _term(name.strip(), "order_by", ORDER_FIELDS)
    return RunOrder(kind, key, descending=direction.lower() == "desc")
