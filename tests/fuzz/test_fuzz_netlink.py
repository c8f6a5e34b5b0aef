"""
The netlink reply parsers (``nodeagent.sources.netlink``: ``parse_link_messages``, ``parse_link_events``,
``parse_diag_states``) on damaged kernel replies and on generated valid ones.

Documented errors: ``ParseError`` for a truncated or malformed message, ``NetlinkError`` (an ``OSError``) for an
``NLMSG_ERROR`` from the kernel; the network and tcpstat collectors catch those. Seeds: the replies captured from the
kernel in ``tests/fixtures/netlink`` plus an extended-ACK error message. Besides the generic mutations, the 16- and
32-bit words that hold lengths, types and error numbers are overwritten with boundary values.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nodeagent.hostfs import ParseError
from nodeagent.sources import netlink as nl
from nodeagent.sources.netlink import (
    LINK_STATS64_FIELDS,
    NetlinkError,
    parse_diag_states,
    parse_link_events,
    parse_link_messages,
)
from tests.fuzz.strategies import fixture_bytes, hostile_bytes
from tests.fuzz.support import Cases, budget

NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
N_STATS = len(LINK_STATS64_FIELDS)


def rtattr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes as the kernel aligns them."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + b"\0" * (-length % 4)


def message(mtype: int, body: bytes, seq: int = 7, flags: int = nl.NLM_F_MULTI) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body


def error_message(errno_value: int, text: bytes = b"Invalid argument in test\0") -> bytes:
    """An NLMSG_ERROR with the echoed request header left out (CAPPED) and an extended-ACK message attribute."""
    body = struct.pack("=i", -errno_value) + NLMSGHDR.pack(32, nl.RTM_GETLINK, 0x301, 7, 0)
    return message(nl.NLMSG_ERROR, body + rtattr(nl.NLMSGERR_ATTR_MSG, text), flags=nl.NLM_F_CAPPED | nl.NLM_F_ACK_TLVS)


DONE = message(nl.NLMSG_DONE, b"\0\0\0\0")
SEEDS = (
    fixture_bytes("netlink", "links_dump.bin"),
    fixture_bytes("netlink", "links_dump_stats32.bin"),
    fixture_bytes("netlink", "link_events.bin"),
    fixture_bytes("netlink", "diag_tcp4.bin"),
    fixture_bytes("netlink", "diag_tcp6.bin"),
    error_message(22),
)
BOUNDARY_WORDS = (0, 1, 3, 4, 15, 16, 17, 20, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@st.composite
def damaged_replies(draw: st.DrawFn) -> bytes:
    """A damaged reply; half of them also get aligned 16/32-bit words (lengths, types, errno) set to boundaries."""
    data = bytearray(draw(hostile_bytes(SEEDS)))
    if data and draw(st.booleans()):
        rng = random.Random(draw(st.integers(0, 2**32 - 1)))
        for _ in range(rng.randint(1, 3)):
            size = rng.choice((2, 4))
            offset = rng.randrange(0, max(1, len(data) - size + 1), 2)
            value = rng.choice(BOUNDARY_WORDS) & ((1 << (8 * size)) - 1)
            data[offset : offset + size] = value.to_bytes(size, "little")[: len(data) - offset]
    return bytes(data)


PARSERS = {
    "netlink_links": lambda d: parse_link_messages(d, seq=7),
    "netlink_events": parse_link_events,
    "netlink_diag": lambda d: parse_diag_states(d, seq=7),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
@budget(200)
@given(data=damaged_replies())
@example(data=error_message(2**31))  # error field INT32_MIN: os.strerror(2**31) overflowed a C int
@example(data=error_message(2**31 - 1))
def test_hostile_reply_gives_value_or_documented_error(cases: Cases, name: str, data: bytes) -> None:
    """A damaged reply parses, or raises ParseError or NetlinkError (saying "netlink"), never anything else."""
    outcome = cases.call(name, PARSERS[name], data, allowed=(ParseError, NetlinkError), names="netlink")
    if name == "netlink_diag" and outcome.value is not None:
        counts, _done = outcome.value
        assert len(counts) == 256 and sum(counts) <= len(data) // (16 + 72)


# --- valid replies --------------------------------------------------------------------------------------------------

U32 = st.integers(0, 2**32 - 1)
OPTIONAL_U32 = st.none() | U32


@st.composite
def links(draw: st.DrawFn) -> tuple[bytes, nl.Link]:
    """One RTM_NEWLINK as the kernel builds it, and the Link it must decode to."""
    raw_name = draw(st.binary(min_size=1, max_size=15).filter(lambda b: b"\0" not in b))
    raw_alias = draw(st.binary(max_size=40).filter(lambda b: b"\0" not in b))
    kind = draw(st.sampled_from(("", "veth", "bridge", "vxlan", "wireguard")))
    address = draw(st.binary(min_size=6, max_size=6))
    stats = draw(st.lists(st.integers(0, 2**64 - 1), min_size=20, max_size=N_STATS + 3))  # older, newer kernels
    mtu, txqlen = draw(U32), draw(U32)
    operstate = draw(st.integers(0, 6))
    carrier = draw(st.none() | st.integers(0, 1))
    changes, up, down, iflink = draw(OPTIONAL_U32), draw(OPTIONAL_U32), draw(OPTIONAL_U32), draw(OPTIONAL_U32)
    netnsid = draw(st.none() | st.integers(-(2**31), 2**31 - 1))
    index, flags, itype = draw(st.integers(1, 2**31 - 1)), draw(U32), draw(st.integers(0, 0xFFFF))

    attrs = [
        rtattr(nl.IFLA_IFNAME, raw_name + b"\0"),
        rtattr(nl.IFLA_MTU, struct.pack("=I", mtu)),
        rtattr(nl.IFLA_TXQLEN, struct.pack("=I", txqlen)),
        rtattr(nl.IFLA_OPERSTATE, bytes([operstate])),
        rtattr(nl.IFLA_ADDRESS, address),
        rtattr(nl.IFLA_BROADCAST, b"\xff" * 6),
        rtattr(nl.IFLA_PAD, b"\0" * 4),
        rtattr(nl.IFLA_STATS64, struct.pack(f"={len(stats)}Q", *stats)),
        rtattr(nl.IFLA_STATS, struct.pack(f"={len(stats)}I", *(s & 0xFFFFFFFF for s in stats))),
    ]
    if raw_alias:
        attrs.append(rtattr(nl.IFLA_IFALIAS, raw_alias + b"\0"))
    if kind:
        attrs.append(rtattr(nl.IFLA_LINKINFO | 0x8000, rtattr(nl.IFLA_INFO_KIND, kind.encode() + b"\0")))
    optional = (
        (nl.IFLA_CARRIER, carrier, "=B"),
        (nl.IFLA_CARRIER_CHANGES, changes, "=I"),
        (nl.IFLA_CARRIER_UP_COUNT, up, "=I"),
        (nl.IFLA_CARRIER_DOWN_COUNT, down, "=I"),
        (nl.IFLA_LINK, iflink, "=I"),
        (nl.IFLA_LINK_NETNSID, netnsid, "=i"),
    )
    attrs += [rtattr(atype, struct.pack(fmt, value)) for atype, value, fmt in optional if value is not None]
    draw(st.randoms()).shuffle(attrs)
    body = IFINFOMSG.pack(socket.AF_UNSPEC, itype, index, flags, 0) + b"".join(attrs)
    link = nl.Link(
        index=index,
        name=raw_name.decode("utf-8", "backslashreplace"),
        flags=flags,
        type=itype,
        mtu=mtu,
        operstate=operstate,
        carrier=carrier,
        carrier_changes=changes,
        carrier_up=up,
        carrier_down=down,
        address=address.hex(":"),
        broadcast="ff:ff:ff:ff:ff:ff",
        alias=raw_alias.decode("utf-8", "backslashreplace"),
        kind=kind,
        txqlen=txqlen,
        iflink=iflink,
        link_netnsid=netnsid,
        stats=tuple(stats[:N_STATS]) + (0,) * (N_STATS - len(stats)),
        stats64=True,
    )
    return message(nl.RTM_NEWLINK, body), link


@budget(80)
@given(st.lists(links(), max_size=4), st.booleans())
def test_link_dump_roundtrip(cases: Cases, dump: list[tuple[bytes, nl.Link]], stale: bool) -> None:
    """Every field of every link comes back; a message of another request (another sequence) is skipped."""
    data = b"".join(m for m, _ in dump)
    if stale and dump:
        data = message(nl.RTM_NEWLINK, dump[0][0][16:], seq=6) + data
    got = cases.call("netlink_links", parse_link_messages, data + DONE, seq=7).value
    assert ([link for _, link in dump], True) == got


@budget(100)
@given(st.lists(st.integers(0, 255), max_size=40), st.booleans())
def test_diag_dump_roundtrip(cases: Cases, states: list[int], done: bool) -> None:
    """One inet_diag_msg per socket: the counts of idiag_state, and whether NLMSG_DONE ended the dump."""
    data = b"".join(message(nl.SOCK_DIAG_BY_FAMILY, bytes([socket.AF_INET, s]) + bytes(70)) for s in states)
    counts = [0] * 256
    for s in states:
        counts[s] += 1
    assert (counts, done) == cases.call("netlink_diag", parse_diag_states, data + (DONE if done else b""), seq=7).value


@budget(50)
@given(st.integers(1, 2**31 - 1))
def test_error_reply_raises_netlink_error(cases: Cases, code: int) -> None:
    """An NLMSG_ERROR raises NetlinkError with its errno and the kernel's extended-ACK text."""
    outcome = cases.call("netlink_links", parse_link_messages, error_message(code), allowed=(NetlinkError,))
    assert isinstance(outcome.error, NetlinkError)
    assert code == outcome.error.errno
    assert "Invalid argument in test" in str(outcome.error)
