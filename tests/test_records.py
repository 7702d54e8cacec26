"""Parsing of record lines: what is kept, what is rejected and why (pure, no I/O)."""

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.agent import records as r
from cairn.agent.records import OversizeLine, parse_lines
from cairn.rundir import RunStatus
from cairn.store.entities import RunFinish

NOW = 1_700_000_000_000


def lines(*objs) -> list[bytes]:
    return [(o if isinstance(o, str) else json.dumps(o)).encode() + b"\n" for o in objs]


def test_sdk_metric_record_becomes_points_with_its_own_timestamp():
    out = parse_lines(lines({"seq": 0, "type": "metric", "step": 7, "ts": 1600000000.25, "values": {"loss": 0.5, "n": 3}}), 1, NOW)
    assert out.rejections == []
    assert sorted(out.batch.metrics) == [("loss", 7, 1600000000250, 0.5), ("n", 7, 1600000000250, 3.0)]


def test_plain_metric_line_from_a_program_without_the_sdk():
    out = parse_lines(lines({"step": 3, "loss": 0.25, "acc": 0.5}, {"step": 4, "timestamp": 1600000000, "loss": 0.2}), 1, NOW)
    assert out.rejections == []
    assert ("loss", 3, NOW, 0.25) in out.batch.metrics
    assert ("acc", 3, NOW, 0.5) in out.batch.metrics
    assert ("loss", 4, 1600000000000, 0.2) in out.batch.metrics


def test_nan_and_infinity_are_kept_as_such():
    out = parse_lines(["{\"step\": 1, \"a\": NaN, \"b\": Infinity, \"c\": -Infinity}\n".encode()], 1, NOW)
    values = {p.key: p.value for p in out.batch.metrics}
    assert math.isnan(values["a"]) and values["b"] == math.inf and values["c"] == -math.inf


def test_each_kind_of_bad_line_is_counted_under_its_reason_with_its_line_number():
    bad = lines(
        "not json",
        "[1, 2]",
        {"loss": 1.0},  # no step
        {"step": -1, "loss": 1.0},
        {"step": "3", "loss": 1.0},
        {"step": 1, "ts": "yesterday", "loss": 1.0},
        {"step": 1, "": 1.0},
        {"step": 1, "k" * 300: 1.0},
        {"step": 1, "loss": "high"},
        {"step": 1, "flag": True},
        {"step": 1, "big": 10**400},
        {"type": "metric", "step": 1, "values": [1, 2]},
        {"type": "mystery"},
        {"step": 1, "ts": 10**400, "loss": 1.0},
        {"step": 1, "ts": float("inf"), "loss": 1.0},
    )
    out = parse_lines(bad, 10, NOW)
    assert out.batch.metrics == []
    assert [(x.line, x.reason) for x in out.rejections] == [
        (10, r.BAD_JSON), (11, r.NOT_AN_OBJECT), (12, r.MISSING_STEP), (13, r.BAD_STEP), (14, r.BAD_STEP),
        (15, r.BAD_TIMESTAMP), (16, r.EMPTY_KEY), (17, r.KEY_TOO_LONG), (18, r.NON_NUMERIC),
        (19, r.NON_NUMERIC), (20, r.NON_NUMERIC), (21, r.BAD_VALUES), (22, r.UNKNOWN_TYPE),
        (23, r.BAD_TIMESTAMP), (24, r.BAD_TIMESTAMP),
    ]
    assert out.counts()[r.NON_NUMERIC] == 3


def test_a_bad_value_drops_only_that_value():
    out = parse_lines(lines({"step": 2, "loss": 0.1, "note": "hello"}), 1, NOW)
    assert out.batch.metrics == [("loss", 2, NOW, 0.1)]
    assert [x.reason for x in out.rejections] == [r.NON_NUMERIC]


def test_oversize_and_undecodable_lines_are_rejected():
    out = parse_lines([OversizeLine(5 << 20), b"\xff\xfe{}\n"], 1, NOW)
    assert [x.reason for x in out.rejections] == [r.LINE_TOO_LONG, r.BAD_ENCODING]


def test_run_params_tags_artifact_and_finish_records():
    out = parse_lines(
        lines(
            {"type": "run", "run_id": "x", "experiment": "e", "params": {"lr": 0.1}, "environment": {}},
            {"type": "params", "params": {"bs": 32}},
            {"type": "tags", "tags": {"team": 7}},
            {"type": "artifact", "path": "artifacts/model.bin"},
            {"type": "finish", "status": "FINISHED", "exit_code": 0},
        ),
        1,
        NOW,
    )
    assert out.rejections == []
    assert out.batch.run_info["experiment"] == "e"
    assert out.batch.params == {"bs": 32}
    assert out.batch.tags == {"team": "7"}
    assert out.artifact_paths == ["artifacts/model.bin"]
    assert out.batch.finish == RunFinish(RunStatus.FINISHED, 0)


def test_finish_records_carry_a_final_status_an_exit_code_and_a_time():
    good = [{"type": "finish", "status": "KILLED", "exit_code": -9, "ts": 1.7e9}, {"type": "finish"}]
    assert [parse_lines(lines(rec), 1, NOW).batch.finish for rec in good] == [
        RunFinish(RunStatus.KILLED, -9, 1.7e9), RunFinish(RunStatus.FINISHED)]
    bad = [{"status": "DONE"}, {"status": "RUNNING"}, {"status": ["FAILED"]}, {"exit_code": "1"},
           {"exit_code": 1 << 40}, {"exit_code": True}, {"ts": "yesterday"}, {"ts": math.inf}]
    for fields in bad:
        out = parse_lines(lines({"type": "finish", **fields}), 1, NOW)
        assert out.batch.finish is None and [x.reason for x in out.rejections] == [r.BAD_RECORD], fields


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_crash_and_every_line_is_accounted_for(raw_lines):
    data = [line.replace(b"\n", b"") + b"\n" for line in raw_lines]
    out = parse_lines(data, 1, NOW)
    for p in out.batch.metrics:
        assert isinstance(p.value, float) and 0 < len(p.key) <= 250
    lines_with_points = {x.line for x in out.rejections}
    assert all(1 <= n <= len(data) for n in lines_with_points)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=300), json_values, max_size=6), max_size=10))
def test_fuzzed_objects_yield_only_valid_points_and_count_every_dropped_value(objs):
    out = parse_lines(lines(*objs), 1, NOW)
    for p in out.batch.metrics:
        assert isinstance(p.value, float) and 0 < len(p.key) <= 250 and p.step >= 0
    kept = len(out.batch.metrics)
    per_value = sum(1 for x in out.rejections if x.reason in (r.NON_NUMERIC, r.EMPTY_KEY, r.KEY_TOO_LONG))
    usable_lines = [o for o in objs if o.get("type") is None and "step" in o and r._step(o["step"]) is not None
                    and r._timestamp_ms(next((o[f] for f in r.TIME_FIELDS if f in o), None), NOW) is not None]
    expected_values = sum(len([k for k in o if k != "step" and k not in r.TIME_FIELDS]) for o in usable_lines)
    assert kept + per_value == expected_values


def test_lines_no_database_could_store_are_rejected_and_the_rest_still_parse():
    lines = [
        b"[" * 100_000 + b"\n",  # deeper than the JSON parser recurses
        b'{"type": "metric", "step": 1, "values": {"loss\\ud800": 0.5}}\n',  # a lone surrogate in a key
        b'{"type": "tags", "tags": {"team": "a\\u0000b"}}\n',  # a NUL in a tag value
        b'{"type": "params", "params": {"k\\u0000": 1}}\n',  # a NUL in a parameter name
        b'{"type": "metric", "step": 2, "values": {"caf\\u00e9": 0.25}}\n',  # an escape that is fine
        b'{"type": "finish", "status": "FINISHED", "exit_code": 0, "ts": 1700000000.0}\n',
    ]
    out = parse_lines(lines, 1, now_ms=0)
    assert [(x.line, x.reason) for x in out.rejections] == [
        (1, r.BAD_JSON), (2, r.BAD_TEXT), (3, r.BAD_TEXT), (4, r.BAD_TEXT)]
    assert [(p.key, p.step, p.value) for p in out.batch.metrics] == [("café", 2, 0.25)]
    assert out.batch.tags == {} and out.batch.params == {}
    assert out.batch.finish == RunFinish(RunStatus.FINISHED, 0, 1700000000.0)


def test_run_records_the_store_could_not_hold_are_rejected_naming_the_field():
    bad = {
        "code": ({"code": "abc"}, "code is not an object"),
        "tags": ({"tags": ["a", "b"]}, "tags is not an object"),
        "huge ts": ({"ts": 1e300}, "ts is not seconds since the epoch"),
        "text ts": ({"ts": "x"}, "ts is not seconds since the epoch"),
        "long name": ({"name": "n" * 256}, "name is longer than 255 characters"),
        "number name": ({"name": 5}, "name is not a string"),
        "long commit": ({"code": {"commit": "c" * 65}}, "code.commit is longer than 64 characters"),
        "gpu count": ({"environment": {"gpu_count": "8"}}, "environment.gpu_count is not a count"),
        "packages": ({"environment": {"packages": {"torch": 2}}}, "environment.packages is not an object"),
        "dirty": ({"code": {"dirty": "yes"}}, "code.dirty is not true or false"),
    }
    for case, (fields, message) in bad.items():
        out = parse_lines(lines({"type": "run", "experiment": "e", **fields}), 1, NOW)
        assert out.batch.run_info is None, case
        assert [(x.reason, x.detail[:len(message)]) for x in out.rejections] == [(r.BAD_RECORD, message)], case


def test_a_run_record_keeps_its_good_params_and_tags_and_counts_the_bad_keys():
    rec = {"type": "run", "experiment": "e", "ts": 1.7e9, "params": {"lr": 0.1, "p" * 251: 1},
           "tags": {"team": 7, "": "x"}, "code": {"commit": "abc", "dirty": True}}
    out = parse_lines(lines(rec), 1, NOW)
    assert sorted(x.reason for x in out.rejections) == [r.EMPTY_KEY, r.KEY_TOO_LONG]
    assert out.batch.run_info["params"] == {"lr": 0.1} and out.batch.run_info["tags"] == {"team": "7"}
    assert out.batch.run_info["code"] == {"commit": "abc", "dirty": True}


def test_a_parse_stops_at_the_line_that_reaches_max_points_and_says_how_far_it_got():
    data = lines(*({"step": s, **{f"k{i}": float(i) for i in range(200)}} for s in range(10)), "not json")
    out = parse_lines(data, 1, NOW, max_points=500)
    assert out.lines_used == 3 and out.bytes_used == sum(map(len, data[:3]))
    assert len(out.batch.metrics) == 600 and out.rejections == []
    whole = parse_lines(data, 1, NOW)
    assert whole.lines_used == 11 and whole.bytes_used == sum(map(len, data)) and len(whole.batch.metrics) == 2000
