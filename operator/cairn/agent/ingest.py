"""Tail a run directory and commit what it holds to the store, exactly once.

Each source file has a committed byte offset in the store (``ingest_progress``). A round reads
complete lines from that offset, parses them, and commits the rows together with the new offset
in one transaction. Whatever happens around that commit — a SIGKILL, a lost connection, a
database restart — the offset in the store says exactly which lines are in, so nothing is lost
or written twice. The offset only moves from where the batch was read (compare-and-set), so a
second agent on the same files cannot store a line again either. The run directory itself is the
backlog while the database is away.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cairn import rundir as R
from cairn.agent.precedence import CODE_PREFIX, keep_recorded_facts
from cairn.agent.records import MAX_LINE_BYTES, STORE_REJECTED, OversizeLine, ParsedLines, Rejection, parse_lines
from cairn.backoff import Backoff
from cairn.messages import one_line
from cairn.store.db import BatchRefused, IngestConflict
from cairn.store.entities import ArtifactInfo, IngestBatch, IngestPosition

log = logging.getLogger("cairn.agent")

MAX_BATCH_BYTES = 8 << 20
# Points take far more memory than the bytes they come from (about 100 bytes each in the agent, as
# much again on the way to the database): 20,000 keeps a batch of 200-key lines to a few MiB.
MAX_BATCH_POINTS = 20_000
HEAD_BYTES = 4096  # how much of a file's start identifies it
MISSING_ARTIFACT = "missing_artifact"
SOURCE_TRUNCATED = "source_truncated"  # a file shorter than what was already ingested from it
SOURCE_REPLACED = "source_replaced"  # a file whose first bytes differ from those first ingested
REJECTIONS_LOGGED_PER_REASON = 20
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


def read_complete_lines(path: Path, offset: int, max_bytes: int = MAX_BATCH_BYTES) -> list[bytes]:
    """Complete lines from ``offset``, at most about ``max_bytes`` of them (a longer first line whole).

    A trailing line without its newline is still being written and is left for the next round.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read(max_bytes)
        end = chunk.rfind(b"\n")
        if end < 0 and len(chunk) == max_bytes < MAX_LINE_BYTES:
            # A first line longer than a batch but within the line limit: read on to its end.
            chunk += f.read(MAX_LINE_BYTES + 1 - max_bytes)
            end = chunk.find(b"\n")
        if end >= 0:
            return chunk[: end + 1].splitlines(keepends=True)
        if len(chunk) <= MAX_LINE_BYTES:
            return []
        # One line longer than the limit: skip to its newline without holding it in memory.
        size = len(chunk)
        while True:
            more = f.read(1 << 20)
            if not more:
                return []  # not finished yet; look again later
            nl = more.find(b"\n")
            if nl >= 0:
                size += nl + 1
                return [OversizeLine(size)]
            size += len(more)


def head_identity(lines: list[bytes], limit: int = HEAD_BYTES) -> tuple[int, str]:
    """(n, sha256 of the first n bytes) of lines read from the start of a file, n at most ``limit``."""
    h = hashlib.sha256()
    n = 0
    for line in lines:
        if n >= limit:
            break
        part = line[: limit - n]
        h.update(part)
        n += len(part)
    return n, h.hexdigest()


def changed_since(path: Path, position: IngestPosition) -> str | None:
    """Why ingest of ``path`` cannot go on from ``position`` (a rejection reason), or None when it can."""
    if path.stat().st_size < position.offset:
        return SOURCE_TRUNCATED
    if position.head_bytes:
        with open(path, "rb") as f:
            head = f.read(position.head_bytes)
        if hashlib.sha256(head).hexdigest() != position.head_sha256:
            return SOURCE_REPLACED
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_run_id(run_dir: Path) -> str | None:
    """The run id the SDK wrote in the first record of the run directory, if any yet."""
    path = run_dir / R.RECORDS_FILE
    if not path.exists():
        return None
    with open(path, "rb") as f:
        first = f.readline()
    if not first.endswith(b"\n"):
        return None
    try:
        rec = json.loads(first)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("type") != R.RUN or not isinstance(rec.get("run_id"), str):
        return None
    try:
        return str(uuid.UUID(rec["run_id"]))
    except ValueError:
        return None


@dataclass
class AgentStats:
    points: int = 0
    lines: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    errors: int = 0
    last_commit: float | None = None
    finished: bool = False


class IngestAgent:
    """Ingests one run directory. ``ingest_available`` does one pass; ``run`` loops until stopped."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        database_url: str | None = None,
        run_id: str | None = None,
        extra_sources: tuple[str, ...] = (),
        poll_interval: float = 0.5,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_batch_points: int = MAX_BATCH_POINTS,
        store=None,  # noqa: ANN001 - a TrackingStore, for callers that already have one
        attempt: int | None = None,
        manifest_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.database_url = database_url
        self.run_id = run_id
        self.extra_sources = extra_sources
        self.poll_interval = poll_interval
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_points = max_batch_points
        # The run's parameters as given from outside: the code's params records cannot replace them.
        self.manifest_params = dict(manifest_params or {})
        # Each attempt of a retried pod writes fresh files; its offsets are kept apart.
        self.source_prefix = f"attempt-{attempt}/" if attempt is not None else ""
        self.attempt = attempt
        self.stats = AgentStats()
        self.live = None  # an exporter's LiveState, fed with every parsed batch
        # The sidecar's uploader, when an object store is configured: artifact records go to it and
        # it records them with s3:// uris; without it they are recorded here as local file:// rows.
        self.artifact_sink = None
        self._store = store
        self._offsets: dict[str, tuple[int, int]] = {}
        self._set_aside: set[str] = set()  # sources truncated or replaced since their ingest began
        self._logged: dict[tuple[str, str], int] = {}

    @property
    def store(self):  # noqa: ANN201
        if self._store is None:
            from cairn.store import TrackingStore

            self._store = TrackingStore(self.database_url)
        return self._store

    def sources(self) -> list[str]:
        """Files to ingest, as paths relative to the run directory (the names kept in the store)."""
        found = []
        if (self.run_dir / R.RECORDS_FILE).exists():
            found.append(R.RECORDS_FILE)
        metrics_dir = self.run_dir / R.METRICS_DIR
        if metrics_dir.is_dir():
            found += sorted(f"{R.METRICS_DIR}/{p.name}" for p in metrics_dir.glob("*.jsonl"))
        found += [s for s in self.extra_sources if (self.run_dir / s).exists() and s not in found]
        return found

    def _progress(self, source: str) -> tuple[int, int] | None:
        """The committed (offset, line number) of ``source``; None when it is set aside, found truncated
        or replaced after its ingest began (reading on would start mid-line in another file)."""
        if source in self._set_aside:
            return None
        if source not in self._offsets:
            position = self.store.ingest_position(self.run_id, self.source_prefix + source)
            reason = changed_since(self.run_dir / source, position) if position.offset else None
            if reason is not None:
                self._set_source_aside(source, reason, position.offset)
                return None
            self._offsets[source] = position[:2]
        return self._offsets[source]

    def _set_source_aside(self, source: str, reason: str, offset: int) -> None:
        log.error("%s: %s after %d bytes were ingested; it is not read further (its lines from then on are "
                  "not in the store)", source, reason.replace("_", " "), offset)
        self.store.count_rejections(self.run_id, self.source_prefix + source, {reason: 1})
        self._set_aside.add(source)
        self._offsets.pop(source, None)
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1

    def ingest_available(self) -> int:
        """Commit every complete line present now; returns the number of points committed."""
        if self.run_id is None:
            self.run_id = find_run_id(self.run_dir)
            if self.run_id is None:
                return 0
        total = 0
        try:
            for source in self.sources():
                while True:
                    n = self._ingest_one_batch(source)
                    if n is None:
                        break
                    total += n
        finally:
            if self.live is not None:
                self.live.backlog_bytes = self._backlog_bytes()
        return total

    def _backlog_bytes(self) -> int:
        waiting = 0
        for source in self.sources():
            offset = self._offsets.get(source, (0, 0))[0]
            try:
                waiting += max(0, (self.run_dir / source).stat().st_size - offset)
            except OSError:
                continue
        return waiting

    def _ingest_one_batch(self, source: str) -> int | None:
        """Commit the next batch of ``source``: the number of points, or None when there is none."""
        progress = self._progress(source)
        if progress is None:
            return None
        offset, line_no = progress
        path = self.run_dir / source
        if path.stat().st_size < offset:
            self._set_source_aside(source, SOURCE_TRUNCATED, offset)
            return None
        lines = read_complete_lines(path, offset, self.max_batch_bytes)
        if not lines:
            return None
        try:
            return self._commit_lines(source, lines, offset, line_no)[0]
        except IngestConflict as exc:
            log.info("%s: %s; going on from where it got to", source, exc)
            self._offsets.pop(source, None)
            return 0
        except BaseException:
            # The commit may or may not have happened: read the offset back from the store.
            self._offsets.pop(source, None)
            raise

    def _commit_lines(self, source: str, lines: list[bytes], offset: int, line_no: int) -> tuple[int, int, int]:
        """Parse ``lines`` (read from byte ``offset``, after line ``line_no``) and commit as many as one
        batch holds; returns (points, lines, bytes) committed.

        When the database refuses the batch for its data, the lines are split in halves and each is
        committed on its own, down to the single line at fault, which is rejected with the database's
        message: a line costs at most about log2(lines) more commits, and never stops the ingest.
        """
        parsed = parse_lines(lines, line_no + 1, now_ms=int(time.time() * 1000), max_points=self.max_batch_points)
        parsed.batch.attempt = self.attempt
        self._collect_artifacts(parsed, line_no)
        overridden = keep_recorded_facts(parsed.batch, self.manifest_params)
        if overridden:
            log.warning("%s: the code logged %s, set by the run's manifest or the operator: their values are kept, "
                        "the code's are stored under %s<key>", source, ", ".join(sorted(set(overridden))[:20]),
                        CODE_PREFIX)
        end, end_line = offset + parsed.bytes_used, line_no + parsed.lines_used
        head = head_identity(lines) if offset == 0 else None
        if self.live is not None:
            self.live.observe(parsed.batch.metrics)
            if parsed.batch.finish is not None:
                self.live.finished = True
        rejected = parsed.counts()
        try:
            self.store.ingest_batch(self.run_id, self.source_prefix + source, parsed.batch, end, end_line, rejected,
                                    start=offset, head=head)
        except BatchRefused as exc:
            if parsed.lines_used > 1:
                half = parsed.lines_used // 2
                first = self._commit_lines(source, lines[:half], offset, line_no)
                rest = self._commit_lines(source, lines[first[1]:parsed.lines_used], offset + first[2],
                                          line_no + first[1])
                return first[0] + rest[0], first[1] + rest[1], first[2] + rest[2]
            # Nothing of the line is stored; what the parser found wrong with it is still counted.
            parsed = ParsedLines(rejections=[*parsed.rejections, Rejection(line_no + 1, STORE_REJECTED, str(exc))],
                                 lines_used=1, bytes_used=parsed.bytes_used)
            rejected = parsed.counts()
            self.store.ingest_batch(self.run_id, self.source_prefix + source, IngestBatch(), end, end_line, rejected,
                                    start=offset, head=head)
        self._offsets[source] = (end, end_line)
        self._report(source, parsed.rejections, rejected)
        if self.live is not None:
            self.live.rejected.update(rejected)
            self.live.last_commit = time.time()
        self.stats.points += len(parsed.batch.metrics)
        self.stats.lines += parsed.lines_used
        self.stats.commits += 1
        self.stats.last_commit = time.time()
        if parsed.batch.finish is not None:
            self.stats.finished = True
        return len(parsed.batch.metrics), end_line - line_no, end - offset

    def _collect_artifacts(self, parsed: ParsedLines, line_no: int) -> None:
        """Hand artifact records to the uploader, or describe them into the batch; reject missing ones."""
        for rel in parsed.artifact_paths:
            art = self._artifact(rel, describe=self.artifact_sink is None)
            if art is None:
                parsed.rejections.append(Rejection(line_no, MISSING_ARTIFACT, rel))
            elif self.artifact_sink is not None:
                self.artifact_sink(rel)
            else:
                parsed.batch.artifacts.append(art)

    def _artifact(self, rel: str, describe: bool = True) -> ArtifactInfo | bool | None:
        """The artifact at ``rel`` (already a safe relative path), or None unless it is a regular file
        reached without a symbolic link: a link could make a stored path name a place elsewhere."""
        if not R.regular_file_below(self.run_dir, rel):
            return None
        path = (self.run_dir / rel).absolute()
        if not describe:
            return True
        from cairn.agent.uploader import artifact_kind, checkpoint_step

        return ArtifactInfo(rel, path.as_uri(), path.stat().st_size, sha256_file(path), artifact_kind(rel),
                            checkpoint_step(rel))

    def _report(self, source: str, rejections: list[Rejection], counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + n
        for r in rejections:
            seen = self._logged.get((source, r.reason), 0)
            self._logged[(source, r.reason)] = seen + 1
            if seen < REJECTIONS_LOGGED_PER_REASON:
                log.warning("%s line %d skipped: %s: %s", source, r.line, r.reason, r.detail)
            elif seen == REJECTIONS_LOGGED_PER_REASON:
                log.warning("%s: further %r rejections are counted on the run but not logged", source, r.reason)

    def run(self, stop: threading.Event, drain_timeout: float = 60.0, exit_on_finish: bool = False) -> bool:
        """Ingest until ``stop`` is set, then drain what is left. True when everything got in.

        Database errors never end the loop: the agent backs off (0.5 s doubling to 30 s) and the
        lines wait in their files.
        """
        backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        drain_deadline = None
        while True:
            if stop.is_set() and drain_deadline is None:
                drain_deadline = time.monotonic() + drain_timeout
            try:
                n = self.ingest_available()
                over = n == 0 and exit_on_finish and self._run_over()
            except Exception as exc:  # noqa: BLE001 - any failure is retried; nothing is lost
                self.stats.errors += 1
                log.warning("store unavailable, retrying in %.1fs: %s", backoff.peek(), one_line(exc))
                # Until the stop a wait ends early on it; while draining it runs, up to the drain deadline.
                if not backoff.sleep(stop if drain_deadline is None else None, drain_deadline):
                    log.error("stopping with lines not yet ingested; they stay in %s for the next start", self.run_dir)
                    return False
                continue
            backoff.reset()
            if n == 0:
                if drain_deadline is not None:
                    return True
                if over:
                    return True
                stop.wait(self.poll_interval)

    def _run_over(self) -> bool:
        """Whether the finish record is in: ingested by this agent or by an earlier one that died."""
        if not self.stats.finished and self.run_id is not None:
            status = self.store.run_status(self.run_id)
            self.stats.finished = status is not None and status.is_final
        return self.stats.finished
