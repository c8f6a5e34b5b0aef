"""
Kernel and scheduler totals from the non-CPU lines of ``/proc/stat`` (parsed by ``procstat``).

Families: ``node_boot_time_seconds``, ``node_procs_running``, ``node_procs_blocked`` (gauges),
``node_context_switches_total``, ``node_forks_total``, ``node_intr_total`` (counters), node_exporter names.
Shell equivalent: ``grep -E '^(btime|ctxt|processes|intr|procs_)' /proc/stat | cut -d' ' -f1,2``.
"""

from __future__ import annotations

from collections.abc import Sequence

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.collectors.procstat import parse_proc_stat
from nodeagent.hostfs import read_text
from nodeagent.metrics import MetricFamily, MetricType, single

# (ProcStat field, family, type, help) in exposition order.
_FAMILIES: tuple[tuple[str, str, MetricType, str], ...] = (
    ("boot_time", "node_boot_time_seconds", "gauge", "Node boot time, in unixtime."),
    ("context_switches", "node_context_switches_total", "counter", "Total number of context switches."),
    ("forks", "node_forks_total", "counter", "Total number of forks."),
    ("interrupts", "node_intr_total", "counter", "Total number of interrupts serviced."),
    ("procs_running", "node_procs_running", "gauge", "Number of processes in runnable state."),
    ("procs_blocked", "node_procs_blocked", "gauge", "Number of processes blocked waiting for I/O to complete."),
)


class StatCollector(BaseCollector):
    """Reads ``/proc/stat`` each cycle, skipping the per-CPU lines."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._path = ctx.paths.proc("stat")

    async def collect(self) -> Sequence[MetricFamily]:
        """Return boot time, context switches, forks, interrupts and runnable/blocked process counts."""
        stat = parse_proc_stat(read_text(self._path), self._path, with_cpus=False)
        out: list[MetricFamily] = []
        for field, name, kind, help_ in _FAMILIES:
            value: int | None = getattr(stat, field)
            if value is not None:  # a line the kernel did not print is left out, not reported as 0
                out.append(single(name, kind, help_, float(value)))
        return out


SPEC = CollectorSpec(
    name="stat",
    description="Boot time, context switches, forks, interrupts and process counts from /proc/stat.",
    config_model=CollectorConfig,
    factory=StatCollector,
)
