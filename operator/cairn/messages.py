"""Short messages for logs and termination messages: one line, whatever the exception holds.

Standard library only. Database drivers and S3 clients put whole SQL statements, stack details or
XML bodies into their exceptions; a log line or a pod's termination message needs the first line.
"""

from __future__ import annotations


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped; "" when there is none."""
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def one_line(exc: BaseException) -> str:
    """``ExceptionType: first line of its message``."""
    return f"{type(exc).__name__}: {first_line(str(exc))}"
