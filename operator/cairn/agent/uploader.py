"""The sidecar's uploader: everything under ``artifacts/`` and ``checkpoints/`` goes to the object store.

A thread beside the ingest agent scans the run directory every second. A file is uploaded once
it has not changed for ``settle_s`` (or at once in the final flush, when the trainer has exited),
hashed while it is read, then recorded in the store with its ``s3://`` uri and sha256. The files
of one checkpoint step (``checkpoints/<step>/...``) are recorded in one transaction, once all of
them are up, so a half-uploaded checkpoint is never offered for resuming.

Exactly once: the object key is the file's path below the run's prefix and the store upserts by
(run, path), so uploading or recording the same file again — after a crash, a restarted sidecar,
MinIO or PostgreSQL coming back — overwrites rather than duplicates. What is done is kept in
``<run dir>/.cairn-uploads.json`` (size, mtime, inode, sha256, recorded) so a restarted sidecar
does not upload again what is already up. That file lies where the trainer can write, so on start
an entry is believed only when the store has the same row (uri, size, sha256, attempt); the rest go
again. While MinIO or the database is away the files simply wait on disk (backoff 0.5 s doubling
to 30 s); training never waits for an upload.

Only regular files reached without a symbolic link are uploaded: a link could send a file from
elsewhere and a FIFO would hang the read. Anything else is skipped, logged and counted by reason
(``UploadStats.skipped``, the live metric ``cairn_run_skipped_files_total``).

On SIGTERM (the trainer has exited) the final flush uploads whatever is left within the drain
timeout and records on the run whether every file got up (``runs.artifacts_uploaded``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from cairn import rundir as R
from cairn.rundir import Env
from cairn.backoff import Backoff, retry
from cairn.messages import one_line
from cairn.objectstore import (DEFAULT_PART_SIZE, FileChanged, S3Config, ensure_bucket, run_prefix, s3_uri,
                               upload_file)
from cairn.store.entities import ArtifactInfo

log = logging.getLogger("cairn.uploader")

CHECKPOINTS_DIR = R.CHECKPOINTS_DIR
UPLOAD_DIRS = (R.ARTIFACTS_DIR, CHECKPOINTS_DIR)
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_SKIPPED_PATHS = 10_000  # distinct skipped paths remembered (so each is counted once)
SKIPPED_PATHS_LOGGED = 20
MAX_STATE_BYTES = 64 << 20  # a larger state file is not read (the trainer could make it any size)


@dataclass
class Uploaded:
    """What the object store (and, once ``recorded``, the store) holds for one file."""

    size: int
    mtime_ns: int
    ino: int
    sha256: str
    uri: str
    attempt: int | None = None
    recorded: bool = False

    def matches(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def checkpoint_step(rel: str) -> int | None:
    """The step of ``checkpoints/<step>/...``; None for any other path."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0] == CHECKPOINTS_DIR and parts[1].isdigit():
        return int(parts[1])
    return None


def artifact_kind(rel: str) -> str:
    return "checkpoint" if rel.startswith(CHECKPOINTS_DIR + "/") else "artifact"


def group_of(rel: str) -> str:
    """Files recorded together: one checkpoint step, or a single file."""
    step = checkpoint_step(rel)
    return f"{CHECKPOINTS_DIR}/{step}" if step is not None else rel


def load_state(run_dir: Path) -> dict[str, Uploaded]:
    """The state file as written; entries that do not parse are left out (the file is untrusted)."""
    path = run_dir / R.UPLOADS_STATE_FILE
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            log.warning("%s is larger than %d bytes and is ignored; every file is uploaded again", path,
                        MAX_STATE_BYTES)
            return {}
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    state = {}
    for rel, entry in (raw.items() if isinstance(raw, dict) else ()):
        try:
            state[rel] = Uploaded(**entry)
        except TypeError:
            continue
    return state


def confirmed_by_store(entry: Uploaded, row: ArtifactInfo | None) -> bool:
    """Whether the store holds the very upload a state-file entry claims."""
    return (row is not None and entry.recorded
            and (row.uri, row.size, row.sha256, row.attempt) == (entry.uri, entry.size, entry.sha256, entry.attempt))


def save_state(run_dir: Path, state: Mapping[str, Uploaded]) -> None:
    tmp = run_dir / (R.UPLOADS_STATE_FILE + ".tmp")
    tmp.write_text(json.dumps({rel: asdict(u) for rel, u in state.items()}, sort_keys=True))
    os.replace(tmp, run_dir / R.UPLOADS_STATE_FILE)


@dataclass
class UploadStats:
    uploaded: int = 0
    bytes: int = 0
    recorded: int = 0
    errors: int = 0
    pending: int = 0
    skipped: Counter = field(default_factory=Counter)  # distinct paths not uploaded, by reason


class ArtifactUploader:
    """Uploads one run directory's artifacts and checkpoints; ``run`` loops until stopped, then flushes."""

    def __init__(self, run_dir: str | os.PathLike, run_id: str, s3: S3Config, prefix: str,
                 database_url: str | None = None, store=None, attempt: int | None = None,  # noqa: ANN001
                 part_size: int = DEFAULT_PART_SIZE, settle_s: float = 2.0, poll_interval: float = 1.0) -> None:
        if not s3.bucket:
            raise ValueError(f"the object store settings name no bucket ({Env.S3_BUCKET})")
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.s3 = s3
        self.bucket = s3.bucket
        self.prefix = prefix.strip("/")
        self.database_url = database_url
        self.attempt = attempt
        self.part_size = part_size
        self.settle_s = settle_s
        self.poll_interval = poll_interval
        self.stats = UploadStats()
        self.state = load_state(self.run_dir)
        self.state_verified = not self.state
        self.live = None  # an exporter's LiveState: skipped files are counted there too
        self._skipped: dict[str, str] = {}
        self._store = store
        self._client = None
        self._extra: set[str] = set()

    @property
    def store(self):  # noqa: ANN201
        if self._store is None:
            from cairn.store import TrackingStore

            self._store = TrackingStore(self.database_url)
        return self._store

    @property
    def client(self):  # noqa: ANN201
        if self._client is None:
            client = self.s3.client()
            # A fresh install's store has no bucket yet; the first sidecar makes it (raises, and the
            # caller backs off, when these credentials may not).
            if ensure_bucket(client, self.bucket):
                log.info("made bucket %s", self.bucket)
            self._client = client
        return self._client

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def notify(self, rel: str) -> None:
        """A file named by an ``artifact`` record (the ingest agent calls this); uploaded like the rest."""
        self._extra.add(rel)

    # -- one pass -------------------------------------------------------------------------------
    def files(self) -> list[str]:
        """Files to upload, relative to the run directory; names starting with a dot are skipped
        (the SDK writes a checkpoint under a dot name and renames it into place when complete)."""
        found: set[str] = set()
        for top in UPLOAD_DIRS:
            base = self.run_dir / top
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel_dir = os.path.relpath(dirpath, self.run_dir)
                # os.walk lists a link to a directory among the directories and does not enter it.
                found.update(f"{rel_dir}/{d}".replace(os.sep, "/") for d in dirnames
                             if os.path.islink(os.path.join(dirpath, d)))
                found.update(f"{rel_dir}/{f}".replace(os.sep, "/") for f in filenames
                             if not f.startswith(".") and not f.endswith(".part"))
        found.update(self._extra)
        regular = []
        for rel in sorted(found):
            reason = R.why_not_regular_file(self.run_dir, rel)
            if reason is None:
                regular.append(rel)
            elif reason != "missing":  # removed since the scan, or an artifact record's typo
                self._skip(rel, reason)
        return regular

    def _skip(self, rel: str, reason: str) -> None:
        """Count a path that is not uploaded once, by reason: a link could send a file from elsewhere
        and a FIFO would hang the upload."""
        if rel in self._skipped or len(self._skipped) >= MAX_SKIPPED_PATHS:
            return
        self._skipped[rel] = reason
        self.stats.skipped[reason] += 1
        if self.live is not None:
            self.live.skipped_files[reason] += 1
        if len(self._skipped) <= SKIPPED_PATHS_LOGGED:
            log.warning("%s is not uploaded: %s (only regular files are)", rel, reason.replace("_", " "))
        elif len(self._skipped) == SKIPPED_PATHS_LOGGED + 1:
            log.warning("further files that are not regular files are counted but not logged")

    def verify_state(self) -> None:
        """Keep only the state-file entries the store confirms; the others' files are uploaded again.

        The state file lies in the run directory, which the trainer can write: a forged entry must
        neither keep a file out of the object store nor put its uri or sha256 into the store.
        """
        rows = {a.path: a for a in self.store.list_artifacts(self.run_id)}
        kept = {rel: e for rel, e in self.state.items() if confirmed_by_store(e, rows.get(rel))}
        if len(kept) < len(self.state):
            log.warning("%d of %d entries of %s are not confirmed by the store; their files are uploaded again",
                        len(self.state) - len(kept), len(self.state), R.UPLOADS_STATE_FILE)
            self.state = kept
            save_state(self.run_dir, self.state)
        self.state_verified = True

    def upload_available(self, final: bool = False) -> int:
        """Upload and record what is ready; returns how many files are still waiting.

        Object store and database errors propagate (the caller backs off); files already done in
        this pass stay done.
        """
        record_error: Exception | None = None
        if not self.state_verified:
            try:
                self.verify_state()
            except Exception as exc:  # noqa: BLE001 - files the state file names wait for the store
                record_error = exc
        groups: dict[str, list[str]] = {}
        for rel in self.files():
            groups.setdefault(group_of(rel), []).append(rel)
        waiting = 0
        now = time.time()
        for rels in groups.values():
            if not self.state_verified and any(rel in self.state for rel in rels):
                waiting += len(rels)
                continue
            done: list[tuple[str, Uploaded]] = []
            for rel in rels:
                try:
                    st = os.stat(self.run_dir / rel)
                except FileNotFoundError:
                    continue  # removed since the scan
                entry = self.state.get(rel)
                if entry is None or not entry.matches(st):
                    if not final and now - st.st_mtime < self.settle_s:
                        continue  # may still be being written
                    entry = self._upload(rel)
                    if entry is None:
                        continue
                done.append((rel, entry))
            if len(done) < len(rels):
                # A group is recorded whole or not at all: its uploaded files wait for the rest.
                waiting += len(rels) - sum(1 for _, e in done if e.recorded)
                continue
            if any(not e.recorded for _, e in done):
                if record_error is not None:  # one failed write per pass: the database is away
                    waiting += len(done)
                    continue
                try:
                    self._record(done)
                except Exception as exc:  # noqa: BLE001 - keep uploading; the rows are written later
                    waiting += len(done)
                    record_error = exc
        self.stats.pending = waiting
        if record_error is not None:
            raise record_error
        return waiting

    def _upload(self, rel: str) -> Uploaded | None:
        path = self.run_dir / rel
        try:
            size, sha = upload_file(self.client, self.bucket, self.key(rel), path, self.part_size)
            st = os.stat(path)
        except FileChanged:
            log.info("%s changed while uploading; it goes again once it is quiet", rel)
            return None
        except FileNotFoundError:
            return None
        entry = Uploaded(size, st.st_mtime_ns, st.st_ino, sha, s3_uri(self.bucket, self.key(rel)), self.attempt)
        self.state[rel] = entry
        save_state(self.run_dir, self.state)
        self.stats.uploaded += 1
        self.stats.bytes += size
        log.info("uploaded %s (%d bytes, sha256 %s)", entry.uri, size, sha[:16])
        return entry

    def _record(self, done: list[tuple[str, Uploaded]]) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        self.store.record_artifacts(self.run_id, [
            ArtifactInfo(rel, e.uri, e.size, e.sha256, artifact_kind(rel), checkpoint_step(rel), e.attempt, now)
            for rel, e in done
        ])
        for _, e in done:
            e.recorded = True
        save_state(self.run_dir, self.state)
        self.stats.recorded += len(done)

    # -- the thread -----------------------------------------------------------------------------
    def run(self, stop: threading.Event, drain_timeout: float = 60.0) -> bool:
        """Upload until ``stop`` is set, then flush everything within ``drain_timeout``.

        Returns True when every file is uploaded and recorded; records that outcome on the run.
        """
        backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        while not stop.is_set():
            try:
                self.upload_available()
                backoff.reset()
                stop.wait(self.poll_interval)
            except Exception as exc:  # noqa: BLE001 - retried; the files wait on disk
                self.stats.errors += 1
                log.warning("upload failed, retrying in %.1fs: %s", backoff.peek(), one_line(exc))
                backoff.sleep(stop)
        return self.flush(time.monotonic() + drain_timeout)

    def flush(self, deadline: float) -> bool:
        """The final pass (the trainer has exited): everything, settled or not, until ``deadline``."""
        backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        while True:
            try:
                waiting = self.upload_available(final=True)
                if waiting == 0:
                    break
                # Files that changed under the upload: try again shortly.
                error = None
            except Exception as exc:  # noqa: BLE001
                self.stats.errors += 1
                error = exc
            if time.monotonic() + backoff.peek() > deadline:
                break
            if error is not None:
                log.warning("final upload failed, retrying in %.1fs: %s", backoff.peek(), one_line(error))
            backoff.sleep()
        pending = self._pending_count()
        ok = pending == 0
        if ok:
            log.info("all %d files are in the object store (%d uploaded by this sidecar, %d bytes)",
                     len(self.state), self.stats.uploaded, self.stats.bytes)
        else:
            log.error("%d files could not be uploaded before the drain timeout; the run records it", pending)
        if self.stats.skipped:
            log.warning("not uploaded, as not regular files: %s",
                        ", ".join(f"{n} {reason}" for reason, n in sorted(self.stats.skipped.items())))
        self._record_outcome(ok, pending, deadline)
        return ok

    def _pending_count(self) -> int:
        pending = 0
        for rel in self.files():
            entry = self.state.get(rel)
            try:
                st = os.stat(self.run_dir / rel)
            except FileNotFoundError:
                continue
            if entry is None or not entry.matches(st) or not entry.recorded:
                pending += 1
        return pending

    def _record_outcome(self, ok: bool, pending: int, deadline: float) -> None:
        try:
            retry(lambda: self.store.update_run(self.run_id, artifacts_uploaded=ok, artifacts_pending=pending),
                  deadline + 5, "recording the upload outcome", backoff=Backoff(BACKOFF_START_S, BACKOFF_MAX_S))
        except Exception as exc:  # noqa: BLE001
            log.error("could not record the upload outcome on the run: %s", one_line(exc))


@dataclass
class UploadThread:
    uploader: ArtifactUploader
    thread: threading.Thread
    result: dict

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return bool(self.result.get("ok"))


def start_uploads(run_dir: Path, run_id: str, attempt: int | None, database_url: str | None, stop: threading.Event,
                  drain_timeout: float, agent=None, *, s3: S3Config | None, namespace: str = "",  # noqa: ANN001
                  experiment: str = "") -> UploadThread | None:
    """The sidecar's hook: start the uploader thread when an object store is configured, else None.

    With an uploader the ingest agent hands ``artifact`` records to it instead of recording
    local file:// rows.
    """
    if s3 is None:
        log.info("no object store configured: artifacts stay in the pod")
        return None
    prefix = run_prefix(namespace, experiment, run_id)
    try:
        uploader = ArtifactUploader(run_dir, run_id, s3, prefix, database_url=database_url, attempt=attempt,
                                    part_size=s3.part_size)
    except ValueError as exc:
        # Bad settings must not stop the sidecar (the trainer waits for it): track without uploads.
        log.error("artifacts will not be uploaded: %s", exc)
        return None
    if agent is not None:
        agent.artifact_sink = uploader.notify
        uploader.live = agent.live
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("ok", uploader.run(stop, drain_timeout)),
                              name="cairn-uploader", daemon=True)
    thread.start()
    log.info("uploading artifacts and checkpoints to s3://%s/%s/", s3.bucket, prefix)
    return UploadThread(uploader, thread, result)
