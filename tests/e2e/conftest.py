"""End-to-end tests with real SIP peers (Debian's baresip-core) on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.e2e.baresip import baresip_or_skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end tests that run real SIP user agents (baresip) on 127.0.0.1"
    )


@pytest.fixture(scope="session")
def baresip_exe() -> str:
    """The baresip binary. Skips when it is missing, except under CI (env CI set), which
    installs baresip-core: there its absence is a failure."""
    return baresip_or_skip()
