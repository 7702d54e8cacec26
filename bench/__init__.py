"""Benchmarks, run from the repository root as modules: python3 -m bench.ingest, python3 -m bench.exporter.

They start their own servers (bench/servers.py), never the tests' helpers. See bench/README.md.
"""
