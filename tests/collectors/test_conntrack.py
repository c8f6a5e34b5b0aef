"""The conntrack parsers and the conntrack collector."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from nodeagent.collector import NoDataError
from nodeagent.collectors import conntrack
from nodeagent.collectors.conntrack import ConntrackStat, parse_conntrack_stat, parse_count
from nodeagent.hostfs import HostPaths, ParseError
from tests.prereq import missing

from .conftest import Collect, host_has, read_host

# Linux 6.x header: "clashres" and "chainlength" replaced "searched" and "delete_list" at the same positions.
HEADER = (
    "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop "
    "icmp_error  expect_new expect_create expect_delete search_restart"
)

STAT_FAMILIES = (
    "node_nf_conntrack_stat_found",
    "node_nf_conntrack_stat_invalid",
    "node_nf_conntrack_stat_ignore",
    "node_nf_conntrack_stat_insert",
    "node_nf_conntrack_stat_insert_failed",
    "node_nf_conntrack_stat_drop",
    "node_nf_conntrack_stat_early_drop",
    "node_nf_conntrack_stat_search_restart",
)


def _write_tree(root: Path, count: str = "7\n", maximum: str = "65536\n", stat: str | None = None) -> HostPaths:
    netfilter = root / "sys" / "net" / "netfilter"
    netfilter.mkdir(parents=True)
    (netfilter / "nf_conntrack_count").write_text(count)
    (netfilter / "nf_conntrack_max").write_text(maximum)
    if stat is not None:
        (root / "net" / "stat").mkdir(parents=True)
        (root / "net" / "stat" / "nf_conntrack").write_text(stat)
    return HostPaths(procfs=str(root))


def test_parse_count() -> None:
    """A sysctl file holds one decimal number."""
    assert 262144 == parse_count("262144\n", "nf_conntrack_max")


def test_parse_count_malformed() -> None:
    """Anything else raises a ParseError naming the file and the content."""
    with pytest.raises(ParseError, match=r"^/x/nf_conntrack_count: line 1: expected a non-negative integer, got '-1'"):
        parse_count("-1\n", "/x/nf_conntrack_count")


def test_parse_stat_sums_hex_columns_over_cpus() -> None:
    """Each column is hexadecimal and is summed over the CPU rows, named by the header."""
    text = textwrap.dedent(
        f"""\
        {HEADER}
        00000032  00000001 0000000a 00000000 00000014 00000000 00000000 00000003 000000ff 00000001 00000002 00000000 00000000  00000000 00000000 00000000 00000010
        00000032  00000000 00000005 00000000 0000002c 00000000 00000000 00000000 00000101 00000000 00000000 00000001 00000004  00000000 00000000 00000000 00000001
        """  # noqa: E501 - the kernel's line
    )
    stat = parse_conntrack_stat(text)
    totals = dict(stat.totals)
    assert 2 == stat.cpus
    assert {"found": 15, "invalid": 64, "insert": 0x1FF + 1, "insert_failed": 1, "drop": 2, "early_drop": 1,
            "search_restart": 17, "icmp_error": 4, "entries": 100, "clashres": 1} == {
        k: totals[k] for k in ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "search_restart",
                               "icmp_error", "entries", "clashres")
    }  # fmt: skip
    assert tuple(HEADER.split()) == tuple(name for name, _ in stat.totals)


def test_parse_stat_header_only() -> None:
    """A header without CPU rows sums to zeros."""
    assert ConntrackStat(0, (("entries", 0), ("found", 0))) == parse_conntrack_stat("entries found\n")


@pytest.mark.parametrize(
    ("text", "lineno", "reason"),
    [
        ("", 1, "empty, expected a header naming the columns"),
        ("00000001 00000002\n", 1, "expected a header starting with 'entries'"),
        ("entries found\n00000001\n", 2, "1 columns, the header names 2"),
        ("entries found\n00000001 0000000g\n", 2, "not hexadecimal for found: '0000000g'"),
    ],
)
def test_parse_stat_malformed_names_file_and_line(text: str, lineno: int, reason: str) -> None:
    """A malformed file raises a ParseError naming the source and the line number."""
    with pytest.raises(ParseError, match=rf"^/proc/net/stat/nf_conntrack: line {lineno}: {re.escape(reason)}"):
        parse_conntrack_stat(text)


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """The fixture (captured in a network namespace after 64 invalid packets on 2 CPUs) gives node_exporter's gauges."""
    families = await collect(conntrack.SPEC, fixture_paths)
    expected = {
        "node_nf_conntrack_entries": 50.0,
        "node_nf_conntrack_entries_limit": 262144.0,
        **dict.fromkeys(STAT_FAMILIES, 0.0),
        "node_nf_conntrack_stat_invalid": float(0x14 + 0x2C),
    }
    assert expected == {name: f.samples[0][1] for name, f in families.items()}
    assert {"gauge"} == {f.type for f in families.values()}
    assert "Number of currently allocated flow entries for connection tracking." == (
        families["node_nf_conntrack_entries"].help
    )


async def test_collect_sums_statistics(tmp_path: Path, collect: Collect) -> None:
    """Every statistic is the sum of its column over CPUs."""
    row0 = "00000007  00000000 00000003 00000000 00000001 00000002 00000000 00000000 00000004 00000005 00000006 00000007 00000000  00000000 00000000 00000000 00000008"  # noqa: E501
    row1 = "00000007  00000000 00000010 00000000 00000010 00000010 00000000 00000000 00000010 00000010 00000010 00000010 00000000  00000000 00000000 00000000 00000010"  # noqa: E501
    paths = _write_tree(tmp_path, stat=f"{HEADER}\n{row0}\n{row1}\n")
    families = await collect(conntrack.SPEC, paths)
    assert [7.0, 65536.0, 19.0, 17.0, 18.0, 20.0, 21.0, 22.0, 23.0, 24.0] == [
        f.samples[0][1] for f in families.values()
    ]
    assert ("node_nf_conntrack_entries", "node_nf_conntrack_entries_limit", *STAT_FAMILIES) == tuple(families)


async def test_old_kernel_without_search_restart(tmp_path: Path, collect: Collect) -> None:
    """A kernel before 2.6.35 (16 columns, no search_restart) has every other statistic."""
    header = "entries searched found new invalid ignore delete delete_list insert insert_failed drop early_drop " \
             "error expect_new expect_create expect_delete"  # fmt: skip
    paths = _write_tree(tmp_path, stat=f"{header}\n" + " ".join(["00000001"] * 16) + "\n")
    families = await collect(conntrack.SPEC, paths)
    assert set(STAT_FAMILIES) - set(families) == {"node_nf_conntrack_stat_search_restart"}


async def test_without_statistics_file(tmp_path: Path, collect: Collect) -> None:
    """Without /proc/net/stat/nf_conntrack (no CONFIG_NF_CONNTRACK_PROCFS) entries and limit are still exported."""
    families = await collect(conntrack.SPEC, _write_tree(tmp_path))
    assert {"node_nf_conntrack_entries": 7.0, "node_nf_conntrack_entries_limit": 65536.0} == {
        name: f.samples[0][1] for name, f in families.items()
    }


async def test_module_not_loaded_is_no_data(empty_paths: HostPaths, collect: Collect) -> None:
    """Without nf_conntrack_count the module is not loaded: "no data" with a hint naming the module."""
    with pytest.raises(NoDataError) as info:
        await collect(conntrack.SPEC, empty_paths)
    assert info.value.reason.endswith("sys/net/netfilter/nf_conntrack_count does not exist")
    assert "modprobe nf_conntrack" in info.value.hint


async def test_malformed_stat_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read."""
    paths = _write_tree(tmp_path, stat="entries found\n1\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/net/stat/nf_conntrack: line 2: 1 columns"):
        await collect(conntrack.SPEC, paths)


async def test_live_matches_fresh_read(live_paths: HostPaths, collect: Collect) -> None:
    """On a host with conntrack loaded the limit equals a fresh read and all ten families are there."""
    if not host_has("/proc/sys/net/netfilter/nf_conntrack_max"):
        missing("nf_conntrack loaded (modprobe nf_conntrack)")
    families = await collect(conntrack.SPEC, live_paths)
    assert (
        float(read_host("/proc/sys/net/netfilter/nf_conntrack_max"))
        == (families["node_nf_conntrack_entries_limit"].samples[0][1])
    )
    assert {"node_nf_conntrack_entries", "node_nf_conntrack_entries_limit", *STAT_FAMILIES} == set(families)
