"""The prepare step (``cairn prepare``): an init container that runs before the sidecar and trainer.

1. **Dataset.** When the run names ``dataset.uri``, compute its content digest
   (``cairn.objectstore.dataset_digest``) and record it. If ``dataset.sha256`` is pinned and
   differs, write both digests to the termination message and exit 12: the operator fails the
   run (reason ``DatasetMismatch``) before the trainer ever starts. No object store settings, no
   such bucket or no access exits 13 (``DatasetUnavailable``), also not retried. With
   ``dataset.stage`` every object is written to ``CAIRN_DATASET_DIR`` (``dataset/`` in the run
   directory) as it is hashed, so the digest is of the very bytes the trainer reads.
2. **Resume.** On a retry (attempt > 1), download the latest checkpoint the store knows of
   (highest step whose files were all uploaded) into ``checkpoints/<step>/`` of the fresh run
   directory, verifying each file's sha256, write ``resume.json`` for the SDK
   (``cairn.resume_from``), mark the files as already uploaded for the sidecar, and record which
   attempt resumed from which step.

Object store or database outages are retried with backoff for ``CAIRN_PREPARE_TIMEOUT`` seconds
(default 300); after that the step exits 1 and the operator retries the attempt without counting
it against ``backoffLimit``. A checkpoint whose objects are gone for good is skipped with a warning
(the attempt starts from scratch) rather than retried forever.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cairn.agent.uploader import Uploaded, load_state, save_state
from cairn.objectstore import (DatasetDigest, S3Config, dataset_digest, download_file, is_permanent, parse_s3_uri,
                               retry)
from cairn.rundir import PREPARE_DATASET_MISMATCH_EXIT, PREPARE_DATASET_UNAVAILABLE_EXIT
from cairn.sdk import records as R

log = logging.getLogger("cairn.prepare")

TRANSIENT_EXIT = 1


@dataclass(frozen=True)
class PrepareConfig:
    run_dir: Path
    run_id: str
    attempt: int
    namespace: str
    experiment: str
    database_url: str | None
    dataset_uri: str | None = None
    dataset_sha256: str | None = None
    dataset_dir: Path | None = None  # stage the dataset here (spec.dataset.stage)
    timeout_s: float = 300.0
    termination_log: str = "/dev/termination-log"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PrepareConfig":
        env = os.environ if env is None else env
        missing = [k for k in ("CAIRN_RUN_DIR", "CAIRN_RUN_ID") if not env.get(k)]
        if missing:
            raise ValueError(f"the prepare step needs {', '.join(missing)} in its environment")
        return cls(
            run_dir=Path(env["CAIRN_RUN_DIR"]),
            run_id=env["CAIRN_RUN_ID"],
            attempt=int(env.get("CAIRN_ATTEMPT") or 1),
            namespace=env.get("CAIRN_NAMESPACE") or "",
            experiment=env.get("CAIRN_EXPERIMENT") or "",
            database_url=env.get("CAIRN_DATABASE_URL") or None,
            dataset_uri=env.get("CAIRN_DATASET_URI") or None,
            dataset_sha256=(env.get("CAIRN_DATASET_SHA256") or "").lower() or None,
            dataset_dir=Path(env["CAIRN_DATASET_DIR"]) if env.get("CAIRN_DATASET_DIR") else None,
            timeout_s=float(env.get("CAIRN_PREPARE_TIMEOUT") or 300.0),
            termination_log=env.get("CAIRN_TERMINATION_LOG") or "/dev/termination-log",
        )


class PrepareFailed(Exception):
    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def mismatch_message(uri: str, actual: str, pinned: str) -> str:
    return f"dataset {uri} has digest {actual} but spec.dataset.sha256 pins {pinned}"


def run_prepare(cfg: PrepareConfig, s3: S3Config | None, store=None) -> int:  # noqa: ANN001
    """Do the prepare step; returns the container's exit code (0: the trainer may start)."""
    deadline = time.monotonic() + cfg.timeout_s
    store_box = [store]

    def get_store():  # noqa: ANN202
        if store_box[0] is None:
            from cairn.store.store import TrackingStore

            store_box[0] = TrackingStore(cfg.database_url)
        return store_box[0]

    try:
        for sub in ("", R.ARTIFACTS_DIR, R.METRICS_DIR, R.CHECKPOINTS_DIR):
            (cfg.run_dir / sub).mkdir(parents=True, exist_ok=True)
        if cfg.dataset_uri:
            check_dataset(cfg, s3, get_store, deadline)
        if cfg.attempt > 1 and s3 is not None:
            restore_checkpoint(cfg, s3, get_store, deadline)
    except PrepareFailed as exc:
        log.error("%s", exc)
        _termination_message(cfg, str(exc))
        return exc.exit_code
    return 0


def check_dataset(cfg: PrepareConfig, s3: S3Config | None, get_store, deadline: float) -> None:  # noqa: ANN001
    uri = cfg.dataset_uri
    assert uri is not None
    if s3 is None:
        raise PrepareFailed(PREPARE_DATASET_UNAVAILABLE_EXIT,
                            f"dataset {uri}: no object store is configured (the cairn-objectstore Secret)")
    client = s3.client()
    started = time.monotonic()

    def digest() -> DatasetDigest:
        if cfg.dataset_dir is not None:  # a fresh copy on every try: nothing left of an object since removed
            shutil.rmtree(cfg.dataset_dir, ignore_errors=True)
        return dataset_digest(client, uri, stage_to=cfg.dataset_dir)

    try:
        found = retry(digest, deadline, f"digest of {uri}", log)
    except Exception as exc:  # noqa: BLE001
        if is_permanent(exc):
            raise PrepareFailed(PREPARE_DATASET_UNAVAILABLE_EXIT, f"dataset {uri}: {_one_line(exc)}") from None
        raise PrepareFailed(TRANSIENT_EXIT, f"dataset {uri}: object store unavailable: {_one_line(exc)}") from None
    log.info("dataset %s: %d objects, %d bytes, digest %s (%.1fs)%s", uri, found.objects, found.bytes, found.digest,
             time.monotonic() - started, f", staged in {cfg.dataset_dir}" if cfg.dataset_dir else "")
    if found.objects == 0:
        log.warning("dataset %s has no objects", uri)
    try:
        retry(lambda: get_store().record_dataset(cfg.run_id, uri, found.digest, cfg.dataset_sha256, found.objects,
                                                 found.bytes), deadline, "recording the dataset digest", log)
    except Exception as exc:  # noqa: BLE001
        raise PrepareFailed(TRANSIENT_EXIT, f"could not record the dataset digest: {_one_line(exc)}") from None
    if cfg.dataset_sha256 and cfg.dataset_sha256 != found.digest:
        raise PrepareFailed(PREPARE_DATASET_MISMATCH_EXIT, mismatch_message(uri, found.digest, cfg.dataset_sha256))
    (cfg.run_dir / "dataset.json").write_text(json.dumps(
        {"uri": uri, "sha256": found.digest, "objects": found.objects, "bytes": found.bytes}))


def restore_checkpoint(cfg: PrepareConfig, s3: S3Config, get_store, deadline: float) -> None:  # noqa: ANN001
    try:
        latest = retry(lambda: get_store().latest_checkpoint(cfg.run_id), deadline, "finding the latest checkpoint",
                       log)
    except Exception as exc:  # noqa: BLE001
        raise PrepareFailed(TRANSIENT_EXIT, f"could not read the run's checkpoints: {_one_line(exc)}") from None
    if latest is None:
        log.info("attempt %d: no checkpoint to resume from", cfg.attempt)
        return
    step, files = latest
    client = s3.client()
    state = load_state(cfg.run_dir)
    restored = []
    try:
        for art in files:
            bucket, key = parse_s3_uri(art.uri)
            dest = cfg.run_dir / art.path
            retry(lambda b=bucket, k=key, d=dest, h=art.sha256: download_file(client, b, k, d, h), deadline,
                  f"downloading {art.uri}", log)
            st = os.stat(dest)
            state[art.path] = Uploaded(st.st_size, st.st_mtime_ns, st.st_ino, art.sha256, art.uri, art.attempt, True)
            restored.append(art)
    except Exception as exc:  # noqa: BLE001
        if is_permanent(exc):
            log.warning("checkpoint %d cannot be restored (%s); attempt %d starts from scratch", step,
                        _one_line(exc), cfg.attempt)
            return
        raise PrepareFailed(TRANSIENT_EXIT, f"could not download checkpoint {step}: {_one_line(exc)}") from None
    save_state(cfg.run_dir, state)
    step_dir = cfg.run_dir / R.CHECKPOINTS_DIR / str(step)
    entries = sorted(p.name for p in step_dir.iterdir() if not p.name.startswith("."))
    # What was passed to save_checkpoint: the one file or directory in the step's directory.
    path = step_dir / entries[0] if len(entries) == 1 else step_dir
    from_attempt = max((a.attempt for a in restored if a.attempt is not None), default=None)
    first = restored[0]
    prefix = f"{first.uri[: len(first.uri) - len(first.path)]}{R.CHECKPOINTS_DIR}/{step}/"
    resume = {"step": step, "path": str(path), "dir": str(step_dir), "attempt": cfg.attempt,
              "from_attempt": from_attempt, "uri": prefix}
    tmp = cfg.run_dir / (R.RESUME_FILE + ".tmp")
    tmp.write_text(json.dumps(resume, sort_keys=True))
    os.replace(tmp, cfg.run_dir / R.RESUME_FILE)
    try:
        retry(lambda: get_store().record_resume(cfg.run_id, cfg.attempt, step, prefix, from_attempt), deadline,
              "recording the resume", log)
    except Exception as exc:  # noqa: BLE001
        raise PrepareFailed(TRANSIENT_EXIT, f"could not record the resume: {_one_line(exc)}") from None
    log.info("attempt %d resumes from checkpoint %d (%d files, saved by attempt %s)", cfg.attempt, step,
             len(restored), from_attempt)


def _termination_message(cfg: PrepareConfig, message: str) -> None:
    try:
        with open(cfg.termination_log, "w") as f:
            f.write(message[:4000])
    except OSError:
        pass  # outside Kubernetes; the message is in the log too


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
