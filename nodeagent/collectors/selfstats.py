"""
The agent's own process: CPU, memory, open file descriptors, threads, and build information.

Families: ``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_virtual_memory_bytes``, ``process_open_fds``, ``process_max_fds``,
``process_start_time_seconds``, ``process_threads`` (the names every Prometheus client library uses),
``nodeagent_build_info{version,python_version}``, and ``node_exporter_build_info`` (opt-out) so that
node-mixin's dashboards, which list instances by that family, find nodeagent too.
This reads the agent's own ``/proc/self`` (via psutil), not the host roots: it describes this process.
Shell equivalent: ``ps -o rss,time,nlwp -p $(pidof nodeagent); ls /proc/$(pidof nodeagent)/fd | wc -l``.
"""

from __future__ import annotations

import platform
import resource
from collections.abc import Sequence

import psutil

from nodeagent import __version__
from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.metrics import MetricFamily, MetricType, info, single


class SelfConfig(CollectorConfig):
    """Options of the ``self`` collector."""

    node_exporter_build_info: bool = True


class SelfCollector(BaseCollector):
    """Samples this process with one psutil ``oneshot``."""

    def __init__(self, ctx: CollectorContext, cfg: SelfConfig) -> None:
        self._process = psutil.Process()
        self._start_time = self._process.create_time()
        build = info(
            "nodeagent_build_info",
            "nodeagent version and the Python it runs on.",
            ("version", "python_version"),
        )
        build.add((__version__, platform.python_version()), 1)
        self._static: list[MetricFamily] = [build.build()]
        if cfg.node_exporter_build_info:
            compat = info(
                "node_exporter_build_info",
                "Compatibility series for node-mixin dashboards; the labels describe nodeagent, not node_exporter.",
                ("version", "revision", "branch", "goversion"),
            )
            compat.add((__version__, "nodeagent", "", "python" + platform.python_version()), 1)
            # node_exporter types it as a gauge; keep the TYPE identical for dashboards and recording rules.
            family = compat.build()
            self._static.append(MetricFamily(family.name, "gauge", family.help, family.labelnames, family.samples))

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the process families."""
        p = self._process
        with p.oneshot():
            cpu = p.cpu_times()
            mem = p.memory_info()
            fds = p.num_fds()
            threads = p.num_threads()
        soft_fds, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        g: MetricType = "gauge"
        return [
            single(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                cpu.user + cpu.system,
            ),
            single("process_resident_memory_bytes", g, "Resident memory size in bytes.", mem.rss),
            single("process_virtual_memory_bytes", g, "Virtual memory size in bytes.", mem.vms),
            single("process_open_fds", g, "Number of open file descriptors.", fds),
            single("process_max_fds", g, "Maximum number of open file descriptors.", soft_fds),
            single(
                "process_start_time_seconds",
                g,
                "Start time of the process since unix epoch in seconds.",
                self._start_time,
            ),
            single("process_threads", g, "Number of OS threads in the process.", threads),
            *self._static,
        ]


SPEC = CollectorSpec(
    name="self",
    description="The agent's own CPU, memory, file descriptors, threads and build information.",
    config_model=SelfConfig,
    factory=SelfCollector,
)
