"""Tenancy in the operator, in process against the real API server, PostgreSQL and MinIO: a labelled
namespace gets its credentials Secret, its runs land in its own schema, its pods read that Secret, a
deleted Secret is made again with new credentials, and an unlabelled namespace gets nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from kubernetes import client

from cairn.controller import handlers as H
from cairn.controller.kube import CoreApi
from cairn.controller.settings import OperatorSettings
from cairn.controller.tenants import Tenants
from cairn.objectstore import S3Config
from cairn.podspec import SIDECAR, pod_name
from cairn.rundir import Env, RunStatus
from cairn.store import TrackingStore, db

pytestmark = pytest.mark.cluster


@pytest.fixture
def make_tenant_operator(api_client, store_urls, minio_server, minio_bucket) -> Iterator:
    """``make(**settings)`` -> an Operator with tenancy on, MinIO's root keys as its admin keys."""
    made: list[H.Operator] = []

    def make(**settings) -> H.Operator:
        operator_settings = OperatorSettings(tenancy=True, database_url=store_urls[0], **settings)
        core, store = CoreApi(api_client), TrackingStore(store_urls[0])
        admin_s3 = S3Config(minio_server.endpoint, False, minio_server.access_key, minio_server.secret_key,
                            minio_bucket, minio_server.region)
        made.append(H.Operator(operator_settings, core, client.CustomObjectsApi(api_client), store,
                               Tenants(operator_settings, core, store, admin_s3)))
        return made[-1]
    yield make
    for op in made:
        op.stop()


@pytest.fixture
def tenant_operator(make_tenant_operator) -> H.Operator:
    return make_tenant_operator()


def _created(op: H.Operator, manifest: dict) -> None:
    meta = manifest["metadata"]
    H.on_trainingrun(body=manifest, namespace=meta["namespace"], name=meta["name"], memo={"operator": op})


def _credentials(cluster) -> dict[str, str]:  # noqa: ANN001
    secret = cluster.core.read_namespaced_secret("cairn-tenant-credentials", cluster.namespace)
    assert secret.metadata.labels == {"app.kubernetes.io/managed-by": "cairn"}
    return {k: base64.b64decode(v).decode() for k, v in secret.data.items()}


def test_a_labelled_namespace_gets_credentials_and_its_runs_land_in_its_schema(tenant_operator, cluster, kubectl,
                                                                               store_urls):
    kubectl.run("label", "namespace", cluster.namespace, "cairn.dev/tenant=enabled")
    manifest = cluster.create_trainingrun("mnist")
    uid = manifest["metadata"]["uid"]
    _created(tenant_operator, manifest)
    first = _credentials(cluster)
    assert (first["prefix"], first["bucket"]) == (f"{cluster.namespace}/", tenant_operator.tenants.objectstore.bucket)
    assert TrackingStore(first["databaseUrl"]).run_status(uid) == RunStatus.PENDING
    assert TrackingStore(store_urls[0]).run_status(uid) is None  # not in the shared schema

    pod = cluster.core.read_namespaced_pod(pod_name("mnist", uid, 1), cluster.namespace)
    sidecar = next(c for c in pod.spec.init_containers if c.name == SIDECAR)
    refs = {e.name: e.value_from.secret_key_ref.name for e in sidecar.env
            if e.value_from and e.value_from.secret_key_ref}
    assert refs[Env.DATABASE_URL] == refs[Env.S3_ACCESS_KEY] == "cairn-tenant-credentials"

    # Rotation: the Secret deleted, the next run makes it again with a new password and new keys.
    cluster.core.delete_namespaced_secret("cairn-tenant-credentials", cluster.namespace)
    _created(tenant_operator, cluster.create_trainingrun("mnist-2"))
    second = _credentials(cluster)
    assert second["databaseUrl"] != first["databaseUrl"] and second["secretKey"] != first["secretKey"]
    assert second["accessKey"] == first["accessKey"]
    assert TrackingStore(second["databaseUrl"]).run_status(uid) == RunStatus.PENDING
    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        sa.create_engine(db.normalise_url(first["databaseUrl"])).connect()


def test_an_unlabelled_namespace_gets_no_credentials_and_no_pod(tenant_operator, cluster):
    _created(tenant_operator, cluster.create_trainingrun("mnist"))
    assert cluster.pod_names() == []
    status = cluster.trainingrun("mnist")["status"]
    assert status["reason"] == "NamespaceNotEnabled"
    assert "label" in status["message"] and "cairn.dev/tenant=enabled" in status["message"]
    assert "NamespaceNotEnabled" in cluster.event_reasons("mnist")
    with pytest.raises(client.ApiException) as err:
        cluster.core.read_namespaced_secret("cairn-tenant-credentials", cluster.namespace)
    assert err.value.status == 404


def test_external_s3_keys_come_from_the_admins_secret(make_tenant_operator, cluster, kubectl):
    op = make_tenant_operator(tenant_s3_secret="team-s3")
    kubectl.run("label", "namespace", cluster.namespace, "cairn.dev/tenant=enabled")
    _created(op, cluster.create_trainingrun("mnist"))
    assert cluster.pod_names() == []
    status = cluster.trainingrun("mnist")["status"]
    assert (status["reason"], "no Secret team-s3 with keys accessKey and secretKey" in status["message"]) == \
        ("TenantNotReady", True)

    kubectl.run("-n", cluster.namespace, "create", "secret", "generic", "team-s3",
                "--from-literal=accessKey=team-a-key", "--from-literal=secretKey=team-a-secret")
    _created(op, cluster.create_trainingrun("mnist-2"))
    credentials = _credentials(cluster)
    assert (credentials["accessKey"], credentials["secretKey"]) == ("team-a-key", "team-a-secret")
    assert len(cluster.pod_names()) == 1
