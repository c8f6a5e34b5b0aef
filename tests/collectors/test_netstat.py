"""The /proc/net/{netstat,snmp,snmp6} parsers, the netstat collector and its field pattern option."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pydantic
import pytest

from nodeagent.collector import NoDataError
from nodeagent.collectors import netstat
from nodeagent.collectors.netstat import NetStat, NetstatConfig, parse_netstat, parse_snmp6
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect, read_host

# Every key of the fixture that node_exporter 1.5's default pattern selects, with its value.
FIXTURE_DEFAULT_FIELDS = {
    "Icmp6_InErrors": 1.0,
    "Icmp6_InMsgs": 3.0,
    "Icmp6_OutMsgs": 13.0,
    "Icmp_InErrors": 0.0,
    "Icmp_InMsgs": 3.0,
    "Icmp_OutMsgs": 0.0,
    "Ip6_InOctets": 384.0,
    "Ip6_OutOctets": 1440.0,
    "IpExt_InOctets": 315110054.0,
    "IpExt_OutOctets": 70190622.0,
    "Ip_Forwarding": 2.0,
    "TcpExt_ListenDrops": 0.0,
    "TcpExt_ListenOverflows": 0.0,
    "TcpExt_SyncookiesFailed": 0.0,
    "TcpExt_SyncookiesRecv": 0.0,
    "TcpExt_SyncookiesSent": 0.0,
    "TcpExt_TCPSynRetrans": 0.0,
    "TcpExt_TCPTimeouts": 4.0,
    "Tcp_ActiveOpens": 17978.0,
    "Tcp_CurrEstab": 0.0,
    "Tcp_InErrs": 0.0,
    "Tcp_InSegs": 172747.0,
    "Tcp_OutRsts": 3234.0,
    "Tcp_OutSegs": 169955.0,
    "Tcp_PassiveOpens": 14754.0,
    "Tcp_RetransSegs": 0.0,
    "Udp6_InDatagrams": 0.0,
    "Udp6_InErrors": 0.0,
    "Udp6_NoPorts": 0.0,
    "Udp6_OutDatagrams": 0.0,
    "Udp6_RcvbufErrors": 0.0,
    "Udp6_SndbufErrors": 0.0,
    "UdpLite6_InErrors": 0.0,
    "UdpLite_InErrors": 0.0,
    "Udp_InDatagrams": 119.0,
    "Udp_InErrors": 0.0,
    "Udp_NoPorts": 0.0,
    "Udp_OutDatagrams": 122.0,
    "Udp_RcvbufErrors": 0.0,
    "Udp_SndbufErrors": 0.0,
}


def test_parse_netstat_pairs_of_lines() -> None:
    """Each header line names the fields of the value line after it; negative values (MaxConn) are kept."""
    text = textwrap.dedent(
        """\
        Ip: Forwarding DefaultTTL
        Ip: 1 64
        Tcp: RtoAlgorithm MaxConn ActiveOpens
        Tcp: 1 -1 17978
        """
    )
    expected = NetStat(
        (("Ip", "Forwarding", 1), ("Ip", "DefaultTTL", 64), ("Tcp", "RtoAlgorithm", 1), ("Tcp", "MaxConn", -1),
         ("Tcp", "ActiveOpens", 17978))
    )  # fmt: skip
    assert expected == parse_netstat(text)


def test_parse_netstat_64_bit_counter() -> None:
    """IpExt octet counters are 64-bit; they parse beyond 2**32 without loss."""
    assert NetStat((("IpExt", "InOctets", 2**63 - 1),)) == parse_netstat(f"IpExt: InOctets\nIpExt: {2**63 - 1}\n")


@pytest.mark.parametrize(
    ("text", "lineno", "reason"),
    [
        ("Ip: Forwarding\nIp: 1\nTcp: ActiveOpens\n", 3, "header 'Tcp:' without a value line"),
        ("Ip: Forwarding DefaultTTL\nIp: 1\n", 2, "1 values for 2 fields of 'Ip:'"),
        ("Ip: Forwarding\nTcp: 1\n", 2, "expected values for 'Ip:'"),
        ("Ip: Forwarding\nIp: yes\n", 2, "not an integer for Forwarding: 'yes'"),
        ("Forwarding DefaultTTL\n1 64\n", 1, "expected 'Protocol: Field ...'"),
    ],
)
def test_parse_netstat_malformed_names_file_and_line(text: str, lineno: int, reason: str) -> None:
    """Mismatched or malformed lines raise a ParseError naming the source and the line number."""
    with pytest.raises(ParseError, match=rf"^/proc/net/snmp: line {lineno}: {re.escape(reason)}"):
        parse_netstat(text, "/proc/net/snmp")


def test_parse_snmp6_splits_protocol_at_first_six() -> None:
    """The protocol is the name up to its first '6'; a name without one is skipped, as node_exporter does."""
    text = "Ip6InOctets                     \t384\nIcmp6OutType133 \t2\nUdpLite6InErrors 0\nOdd 5\n\n"
    expected = NetStat((("Ip6", "InOctets", 384), ("Icmp6", "OutType133", 2), ("UdpLite6", "InErrors", 0)))
    assert expected == parse_snmp6(text)


@pytest.mark.parametrize(
    ("line", "reason"), [("Ip6InOctets", "expected 'name value'"), ("Ip6InOctets x", "not an integer")]
)
def test_parse_snmp6_malformed_names_file_and_line(line: str, reason: str) -> None:
    """A line that is not ``name value`` raises a ParseError naming the source, line number and line."""
    with pytest.raises(ParseError, match=rf"^/proc/net/snmp6: line 2: {reason}.*{re.escape(repr(line))}"):
        parse_snmp6(f"Ip6InReceives 3\n{line}\n")


def test_config_rejects_invalid_regex() -> None:
    """An invalid pattern is rejected by the config model, naming the key."""
    with pytest.raises(pydantic.ValidationError, match=r"fields\n.*not a valid regular expression"):
        NetstatConfig(fields="(Tcp")


async def test_collect_fixture_default_fields(fixture_paths: HostPaths, collect: Collect) -> None:
    """With node_exporter 1.5's default pattern exactly its fields are exported, as untyped, from all three files."""
    families = await collect(netstat.SPEC, fixture_paths)
    assert {f"node_netstat_{k}": v for k, v in FIXTURE_DEFAULT_FIELDS.items()} == {
        name: f.samples[0][1] for name, f in families.items()
    }
    retrans = families["node_netstat_Tcp_RetransSegs"]
    assert ("untyped", "Statistic TcpRetransSegs.", ()) == (retrans.type, retrans.help, retrans.labelnames)
    assert "Statistic Ip6InOctets." == families["node_netstat_Ip6_InOctets"].help


async def test_collect_fixture_custom_fields(fixture_paths: HostPaths, collect: Collect) -> None:
    """A configured pattern replaces the default one and is searched, not anchored."""
    families = await collect(netstat.SPEC, fixture_paths, fields="MaxConn|TCPOFOQueue$|OutType135")
    assert {
        "node_netstat_Tcp_MaxConn": -1.0,
        "node_netstat_TcpExt_TCPOFOQueue": 0.0,
        "node_netstat_Icmp6_OutType135": 6.0,
    } == {name: f.samples[0][1] for name, f in families.items()}


async def test_snmp6_absent_is_skipped(tmp_path: Path, collect: Collect) -> None:
    """Without snmp6 (IPv6 disabled) the IPv4 files are still exported."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "snmp").write_text("Tcp: ActiveOpens InErrs\nTcp: 5 1\n")
    (tmp_path / "net" / "netstat").write_text("TcpExt: TCPTimeouts\nTcpExt: 2\n")
    families = await collect(netstat.SPEC, HostPaths(procfs=str(tmp_path)))
    expected = {
        "node_netstat_Tcp_ActiveOpens": 5.0,
        "node_netstat_Tcp_InErrs": 1.0,
        "node_netstat_TcpExt_TCPTimeouts": 2.0,
    }
    assert expected == {name: f.samples[0][1] for name, f in families.items()}


async def test_absent_net_is_no_data(empty_paths: HostPaths, collect: Collect) -> None:
    """A procfs root without any of the files is "no data" with a hint, not a failure."""
    with pytest.raises(NoDataError) as info:
        await collect(netstat.SPEC, empty_paths)
    assert "net/snmp does not exist" in info.value.reason
    assert "CONFIG_NET" in info.value.hint


async def test_malformed_snmp_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read and the line."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "snmp").write_text("Tcp: ActiveOpens InErrs\nTcp: 5\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/net/snmp: line 2: 1 values for 2 fields of 'Tcp:'"):
        await collect(netstat.SPEC, HostPaths(procfs=str(tmp_path)))


async def test_live_matches_fresh_read(live_paths: HostPaths, collect: Collect) -> None:
    """On this host every default field is present and no counter is ahead of a fresh read."""
    families = await collect(netstat.SPEC, live_paths)
    fresh = {f"{p}_{f}": float(v) for p, f, v in parse_netstat(read_host("/proc/net/snmp")).fields}
    assert set(FIXTURE_DEFAULT_FIELDS) <= {name.removeprefix("node_netstat_") for name in families}
    assert fresh["Ip_Forwarding"] == families["node_netstat_Ip_Forwarding"].samples[0][1]
    for key in ("Tcp_InSegs", "Tcp_OutSegs", "Udp_InDatagrams"):
        assert 0 <= fresh[key] - families[f"node_netstat_{key}"].samples[0][1] < 10_000_000, key
