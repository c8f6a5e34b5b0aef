"""
The valid half of the kernel text parsers' fuzzing: files generated in the kernel's own format (field widths, the
escapes ``fs/proc_namespace.c`` applies to mount points, the optional columns older kernels leave out) parse back to
exactly the values written. Together with ``test_fuzz_kernel_text.py`` this pins both sides: hostile input cannot
crash a parser, and valid input cannot be misread by a fix made for hostile input.
"""

from __future__ import annotations

import os
import shlex
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nodeagent.collectors.conntrack import ConntrackStat, parse_conntrack_stat, parse_count
from nodeagent.collectors.diskstats import DiskStat, UdevInfo, parse_diskstats, parse_udev_data
from nodeagent.collectors.filefd import FileNr, parse_file_nr
from nodeagent.collectors.filesystem import Mount, parse_mountinfo
from nodeagent.collectors.infiniband import parse_counter, parse_rate, parse_state
from nodeagent.collectors.loadavg import LoadAvg, parse_loadavg
from nodeagent.collectors.meminfo import Meminfo, parse_meminfo
from nodeagent.collectors.netstat import NetStat, parse_netstat, parse_snmp6
from nodeagent.collectors.osrelease import _INFO_LABELS, OsRelease, parse_os_release
from nodeagent.collectors.pressure import Pressure, parse_pressure
from nodeagent.collectors.procstat import ProcStat, parse_proc_stat
from nodeagent.collectors.sockstat import Sockstat, parse_sockstat
from nodeagent.collectors.textfile import parse_textfile
from nodeagent.collectors.timecollector import ClockSource, parse_clocksource
from nodeagent.collectors.uname import parse_uname
from nodeagent.collectors.vmstat import VmStat, parse_vmstat
from nodeagent.sources.cgroupfs import parse_proc_cgroup
from tests.fuzz.support import Cases, budget

U64 = st.integers(0, 2**64 - 1)
S64 = st.integers(-(2**63), 2**63 - 1)
U32 = st.integers(0, 2**32 - 1)
# Text a field can hold: no control characters and no line or paragraph separators (the kernel never prints those
# inside these fields, and a file's lines end at "\n").
FIELD_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=16)


LOWER = "abcdefghijklmnopqrstuvwxyz"
UPPER = LOWER.upper()
DIGITS = "0123456789"


def _ident(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    """A name: one character of ``first``, then up to ``max_size`` of ``rest`` (cheaper to draw than a regex)."""
    return st.builds(lambda a, b: a + b, st.sampled_from(first), st.text(rest, max_size=max_size))


def _unique(elements: st.SearchStrategy[Any], key: Any, max_size: int = 6) -> st.SearchStrategy[list[Any]]:
    return st.lists(elements, max_size=max_size, unique_by=key)


# --- /proc/stat ---------------------------------------------------------------------------------------------------

SCALAR_LINES = {
    "btime": "boot_time",
    "ctxt": "context_switches",
    "processes": "forks",
    "intr": "interrupts",
    "procs_running": "procs_running",
    "procs_blocked": "procs_blocked",
}


@st.composite
def proc_stat_files(draw: st.DrawFn) -> tuple[str, ProcStat]:
    columns = draw(st.integers(4, 10))  # kernels before 2.6.33 print fewer than 10
    cpus = [
        (str(n), tuple(draw(st.lists(U64, min_size=columns, max_size=columns)))) for n in range(draw(st.integers(0, 4)))
    ]
    scalars = {key: draw(st.none() | U64) for key in SCALAR_LINES}
    lines = ["cpu  " + " ".join("1" for _ in range(columns))]
    lines += [f"cpu{n} " + " ".join(map(str, ticks)) for n, ticks in cpus]
    for key, value in scalars.items():
        if value is not None:
            lines.append(f"{key} {value}" + (" 0 17 0 3" if key == "intr" else ""))
    lines.append("softirq 1 2 3")
    expected = ProcStat(
        cpus=tuple((n, ticks + (0,) * (10 - columns)) for n, ticks in cpus),
        **{field: scalars[key] for key, field in SCALAR_LINES.items()},
    )
    return "\n".join(lines) + "\n", expected


@budget(100)
@given(proc_stat_files())
def test_procstat_roundtrip(cases: Cases, file: tuple[str, ProcStat]) -> None:
    """Per-CPU ticks (missing trailing columns read as 0) and every scalar line, absent ones as None."""
    text, expected = file
    assert expected == cases.call("procstat", parse_proc_stat, text).value


# --- meminfo, vmstat, loadavg, file-nr ------------------------------------------------------------------------------


@budget(100)
@given(
    _unique(
        st.tuples(
            st.builds(
                lambda a, b: a + b,
                _ident(LOWER + UPPER, LOWER + UPPER + DIGITS + "_", 12),
                st.sampled_from(("", "(anon)", "(file)")),
            ),
            U64,
            st.booleans(),
        ),
        lambda f: f[0],
    )
)
def test_meminfo_roundtrip(cases: Cases, fields: list[tuple[str, int, bool]]) -> None:
    """Fields in kB become bytes, unit-less counts stay, names with parentheses kept, in file order."""
    text = "".join(f"{name}:{' ' * 8}{value}{' kB' if kb else ''}\n" for name, value, kb in fields)
    expected = Meminfo(tuple((name, value * 1024 if kb else value, kb) for name, value, kb in fields))
    assert expected == cases.call("meminfo", parse_meminfo, text).value


@budget(100)
@given(st.lists(st.tuples(_ident(LOWER + "_", LOWER + DIGITS + "_", 20), S64), max_size=8))
def test_vmstat_roundtrip(cases: Cases, fields: list[tuple[str, int]]) -> None:
    """Every ``name value`` pair, negative values (per-CPU drift) included."""
    text = "".join(f"{name} {value}\n" for name, value in fields)
    assert VmStat(tuple(fields)) == cases.call("vmstat", parse_vmstat, text).value


@budget(100)
@given(st.lists(st.integers(0, 99999), min_size=3, max_size=3), st.integers(1, 9999), st.integers(1, 4194304))
def test_loadavg_roundtrip(cases: Cases, hundredths: list[int], running: int, last_pid: int) -> None:
    """The three averages as printed with two decimals."""
    printed = [f"{h // 100}.{h % 100:02d}" for h in hundredths]
    text = f"{' '.join(printed)} {running}/{running + 100} {last_pid}\n"
    assert LoadAvg(*map(float, printed)) == cases.call("loadavg", parse_loadavg, text).value


@budget(100)
@given(U64, U64)
def test_file_nr_roundtrip(cases: Cases, allocated: int, maximum: int) -> None:
    """Allocated and maximum handles, tab-separated, up to u64."""
    assert FileNr(allocated, maximum) == cases.call("file_nr", parse_file_nr, f"{allocated}\t0\t{maximum}\n").value


# --- diskstats and the udev database -------------------------------------------------------------------------------


@st.composite
def diskstats_files(draw: st.DrawFn) -> tuple[str, tuple[DiskStat, ...]]:
    disks = []
    for major, minor, name in draw(_unique(st.tuples(U32, U32, _ident(LOWER, LOWER + DIGITS, 9)), lambda d: d[2])):
        columns = draw(st.sampled_from((4, 11, 15, 17, 20)))  # 2.6 partitions, <4.18, 4.18+, 5.5+, a newer kernel
        disks.append((major, minor, name, draw(st.lists(U64, min_size=columns, max_size=columns))))
    text = "".join(f"{ma:4d} {mi:7d} {name} {' '.join(map(str, stats))}\n" for ma, mi, name, stats in disks)
    return text, tuple(DiskStat(str(ma), str(mi), name, tuple(stats[:17])) for ma, mi, name, stats in disks)


@budget(100)
@given(diskstats_files())
def test_diskstats_roundtrip(cases: Cases, file: tuple[str, tuple[DiskStat, ...]]) -> None:
    """Device numbers, names and the first 17 stat columns of every kernel's layout."""
    text, expected = file
    assert expected == cases.call("diskstats", parse_diskstats, text).value


UDEV_KEYS = ("ID_PATH", "ID_WWN", "ID_MODEL", "SCSI_IDENT_SERIAL", "ID_SERIAL_SHORT", "ID_SERIAL", "ID_REVISION")


@budget(100)
@given(st.dictionaries(st.sampled_from((*UDEV_KEYS, "ID_BUS", "DEVTYPE")), FIELD_TEXT), st.booleans())
def test_udev_data_roundtrip(cases: Cases, props: dict[str, str], other_lines: bool) -> None:
    """``E:`` properties (values may hold ``=``), node_exporter's serial precedence, other record types skipped."""
    lines = ["S:disk/by-id/virtio-x", "I:1234567", "W:12", "G:systemd"] if other_lines else []
    lines += [f"E:{key}={value}" for key, value in props.items()]
    expected = UdevInfo(
        path=props.get("ID_PATH", ""),
        wwn=props.get("ID_WWN", ""),
        model=props.get("ID_MODEL", ""),
        serial=props.get("SCSI_IDENT_SERIAL") or props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL", ""),
        revision=props.get("ID_REVISION", ""),
    )
    assert expected == cases.call("udev_data", parse_udev_data, "\n".join(lines) + "\n").value


# --- /proc/net ------------------------------------------------------------------------------------------------------


@st.composite
def netstat_files(draw: st.DrawFn) -> tuple[str, NetStat]:
    lines, triples = [], []
    protocols = draw(_unique(_ident(UPPER, LOWER + UPPER, 7), lambda p: p, 4))
    for protocol in protocols:
        fields = draw(_unique(st.tuples(_ident(LOWER + UPPER, LOWER + UPPER + DIGITS, 15), S64), lambda f: f[0], 8))
        lines.append(f"{protocol}: " + " ".join(name for name, _ in fields))
        lines.append(f"{protocol}: " + " ".join(str(value) for _, value in fields))
        triples += [(protocol, name, value) for name, value in fields]
    return "\n".join(lines) + "\n", NetStat(tuple(triples))


@budget(60)
@given(netstat_files())
def test_netstat_roundtrip(cases: Cases, file: tuple[str, NetStat]) -> None:
    """Header and value lines per protocol give (protocol, field, value) in order."""
    text, expected = file
    assert expected == cases.call("netstat", parse_netstat, text).value


@budget(100)
@given(
    st.lists(
        st.tuples(st.sampled_from(("Ip6", "Icmp6", "Udp6", "UdpLite6", "")), _ident(UPPER, LOWER + UPPER, 15), S64),
        max_size=8,
    )
)
def test_snmp6_roundtrip(cases: Cases, entries: list[tuple[str, str, int]]) -> None:
    """Names split after their first ``6``; names without one skipped."""
    text = "".join(f"{protocol + field:<32}\t{value}\n" for protocol, field, value in entries)
    # A name without a 6 has no protocol and is skipped, as node_exporter skips it.
    expected = NetStat(tuple((p, f, v) for p, f, v in entries if p))
    assert expected == cases.call("snmp6", parse_snmp6, text).value


@st.composite
def sockstat_files(draw: st.DrawFn) -> tuple[str, Sockstat]:
    used = draw(st.none() | U64)
    protocols = []
    for protocol in draw(_unique(_ident(UPPER, UPPER + DIGITS, 7), lambda p: p, 5)):
        protocols.append(
            (protocol, tuple(draw(st.lists(st.tuples(_ident(LOWER, LOWER, 7), U64), min_size=1, max_size=5))))
        )
    lines = [] if used is None else [f"sockets: used {used}"]
    lines += [f"{p}: " + " ".join(f"{k} {v}" for k, v in pairs) for p, pairs in protocols]
    return "\n".join(lines) + "\n", Sockstat(used, tuple(protocols))


@budget(100)
@given(sockstat_files())
def test_sockstat_roundtrip(cases: Cases, file: tuple[str, Sockstat]) -> None:
    """The ``sockets: used`` line and each protocol's key/value pairs."""
    text, expected = file
    assert expected == cases.call("sockstat", parse_sockstat, text).value


@st.composite
def conntrack_files(draw: st.DrawFn) -> tuple[str, ConntrackStat]:
    names = [
        "entries",
        *draw(_unique(_ident(LOWER + "_", LOWER + "_", 13), lambda n: n, 16).filter(lambda n: "entries" not in n)),
    ]
    rows = draw(st.lists(st.lists(U32, min_size=len(names), max_size=len(names)), max_size=4))
    text = " ".join(names) + "\n" + "".join(" ".join(f"{v:08x}" for v in row) + "\n" for row in rows)
    totals = [sum(column) for column in zip(*rows, strict=True)] if rows else [0] * len(names)
    return text, ConntrackStat(len(rows), tuple(zip(names, totals, strict=True)))


@budget(100)
@given(conntrack_files())
def test_conntrack_stat_roundtrip(cases: Cases, file: tuple[str, ConntrackStat]) -> None:
    """Hexadecimal per-CPU rows summed per column, matched by the header's names."""
    text, expected = file
    assert expected == cases.call("conntrack_stat", parse_conntrack_stat, text).value


@budget(50)
@given(U64)
def test_conntrack_count_roundtrip(cases: Cases, value: int) -> None:
    """One non-negative number, up to u64."""
    assert value == cases.call("conntrack_count", parse_count, f"{value}\n", "nf_conntrack_count").value


# --- PSI, os-release, mountinfo ---------------------------------------------------------------------------------------


@budget(100)
@given(U64, st.none() | U64, st.lists(st.integers(0, 10000), min_size=3, max_size=3))
def test_pressure_roundtrip(cases: Cases, some: int, full: int | None, avgs: list[int]) -> None:
    """The ``total=`` of the some line and of the full line where there is one."""
    averages = " ".join(f"avg{w}={a // 100}.{a % 100:02d}" for w, a in zip((10, 60, 300), avgs, strict=True))
    text = f"some {averages} total={some}\n" + ("" if full is None else f"full {averages} total={full}\n")
    assert Pressure(some, full) == cases.call("pressure", parse_pressure, text).value


# Values heavy in what quoting must protect: shell metacharacters, quotes, backslashes, blanks, comment signs.
OS_RELEASE_VALUES = st.text(
    st.sampled_from("$`\"\\' \t#;=a1é") | st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    max_size=16,
)


@budget(100)
@given(
    st.dictionaries(st.sampled_from(_INFO_LABELS), OS_RELEASE_VALUES),
    st.dictionaries(_ident(UPPER, UPPER + "_", 10).filter(lambda k: k.lower() not in _INFO_LABELS), FIELD_TEXT),
    st.booleans(),
)
def test_os_release_roundtrip(cases: Cases, known: dict[str, str], unknown: dict[str, str], double: bool) -> None:
    """Known keys in single or double quotes (shell metacharacters in the values), unknown keys and comments skipped."""

    def quote(value: str) -> str:
        if not double:
            return shlex.quote(value)
        # os-release(5)'s other quoting: double quotes, with \ before $ " \ and `.
        return '"' + "".join("\\" + c if c in '$"\\`' else c for c in value) + '"'

    lines = ["# comment", ""] + [f"{key.upper()}={quote(value)}" for key, value in {**unknown, **known}.items()]
    expected = OsRelease(**{label: known.get(label, "") for label in _INFO_LABELS})
    assert expected == cases.call("os_release", parse_os_release, "\n".join(lines) + "\n").value


def _mangle(path: str) -> str:
    """What fs/proc_namespace.c prints for a path: space, tab, newline and backslash as \\ooo octal, all else as is."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


# A path component: anything but "/" and NUL, including the characters the kernel escapes and the ones
# (line and paragraph separators, other control characters) it prints raw.
PATH_PART = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="/\x00"), max_size=8)


@st.composite
def mountinfo_files(draw: st.DrawFn) -> tuple[str, list[Mount]]:
    lines, mounts = [], []
    for n in range(draw(st.integers(0, 5))):
        major, minor = draw(U32), draw(U32)
        mountpoint = "/" + "/".join(draw(st.lists(PATH_PART.filter(bool), max_size=3)))
        device = draw(PATH_PART.filter(bool))
        fstype = draw(_ident(LOWER + DIGITS, LOWER + DIGITS + ".", 8))
        options = draw(st.lists(_ident(LOWER, LOWER + DIGITS + "=", 8), min_size=1, max_size=4))
        optional = draw(
            st.lists(st.sampled_from(("shared:1", "master:7", "propagate_from:2", "unbindable")), max_size=2)
        )
        head = [str(n + 20), "1", f"{major}:{minor}", "/", _mangle(mountpoint), ",".join(options), *optional]
        lines.append(" ".join((*head, "-", fstype, _mangle(device), "rw")))
        mounts.append(Mount(str(major), str(minor), mountpoint, frozenset(options), fstype, device))
    return "".join(line + "\n" for line in lines), mounts


@budget(60)
@given(mountinfo_files())
def test_mountinfo_roundtrip(cases: Cases, file: tuple[str, list[Mount]]) -> None:
    """Mount points with escaped and unescaped odd characters (a user's FUSE mount can have any) parse exactly."""
    text, expected = file
    assert expected == cases.call("mountinfo", parse_mountinfo, text).value


# --- sysfs: InfiniBand, clock sources; the domain name ---------------------------------------------------------------

IB_STATES = ("NOP", "DOWN", "INIT", "ARMED", "ACTIVE", "ACTIVE_DEFER")
IB_RATES_GBPS = ("2.5", "5", "10", "14", "20", "25", "40", "50", "56", "100", "200", "400", "800", "1.25")


@budget(100)
@given(st.integers(0, 5), st.sampled_from(IB_RATES_GBPS), st.none() | U64)
def test_infiniband_roundtrip(cases: Cases, state: int, rate: str, counter: int | None) -> None:
    """A port's state id, its rate in bytes per second, a counter or ``N/A (no PMA)``."""
    assert state == cases.call("ib_state", parse_state, f"{state}: {IB_STATES[state]}\n", "state").value
    # The number at float32 precision, as node_exporter reads it, times 10^9 / 8.
    expected_rate = int(struct.unpack("f", struct.pack("f", float(rate)))[0] * 125_000_000)
    assert expected_rate == cases.call("ib_rate", parse_rate, f"{rate} Gb/sec (4X HDR)\n", "rate").value
    text = "N/A (no PMA)\n" if counter is None else f"{counter}\n"
    assert counter == cases.call("ib_counter", parse_counter, text, "port_rcv_data").value


@budget(100)
@given(st.lists(_ident(LOWER, LOWER + DIGITS + "_-", 11), max_size=5), _ident(LOWER, LOWER + DIGITS + "_-", 11))
def test_clocksource_roundtrip(cases: Cases, available: list[str], current: str) -> None:
    """The available clock sources in order and the current one."""
    text = "".join(name + " " for name in available) + "\n"  # the kernel prints a space after each name
    value = cases.call("clocksource", parse_clocksource, "0", text, current + "\n").value
    assert ClockSource("0", tuple(available), current) == value


@budget(50)
@given(FIELD_TEXT)
def test_domainname_roundtrip(cases: Cases, domain: str) -> None:
    """The domain name without its newline, any printable text."""
    assert domain == cases.call("uname_domainname", parse_uname, os.uname(), domain + "\n").value.domainname


# --- /proc/<pid>/cgroup -----------------------------------------------------------------------------------------------

CGROUP_PATH = st.lists(
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="/"),
        min_size=1,
        max_size=8,
    ),
    max_size=3,
).map(lambda parts: "/" + "/".join(parts))


@budget(100)
@given(st.lists(CGROUP_PATH, min_size=5, max_size=5), st.none() | CGROUP_PATH)
def test_proc_cgroup_roundtrip(cases: Cases, paths: list[str], unified: str | None) -> None:
    """Each controller's line is found, co-mounted lists included; paths may hold ':' and any printable text."""
    lines = [
        f"5:pids:{paths[0]}",
        f"4:cpu,cpuacct:{paths[1]}",
        f"3:memory:{paths[2]}",
        f"2:net_cls,net_prio:{paths[3]}",
        f"1:name=systemd:{paths[4]}",
    ]
    if unified is not None:
        lines.append(f"0::{unified}")
    text = "\n".join(lines) + "\n"
    wanted = {"pids": 0, "cpu": 1, "cpuacct": 1, "memory": 2, "net_prio": 3, "name=systemd": 4}
    for controller, index in wanted.items():
        assert paths[index] == cases.call("proc_cgroup", parse_proc_cgroup, text, controller).value
    assert unified == cases.call("proc_cgroup", parse_proc_cgroup, text, "").value
    assert cases.call("proc_cgroup", parse_proc_cgroup, text, "rdma").value is None


# --- textfile -------------------------------------------------------------------------------------------------------

SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created", "_info", "_gcount", "_gsum")
METRIC_NAME = _ident(LOWER + UPPER + "_", LOWER + UPPER + DIGITS + "_", 10).filter(lambda n: not n.endswith(SUFFIXES))
LABEL_NAME = _ident(LOWER + UPPER, LOWER + UPPER + DIGITS + "_", 6)
LABEL_VALUE = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=10)
VALUE = st.floats(allow_nan=False)


def _exposition_value(value: float) -> str:
    return {float("inf"): "+Inf", float("-inf"): "-Inf"}.get(value, repr(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def textfiles(draw: st.DrawFn) -> tuple[str, dict[str, tuple[str, list[tuple[dict[str, str], float]]]]]:
    lines: list[str] = []
    expected: dict[str, tuple[str, list[tuple[dict[str, str], float]]]] = {}
    for name in draw(_unique(METRIC_NAME, lambda n: n, 4)):
        if draw(st.booleans()):
            value = draw(VALUE.filter(lambda v: v >= 0))
            lines += [f"# TYPE {name}_total counter", f"{name}_total {_exposition_value(value)}"]
            expected[name + "_total"] = ("counter", [({}, value)])
            continue
        lines += [f"# HELP {name} Help of {name}.", f"# TYPE {name} gauge"]
        labelnames = draw(_unique(LABEL_NAME, lambda n: n, 3))
        samples = []
        for values in draw(
            _unique(st.lists(LABEL_VALUE, min_size=len(labelnames), max_size=len(labelnames)), tuple, 3)
        ):
            labels = dict(zip(labelnames, values, strict=True))
            value = draw(VALUE)
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(
                f"{name}{{{body}}} {_exposition_value(value)}" if body else f"{name} {_exposition_value(value)}"
            )
            samples.append((labels, value))
        if samples:
            expected[name] = ("gauge", samples)
    return "".join(line + "\n" for line in lines), expected


@budget(100)
@given(textfiles())
def test_textfile_roundtrip(cases: Cases, file: tuple[str, dict[str, Any]]) -> None:
    """Label values with escapes and any Unicode, infinities and signed zeros come back as written."""
    text, expected = file
    families = cases.call("textfile", parse_textfile, text, "/x.prom").value
    assert expected == {name: (f.type, f.samples) for name, f in families.items()}
