"""Prerequisites of integration tests: missing ones fail under CI=true and skip elsewhere."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """Whether this run is CI (``CI=true``), where a missing prerequisite is a failure."""
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    """Fail under CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"prerequisite missing under CI: {what}")
    pytest.skip(f"prerequisite missing: {what}")


def require_binary(name: str, apt_package: str) -> str:
    """Path of an executable, or fail/skip naming the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} (apt-get install {apt_package})")
    assert path is not None
    return path
