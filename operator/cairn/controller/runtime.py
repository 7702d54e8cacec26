"""The operator's in-memory bookkeeping, every piece bounded: per-run locks, node labels, requeue
times, the Running runs whose latest metrics are copied into status, and the store writes waiting for
the store. No Kubernetes or store here; what these call is passed in, so they are tested with plain
functions and a fake clock.
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

from cairn.backoff import Backoff
from cairn.messages import one_line

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


@dataclass
class StoreWrite:
    """Run columns to set; ``create`` writes the run's row first (idempotent). ``run`` is what the row
    is created from, also when an update finds no row (a run recorded while the store was away), and
    what ``register_model`` registers, after the columns (the run must be FINISHED first)."""

    fields: dict[str, Any]
    run: Any = None
    create: bool = False
    register_model: bool = False  # then register the run's output as a model version (spec.registerModel)

    def merged(self, newer: "StoreWrite") -> "StoreWrite":
        return StoreWrite({**self.fields, **newer.fields}, newer.run or self.run, self.create or newer.create,
                          self.register_model or newer.register_model)


class StoreWrites:
    """The operator's store writes. While the store answers they are made at once; while it does not
    they wait here, one entry per run (a later write's columns win), and a thread writes them oldest
    first once ``connect`` succeeds again, backing off in between. At most ``max_runs`` runs wait: past
    that the oldest run's entry is dropped and counted. A write the store refuses for another reason
    than being away (``unavailable`` says which) is dropped and counted, so it never holds up the rest.
    """

    def __init__(self, apply: Callable[[str, StoreWrite], None], connect: Callable[[], None],
                 unavailable: Callable[[BaseException], bool], max_runs: int = 10_000,
                 backoff: Backoff | None = None) -> None:
        self._apply, self._connect, self._unavailable = apply, connect, unavailable
        self._max_runs = max_runs
        self._backoff = backoff or Backoff(1.0, 15.0, jitter=0.2)
        self._waiting: OrderedDict[str, StoreWrite] = OrderedDict()
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushing = False
        self._in_flight: str | None = None  # the run whose write the flush is carrying out
        self.up: bool | None = None  # None: not tried yet
        self.dropped = {"overflow": 0, "refused": 0}

    def submit(self, uid: str, write: StoreWrite) -> None:
        """Write now when the store is up and nothing waits, else queue; never raises for the store."""
        with self._guard:
            direct = self.up is not False and not self._waiting and not self._flushing
            if not direct:
                self._enqueue(uid, write)
        if direct and not self._write(uid, write):
            self._wake.set()

    def pending(self) -> int:
        """Runs whose write has not landed yet, the one being written included."""
        with self._guard:
            return len(self._waiting) + (self._in_flight is not None and self._in_flight not in self._waiting)

    def flush(self) -> bool:
        """Write what waits, oldest first, until done or the store fails; True when nothing is left."""
        with self._guard:
            if self._flushing:
                return False
            self._flushing = True
        try:
            for _ in range(len(self._waiting)):
                with self._guard:
                    if not self._waiting:
                        break
                    uid, write = self._waiting.popitem(last=False)
                    self._in_flight = uid
                try:
                    written = self._write(uid, write, requeue_first=True)
                finally:
                    with self._guard:
                        self._in_flight = None
                if not written:
                    return False
            return not self._waiting
        finally:
            with self._guard:
                self._flushing = False

    def _write(self, uid: str, write: StoreWrite, requeue_first: bool = False) -> bool:
        """One write; False when the store is away (the write waits again, ahead of newer runs)."""
        try:
            if self.up is not True:
                self._connect()
            self._apply(uid, write)
        except Exception as exc:  # noqa: BLE001
            if not self._unavailable(exc):
                self.dropped["refused"] += 1
                log.error("the store refused the write of run %s, dropped: %s", uid, one_line(exc))
                return True
            with self._guard:
                newer = self._waiting.pop(uid, None)
                self._waiting[uid] = write.merged(newer) if newer else write
                if requeue_first:
                    self._waiting.move_to_end(uid, last=False)
                self._trim()
            self._set_up(False, exc)
            return False
        self._set_up(True)
        return True

    def _set_up(self, up: bool, exc: BaseException | None = None) -> None:
        if up and self.up is not True:
            log.info("the store is reachable; %d run(s) wait to be written", len(self._waiting))
        elif not up and self.up is not False:
            log.warning("the store is unreachable, the operator goes on without it and retries (%d run(s) wait "
                        "to be written): %s", len(self._waiting), one_line(exc))
        self.up = up

    def _reach(self) -> None:
        try:
            self._connect()
        except Exception as exc:  # noqa: BLE001
            self._set_up(False, exc)
        else:
            self._set_up(True)

    def _enqueue(self, uid: str, write: StoreWrite) -> None:
        older = self._waiting.get(uid)
        self._waiting[uid] = older.merged(write) if older else write
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        while len(self._waiting) > self._max_runs:
            uid, _ = self._waiting.popitem(last=False)
            self.dropped["overflow"] += 1
            log.error("more than %d runs wait for the store: dropped the oldest write (run %s)", self._max_runs, uid)

    def run(self) -> None:
        """Reach the store and write what waits, backing off while it is away, until :meth:`stop`."""
        while not self._stop.is_set():
            if self.up is True and not self._waiting:
                self._wake.wait()
                self._wake.clear()
                continue
            if self.up is not True:
                self._reach()
            if self.up:
                self.flush()  # what arrives meanwhile is written on the next turn
            if self.up:
                self._backoff.reset()
            else:
                self._backoff.sleep(self._stop)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="cairn-store-writes", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
