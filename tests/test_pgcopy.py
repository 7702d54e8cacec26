"""The COPY codec on its own: text rows going in, binary rows coming out (no server needed).

The binary side is fed bytes laid out as PostgreSQL sends them; the text side is parsed the way
PostgreSQL reads it. ``test_store`` runs the same values through a real server.
"""

import math
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.store import pgcopy
from cairn.store.entities import MetricPoint

MAX_STEP = (1 << 63) - 1
SPECIAL_VALUES = [math.nan, math.inf, -math.inf, -0.0, -1e308, 5e-324, -2.5, 0.1]


def postgres_binary_copy(rows, header_extension=b""):
    """What ``COPY (SELECT step, timestamp_ms, value ...) TO STDOUT (FORMAT binary)`` sends."""
    header = pgcopy.SIGNATURE + struct.pack(">ii", 0, len(header_extension)) + header_extension
    body = b"".join(struct.pack(">hiqiqid", 3, 8, step, 8, ts, 8, value) for step, ts, value in rows)
    return header + body + struct.pack(">h", -1)


def postgres_text_copy(data):
    """The fields of each line of COPY text, unescaped as PostgreSQL reads them."""
    unescape = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}

    def field(text):
        out, i = [], 0
        while i < len(text):
            pair = text[i:i + 2]
            if pair in unescape:
                out.append(unescape[pair])
                i += 2
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    assert data == "" or data.endswith("\n")
    return [[field(f) for f in line.split("\t")] for line in data.split("\n")[:-1]]


def same_points(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[:3] == w[:3]
        if math.isnan(w.value):
            assert math.isnan(g.value)
        else:
            assert g.value == w.value and math.copysign(1, g.value) == math.copysign(1, w.value)


@pytest.mark.parametrize("value", SPECIAL_VALUES)
def test_binary_history_decodes_special_values(value):
    (point,) = pgcopy.decode_history("loss", postgres_binary_copy([(3, 1_700_000_000_000, value)]))
    same_points([point], [MetricPoint("loss", 3, 1_700_000_000_000, value)])
    assert type(point) is MetricPoint


def test_binary_history_decodes_large_and_negative_steps_and_timestamps():
    rows = [(MAX_STEP, (1 << 62), 1.0), (0, 0, 2.0), (-1, -1_000, 3.0), (-(1 << 63), -(1 << 63), 4.0)]
    got = pgcopy.decode_history("k", postgres_binary_copy(rows))
    assert got == [MetricPoint("k", s, t, v) for s, t, v in rows]


def test_binary_history_of_an_empty_series_and_a_header_extension():
    assert pgcopy.decode_history("k", postgres_binary_copy([])) == []
    assert pgcopy.decode_history("k", postgres_binary_copy([(1, 2, 3.0)], b"\x00" * 5)) == [MetricPoint("k", 1, 2, 3.0)]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"PGCOPY\n\xff\r\n\x01" + b[11:], "signature"),
    (lambda b: b[:-2], "trailer"),
    (lambda b: b[:-3] + b[-2:], "rows are not"),
])
def test_binary_history_refuses_bytes_of_another_shape(damage, message):
    with pytest.raises(pgcopy.CopyFormatError, match=message):
        pgcopy.decode_history("k", damage(postgres_binary_copy([(1, 2, 3.0)])))


def test_binary_history_leaves_garbage_collection_as_it_found_it():
    import gc

    data = postgres_binary_copy([(1, 2, 3.0)])
    pgcopy.decode_history("k", data)
    assert gc.isenabled()
    gc.disable()
    try:
        pgcopy.decode_history("k", data)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_text_rows_escape_keys_and_keep_special_values():
    run_id = str(uuid.uuid4())
    points = [MetricPoint(key, step, ts, value) for key, step, ts, value in [
        ("loss", 0, 1, math.nan), ("tab\there", 1, 2, math.inf), ("new\nline\r", 2, 3, -math.inf),
        ("back\\slash", MAX_STEP, (1 << 62), -0.0), ("loss", 5, 6, -1e-300),
    ]]
    rows = postgres_text_copy(pgcopy.encode_metric_rows(run_id, points))
    assert [r[0] for r in rows] == [run_id] * len(points)
    decoded = [MetricPoint(key, int(step), int(ts), float(value)) for _, key, step, ts, value in rows]
    same_points(decoded, points)
    assert len(rows[0]) == len(pgcopy.METRIC_COLUMNS)


def test_text_rows_of_no_points():
    assert pgcopy.encode_metric_rows(str(uuid.uuid4()), []) == ""


keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
finite_or_not = st.floats(allow_nan=True, allow_infinity=True)


@given(st.lists(st.tuples(keys, st.integers(0, MAX_STEP), st.integers(0, 10 ** 14), finite_or_not), max_size=50))
def test_text_rows_round_trip_any_points(raw):
    points = [MetricPoint(*p) for p in raw]
    rows = postgres_text_copy(pgcopy.encode_metric_rows("r", points))
    same_points([MetricPoint(k, int(s), int(t), float(v)) for _, k, s, t, v in rows], points)


@given(st.lists(st.tuples(st.integers(-(1 << 63), MAX_STEP), st.integers(-(1 << 63), MAX_STEP), finite_or_not),
                max_size=50))
def test_binary_history_round_trips_any_rows(rows):
    same_points(pgcopy.decode_history("k", postgres_binary_copy(rows)), [MetricPoint("k", *r) for r in rows])
