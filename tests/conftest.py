"""Registers the shared fixtures (tests/support/fixtures.py) for every test, tests/cluster included."""

pytest_plugins = ["tests.support.fixtures"]
