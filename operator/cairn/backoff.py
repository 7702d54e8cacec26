"""Waiting between retries, in one place. Standard library only.

Every retry loop in Cairn waits the same way: a first delay that doubles up to a cap (optionally
with jitter, so many sidecars that lost the same database do not return in step), back to the
first delay after a success, and a wait that ends early when the process is asked to stop. Every
loop is bounded, by a deadline or by a stop event that a signal sets.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, TypeVar

from cairn.messages import one_line

T = TypeVar("T")


class Backoff:
    """Delays ``first, first*factor, ...`` capped at ``cap``; ``reset()`` after a success.

    ``jitter`` (0 to 1) takes up to that fraction off each delay at random.
    """

    def __init__(self, first: float = 0.5, cap: float = 30.0, factor: float = 2.0, jitter: float = 0.0,
                 rng: Callable[[], float] = random.random) -> None:
        if first <= 0 or cap < first or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs 0 < first <= cap, factor >= 1 and 0 <= jitter <= 1")
        self.first, self.cap, self.factor, self.jitter = first, cap, factor, jitter
        self._rng = rng
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def peek(self) -> float:
        """The next delay before jitter, without using it up."""
        return self._next

    def next_delay(self) -> float:
        """The delay to wait now; the one after it grows."""
        delay = self._next
        self._next = min(self._next * self.factor, self.cap)
        return delay * (1 - self.jitter * self._rng())

    def sleep(self, stop: threading.Event | None = None, deadline: float | None = None) -> bool:
        """Wait the next delay, or less when ``stop`` is set meanwhile.

        Returns False without waiting when the delay would end past ``deadline`` (a
        ``time.monotonic()`` value): the caller's time is up.
        """
        delay = self.next_delay()
        if deadline is not None and time.monotonic() + delay > deadline:
            return False
        (stop or threading.Event()).wait(delay)
        return True


def retry(fn: Callable[[], T], deadline: float, what: str, log: logging.Logger | None = None, *,
          backoff: Backoff | None = None, give_up: Callable[[BaseException], bool] = lambda exc: False) -> T:
    """Call ``fn`` until it returns, backing off between failures until ``deadline`` (monotonic).

    An exception for which ``give_up`` is true, or one that comes when the next wait would pass
    the deadline, is raised to the caller.
    """
    backoff = backoff or Backoff(0.5, 15.0)
    while True:
        try:
            return fn()
        except Exception as exc:
            if give_up(exc) or time.monotonic() + backoff.peek() > deadline:
                raise
            if log is not None:
                log.warning("%s failed, retrying in %.1fs: %s", what, backoff.peek(), one_line(exc))
            backoff.sleep()
