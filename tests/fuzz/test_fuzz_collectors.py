"""
The file-reading collectors end to end on a host root whose files are damaged: a collector built from its spec, as
the agent builds it, reads a fixture tree (``tests/fixtures``) in which one file at a time is replaced by hostile
content. Its ``collect`` returns families, or raises ``ParseError`` naming the damaged file, or ``NoDataError``;
nothing else, because only those tell the scheduler (and a person reading the log) which file is wrong. The families
must then render in both exposition formats, since the agent keeps serving them.

This catches what the parser-level tests cannot: a value a parser accepts but its collector cannot use (an integer
that overflows the float of a sample, a mount point that statfs refuses).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import example, given
from hypothesis import strategies as st

from nodeagent.collector import CollectorContext, CollectorSpec, NoDataError
from nodeagent.collectors import COLLECTORS
from nodeagent.exposition import Exposition
from nodeagent.hostfs import HostPaths, ParseError
from tests.fuzz.strategies import FIXTURES, hostile_bytes
from tests.fuzz.support import Cases, budget

MOUNTINFO = (
    b"22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw\n"
    b"27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n"
    b"95 27 0:45 / /mnt/with\\040space rw,relatime - tmpfs my\\134dev rw\n"
)
TEXTFILE = b'# TYPE raid_disks gauge\nraid_disks{md="md0"} 2\n# TYPE runs_total counter\nruns_total 17\n'
IB_PORT = "sys/class/infiniband/mlx5_0/ports/1"


@dataclass(frozen=True)
class CollectorTarget:
    """A collector and the files under the roots (``proc/...``, ``sys/...``, ``rootfs/...``) that it parses."""

    collector: str
    files: tuple[str, ...]


TARGETS = {
    t.collector: t
    for t in (
        CollectorTarget("cpu", ("proc/stat",)),
        CollectorTarget("stat", ("proc/stat",)),
        CollectorTarget("meminfo", ("proc/meminfo",)),
        CollectorTarget("vmstat", ("proc/vmstat",)),
        CollectorTarget("loadavg", ("proc/loadavg",)),
        CollectorTarget("diskstats", ("proc/diskstats", "rootfs/run/udev/data/b254:0")),
        CollectorTarget("filefd", ("proc/sys/fs/file-nr",)),
        CollectorTarget("netstat", ("proc/net/netstat", "proc/net/snmp", "proc/net/snmp6")),
        CollectorTarget("sockstat", ("proc/net/sockstat", "proc/net/sockstat6")),
        CollectorTarget(
            "conntrack",
            (
                "proc/sys/net/netfilter/nf_conntrack_count",
                "proc/sys/net/netfilter/nf_conntrack_max",
                "proc/net/stat/nf_conntrack",
            ),
        ),
        CollectorTarget("pressure", ("proc/pressure/cpu", "proc/pressure/io", "proc/pressure/memory")),
        CollectorTarget("os", ("rootfs/etc/os-release",)),
        CollectorTarget("filesystem", ("proc/1/mountinfo",)),
        CollectorTarget(
            "time",
            (
                "sys/devices/system/clocksource/clocksource0/available_clocksource",
                "sys/devices/system/clocksource/clocksource0/current_clocksource",
            ),
        ),
        CollectorTarget("uname", ("proc/sys/kernel/domainname",)),
        CollectorTarget(
            "infiniband",
            (
                *(f"{IB_PORT}/{name}" for name in ("state", "phys_state", "rate", "counters/port_rcv_data")),
                f"{IB_PORT}/counters/symbol_error",
                "sys/class/infiniband/mlx5_0/board_id",
            ),
        ),
        CollectorTarget("textfile", ("rootfs/var/lib/node_exporter/textfile_collector/fuzz.prom",)),
    )
}


@pytest.fixture(scope="module")
def host_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fixture roots, plus a mountinfo and a textfile, that the tests damage one file at a time."""
    root = tmp_path_factory.mktemp("host")
    for part in ("proc", "sys", "rootfs"):
        shutil.copytree(FIXTURES / part, root / part, symlinks=True)
    (root / "proc" / "1").mkdir()
    (root / "proc" / "1" / "mountinfo").write_bytes(MOUNTINFO)
    textfile = root / "rootfs" / "var" / "lib" / "node_exporter" / "textfile_collector" / "fuzz.prom"
    textfile.parent.mkdir(parents=True)
    textfile.write_bytes(TEXTFILE)
    return root


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _build(spec: CollectorSpec[Any], root: Path) -> Any:
    paths = HostPaths(procfs=str(root / "proc"), sysfs=str(root / "sys"), rootfs=str(root / "rootfs"))
    ctx = CollectorContext(name=spec.name, paths=paths, log=structlog.get_logger())
    return spec.factory(ctx, spec.config_model())


@pytest.mark.parametrize("name", sorted(TARGETS))
@budget(120)
@given(data=st.data())
def test_collector_on_damaged_file(
    cases: Cases, host_root: Path, loop: asyncio.AbstractEventLoop, name: str, data: st.DataObject
) -> None:
    """One damaged file: families that render, ParseError naming that file, or NoDataError."""
    target = TARGETS[name]
    relative = data.draw(st.sampled_from(target.files), label="file")
    path = host_root / relative
    original = path.read_bytes()
    content = data.draw(hostile_bytes((original,)), label="content")
    collector = _build(COLLECTORS[name], host_root)
    try:
        path.write_bytes(content)
        outcome = cases.call(
            f"collector_{name}", loop.run_until_complete, collector.collect(), allowed=(ParseError, NoDataError)
        )
    finally:
        path.write_bytes(original)
        loop.run_until_complete(collector.aclose())
    if isinstance(outcome.error, ParseError):
        assert path.name in str(outcome.error), outcome.error
    if outcome.value is not None:
        exposition = Exposition([name], lambda: [])
        exposition.publish(name, outcome.value)
        exposition.body(openmetrics=False, compress=False)
        exposition.body(openmetrics=True, compress=False)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_collector_on_intact_files(cases: Cases, host_root: Path, loop: asyncio.AbstractEventLoop, name: str) -> None:
    """The undamaged tree gives families (so each damaged case starts from a collector that works)."""
    collector = _build(COLLECTORS[name], host_root)
    try:
        families = cases.call(f"collector_{name}", loop.run_until_complete, collector.collect()).value
    finally:
        loop.run_until_complete(collector.aclose())
    assert families, name


@pytest.fixture(scope="module")
def net_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("net")
    (root / "sys" / "class" / "net" / "fuzz0").mkdir(parents=True)
    return root


@budget(200)
@given(
    hostile_bytes((b"full\n", b"half\n", b"unknown\n")),
    hostile_bytes((b"1000\n", b"25000\n", b"-1\n")),
)
@example(duplex=b"\xff\xfe\n", speed=b"9" * 400)  # UnicodeDecodeError; a speed whose bytes/s overflow a float
def test_network_sysfs_duplex_and_speed(cases: Cases, net_root: Path, duplex: bytes, speed: bytes) -> None:
    """
    ``/sys/class/net/<if>/duplex`` and ``speed``, which the network collector reads beside rtnetlink (through its
    ``_ethtool_sysfs``, the one place they are parsed): any bytes give a duplex string and a speed that fits a kernel
    value, or no speed; never an exception, which would fail the whole network cycle.
    """
    device = net_root / "sys" / "class" / "net" / "fuzz0"
    (device / "duplex").write_bytes(duplex)
    (device / "speed").write_bytes(speed)
    collector = _build(COLLECTORS["network"], net_root)
    got_duplex, got_speed = cases.call("network_sysfs", collector._ethtool_sysfs, "fuzz0").value
    assert duplex.strip().decode("utf-8", "replace") == got_duplex
    assert got_speed is None or -(2**63) <= got_speed < 2**64
    if speed.strip().isdigit() and len(speed.strip()) < 19:
        assert int(speed) == got_speed


def test_filesystem_mount_point_with_nul(cases: Cases, host_root: Path, loop: asyncio.AbstractEventLoop) -> None:
    """A mount point with \\000 (a NUL no real path holds) made statfs raise ValueError out of the cycle; now that
    mount reports node_filesystem_device_error 1 and the others are unaffected."""
    mountinfo = host_root / "proc" / "1" / "mountinfo"
    mountinfo.write_bytes(MOUNTINFO + b"96 27 0:46 / /mnt/a\\000b rw - tmpfs t rw\n")
    collector = _build(COLLECTORS["filesystem"], host_root)
    try:
        families = cases.call("collector_filesystem", loop.run_until_complete, collector.collect()).value
    finally:
        mountinfo.write_bytes(MOUNTINFO)
        loop.run_until_complete(collector.aclose())
    errors = {
        labels[1]: value for f in families if f.name == "node_filesystem_device_error" for labels, value in f.samples
    }
    assert 1 == errors["/mnt/a\x00b"]
    assert 0 == errors["/"]
