"""Registers the shared fixtures (tests/support/fixtures.py) for every test, tests/cluster included.

The README's test command runs the tests on two pytest-xdist workers (`-n 2`), each test module as
one unit of work. The cluster tests share one node (its GPUs, its CRDs, the Helm releases that adopt
them), so all of them are a single unit that one worker runs in file order while the other takes the
rest; so are the tests that build the project's wheel, which write the same caches as the image build.
"""

import pytest

pytest_plugins = ["tests.support.fixtures"]

WITH_THE_NODE = ("tests/cluster/", "tests/test_packaging.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):  # noqa: ANN001, ANN201
    from xdist.scheduler import LoadScopeScheduling

    class ModulesWithTheNodeTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "the node" if nodeid.startswith(WITH_THE_NODE) else nodeid.split("::", 1)[0]

    return ModulesWithTheNodeTogether(config, log)
