"""A tenant's object-store user and policy on the bundled MinIO, through its admin API.

The user's access key is fixed per namespace (``naming.objectstore_user``); provisioning again sets a
new secret key (rotation) and the current policy. For ``externalS3`` the admin supplies per-namespace
credentials instead and nothing here runs.
"""

from __future__ import annotations

import json

from cairn.objectstore import S3Config, ensure_bucket
from cairn.tenancy.naming import ObjectStoreCredentials, objectstore_user, policy_name, tenant_policy


def _admin(config: S3Config):  # noqa: ANN202 - a minio.MinioAdmin
    from minio import MinioAdmin
    from minio.credentials import StaticProvider

    return MinioAdmin(endpoint=config.endpoint, credentials=StaticProvider(config.access_key, config.secret_key),
                      region=config.region or "", secure=config.secure, http_client=config.http_client())


def provision_objectstore(admin: S3Config, namespace: str, secret_key: str,
                          shared_prefixes: tuple[str, ...] = ()) -> ObjectStoreCredentials:
    """Make the bucket if needed, (re)write the namespace's policy, create or update its user with
    ``secret_key`` and attach the policy; returns the credentials the namespace's pods get."""
    if not admin.bucket:
        raise ValueError("the object store has no bucket to give tenants a prefix of")
    ensure_bucket(admin.client(), admin.bucket)
    minio_admin = _admin(admin)
    user, policy = objectstore_user(namespace), policy_name(namespace)
    minio_admin.policy_add(policy, policy=tenant_policy(namespace, admin.bucket, shared_prefixes))
    minio_admin.user_add(user, secret_key)
    attached = json.loads(minio_admin.user_info(user)).get("policyName") or ""
    if policy not in attached.split(","):
        minio_admin.attach_policy([policy], user=user)
    scheme = "https" if admin.secure else "http"
    return ObjectStoreCredentials(f"{scheme}://{admin.endpoint}", user, secret_key, admin.bucket, admin.region,
                                  admin.ca_bundle)
