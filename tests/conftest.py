"""Shared fixtures: a structlog logger whose events a test can read (runtime metadata tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog


@pytest.fixture
def events() -> list[dict[str, Any]]:
    """The log events emitted through ``log``, as dicts (``event`` is the message)."""
    return []


@pytest.fixture
def log(events: list[dict[str, Any]]) -> Any:
    """A bound logger that records every event into ``events``."""

    def capture(_logger: Any, method: str, event_dict: dict[str, Any]) -> str:
        events.append({"level": method, **event_dict})
        return json.dumps(event_dict, default=str)

    return structlog.wrap_logger(structlog.ReturnLogger(), processors=[capture])
