"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.ship_peers import BackgroundLumberjack


@pytest.fixture
def receiver() -> Iterator[BackgroundLumberjack]:
    """A Lumberjack v2 test server (tests/doubles/lumberjack.py) on a background thread, closed afterwards."""
    r = BackgroundLumberjack()
    try:
        yield r
    finally:
        r.close()
