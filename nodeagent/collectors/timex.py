"""
Kernel clock discipline (NTP/PTP state) from adjtimex(2), via ``nodeagent.sources.timex``.

Families (node_exporter ``timex`` names): gauges ``node_timex_offset_seconds``,
``node_timex_frequency_adjustment_ratio``, ``node_timex_maxerror_seconds``,
``node_timex_estimated_error_seconds``, ``node_timex_status``, ``node_timex_loop_time_constant``,
``node_timex_tick_seconds``, ``node_timex_pps_frequency_hertz``, ``node_timex_pps_jitter_seconds``,
``node_timex_pps_shift_seconds``, ``node_timex_pps_stability_hertz``, ``node_timex_tai_offset_seconds``,
``node_timex_sync_status``; counters ``node_timex_pps_jitter_total``, ``node_timex_pps_calibration_total``,
``node_timex_pps_error_total``, ``node_timex_pps_stability_exceeded_total``.
Shell equivalent: ``adjtimex --print`` (package adjtimex) or ``chronyc tracking``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.metrics import MetricFamily, MetricType
from nodeagent.sources.timex import AdjtimexReader, RawTimex, TimexValues, timex_values

# (TimexValues field, family name, type, help) in node_exporter's order.
_FAMILIES: tuple[tuple[str, str, MetricType, str], ...] = (
    (
        "sync_status",
        "node_timex_sync_status",
        "gauge",
        "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
    ),
    (
        "offset_seconds",
        "node_timex_offset_seconds",
        "gauge",
        "Time offset in between local system and reference clock.",
    ),
    (
        "frequency_adjustment_ratio",
        "node_timex_frequency_adjustment_ratio",
        "gauge",
        "Local clock frequency adjustment.",
    ),
    ("maxerror_seconds", "node_timex_maxerror_seconds", "gauge", "Maximum error in seconds."),
    ("estimated_error_seconds", "node_timex_estimated_error_seconds", "gauge", "Estimated error in seconds."),
    ("status", "node_timex_status", "gauge", "Value of the status array bits."),
    ("loop_time_constant", "node_timex_loop_time_constant", "gauge", "Phase-locked loop time constant."),
    ("tick_seconds", "node_timex_tick_seconds", "gauge", "Seconds between clock ticks."),
    ("pps_frequency_hertz", "node_timex_pps_frequency_hertz", "gauge", "Pulse per second frequency."),
    ("pps_jitter_seconds", "node_timex_pps_jitter_seconds", "gauge", "Pulse per second jitter."),
    ("pps_shift_seconds", "node_timex_pps_shift_seconds", "gauge", "Pulse per second interval duration."),
    (
        "pps_stability_hertz",
        "node_timex_pps_stability_hertz",
        "gauge",
        "Pulse per second stability, average of recent frequency changes.",
    ),
    (
        "pps_jitter_total",
        "node_timex_pps_jitter_total",
        "counter",
        "Pulse per second count of jitter limit exceeded events.",
    ),
    (
        "pps_calibration_total",
        "node_timex_pps_calibration_total",
        "counter",
        "Pulse per second count of calibration intervals.",
    ),
    (
        "pps_error_total",
        "node_timex_pps_error_total",
        "counter",
        "Pulse per second count of calibration errors.",
    ),
    (
        "pps_stability_exceeded_total",
        "node_timex_pps_stability_exceeded_total",
        "counter",
        "Pulse per second count of stability limit exceeded events.",
    ),
    (
        "tai_offset_seconds",
        "node_timex_tai_offset_seconds",
        "gauge",
        "International Atomic Time (TAI) offset.",
    ),
)

_NO_ADJTIMEX_HINT = (
    "adjtimex(2) is not available to the agent: allow it in the container's seccomp profile "
    "(read-only use needs no capability) or disable the timex collector"
)


class TimexCollector(BaseCollector):
    """Calls adjtimex(2) once per cycle; ``read`` can be injected (tests, other platforms)."""

    def __init__(
        self,
        ctx: CollectorContext,
        cfg: CollectorConfig,
        read: Callable[[], RawTimex] | None = None,
    ) -> None:
        self._read = read
        self._unavailable = ""
        if read is None:
            try:
                self._read = AdjtimexReader().read
            except OSError as exc:
                self._unavailable = str(exc)

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the clock discipline state; ``NoDataError`` when adjtimex(2) cannot be called."""
        if self._read is None:
            raise NoDataError(self._unavailable, _NO_ADJTIMEX_HINT)
        try:
            raw = self._read()
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOSYS):
                raise NoDataError(str(exc), _NO_ADJTIMEX_HINT) from None
            raise
        return families(timex_values(raw))


def families(values: TimexValues) -> tuple[MetricFamily, ...]:
    """The ``node_timex_*`` families of one reading."""
    return tuple(
        MetricFamily(name, kind, help_, (), (((), getattr(values, field)),)) for field, name, kind, help_ in _FAMILIES
    )


SPEC = CollectorSpec(
    name="timex",
    description="Kernel clock discipline state (NTP/PTP) from adjtimex(2).",
    config_model=CollectorConfig,
    factory=TimexCollector,
)
