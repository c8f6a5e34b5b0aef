"""The filesystem collector: mountinfo parsing, exclusions, statfs values, and hung mounts."""

from __future__ import annotations

import asyncio
import os
import textwrap
import threading
import time
from pathlib import Path

import pytest
import structlog

from nodeagent.collector import CollectorContext, NoDataError
from nodeagent.collectors.filesystem import (
    FilesystemCollector,
    FilesystemConfig,
    FsStats,
    parse_mountinfo,
    statfs,
)
from nodeagent.hostfs import HostPaths, ParseError
from nodeagent.metrics import MetricFamily

MOUNTINFO = textwrap.dedent("""\
    22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
    23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=4096k
    24 22 0:21 / /proc rw,nosuid,nodev,noexec shared:12 - proc proc rw
    25 22 0:30 / /data ro,relatime shared:3 - xfs /dev/sdb1 ro
    26 22 0:31 / /mnt/with\\040space rw - tmpfs tmpfs rw
    27 22 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
    28 22 0:33 / /data rw - ext4 /dev/sdc1 rw
""")


def _collector(root: Path, **cfg: object) -> FilesystemCollector:
    paths = HostPaths(procfs=str(root / "proc"), sysfs=str(root / "sys"), rootfs=str(root))
    return FilesystemCollector(
        CollectorContext("filesystem", paths, structlog.get_logger()), FilesystemConfig(**cfg)
    )


def _by_name(
    families: list[MetricFamily] | tuple[MetricFamily, ...],
) -> dict[str, dict[tuple[str, ...], float]]:
    return {f.name: dict(f.samples) for f in families}


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A fake host root: mountinfo for pid 1, and the mount points as real directories."""
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "mountinfo").write_text(MOUNTINFO)
    for mp in ("data", "mnt/with space", "dev"):
        (tmp_path / mp).mkdir(parents=True)
    return tmp_path


def test_parse_mountinfo() -> None:
    """mountinfo fields are split around the optional fields, and octal escapes are decoded."""
    mounts = parse_mountinfo(MOUNTINFO)

    assert 7 == len(mounts)
    assert ("254", "0", "/", "ext4", "/dev/vda") == (
        mounts[0].major,
        mounts[0].minor,
        mounts[0].mountpoint,
        mounts[0].fstype,
        mounts[0].device,
    )
    assert "/mnt/with space" == mounts[4].mountpoint
    assert "ro" in mounts[3].options


def test_parse_error_names_the_line() -> None:
    """A malformed line yields a ParseError with the source and line number."""
    with pytest.raises(ParseError, match=r"/proc/1/mountinfo: line 2: 'garbage'"):
        parse_mountinfo("22 1 254:0 / / rw - ext4 /dev/vda rw\ngarbage\n", "/proc/1/mountinfo")


async def test_values_and_exclusions(host: Path) -> None:
    """Excluded types and mount points are skipped, shadowed mounts report the visible one, values equal statvfs."""
    families = _by_name(await _collector(host).collect())
    avail = families["node_filesystem_avail_bytes"]
    st = os.statvfs(host / "data")

    assert {
        ("/dev/vda", "/", "ext4"),
        ("/dev/sdc1", "/data", "ext4"),
        ("tmpfs", "/mnt/with space", "tmpfs"),
    } == set(avail)
    assert st.f_bavail * st.f_bsize == avail[("/dev/sdc1", "/data", "ext4")]
    assert st.f_blocks * st.f_bsize == families["node_filesystem_size_bytes"][("/dev/sdc1", "/data", "ext4")]
    assert st.f_files == families["node_filesystem_files"][("/dev/sdc1", "/data", "ext4")]
    assert 0 == families["node_filesystem_readonly"][("/dev/sdc1", "/data", "ext4")]
    assert {0} == set(families["node_filesystem_device_error"].values())
    assert 1 == families["node_filesystem_mount_info"][("/dev/sdc1", "0", "33", "/data")]


async def test_readonly_mount(host: Path) -> None:
    """A mount with the ro option reports readonly 1."""
    (host / "proc" / "1" / "mountinfo").write_text("25 22 0:30 / /data ro,relatime - xfs /dev/sdb1 ro\n")
    families = _by_name(await _collector(host).collect())

    assert 1 == families["node_filesystem_readonly"][("/dev/sdb1", "/data", "xfs")]


async def test_statfs_error_marks_device_error(host: Path) -> None:
    """A mount point whose statfs fails reports device_error 1 and no size."""
    (host / "proc" / "1" / "mountinfo").write_text("25 22 0:30 / /gone rw - ext4 /dev/sdx rw\n")
    families = _by_name(await _collector(host).collect())

    assert {("/dev/sdx", "/gone", "ext4"): 1} == families["node_filesystem_device_error"]
    assert {} == families["node_filesystem_size_bytes"]


async def test_falls_back_to_self_mountinfo(tmp_path: Path) -> None:
    """Without /proc/1/mountinfo the collector reads /proc/self/mountinfo; with neither it has no data."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "mountinfo").write_text("22 1 254:0 / / rw - ext4 /dev/vda rw\n")
    families = _by_name(await _collector(tmp_path).collect())

    assert [("/dev/vda", "/", "ext4")] == list(families["node_filesystem_size_bytes"])
    with pytest.raises(NoDataError):
        await _collector(tmp_path / "empty").collect()


async def test_hung_mount_is_bounded_and_recovers(host: Path) -> None:
    """A statfs that never returns marks only that mount, is not re-issued while stuck, and recovers after."""
    release = threading.Event()
    calls: list[str] = []

    def hanging_statfs(path: str) -> FsStats:
        calls.append(path)
        if path.endswith("/data"):
            release.wait(30)
        return statfs(path)

    collector = _collector(host, mount_timeout=0.2)
    collector.statfs = hanging_statfs
    try:
        started = time.monotonic()
        first = _by_name(await collector.collect())
        took = time.monotonic() - started
        second = _by_name(await collector.collect())
        data_calls = sum(1 for c in calls if c.endswith("/data"))
        release.set()
        await asyncio.sleep(0.1)
        third = _by_name(await collector.collect())
    finally:
        release.set()
        await collector.aclose()

    key = ("/dev/sdc1", "/data", "ext4")
    assert took < 1.0
    assert 1 == first["node_filesystem_device_error"][key]
    assert 0 == first["node_filesystem_device_error"][("/dev/vda", "/", "ext4")]
    assert 1 == second["node_filesystem_device_error"][key]
    assert 1 == data_calls
    assert 0 == third["node_filesystem_device_error"][key]
    assert key in third["node_filesystem_avail_bytes"]
