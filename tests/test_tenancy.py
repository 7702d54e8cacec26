"""Tenancy: each namespace's credentials reach its own rows and objects only, enforced by PostgreSQL
and MinIO themselves (real servers), and what the names and the policy are (pure)."""

from __future__ import annotations

import io
import secrets

import pytest
import sqlalchemy as sa
from minio import Minio
from minio.error import S3Error

from cairn.objectstore import S3Config, upload_file
from cairn.rundir import RunStatus
from cairn.store import TrackingStore, db
from cairn.store.entities import IngestBatch, MetricPoint
from cairn.tenancy import naming
from cairn.tenancy.database import provision_database, tenant_url
from cairn.tenancy.objectstore import provision_objectstore

from .support.servers import read_object


# -- pure ---------------------------------------------------------------------------------------
def test_names_are_distinct_per_namespace_and_fit_the_servers():
    long_a, long_b = "a" * 60 + "-x1", "a" * 60 + "-x2"
    assert naming.schema_name("team-a") == "tenant_team_a"
    assert len(naming.schema_name(long_a)) == naming.IDENTIFIER_MAX
    assert naming.schema_name(long_a) != naming.schema_name(long_b)
    assert len(naming.objectstore_user(long_a)) == naming.MINIO_ACCESS_KEY_MAX
    assert naming.objectstore_user("team-a") != naming.objectstore_user("team-b")
    with pytest.raises(naming.TenancyError, match="'Team_A' is not a Kubernetes namespace name"):
        naming.schema_name("Team_A")


def test_policy_allows_own_prefix_and_shared_prefixes_read_only():
    policy = naming.tenant_policy("team-a", "cairn", ("s3://cairn/shared/imagenet/",))
    writable = [r for s in policy["Statement"] if "s3:PutObject" in s["Action"] for r in s["Resource"]]
    readable = [r for s in policy["Statement"] if s["Action"] == ["s3:GetObject"] for r in s["Resource"]]
    assert writable == ["arn:aws:s3:::cairn/team-a/*"]
    assert readable == ["arn:aws:s3:::cairn/team-a/*", "arn:aws:s3:::cairn/shared/imagenet/*"]
    for bad in ("s3://cairn/shared", "s3://cairn/*/", "s3://cairn/a/../b/", "cairn/shared/"):
        with pytest.raises(naming.TenancyError, match="is not s3://<bucket>/<prefix>/"):
            naming.parse_shared_prefix(bad)


def test_credentials_secret_is_labelled_and_holds_every_key():
    creds = naming.ObjectStoreCredentials("http://minio:9000", "cairn-abc", "s3cret", "cairn", "us-east-1")
    secret = naming.credentials_secret("team-a", "postgresql://u:p@h/db", creds)
    assert secret["metadata"] == {"name": "cairn-tenant-credentials", "namespace": "team-a",
                                  "labels": {"app.kubernetes.io/managed-by": "cairn"}}
    assert secret["stringData"] == {"prefix": "team-a/", "databaseUrl": "postgresql://u:p@h/db",
                                    "endpoint": "http://minio:9000", "accessKey": "cairn-abc", "secretKey": "s3cret",
                                    "bucket": "cairn", "region": "us-east-1"}


def test_the_ca_bundle_goes_only_to_https_endpoints_and_only_if_an_environment_variable_can_hold_it():
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    plain = naming.ObjectStoreCredentials("http://minio:9000", "k", "s", "cairn", ca_bundle=pem * 2000)
    assert "caBundle" not in naming.credentials_secret("team-a", None, plain)["stringData"]
    tls = naming.ObjectStoreCredentials("https://s3.internal", "k", "s", "cairn", ca_bundle=pem)
    assert naming.credentials_secret("team-a", None, tls)["stringData"]["caBundle"] == pem
    system_bundle = naming.ObjectStoreCredentials("https://s3.internal", "k", "s", "cairn", ca_bundle=pem * 4000)
    with pytest.raises(ValueError, match="CA bundle is 230 KiB: pods get it as an environment variable"):
        naming.credentials_secret("team-a", None, system_bundle)


def test_tenancy_settings_point_pods_at_the_tenant_secret_and_refuse_what_cannot_work():
    from cairn.controller.settings import OperatorSettings
    from cairn.settings import SettingsError

    pod = OperatorSettings(tenancy=True, database_url="postgresql://cairn:pw@db/cairn").pod
    assert (pod.database_secret, pod.database_secret_key, pod.objectstore_secret) == \
        ("cairn-tenant-credentials", "databaseUrl", "cairn-tenant-credentials")
    assert OperatorSettings(database_url="postgresql://cairn:pw@db/cairn").pod.database_secret == "cairn-database"
    with pytest.raises(SettingsError, match="CAIRN_TENANCY needs CAIRN_DATABASE_URL to be a PostgreSQL URL"):
        OperatorSettings(tenancy=True, database_url="sqlite:///x.db")
    with pytest.raises(SettingsError, match="shared prefix 's3://cairn/x' is not"):
        OperatorSettings(tenancy=True, database_url="postgresql://db/cairn", tenant_shared_prefixes="s3://cairn/x")


# -- PostgreSQL -----------------------------------------------------------------------------------
@pytest.fixture
def tenants_db(postgres_url):
    """(admin URL, {namespace: tenant URL}) for two provisioned namespaces; the admin's public schema
    holds Cairn's tables too (the fixture migrated it)."""
    urls = {ns: provision_database(postgres_url, ns, secrets.token_urlsafe(18)) for ns in ("team-a", "team-b")}
    yield postgres_url, urls
    for url in urls.values():
        db.get_engine(url).dispose()


def _batch(n: int) -> IngestBatch:
    return IngestBatch(metrics=[MetricPoint("loss", i, 1_000 + i, 1.0 / (i + 1)) for i in range(n)],
                       run_info={"experiment": "baseline", "name": "r"})


def test_a_tenant_role_ingests_with_copy_and_cannot_touch_another_tenants_rows(tenants_db):
    admin_url, urls = tenants_db
    store_a = TrackingStore(urls["team-a"])
    run_a = store_a.create_run("baseline", namespace="team-a")
    store_a.ingest_batch(run_a, "records.jsonl", _batch(500), offset=10, lines=500, start=0)
    assert [p.step for p in store_a.metric_history(run_a, "loss")] == list(range(500))
    run_b = TrackingStore(urls["team-b"]).create_run("baseline", namespace="team-b")

    engine_a = db.get_engine(urls["team-a"])
    attempts = {
        "read B's runs": "SELECT count(*) FROM tenant_team_b.runs",
        "read B's metrics": "SELECT count(*) FROM tenant_team_b.metrics",
        "write B's params": f"INSERT INTO tenant_team_b.params VALUES ('{run_b}', 'k', '1')",
        "read the shared schema": "SELECT count(*) FROM public.runs",
        "change its own schema version": "UPDATE alembic_version SET version_num = 'x'",
        "create a table": "CREATE TABLE sneaky (x int)",
    }
    for what, statement in attempts.items():
        with engine_a.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission denied") as err:
            conn.execute(sa.text(statement))
        assert "InsufficientPrivilege" in type(err.value.orig).__name__, what
    raw = engine_a.raw_connection()
    try:
        with raw.cursor() as cur, pytest.raises(Exception, match="permission denied for schema tenant_team_b"):
            cur.copy_expert("COPY tenant_team_b.metrics (run_id, key, step, timestamp_ms, value) FROM STDIN",
                            io.StringIO(f"{run_b}\tloss\t0\t0\t1\n"))
    finally:
        raw.close()

    with db.get_engine(admin_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM tenant_team_b.metrics")).scalar_one() == 0
        names = conn.execute(sa.text("SELECT (SELECT array_agg(name) FROM tenant_team_a.experiments),"
                                     " (SELECT array_agg(name) FROM tenant_team_b.experiments)")).one()
    assert names == (["baseline"], ["baseline"])  # one "baseline" per namespace, two experiments


def test_provisioning_is_idempotent_and_a_new_password_rotates(tenants_db):
    admin_url, urls = tenants_db
    TrackingStore(urls["team-a"]).create_run("kept", namespace="team-a")
    rotated = provision_database(admin_url, "team-a", secrets.token_urlsafe(18))
    assert TrackingStore(rotated).list_experiments()[0].name == "kept"  # same schema, rows kept
    db.get_engine(urls["team-a"]).dispose()
    with pytest.raises(db.StoreError, match="password authentication failed"):
        TrackingStore(urls["team-a"])
    with db.get_engine(admin_url).connect() as conn:
        schemas = conn.execute(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant_%'")).scalar()
    assert schemas == 2
    assert tenant_url(admin_url, "team-a").endswith("options=-csearch_path%3Dtenant_team_a")


# -- MinIO ----------------------------------------------------------------------------------------
def _client(creds: naming.ObjectStoreCredentials, server) -> Minio:  # noqa: ANN001
    return Minio(server.endpoint, access_key=creds.access_key, secret_key=creds.secret_key, secure=False,
                 region=server.region)


def test_a_tenant_user_reaches_its_prefix_and_shared_prefixes_only(minio_server, minio_bucket, tmp_path):
    admin = S3Config(minio_server.endpoint, False, minio_server.access_key, minio_server.secret_key, minio_bucket,
                     minio_server.region)
    shared = (f"s3://{minio_bucket}/shared/",)
    root = minio_server.client()
    for key in ("team-b/exp/run/artifacts/model.pt", "shared/data.csv"):
        upload_file(root, minio_bucket, key, _file(tmp_path, key))
    team_a = provision_objectstore(admin, "team-a", secrets.token_hex(20), shared)
    assert provision_objectstore(admin, "team-a", team_a.secret_key, shared) == team_a  # idempotent
    client = _client(team_a, minio_server)

    upload_file(client, minio_bucket, "team-a/exp/run/artifacts/model.pt", _file(tmp_path, "mine"))
    assert read_object(client, minio_bucket, "team-a/exp/run/artifacts/model.pt") == b"mine"
    assert read_object(client, minio_bucket, "shared/data.csv") == b"shared/data.csv"
    refused = {
        "read B's object": lambda: read_object(client, minio_bucket, "team-b/exp/run/artifacts/model.pt"),
        "write under B": lambda: upload_file(client, minio_bucket, "team-b/x", _file(tmp_path, "x")),
        "list B's prefix": lambda: list(client.list_objects(minio_bucket, prefix="team-b/", recursive=True)),
        "write a shared prefix": lambda: upload_file(client, minio_bucket, "shared/x", _file(tmp_path, "y")),
        "delete B's object": lambda: client.remove_object(minio_bucket, "team-b/exp/run/artifacts/model.pt"),
    }
    for what, attempt in refused.items():
        with pytest.raises(S3Error) as err:
            attempt()
        assert err.value.code == "AccessDenied", what
    assert read_object(root, minio_bucket, "team-b/exp/run/artifacts/model.pt") == b"team-b/exp/run/artifacts/model.pt"

    rotated = provision_objectstore(admin, "team-a", secrets.token_hex(20), shared)
    with pytest.raises(S3Error) as err:
        read_object(client, minio_bucket, "team-a/exp/run/artifacts/model.pt")
    assert err.value.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch")
    assert read_object(_client(rotated, minio_server), minio_bucket, "team-a/exp/run/artifacts/model.pt") == b"mine"


def _file(tmp_path, content: str):  # noqa: ANN001, ANN202
    path = tmp_path / secrets.token_hex(4)
    path.write_text(content)
    return path


# -- namespace scoping in one schema (SQLite and PostgreSQL) ---------------------------------------
def test_the_same_experiment_name_in_two_namespaces_stays_two_experiments(store):
    a = store.create_run("baseline", namespace="team-a")
    b = store.create_run("baseline", namespace="team-b")
    local = store.create_run("baseline")
    found = {(e.namespace, e.name): e.runs for e in store.list_experiments()}
    assert found == {("team-a", "baseline"): 1, ("team-b", "baseline"): 1, (None, "baseline"): 1}
    assert [e.runs for e in store.list_experiments("team-a")] == [1]
    assert [r.id for r in store.list_runs("baseline", namespace="team-b")] == [b]
    assert store.resolve_run_id(a[:8], namespace="team-a") == a
    with pytest.raises(db.StoreError, match="no run matches"):
        store.resolve_run_id(a[:8], namespace="team-b")
    with pytest.raises(db.StoreError, match="no run matches"):
        store.resolve_run_id(local, namespace="team-a")
    # The sidecar's run record does not move a run the operator recorded to another experiment.
    store.ingest_batch(b, "records.jsonl", IngestBatch(run_info={"experiment": "other"}), offset=1, lines=1)
    assert store.get_run(b).summary.experiment == "baseline"


def test_upgrading_splits_an_experiment_shared_by_namespaces(store_url):
    from alembic import command

    engine = sa.create_engine(db.normalise_url(store_url))
    command.downgrade(db._alembic_config(engine), "0004_models")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO experiments (id, name, created_at) VALUES (7, 'baseline', '2026-01-01')"))
        for i, ns in enumerate(("team-a", "team-b", "team-b", None)):
            conn.execute(sa.text("INSERT INTO runs (id, experiment_id, status, namespace, attempts, created_at)"
                                 " VALUES (:id, 7, 'FINISHED', :ns, 0, '2026-01-01')"),
                         {"id": f"00000000-0000-0000-0000-00000000000{i}", "ns": ns})
    db.upgrade(engine)
    engine.dispose()
    store = TrackingStore(store_url)
    found = {(e.namespace, e.name): e.runs for e in store.list_experiments()}
    assert found == {("team-a", "baseline"): 1, ("team-b", "baseline"): 2, (None, "baseline"): 1}
    assert {r.namespace for r in store.list_runs("baseline", namespace="team-b")} == {"team-b"}


def test_db_upgrade_migrates_every_tenant_schema(tenants_db):
    from alembic import command
    from click.testing import CliRunner

    from cairn.cli.main import cli

    admin_url, urls = tenants_db
    engine = sa.create_engine(db.normalise_url(tenant_url(admin_url, "team-a")))
    command.downgrade(db._alembic_config(engine), "0004_models")
    engine.dispose()
    with pytest.raises(db.StoreError, match="database schema is at 0004_models"):
        TrackingStore(urls["team-a"])
    out = CliRunner().invoke(cli, ["--database-url", admin_url, "db", "upgrade"], prog_name="cairn").output
    head = db.head_revision()
    assert f"tenant schema tenant_team_a: 0004_models -> {head}" in out
    assert f"tenant schema tenant_team_b: {head} -> {head}" in out
    run = TrackingStore(urls["team-a"]).create_run("after-upgrade", namespace="team-a")  # the role's grants hold
    assert TrackingStore(urls["team-a"]).run_status(run) == RunStatus.RUNNING


def test_recent_tenants_keep_a_bounded_number_of_engines_and_close_the_least_recently_used(tmp_path):
    from sqlalchemy import create_engine, event

    from cairn.tenancy.stores import RecentTenants

    closed: list[str] = []
    kept = RecentTenants(lambda pair: pair[1], max_size=2)
    for ns in ("a", "b", "c"):
        engine = create_engine(f"sqlite:///{tmp_path / ns}.db")
        event.listen(engine, "engine_disposed", lambda _engine, ns=ns: closed.append(ns))
        kept.put(ns, (ns, engine))
        if ns == "b":
            assert kept.get("a")[0] == "a"  # "a" is now the most recently used: "b" goes first
    assert closed == ["b"] and kept.get("b") is None and kept.get("a")[0] == "a" and kept.get("c")[0] == "c"
    kept.close()
    assert sorted(closed) == ["a", "b", "c"]
