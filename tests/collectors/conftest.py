"""Shared fixtures of the collector tests: fixture roots, building and running a collector by its spec."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from nodeagent.collector import Collector, CollectorContext, CollectorSpec
from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

MakeCollector = Callable[..., Collector]
ByName = Callable[[Sequence[MetricFamily]], dict[str, MetricFamily]]
Collect = Callable[..., Awaitable[dict[str, MetricFamily]]]


def by_name(families: Sequence[MetricFamily]) -> dict[str, MetricFamily]:
    """Index families by name, failing on a duplicate name."""
    out = {f.name: f for f in families}
    assert len(out) == len(families), f"duplicate family names in {[f.name for f in families]}"
    return out


@pytest.fixture
def fixture_paths() -> HostPaths:
    """Roots pointing at the captured files under ``tests/fixtures``."""
    return HostPaths(procfs=str(FIXTURES / "proc"), sysfs=str(FIXTURES / "sys"), rootfs=str(FIXTURES / "rootfs"))


@pytest.fixture
def empty_paths(tmp_path: Path) -> HostPaths:
    """Roots that all point at one empty directory: every source is absent."""
    return HostPaths(procfs=str(tmp_path), sysfs=str(tmp_path), rootfs=str(tmp_path))


@pytest.fixture
def live_paths() -> HostPaths:
    """The real roots of this machine."""
    return HostPaths()


def make_ctx(name: str, paths: HostPaths) -> CollectorContext:
    """The context the agent gives a collector, with a structlog logger."""
    return CollectorContext(name=name, paths=paths, log=structlog.get_logger())


@pytest.fixture
def make_collector() -> MakeCollector:
    """Build a collector from its spec the way the agent does: validated config model, then factory."""

    def make(spec: CollectorSpec[Any], paths: HostPaths, **options: Any) -> Collector:
        return spec.factory(make_ctx(spec.name, paths), spec.config_model(**options))

    return make


@pytest.fixture
def families_by_name() -> ByName:
    """The ``by_name`` helper, as a fixture."""
    return by_name


@pytest.fixture
def collect(make_collector: MakeCollector) -> Collect:
    """Build a collector, run one cycle, close it, and return its families by name."""

    async def run(spec: CollectorSpec[Any], paths: HostPaths, **options: Any) -> dict[str, MetricFamily]:
        collector = make_collector(spec, paths, **options)
        try:
            return by_name(await collector.collect())
        finally:
            await collector.aclose()

    return run


def read_host(path: str) -> str:
    """Read a file of this machine directly, for live tests to compare a collector with a fresh read."""
    return Path(path).read_text()


def host_has(path: str) -> bool:
    """Whether this machine has a path (a live test's prerequisite)."""
    return Path(path).exists()
