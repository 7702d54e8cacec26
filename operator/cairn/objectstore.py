"""The cluster's object store (MinIO, or any S3 API): artifacts, checkpoints and datasets.

Object layout, one prefix per run::

    s3://<bucket>/<namespace>/<experiment>/<run id>/artifacts/<path>
    s3://<bucket>/<namespace>/<experiment>/<run id>/checkpoints/<step>/<path>

The key below the run's prefix is the file's path in the run directory, so uploading a file
again (a retry, a restarted sidecar) overwrites the same object and never makes a second one.
Every upload hashes the bytes as it reads them; the sha256 goes into the store with the
``s3://`` uri.

Settings (:class:`S3Settings`) come from the environment (the operator fills them from a Secret,
only into its own containers), or from the usual ``AWS_*`` variables when the ``CAIRN_S3_*`` ones
are absent; :meth:`S3Settings.connection` turns them into the :class:`S3Config` a client is made from.

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
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator

from cairn.rundir import Env
from cairn.settings import CairnSettings, SettingsError, reveal

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


class S3Settings(CairnSettings):
    """The object store, for the sidecar, the prepare step and ``cairn runs download`` /
    ``cairn datasets digest``; the operator sets it from the object store Secret."""

    title: ClassVar[str] = "Object store (sidecar, prepare step, CLI)"

    endpoint: str | None = Field(
        None, validation_alias=AliasChoices(Env.S3_ENDPOINT, "AWS_ENDPOINT_URL"),
        description="`http://host:port` or `https://...` (`host:port` means `http`); unset: no object store.",
        json_schema_extra={"accepts": "a URL such as http://host:port"})
    access_key: str | None = Field(None, validation_alias=AliasChoices(Env.S3_ACCESS_KEY, "AWS_ACCESS_KEY_ID"),
                                   description="Access key.")
    secret_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices(Env.S3_SECRET_KEY, "AWS_SECRET_ACCESS_KEY"), description="Secret key.")
    bucket: str | None = Field(None, validation_alias=AliasChoices(Env.S3_BUCKET),
                               description="Bucket of artifacts and checkpoints (made on first upload).")
    region: str | None = Field(None, validation_alias=AliasChoices(Env.S3_REGION, "AWS_REGION"), description="Region.")
    ca_bundle: str | None = Field(
        None, repr=False, validation_alias=AliasChoices(Env.S3_CA_BUNDLE),
        description="PEM text of the CA certificates that sign an `https` endpoint's certificate (a site CA "
                    "that is not in the image's trust store).", json_schema_extra={"accepts": "PEM text"})
    ca_bundle_file: Path | None = Field(None, validation_alias=AliasChoices("AWS_CA_BUNDLE"),
                                        description="The same, as a file; read when `CAIRN_S3_CA_BUNDLE` is unset.")
    part_size: int = Field(DEFAULT_PART_SIZE, ge=MIN_PART_SIZE, validation_alias=AliasChoices(Env.S3_PART_SIZE),
                           description="Bytes per multipart upload part (bigger files are sent in parts).")

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = value if "://" in value else "http://" + value
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("not an http(s) URL")
        return url

    def connection(self) -> S3Config | None:
        """What a client is made from; None when no endpoint is set (no object store)."""
        if self.endpoint is None:
            return None
        parts = urlsplit(self.endpoint)
        return S3Config(endpoint=parts.netloc, secure=parts.scheme == "https", access_key=self.access_key,
                        secret_key=reveal(self.secret_key), bucket=self.bucket, region=self.region,
                        ca_bundle=self.ca_bundle or _read_ca_file(self.ca_bundle_file), part_size=self.part_size)


def object_store_or_none(log: logging.Logger) -> S3Config | None:
    """The in-pod steps' object store: wrong settings are logged and the step goes on without one
    (the sidecar must start, the trainer waits for it; the prepare step then fails the run clearly)."""
    try:
        return S3Settings().connection()
    except (SettingsError, ObjectStoreError) as exc:
        log.error("object store settings: %s", exc)
        return None


@dataclass(frozen=True)
class S3Config:
    """A connection to the object store (see :class:`S3Settings` for where it comes from)."""

    endpoint: str  # host:port, as minio.Minio takes it
    secure: bool
    access_key: str | None
    secret_key: str | None = field(repr=False)
    bucket: str | None
    region: str | None = None
    ca_bundle: str | None = field(default=None, repr=False)  # PEM text
    part_size: int = DEFAULT_PART_SIZE  # of multipart uploads

    def client(self):  # noqa: ANN201 - a minio.Minio
        """A client that gives up quickly when the server is away: callers retry with their own backoff."""
        import minio

        return minio.Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                           secure=self.secure, region=self.region, http_client=self.http_client())

    def http_client(self):  # noqa: ANN201 - a urllib3.PoolManager
        """The connection pool of :meth:`client` (and of the tenancy's admin client): short timeouts,
        two retries, the site CA."""
        import logging

        import urllib3

        # Our callers log each failed attempt once; urllib3's per-retry warnings would only repeat it.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        tls = {}
        if self.secure and self.ca_bundle:
            import ssl

            try:
                tls["ssl_context"] = ssl.create_default_context(cadata=self.ca_bundle)
            except ssl.SSLError as exc:
                raise ObjectStoreError(f"{Env.S3_CA_BUNDLE} holds no valid PEM certificate: {exc}") from None
        return urllib3.PoolManager(
            **tls,
            timeout=urllib3.Timeout(connect=5, read=120),
            maxsize=8,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )


def _read_ca_file(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise ObjectStoreError(f"AWS_CA_BUNDLE {str(path)!r} cannot be read: {exc.strerror}") from None


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


def objects_under(client, bucket: str, prefix: str, limit: int = 100_000) -> list[tuple[str, int]]:  # noqa: ANN001
    """(key, size) of every object under ``prefix`` (at most ``limit``; more raises ``ObjectStoreError``)."""
    found = []
    for obj in client.list_objects(bucket, prefix=prefix.rstrip("/") + "/", recursive=True):
        if len(found) == limit:
            raise ObjectStoreError(f"more than {limit} objects under s3://{bucket}/{prefix}")
        found.append((obj.object_name, obj.size))
    return found


def remove_objects(client, bucket: str, keys: list[str]) -> list[str]:  # noqa: ANN001
    """Delete ``keys`` (in batches of 1,000, as S3 takes them); one message per object not deleted."""
    from minio.deleteobjects import DeleteObject

    failed = []
    for start in range(0, len(keys), 1000):
        batch = [DeleteObject(k) for k in keys[start:start + 1000]]
        failed += [f"{e.name}: {e.code} {e.message}" for e in client.remove_objects(bucket, batch)]
    return failed


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

