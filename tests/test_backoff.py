"""One way to wait between retries (bounded, interruptible) and one way to shorten a message."""

from __future__ import annotations

import threading
import time

import pytest

from cairn.backoff import Backoff, retry
from cairn.messages import first_line, one_line


def test_delays_double_up_to_the_cap_and_start_over_after_a_success():
    b = Backoff(0.5, 3.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.peek() == 0.5 and b.next_delay() == 0.5


def test_jitter_takes_off_at_most_its_fraction():
    b = Backoff(1.0, 8.0, jitter=0.5, rng=lambda: 1.0)
    assert [b.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    assert Backoff(1.0, 8.0, jitter=0.5, rng=lambda: 0.0).next_delay() == 1.0
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(1.0, 2.0, jitter=2.0)


def test_sleep_ends_early_on_stop_and_refuses_to_pass_the_deadline():
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert Backoff(30.0, 30.0).sleep(stop) is True
    assert time.monotonic() - started < 1
    assert Backoff(30.0, 30.0).sleep(deadline=time.monotonic() + 1) is False
    assert time.monotonic() - started < 1


def test_retry_until_success_gives_up_on_permanent_errors_and_at_the_deadline():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("away\nsecond line")
        return "ok"

    assert retry(flaky, time.monotonic() + 10, "flaky", backoff=Backoff(0.01, 0.02)) == "ok" and len(calls) == 3

    def broken() -> None:
        calls.append(1)
        raise PermissionError("denied")

    calls.clear()
    with pytest.raises(PermissionError):
        retry(broken, time.monotonic() + 10, "broken", backoff=Backoff(0.01, 0.02),
              give_up=lambda exc: isinstance(exc, PermissionError))
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(PermissionError):
        retry(broken, time.monotonic() + 0.2, "broken", backoff=Backoff(0.05, 0.05))
    assert 2 <= len(calls) <= 5


def test_one_line_keeps_the_type_and_the_first_line():
    assert one_line(ValueError("\n  bad value  \nTraceback...")) == "ValueError: bad value"
    assert one_line(KeyError()) == "KeyError: "
    assert first_line("") == "" and first_line("a\nb") == "a"
