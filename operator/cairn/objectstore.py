"""The cluster's object store (MinIO, or any S3 API): artifacts, checkpoints and datasets.

Object layout, one prefix per run::

    s3://<bucket>/<namespace>/<experiment>/<run id>/artifacts/<path>
    s3://<bucket>/<namespace>/<experiment>/<run id>/checkpoints/<step>/<path>

The key below the run's prefix is the file's path in the run directory, so uploading a file
again (a retry, a restarted sidecar) overwrites the same object and never makes a second one.
Every upload hashes the bytes as it reads them; the sha256 goes into the store with the
``s3://`` uri.

Settings come from the environment (the operator fills them from a Secret, only into its own
containers): ``CAIRN_S3_ENDPOINT`` (``http://host:port`` or ``https://...``),
``CAIRN_S3_ACCESS_KEY``, ``CAIRN_S3_SECRET_KEY``, ``CAIRN_S3_BUCKET``, ``CAIRN_S3_REGION`` and
``CAIRN_S3_CA_BUNDLE`` (PEM text of the CA certificates that sign an ``https`` endpoint's
certificate, for a site CA that is not in the image's trust store). The usual
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and
``AWS_CA_BUNDLE`` (a file) are read when the ``CAIRN_`` ones are absent.

Dataset digest (``dataset_digest``): for every object under the dataset's prefix, except
zero-byte "folder" markers whose key ends in ``/``, take its key relative to the prefix, its size
and the sha256 of its content; sort by the relative key (as UTF-8 bytes) and hash::

    sha256( concat over objects of:  key ‖ 0x00 ‖ decimal size ‖ 0x00 ‖ hex sha256(content) ‖ 0x0A )

The result is independent of listing order and of where the dataset lives (the same files under
another bucket or prefix give the same digest); any added, removed, renamed or changed object
changes it. ``cairn datasets digest s3://bucket/prefix`` prints it, to pin in ``spec.dataset.sha256``.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping
from urllib.parse import urlsplit

MIN_PART_SIZE = 5 << 20  # S3's smallest multipart part
DEFAULT_PART_SIZE = 16 << 20
MAX_PARTS = 10_000
CHUNK = 1 << 20


class ObjectStoreError(Exception):
    """A problem with the object store settings or a URI that a user can fix."""


class ChecksumMismatch(ObjectStoreError):
    pass


class FileChanged(Exception):
    """The file changed while it was being uploaded; the upload is not a consistent copy."""


@dataclass(frozen=True)
class S3Config:
    endpoint: str  # host:port, as minio.Minio takes it
    secure: bool
    access_key: str | None
    secret_key: str | None
    bucket: str | None
    region: str | None = None
    ca_bundle: str | None = field(default=None, repr=False)  # PEM text

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Config | None":
        """The settings in ``env`` (default ``os.environ``); None when no endpoint is set."""
        env = os.environ if env is None else env

        def get(*names: str) -> str | None:
            return next((env[n] for n in names if env.get(n)), None)

        url = get("CAIRN_S3_ENDPOINT", "AWS_ENDPOINT_URL")
        if not url:
            return None
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ObjectStoreError(f"CAIRN_S3_ENDPOINT must look like http://host:port, not {url!r}")
        return cls(
            endpoint=parts.netloc,
            secure=parts.scheme == "https",
            access_key=get("CAIRN_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
            secret_key=get("CAIRN_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
            bucket=get("CAIRN_S3_BUCKET"),
            region=get("CAIRN_S3_REGION", "AWS_REGION"),
            ca_bundle=get("CAIRN_S3_CA_BUNDLE") or _read_ca_file(get("AWS_CA_BUNDLE")),
        )

    def client(self):  # noqa: ANN201 - a minio.Minio
        """A client that gives up quickly when the server is away: callers retry with their own backoff."""
        import logging

        import minio
        import urllib3

        # Our callers log each failed attempt once; urllib3's per-retry warnings would only repeat it.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        tls = {}
        if self.secure and self.ca_bundle:
            import ssl

            try:
                tls["ssl_context"] = ssl.create_default_context(cadata=self.ca_bundle)
            except ssl.SSLError as exc:
                raise ObjectStoreError(f"CAIRN_S3_CA_BUNDLE holds no valid PEM certificate: {exc}") from None
        http = urllib3.PoolManager(
            **tls,
            timeout=urllib3.Timeout(connect=5, read=120),
            maxsize=8,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        return minio.Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                           secure=self.secure, region=self.region, http_client=http)


def _read_ca_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ObjectStoreError(f"AWS_CA_BUNDLE {path!r} cannot be read: {exc.strerror}") from None


def ensure_bucket(client, bucket: str) -> bool:  # noqa: ANN001
    """Make ``bucket`` unless it exists; True when this call made it. Safe when many race to make it.

    Credentials that may write objects but not list the bucket (403 on HEAD) are left to the
    uploads themselves: the bucket is then someone else's to make.
    """
    from minio.error import S3Error

    try:
        if client.bucket_exists(bucket):
            return False
    except S3Error as exc:
        if exc.code == "AccessDenied":
            return False
        raise
    try:
        client.make_bucket(bucket)
    except S3Error as exc:
        if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise
    return True


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` → ``("bucket", "key/prefix")``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ObjectStoreError(f"not an s3:// uri: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def run_prefix(namespace: str, experiment: str, run_id: str) -> str:
    """The key prefix of one run's objects (no trailing slash)."""
    return "/".join(p.strip("/") for p in (namespace or "default", experiment or "default", run_id))


def part_size_for(size: int, preferred: int = DEFAULT_PART_SIZE) -> int:
    """A multipart part size of at least ``preferred`` (and 5 MiB) that needs at most 10,000 parts."""
    part = max(preferred, MIN_PART_SIZE)
    if size > part * MAX_PARTS:
        part = -(-size // MAX_PARTS)
        part = -(-part // CHUNK) * CHUNK
    return part


class HashingReader:
    """A read-only stream over a file that hashes what passes through it."""

    def __init__(self, f, progress: Callable[[int], None] | None = None) -> None:  # noqa: ANN001
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        if self._progress is not None and data:
            self._progress(len(data))
        return data


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def upload_file(client, bucket: str, key: str, path: str | os.PathLike,  # noqa: ANN001
                part_size: int = DEFAULT_PART_SIZE) -> tuple[int, str]:
    """Upload one file (multipart above ``part_size``) and return (size, sha256 of what was sent).

    Raises :class:`FileChanged` when the file changed while it was read: the object then holds no
    consistent version and the caller uploads it again later (to the same key).
    """
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        reader = HashingReader(f)
        client.put_object(bucket, key, reader, length=before.st_size, part_size=part_size_for(before.st_size, part_size),
                          num_parallel_uploads=2)
        after = os.stat(path)
    if _signature(before) != _signature(after) or reader.bytes != before.st_size:
        raise FileChanged(f"{path} changed while it was uploaded")
    return before.st_size, reader.sha256.hexdigest()


def download_file(client, bucket: str, key: str, dest: str | os.PathLike, expected_sha256: str | None = None,  # noqa: ANN001
                  progress: Callable[[int], None] | None = None) -> tuple[int, str]:
    """Download an object to ``dest`` (through ``dest.part``, renamed only when the sha256 matches)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    size = 0
    resp = client.get_object(bucket, key)
    try:
        with open(part, "wb") as out:
            for chunk in resp.stream(CHUNK):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(len(chunk))
    finally:
        resp.close()
        resp.release_conn()
    digest = h.hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"s3://{bucket}/{key}: sha256 {digest} but the store recorded {expected_sha256}")
    os.replace(part, dest)
    return size, digest


# -- datasets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetDigest:
    uri: str
    digest: str
    objects: int
    bytes: int


def digest_entries(entries: Iterable[tuple[str, int, str]]) -> str:
    """The dataset digest of (relative key, size, content sha256) entries, in any order."""
    h = hashlib.sha256()
    for key, size, sha in sorted(entries, key=lambda e: e[0].encode("utf-8")):
        h.update(key.encode("utf-8") + b"\0" + str(int(size)).encode() + b"\0" + sha.encode() + b"\n")
    return h.hexdigest()


def dataset_prefix(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of a dataset uri; a non-empty prefix always ends in ``/``."""
    bucket, prefix = parse_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def _object_sha256(client, bucket: str, key: str) -> tuple[int, str]:  # noqa: ANN001
    h = hashlib.sha256()
    size = 0
    resp = client.get_object(bucket, key)
    try:
        for chunk in resp.stream(CHUNK):
            h.update(chunk)
            size += len(chunk)
    finally:
        resp.close()
        resp.release_conn()
    return size, h.hexdigest()


def staged_path(root: Path, rel: str) -> Path:
    """Where the object ``rel`` (its key below the dataset prefix) is staged under ``root``."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ObjectStoreError(f"dataset object {rel!r} has no safe path to stage it at")
    return root.joinpath(*parts)


def dataset_digest(client, uri: str, workers: int = 4, stage_to: Path | None = None) -> DatasetDigest:  # noqa: ANN001
    """The content digest of every object under ``uri`` (formula in the module docstring).

    With ``stage_to`` every object is also written below that directory at its relative key, and
    the digest is of the bytes written: what the trainer reads is what was checked.
    """
    bucket, prefix = dataset_prefix(uri)
    names = [o.object_name for o in client.list_objects(bucket, prefix=prefix or None, recursive=True)
             if not (o.object_name.endswith("/") and not o.size)]
    if stage_to is None:
        def fetch(name: str) -> tuple[int, str]:
            return _object_sha256(client, bucket, name)
    else:
        targets = {name: staged_path(stage_to, name[len(prefix):]) for name in names}

        def fetch(name: str) -> tuple[int, str]:
            return download_file(client, bucket, name, targets[name])
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        fetched = list(pool.map(fetch, names))
    entries = [(name[len(prefix):], size, sha) for name, (size, sha) in zip(names, fetched, strict=True)]
    return DatasetDigest(uri, digest_entries(entries), len(entries), sum(size for _, size, _ in entries))


PERMANENT_S3_CODES = {"NoSuchBucket", "NoSuchKey", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                      "InvalidBucketName"}


def is_permanent(exc: BaseException) -> bool:
    """Errors that waiting will not fix: bad settings, a missing bucket or object, wrong bytes."""
    if isinstance(exc, (ObjectStoreError, FileNotFoundError)):
        return True
    return getattr(exc, "code", None) in PERMANENT_S3_CODES


def retry(fn: Callable[[], object], deadline: float, what: str, log=None, first_delay: float = 0.5,  # noqa: ANN001
          max_delay: float = 15.0, retry_on: tuple[type[BaseException], ...] = (Exception,)):
    """Call ``fn`` until it succeeds, backing off (doubling) until ``deadline`` (time.monotonic())."""
    delay = first_delay
    while True:
        try:
            return fn()
        except retry_on as exc:
            if is_permanent(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise
            if log is not None:
                text = str(exc).strip().splitlines()
                log.warning("%s failed, retrying in %.1fs: %s: %s", what, delay, type(exc).__name__,
                            text[0] if text else "")
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
