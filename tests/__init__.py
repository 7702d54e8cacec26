"""Cairn's test suite; a package so that tests/support is imported as tests.support everywhere."""
