"""How every command prints: Rich tables for people, JSON, YAML or CSV for scripts (``-o/--output``).

Machine formats carry the same plain data: numbers stay numbers, NaN and infinities become the
strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (JSON has no spelling for them), times are
ISO 8601, and no Rich markup gets in.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import datetime as dt
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import click
import yaml
from rich.console import Console

TABLE, JSON, YAML, CSV = "table", "json", "yaml", "csv"


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped or redirected output keeps every column whole instead of wrapping at 80 characters.
    return Console(stderr=stderr, width=None if stream.isatty() else 100_000)


console = _console()
err_console = _console(stderr=True)


def output_option(*formats: str, default: str = TABLE) -> Callable:
    """The ``-o/--output`` option, offering ``formats`` (the human table first)."""
    return click.option("-o", "--output", "output", type=click.Choice(formats), default=default, show_default=True,
                        help="Output format: a table for people, the others for scripts.")


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses and mappings as dicts, times as ISO 8601, NaN as a string."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def write_document(doc: Any, fmt: str, out: TextIO | None = None) -> None:
    """One JSON or YAML document."""
    out = out or sys.stdout
    data = plain(doc)
    if fmt == JSON:
        out.write(json.dumps(data, indent=2) + "\n")
    elif fmt == YAML:
        yaml.safe_dump(data, out, sort_keys=False, allow_unicode=True)
    else:
        raise ValueError(f"not a document format: {fmt}")


def write_rows(rows: Iterable[Mapping[str, Any]], columns: list[str], out: TextIO | None = None) -> None:
    """CSV with a header; an absent or None cell is empty."""
    writer = csv.writer(out or sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else plain(row[c]) for c in columns])


# -- cells of the human tables ------------------------------------------------------------------
STATUS_STYLE = {"FINISHED": "green", "FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan", "PENDING": "blue"}


def fmt_status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def fmt_value(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.6g}"


def fmt_time(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")


def fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
