"""Parse and validate record lines into ingest batches. Pure: no files, no clock, no database.

Two line formats are accepted:

* SDK records: ``{"seq": 3, "type": "metric", "step": 10, "ts": 1700000000.5, "values": {...}}``
  and the other kinds in ``cairn.rundir``;
* plain metric lines from any program: ``{"step": 10, "loss": 0.3, "acc": 0.91}`` with an
  optional ``ts``/``timestamp``/``time`` in seconds since the epoch.

A line that cannot be used is skipped; a value that cannot be used is dropped from its line.
Both are counted under a reason and reported with their line number, and never stop ingestion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import partial

from cairn import rundir as R
from cairn.rundir import RunStatus
from cairn.store.entities import EvalExample, IngestBatch, MetricPoint, RunFinish

MAX_LINE_BYTES = 1 << 20
MAX_STEP = (1 << 63) - 1
TIME_FIELDS = ("ts", "timestamp", "time")
MAX_EXIT = 1 << 31  # exit codes are stored as 32-bit integers

# Rejection reasons, as counted on the run.
BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
LINE_TOO_LONG = "line_too_long"
BAD_ENCODING = "bad_encoding"
UNKNOWN_TYPE = "unknown_type"
MISSING_STEP = "missing_step"
BAD_STEP = "bad_step"
BAD_TIMESTAMP = "bad_timestamp"
BAD_VALUES = "bad_values"
EMPTY_KEY = "empty_key"
KEY_TOO_LONG = "key_too_long"
NON_NUMERIC = "non_numeric"
BAD_RECORD = "bad_record"
UNSAFE_PATH = "unsafe_path"
BAD_EXAMPLE = "bad_example"  # an example record with a bad id, metrics or slices: none of it is stored
BAD_TEXT = "bad_text"  # a NUL or a lone surrogate in a string: no database can store it as text
STORE_REJECTED = "store_rejected"  # the database refused the line (counted by the agent, not the parser)
PARSER_ERROR = "parser_error"  # the parser failed on the line in a way it does not foresee

# Lengths of the run record's text fields, as the store's columns hold them (None: any length).
MAX_NAME_LENGTH = 255
RUN_TEXT_FIELDS = {"experiment": MAX_NAME_LENGTH, "name": MAX_NAME_LENGTH}
ENVIRONMENT_TEXT_FIELDS = {"python_version": 32, "platform": None, "hostname": MAX_NAME_LENGTH, "cuda_version": 32,
                           "driver_version": 64, "gpu_model": MAX_NAME_LENGTH}
CODE_TEXT_FIELDS = {"repository": None, "commit": 64, "branch": MAX_NAME_LENGTH}
MAX_TIMESTAMP_S = 1e11  # about the year 5138; past it a timestamp is a mistake, and dates overflow

# ``MetricPoint(k, s, t, v)`` runs the NamedTuple's Python-level ``__new__``; building the same tuple
# in C is several times cheaper, and the agent makes one per point.
_new_point = partial(tuple.__new__, MetricPoint)


class OversizeLine(bytes):
    """Stands in for a line longer than ``MAX_LINE_BYTES``, which is skipped unread."""

    def __new__(cls, size: int) -> "OversizeLine":
        obj = super().__new__(cls, b"")
        obj.size = size
        return obj


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str
    detail: str


@dataclass
class ParsedLines:
    batch: IngestBatch = field(default_factory=IngestBatch)
    artifact_paths: list[str] = field(default_factory=list)  # normalised, relative to the run directory
    rejections: list[Rejection] = field(default_factory=list)
    lines_used: int = 0  # how many of the given lines this parse covers
    bytes_used: int = 0  # and their length in the file

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rejections:
            out[r.reason] = out.get(r.reason, 0) + 1
        return out


def _is_number(v: object) -> bool:
    return (type(v) is float) or (type(v) is int)


def _step(value: object) -> int | None:
    if type(value) is int and 0 <= value <= MAX_STEP:
        return value
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_STEP:
        return int(value)
    return None


def _timestamp_ms(value: object, default_ms: int) -> int | None:
    if value is None:
        return default_ms
    if _valid_timestamp_s(value):
        return int(value * 1000)
    return None


def _excerpt(raw: bytes | str, limit: int = 120) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\n")
    return text if len(text) <= limit else text[:limit] + "..."


def parse_lines(lines: list[bytes], first_line_no: int, now_ms: int, max_points: int | None = None) -> ParsedLines:
    """Parse complete lines (each ending in a newline) numbered from ``first_line_no``.

    ``now_ms`` stamps plain metric lines that carry no time of their own. With ``max_points`` the
    parse stops after the line that brings the batch to that many points (``lines_used`` and
    ``bytes_used`` say how far it got), so a batch's memory is bounded by points as well as bytes.
    """
    out = ParsedLines()
    total = 0
    for offset, raw in enumerate(lines):
        line_no = first_line_no + offset
        points_before = len(out.batch.metrics)
        try:
            _parse_line(raw, line_no, now_ms, out)
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure costs its line, never the ingest
            del out.batch.metrics[points_before:]
            out.rejections.append(Rejection(line_no, PARSER_ERROR, f"{type(exc).__name__}: {exc}"[:200]))
        out.lines_used = offset + 1
        total += len(raw) if type(raw) is not OversizeLine else raw.size
        out.bytes_used = total
        if max_points is not None and len(out.batch.metrics) + len(out.batch.examples) >= max_points:
            break
    return out


def _parse_line(raw: bytes, line_no: int, now_ms: int, out: ParsedLines) -> None:
    batch = out.batch
    points = batch.metrics
    reject = out.rejections.append
    if type(raw) is OversizeLine or len(raw) > MAX_LINE_BYTES:
        reject(Rejection(line_no, LINE_TOO_LONG, f"{getattr(raw, 'size', len(raw))} bytes"))
        return
    if not raw.strip():
        return
    try:
        rec = json.loads(raw)
    except UnicodeDecodeError:
        reject(Rejection(line_no, BAD_ENCODING, _excerpt(raw)))
        return
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        reject(Rejection(line_no, BAD_JSON, _excerpt(raw)))
        return
    if b"\\u" in raw and (bad := _unstorable_text(rec)) is not None:
        reject(Rejection(line_no, BAD_TEXT, bad))
        return
    if type(rec) is not dict:
        reject(Rejection(line_no, NOT_AN_OBJECT, _excerpt(raw)))
        return
    kind = rec.get("type")
    if kind == R.METRIC:
        values = rec.get("values")
        if type(values) is not dict:
            reject(Rejection(line_no, BAD_VALUES, _excerpt(raw)))
            return
        _add_points(rec, values, line_no, now_ms, raw, points, reject)
    elif kind is None:
        values = {k: v for k, v in rec.items() if k != "step" and k not in TIME_FIELDS}
        _add_points(rec, values, line_no, now_ms, raw, points, reject)
    elif kind == R.RUN:
        problem = _run_record_problem(rec)
        if problem is not None:
            reject(Rejection(line_no, BAD_RECORD, problem))
            return
        batch.run_info = dict(rec, params=_valid_keys(rec.get("params") or {}, line_no, reject),
                              tags={k: str(v) for k, v in _valid_keys(rec.get("tags") or {}, line_no, reject).items()})
    elif kind == R.PARAMS and isinstance(rec.get("params"), dict):
        batch.params.update(_valid_keys(rec["params"], line_no, reject))
    elif kind == R.TAGS and isinstance(rec.get("tags"), dict):
        batch.tags.update({k: str(v) for k, v in _valid_keys(rec["tags"], line_no, reject).items()})
    elif kind == R.ARTIFACT and isinstance(rec.get("path"), str) and rec["path"]:
        try:
            out.artifact_paths.append(R.safe_relative_path(rec["path"]))
        except R.UnsafePath as exc:
            reject(Rejection(line_no, UNSAFE_PATH, str(exc)))
    elif kind == R.FINISH:
        finish = _finish(rec)
        if finish is None:
            reject(Rejection(line_no, BAD_RECORD, _excerpt(raw)))
        else:
            batch.finish = finish
    elif kind == R.EXAMPLE:
        example = _example(rec)
        if isinstance(example, str):
            reject(Rejection(line_no, BAD_EXAMPLE, example))
        else:
            batch.examples.append(example)
    elif kind in (R.PARAMS, R.TAGS, R.ARTIFACT):
        reject(Rejection(line_no, BAD_RECORD, _excerpt(raw)))
    else:
        reject(Rejection(line_no, UNKNOWN_TYPE, _excerpt(raw)))


def _valid_timestamp_s(value: object) -> bool:
    # The range check also rules out NaN and infinities, and unlike math.isfinite it cannot
    # overflow on an integer too large for a float.
    return _is_number(value) and 0 <= value < MAX_TIMESTAMP_S


def _text_problem(section: str, values: dict, limits: dict[str, int | None]) -> str | None:
    for name, limit in limits.items():
        value = values.get(name)
        if value is None:
            continue
        if type(value) is not str:
            return f"{section}{name} is not a string: {repr(value)[:60]}"
        if limit is not None and len(value) > limit:
            return f"{section}{name} is longer than {limit} characters"
    return None


def _run_record_problem(rec: dict) -> str | None:
    """What makes a run record unstorable, described; None when it can be stored."""
    for name in ("params", "tags", "environment", "code"):
        if rec.get(name) is not None and type(rec[name]) is not dict:
            return f"{name} is not an object"
    if rec.get("ts") is not None and not _valid_timestamp_s(rec["ts"]):
        return f"ts is not seconds since the epoch: {repr(rec['ts'])[:60]}"
    env, code = rec.get("environment") or {}, rec.get("code") or {}
    problem = (_text_problem("", rec, RUN_TEXT_FIELDS) or _text_problem("environment.", env, ENVIRONMENT_TEXT_FIELDS)
               or _text_problem("code.", code, CODE_TEXT_FIELDS))
    if problem is not None:
        return problem
    gpu_count = env.get("gpu_count")
    if gpu_count is not None and not (type(gpu_count) is int and 0 <= gpu_count < MAX_EXIT):
        return f"environment.gpu_count is not a count: {repr(gpu_count)[:60]}"
    packages = env.get("packages")
    if packages is not None and not (type(packages) is dict and all(type(v) is str for v in packages.values())):
        return "environment.packages is not an object of version strings"
    if code.get("dirty") is not None and type(code["dirty"]) is not bool:
        return f"code.dirty is not true or false: {repr(code['dirty'])[:60]}"
    return None


def _finish(rec: dict) -> RunFinish | None:
    """The finish record, or None when its status is not a final one or a field has the wrong type."""
    try:
        status = RunStatus(rec.get("status", RunStatus.FINISHED))
    except ValueError:
        return None
    exit_code, ts = rec.get("exit_code"), rec.get("ts")
    if not status.is_final:
        return None
    if exit_code is not None and not (type(exit_code) is int and -MAX_EXIT <= exit_code < MAX_EXIT):
        return None
    if ts is not None and not _valid_timestamp_s(ts):
        return None
    return RunFinish(status, exit_code, ts)


def _example(rec: dict) -> EvalExample | str:
    """The example record as an ``EvalExample``, or what is wrong with it."""
    example_id, metrics, slices = rec.get("id"), rec.get("metrics"), rec.get("slices")
    if type(example_id) is int:
        example_id = str(example_id)
    if type(example_id) is not str or not example_id:
        return f"id is not a non-empty string: {repr(example_id)[:60]}"
    if len(example_id) > R.MAX_EXAMPLE_ID_LENGTH:
        return f"id is longer than {R.MAX_EXAMPLE_ID_LENGTH} characters"
    if type(metrics) is not dict or not metrics:
        return f"example {example_id[:60]!r}: metrics is not a non-empty object"
    if len(metrics) > R.MAX_EXAMPLE_METRICS:
        return f"example {example_id[:60]!r}: more than {R.MAX_EXAMPLE_METRICS} metrics"
    values = {}
    for key, value in metrics.items():
        if not key or len(key) > R.MAX_KEY_LENGTH:
            return (f"example {example_id[:60]!r}: metric key {key[:60]!r} is not 1 to {R.MAX_KEY_LENGTH} "
                    "characters")
        if not _is_number(value):
            return f"example {example_id[:60]!r}: metric {key[:60]!r} is not a number: {repr(value)[:60]}"
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            return f"example {example_id[:60]!r}: metric {key[:60]!r} is not finite: {repr(value)[:60]}"
        values[key] = number
    if slices is None:
        slices = []
    if type(slices) is not list or len(slices) > R.MAX_EXAMPLE_SLICES:
        return f"example {example_id[:60]!r}: slices is not a list of at most {R.MAX_EXAMPLE_SLICES} labels"
    for label in slices:
        if type(label) is not str or not label or len(label) > R.MAX_SLICE_LENGTH:
            return (f"example {example_id[:60]!r}: slice {repr(label)[:60]} is not a label of 1 to "
                    f"{R.MAX_SLICE_LENGTH} characters")
    return EvalExample(example_id, values, list(dict.fromkeys(slices)))


def _unstorable_text(value: object) -> str | None:
    """The first string (key or value) holding a NUL or a lone surrogate, described; None if none.

    Only lines with a ``\\u`` escape can hold either, so the common line never gets here.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\0" in item:
                return f"{item[:60]!r} holds a NUL character"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{item[:60]!r} holds a lone surrogate"
    return None


def _valid_keys(values: dict, line_no: int, reject) -> dict:  # noqa: ANN001
    good = {}
    for key, value in values.items():
        if not key:
            reject(Rejection(line_no, EMPTY_KEY, "(params or tags)"))
        elif len(key) > R.MAX_KEY_LENGTH:
            reject(Rejection(line_no, KEY_TOO_LONG, key[:60] + "..."))
        else:
            good[key] = value
    return good


def _add_points(rec: dict, values: dict, line_no: int, now_ms: int, raw: bytes, points: list, reject) -> None:  # noqa: ANN001
    if "step" not in rec:
        reject(Rejection(line_no, MISSING_STEP, _excerpt(raw)))
        return
    step = _step(rec["step"])
    if step is None:
        reject(Rejection(line_no, BAD_STEP, repr(rec["step"])[:60]))
        return
    # The first of TIME_FIELDS present wins, even when its value is null.
    if "ts" in rec:
        ts_value = rec["ts"]
    elif "timestamp" in rec:
        ts_value = rec["timestamp"]
    else:
        ts_value = rec.get("time")
    ts_ms = _timestamp_ms(ts_value, now_ms)
    if ts_ms is None:
        reject(Rejection(line_no, BAD_TIMESTAMP, repr(ts_value)[:60]))
        return
    append = points.append
    max_key = R.MAX_KEY_LENGTH
    for key, value in values.items():
        if type(value) is float and key and len(key) <= max_key:  # the common case, checked once
            append(_new_point((key, step, ts_ms, value)))
        elif not key:
            reject(Rejection(line_no, EMPTY_KEY, _excerpt(raw)))
        elif len(key) > max_key:
            reject(Rejection(line_no, KEY_TOO_LONG, key[:60] + "..."))
        elif type(value) is float:
            append(_new_point((key, step, ts_ms, value)))
        elif type(value) is int:
            try:
                append(_new_point((key, step, ts_ms, float(value))))
            except OverflowError:
                reject(Rejection(line_no, NON_NUMERIC, f"{key}: integer out of range"))
        else:
            reject(Rejection(line_no, NON_NUMERIC, f"{key}: {repr(value)[:60]}"))
