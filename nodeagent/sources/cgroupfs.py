"""
The cgroup filesystem: which hierarchies a host mounts (v2, v1 or hybrid) and the parsers for the
controller files nodeagent reads. Parsers are pure functions over bytes; formats are those of the kernel's
Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/*.rst.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from nodeagent.hostfs import ParseError

CgroupMode = Literal["v2", "v1", "hybrid"]

# v1 controllers whose files nodeagent reads, and the named systemd hierarchy as a last walk root.
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids", "name=systemd")
# The v1 hierarchy whose tree is walked for workloads (and whose /proc/<pid>/cgroup line names a pid's
# cgroup): the first of these that is mounted. runc, systemd and libvirt create the same path in each.
_V1_WALK_ORDER = ("cpuacct", "cpu", "memory", "pids", "name=systemd")


class NoCgroupsError(Exception):
    """No cgroup hierarchy is mounted under the configured root; the message names the root."""


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """
    The hierarchies under one cgroup root.

    ``v1`` maps each mounted v1 controller to its hierarchy directory (``cpu`` and ``cpuacct`` share one
    when co-mounted as ``cpu,cpuacct``); ``unified`` is the v2 hierarchy (the root itself on a v2 host,
    ``<root>/unified`` on a hybrid one) or ``None``.
    """

    root: str
    mode: CgroupMode
    unified: str | None
    v1: Mapping[str, str]

    @property
    def walk_controller(self) -> str:
        """The ``/proc/<pid>/cgroup`` controller field that names a workload: ``""`` for v2."""
        if self.mode == "v2":
            return ""
        return next(c for c in _V1_WALK_ORDER if c in self.v1)

    @property
    def walk_root(self) -> str:
        """The hierarchy directory walked to find workload cgroups."""
        if self.mode == "v2":
            assert self.unified is not None
            return self.unified
        return self.v1[self.walk_controller]


def discover_layout(root: str) -> CgroupLayout:
    """
    Find the hierarchies mounted under ``root`` (usually ``/sys/fs/cgroup``).

    A v2 host has ``cgroup.controllers`` in the root itself. Otherwise each directory below the root is a
    hierarchy: one with ``cgroup.controllers`` is the v2 one (``unified`` on systemd hybrid hosts); the
    others are v1, named by their controller list (``cpu,cpuacct``, ``memory``, ``systemd`` for
    ``name=systemd``), the convention of systemd, cgroupfs-mount and container runtimes. Symlinks such as
    ``cpu -> cpu,cpuacct`` are skipped; the directory they point at is listed under its own name.

    Raises:
        NoCgroupsError: ``root`` does not exist or holds no hierarchy nodeagent can read.
    """
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return CgroupLayout(root, "v2", root, {})
    unified: str | None = None
    v1: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        raise NoCgroupsError(f"{root} does not exist") from None
    except NotADirectoryError:
        raise NoCgroupsError(f"{root} is not a directory") from None
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue
        if os.path.exists(os.path.join(entry.path, "cgroup.controllers")):
            unified = unified or entry.path
            continue
        for name in entry.name.split(","):
            controller = "name=systemd" if name == "systemd" else name
            if controller in V1_CONTROLLERS:
                v1.setdefault(controller, entry.path)
    if not any(c in v1 for c in _V1_WALK_ORDER):
        if unified is not None:
            # Only a v2 mount below a non-v2 root (for example a container's /sys/fs/cgroup/unified).
            return CgroupLayout(root, "v2", unified, {})
        raise NoCgroupsError(f"{root} holds no cgroup hierarchy (no cgroup.controllers, no v1 controller dirs)")
    return CgroupLayout(root, "hybrid" if unified else "v1", unified, v1)


def parse_proc_cgroup(text: str, controller: str) -> str | None:
    """
    The cgroup path of ``controller`` in a ``/proc/<pid>/cgroup`` file, or ``None`` if it is not listed.

    Lines are ``hierarchy-id:controller-list:path``; ``controller`` ``""`` selects the v2 line (``0::/x``),
    ``name=systemd`` the named hierarchy. The path may itself contain ``:``.
    """
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers = parts[1]
        if (controller == "" and controllers == "" and parts[0] == "0") or (
            controller and controller in controllers.split(",")
        ):
            return parts[2]
    return None


# Kernel counters and limits are u64 (s64 for a few, such as a v1 quota of -1): anything beyond is corrupt
# and would overflow the float a sample holds.
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def _to_int(raw: bytes, source: str, key: bytes | None) -> int:
    """``raw`` as an integer in the range of a kernel value; errors name ``key`` (``None``: a one-value file)."""
    try:
        value = int(raw)
    except ValueError:
        if key is None:
            raise ParseError(f"{source}: expected one integer, got {raw[:40]!r}") from None
        raise ParseError(f"{source}: {key.decode('ascii', 'replace')} is not an integer: {raw[:40]!r}") from None
    if not _INT_MIN <= value <= _INT_MAX:
        what = "integer" if key is None else key.decode("ascii", "replace")
        raise ParseError(f"{source}: {what} is out of range: {raw[:40]!r}")
    return value


class FlatKeys(tuple[bytes, ...]):
    """
    The keys wanted from a flat-keyed file, with their search probes (``b"\\nkey "``) built once: the
    collector parses such files ~4 times per cgroup per cycle.
    """

    probes: tuple[bytes, ...]

    def __new__(cls, keys: Iterable[bytes]) -> FlatKeys:
        self = super().__new__(cls, keys)
        self.probes = tuple(b"\n" + k + b" " for k in self)
        return self


def flat_values(data: bytes, keys: Sequence[bytes], source: str) -> list[int | None]:
    """
    The values of ``keys`` in a flat-keyed file (``key value`` per line: ``cpu.stat``, ``memory.stat``,
    ``memory.events``, ``memory.oom_control``, ``cpuacct.stat``), in the order of ``keys``; ``None`` for a
    key that is absent.

    Only the wanted lines are looked at (``memory.stat`` has ~70 keys, nodeagent exports 5), each found by a
    search for the key at a line start, which costs far less than splitting the whole file.

    Raises:
        ParseError: a wanted key's value is not an integer; the message names ``source`` and the key.
    """
    probes = keys.probes if isinstance(keys, FlatKeys) else FlatKeys(keys).probes
    text = b"\n" + data
    out: list[int | None] = []
    append = out.append
    for probe in probes:
        i = text.find(probe)
        if i < 0:
            append(None)
            continue
        start = i + len(probe)
        end = text.find(b"\n", start)
        raw = text[start:end] if end >= 0 else text[start:]
        try:
            value = int(raw)
        except ValueError:
            value = _INT_MAX + 1  # reported below, with the key
        if not _INT_MIN <= value <= _INT_MAX:
            key = probe[1:-1].decode("ascii", "replace")
            what = "is not an integer" if not raw.strip().lstrip(b"-").isdigit() else "is out of range"
            raise ParseError(f"{source}: {key} {what}: {raw[:40]!r}")
        append(value)
    return out


def parse_flat_keyed(data: bytes, wanted: Iterable[bytes], source: str) -> dict[bytes, int]:
    """
    The ``wanted`` keys of a flat-keyed file that are present, as a dict (see ``flat_values``).

    Raises:
        ParseError: a wanted key's value is not an integer; the message names ``source`` and the key.
    """
    keys = tuple(wanted)
    return {k: v for k, v in zip(keys, flat_values(data, keys, source), strict=True) if v is not None}


def parse_int(data: bytes, source: str) -> int:
    """
    Parse a single-value file (``memory.current``, ``cpuacct.usage``, ``pids.current``).

    Raises:
        ParseError: the content is not one integer in the range of a kernel counter.
    """
    return _to_int(data, source, None)


def parse_limit(data: bytes, source: str) -> int | None:
    """
    Parse a limit file: ``max`` (v2 unlimited) and ``-1`` (v1 unlimited quota) give ``None``.

    Raises:
        ParseError: the content is neither ``max`` nor an integer.
    """
    text = data.strip()
    if text == b"max":
        return None
    value = parse_int(text, source)
    return None if value < 0 else value


def parse_cpu_max(data: bytes, source: str) -> tuple[int | None, int]:
    """
    Parse v2 ``cpu.max`` (``$MAX $PERIOD``; ``max 100000`` when unlimited) into (quota_us, period_us).

    Raises:
        ParseError: not two fields, or not integers.
    """
    fields = data.split()
    if len(fields) != 2:
        raise ParseError(f"{source}: expected '$MAX $PERIOD', got {data[:40]!r}")
    return parse_limit(fields[0], source), parse_int(fields[1], source)


def parse_psi_totals(data: bytes, source: str) -> tuple[int | None, int | None]:
    """
    Parse a cgroup ``*.pressure`` file into its ``some`` and ``full`` ``total=`` values (microseconds).

    Raises:
        ParseError: a line is not ``some|full ... total=N``.
    """
    # The kernel writes exactly "some ... total=N\nfull ... total=N\n": take that shape directly, and fall back
    # to the line-by-line parse (which names what is wrong) for anything else.
    if data[:5] == b"some ":
        i = data.find(b" total=")
        j = data.find(b"\n", i)
        k = data.find(b" total=", j)
        e = data.find(b"\n", k)
        if 0 < i < j < k < e == len(data) - 1 and data[j + 1 : j + 6] == b"full ":
            try:
                some, full = int(data[i + 7 : j]), int(data[k + 7 : e])
            except ValueError:
                pass
            else:
                if 0 <= some <= _INT_MAX and 0 <= full <= _INT_MAX:
                    return some, full
    return _parse_psi_lines(data, source)


def _parse_psi_lines(data: bytes, source: str) -> tuple[int | None, int | None]:
    some: int | None = None
    full: int | None = None
    for line in data.split(b"\n"):
        if not line:
            continue
        k = line.find(b" total=")
        kind = line[:5]
        if k < 0 or kind not in (b"some ", b"full "):
            raise ParseError(f"{source}: expected 'some|full avg10=... total=N', got {line[:60]!r}")
        value = _to_int(line[k + 7 :], source, b"total")
        if kind == b"some ":
            some = value
        else:
            full = value
    return some, full


IoTotals = dict[str, list[int]]  # "maj:min" -> [read bytes, write bytes, read ios, write ios]


def parse_io_stat(data: bytes, source: str) -> IoTotals:
    """
    Parse v2 ``io.stat`` (``8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`` per device).

    Raises:
        ParseError: a line does not start with ``maj:min`` or a known key's value is not an integer.
    """
    out: IoTotals = {}
    for line in data.splitlines():
        parts = line.split()
        if not parts:
            continue
        dev = parts[0]
        if not _is_majmin(dev):
            raise ParseError(f"{source}: expected 'MAJ:MIN key=value ...', got {line[:60]!r}")
        row = [0, 0, 0, 0]
        for kv in parts[1:]:
            key, _, value = kv.partition(b"=")
            idx = _IO_STAT_KEYS.get(key)
            if idx is not None:
                row[idx] = parse_int(value, source)
        out[dev.decode()] = row
    return out


def _is_majmin(dev: bytes) -> bool:
    major, colon, minor = dev.partition(b":")
    return bool(colon) and major.isdigit() and minor.isdigit()  # bytes.isdigit: ASCII only, so decode is safe


_IO_STAT_KEYS = {b"rbytes": 0, b"wbytes": 1, b"rios": 2, b"wios": 3}
_BLKIO_OPS = {b"Read": 0, b"Write": 1}


def parse_blkio(data: bytes, source: str, ios: bool) -> IoTotals:
    """
    Parse a v1 ``blkio.*io_service_bytes*`` (``ios=False``) or ``blkio.*io_serviced*`` (``ios=True``) file
    (``8:0 Read 4096`` per device and operation, a final ``Total N``) into the same rows as ``io.stat``.

    Raises:
        ParseError: a device line is not ``MAJ:MIN OP N`` or N is not an integer.
    """
    out: IoTotals = {}
    offset = 2 if ios else 0
    for line in data.splitlines():
        parts = line.split()
        if not parts or parts[0] == b"Total":
            continue
        if len(parts) != 3 or not _is_majmin(parts[0]):
            raise ParseError(f"{source}: expected 'MAJ:MIN Op N', got {line[:60]!r}")
        idx = _BLKIO_OPS.get(parts[1])
        if idx is None:
            continue
        row = out.setdefault(parts[0].decode(), [0, 0, 0, 0])
        row[offset + idx] = parse_int(parts[2], source)
    return out


def cpu_weight_to_shares(weight: int) -> int:
    """
    v2 ``cpu.weight`` (1..10000) back to v1 shares (2..262144): the inverse of the mapping runc and the
    kubelet use to set the weight from shares (cAdvisor's formula). The round trip is not exact: 512 shares
    become weight 20, which reads back as 500.
    """
    return 2 + ((weight - 1) * 262142) // 9999
