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
from nodeagent.metrics import MetricFamily, single


class StatCollector(BaseCollector):
    """Reads ``/proc/stat`` each cycle, skipping the per-CPU lines."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._path = ctx.paths.proc("stat")

    async def collect(self) -> Sequence[MetricFamily]:
        """Return boot time, context switches, forks, interrupts and runnable/blocked process counts."""
        stat = parse_proc_stat(read_text(self._path), self._path, with_cpus=False)
        out: list[MetricFamily] = []
        if stat.boot_time is not None:
            out.append(
                single(
                    "node_boot_time_seconds", "gauge", "Node boot time, in unixtime.", float(stat.boot_time)
                )
            )
        if stat.context_switches is not None:
            out.append(
                single(
                    "node_context_switches_total",
                    "counter",
                    "Total number of context switches.",
                    float(stat.context_switches),
                )
            )
        if stat.forks is not None:
            out.append(single("node_forks_total", "counter", "Total number of forks.", float(stat.forks)))
        if stat.interrupts is not None:
            out.append(
                single(
                    "node_intr_total",
                    "counter",
                    "Total number of interrupts serviced.",
                    float(stat.interrupts),
                )
            )
        if stat.procs_running is not None:
            out.append(
                single(
                    "node_procs_running",
                    "gauge",
                    "Number of processes in runnable state.",
                    float(stat.procs_running),
                )
            )
        if stat.procs_blocked is not None:
            out.append(
                single(
                    "node_procs_blocked",
                    "gauge",
                    "Number of processes blocked waiting for I/O to complete.",
                    float(stat.procs_blocked),
                )
            )
        return out


SPEC = CollectorSpec(
    name="stat",
    description="Boot time, context switches, forks, interrupts and process counts from /proc/stat.",
    config_model=CollectorConfig,
    factory=StatCollector,
)
