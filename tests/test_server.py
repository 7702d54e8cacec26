"""``cairn server``'s API on SQLite and PostgreSQL through FastAPI's TestClient: what each endpoint returns
is checked against what the test stored (filters, sorting and pages computed here, independently), artifacts
come back byte for byte from MinIO, and ``cairn server`` answers on a real port."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from cairn.objectstore import S3Config
from cairn.rundir import Env, RunStatus
from cairn.server.access import OpenAccess, TtlCache
from cairn.server.app import create_app
from cairn.server.settings import ServerSettings
from cairn.server.tenants import SharedStores
from cairn.settings import SettingsError
from cairn.store import TrackingStore
from cairn.store.entities import ArtifactInfo, IngestBatch, MetricPoint

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
LRS = [0.3, 0.01, 0.1, 2, 0.05, 10, 0.2, 0.001, 1, 0.5, 0.02, 3]


@dataclass
class Seeded:
    id: str
    name: str
    experiment: str
    status: str
    start: dt.datetime
    lr: float
    opt: str
    acc: float | None
    team: str | None


def seed(store: TrackingStore) -> list[Seeded]:
    """Twelve runs of namespace ``default`` (half without a namespace: local runs) and two of ``team-b``."""
    runs = []
    for i, lr in enumerate(LRS):
        status = [RunStatus.FINISHED, RunStatus.FAILED, RunStatus.RUNNING][i % 3]
        exp = "vision" if i % 2 else "nlp"
        start = T0 + dt.timedelta(minutes=7 * ((i * 5) % 12))  # distinct, not in creation order
        acc = None if i % 4 == 3 else round(0.5 + 0.037 * ((i * 7) % 12), 4)
        team = None if i % 5 == 4 else ["red", "blue"][i % 2]
        rid = store.create_run(exp, name=f"run-{i:02d}", params={"lr": lr, "opt": ["adam", "sgd", "lion"][i % 3]},
                               tags={"team": team} if team else None, status=status, start_time=start,
                               namespace="default" if i % 2 else None)
        if acc is not None:
            points = [MetricPoint("acc", s, 1_700_000_000_000 + s * 1000, acc * s / 9) for s in range(10)]
            store.ingest_batch(rid, "metrics.jsonl", IngestBatch(metrics=points), 10, 1)
        runs.append(Seeded(rid, f"run-{i:02d}", exp, status.value, start, lr, ["adam", "sgd", "lion"][i % 3], acc,
                           team))
    for i in range(2):
        store.create_run("nlp", name=f"other-{i}", params={"lr": 0.1}, namespace="team-b")
    return runs


@pytest.fixture
def api(store):
    seeded = seed(store)
    client = TestClient(create_app(ServerSettings(), SharedStores(store), OpenAccess()))
    return client, seeded, store


def all_pages(client: TestClient, page_size: int, **params) -> tuple[list[str], int, int]:
    """Ids over every page, the total the first page announced, and how many pages it took."""
    ids, token, pages, total = [], None, 0, None
    while pages <= 100:
        reply = client.get("/api/v1/namespaces/default/runs",
                           params={**params, "page_size": page_size, **({"page_token": token} if token else {})})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        total = body["total"] if total is None else total
        assert body["total"] == total
        ids += [r["id"] for r in body["runs"]]
        pages += 1
        token = body["next_page_token"]
        if token is None:
            return ids, total, pages
    raise AssertionError("more than 100 pages")


def ids_of(runs: list[Seeded]) -> list[str]:
    return [r.id for r in runs]


def test_runs_are_filtered_sorted_and_paged_as_the_data_says(api):
    client, seeded, _ = api
    ids, total, pages = all_pages(client, 5)  # default: newest start first
    assert ids == ids_of(sorted(seeded, key=lambda r: r.start, reverse=True))
    assert (total, pages) == (12, 3)

    ids, total, _ = all_pages(client, 4, filter=["params.lr >= 0.1"], order_by=["params.lr asc"])
    assert ids == ids_of(sorted((r for r in seeded if r.lr >= 0.1), key=lambda r: r.lr))  # 2 < 10: as numbers
    assert total == len(ids) == 8

    with_acc = sorted((r for r in seeded if r.acc is not None), key=lambda r: r.acc, reverse=True)
    ids, _, _ = all_pages(client, 5, order_by=["metrics.acc desc"])
    assert ids[:len(with_acc)] == ids_of(with_acc)  # runs without the metric come last
    assert set(ids[len(with_acc):]) == {r.id for r in seeded if r.acc is None}

    ids, total, _ = all_pages(client, 3, filter=["metrics.acc > 0.7", "tags.team = red"], order_by=["name desc"])
    wanted = sorted((r for r in seeded if r.acc is not None and r.acc > 0.7 and r.team == "red"),
                    key=lambda r: r.name, reverse=True)
    assert ids == ids_of(wanted) and total == len(wanted) > 0

    ids, _, _ = all_pages(client, 50, filter=["params.opt != adam", "status = failed"], experiment="vision",
                          order_by=["start_time asc"])
    wanted = [r for r in sorted(seeded, key=lambda r: r.start)
              if r.opt != "adam" and r.status == "FAILED" and r.experiment == "vision"]
    assert ids == ids_of(wanted) and wanted

    ids, _, _ = all_pages(client, 50, order_by=["tags.team asc", "params.lr desc"])
    assert ids == ids_of(sorted(seeded, key=lambda r: (r.team is None, r.team or "", -r.lr)))


def test_a_run_row_its_namespace_its_experiments_and_compare(api):
    client, seeded, _ = api
    body = client.get("/api/v1/namespaces/default/runs", params={"filter": "name = run-00"}).json()
    assert body["total"] == 1
    row = body["runs"][0]
    first = seeded[0]
    assert row["id"] == first.id and row["status"] == first.status and row["experiment"] == first.experiment
    assert row["params"] == {"lr": "0.3", "opt": "adam"}
    assert row["metrics"] == {"acc": {"value": pytest.approx(first.acc), "step": 9, "min": 0.0,
                                      "max": pytest.approx(first.acc), "count": 10}}
    assert row["exit_code"] is None
    assert row["tags"] == {"team": "red"}
    assert row["start_time"] == first.start.isoformat().replace("+00:00", "Z")

    other = client.get("/api/v1/namespaces/team-b/runs").json()
    assert other["total"] == 2 and {r["name"] for r in other["runs"]} == {"other-0", "other-1"}
    assert client.get(f"/api/v1/namespaces/team-b/runs/{seeded[0].id}").status_code == 404
    assert client.get(f"/api/v1/namespaces/team-b/runs/{seeded[0].id}/metrics/acc").status_code == 404
    assert client.get("/api/v1/namespaces/default/runs/not-a-run-id").status_code == 404
    experiments = client.get("/api/v1/namespaces/default/experiments").json()["experiments"]
    assert [(e["name"], e["runs"]) for e in experiments] == [("nlp", 6), ("vision", 6)]
    assert experiments[0]["last_start_time"] == max(r.start for r in seeded if r.experiment == "nlp").isoformat() \
        .replace("+00:00", "Z")

    a, b, c = seeded[0], seeded[3], seeded[6]  # adam, adam, adam; run 3 has no acc
    body = client.get("/api/v1/namespaces/default/compare", params={"run": [a.id, b.id, c.id]}).json()
    assert [r["id"] for r in body["runs"]] == [a.id, b.id, c.id]
    assert body["params_differing"] == {"lr": {a.id: "0.3", b.id: "2", c.id: "0.2"}}
    assert body["metric_keys"] == []  # run 3 logged no acc
    assert client.get("/api/v1/namespaces/default/compare",
                      params={"run": [a.id, c.id]}).json()["metric_keys"] == ["acc"]
    too_many = client.get("/api/v1/namespaces/default/compare", params={"run": [r.id for r in seeded[:11]]})
    assert too_many.status_code == 400 and "1 to 10 runs" in too_many.json()["error"]
    assert client.get("/api/v1/namespaces/team-b/compare", params={"run": [a.id]}).status_code == 404


def test_run_detail_and_metric_history(api):
    client, seeded, store = api
    run = seeded[0]
    store.record_code(run.id, "https://git.example/repo.git", "abc123", dirty=True)
    store.record_dataset(run.id, "s3://data/train", "sha256:feed")
    store.update_run(run.id, image="registry.local/train:1", image_digest="sha256:beef", attempts=2,
                     end_time=run.start + dt.timedelta(seconds=90), exit_code=0)
    store.record_resume(run.id, 2, 5, "s3://bucket/ckpt/5", from_attempt=1)
    body = client.get(f"/api/v1/namespaces/default/runs/{run.id}").json()
    assert body["code"] == {"repository": "https://git.example/repo.git", "commit": "abc123", "dirty": True,
                            "branch": None}
    assert body["image"] == {"ref": "registry.local/train:1", "digest": "sha256:beef"}
    assert [d["digest"] for d in body["datasets"]] == ["sha256:feed"]
    assert body["attempts"] == 2 and body["exit_code"] == 0 and body["duration_seconds"] == 90
    assert body["resumes"] == [{"attempt": 2, "step": 5, "from_attempt": 1, "uri": "s3://bucket/ckpt/5"}]
    assert body["metric_keys"] == ["acc"] and body["ingest"]["points"] == 10

    points = [MetricPoint("loss/train", s, 1_700_000_000_000 + 250 * s, 100.0 - s + (50 if s == 333 else 0))
              for s in range(1000)]
    store.ingest_batch(run.id, "loss.jsonl", IngestBatch(metrics=points), 100, 1)
    url = f"/api/v1/namespaces/default/runs/{run.id}/metrics/loss/train"
    body = client.get(url, params={"max_points": 100}).json()
    assert body["key"] == "loss/train" and body["downsampled"] is True
    assert 0 < len(body["points"]) <= 100
    spiked = next(p for p in body["points"] if p[0] >= 333)  # the bucket that holds step 333
    assert spiked[4] == 100.0 - 333 + 50  # the spike survives as its bucket's max
    last = body["points"][-1]
    assert last[:3] == [999, (1_700_000_000_000 + 250 * 999) / 1000, 100.0 - 999]
    assert sum(p[5] for p in body["points"]) == 1000  # each bucket's point count

    full = client.get(url, params={"full": "true"})
    assert full.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in full.text.splitlines()]
    assert lines == [[p.step, p.timestamp_ms / 1000, p.value] for p in points]


def test_runs_resolve_by_id_prefix_or_name_within_the_namespace(api):
    client, seeded, store = api
    base = "/api/v1/namespaces/{}/runs:resolve"
    first = seeded[0]  # a local run: read through default
    assert client.get(base.format("default"), params={"prefix": first.id}).json() == {"ids": [first.id]}
    assert client.get(base.format("default"), params={"prefix": first.id[:8].upper()}).json()["ids"] == [first.id]
    assert client.get(base.format("team-b"), params={"prefix": first.id}).json() == {"ids": []}
    theirs = store.run_ids_named("team-b", "other-0")
    assert len(theirs) == 1
    assert client.get(base.format("default"), params={"prefix": theirs[0][:8]}).json() == {"ids": []}
    assert client.get(base.format("team-b"), params={"name": "other-0"}).json() == {"ids": theirs}
    assert client.get(base.format("default"), params={"name": "other-0"}).json() == {"ids": []}
    for params, words in [({}, "give prefix"), ({"prefix": "abcd", "name": "x"}, "give prefix"),
                          ({"prefix": "abc"}, "4 to 36"), ({"prefix": "zzzz"}, "4 to 36")]:
        refused = client.get(base.format("default"), params=params)
        assert refused.status_code == 400 and words in refused.json()["error"], params


def test_run_detail_carries_artifacts_uploads_cluster_fields_and_typed_params(api):
    client, seeded, store = api
    run = seeded[1]
    store.update_run(run.id, node_name="gpu-1", gpu_product="H100", resources={"nvidia.com/gpu": 1},
                     artifacts_uploaded=False, artifacts_pending=3, reason="Evicted")
    store.record_artifacts(run.id, [ArtifactInfo("artifacts/m.bin", "s3://b/m.bin", 5, "a" * 64, step=2, attempt=1,
                                                 uploaded_at=T0)])
    body = client.get(f"/api/v1/namespaces/default/runs/{run.id}").json()
    assert body["param_values"] == {"lr": run.lr, "opt": run.opt} and body["params"]["lr"] == str(run.lr)
    assert body["uploads"] == {"complete": False, "pending": 3}
    assert body["cluster"] == {"namespace": "default", "k8s_uid": None, "image": None, "image_digest": None,
                               "node_name": "gpu-1", "gpu_product": "H100", "resources": {"nvidia.com/gpu": 1},
                               "attempts": 0, "reason": "Evicted"}
    assert body["artifacts"] == [{"path": "artifacts/m.bin", "uri": "s3://b/m.bin", "size": 5, "sha256": "a" * 64,
                                  "kind": "artifact", "step": 2, "attempt": 1, "uploaded_at": "2026-01-01T00:00:00Z"}]


def test_models_and_their_evaluations_are_read_per_namespace(api):
    client, seeded, store = api
    run = seeded[0]
    store.record_artifacts(run.id, [ArtifactInfo("artifacts/model/w.bin", "s3://b/w.bin", 7, "b" * 64,
                                                 uploaded_at=T0)])
    store.finish_run(run.id, RunStatus.FINISHED, 0)
    store.register_model_version("default", "digits", run.id, "kube:alice@prod", alias="production")
    store.register_model_version("default", "digits", run.id, "kube:alice@prod")
    store.record_evaluation("default", "digits", 2, 1, {"passed": False, "reason": "worse"})
    models = client.get("/api/v1/namespaces/default/models").json()["models"]
    assert [(m["name"], m["versions"], m["latest_version"], m["aliases"]) for m in models] == [
        ("digits", 2, 2, {"production": 1})]
    assert client.get("/api/v1/namespaces/team-b/models").json() == {"models": []}
    detail = client.get("/api/v1/namespaces/default/models/digits").json()
    assert [(v["version"], v["run_id"], v["aliases"]) for v in detail["versions"]] == [
        (1, run.id, ["production"]), (2, run.id, [])]
    assert detail["versions"][0]["files"] == [{"path": "artifacts/model/w.bin", "uri": "s3://b/w.bin", "size": 7,
                                               "sha256": "b" * 64}]
    assert [(a["action"], a["version"]) for a in detail["audit"]] == [("register", 1), ("promote", 1),
                                                                      ("register", 2)]
    evaluations = client.get("/api/v1/namespaces/default/models/digits/evaluations", params={"version": 2}).json()
    assert [(e["candidate_version"], e["baseline_version"], e["passed"], e["verdict"]["reason"])
            for e in evaluations["evaluations"]] == [(2, 1, False, "worse")]
    assert client.get("/api/v1/namespaces/default/models/digits/evaluations",
                      params={"version": 1}).json() == {"evaluations": []}
    for url in ("/api/v1/namespaces/team-b/models/digits", "/api/v1/namespaces/default/models/digits/evaluations"
                "?version=3"):
        missing = client.get(url)
        assert missing.status_code == 404 and "digits" in missing.json()["error"], url


@pytest.mark.parametrize("params, words", [
    ({"filter": "lr = 1"}, "expected params.KEY"),
    ({"filter": "metrics.acc >= high"}, "compares with a number"),
    ({"filter": "status = SLEEPING"}, "none of"),
    ({"order_by": "start_time sideways"}, "expected params.KEY"),
    ({"page_token": "bm90IGEgdG9rZW4"}, "page_token"),
    ({"page_size": "1001"}, "page_size"),
])
def test_a_bad_query_is_a_400_that_says_what_is_wrong(sqlite_url, params, words):
    store = TrackingStore(sqlite_url)
    client = TestClient(create_app(ServerSettings(), SharedStores(store), OpenAccess()))
    reply = client.get("/api/v1/namespaces/default/runs", params=params)
    assert reply.status_code == 400
    assert words in reply.json()["error"]


def test_service_endpoints(sqlite_url):
    store = TrackingStore(sqlite_url)
    client = TestClient(create_app(ServerSettings(), SharedStores(store), OpenAccess()))
    assert client.get("/api/v1/healthz").json() == {"status": "ok"}
    assert client.get("/api/v1/whoami").json() == {"user": "local", "groups": [], "auth": "none"}
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/namespaces/{ns}/runs" in paths
    assert client.get("/docs").status_code == 404  # no UI that would fetch assets from a CDN


def test_artifacts_stream_from_the_object_store_with_their_sha256(sqlite_url, minio_server, minio_bucket):
    store = TrackingStore(sqlite_url)
    run_id = store.create_run("nlp", name="with-artifacts")
    payload = bytes(range(256)) * 5000  # 1.2 MiB: more than one streamed chunk
    digest = hashlib.sha256(payload).hexdigest()
    key = f"runs/{run_id}/artifacts/model/weights.bin"
    minio_server.client().put_object(minio_bucket, key, io.BytesIO(payload), len(payload))
    store.record_artifacts(run_id, [
        ArtifactInfo("model/weights.bin", f"s3://{minio_bucket}/{key}", len(payload), digest, step=3,
                     uploaded_at=T0),
        ArtifactInfo("gone.txt", f"s3://{minio_bucket}/runs/{run_id}/gone.txt", 1, "0" * 64, uploaded_at=T0),
    ])
    objects = S3Config(minio_server.endpoint, False, minio_server.access_key, minio_server.secret_key, minio_bucket,
                       minio_server.region)
    client = TestClient(create_app(ServerSettings(), SharedStores(store, objects), OpenAccess()))
    base = f"/api/v1/namespaces/default/runs/{run_id}/artifacts"
    listed = client.get(base).json()["artifacts"]
    assert [(a["path"], a["size"], a["sha256"]) for a in listed] == [
        ("gone.txt", 1, "0" * 64), ("model/weights.bin", len(payload), digest)]
    reply = client.get(f"{base}/model/weights.bin")
    assert reply.status_code == 200
    assert reply.content == payload
    assert reply.headers["x-cairn-sha256"] == digest
    assert reply.headers["content-disposition"].startswith("attachment")
    assert client.get(f"{base}/nothing-here").status_code == 404
    missing = client.get(f"{base}/gone.txt")
    assert missing.status_code == 502 and "gone.txt" in missing.json()["error"]


def test_local_artifacts_are_served_only_without_auth(sqlite_url, tmp_path):
    store = TrackingStore(sqlite_url)
    run_id = store.create_run("nlp")
    local = tmp_path / "notes.txt"
    local.write_bytes(b"local bytes")
    store.record_artifacts(run_id, [ArtifactInfo("notes.txt", local.as_uri(), 11,
                                                 hashlib.sha256(b"local bytes").hexdigest())])
    client = TestClient(create_app(ServerSettings(), SharedStores(store), OpenAccess()))
    reply = client.get(f"/api/v1/namespaces/default/runs/{run_id}/artifacts/notes.txt")
    assert reply.content == b"local bytes"
    assert reply.headers["x-cairn-sha256"] == hashlib.sha256(b"local bytes").hexdigest()


def test_auth_none_is_refused_off_loopback_and_proxy_needs_its_secret(monkeypatch):
    monkeypatch.setenv(Env.SERVER_HOST, "0.0.0.0")
    with pytest.raises(SettingsError, match="bind to 127.0.0.1"):
        ServerSettings()
    with pytest.raises(SettingsError, match="PROXY_SECRET"):
        ServerSettings(auth="proxy")
    assert ServerSettings(auth="kubernetes").host == "0.0.0.0"


def test_the_decision_cache_is_bounded_and_forgets():
    now = [0.0]
    cache: TtlCache[str, bool] = TtlCache(ttl=10, max_entries=3, clock=lambda: now[0])
    for i in range(5):
        cache.put(f"k{i}", True)
    assert len(cache) == 3 and cache.get("k0") is None and cache.get("k4") is True
    now[0] = 10.5
    assert cache.get("k4") is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cairn_server_serves_the_local_store(sqlite_url, cairn_home):
    store = TrackingStore(sqlite_url)
    run_id = store.create_run("nlp", name="served", params={"lr": 0.1})
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cairn", "server", "--port", str(port),
                             "--database-url", sqlite_url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/namespaces/default/runs",
                                            timeout=2) as reply:
                    body = json.load(reply)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "cairn server did not answer within 30 s"
                time.sleep(0.2)
        assert [(r["id"], r["params"]) for r in body["runs"]] == [(run_id, {"lr": "0.1"})]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_nan_metrics_read_as_null(sqlite_url):
    store = TrackingStore(sqlite_url)
    run_id = store.create_run("nlp")
    store.ingest_batch(run_id, "m", IngestBatch(metrics=[MetricPoint("loss", 0, 0, math.nan)]), 1, 1)
    client = TestClient(create_app(ServerSettings(), SharedStores(store), OpenAccess()))
    assert client.get("/api/v1/namespaces/default/runs").json()["runs"][0]["metrics"] == {
        "loss": {"value": None, "step": 0, "min": None, "max": None, "count": 1}}


def test_without_the_api_server_callers_get_401_for_no_token_and_503_for_a_token(sqlite_url):
    from kubernetes import client

    from cairn.server.access import KubernetesReviews, ReviewedAccess

    store = TrackingStore(sqlite_url)
    settings = ServerSettings(auth="kubernetes")
    nowhere = client.Configuration(host=f"https://127.0.0.1:{free_port()}")  # nothing listens there
    nowhere.retries = 0
    access = ReviewedAccess(settings, KubernetesReviews(client.ApiClient(nowhere)))
    api = TestClient(create_app(settings, SharedStores(store), access))
    no_token = api.get("/api/v1/namespaces/default/runs")
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == "Bearer"
    assert api.get("/api/v1/namespaces/default/runs", headers={"Authorization": "Basic dXNlcjpwdw=="}).status_code == 401
    unavailable = api.get("/api/v1/namespaces/default/runs", headers={"Authorization": "Bearer some-token"})
    assert unavailable.status_code == 503 and "TokenReview failed" in unavailable.json()["error"]
    assert "some-token" not in unavailable.text
    assert api.get("/api/v1/healthz").status_code == 200
