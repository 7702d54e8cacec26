"""The real MinIO and Prometheus servers the artifact and metrics tests run against."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from tests.support.servers import free_port, read_object


def test_minio_stores_and_returns_bytes(minio_server, minio_bucket, tmp_path):
    client = minio_server.client()
    small = os.urandom(1000)
    client.put_object(minio_bucket, "a/small.bin", io.BytesIO(small), len(small))
    # 12 MiB in 5 MiB parts: a multipart upload.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    client.fput_object(minio_bucket, "a/big.bin", str(big), part_size=5 * 1024 * 1024)

    assert read_object(client, minio_bucket, "a/small.bin") == small
    assert hashlib.sha256(read_object(client, minio_bucket, "a/big.bin")).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert client.stat_object(minio_bucket, "a/big.bin").size == 12 * 1024 * 1024
    assert sorted(o.object_name for o in client.list_objects(minio_bucket, prefix="a/")) == ["a/big.bin", "a/small.bin"]


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_minio_keeps_data_across_stop_and_start(minio_factory, kill):
    server = minio_factory()
    port, data = server.port, os.urandom(256 * 1024)
    client = server.client()
    client.make_bucket("keep")
    client.put_object("keep", "obj", io.BytesIO(data), len(data))

    server.stop(kill=kill)
    assert not server.running
    with socket.socket() as s:
        assert s.connect_ex((server.host, port)) != 0

    server.start()
    assert server.port == port
    assert read_object(server.client(), "keep", "obj") == data


def test_prometheus_scrapes_an_exporter_and_the_series_goes_stale(prometheus_factory):
    registry = CollectorRegistry()
    gauge = Gauge("cairn_test_loss", "test gauge", ["run"], registry=registry)
    gauge.labels(run="r1").set(0.125)
    gauge.labels(run="r2").set(7.5)
    exporter_port = free_port()
    httpd, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory([{"job_name": "exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}])

        result = prom.wait_for('cairn_test_loss{job="exporter",run="r1"}')
        assert [float(r["value"][1]) for r in result] == [0.125]
        assert prom.wait_for('up{job="exporter"} == 1')
        assert [t["health"] for t in prom.targets()] == ["up"]

        gauge.labels(run="r1").set(0.0625)
        prom.wait_for('cairn_test_loss{run="r1"} == 0.0625')

        # A series gone from /metrics is marked stale at the next scrape: the instant query is empty
        # at once, not after the 5-minute lookback.
        gauge.remove("r1")
        started = time.monotonic()
        prom.wait_for('cairn_test_loss{run="r1"}', predicate=lambda r: r == [], timeout=10)
        assert time.monotonic() - started < 10
        assert [float(r["value"][1]) for r in prom.query('cairn_test_loss{run="r2"}')] == [7.5]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_prometheus_reload_adds_a_job(prometheus_factory):
    prom = prometheus_factory([])
    assert prom.targets() == []
    registry = CollectorRegistry()
    Gauge("cairn_test_up", "test gauge", registry=registry).set(1)
    port = free_port()
    httpd, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom.reload([{"job_name": "late", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}])
        assert prom.wait_for('cairn_test_up{job="late"}')
        with pytest.raises(RuntimeError, match="rejected"):
            prom.reload("scrape_configs: [{job_name: 1, static_configs: nope}]")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
