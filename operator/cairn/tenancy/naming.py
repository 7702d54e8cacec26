"""Pure tenancy decisions: what a namespace's schema, role, object-store user and policy are called and
say, and what its credentials Secret holds. Nothing here touches a server."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

TENANT_LABEL = "cairn.dev/tenant"
TENANT_LABEL_VALUE = "enabled"
CREDENTIALS_SECRET = "cairn-tenant-credentials"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "cairn"
# Keys of the credentials Secret; the object-store ones are those of the admin's object store Secret,
# so the pod builder reads either the same way.
DATABASE_URL_KEY = "databaseUrl"
PREFIX_KEY = "prefix"
SCHEMA_PREFIX = "tenant_"  # of every tenant schema, and only of them: "_" is in no namespace name
IDENTIFIER_MAX = 63  # PostgreSQL's NAMEDATALEN - 1
MINIO_ACCESS_KEY_MAX = 20
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHARED_PREFIX = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<prefix>[^*?\s]+/)$")


class TenancyError(ValueError):
    """A namespace or a shared prefix that cannot be a tenant's; the message names it."""


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def check_namespace(namespace: str) -> str:
    if len(namespace) > 63 or not _NAMESPACE.match(namespace):
        raise TenancyError(f"{namespace!r} is not a Kubernetes namespace name")
    return namespace


def schema_name(namespace: str) -> str:
    """The namespace's PostgreSQL schema, also the name of its LOGIN role: ``tenant_<namespace>`` with
    ``-`` as ``_`` (namespace names hold no ``_``, so no two namespaces share one); a name too long
    for PostgreSQL keeps its start and ends in a hash of the whole."""
    name = SCHEMA_PREFIX + check_namespace(namespace).replace("-", "_")
    if len(name) <= IDENTIFIER_MAX:
        return name
    return f"{name[:IDENTIFIER_MAX - 9]}_{_digest(namespace, 8)}"


def objectstore_user(namespace: str) -> str:
    """The namespace's object-store access key (MinIO takes at most 20 characters)."""
    return "cairn-" + _digest(check_namespace(namespace), MINIO_ACCESS_KEY_MAX - len("cairn-"))


def policy_name(namespace: str) -> str:
    return f"cairn-tenant-{check_namespace(namespace)}"


def parse_shared_prefix(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` (an admin-declared read-only prefix) → ``(bucket, "prefix/")``."""
    m = _SHARED_PREFIX.match(uri)
    if m is None or ".." in m["prefix"].split("/"):
        raise TenancyError(f"shared prefix {uri!r} is not s3://<bucket>/<prefix>/ (ending in '/', no wildcards)")
    return m["bucket"], m["prefix"]


def _read_statements(bucket: str, prefix: str) -> list[dict[str, Any]]:
    return [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"],
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"]},
    ]


def tenant_policy(namespace: str, bucket: str, shared_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """The object-store policy of a namespace: read and write under ``<bucket>/<namespace>/``, read
    only under each shared prefix, nothing else (S3 denies what no statement allows)."""
    own = f"{check_namespace(namespace)}/"
    statements = [
        {"Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": [f"arn:aws:s3:::{bucket}"]},
        *_read_statements(bucket, own),
        {"Effect": "Allow",
         "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         "Resource": [f"arn:aws:s3:::{bucket}/{own}*"]},
    ]
    for uri in shared_prefixes:
        statements += _read_statements(*parse_shared_prefix(uri))
    return {"Version": "2012-10-17", "Statement": statements}


MAX_ENV_VALUE_BYTES = 120 * 1024  # under Linux's 128 KiB for one environment string (name=value)

@dataclass(frozen=True)
class ObjectStoreCredentials:
    endpoint: str  # http(s)://host:port
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    region: str | None = None
    ca_bundle: str | None = field(default=None, repr=False)


def credentials_secret(namespace: str, database_url: str | None,
                       objectstore: ObjectStoreCredentials | None) -> dict[str, Any]:
    """The namespace's credentials Secret (``cairn-tenant-credentials``), as the API server takes it."""
    data: dict[str, str] = {PREFIX_KEY: f"{check_namespace(namespace)}/"}
    if database_url is not None:
        data[DATABASE_URL_KEY] = database_url
    if objectstore is not None:
        data.update(endpoint=objectstore.endpoint, accessKey=objectstore.access_key,
                    secretKey=objectstore.secret_key, bucket=objectstore.bucket)
        if objectstore.region:
            data["region"] = objectstore.region
        if objectstore.ca_bundle and objectstore.endpoint.startswith("https://"):  # plain HTTP needs no CA
            if len(objectstore.ca_bundle.encode()) > MAX_ENV_VALUE_BYTES:
                raise ValueError(f"the object store's CA bundle is {len(objectstore.ca_bundle.encode()) // 1024} KiB: "
                                 f"pods get it as an environment variable, which holds at most "
                                 f"{MAX_ENV_VALUE_BYTES // 1024} KiB; give only the CA that signed the object "
                                 "store's certificate")
            data["caBundle"] = objectstore.ca_bundle
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "stringData": data,
    }


