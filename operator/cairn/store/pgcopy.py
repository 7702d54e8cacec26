"""PostgreSQL ``COPY`` formats for metric points: text rows going in, binary rows coming out. Pure.

Metric writes send COPY's text format (one tab-separated line per point: the server parses it
faster than the driver binds parameters). Reading a whole series asks for COPY's binary format,
which needs no text parsing on either side: every row of (step bigint, timestamp_ms bigint,
value float8) has the same size and is unpacked in C.
"""

from __future__ import annotations

import gc
import struct
from operator import itemgetter
from typing import Sequence

from cairn.store.entities import MetricPoint

# What ``encode_metric_rows`` fills, in this order.
METRIC_COLUMNS = ("run_id", "key", "step", "timestamp_ms", "value")
# What ``decode_history`` expects: a series of one key, value never NULL (NaN stays NaN).
HISTORY_COLUMNS = ("step", "timestamp_ms", "value")

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_FLAGS_AND_EXTENSION_LENGTH = struct.Struct(">ii")
_TRAILER = b"\xff\xff"  # a field count of -1
# One history row: the field count, then each field's length and its big-endian bytes.
_HISTORY_ROW = struct.Struct(">hiqiqid")


class CopyFormatError(ValueError):
    """The bytes are not what ``COPY ... TO STDOUT (FORMAT binary)`` of the history query sends."""


def escape_text(value: str) -> str:
    """A string as a field of COPY's text format (backslash, tab and line breaks escaped)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def encode_metric_rows(run_id: str, points: Sequence[MetricPoint]) -> str:
    """COPY text rows of ``METRIC_COLUMNS`` for one run's points.

    Floats are written with ``repr``, which round-trips exactly; PostgreSQL reads ``nan``,
    ``inf`` and ``-inf`` as the special values.
    """
    # The run id and the escaped key are the same on every line of a key: format them once.
    prefix = {key: f"{run_id}\t{escape_text(key)}\t" for key in set(map(itemgetter(0), points))}
    return "".join([f"{prefix[key]}{step}\t{ts}\t{value!r}\n" for key, step, ts, value in points])


def decode_history(key: str, data: bytes | memoryview) -> list[MetricPoint]:
    """The points of one series from binary COPY output of ``HISTORY_COLUMNS`` rows."""
    with memoryview(data) as view:
        if bytes(view[:len(SIGNATURE)]) != SIGNATURE:
            raise CopyFormatError("not PostgreSQL binary COPY output (bad signature)")
        if bytes(view[-len(_TRAILER):]) != _TRAILER:
            raise CopyFormatError("binary COPY output without its trailer")
        _, extension_length = _FLAGS_AND_EXTENSION_LENGTH.unpack_from(view, len(SIGNATURE))
        start = len(SIGNATURE) + _FLAGS_AND_EXTENSION_LENGTH.size + extension_length
        with view[start:len(view) - len(_TRAILER)] as body:
            if len(body) % _HISTORY_ROW.size:
                raise CopyFormatError("binary COPY rows are not (step bigint, timestamp_ms bigint, value float8)")
            return _points(key, body)


def _points(key: str, body: memoryview) -> list[MetricPoint]:
    # Building a million tuples would trigger a few hundred full GC passes over them; none of
    # them can form a cycle, so collection is paused meanwhile.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        new = tuple.__new__  # MetricPoint's own __new__ is a Python call per point
        return [new(MetricPoint, (key, step, ts, value))
                for _, _, step, _, ts, _, value in _HISTORY_ROW.iter_unpack(body)]
    finally:
        if gc_was_enabled:
            gc.enable()
