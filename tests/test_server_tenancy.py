"""``cairn server`` with tenancy on: each namespace is read through its own PostgreSQL role and MinIO user,
taken from its credentials Secret (here handed over by a reader function), with real servers enforcing it."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import secrets

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from cairn.objectstore import S3Config
from cairn.server.access import OpenAccess
from cairn.server.app import create_app
from cairn.server.settings import ServerSettings
from cairn.server.tenants import TenantStores
from cairn.store import TrackingStore, db
from cairn.store.entities import ArtifactInfo, IngestBatch, MetricPoint
from cairn.tenancy.database import provision_database
from cairn.tenancy.naming import credentials_secret
from cairn.tenancy.objectstore import provision_objectstore

NAMESPACES = ("srv-a", "srv-b")  # their own roles: other modules' tenants keep theirs
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class SecretBodies:
    """What the API server would answer for each namespace's ``cairn-tenant-credentials``; counts reads."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}
        self.reads: list[str] = []

    def __call__(self, namespace: str) -> dict[str, str] | None:
        self.reads.append(namespace)
        return self.data.get(namespace)


@pytest.fixture
def tenants(postgres_url, minio_server, minio_bucket):
    """(admin URL, admin S3Config, SecretBodies, TenantStores, API client) for two provisioned namespaces."""
    admin_s3 = S3Config(minio_server.endpoint, False, minio_server.access_key, minio_server.secret_key, minio_bucket,
                        minio_server.region)
    bodies = SecretBodies()
    for ns in NAMESPACES:
        url = provision_database(postgres_url, ns, secrets.token_urlsafe(18))
        keys = provision_objectstore(admin_s3, ns, secrets.token_hex(20))
        bodies.data[ns] = credentials_secret(ns, url, keys)["stringData"]
    stores = TenantStores(bodies)
    yield postgres_url, admin_s3, bodies, stores, TestClient(create_app(ServerSettings(), stores, OpenAccess()))
    stores.close()
    for ns in NAMESPACES:
        db.get_engine(bodies.data[ns]["databaseUrl"]).dispose()


def _tracked_run(url: str, namespace: str, name: str) -> str:
    store = TrackingStore(url)
    run_id = store.create_run("exp", name=name, namespace=namespace)
    store.ingest_batch(run_id, "records.jsonl", IngestBatch(metrics=[MetricPoint("loss", i, 1_000 + i, 1.0 / (i + 1))
                                                                     for i in range(20)]), offset=1, lines=20, start=0)
    return run_id


def _terminate_sessions(admin_url: str, role: str) -> None:
    """Ends the role's open connections, so the server's next query has to log in again."""
    with db.get_engine(admin_url).connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                     {"r": role})


def test_each_namespace_is_read_through_its_own_role_and_never_sees_another(tenants):
    admin_url, _, bodies, stores, api = tenants
    run_a = _tracked_run(bodies.data["srv-a"]["databaseUrl"], "srv-a", "a-run")
    run_b = _tracked_run(bodies.data["srv-b"]["databaseUrl"], "srv-b", "b-run")
    TrackingStore(admin_url).create_run("exp", name="shared-only", namespace="srv-a")  # the shared schema

    listed = api.get("/api/v1/namespaces/srv-a/runs").json()["runs"]
    assert [(r["id"], r["name"]) for r in listed] == [(run_a, "a-run")]
    assert [r["name"] for r in api.get("/api/v1/namespaces/srv-b/runs").json()["runs"]] == ["b-run"]
    history = api.get(f"/api/v1/namespaces/srv-a/runs/{run_a}/metrics/loss", params={"full": "true"})
    assert len(history.text.splitlines()) == 20
    with stores.store("srv-a").engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == "tenant_srv_a"

    # B's run asked for through A's namespace, and B's rows asked for through A's store, are not there.
    assert api.get(f"/api/v1/namespaces/srv-a/runs/{run_b}").status_code == 404
    assert stores.store("srv-a").run_rows([run_b], "srv-b") == []
    with stores.store("srv-a").engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError,
                                                                       match="permission denied for schema"):
        conn.execute(sa.text("SELECT count(*) FROM tenant_srv_b.runs"))
    assert bodies.reads == ["srv-a", "srv-b"]  # each Secret read once, then its engine is kept


def test_a_namespace_without_credentials_is_a_clear_404_and_a_broken_secret_a_503(tenants):
    _, _, bodies, _, api = tenants
    reply = api.get("/api/v1/namespaces/srv-c/runs")
    assert reply.status_code == 404
    assert reply.json()["error"] == ("namespace srv-c has no Cairn store: it has no Secret cairn-tenant-credentials "
                                     "(made when its first TrainingRun starts)")
    bodies.data["srv-d"] = {"prefix": "srv-d/"}
    reply = api.get("/api/v1/namespaces/srv-d/experiments")
    assert reply.status_code == 503
    assert reply.json()["error"] == "Secret cairn-tenant-credentials of namespace srv-d has no databaseUrl"


def test_a_rotated_password_is_read_again_once_and_a_stale_secret_is_a_503(tenants):
    admin_url, _, bodies, _, api = tenants
    run_a = _tracked_run(bodies.data["srv-a"]["databaseUrl"], "srv-a", "a-run")
    assert api.get(f"/api/v1/namespaces/srv-a/runs/{run_a}").status_code == 200

    bodies.data["srv-a"]["databaseUrl"] = provision_database(admin_url, "srv-a", secrets.token_urlsafe(18))
    _terminate_sessions(admin_url, "tenant_srv_a")
    reads = len(bodies.reads)
    assert api.get(f"/api/v1/namespaces/srv-a/runs/{run_a}").json()["name"] == "a-run"
    assert len(bodies.reads) == reads + 1

    provision_database(admin_url, "srv-a", secrets.token_urlsafe(18))  # the Secret not updated
    _terminate_sessions(admin_url, "tenant_srv_a")
    reply = api.get(f"/api/v1/namespaces/srv-a/runs/{run_a}")
    assert reply.status_code == 503
    assert "refuses the login of namespace srv-a" in reply.json()["error"]


def test_artifacts_download_with_the_namespaces_keys_which_rotate_too(tenants):
    admin_url, admin_s3, bodies, _, api = tenants
    url_a = bodies.data["srv-a"]["databaseUrl"]
    run_a = _tracked_run(url_a, "srv-a", "a-run")
    root = admin_s3.client()
    artifacts = []
    for path, key in (("mine.bin", f"srv-a/exp/{run_a}/mine.bin"), ("theirs.bin", f"srv-b/exp/{run_a}/theirs.bin")):
        payload = path.encode() * 100
        root.put_object(admin_s3.bucket, key, io.BytesIO(payload), len(payload))
        artifacts.append(ArtifactInfo(path, f"s3://{admin_s3.bucket}/{key}", len(payload),
                                      hashlib.sha256(payload).hexdigest(), uploaded_at=T0))
    TrackingStore(url_a).record_artifacts(run_a, artifacts)  # a row pointing into B's prefix, as if forged
    base = f"/api/v1/namespaces/srv-a/runs/{run_a}/artifacts"

    assert api.get(f"{base}/mine.bin").content == b"mine.bin" * 100
    refused = api.get(f"{base}/theirs.bin")
    assert refused.status_code == 502 and "theirs.bin" in refused.json()["error"]  # A's user may not read it

    rotated = provision_objectstore(admin_s3, "srv-a", secrets.token_hex(20))
    bodies.data["srv-a"]["secretKey"] = rotated.secret_key
    reads = len(bodies.reads)
    assert api.get(f"{base}/mine.bin").content == b"mine.bin" * 100
    assert len(bodies.reads) == reads + 1
