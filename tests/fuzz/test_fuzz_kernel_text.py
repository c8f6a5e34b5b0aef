"""
Every parser of a kernel text file (``/proc``, ``/sys``, the udev database, os-release, textfile ``*.prom``) under
hostile input: damaged real files give a value or the parser's documented typed error (``ParseError``, whose message
names the file; ``TextfileError`` for textfiles), never another exception, because the collectors and the cgroup
walk catch only those. Parsers that document no error must return for any text.

The valid-input half (generated files in the kernel's format parse back to exactly what was written) is in
``test_fuzz_kernel_roundtrip.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.collectors.conntrack import parse_conntrack_stat, parse_count
from nodeagent.collectors.diskstats import parse_diskstats, parse_udev_data
from nodeagent.collectors.filefd import parse_file_nr
from nodeagent.collectors.filesystem import parse_mountinfo
from nodeagent.collectors.infiniband import parse_counter, parse_rate, parse_state
from nodeagent.collectors.loadavg import parse_loadavg
from nodeagent.collectors.meminfo import parse_meminfo
from nodeagent.collectors.netstat import parse_netstat, parse_snmp6
from nodeagent.collectors.osrelease import parse_os_release
from nodeagent.collectors.pressure import parse_pressure
from nodeagent.collectors.procstat import parse_proc_stat
from nodeagent.collectors.sockstat import parse_sockstat
from nodeagent.collectors.textfile import TextfileError, parse_textfile
from nodeagent.collectors.timecollector import parse_clocksource
from nodeagent.collectors.uname import parse_uname
from nodeagent.collectors.vmstat import parse_vmstat
from nodeagent.hostfs import ParseError
from nodeagent.sources.cgroupfs import parse_proc_cgroup
from tests.fuzz.strategies import fixture_text, hostile_text, live_text
from tests.fuzz.support import Cases, budget

IB = ("sys", "class", "infiniband", "mlx5_0", "ports", "1")

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
23 27 0:22 / /sys rw,relatime shared:2 - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime shared:3 - devtmpfs devtmpfs rw,size=12334432k,nr_inodes=3083608,mode=755
27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
95 27 0:45 / /mnt/with\\040space\\011tab rw,relatime - tmpfs my\\134dev rw
"""

PROC_CGROUP = "12:pids:/docker/44b3\n7:cpu,cpuacct:/docker/44b3\n1:name=systemd:/system.slice/x.service\n0::/a:b\n"

TEXTFILE = """\
# HELP node_raid_disks Disks in the array.
# TYPE node_raid_disks gauge
node_raid_disks{md="md0",state="active"} 2
node_raid_disks{md="md1",state="failed"} 0
# TYPE backup_runs_total counter
backup_runs_total 17
# TYPE rpc_seconds histogram
rpc_seconds_bucket{le="0.1"} 3
rpc_seconds_bucket{le="+Inf"} 5
rpc_seconds_sum 1.25
rpc_seconds_count 5
"""


@dataclass(frozen=True)
class TextTarget:
    """One parser: how to call it on text, its seeds, the typed errors it documents and what they must name."""

    name: str
    parse: Callable[[str], Any]
    seeds: tuple[str, ...]
    allowed: tuple[type[BaseException], ...] = (ParseError,)
    names: str = ""


def _src(name: str) -> str:
    """The source path handed to a parser: a marker its error messages must repeat."""
    return f"/fuzz/{name}"


def _targets() -> list[TextTarget]:
    stat = fixture_text("proc", "stat")
    netstat = (fixture_text("proc", "net", "netstat"), fixture_text("proc", "net", "snmp"))
    sockstat = (fixture_text("proc", "net", "sockstat"), fixture_text("proc", "net", "sockstat6"))
    pressure = tuple(fixture_text("proc", "pressure", r) for r in ("cpu", "io", "memory"))
    ib_counters = tuple(
        fixture_text(*IB, "counters", name) for name in ("port_rcv_data", "port_rcv_switch_relay_errors")
    )
    return [
        TextTarget(
            "procstat",
            lambda t: parse_proc_stat(t, _src("procstat")),
            (stat, *live_text("/proc/stat")),
            names=_src("procstat"),
        ),
        TextTarget(
            "procstat_scalars",
            lambda t: parse_proc_stat(t, _src("procstat_scalars"), with_cpus=False),
            (stat,),
            names=_src("procstat_scalars"),
        ),
        TextTarget(
            "meminfo",
            lambda t: parse_meminfo(t, _src("meminfo")),
            (fixture_text("proc", "meminfo"), *live_text("/proc/meminfo")),
            names=_src("meminfo"),
        ),
        TextTarget(
            "vmstat",
            lambda t: parse_vmstat(t, _src("vmstat")),
            (fixture_text("proc", "vmstat"),),
            names=_src("vmstat"),
        ),
        TextTarget("loadavg", parse_loadavg, (fixture_text("proc", "loadavg"),), names="loadavg"),
        TextTarget(
            "diskstats",
            lambda t: parse_diskstats(t, _src("diskstats")),
            (fixture_text("proc", "diskstats"), *live_text("/proc/diskstats")),
            names=_src("diskstats"),
        ),
        TextTarget("udev_data", parse_udev_data, (fixture_text("rootfs", "run", "udev", "data", "b254:0"),), ()),
        TextTarget(
            "file_nr",
            lambda t: parse_file_nr(t, _src("file_nr")),
            (fixture_text("proc", "sys", "fs", "file-nr"),),
            names=_src("file_nr"),
        ),
        TextTarget("netstat", lambda t: parse_netstat(t, _src("netstat")), netstat, names=_src("netstat")),
        TextTarget(
            "snmp6",
            lambda t: parse_snmp6(t, _src("snmp6")),
            (fixture_text("proc", "net", "snmp6"),),
            names=_src("snmp6"),
        ),
        TextTarget("sockstat", lambda t: parse_sockstat(t, _src("sockstat")), sockstat, names=_src("sockstat")),
        TextTarget(
            "conntrack_count",
            lambda t: parse_count(t, _src("conntrack_count")),
            (fixture_text("proc", "sys", "net", "netfilter", "nf_conntrack_count"),),
            names=_src("conntrack_count"),
        ),
        TextTarget(
            "conntrack_stat",
            lambda t: parse_conntrack_stat(t, _src("conntrack_stat")),
            (fixture_text("proc", "net", "stat", "nf_conntrack"),),
            names=_src("conntrack_stat"),
        ),
        TextTarget("pressure", lambda t: parse_pressure(t, _src("pressure")), pressure, names=_src("pressure")),
        TextTarget(
            "os_release",
            lambda t: parse_os_release(t, _src("os_release")),
            (fixture_text("rootfs", "etc", "os-release"), *live_text("/etc/os-release")),
            names=_src("os_release"),
        ),
        TextTarget(
            "mountinfo",
            lambda t: parse_mountinfo(t, _src("mountinfo")),
            (MOUNTINFO, *live_text("/proc/self/mountinfo")),
            names=_src("mountinfo"),
        ),
        TextTarget(
            "ib_state",
            lambda t: parse_state(t, _src("ib_state")),
            (fixture_text(*IB, "state"), fixture_text(*IB, "phys_state")),
            names=_src("ib_state"),
        ),
        TextTarget(
            "ib_rate", lambda t: parse_rate(t, _src("ib_rate")), (fixture_text(*IB, "rate"),), names=_src("ib_rate")
        ),
        TextTarget("ib_counter", lambda t: parse_counter(t, _src("ib_counter")), ib_counters, names=_src("ib_counter")),
        TextTarget(
            "clocksource",
            lambda t: parse_clocksource("0", t, t),
            (fixture_text("sys", "devices", "system", "clocksource", "clocksource0", "available_clocksource"),),
            (),
        ),
        TextTarget(
            "uname_domainname",
            lambda t: parse_uname(os.uname(), t),
            (fixture_text("proc", "sys", "kernel", "domainname"),),
            (),
        ),
        TextTarget(
            "proc_cgroup",
            lambda t: (parse_proc_cgroup(t, ""), parse_proc_cgroup(t, "cpu"), parse_proc_cgroup(t, "name=systemd")),
            (PROC_CGROUP, *live_text("/proc/self/cgroup")),
            (),
        ),
        TextTarget(
            "textfile",
            lambda t: parse_textfile(t, _src("textfile.prom")),
            (TEXTFILE,),
            (TextfileError,),
            names=_src("textfile.prom"),
        ),
    ]


TARGETS = {t.name: t for t in _targets()}


@pytest.mark.parametrize("name", sorted(TARGETS))
@budget(200)
@given(data=st.data())
def test_hostile_text_gives_value_or_documented_error(cases: Cases, name: str, data: st.DataObject) -> None:
    """Damaged real content: a value or the documented error naming the file; nothing else escapes."""
    target = TARGETS[name]
    text = data.draw(hostile_text(target.seeds), label="text")
    cases.call(name, target.parse, text, allowed=target.allowed, names=target.names)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_parse(cases: Cases, name: str) -> None:
    """The seeds themselves parse without error, so the damage, not the seed, is what the property test exercises."""
    target = TARGETS[name]
    for seed in target.seeds:
        cases.call(name, target.parse, seed)  # no exception allowed
