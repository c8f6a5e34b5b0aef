"""The diskstats and udev parsers, the device filter option and the diskstats collector."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import psutil
import pydantic
import pytest

from nodeagent.collectors import diskstats
from nodeagent.collectors.diskstats import (
    DEFAULT_DEVICE_EXCLUDE,
    DiskStat,
    DiskstatsConfig,
    UdevInfo,
    parse_diskstats,
    parse_udev_data,
)
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect, read_host

VDA_INFO = ("vda", "254", "0", "pci-0000:00:04.0", "", "", "nodeagent-root0", "")


def _proc_with_diskstats(tmp_path: Path, text: str) -> HostPaths:
    (tmp_path / "diskstats").write_text(textwrap.dedent(text))
    return HostPaths(procfs=str(tmp_path), sysfs=str(tmp_path), rootfs=str(tmp_path))


def test_parse_lines_of_every_kernel_generation() -> None:
    """Lines with 17 (5.5+), 15 (4.18+) and 11 (older) stat columns keep exactly the columns printed."""
    text = textwrap.dedent(
        """\
         254       0 vda 30705 8859 1436050 5270 3587 8820 1225640 2059 0 5324 8301 3238 80 74224 581 377 389
           8       0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
           8      16 sdb 1 2 3 4 5 6 7 8 9 10 11
        """
    )
    expected = (
        DiskStat(
            "254",
            "0",
            "vda",
            (30705, 8859, 1436050, 5270, 3587, 8820, 1225640, 2059, 0, 5324, 8301, 3238, 80, 74224, 581, 377, 389),
        ),
        DiskStat("8", "0", "sda", tuple(range(1, 16))),
        DiskStat("8", "16", "sdb", tuple(range(1, 12))),
    )
    assert expected == parse_diskstats(text)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("8 0 sda 1 2 3", "expected 'major minor name stats...'"),
        ("8 0 sda 1 2 x 4", "not an integer"),
        ("8 zero sda 1 2 3 4", "device numbers are not integers"),
    ],
)
def test_parse_malformed_line_names_file_and_line(line: str, reason: str) -> None:
    """A malformed line raises a ParseError naming the source, the line number and the line."""
    with pytest.raises(ParseError, match=rf"^/proc/diskstats: line 2: {reason}.*{re.escape(repr(line))}"):
        parse_diskstats(f"7 0 loop0 0 0 0 0 0 0 0 0 0 0 0\n{line}\n")


def test_parse_udev_data_scsi_disk() -> None:
    """The E: properties of a SCSI disk give path, WWN, model, short serial and revision."""
    text = textwrap.dedent(
        """\
        S:disk/by-id/wwn-0x5002538e40a1b2c3
        W:12
        I:1893104
        E:ID_ATA=1
        E:ID_MODEL=Samsung_SSD_860_EVO_500GB
        E:ID_REVISION=RVT04B6Q
        E:ID_SERIAL=Samsung_SSD_860_EVO_500GB_S3Z2NB0K123456A
        E:ID_SERIAL_SHORT=S3Z2NB0K123456A
        E:ID_WWN=0x5002538e40a1b2c3
        E:ID_PATH=pci-0000:00:17.0-ata-1
        G:systemd
        """
    )
    expected = UdevInfo(
        path="pci-0000:00:17.0-ata-1",
        wwn="0x5002538e40a1b2c3",
        model="Samsung_SSD_860_EVO_500GB",
        serial="S3Z2NB0K123456A",
        revision="RVT04B6Q",
    )
    assert expected == parse_udev_data(text)


def test_parse_udev_serial_prefers_scsi_ident() -> None:
    """SCSI_IDENT_SERIAL wins over ID_SERIAL_SHORT, which wins over ID_SERIAL, as in node_exporter."""
    text = "E:ID_SERIAL=long\nE:ID_SERIAL_SHORT=short\nE:SCSI_IDENT_SERIAL=label\n"
    assert "label" == parse_udev_data(text).serial
    assert "short" == parse_udev_data("E:ID_SERIAL=long\nE:ID_SERIAL_SHORT=short\n").serial
    assert "long" == parse_udev_data("E:ID_SERIAL=long\n").serial


def test_config_rejects_invalid_regex() -> None:
    """An invalid exclude pattern is rejected by the config model with the key and the value."""
    with pytest.raises(pydantic.ValidationError, match=r"device_exclude\n.*not a valid regular expression"):
        DiskstatsConfig(device_exclude="[sd")


def test_default_exclude_is_node_exporters() -> None:
    """The default pattern drops partitions, RAM, loop and floppy devices and keeps whole disks."""
    pattern = re.compile(DEFAULT_DEVICE_EXCLUDE)
    dropped = ["sda1", "vda2", "xvdb3", "nvme0n1p1", "loop0", "ram0", "zram0", "fd0"]
    kept = ["sda", "vda", "nvme0n1", "dm-0", "md0", "mmcblk0"]
    assert (dropped, []) == (
        [d for d in dropped if pattern.search(d)],
        [d for d in kept if pattern.search(d)],
    )


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """Only vda passes the default filter; its 17 columns are scaled to bytes and seconds as node_exporter does."""
    families = await collect(diskstats.SPEC, fixture_paths)
    expected = {
        "node_disk_reads_completed_total": 30705.0,
        "node_disk_reads_merged_total": 8859.0,
        "node_disk_read_bytes_total": 1436050 * 512.0,
        "node_disk_read_time_seconds_total": 5.27,
        "node_disk_writes_completed_total": 3587.0,
        "node_disk_writes_merged_total": 8820.0,
        "node_disk_written_bytes_total": 1225640 * 512.0,
        "node_disk_write_time_seconds_total": 2.059,
        "node_disk_io_now": 0.0,
        "node_disk_io_time_seconds_total": 5.324,
        "node_disk_io_time_weighted_seconds_total": 8.301,
        "node_disk_discards_completed_total": 3238.0,
        "node_disk_discards_merged_total": 80.0,
        "node_disk_discarded_sectors_total": 74224.0,
        "node_disk_discard_time_seconds_total": 0.581,
        "node_disk_flush_requests_total": 377.0,
        "node_disk_flush_requests_time_seconds_total": 0.389,
    }
    stats = {name: f for name, f in families.items() if name != "node_disk_info"}
    assert expected == {name: dict(f.samples)[("vda",)] for name, f in stats.items()}
    assert {("device",)} == {f.labelnames for f in stats.values()}
    assert "gauge" == families["node_disk_io_now"].type
    info = families["node_disk_info"]
    assert ("gauge", ((VDA_INFO, 1.0),)) == (info.type, info.samples)
    assert ("device", "major", "minor", "path", "wwn", "model", "serial", "revision") == info.labelnames


async def test_collect_custom_exclude_and_old_kernel(tmp_path: Path, collect: Collect) -> None:
    """A configured exclude pattern replaces the default; an 11-column line yields no discard or flush families."""
    paths = _proc_with_diskstats(
        tmp_path,
        """\
           7       0 loop0 1 2 3 4 5 6 7 8 9 10 11
           8       0 sda 1 2 3 4 5 6 7 8 9 10 11
        """,
    )
    families = await collect(diskstats.SPEC, paths, device_exclude="^sd")
    assert 12 == len(families)
    assert not any("discard" in name or "flush" in name for name in families)
    assert ((("loop0",), 3 * 512.0),) == families["node_disk_read_bytes_total"].samples
    assert ((("loop0", "7", "0", "", "", "", "", ""), 1.0),) == families["node_disk_info"].samples


async def test_absent_diskstats_raises_file_not_found(empty_paths: HostPaths, collect: Collect) -> None:
    """A procfs root without ``diskstats`` raises FileNotFoundError (a broken root, not a missing feature)."""
    with pytest.raises(FileNotFoundError):
        await collect(diskstats.SPEC, empty_paths)


async def test_malformed_diskstats_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read and the offending line."""
    paths = _proc_with_diskstats(tmp_path, "8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n8 1 sda1 1 2\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/diskstats: line 2: .*'8 1 sda1 1 2'"):
        await collect(diskstats.SPEC, paths)


async def test_live_matches_fresh_read(live_paths: HostPaths, collect: Collect) -> None:
    """On this host the reported devices are the unfiltered ones of a fresh read, with counts psutil agrees with."""
    families = await collect(diskstats.SPEC, live_paths)
    exclude = re.compile(DEFAULT_DEVICE_EXCLUDE)
    fresh = [line.split()[2] for line in read_host("/proc/diskstats").splitlines()]
    devices = {labels[0] for labels, _ in families["node_disk_info"].samples}
    assert {d for d in fresh if not exclude.search(d)} == devices
    counters = psutil.disk_io_counters(perdisk=True)
    for (device,), reads in families["node_disk_reads_completed_total"].samples:
        assert 0 <= counters[device].read_count - reads < 100_000, device
