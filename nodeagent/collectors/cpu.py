"""
Per-CPU time from the ``cpuN`` lines of ``/proc/stat`` (parsed by ``procstat.parse_proc_stat``).

Families: ``node_cpu_seconds_total{cpu,mode}`` and ``node_cpu_guest_seconds_total{cpu,mode}``
(counters, node_exporter names). Shell equivalent: ``grep '^cpu[0-9]' /proc/stat`` (ticks of USER_HZ,
``getconf CLK_TCK``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.collectors.procstat import CpuTicks, parse_proc_stat
from nodeagent.hostfs import read_text
from nodeagent.metrics import LabelValues, MetricFamily, counter

_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_GUEST_MODES = ("user", "nice")  # from the guest and guest_nice columns
_IDLE = 3

# node_exporter (cpu_linux.go, jumpBackSeconds): idle dropping this far means a CPU was hot-plugged and its
# counters restarted, so the remembered values are dropped instead of held.
_JUMP_BACK_SECONDS = 3.0


class CpuCollector(BaseCollector):
    """Reads ``/proc/stat`` each cycle and reports seconds per CPU and mode."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._path = ctx.paths.proc("stat")
        self._log = ctx.log
        self._user_hz = float(os.sysconf("SC_CLK_TCK"))
        self._jump_back_ticks = _JUMP_BACK_SECONDS * self._user_hz
        # Per CPU: the label tuples of its 8 modes then its 2 guest modes; bounded by the CPU count.
        self._labels: dict[str, tuple[LabelValues, ...]] = {}
        self._last: dict[str, CpuTicks] = {}

    def _monotonic(self, cpu: str, ticks: CpuTicks) -> CpuTicks:
        """
        Hold each counter at its highest value seen, as node_exporter does.

        iowait (and on some kernels idle) can step backwards on tickless kernels; exported as is, rate()
        would read that as a counter reset and report a huge spike.
        """
        last = self._last.get(cpu)
        if last is not None:
            if last[_IDLE] - ticks[_IDLE] >= self._jump_back_ticks:
                self._log.debug("cpu idle counter jumped back, resetting", cpu=cpu)
            elif last != ticks:
                ticks = tuple(map(max, last, ticks))
        self._last[cpu] = ticks
        return ticks

    def _labels_for(self, cpu: str) -> tuple[LabelValues, ...]:
        labels = tuple((cpu, mode) for mode in _MODES) + tuple((cpu, mode) for mode in _GUEST_MODES)
        self._labels[cpu] = labels
        return labels

    async def collect(self) -> Sequence[MetricFamily]:
        """Return seconds per CPU and mode, and guest seconds per CPU."""
        stat = parse_proc_stat(read_text(self._path), self._path)
        seconds = counter("node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", ("cpu", "mode"))
        guest = counter(
            "node_cpu_guest_seconds_total",
            "Seconds the CPUs spent in guests (VMs) for each mode.",
            ("cpu", "mode"),
        )
        add, add_guest, hz = seconds.add, guest.add, self._user_hz
        for cpu, raw in stat.cpus:
            ticks = self._monotonic(cpu, raw)
            labels = self._labels.get(cpu) or self._labels_for(cpu)
            for i in range(8):
                add(labels[i], ticks[i] / hz)
            add_guest(labels[8], ticks[8] / hz)
            add_guest(labels[9], ticks[9] / hz)
        return (seconds.build(), guest.build())


SPEC = CollectorSpec(
    name="cpu",
    description="Seconds per CPU and mode from /proc/stat.",
    config_model=CollectorConfig,
    factory=CpuCollector,
)
