"""Benchmarks, run from the repository root as modules: python3 -m bench.ingest, python3 -m bench.exporter.

They start their servers with the tests' helpers (tests/support/servers.py). See bench/README.md.
"""
