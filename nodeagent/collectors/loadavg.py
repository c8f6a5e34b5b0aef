"""
Load average from ``/proc/loadavg``.

Families: ``node_load1``, ``node_load5``, ``node_load15`` (gauges, node_exporter names).
Shell equivalent: ``cat /proc/loadavg``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.hostfs import ParseError, read_text
from nodeagent.metrics import MetricFamily, single


@dataclass(frozen=True, slots=True)
class LoadAvg:
    """The three load averages."""

    load1: float
    load5: float
    load15: float


def parse_loadavg(text: str) -> LoadAvg:
    """Parse ``/proc/loadavg`` (``0.21 0.37 0.39 1/719 19737``)."""
    fields = text.split()
    if len(fields) < 3:
        raise ParseError(f"loadavg: expected at least 3 fields, got {text.strip()!r}")
    try:
        return LoadAvg(float(fields[0]), float(fields[1]), float(fields[2]))
    except ValueError as exc:
        raise ParseError(f"loadavg: not a number in {text.strip()!r}") from exc


class LoadavgCollector(BaseCollector):
    """Reads ``/proc/loadavg`` each cycle."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._path = ctx.paths.proc("loadavg")

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the three load averages."""
        load = parse_loadavg(read_text(self._path))
        return (
            single("node_load1", "gauge", "1m load average.", load.load1),
            single("node_load5", "gauge", "5m load average.", load.load5),
            single("node_load15", "gauge", "15m load average.", load.load15),
        )


SPEC = CollectorSpec(
    name="loadavg",
    description="Load averages from /proc/loadavg.",
    config_model=CollectorConfig,
    factory=LoadavgCollector,
)
