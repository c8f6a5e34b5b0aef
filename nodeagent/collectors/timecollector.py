"""
System time, time zone and clock sources (node_exporter's ``time`` collector).

Families: ``node_time_seconds``, ``node_time_zone_offset_seconds{time_zone}`` (gauges),
``node_time_clocksource_available_info{device,clocksource}`` and
``node_time_clocksource_current_info{device,clocksource}`` (gauges, value 1) from
``/sys/devices/system/clocksource/clocksource<N>/{available,current}_clocksource``; ``device`` is the index
of the ``clocksource<N>`` directory (``"0"``), as node_exporter labels it. Shell equivalent:
``date +%s.%N%z; grep . /sys/devices/system/clocksource/clocksource*/*_clocksource``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.hostfs import read_text
from nodeagent.metrics import MetricFamily, gauge, single

_AVAILABLE_HELP = "Available clocksources read from '/sys/devices/system/clocksource'."
_CURRENT_HELP = "Current clocksource read from '/sys/devices/system/clocksource'."
_CS_LABELS = ("device", "clocksource")


@dataclass(frozen=True, slots=True)
class ClockSource:
    """One ``clocksource<N>`` directory: the clock sources it offers and the one in use."""

    device: str
    available: tuple[str, ...]
    current: str


def parse_clocksource(device: str, available_text: str, current_text: str) -> ClockSource:
    """Parse ``available_clocksource`` (``tsc kvm-clock hpet``) and ``current_clocksource`` (``tsc``)."""
    return ClockSource(device, tuple(available_text.split()), current_text.strip())


class TimeCollector(BaseCollector):
    """Reads the clock and the clocksource directories each cycle."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._dir = ctx.paths.sys("devices", "system", "clocksource")

    def _clocksources(self) -> list[ClockSource]:
        try:
            # Sorted as Go's filepath.Glob sorts them, so device indexes match node_exporter's.
            names = sorted(n for n in os.listdir(self._dir) if n.startswith("clocksource") and n[11:].isdigit())
        except FileNotFoundError:
            return []
        sources = []
        for index, name in enumerate(names):
            base = os.path.join(self._dir, name)
            try:
                available = read_text(os.path.join(base, "available_clocksource"))
                current = read_text(os.path.join(base, "current_clocksource"))
            except FileNotFoundError:
                continue
            sources.append(parse_clocksource(str(index), available, current))
        return sources

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the time, the zone offset and, where sysfs has them, the clock sources."""
        now = time.time()
        local = time.localtime(now)
        zone = gauge("node_time_zone_offset_seconds", "System time zone offset in seconds.", ("time_zone",))
        zone.add((local.tm_zone,), float(local.tm_gmtoff))
        out = [
            single("node_time_seconds", "gauge", "System time in seconds since epoch (1970).", now),
            zone.build(),
        ]
        sources = self._clocksources()
        if sources:
            available = gauge("node_time_clocksource_available_info", _AVAILABLE_HELP, _CS_LABELS)
            current = gauge("node_time_clocksource_current_info", _CURRENT_HELP, _CS_LABELS)
            for source in sources:
                for name in source.available:
                    available.add((source.device, name), 1.0)
                if source.current:
                    current.add((source.device, source.current), 1.0)
            out += (available.build(), current.build())
        return out


SPEC = CollectorSpec(
    name="time",
    description="System time, time zone offset and clock sources.",
    config_model=CollectorConfig,
    factory=TimeCollector,
)
