"""The operator's in-memory bookkeeping, every piece bounded: per-run locks, node labels, requeue
times, and the Running runs whose latest metrics are copied into status. No Kubernetes or store here;
what these call is passed in, so they are tested with plain functions and a fake clock.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

log = logging.getLogger("cairn.controller")


class KeyedLocks:
    """One lock per key, dropped once nobody holds or waits for it: as many as reconciles in flight."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class NodeLabelCache:
    """Node labels for ``ttl_s`` (the GPU model of a node does not change under a pod), least
    recently used nodes dropped beyond ``max_nodes``."""

    def __init__(self, fetch: Callable[[str], dict[str, str]], ttl_s: float = 300.0, max_nodes: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch, self._ttl_s, self._max_nodes, self._clock = fetch, ttl_s, max_nodes, clock
        self._cache: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, node: str | None) -> dict[str, str] | None:
        if not node:
            return None
        now = self._clock()
        with self._guard:
            cached = self._cache.get(node)
            if cached and now - cached[0] < self._ttl_s:
                self._cache.move_to_end(node)
                return cached[1]
        labels = self._fetch(node)
        with self._guard:
            self._cache[node] = (now, labels)
            self._cache.move_to_end(node)
            while len(self._cache) > self._max_nodes:
                self._cache.popitem(last=False)
        return labels

    def __len__(self) -> int:
        return len(self._cache)


class Requeuer:
    """Calls ``callback(key)`` once the time asked for has come. A key has at most one pending time,
    the one asked for last (the newest plan knows best); :meth:`cancel` drops it."""

    def __init__(self, callback: Callable[[str], Any], clock: Callable[[], float] = time.monotonic) -> None:
        self._callback, self._clock = callback, clock
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._stopped = False

    def schedule(self, key: str, delay_s: float) -> None:
        with self._changed:
            due = self._clock() + max(0.0, delay_s)
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))
            if len(self._heap) > 2 * len(self._due) + 64:  # drop entries replaced since
                self._heap = [(t, k) for k, t in self._due.items()]
                heapq.heapify(self._heap)
            self._changed.notify()

    def cancel(self, key: str) -> None:
        with self._changed:
            self._due.pop(key, None)

    def pending(self) -> dict[str, float]:
        with self._changed:
            return dict(self._due)

    def pop_due(self) -> list[str]:
        """The keys whose time has come; they are forgotten here."""
        now = self._clock()
        keys = []
        with self._changed:
            while self._heap and self._heap[0][0] <= now:
                due, key = heapq.heappop(self._heap)
                if self._due.get(key) == due:
                    del self._due[key]
                    keys.append(key)
        return keys

    def _seconds_to_next(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] - self._clock() if self._heap else None

    def run(self) -> None:
        """Call back due keys until :meth:`stop`; runs in its own thread."""
        while True:
            for key in self.pop_due():
                try:
                    self._callback(key)
                except Exception:  # noqa: BLE001
                    log.exception("requeue of %s failed", key)
            with self._changed:
                if self._stopped:
                    return
                wait = self._seconds_to_next()
                if wait is None or wait > 0:
                    self._changed.wait(wait)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="cairn-requeue", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()


@dataclass(frozen=True)
class RunRef:
    uid: str
    namespace: str
    name: str
    headline: str | None


class RunningRuns:
    """The Running runs whose latest step and headline metric are copied into status, and the values
    copied last (so an unchanged run costs no API call)."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRef] = {}
        self._copied: dict[str, dict[str, Any]] = {}
        self._guard = threading.Lock()

    def track(self, run: RunRef) -> None:
        with self._guard:
            self._runs[run.uid] = run

    def forget(self, uid: str) -> None:
        with self._guard:
            self._runs.pop(uid, None)
            self._copied.pop(uid, None)

    def snapshot(self) -> list[RunRef]:
        with self._guard:
            return list(self._runs.values())

    def is_new(self, uid: str, patch: Mapping[str, Any]) -> bool:
        """Whether ``patch`` differs from what was copied last for ``uid``; remembers it (tracked runs only)."""
        with self._guard:
            if self._copied.get(uid) == patch:
                return False
            if uid in self._runs:
                self._copied[uid] = dict(patch)
            return True

    def __len__(self) -> int:
        return len(self._runs)


def metrics_patch(latest: Mapping[str, Any], headline: str | None) -> dict[str, Any] | None:
    """Status fields from a run's latest metric values (``LatestValue``s by key): the highest step,
    and the headline metric's value as text (None: nothing logged yet)."""
    if not latest:
        return None
    patch: dict[str, Any] = {"step": max(v.step for v in latest.values())}
    if headline:
        patch["metric"] = f"{latest[headline].value:.6g}" if headline in latest else None
    return patch
