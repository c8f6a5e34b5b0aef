"""
nodeagent.sources.netlink: the pure parsers on netlink bytes captured from this kernel (tests/fixtures/netlink,
see its README.md), cross-checked with pyroute2's decoder, and the sockets against real network namespaces,
veth pairs and TCP sockets, compared with the kernel's own counters (sysfs, /proc/net/tcp, ss).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.hostfs import ParseError
from nodeagent.sources import netlink as nl
from nodeagent.sources.netlink import (
    LINK_STATS64_FIELDS,
    OPERSTATES,
    RTM_DELLINK,
    RTM_NEWLINK,
    TCP_STATES,
    DiagSocket,
    Link,
    LinkEvents,
    NetlinkError,
    RouteSocket,
    open_socket_in_netns,
    parse_diag_states,
    parse_link_events,
    parse_link_messages,
)
from tests.integration.netns_helpers import NetnsLab, list_netns, require_netns
from tests.prereq import require_binary

FIXTURES = Path(__file__).parent / "fixtures" / "netlink"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
NAMES: dict[str, str] = EXPECTED["names"]
IFF_UP, IFF_RUNNING, IFF_LOWER_UP, IFF_DORMANT = 0x1, 0x40, 0x10000, 0x20000
ETH_IP_UDP = 14 + 20 + 8  # bytes a veth counts per IPv4 UDP datagram beyond its payload
IP_UDP = 20 + 8  # lo counts no Ethernet header: loopback_xmit pulls it before counting


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def by_name(links: list[Link]) -> dict[str, Link]:
    return {link.name: link for link in links}


def attributes(message: bytes) -> list[int]:
    """Top-level attribute types of one RTM_NEWLINK message."""
    out, pos = [], 32
    while pos + 4 <= len(message):
        alen, atype = struct.unpack_from("=HH", message, pos)
        out.append(atype & 0x3FFF)
        pos += (alen + 3) & ~3
    return out


def messages(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        length = struct.unpack_from("=I", data, pos)[0]
        out.append(data[pos : pos + length])
        pos += (length + 3) & ~3
    return out


def link_message(*attrs: tuple[int, bytes], index: int = 7, mtype: int = RTM_NEWLINK, seq: int = 1) -> bytes:
    """An RTM_NEWLINK built by hand (for shapes the running kernel does not send)."""
    body = struct.pack("=BxHiII", 0, 1, index, IFF_UP, 0)
    for atype, payload in attrs:
        body += struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)
    return struct.pack("=IHHII", 16 + len(body), mtype, 2, seq, 0) + body


def done_message(seq: int = 1) -> bytes:
    return struct.pack("=IHHIIi", 20, nl.NLMSG_DONE, 2, seq, 0, 0)


# --- constants -------------------------------------------------------------------------------------------------


def test_stats_field_order_agrees_with_pyroute2() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    theirs = [name for name, _ in ifinfmsg.ifstats64.fields]
    assert len(theirs) == 23  # pyroute2 0.9 stops before rx_nohandler (Linux 4.6) and rx_otherhost_dropped (6.0)
    assert list(LINK_STATS64_FIELDS[:23]) == theirs
    assert LINK_STATS64_FIELDS[23:] == ("rx_nohandler", "rx_otherhost_dropped")
    assert [name for name, _ in ifinfmsg.ifstats.fields][:23] == theirs


def test_names() -> None:
    assert [OPERSTATES[i] for i in range(7)] == [
        "unknown",
        "notpresent",
        "down",
        "lowerlayerdown",
        "testing",
        "dormant",
        "up",
    ]
    assert TCP_STATES[1] == "established" and TCP_STATES[6] == "time_wait" and TCP_STATES[10] == "listen"
    assert sorted(TCP_STATES) == list(range(1, 12))


# --- link dump fixture --------------------------------------------------------------------------------------------


def test_link_dump_fixture_exact_values() -> None:
    links, done = parse_link_messages(fixture("links_dump.bin"))
    assert done is True
    assert [link.name for link in links] == ["lo", NAMES["va"], NAMES["vd"], NAMES["vc"]]
    got = by_name(links)
    lo, va, vc, vd = got["lo"], got[NAMES["va"]], got[NAMES["vc"]], got[NAMES["vd"]]
    # Exactly the traffic capture.py sent: 5 x 300-byte datagrams over lo, 20 x 1000 bytes out of va.
    assert (lo.stat("tx_packets"), lo.stat("tx_bytes"), lo.stat("rx_packets"), lo.stat("rx_bytes")) == (
        5,
        5 * (300 + IP_UDP),
        5,
        5 * (300 + IP_UDP),
    )
    assert (va.stat("tx_packets"), va.stat("tx_bytes"), va.stat("rx_packets"), va.stat("rx_bytes")) == (
        20,
        20 * (1000 + ETH_IP_UDP),
        0,
        0,
    )
    assert lo.stats64 and va.stats64 and len(va.stats) == len(LINK_STATS64_FIELDS)
    assert (lo.index, lo.mtu, lo.type, lo.kind, lo.iflink, lo.link_netnsid) == (1, 65536, 772, "", None, None)
    assert lo.flags == 0x1 | 0x8 | IFF_RUNNING | IFF_LOWER_UP
    assert OPERSTATES[lo.operstate] == "unknown"
    assert (va.kind, va.mtu, OPERSTATES[va.operstate], va.carrier, va.link_netnsid) == ("veth", 1500, "up", 1, 0)
    assert (vc.kind, vc.mtu, vc.alias, OPERSTATES[vc.operstate], vc.carrier) == (
        "veth",
        9000,
        "uplink to rack 7",
        "down",
        0,
    )
    assert (vc.iflink, vd.iflink) == (vd.index, vc.index)  # both ends in the same namespace: no IFLA_LINK_NETNSID
    assert (vc.link_netnsid, vd.link_netnsid) == (None, None)
    assert va.broadcast == "ff:ff:ff:ff:ff:ff"


def test_link_dump_fixture_matches_sysfs_of_the_same_moment() -> None:
    got = by_name(parse_link_messages(fixture("links_dump.bin"))[0])
    for want in EXPECTED["links"]:
        link = got[want["name"]]
        assert link.index == want["index"]
        assert link.mtu == want["mtu"]
        assert link.type == want["type"]
        assert link.txqlen == want["tx_queue_len"]
        assert link.address == want["address"]
        assert link.broadcast == want["broadcast"]
        assert link.alias == want["ifalias"]
        assert link.kind == want["kind"]
        assert link.link_netnsid == want["link_netnsid"]
        assert OPERSTATES[link.operstate] == want["operstate"]
        assert (link.carrier_changes, link.carrier_up, link.carrier_down) == (
            want["carrier_changes"],
            want["carrier_up_count"],
            want["carrier_down_count"],
        )
        # The kernel sends IFLA_LINK only where iflink differs from the index (not for lo).
        assert (link.iflink if link.iflink is not None else link.index) == want["iflink"]
        # sysfs shows dev->flags; netlink adds the operational bits (dev_get_flags).
        assert link.flags & ~(IFF_RUNNING | IFF_LOWER_UP | IFF_DORMANT) == want["flags"]
        sysfs = want["statistics"]
        assert {name: link.stat(name) for name in sysfs} == sysfs
        assert link.stat("rx_otherhost_dropped") == 0  # no sysfs file for it


def test_link_dump_fixture_agrees_with_pyroute2() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    data = fixture("links_dump.bin")
    ours = parse_link_messages(data)[0]
    theirs = []
    for message in messages(data):
        if struct.unpack_from("=H", message, 4)[0] == RTM_NEWLINK:
            msg = ifinfmsg(message)
            msg.decode()
            theirs.append(msg)
    assert len(theirs) == len(ours) == 4
    for link, msg in zip(ours, theirs, strict=True):
        assert link.name == msg.get_attr("IFLA_IFNAME")
        assert (link.index, link.flags, link.type) == (msg["index"], msg["flags"], msg["ifi_type"])
        assert link.mtu == msg.get_attr("IFLA_MTU")
        assert link.txqlen == msg.get_attr("IFLA_TXQLEN")
        assert link.address == msg.get_attr("IFLA_ADDRESS")
        assert link.alias == (msg.get_attr("IFLA_IFALIAS") or "")
        assert link.carrier == msg.get_attr("IFLA_CARRIER")
        assert link.carrier_changes == msg.get_attr("IFLA_CARRIER_CHANGES")
        assert link.iflink == msg.get_attr("IFLA_LINK")
        assert link.link_netnsid == msg.get_attr("IFLA_LINK_NETNSID")
        linkinfo = msg.get_attr("IFLA_LINKINFO")
        assert link.kind == ("" if linkinfo is None else linkinfo.get_attr("IFLA_INFO_KIND"))
        assert OPERSTATES[link.operstate] == msg.get_attr("IFLA_OPERSTATE").lower()
        stats = msg.get_attr("IFLA_STATS64")
        assert {name: link.stat(name) for name in stats} == dict(stats)


def test_stats32_fallback_fixture() -> None:
    data = fixture("links_dump_stats32.bin")
    for message in messages(data):
        if struct.unpack_from("=H", message, 4)[0] == RTM_NEWLINK:
            kinds = attributes(message)
            assert nl.IFLA_STATS64 not in kinds and nl.IFLA_STATS in kinds
    links, done = parse_link_messages(data)
    full = parse_link_messages(fixture("links_dump.bin"))[0]
    assert done is True
    assert [link.stats64 for link in links] == [False] * 4
    # struct rtnl_link_stats has no rx_otherhost_dropped: 24 u32 fields, then zero padding.
    assert [link.stats for link in links] == [link.stats for link in full]
    assert by_name(links)[NAMES["va"]].stat("tx_bytes") == 20 * (1000 + ETH_IP_UDP)

    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    for link, message in zip(
        links, [m for m in messages(data) if struct.unpack_from("=H", m, 4)[0] == RTM_NEWLINK], strict=True
    ):
        msg = ifinfmsg(message)
        msg.decode()
        assert msg.get_attr("IFLA_STATS64") is None
        assert {name: link.stat(name) for name in msg.get_attr("IFLA_STATS")} == dict(msg.get_attr("IFLA_STATS"))


def test_stats_of_other_kernel_lengths() -> None:
    older = struct.pack("=23Q", *range(1, 24))  # before rx_nohandler (Linux < 4.6)
    newer = struct.pack("=27Q", *range(1, 28))  # fields a future kernel appended
    links, done = parse_link_messages(
        link_message((nl.IFLA_IFNAME, b"a\0"), (nl.IFLA_STATS64, older))
        + link_message(
            (nl.IFLA_IFNAME, b"b\0"), (nl.IFLA_STATS64, newer), (nl.IFLA_STATS, struct.pack("=24I", *[9] * 24))
        )
        + done_message()
    )
    assert done is True
    assert links[0].stats == (*range(1, 24), 0, 0)
    assert links[1].stats == tuple(range(1, 26)) and links[1].stats64  # IFLA_STATS after it does not override
    with pytest.raises(ParseError, match=r"netlink message type 16 at offset 0: IFLA_STATS64 payload of 20 bytes"):
        parse_link_messages(link_message((nl.IFLA_STATS64, b"\0" * 20)))


def test_bridge_port_messages_are_skipped() -> None:
    bridge = bytearray(link_message((nl.IFLA_IFNAME, b"port0\0")))
    bridge[16] = socket.AF_BRIDGE
    assert parse_link_events(bytes(bridge) + link_message((nl.IFLA_IFNAME, b"eth0\0"))) == [
        (RTM_NEWLINK, parse_link_messages(link_message((nl.IFLA_IFNAME, b"eth0\0")))[0][0])
    ]


def test_link_without_optional_attributes() -> None:
    (link,), done = parse_link_messages(link_message((nl.IFLA_IFNAME, b"x\0"), index=3))
    assert done is False
    assert link == Link(
        index=3,
        name="x",
        flags=IFF_UP,
        type=1,
        mtu=0,
        operstate=0,
        carrier=None,
        carrier_changes=None,
        carrier_up=None,
        carrier_down=None,
        address="",
        broadcast="",
        alias="",
        kind="",
        txqlen=0,
        iflink=None,
        link_netnsid=None,
        stats=(0,) * len(LINK_STATS64_FIELDS),
        stats64=False,
    )
    (odd,), _ = parse_link_messages(link_message((nl.IFLA_IFNAME, b"caf\xe9\0")))
    assert odd.name == "caf\\xe9"


def test_events_fixture() -> None:
    events = parse_link_events(fixture("link_events.bin"))
    assert [(kind, link.name) for kind, link in events] == [
        (RTM_NEWLINK, NAMES["va"]),
        (RTM_DELLINK, NAMES["vc"]),
        (RTM_DELLINK, NAMES["vd"]),
    ]
    down = events[0][1]
    assert down.flags & IFF_UP == 0
    assert OPERSTATES[down.operstate] == "down"
    assert down.stat("tx_packets") == 20  # events carry the counters too
    # A dump parser ignores RTM_DELLINK.
    assert [link.name for link in parse_link_messages(fixture("link_events.bin"))[0]] == [NAMES["va"]]


# --- diag fixture -------------------------------------------------------------------------------------------------


def test_diag_fixture_counts() -> None:
    v4, done4 = parse_diag_states(fixture("diag_tcp4.bin"))
    v6, done6 = parse_diag_states(fixture("diag_tcp6.bin"))
    assert done4 and done6
    assert {s: n for s, n in enumerate(v4) if n} == {1: 6, 2: 1, 5: 1, 6: 1, 8: 1, 10: 2}
    assert {s: n for s, n in enumerate(v6) if n} == {1: 2, 10: 1}
    proc = EXPECTED["proc_net_tcp"]  # the same sockets as /proc/net/tcp{,6} listed them, from another code path
    assert {str(s): n for s, n in enumerate(v4) if n} == proc["tcp"]
    assert {str(s): n for s, n in enumerate(v6) if n} == proc["tcp6"]
    both = parse_diag_states(fixture("diag_tcp6.bin"), counts=list(v4))[0]
    assert both[1] == 8 and both[10] == 3


def test_diag_fixture_agrees_with_pyroute2() -> None:
    from pyroute2.netlink.diag import inet_diag_msg

    for name in ("diag_tcp4.bin", "diag_tcp6.bin"):
        data = fixture(name)
        states = []
        for message in messages(data):
            if struct.unpack_from("=H", message, 4)[0] == nl.SOCK_DIAG_BY_FAMILY:
                msg = inet_diag_msg(message)
                msg.decode()
                states.append(msg["idiag_state"])
        counts = parse_diag_states(data)[0]
        assert {s: n for s, n in enumerate(counts) if n} == {s: states.count(s) for s in set(states)}


# --- errors and malformed input -----------------------------------------------------------------------------------


def error_message(code: int, flags: int = 0, tlvs: bytes = b"", seq: int = 1) -> bytes:
    echoed = struct.pack("=IHHII", 32, nl.RTM_GETLINK, 0x301, seq, 0)
    body = struct.pack("=i", -code) + echoed + tlvs
    return struct.pack("=IHHII", 16 + len(body), nl.NLMSG_ERROR, flags, seq, 0) + body


def test_netlink_error() -> None:
    with pytest.raises(NetlinkError) as info:
        parse_link_messages(error_message(errno.EPERM))
    assert info.value.errno == errno.EPERM
    assert str(info.value) == "[Errno 1] netlink request failed: Operation not permitted"
    text = b"Unknown device type\0"
    tlv = struct.pack("=HH", 4 + len(text), nl.NLMSGERR_ATTR_MSG) + text + b"\0" * (-len(text) % 4)
    with pytest.raises(NetlinkError, match="Operation not supported: Unknown device type"):
        parse_diag_states(error_message(errno.EOPNOTSUPP, nl.NLM_F_CAPPED | nl.NLM_F_ACK_TLVS, tlv))
    assert parse_link_messages(error_message(0)) == ([], False)  # an ACK is not an error
    assert isinstance(NetlinkError(1, "x"), OSError)


def test_sequence_numbers_filter_stale_replies() -> None:
    data = fixture("links_dump.bin")  # captured with sequence number 7
    assert parse_link_messages(data, seq=8) == ([], False)
    assert len(parse_link_messages(data, seq=7)[0]) == 4
    assert parse_diag_states(fixture("diag_tcp4.bin"), seq=8)[0] == [0] * 256


@pytest.mark.parametrize("name", ["links_dump.bin", "links_dump_stats32.bin", "link_events.bin", "diag_tcp4.bin"])
def test_every_truncation_is_a_parse_error_or_a_prefix(name: str) -> None:
    data = fixture(name)
    parser = parse_diag_states if name.startswith("diag") else parse_link_messages
    boundaries = {0}
    for message in messages(data):
        boundaries.add(max(boundaries) + ((len(message) + 3) & ~3))
    for cut in range(len(data)):
        try:
            _, done = parser(data[:cut])
        except ParseError as exc:
            assert cut not in boundaries
            assert str(exc).startswith("netlink message type ")
        else:
            assert cut in boundaries and done is False


def test_corrupt_attribute_names_type_and_offset() -> None:
    data = bytearray(fixture("links_dump.bin"))
    second = (struct.unpack_from("=I", data, 0)[0] + 3) & ~3
    struct.pack_into("=H", data, second + 32, 2)  # first attribute of the second message: length 2
    with pytest.raises(
        ParseError,
        match=rf"^netlink message type 16 at offset {second}: attribute at offset {second + 32} has length 2",
    ):
        parse_link_messages(bytes(data))
    short_mtu = link_message((nl.IFLA_MTU, b"\1\0"))
    with pytest.raises(ParseError, match=r"attribute 4 at offset 32 has a 2-byte payload"):
        parse_link_messages(short_mtu)
    with pytest.raises(ParseError, match=r"shorter than nlmsghdr \+ ifinfomsg"):
        parse_link_messages(struct.pack("=IHHII", 20, RTM_NEWLINK, 0, 1, 0) + b"\0" * 4)
    with pytest.raises(ParseError, match=r"shorter than nlmsghdr \+ inet_diag_msg"):
        parse_diag_states(struct.pack("=IHHII", 20, nl.SOCK_DIAG_BY_FAMILY, 0, 1, 0) + b"\0" * 4)


def test_random_corruption_never_escapes_as_another_error() -> None:
    rng = random.Random(20261123)
    samples = [fixture("links_dump.bin"), fixture("link_events.bin"), fixture("diag_tcp4.bin")]
    for _ in range(3000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        for parser in (parse_link_messages, parse_diag_states, parse_link_events):
            # Only these two may come out; an IndexError or struct.error would fail the test.
            with contextlib.suppress(ParseError, NetlinkError):
                parser(bytes(data))


# --- real namespaces (root) ---------------------------------------------------------------------------------------


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    require_netns()
    with NetnsLab() as lab:
        yield lab


def connected_pair(a_ns: str, b_ns: str, lab: NetnsLab) -> tuple[str, str]:
    """veth a0 (10.211.0.1 in a_ns) <-> b0 (10.211.0.2 in b_ns), static neighbours: no ARP to count."""
    a0, b0 = lab.veth("a0", a_ns, "b0", b_ns)
    lab.addr(a_ns, a0, "10.211.0.1/24")
    lab.addr(b_ns, b0, "10.211.0.2/24")
    lab.neigh(a_ns, a0, "10.211.0.2", lab.mac(b_ns, b0))
    lab.neigh(b_ns, b0, "10.211.0.1", lab.mac(a_ns, a0))
    return a0, b0


def current_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


@pytest.mark.root
@pytest.mark.integration
def test_route_socket_in_netns_sees_only_its_links(lab: NetnsLab) -> None:
    a, b = lab.netns("a"), lab.netns("b")
    a0, b0 = lab.veth("a0", a, "b0", b)
    before = current_netns()
    with RouteSocket(lab.path(a)) as rs:
        assert current_netns() == before  # the caller's thread never moved
        inside = rs.dump_links()
    assert sorted(link.name for link in inside) == sorted(["lo", a0])
    assert by_name(inside)[a0].index == int(lab.sysfs(a, a0, "ifindex"))
    assert by_name(inside)[a0].iflink == int(lab.sysfs(b, b0, "ifindex"))
    with RouteSocket() as host:
        names = {link.name for link in host.dump_links()}
    assert names == set(os.listdir("/sys/class/net"))
    assert a0 not in names and b0 not in names


@pytest.mark.integration
def test_host_dump_matches_sysfs() -> None:
    with RouteSocket() as rs:
        links = rs.dump_links()
    for link in links:
        base = f"/sys/class/net/{link.name}"
        assert link.index == int(Path(base, "ifindex").read_text())
        assert link.mtu == int(Path(base, "mtu").read_text())
        assert link.address == Path(base, "address").read_text().strip()
        assert OPERSTATES[link.operstate] == Path(base, "operstate").read_text().strip()
        assert link.stats64


@pytest.mark.root
@pytest.mark.integration
def test_counters_equal_the_kernels_after_known_traffic(lab: NetnsLab) -> None:
    a, b = lab.netns("a"), lab.netns("b")
    a0, b0 = connected_pair(a, b, lab)
    count, size = 50, 1200
    with RouteSocket(lab.path(a)) as ra, RouteSocket(lab.path(b)) as rb:
        before_a, before_b = by_name(ra.dump_links())[a0], by_name(rb.dump_links())[b0]
        rx = open_socket_in_netns(lab.path(b), socket.AF_INET, socket.SOCK_DGRAM)
        tx = open_socket_in_netns(lab.path(a), socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            rx.bind(("10.211.0.2", 9999))
            rx.settimeout(5)
            for _ in range(count):
                tx.sendto(b"\xa5" * size, ("10.211.0.2", 9999))
            for _ in range(count):
                assert len(rx.recv(65536)) == size
        after_a, after_b = by_name(ra.dump_links())[a0], by_name(rb.dump_links())[b0]
        sysfs_a, sysfs_b = lab.sysfs_stats(a, a0), lab.sysfs_stats(b, b0)
        assert by_name(ra.dump_links())[a0].stats == after_a.stats  # quiescent: nothing else moved
    assert {name: after_a.stat(name) for name in sysfs_a} == sysfs_a
    assert {name: after_b.stat(name) for name in sysfs_b} == sysfs_b
    wire = count * (size + ETH_IP_UDP)
    assert after_a.stat("tx_packets") - before_a.stat("tx_packets") == count
    assert after_a.stat("tx_bytes") - before_a.stat("tx_bytes") == wire
    assert after_b.stat("rx_packets") - before_b.stat("rx_packets") == count
    assert after_b.stat("rx_bytes") - before_b.stat("rx_bytes") == wire
    assert after_a.stat("rx_packets") == before_a.stat("rx_packets")


SS_STATES = {
    "ESTAB": "established",
    "SYN-SENT": "syn_sent",
    "SYN-RECV": "syn_recv",
    "FIN-WAIT-1": "fin_wait1",
    "FIN-WAIT-2": "fin_wait2",
    "TIME-WAIT": "time_wait",
    "UNCONN": "close",
    "CLOSE-WAIT": "close_wait",
    "LAST-ACK": "last_ack",
    "LISTEN": "listen",
    "CLOSING": "closing",
}


def ss_counts(lab: NetnsLab, ns: str | None) -> dict[str, int]:
    """State counts as ``ss -Htan`` (iproute2's own inet_diag client) lists them."""
    counts = dict.fromkeys(TCP_STATES.values(), 0)
    for line in lab.exec(ns, "ss", "-Htan").splitlines():
        counts[SS_STATES[line.split()[0]]] += 1
    return counts


def proc_counts(lab: NetnsLab, ns: str) -> dict[str, int]:
    """State counts from /proc/net/tcp and /proc/net/tcp6 (a code path independent of inet_diag)."""
    counts = dict.fromkeys(TCP_STATES.values(), 0)
    for name in ("tcp", "tcp6"):
        for line in lab.exec(ns, "cat", f"/proc/net/{name}").splitlines()[1:]:
            counts[TCP_STATES[int(line.split()[3], 16)]] += 1
    return counts


def open_tcp(netns_path: str | None, listeners: int, pairs: int, family: int = socket.AF_INET) -> list[socket.socket]:
    loopback = "127.0.0.1" if family == socket.AF_INET else "::1"
    keep = []
    for _ in range(listeners):
        s = open_socket_in_netns(netns_path, family, socket.SOCK_STREAM)
        keep.append(s)
        s.bind((loopback, 0))
        s.listen(128)
    for _ in range(pairs):
        client = open_socket_in_netns(netns_path, family, socket.SOCK_STREAM)
        keep.append(client)
        client.connect(keep[0].getsockname())
        keep.append(keep[0].accept()[0])
    return keep


@pytest.mark.root
@pytest.mark.integration
def test_tcp_states_in_netns_exact(lab: NetnsLab) -> None:
    require_binary("ss", "iproute2")
    ns = lab.netns("c", ipv6=True)
    path = lab.path(ns)
    with DiagSocket(path) as ds:
        assert ds.tcp_states() == dict.fromkeys(TCP_STATES.values(), 0)
        keep = open_tcp(path, 5, 4) + open_tcp(path, 2, 3, socket.AF_INET6)
        try:
            client, _server = keep[5], keep[6]  # first IPv4 pair: half-close it
            client.shutdown(socket.SHUT_WR)
            time.sleep(0.1)
            got = ds.tcp_states()
            expected = dict.fromkeys(TCP_STATES.values(), 0)
            expected.update(listen=7, established=2 * 4 + 2 * 3 - 2, fin_wait2=1, close_wait=1)
            assert got == expected
            assert ss_counts(lab, ns) == expected
            assert proc_counts(lab, ns) == expected
            assert sum(ds.tcp_state_counts()) == 7 + 14
        finally:
            for s in keep:
                s.close()


@pytest.mark.integration
def test_tcp_states_in_host_namespace_count_our_sockets() -> None:
    with DiagSocket() as ds:
        for _attempt in range(5):  # other processes on the host may open or close listeners meanwhile
            before = ds.tcp_states()
            keep = open_tcp(None, 3, 2)
            try:
                after = ds.tcp_states()
            finally:
                for s in keep:
                    s.close()
            if after["listen"] - before["listen"] == 3 and after["established"] - before["established"] == 4:
                break
        assert after["listen"] - before["listen"] == 3
        assert after["established"] - before["established"] == 4


def wait_events(events: LinkEvents, want: Any, timeout: float = 5.0) -> list[tuple[int, Link]]:
    """Read events until ``want(seen)`` holds."""
    seen: list[tuple[int, Link]] = []
    deadline = time.monotonic() + timeout
    while not want(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"events seen: {[(k, link.name, link.operstate, link.flags) for k, link in seen]}"
        select.select([events], [], [], left)
        seen += events.read()
    return seen


@pytest.mark.root
@pytest.mark.integration
def test_link_events_down_up(lab: NetnsLab) -> None:
    ns = lab.netns("e")
    x0, y0 = lab.veth("x0", ns, "y0", ns)
    with LinkEvents(lab.path(ns)) as events:
        assert events.read() == [] and events.overrun is False
        lab.link(ns, x0, "down")

        def went_down(seen: list[tuple[int, Link]]) -> bool:
            return any(link.name == x0 and not link.flags & IFF_UP and link.operstate == 2 for _, link in seen)

        seen = wait_events(events, went_down)
        assert all(kind == RTM_NEWLINK for kind, _ in seen)
        assert {link.name for _, link in seen} <= {x0, y0}
        lab.link(ns, x0, "up")

        def came_up(seen: list[tuple[int, Link]]) -> bool:
            return any(
                link.name == x0 and link.flags & IFF_UP and OPERSTATES[link.operstate] == "up" for _, link in seen
            )

        wait_events(events, came_up)
        lab.exec(None, "ip", "-n", ns, "link", "del", "dev", x0)
        gone = wait_events(events, lambda seen: {link.name for kind, link in seen if kind == RTM_DELLINK} == {x0, y0})
        assert {link.name for kind, link in gone if kind == RTM_DELLINK} == {x0, y0}
        assert events.overrun is False


@pytest.mark.root
@pytest.mark.integration
def test_link_events_skip_bridge_port_notifications(lab: NetnsLab) -> None:
    ns = lab.netns("m")
    x0, y0 = lab.veth("x0", ns, "y0", ns, up=False)
    br = lab.ifname("br")
    with LinkEvents(lab.path(ns)) as events:
        raw = open_socket_in_netns(lab.path(ns), socket.AF_NETLINK, socket.SOCK_RAW)
        with raw:
            raw.bind((0, nl.RTMGRP_LINK))
            lab.exec(None, "ip", "-n", ns, "link", "add", br, "type", "bridge")
            lab.link(ns, x0, "master", br)
            seen = wait_events(events, lambda seen: any(link.name == x0 and link.stats64 for _, link in seen))
            time.sleep(0.2)
            seen += events.read()
            raw.setblocking(False)
            families = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    families.append(raw.recv(65536)[16])
    assert socket.AF_BRIDGE in families  # the kernel did send a bridge-port RTM_NEWLINK ...
    assert len(seen) == families.count(socket.AF_UNSPEC)  # ... and only the AF_UNSPEC ones came out
    assert all(link.stats64 for _, link in seen)
    assert {link.name for _, link in seen} <= {x0, y0, br}


@pytest.mark.root
@pytest.mark.integration
def test_link_events_with_asyncio_reader(lab: NetnsLab) -> None:
    ns = lab.netns("f")
    x0, _ = lab.veth("x0", ns, "y0", ns)

    async def main() -> list[tuple[int, Link]]:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[tuple[int, Link]] = asyncio.Queue()
        with LinkEvents(lab.path(ns)) as events:

            def readable() -> None:
                for event in events.read():
                    got.put_nowait(event)

            loop.add_reader(events.fileno(), readable)
            try:
                await asyncio.to_thread(lab.link, ns, x0, "mtu", "1400")
                while True:
                    kind, link = await asyncio.wait_for(got.get(), 5)
                    if link.name == x0 and link.mtu == 1400:
                        return [(kind, link)]
            finally:
                loop.remove_reader(events.fileno())

    assert asyncio.run(main())[0][0] == RTM_NEWLINK


@pytest.mark.root
@pytest.mark.integration
def test_link_events_overrun_sets_flag(lab: NetnsLab) -> None:
    ns = lab.netns("g")
    x0, _ = lab.veth("x0", ns, "y0", ns)
    batch = "".join(f"link set dev {x0} {state}\n" for _ in range(100) for state in ("down", "up"))
    with LinkEvents(lab.path(ns), rcvbuf=4096) as events:
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True, timeout=60)
        got = events.read()
        assert events.overrun is True
        assert all(link.name in (x0, lab.ifname("y0")) for _, link in got)
        lab.link(ns, x0, "mtu", "1300")
        wait_events(events, lambda seen: any(link.mtu == 1300 for _, link in seen))
        assert events.overrun is False  # reset by the next read that lost nothing


@pytest.mark.root
@pytest.mark.integration
def test_vanished_namespace_is_a_clear_error(lab: NetnsLab) -> None:
    ns = lab.netns("h")
    path = lab.path(ns)
    lab.delete_netns(ns)
    for cls in (RouteSocket, DiagSocket, LinkEvents):
        with pytest.raises(FileNotFoundError) as info:
            cls(path)
        assert info.value.filename == path and path in str(info.value)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = f"/proc/{proc.pid}/ns/net"
    with pytest.raises(FileNotFoundError, match=dead):
        RouteSocket(dead)
    for not_net in ("/proc/self/ns/mnt", "/etc/hostname"):
        with pytest.raises(OSError, match="is not a network namespace") as err:
            RouteSocket(not_net)
        assert err.value.errno == errno.EINVAL
    assert ns not in list_netns()


@pytest.mark.root
@pytest.mark.integration
def test_open_socket_keeps_a_deleted_namespace_alive(lab: NetnsLab) -> None:
    """The kernel keeps a namespace while a socket in it exists: close sockets of namespaces that went away."""
    a, b = lab.netns("i"), lab.netns("j")
    a0, b0 = lab.veth("a0", a, "b0", b)
    rs = RouteSocket(lab.path(a))
    try:
        lab.delete_netns(a)
        assert a0 in {link.name for link in rs.dump_links()}
        with RouteSocket(lab.path(b)) as rb:
            assert b0 in {link.name for link in rb.dump_links()}
    finally:
        rs.close()
    with RouteSocket(lab.path(b)) as rb:
        deadline = time.monotonic() + 10
        while b0 in {link.name for link in rb.dump_links()}:  # namespace cleanup runs in a kernel workqueue
            assert time.monotonic() < deadline, "veth peer still present after the last socket closed"
            time.sleep(0.05)


@pytest.mark.root
@pytest.mark.integration
def test_dump_of_many_links_spans_datagrams(lab: NetnsLab) -> None:
    ns = lab.netns("k")
    batch = "".join(f"link add {lab.ifname(f'm{i}')} type veth peer name {lab.ifname(f'n{i}')}\n" for i in range(40))
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True, timeout=60)
    with RouteSocket(lab.path(ns)) as rs:
        links = rs.dump_links()
        again = rs.dump_links()
    assert len(links) == 81 and len(again) == 81
    assert len({link.index for link in links}) == 81
    expected = {lab.ifname(f"{side}{i}") for i in range(40) for side in "mn"} | {"lo"}
    assert {link.name for link in links} == expected


@pytest.mark.root
@pytest.mark.integration
def test_dump_after_an_abandoned_dump(lab: NetnsLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dump abandoned half-way (a parse error on its first datagram) does not poison the socket's next dump."""
    ns = lab.netns("l")
    batch = "".join(f"link add {lab.ifname(f'm{i}')} type veth peer name {lab.ifname(f'n{i}')}\n" for i in range(40))
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True, timeout=60)
    real = nl._parse_links

    def fail_once(*args: Any) -> tuple[bool, bool]:
        monkeypatch.setattr(nl, "_parse_links", real)
        raise ParseError("injected")

    with RouteSocket(lab.path(ns)) as rs:
        monkeypatch.setattr(nl, "_parse_links", fail_once)
        with pytest.raises(ParseError, match="injected"):
            rs.dump_links()
        assert len(rs.dump_links()) == 81
        assert len(rs.dump_links()) == 81
