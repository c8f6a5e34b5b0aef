"""The sockstat parser and the sockstat collector."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from nodeagent.collector import NoDataError
from nodeagent.collectors import sockstat
from nodeagent.collectors.sockstat import Sockstat, parse_sockstat
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect, read_host

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def test_parse_sockstat() -> None:
    """The sockets line gives ``used``; every other line is a protocol with its key/value pairs in order."""
    text = textwrap.dedent(
        """\
        sockets: used 9
        TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 79
        FRAG: inuse 0 memory 0
        """
    )
    expected = Sockstat(
        9,
        (
            ("TCP", (("inuse", 1), ("orphan", 0), ("tw", 0), ("alloc", 1), ("mem", 79))),
            ("FRAG", (("inuse", 0), ("memory", 0))),
        ),
    )
    assert expected == parse_sockstat(text)


def test_parse_sockstat6_has_no_used() -> None:
    """sockstat6 has no sockets line."""
    assert Sockstat(None, (("TCP6", (("inuse", 2),)),)) == parse_sockstat("TCP6: inuse 2\n", "/proc/net/sockstat6")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("TCP: inuse", "expected 'PROTO: key value ...'"),
        ("TCP: inuse 1 orphan", "expected 'PROTO: key value ...'"),
        ("TCP inuse 1", "expected 'PROTO: key value ...'"),
        ("TCP: inuse one", "not an integer for inuse: 'one'"),
        ("sockets: total 3", "sockets line without 'used'"),
    ],
)
def test_parse_malformed_names_file_and_line(line: str, reason: str) -> None:
    """A malformed line raises a ParseError naming the source and the line number."""
    with pytest.raises(ParseError, match=rf"^/proc/net/sockstat: line 2: {re.escape(reason)}"):
        parse_sockstat(f"UDP: inuse 0 mem 0\n{line}\n")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """Both files become node_exporter's gauges; mem is also exported in bytes (pages times the page size)."""
    families = await collect(sockstat.SPEC, fixture_paths)
    expected = {
        "node_sockstat_sockets_used": 9.0,
        "node_sockstat_TCP_inuse": 1.0,
        "node_sockstat_TCP_orphan": 0.0,
        "node_sockstat_TCP_tw": 0.0,
        "node_sockstat_TCP_alloc": 1.0,
        "node_sockstat_TCP_mem": 79.0,
        "node_sockstat_TCP_mem_bytes": 79.0 * PAGE_SIZE,
        "node_sockstat_UDP_inuse": 0.0,
        "node_sockstat_UDP_mem": 0.0,
        "node_sockstat_UDP_mem_bytes": 0.0,
        "node_sockstat_UDPLITE_inuse": 0.0,
        "node_sockstat_RAW_inuse": 0.0,
        "node_sockstat_FRAG_inuse": 0.0,
        "node_sockstat_FRAG_memory": 0.0,
        "node_sockstat_TCP6_inuse": 0.0,
        "node_sockstat_UDP6_inuse": 0.0,
        "node_sockstat_UDPLITE6_inuse": 0.0,
        "node_sockstat_RAW6_inuse": 0.0,
        "node_sockstat_FRAG6_inuse": 0.0,
        "node_sockstat_FRAG6_memory": 0.0,
    }
    assert expected == {name: f.samples[0][1] for name, f in families.items()}
    assert list(expected) == list(families)  # file order, IPv4 first
    tw = families["node_sockstat_TCP_tw"]
    assert ("gauge", "Number of TCP sockets in state tw.") == (tw.type, tw.help)
    assert "Number of IPv4 sockets in use." == families["node_sockstat_sockets_used"].help


async def test_sockstat6_sockets_line_is_ignored(tmp_path: Path, collect: Collect) -> None:
    """A sockets line in sockstat6 does not make a second sockets_used (node_exporter exports IPv4's only)."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "sockstat6").write_text("sockets: used 4\nTCP6: inuse 3\n")
    families = await collect(sockstat.SPEC, HostPaths(procfs=str(tmp_path)))
    assert {"node_sockstat_TCP6_inuse": 3.0} == {name: f.samples[0][1] for name, f in families.items()}


async def test_absent_files_are_no_data(empty_paths: HostPaths, collect: Collect) -> None:
    """Neither file: "no data" with a hint, not a failure."""
    with pytest.raises(NoDataError, match="sockstat6 exists"):
        await collect(sockstat.SPEC, empty_paths)


async def test_malformed_sockstat_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "sockstat").write_text("sockets: used 9\nTCP: inuse x\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/net/sockstat: line 2: not an integer for inuse: 'x'"):
        await collect(sockstat.SPEC, HostPaths(procfs=str(tmp_path)))


async def test_live_matches_fresh_read(live_paths: HostPaths, collect: Collect) -> None:
    """On this host every line of both files is exported, and the TCP alloc count is close to a fresh read."""
    families = await collect(sockstat.SPEC, live_paths)
    fresh = parse_sockstat(read_host("/proc/net/sockstat"))
    tcp = dict(dict(fresh.protocols)["TCP"])
    assert abs(tcp["alloc"] - families["node_sockstat_TCP_alloc"].samples[0][1]) < 100
    assert {"node_sockstat_sockets_used", "node_sockstat_TCP_mem_bytes", "node_sockstat_TCP6_inuse"} <= set(families)
