"""The operator's side of tenancy: each enabled namespace's credentials Secret, made when a TrainingRun
needs it and made again (new password and keys) after someone deletes it, and the store the operator
writes a namespace's runs to (the namespace's schema, with the admin's credentials).

With tenancy off every namespace shares the operator's store and nothing here provisions anything.
"""

from __future__ import annotations

import base64
import logging
import secrets
from threading import Lock

from kubernetes.client.rest import ApiException

from cairn.controller.kube import CoreApi
from cairn.controller.runtime import KeyedLocks
from cairn.controller.settings import OperatorSettings
from cairn.objectstore import S3Config, S3Settings
from cairn.store import TrackingStore
from cairn.tenancy.database import provision_database, tenant_url
from cairn.tenancy.naming import (CREDENTIALS_SECRET, TENANT_LABEL, TENANT_LABEL_VALUE, ObjectStoreCredentials,
                                  credentials_secret)
from cairn.tenancy.objectstore import provision_objectstore
from cairn.tenancy.stores import RecentTenants, tenant_engine

log = logging.getLogger("cairn.controller.tenants")


class TenantNotReady(Exception):
    """The namespace cannot have credentials yet; the message says what an admin must do."""


class NamespaceNotEnabled(TenantNotReady):
    """A TrainingRun in a namespace an admin has not enabled for Cairn."""


class Tenants:
    """Each namespace's credentials and store, for the handlers; with tenancy off, the shared store."""

    def __init__(self, settings: OperatorSettings, core: CoreApi, store: TrackingStore,
                 objectstore: S3Config | None = None) -> None:
        self.settings, self.core, self.shared_store = settings, core, store
        self.objectstore = objectstore
        self._stores: RecentTenants[TrackingStore] = RecentTenants(lambda store: store.engine)
        self._stores_lock = Lock()
        self._provisioning = KeyedLocks()

    @classmethod
    def from_settings(cls, settings: OperatorSettings, core: CoreApi, store: TrackingStore) -> "Tenants":
        """The object store's admin credentials are the operator's own ``CAIRN_S3_*`` settings."""
        return cls(settings, core, store, S3Settings().connection() if settings.tenancy else None)

    def store_for(self, namespace: str | None) -> TrackingStore:
        """Where the runs of ``namespace`` are written: its schema with tenancy on, else the shared store."""
        if not self.settings.tenancy or not namespace:
            return self.shared_store
        with self._stores_lock:
            store = self._stores.get(namespace)
            if store is None:
                store = TrackingStore(engine=tenant_engine(tenant_url(self.settings.database_url, namespace)),
                                      check_schema=False)
                self._stores.put(namespace, store)
            return store

    def ensure_credentials(self, namespace: str) -> bool:
        """Make the namespace's credentials Secret unless it exists; True when this call made it.
        ``NamespaceNotEnabled`` when the namespace lacks the label, ``TenantNotReady`` when the admin's
        object-store Secret is missing."""
        if not self.settings.tenancy:
            return False
        with self._provisioning.hold(namespace):
            if self._secret_exists(namespace):
                return False
            labels = self.core.read_namespace(namespace)["metadata"].get("labels") or {}
            if labels.get(TENANT_LABEL) != TENANT_LABEL_VALUE:
                raise NamespaceNotEnabled(f"namespace {namespace} is not enabled for Cairn: an admin labels it "
                                          f"{TENANT_LABEL}={TENANT_LABEL_VALUE}")
            database_url = provision_database(self.settings.database_url, namespace, secrets.token_urlsafe(24))
            objectstore = self._objectstore_credentials(namespace)
            self.core.create_namespaced_secret(namespace, credentials_secret(namespace, database_url, objectstore))
            log.info("made the credentials of namespace %s (Secret %s)", namespace, CREDENTIALS_SECRET)
            return True

    def _objectstore_credentials(self, namespace: str) -> ObjectStoreCredentials | None:
        """A new MinIO user's keys, or (``tenant_s3_secret``) the keys the admin supplied for the namespace."""
        if self.objectstore is None:
            return None
        if not self.settings.tenant_s3_secret:
            return provision_objectstore(self.objectstore, namespace, secrets.token_urlsafe(30),
                                         self.settings.tenant_shared_prefixes)
        try:
            data = self.core.read_namespaced_secret(self.settings.tenant_s3_secret, namespace).get("data") or {}
        except ApiException as exc:
            if exc.status != 404:
                raise
            data = {}
        keys = {k: base64.b64decode(data[k]).decode() for k in ("accessKey", "secretKey") if k in data}
        if len(keys) != 2:
            raise TenantNotReady(f"namespace {namespace} has no Secret {self.settings.tenant_s3_secret} with keys "
                                 "accessKey and secretKey (its object-store credentials, supplied by an admin)")
        scheme = "https" if self.objectstore.secure else "http"
        return ObjectStoreCredentials(f"{scheme}://{self.objectstore.endpoint}", keys["accessKey"], keys["secretKey"],
                                      self.objectstore.bucket, self.objectstore.region, self.objectstore.ca_bundle)

    def _secret_exists(self, namespace: str) -> bool:
        try:
            self.core.read_namespaced_secret_metadata(CREDENTIALS_SECRET, namespace)
            return True
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False
