"""``cairn runs where`` and ``cairn runs delete`` on a run with rows in PostgreSQL and objects in MinIO."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from cairn.cli.main import cli
from cairn.objectstore import run_prefix, upload_file
from cairn.store import TrackingStore
from cairn.store.entities import ArtifactInfo, IngestBatch, MetricPoint

from .support.servers import read_object


def _cairn(url: str, *args: str):  # noqa: ANN202
    result = CliRunner().invoke(cli, ["--database-url", url, *args], prog_name="cairn")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture
def recorded_run(postgres_url, minio_server, minio_bucket, monkeypatch, tmp_path):
    """A run of namespace team-a with params, 50 metric points, one uploaded artifact and a stray
    object under its prefix; a neighbour run whose rows and objects must survive."""
    for var, value in {"CAIRN_S3_ENDPOINT": minio_server.url, "CAIRN_S3_ACCESS_KEY": minio_server.access_key,
                       "CAIRN_S3_SECRET_KEY": minio_server.secret_key, "CAIRN_S3_BUCKET": minio_bucket,
                       "CAIRN_S3_REGION": minio_server.region}.items():
        monkeypatch.setenv(var, value)
    store, client = TrackingStore(postgres_url), minio_server.client()
    ids = []
    for name in ("erased", "neighbour"):
        rid = store.create_run("baseline", name=name, params={"lr": 0.1}, namespace="team-a")
        points = [MetricPoint("loss", i, i, 1.0) for i in range(50)]
        store.ingest_batch(rid, "records.jsonl", IngestBatch(metrics=points), offset=100, lines=50)
        prefix = run_prefix("team-a", "baseline", rid)
        model = tmp_path / f"{name}.pt"
        model.write_bytes(b"x" * 1000)
        size, sha = upload_file(client, minio_bucket, f"{prefix}/artifacts/model.pt", model)
        store.record_artifacts(rid, [ArtifactInfo("model.pt", f"s3://{minio_bucket}/{prefix}/artifacts/model.pt",
                                                  size, sha, "artifact")])
        upload_file(client, minio_bucket, f"{prefix}/checkpoints/10/partial.bin", model)
        ids.append(rid)
    return postgres_url, minio_bucket, ids


def test_where_lists_rows_and_objects_and_delete_removes_them(recorded_run, minio_server):
    url, bucket, (rid, neighbour) = recorded_run
    where = json.loads(_cairn(url, "runs", "where", rid, "-o", "json").output)
    prefix = f"s3://{bucket}/team-a/baseline/{rid}"
    tables = where["database"]["tables"]
    assert tables == {"metrics": 50, "latest_metrics": 1, "params": 1, "artifacts": 1, "ingest_progress": 1, "runs": 1}
    assert "***" in where["database"]["url"] and minio_server.secret_key not in json.dumps(where)
    assert where["objects"] == [{"uri": f"{prefix}/artifacts/model.pt", "size": 1000},
                                {"uri": f"{prefix}/checkpoints/10/partial.bin", "size": 1000}]

    refused = _cairn(url, "runs", "delete", rid[:8])
    assert refused.exit_code == 1 and "add --yes" in refused.output
    assert len(TrackingStore(url).list_runs()) == 2

    removed = json.loads(_cairn(url, "runs", "delete", rid[:8], "--yes", "-o", "json").output)
    assert removed["database"]["tables"] == tables and removed["object_bytes"] == 2000
    gone = _cairn(url, "runs", "where", rid)
    assert gone.exit_code == 1 and "no run matches" in gone.output
    client = minio_server.client()
    assert list(client.list_objects(bucket, prefix=f"team-a/baseline/{rid}/", recursive=True)) == []
    assert read_object(client, bucket, f"team-a/baseline/{neighbour}/artifacts/model.pt") == b"x" * 1000
    assert [r.id for r in TrackingStore(url).list_runs()] == [neighbour]
    assert len(TrackingStore(url).metric_history(neighbour, "loss")) == 50


def test_where_names_the_runs_live_series_in_prometheus(sqlite_url, prometheus_factory, monkeypatch):
    for var in ("CAIRN_S3_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    run = TrackingStore(sqlite_url).create_run("baseline", namespace="team-a")
    other = TrackingStore(sqlite_url).create_run("baseline", namespace="team-a")
    exposition = (f'cairn_run_step{{run="{run}"}} 5\ncairn_run_metric{{run="{run}",key="loss"}} 0.5\n'
                  f'cairn_run_step{{run="{other}"}} 7\nunrelated_total 1\n').encode()

    class Sidecar(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(exposition)

        def log_message(self, *_) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sidecar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prom = prometheus_factory([{"job_name": "sidecar", "static_configs": [
            {"targets": [f"127.0.0.1:{server.server_address[1]}"]}]}])
        prom.wait_for(f'cairn_run_step{{run="{run}"}}')
        where = json.loads(_cairn(sqlite_url, "runs", "where", run, "--prometheus", prom.url, "-o", "json").output)
    finally:
        server.shutdown()
    assert where["prometheus"] == {"url": prom.url, "series": ["cairn_run_metric", "cairn_run_step"]}
    assert where["objects"] == [] and where["database"]["tables"] == {"runs": 1}
