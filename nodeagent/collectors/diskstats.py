"""
Block device I/O statistics from ``/proc/diskstats`` and device identity from the udev database.

Families (node_exporter names, label ``device``): counters ``node_disk_reads_completed_total``,
``node_disk_reads_merged_total``, ``node_disk_read_bytes_total``, ``node_disk_read_time_seconds_total``,
``node_disk_writes_completed_total``, ``node_disk_writes_merged_total``, ``node_disk_written_bytes_total``,
``node_disk_write_time_seconds_total``, ``node_disk_io_time_seconds_total``,
``node_disk_io_time_weighted_seconds_total``; gauge ``node_disk_io_now``; where the kernel prints them (4.18+,
5.5+) ``node_disk_discards_completed_total``, ``node_disk_discards_merged_total``,
``node_disk_discarded_sectors_total``, ``node_disk_discard_time_seconds_total``,
``node_disk_flush_requests_total``, ``node_disk_flush_requests_time_seconds_total``; and
``node_disk_info{device,major,minor,path,wwn,model,serial,revision}`` (gauge, value 1) from
``/run/udev/data/b<major>:<minor>``. Shell equivalent: ``cat /proc/diskstats; cat /run/udev/data/b8:0``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, Regex
from nodeagent.hostfs import ParseError, kernel_int, read_text
from nodeagent.metrics import FamilyBuilder, LabelValues, MetricFamily, MetricType, gauge

#: node_exporter's ``--collector.diskstats.device-exclude`` default: partitions, RAM, loop and floppy devices.
DEFAULT_DEVICE_EXCLUDE = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"

# Each column is divided by its divisor: a division rounds once, so 5270 ms becomes the double nearest 5.27
# (multiplying by 0.001 would not), and dividing by 2^-9 is an exact multiplication by 512.
_SECTORS_TO_BYTES = 1 / 512  # diskstats sectors are 512 bytes (Documentation/admin-guide/iostats.rst)
_MS_TO_SECONDS = 1000.0

# The stat columns after "major minor name", in order: (family, type, help, divisor).
_COLUMNS: tuple[tuple[str, MetricType, str, float], ...] = (
    ("node_disk_reads_completed_total", "counter", "The total number of reads completed successfully.", 1.0),
    ("node_disk_reads_merged_total", "counter", "The total number of reads merged.", 1.0),
    ("node_disk_read_bytes_total", "counter", "The total number of bytes read successfully.", _SECTORS_TO_BYTES),
    ("node_disk_read_time_seconds_total", "counter", "The total number of seconds spent by all reads.", _MS_TO_SECONDS),
    (
        "node_disk_writes_completed_total",
        "counter",
        "The total number of writes completed successfully.",
        1.0,
    ),
    ("node_disk_writes_merged_total", "counter", "The number of writes merged.", 1.0),
    (
        "node_disk_written_bytes_total",
        "counter",
        "The total number of bytes written successfully.",
        _SECTORS_TO_BYTES,
    ),
    (
        "node_disk_write_time_seconds_total",
        "counter",
        "This is the total number of seconds spent by all writes.",
        _MS_TO_SECONDS,
    ),
    ("node_disk_io_now", "gauge", "The number of I/Os currently in progress.", 1.0),
    ("node_disk_io_time_seconds_total", "counter", "Total seconds spent doing I/Os.", _MS_TO_SECONDS),
    (
        "node_disk_io_time_weighted_seconds_total",
        "counter",
        "The weighted # of seconds spent doing I/Os.",
        _MS_TO_SECONDS,
    ),
    (
        "node_disk_discards_completed_total",
        "counter",
        "The total number of discards completed successfully.",
        1.0,
    ),
    ("node_disk_discards_merged_total", "counter", "The total number of discards merged.", 1.0),
    (
        "node_disk_discarded_sectors_total",
        "counter",
        "The total number of sectors discarded successfully.",
        1.0,
    ),
    (
        "node_disk_discard_time_seconds_total",
        "counter",
        "This is the total number of seconds spent by all discards.",
        _MS_TO_SECONDS,
    ),
    (
        "node_disk_flush_requests_total",
        "counter",
        "The total number of flush requests completed successfully.",
        1.0,
    ),
    (
        "node_disk_flush_requests_time_seconds_total",
        "counter",
        "This is the total number of seconds spent by all flush requests.",
        _MS_TO_SECONDS,
    ),
)
_NCOLUMNS = len(_COLUMNS)
_INFO_LABELS = ("device", "major", "minor", "path", "wwn", "model", "serial", "revision")
_INFO_HELP = "Info of /sys/block/<block_device>."
_FILTER_CACHE_MAX = 4096  # bounds the per-name filter cache on hosts that churn through device names


class DiskstatsConfig(CollectorConfig):
    """Options of the diskstats collector."""

    device_exclude: Regex = DEFAULT_DEVICE_EXCLUDE
    """Regular expression (searched, as Go's ``MatchString``) of device names not to report."""


@dataclass(frozen=True, slots=True)
class DiskStat:
    """One ``/proc/diskstats`` line: device numbers, name and its 4 to 17 stat columns as printed."""

    major: str
    minor: str
    device: str
    stats: tuple[int, ...]


def parse_diskstats(text: str, source: str = "/proc/diskstats") -> tuple[DiskStat, ...]:
    """
    Parse ``/proc/diskstats`` (``254 0 vda 30705 8859 1436050 ...``).

    Kernels print 11 stat columns (before 4.18), 15 (discards) or 17 (5.5+, flushes); columns beyond the
    17 known ones are ignored.

    Raises:
        ParseError: a line has fewer than 4 stat columns or a non-integer; the message names ``source``
            and the line.
    """
    disks: list[DiskStat] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 7:
            raise ParseError(f"{source}: line {lineno}: expected 'major minor name stats...': {line!r}")
        try:
            stats = tuple(map(kernel_int, parts[3 : 3 + _NCOLUMNS]))
        except ValueError:
            raise ParseError(f"{source}: line {lineno}: not an integer in {line!r}") from None
        if not (parts[0].isdigit() and parts[1].isdigit()):
            raise ParseError(f"{source}: line {lineno}: device numbers are not integers: {line!r}")
        disks.append(DiskStat(parts[0], parts[1], parts[2], stats))
    return tuple(disks)


@dataclass(frozen=True, slots=True)
class UdevInfo:
    """The udev properties ``node_disk_info`` reports; ``""`` where udev has none."""

    path: str = ""
    wwn: str = ""
    model: str = ""
    serial: str = ""
    revision: str = ""


def parse_udev_data(text: str) -> UdevInfo:
    """
    Parse a udev database file (``/run/udev/data/b<major>:<minor>``); only ``E:KEY=value`` lines matter.

    ``serial`` is SCSI_IDENT_SERIAL, else ID_SERIAL_SHORT, else ID_SERIAL (virtio disks), as node_exporter
    picks it.
    """
    props: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("E:"):
            key, eq, value = line[2:].partition("=")
            if eq:
                props[key] = value
    return UdevInfo(
        path=props.get("ID_PATH", ""),
        wwn=props.get("ID_WWN", ""),
        model=props.get("ID_MODEL", ""),
        serial=props.get("SCSI_IDENT_SERIAL") or props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL", ""),
        revision=props.get("ID_REVISION", ""),
    )


class DiskstatsCollector(BaseCollector):
    """Reads ``/proc/diskstats`` and each reported device's udev file each cycle."""

    def __init__(self, ctx: CollectorContext, cfg: DiskstatsConfig) -> None:
        self._path = ctx.paths.proc("diskstats")
        self._paths = ctx.paths
        self._exclude = re.compile(cfg.device_exclude)
        # device name -> its ("name",) label tuple, or None when excluded; the regex runs once per name.
        self._devices: dict[str, LabelValues | None] = {}

    def _labels_for(self, device: str) -> LabelValues | None:
        if len(self._devices) >= _FILTER_CACHE_MAX:
            self._devices.clear()
        labels = None if self._exclude.search(device) else (device,)
        self._devices[device] = labels
        return labels

    def _udev(self, major: str, minor: str) -> UdevInfo:
        try:
            return parse_udev_data(read_text(self._paths.root(f"/run/udev/data/b{major}:{minor}")))
        except FileNotFoundError:
            return UdevInfo()  # no udev (containers, minimal hosts): the info labels stay empty

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the I/O counters of every device the exclude pattern lets through, and their info."""
        disks = parse_diskstats(read_text(self._path), self._path)
        builders: list[FamilyBuilder] = [
            FamilyBuilder(name, kind, help_, ("device",)) for name, kind, help_, _ in _COLUMNS
        ]
        adds = [b.add for b in builders]
        divisors = [divisor for _, _, _, divisor in _COLUMNS]
        info = gauge("node_disk_info", _INFO_HELP, _INFO_LABELS)
        devices = self._devices
        for disk in disks:
            labels = devices[disk.device] if disk.device in devices else self._labels_for(disk.device)
            if labels is None:
                continue
            udev = self._udev(disk.major, disk.minor)
            info.add(
                (
                    disk.device,
                    disk.major,
                    disk.minor,
                    udev.path,
                    udev.wwn,
                    udev.model,
                    udev.serial,
                    udev.revision,
                ),
                1.0,
            )
            for i, value in enumerate(disk.stats):
                adds[i](labels, value / divisors[i])
        # A family the kernel does not print (discards before 4.18, flushes before 5.5) is left out entirely.
        return [family for b in (*builders, info) if (family := b.build()).samples]


SPEC = CollectorSpec(
    name="diskstats",
    description="Block device I/O statistics from /proc/diskstats and device identity from udev.",
    config_model=DiskstatsConfig,
    factory=DiskstatsCollector,
)
