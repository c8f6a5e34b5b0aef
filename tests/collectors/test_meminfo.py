"""The /proc/meminfo parser and the meminfo collector."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import psutil
import pytest

from nodeagent.collectors import meminfo
from nodeagent.collectors.meminfo import Meminfo, metric_suffix, parse_meminfo
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect, read_host


def test_parse_units_and_counts() -> None:
    """kB fields are converted to bytes and fields without a unit are kept as counts."""
    text = textwrap.dedent(
        """\
        MemTotal:       24683656 kB
        Active(anon):       1512 kB
        HugePages_Total:       4
        Hugepagesize:       2048 kB
        """
    )
    expected = Meminfo(
        (
            ("MemTotal", 24683656 * 1024, True),
            ("Active(anon)", 1512 * 1024, True),
            ("HugePages_Total", 4, False),
            ("Hugepagesize", 2048 * 1024, True),
        )
    )
    assert expected == parse_meminfo(text)


def test_metric_suffix_follows_node_exporter() -> None:
    """``Active(anon)`` becomes ``Active_anon_bytes`` and a count keeps its bare name."""
    expected = ["Active_anon_bytes", "Inactive_file_bytes", "MemTotal_bytes", "HugePages_Total"]
    actual = [
        metric_suffix("Active(anon)", True),
        metric_suffix("Inactive(file)", True),
        metric_suffix("MemTotal", True),
        metric_suffix("HugePages_Total", False),
    ]
    assert expected == actual


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("MemFree 12 kB", "expected 'Key: value \\[kB\\]'"),
        ("MemFree: 12 MB", "expected 'Key: value \\[kB\\]'"),
        ("MemFree: twelve kB", "not an integer"),
    ],
)
def test_parse_malformed_line_names_file_and_line(line: str, reason: str) -> None:
    """A line that is not ``Key: value [kB]`` raises a ParseError naming the source, line number and line."""
    with pytest.raises(ParseError, match=rf"^/proc/meminfo: line 2: {reason}.*{re.escape(repr(line))}"):
        parse_meminfo(f"MemTotal: 1 kB\n{line}\n")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """The fixture's 54 fields become 54 gauges with node_exporter's names, helps and byte values."""
    families = await collect(meminfo.SPEC, fixture_paths)
    assert 54 == len(families)
    picked = {
        name: (families[name].type, families[name].help, families[name].samples)
        for name in (
            "node_memory_MemTotal_bytes",
            "node_memory_Active_anon_bytes",
            "node_memory_HugePages_Total",
            "node_memory_VmallocTotal_bytes",
        )
    }
    expected = {
        "node_memory_MemTotal_bytes": (
            "gauge",
            "Memory information field MemTotal_bytes.",
            (((), 25276063744.0),),
        ),
        "node_memory_Active_anon_bytes": (
            "gauge",
            "Memory information field Active_anon_bytes.",
            (((), 1548288.0),),
        ),
        "node_memory_HugePages_Total": ("gauge", "Memory information field HugePages_Total.", (((), 0.0),)),
        "node_memory_VmallocTotal_bytes": (
            "gauge",
            "Memory information field VmallocTotal_bytes.",
            (((), 35184372087808.0),),
        ),
    }
    assert expected == picked


async def test_absent_meminfo_raises_file_not_found(empty_paths: HostPaths, collect: Collect) -> None:
    """A procfs root without ``meminfo`` raises FileNotFoundError (a broken root, not a missing feature)."""
    with pytest.raises(FileNotFoundError):
        await collect(meminfo.SPEC, empty_paths)


async def test_malformed_meminfo_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read and the offending line."""
    (tmp_path / "meminfo").write_text("MemTotal: 1 kB\nMemFree: lots kB\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/meminfo: line 2: .*'MemFree: lots kB'"):
        await collect(meminfo.SPEC, HostPaths(procfs=str(tmp_path)))


async def test_live_memtotal_matches_psutil(live_paths: HostPaths, collect: Collect) -> None:
    """On this host MemTotal equals psutil's total exactly and every field of a fresh read is reported."""
    families = await collect(meminfo.SPEC, live_paths)
    assert psutil.virtual_memory().total == families["node_memory_MemTotal_bytes"].samples[0][1]
    fresh = {line.split(":")[0] for line in read_host("/proc/meminfo").splitlines() if line.strip()}
    assert len(fresh) == len(families)
