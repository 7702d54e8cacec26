"""Tenancy end to end on the local cluster (needs the image rebuilt with this code: the sidecar must
know the schema revision the operator migrates tenant schemas to).

A real operator with ``CAIRN_TENANCY`` on serves a labelled namespace: it makes the namespace's schema,
role, MinIO user and Secret; the run's sidecar ingests with the tenant role and uploads with the tenant
user; the run's rows are in the tenant schema only and its objects under ``<bucket>/<namespace>/``. With
the namespace's own credentials (taken from its Secret) another tenant's rows and objects are refused.
After the Secret is deleted the next run gets new credentials and succeeds.
"""

from __future__ import annotations

import base64
import secrets

import pytest
import sqlalchemy as sa
from minio import Minio
from minio.error import S3Error

from cairn.objectstore import S3Config, upload_file
from cairn.store import TrackingStore, db
from cairn.tenancy.database import provision_database
from cairn.tenancy.objectstore import provision_objectstore
from tests.support.cluster_operator import (OperatorProcess, install_crd, python_trainer, trainingrun,
                                           wait_phase)
from tests.support.servers import read_object

pytestmark = pytest.mark.cluster
BUCKET = "cairn-tenants"
TRAINER = """
import cairn
cairn.init(experiment="baseline")
for step in range(5):
    cairn.log({"loss": 1.0 / (step + 1)}, step=step)
open("/tmp/model.bin", "wb").write(b"weights")
cairn.log_artifact("/tmp/model.bin")
cairn.finish()
"""


@pytest.fixture
def tenant_operator(kubeconfig, kubectl, cairn_image, namespace, store_urls, cluster_minio, tmp_path):
    install_crd(kubectl)
    kubectl.run("label", "namespace", namespace, "cairn.dev/tenant=enabled")
    # The pods reach PostgreSQL at the node's address, and the tenant URLs are made from the operator's.
    op = OperatorProcess(kubeconfig, namespace, store_urls[1], tmp_path / "operator.log")
    op.env.update(CAIRN_TENANCY="true", CAIRN_S3_ENDPOINT=cluster_minio.url,
                  CAIRN_S3_ACCESS_KEY=cluster_minio.access_key, CAIRN_S3_SECRET_KEY=cluster_minio.secret_key, CAIRN_S3_BUCKET=BUCKET,
                  CAIRN_S3_REGION=cluster_minio.region)
    yield op.start()
    op.stop()
    print(op.log())


def _credentials(kubectl, namespace: str) -> dict[str, str]:  # noqa: ANN001
    secret = kubectl.get("secret", "cairn-tenant-credentials", namespace)
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_a_tenants_run_lives_in_its_schema_and_prefix_and_its_credentials_reach_nothing_else(
        kubectl, namespace, tenant_operator, store_urls, cluster_minio, tmp_path):
    kubectl.apply(trainingrun("digits", python_trainer(TRAINER), experiment="baseline"), namespace=namespace)
    tr = wait_phase(kubectl, namespace, "digits", ("Succeeded", "Failed"), timeout=240)
    assert tr["status"]["phase"] == "Succeeded", (tr["status"], tenant_operator.log())
    uid = tr["metadata"]["uid"]
    creds = _credentials(kubectl, namespace)

    mine = TrackingStore(creds["databaseUrl"])
    assert mine.get_run(uid).summary.metrics["loss"].count == 5
    assert TrackingStore(store_urls[0]).run_status(uid) is None  # nothing in the shared schema
    key = f"{namespace}/baseline/{uid}/artifacts/model.bin"
    tenant_client = Minio(cluster_minio.endpoint, access_key=creds["accessKey"], secret_key=creds["secretKey"],
                          secure=False, region=cluster_minio.region)
    assert read_object(tenant_client, BUCKET, key) == b"weights"

    # Another tenant, provisioned beside it: this namespace's credentials cannot reach its rows or objects.
    other = "cairn-other-" + secrets.token_hex(3)
    provision_database(store_urls[0], other, secrets.token_urlsafe(18))
    admin_s3 = S3Config(cluster_minio.endpoint, False, cluster_minio.access_key, cluster_minio.secret_key, BUCKET,
                        cluster_minio.region)
    provision_objectstore(admin_s3, other, secrets.token_urlsafe(30))
    theirs = tmp_path / "secret.bin"
    theirs.write_bytes(b"team b")
    upload_file(cluster_minio.client(), BUCKET, f"{other}/x/y/artifacts/secret.bin", theirs)
    schema = "tenant_" + other.replace("-", "_")
    with db.get_engine(creds["databaseUrl"]).connect() as conn, \
            pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        conn.execute(sa.text(f"SELECT count(*) FROM {schema}.runs"))
    with pytest.raises(S3Error) as err:
        read_object(tenant_client, BUCKET, f"{other}/x/y/artifacts/secret.bin")
    assert err.value.code == "AccessDenied"

    # Rotation: the Secret deleted, the next run gets new credentials, and they work.
    kubectl.run("-n", namespace, "delete", "secret", "cairn-tenant-credentials")
    kubectl.apply(trainingrun("digits-2", python_trainer(TRAINER), experiment="baseline"), namespace=namespace)
    tr2 = wait_phase(kubectl, namespace, "digits-2", ("Succeeded", "Failed"), timeout=240)
    assert tr2["status"]["phase"] == "Succeeded", (tr2["status"], tenant_operator.log())
    rotated = _credentials(kubectl, namespace)
    assert rotated["databaseUrl"] != creds["databaseUrl"] and rotated["secretKey"] != creds["secretKey"]
    runs = TrackingStore(rotated["databaseUrl"]).list_runs("baseline")
    assert sorted(r.name for r in runs) == ["digits", "digits-2"]  # one experiment of this namespace
