"""The self collector: the agent's own process numbers and build information."""

from __future__ import annotations

import os

import psutil

from nodeagent import __version__
from nodeagent.collectors import selfstats
from nodeagent.hostfs import HostPaths
from tests.collectors.conftest import Collect


async def test_process_values_are_this_process(collect: Collect, live_paths: HostPaths) -> None:
    """Open fds, RSS and CPU are this process's own, read the same moment."""
    families = await collect(selfstats.SPEC, live_paths)
    me = psutil.Process()
    value = {name: fam.samples[0][1] for name, fam in families.items()}

    assert abs(me.num_fds() - value["process_open_fds"]) <= 2
    assert abs(me.memory_info().rss - value["process_resident_memory_bytes"]) < 16 * 2**20
    assert 0 < value["process_cpu_seconds_total"] <= sum(me.cpu_times()[:2]) + 0.01
    assert me.create_time() == value["process_start_time_seconds"]
    assert len(os.listdir("/proc/self/task")) == value["process_threads"]


async def test_build_info_and_compat_switch(collect: Collect, live_paths: HostPaths) -> None:
    """Build info carries the version; node_exporter_build_info can be turned off."""
    on = await collect(selfstats.SPEC, live_paths)
    off = await collect(selfstats.SPEC, live_paths, node_exporter_build_info=False)

    assert __version__ == on["nodeagent_build_info"].samples[0][0][0]
    assert "gauge" == on["node_exporter_build_info"].type
    assert "node_exporter_build_info" not in off
