"""
The explicit list of collectors, one line each, in exposition order.

Adding a collector: its module (with a ``SPEC``), its tests and fixtures, one line here, and its families
in ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any

from nodeagent.collector import CollectorSpec
from nodeagent.collectors import (
    cgroups,
    conntrack,
    cpu,
    diskstats,
    filefd,
    filesystem,
    gpu,
    infiniband,
    loadavg,
    meminfo,
    netstat,
    network,
    osrelease,
    pressure,
    runtimes,
    selfstats,
    sockstat,
    stat,
    tcpstat,
    textfile,
    timecollector,
    timex,
    uname,
    vmstat,
)

COLLECTORS: dict[str, CollectorSpec[Any]] = {
    spec.name: spec
    for spec in (
        cpu.SPEC,
        loadavg.SPEC,
        meminfo.SPEC,
        vmstat.SPEC,
        pressure.SPEC,
        stat.SPEC,
        filefd.SPEC,
        diskstats.SPEC,
        network.SPEC,
        tcpstat.SPEC,
        netstat.SPEC,
        sockstat.SPEC,
        conntrack.SPEC,
        infiniband.SPEC,
        uname.SPEC,
        osrelease.SPEC,
        timecollector.SPEC,
        timex.SPEC,
        filesystem.SPEC,
        textfile.SPEC,
        cgroups.SPEC,
        runtimes.SPEC,
        gpu.SPEC,
        selfstats.SPEC,
    )
}
