"""Where the server reads a namespace from: with tenancy off, the one shared store and object store; with it
on, the namespace's own PostgreSQL role and object-store user, from its Secret ``cairn-tenant-credentials``.

The database then enforces what the server asks of it: a namespace's store cannot see another's rows
whatever the query says. Engines (each a small pool) are kept for the most recently read namespaces only.
A login the database refuses (the operator rotated the password) makes the server read the Secret again,
once per connection attempt; an object store refusing the keys does the same for a download.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import event
from sqlalchemy.engine import make_url

from cairn.objectstore import S3Config
from cairn.store import TrackingStore, db
from cairn.tenancy.naming import CREDENTIALS_SECRET, DATABASE_URL_KEY, TenancyError, check_namespace
from cairn.tenancy.stores import MAX_TENANT_STORES, RecentTenants, tenant_engine

LOGIN_REFUSED = "password authentication failed"
# What MinIO and S3 answer for keys they do not (or no longer) know.
OBJECT_STORE_LOGIN_REFUSED = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch"})

# The decoded data of a namespace's credentials Secret; None when the namespace has none.
SecretReader = Callable[[str], Mapping[str, str] | None]


class TenantUnavailable(Exception):
    """A namespace the server cannot read; ``status`` is the HTTP status the caller gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ObjectStoreUnset(Exception):
    """No object store is configured for the namespace."""


class Stores(Protocol):
    def store(self, namespace: str) -> TrackingStore: ...

    def open_object(self, namespace: str, bucket: str, key: str) -> Any: ...  # noqa: ANN401 - urllib3's response


class SharedStores:
    """Tenancy off: every namespace is read from one store and one object store."""

    def __init__(self, store: TrackingStore, object_store: S3Config | None = None) -> None:
        self.shared, self.object_store = store, object_store

    def store(self, namespace: str) -> TrackingStore:
        return self.shared

    def open_object(self, namespace: str, bucket: str, key: str) -> Any:  # noqa: ANN401
        if self.object_store is None:
            raise ObjectStoreUnset("this server has no object store settings (CAIRN_S3_*)")
        return self.object_store.client().get_object(bucket, key)


@dataclass(frozen=True)
class TenantCredentials:
    database_url: str
    object_store: S3Config | None


def credentials_of(namespace: str, data: Mapping[str, str]) -> TenantCredentials:
    """A credentials Secret's data → what the server connects with; ``TenantUnavailable`` (503) naming what
    is missing."""
    url = data.get(DATABASE_URL_KEY)
    if not url:
        raise TenantUnavailable(503, f"Secret {CREDENTIALS_SECRET} of namespace {namespace} has no "
                                     f"{DATABASE_URL_KEY}")
    object_store = None
    if data.get("endpoint"):
        parts = urlsplit(data["endpoint"])
        object_store = S3Config(endpoint=parts.netloc, secure=parts.scheme == "https",
                                access_key=data.get("accessKey"), secret_key=data.get("secretKey"),
                                bucket=data.get("bucket"), region=data.get("region") or None,
                                ca_bundle=data.get("caBundle") or None)
    return TenantCredentials(url, object_store)


class TenantStores:
    """Tenancy on: each namespace through its own role and object-store user, as its Secret says."""

    def __init__(self, read_secret: SecretReader, max_stores: int = MAX_TENANT_STORES) -> None:
        self.read_secret = read_secret
        self._tenants: RecentTenants[tuple[TrackingStore, TenantCredentials]] = RecentTenants(
            lambda tenant: tenant[0].engine, max_stores)
        self._lock = threading.Lock()

    def credentials(self, namespace: str) -> TenantCredentials:
        """Read from the Secret now; 404 when the namespace has none (no run of it was ever tracked)."""
        try:
            check_namespace(namespace)
        except TenancyError as exc:
            raise TenantUnavailable(404, str(exc)) from None
        data = self.read_secret(namespace)
        if data is None:
            raise TenantUnavailable(404, f"namespace {namespace} has no Cairn store: it has no Secret "
                                         f"{CREDENTIALS_SECRET} (made when its first TrainingRun starts)")
        return credentials_of(namespace, data)

    def store(self, namespace: str) -> TrackingStore:
        return self._tenant(namespace)[0]

    def open_object(self, namespace: str, bucket: str, key: str) -> Any:  # noqa: ANN401
        from minio.error import S3Error

        config = self._tenant(namespace)[1].object_store
        if config is None:
            raise ObjectStoreUnset(f"Secret {CREDENTIALS_SECRET} of namespace {namespace} has no object store")
        try:
            return config.client().get_object(bucket, key)
        except S3Error as exc:
            if exc.code not in OBJECT_STORE_LOGIN_REFUSED:
                raise
        fresh = self._reread(namespace).object_store
        if fresh is None:
            raise ObjectStoreUnset(f"Secret {CREDENTIALS_SECRET} of namespace {namespace} has no object store")
        return fresh.client().get_object(bucket, key)

    def close(self) -> None:
        with self._lock:
            self._tenants.close()

    def _tenant(self, namespace: str) -> tuple[TrackingStore, TenantCredentials]:
        with self._lock:
            tenant = self._tenants.get(namespace)
            if tenant is not None:
                return tenant
        credentials = self.credentials(namespace)  # outside the lock: an API call
        with self._lock:
            tenant = self._tenants.get(namespace)
            if tenant is None:
                tenant = (self._connect(namespace, credentials.database_url), credentials)
                self._tenants.put(namespace, tenant)
            return tenant

    def _reread(self, namespace: str) -> TenantCredentials:
        credentials = self.credentials(namespace)
        with self._lock:
            tenant = self._tenants.get(namespace)
            if tenant is not None:
                self._tenants.put(namespace, (tenant[0], credentials))
        return credentials

    def _connect(self, namespace: str, url: str) -> TrackingStore:
        engine = tenant_engine(url)

        @event.listens_for(engine, "do_connect")
        def login(dialect, conn_rec, cargs, cparams):  # noqa: ANN001, ANN202, ARG001
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                if LOGIN_REFUSED not in str(exc):
                    raise
            fresh = make_url(db.normalise_url(self._reread(namespace).database_url))
            cparams.update(user=fresh.username, password=fresh.password)
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                if LOGIN_REFUSED not in str(exc):
                    raise
            raise TenantUnavailable(503, f"the database refuses the login of namespace {namespace} in Secret "
                                         f"{CREDENTIALS_SECRET}, read again just now")

        return TrackingStore(engine=engine, check_schema=False)


def kubernetes_secret_reader(api_client: Any) -> SecretReader:  # noqa: ANN401 - a kubernetes.client.ApiClient
    """Reads ``cairn-tenant-credentials`` through the API server (the server's ServiceAccount may ``get``
    Secrets of that name only)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)

    def read(namespace: str) -> Mapping[str, str] | None:
        try:
            secret = core.read_namespaced_secret(CREDENTIALS_SECRET, namespace, _request_timeout=10)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise TenantUnavailable(503, f"cannot read Secret {CREDENTIALS_SECRET} of namespace {namespace}: "
                                         f"{exc.status} {exc.reason}") from None
        except Exception as exc:  # the API server is away: connection refused, timeouts
            raise TenantUnavailable(503, f"cannot read Secret {CREDENTIALS_SECRET} of namespace {namespace}: "
                                         f"{type(exc).__name__}") from None
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    return read

