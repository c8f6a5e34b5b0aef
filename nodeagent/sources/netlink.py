"""
Netlink with the standard library only: link dumps with counters (NETLINK_ROUTE), TCP state counts
(NETLINK_SOCK_DIAG) and link events, optionally inside another network namespace. Parsers are pure functions
over the kernel's bytes that read only the attributes the network collector needs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Final

from nodeagent.hostfs import ParseError

# <linux/netlink.h>
NETLINK_ROUTE: Final = 0
NETLINK_SOCK_DIAG: Final = 4
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_ROOT: Final = 0x100
NLM_F_MATCH: Final = 0x200
NLM_F_DUMP: Final = NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED: Final = 0x100  # in an NLMSG_ERROR: the original request's payload was left out
NLM_F_ACK_TLVS: Final = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG: Final = 1
NLA_TYPE_MASK: Final = 0x3FFF  # drops NLA_F_NESTED and NLA_F_NET_BYTEORDER

# <linux/rtnetlink.h>, <linux/if_link.h>
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTMGRP_LINK: Final = 0x1
IFLA_ADDRESS: Final = 1
IFLA_BROADCAST: Final = 2
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_LINK: Final = 5
IFLA_STATS: Final = 7
IFLA_TXQLEN: Final = 13
IFLA_OPERSTATE: Final = 16
IFLA_LINKINFO: Final = 18
IFLA_IFALIAS: Final = 20
IFLA_STATS64: Final = 23
IFLA_CARRIER: Final = 33
IFLA_CARRIER_CHANGES: Final = 35
IFLA_LINK_NETNSID: Final = 37
IFLA_PAD: Final = 42
IFLA_CARRIER_UP_COUNT: Final = 47
IFLA_CARRIER_DOWN_COUNT: Final = 48
IFLA_INFO_KIND: Final = 1

# <linux/sock_diag.h>, <linux/inet_diag.h>
SOCK_DIAG_BY_FAMILY: Final = 20
TCP_BOUND_INACTIVE: Final = 13

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLMSG_HEAD = struct.Struct("=IHHI")  # the part of the header a reply parser needs
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")  # family, protocol, ext, states, inet_diag_sockid (zeros)
_NLMSG_HDRLEN = 16
_IFINFOMSG_END = _NLMSG_HDRLEN + _IFINFOMSG.size
_INET_DIAG_MSG_LEN = 72  # sizeof(struct inet_diag_msg)
_DIAG_STATE_OFFSET = _NLMSG_HDRLEN + 1  # idiag_family, then idiag_state

LINK_STATS64_FIELDS: Final[tuple[str, ...]] = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "multicast",
    "collisions",
    "rx_length_errors",
    "rx_over_errors",
    "rx_crc_errors",
    "rx_frame_errors",
    "rx_fifo_errors",
    "rx_missed_errors",
    "tx_aborted_errors",
    "tx_carrier_errors",
    "tx_fifo_errors",
    "tx_heartbeat_errors",
    "tx_window_errors",
    "rx_compressed",
    "tx_compressed",
    "rx_nohandler",
    "rx_otherhost_dropped",
)
"""``struct rtnl_link_stats64`` in kernel order (Linux 6.0 added ``rx_otherhost_dropped``; older kernels send
fewer fields, newer ones may send more)."""

LINK_STATS_INDEX: Final[Mapping[str, int]] = MappingProxyType({name: i for i, name in enumerate(LINK_STATS64_FIELDS)})
"""Position of each counter in ``Link.stats``."""

_N_STATS = len(LINK_STATS64_FIELDS)
_ZERO_STATS = (0,) * _N_STATS
# One precompiled struct per field count the kernel may send, so the per-link decode is a single unpack.
_STATS64 = tuple(struct.Struct(f"={n}Q") for n in range(_N_STATS + 1))
_STATS32 = tuple(struct.Struct(f"={n}I") for n in range(_N_STATS + 1))

OPERSTATES: Final[Mapping[int, str]] = MappingProxyType(
    {0: "unknown", 1: "notpresent", 2: "down", 3: "lowerlayerdown", 4: "testing", 5: "dormant", 6: "up"}
)
"""RFC 2863 operational states (``IF_OPER_*``), named as in ``/sys/class/net/*/operstate`` and node_exporter."""

TCP_STATES: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "established",
        2: "syn_sent",
        3: "syn_recv",
        4: "fin_wait1",
        5: "fin_wait2",
        6: "time_wait",
        7: "close",
        8: "close_wait",
        9: "last_ack",
        10: "listen",
        11: "closing",
    }
)
"""``TCP_*`` states, labelled as node_exporter's ``node_tcp_connection_states{state}``."""

# Every state bit but TCP_BOUND_INACTIVE: from Linux 6.5 that bit makes the kernel also walk the bind hash and
# report bind()-only sockets (as state close), which /proc/net/tcp, ss and node_exporter never counted.
_TCP_DIAG_STATES = 0xFFFFFFFF & ~(1 << TCP_BOUND_INACTIVE)

# The kernel sizes a dump datagram from the reader's buffer but caps it at 32 KiB (16 KiB on older kernels), and a
# link event without VF lists is a few KiB: 64 KiB never truncates, and MSG_TRUNC would tell if it did. Kept small
# because the agent may hold a socket per container namespace.
_RECV_BUFFER = 64 << 10
_CLONE_NEWNET = 0x40000000
_RECV_TIMEOUT = 10.0  # seconds
_SO_RCVBUFFORCE = 33


class NetlinkError(OSError):
    """The kernel answered a request with NLMSG_ERROR; ``errno`` is the positive error number."""


@dataclass(slots=True)
class Link:
    """One network interface as RTM_NEWLINK / RTM_DELLINK describes it; ``None`` where the kernel left it out."""

    index: int
    name: str
    flags: int
    type: int
    mtu: int
    operstate: int
    carrier: int | None
    carrier_changes: int | None
    carrier_up: int | None
    carrier_down: int | None
    address: str
    broadcast: str
    alias: str
    kind: str
    txqlen: int
    iflink: int | None
    link_netnsid: int | None
    stats: tuple[int, ...]
    """Counters in ``LINK_STATS64_FIELDS`` order; zeros where the kernel sent none."""
    stats64: bool
    """Whether ``stats`` came from IFLA_STATS64 (else from the 32-bit IFLA_STATS, which wraps)."""

    def stat(self, name: str) -> int:
        """One counter by its ``LINK_STATS64_FIELDS`` name."""
        return self.stats[LINK_STATS_INDEX[name]]


# Minimum payload of each attribute the parser reads as a number; shorter ones are malformed.
_FIXED_SIZE: Final[Mapping[int, int]] = MappingProxyType(
    {
        IFLA_MTU: 4,
        IFLA_LINK: 4,
        IFLA_TXQLEN: 4,
        IFLA_OPERSTATE: 1,
        IFLA_CARRIER: 1,
        IFLA_CARRIER_CHANGES: 4,
        IFLA_LINK_NETNSID: 4,
        IFLA_CARRIER_UP_COUNT: 4,
        IFLA_CARRIER_DOWN_COUNT: 4,
    }
)
_WANTED = frozenset(
    {IFLA_ADDRESS, IFLA_BROADCAST, IFLA_IFNAME, IFLA_STATS, IFLA_IFALIAS, IFLA_STATS64, IFLA_LINKINFO, *_FIXED_SIZE}
)


def _text(data: bytes, start: int, end: int) -> str:
    # Interface names are bytes to the kernel; backslashreplace keeps odd ones visible and encodable.
    return data[start:end].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _malformed(mtype: int, pos: int, what: str) -> ParseError:
    return ParseError(f"netlink message type {mtype} at offset {pos}: {what}")


def _decode_stats(
    data: bytes, start: int, size: int, width: int, structs: tuple[struct.Struct, ...]
) -> tuple[int, ...]:
    count = size // width
    if count >= _N_STATS:
        # A newer kernel appended fields we have no names for: keep the known prefix.
        return structs[_N_STATS].unpack_from(data, start)
    return structs[count].unpack_from(data, start) + _ZERO_STATS[count:]


def _kind(data: bytes, start: int, end: int, mtype: int, msg_pos: int) -> str:
    pos = start
    while pos + 4 <= end:
        alen, atype = _RTATTR.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            raise _malformed(mtype, msg_pos, f"IFLA_LINKINFO attribute at offset {pos} has length {alen}")
        if atype & NLA_TYPE_MASK == IFLA_INFO_KIND:
            return _text(data, pos + 4, pos + alen)
        pos += (alen + 3) & ~3
    return ""


def _decode_link(data: bytes, pos: int, end: int, mtype: int) -> Link:
    """One ifinfomsg with its attributes, ``data[pos:end]`` being the whole netlink message."""
    if end - pos < _IFINFOMSG_END:
        raise _malformed(mtype, pos, f"length {end - pos} is shorter than nlmsghdr + ifinfomsg")
    _family, itype, index, flags, _change = _IFINFOMSG.unpack_from(data, pos + _NLMSG_HDRLEN)
    name = address = broadcast = alias = kind = ""
    mtu = operstate = txqlen = 0
    carrier = carrier_changes = carrier_up = carrier_down = iflink = netnsid = None
    stats = _ZERO_STATS
    stats64 = False
    fixed_size = _FIXED_SIZE
    wanted = _WANTED
    unpack_attr = _RTATTR.unpack_from
    u32 = _U32.unpack_from
    a = pos + _IFINFOMSG_END
    # Most of the ~50 attributes a link carries are skipped with one set lookup; that keeps a link near 10 us.
    while a + 4 <= end:
        alen, atype = unpack_attr(data, a)
        if alen < 4 or a + alen > end:
            raise _malformed(mtype, pos, f"attribute at offset {a} has length {alen}, message ends at {end}")
        atype &= NLA_TYPE_MASK
        if atype in wanted:
            p = a + 4
            size = alen - 4
            if size < fixed_size.get(atype, 0):
                raise _malformed(mtype, pos, f"attribute {atype} at offset {a} has a {size}-byte payload")
            if atype == IFLA_STATS64:
                if size % 8:
                    raise _malformed(mtype, pos, f"IFLA_STATS64 payload of {size} bytes is not a multiple of 8")
                stats = _decode_stats(data, p, size, 8, _STATS64)
                stats64 = True
            elif atype == IFLA_STATS:
                if size % 4:
                    raise _malformed(mtype, pos, f"IFLA_STATS payload of {size} bytes is not a multiple of 4")
                if not stats64:  # the kernel puts IFLA_STATS64 first; the 32-bit copy is only a fallback
                    stats = _decode_stats(data, p, size, 4, _STATS32)
            elif atype == IFLA_IFNAME:
                name = _text(data, p, p + size)
            elif atype == IFLA_MTU:
                mtu = u32(data, p)[0]
            elif atype == IFLA_OPERSTATE:
                operstate = data[p]
            elif atype == IFLA_ADDRESS:
                address = data[p : p + size].hex(":")
            elif atype == IFLA_BROADCAST:
                broadcast = data[p : p + size].hex(":")
            elif atype == IFLA_TXQLEN:
                txqlen = u32(data, p)[0]
            elif atype == IFLA_CARRIER:
                carrier = data[p]
            elif atype == IFLA_CARRIER_CHANGES:
                carrier_changes = u32(data, p)[0]
            elif atype == IFLA_CARRIER_UP_COUNT:
                carrier_up = u32(data, p)[0]
            elif atype == IFLA_CARRIER_DOWN_COUNT:
                carrier_down = u32(data, p)[0]
            elif atype == IFLA_LINK:
                iflink = u32(data, p)[0]
            elif atype == IFLA_LINK_NETNSID:
                netnsid = _I32.unpack_from(data, p)[0]
            elif atype == IFLA_IFALIAS:
                alias = _text(data, p, p + size)
            elif atype == IFLA_LINKINFO:
                kind = _kind(data, p, p + size, mtype, pos)
        a += (alen + 3) & ~3
    return Link(
        index=index,
        name=name,
        flags=flags,
        type=itype,
        mtu=mtu,
        operstate=operstate,
        carrier=carrier,
        carrier_changes=carrier_changes,
        carrier_up=carrier_up,
        carrier_down=carrier_down,
        address=address,
        broadcast=broadcast,
        alias=alias,
        kind=kind,
        txqlen=txqlen,
        iflink=iflink,
        link_netnsid=netnsid,
        stats=stats,
        stats64=stats64,
    )


def _raise_error(data: bytes, pos: int, length: int, flags: int) -> None:
    """Raise the NLMSG_ERROR at ``pos`` as NetlinkError unless it is an ACK (error 0)."""
    if length < _NLMSG_HDRLEN + 4:
        raise _malformed(NLMSG_ERROR, pos, f"length {length} is too short for struct nlmsgerr")
    error = _I32.unpack_from(data, pos + _NLMSG_HDRLEN)[0]
    if error >= 0:
        return
    code = -error
    # -INT32_MIN does not fit the C int that os.strerror takes; only a corrupt buffer holds it.
    reason = os.strerror(code) if code < 1 << 31 else f"Unknown error {code}"
    end = pos + length
    if flags & NLM_F_ACK_TLVS and length >= _NLMSG_HDRLEN + 4 + _NLMSG_HDRLEN:
        # Extended ACK (NETLINK_EXT_ACK): the kernel's own explanation follows the echoed request.
        a = pos + _NLMSG_HDRLEN + 4 + _NLMSG_HDRLEN
        if not flags & NLM_F_CAPPED:
            a = pos + _NLMSG_HDRLEN + 4 + _U32.unpack_from(data, pos + _NLMSG_HDRLEN + 4)[0]
        while a + 4 <= end:
            alen, atype = _RTATTR.unpack_from(data, a)
            if alen < 4 or a + alen > end:
                break
            if atype & NLA_TYPE_MASK == NLMSGERR_ATTR_MSG:
                reason = f"{reason}: {_text(data, a + 4, a + alen)}"
                break
            a += (alen + 3) & ~3
    raise NetlinkError(code, f"netlink request failed: {reason}")


def _parse_links(
    data: bytes, seq: int | None, accept: tuple[int, ...], out: list[tuple[int, Link]]
) -> tuple[bool, bool]:
    """Append (type, Link) for each message of a type in ``accept``; returns (done, dump interrupted)."""
    pos = 0
    total = len(data)
    interrupted = False
    while pos + _NLMSG_HDRLEN <= total:
        length, mtype, flags, mseq = _NLMSG_HEAD.unpack_from(data, pos)
        if length < _NLMSG_HDRLEN or pos + length > total:
            raise _malformed(mtype, pos, f"length {length} does not fit the {total}-byte buffer")
        # A reply to an earlier, abandoned request on the same socket is not part of this dump.
        if seq is None or mseq == seq:
            if flags & NLM_F_DUMP_INTR:
                interrupted = True
            # RTMGRP_LINK also carries AF_BRIDGE RTM_NEWLINKs about bridge ports: partial, without counters.
            if mtype in accept and (length <= _NLMSG_HDRLEN or data[pos + _NLMSG_HDRLEN] == socket.AF_UNSPEC):
                try:
                    out.append((mtype, _decode_link(data, pos, pos + length, mtype)))
                except (struct.error, IndexError) as exc:  # belt and braces: every read above is bounds-checked
                    raise _malformed(mtype, pos, str(exc)) from exc
            elif mtype == NLMSG_DONE:
                return True, interrupted
            elif mtype == NLMSG_ERROR:
                _raise_error(data, pos, length, flags)
        pos += (length + 3) & ~3
    if pos < total:
        raise _malformed(-1, pos, f"{total - pos} trailing bytes are too short for a netlink header")
    return False, interrupted


def parse_link_messages(data: bytes, *, seq: int | None = None) -> tuple[list[Link], bool]:
    """
    The links in a buffer of concatenated netlink messages (RTM_NEWLINK; other types are ignored) and whether
    NLMSG_DONE was reached. With ``seq``, messages with another sequence number are ignored. Raises
    NetlinkError for an NLMSG_ERROR and ParseError for a truncated or malformed message.
    """
    pairs: list[tuple[int, Link]] = []
    done, _ = _parse_links(data, seq, (RTM_NEWLINK,), pairs)
    return [link for _, link in pairs], done


def parse_link_events(data: bytes) -> list[tuple[int, Link]]:
    """(RTM_NEWLINK or RTM_DELLINK, Link) for each AF_UNSPEC link message of multicast datagrams."""
    pairs: list[tuple[int, Link]] = []
    _parse_links(data, None, (RTM_NEWLINK, RTM_DELLINK), pairs)
    return pairs


def parse_diag_states(
    data: bytes, *, seq: int | None = None, counts: list[int] | None = None
) -> tuple[list[int], bool]:
    """
    Count the ``idiag_state`` of each inet_diag_msg in a SOCK_DIAG_BY_FAMILY dump buffer, decoding nothing
    else: ``counts[state]`` (a 256-long list, added to when given). Also returns whether NLMSG_DONE was reached.
    """
    if counts is None:
        counts = [0] * 256
    unpack = _NLMSG_HEAD.unpack_from
    pos = 0
    total = len(data)
    while pos + _NLMSG_HDRLEN <= total:
        length, mtype, flags, mseq = unpack(data, pos)
        if length < _NLMSG_HDRLEN or pos + length > total:
            raise _malformed(mtype, pos, f"length {length} does not fit the {total}-byte buffer")
        if seq is None or mseq == seq:
            if mtype == SOCK_DIAG_BY_FAMILY:
                if length < _NLMSG_HDRLEN + _INET_DIAG_MSG_LEN:
                    raise _malformed(mtype, pos, f"length {length} is shorter than nlmsghdr + inet_diag_msg")
                counts[data[pos + _DIAG_STATE_OFFSET]] += 1
            elif mtype == NLMSG_DONE:
                return counts, True
            elif mtype == NLMSG_ERROR:
                _raise_error(data, pos, length, flags)
        pos += (length + 3) & ~3
    if pos < total:
        raise _malformed(-1, pos, f"{total - pos} trailing bytes are too short for a netlink header")
    return counts, False


def _setns(fd: int, path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(ctypes.c_int(fd), ctypes.c_int(_CLONE_NEWNET)) != 0:
        code = ctypes.get_errno()
        if code == errno.EINVAL:
            raise OSError(code, f"{path} is not a network namespace", path)
        raise OSError(code, f"setns({path}): {os.strerror(code)}", path)


def open_socket_in_netns(netns_path: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """
    A socket created inside the network namespace at ``netns_path`` (``/proc/<pid>/ns/net``, ``/run/netns/x``),
    or in the current one for ``None``. A socket stays in the namespace it was created in, so only a short-lived
    thread switches (setns needs CAP_SYS_ADMIN); no process is spawned and the caller's threads never move.
    Raises FileNotFoundError naming the path when the namespace is gone.
    """
    if netns_path is None:
        return socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
    # Opened here so that a vanished namespace fails in the caller's thread with the path in the message.
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    result: list[socket.socket] = []
    failure: list[BaseException] = []

    def create() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target, netns_path)
                try:
                    result.append(socket.socket(family, kind | socket.SOCK_CLOEXEC, proto))
                finally:
                    # The thread ends next anyway; switching back keeps a failure here visible, not silent.
                    _setns(own, "/proc/thread-self/ns/net")
            finally:
                os.close(own)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread below
            failure.append(exc)

    try:
        thread = threading.Thread(target=create, name="nodeagent-setns", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(target)
    if failure:
        for sock in result:
            sock.close()
        raise failure[0]
    return result[0]


def _netlink_socket(protocol: int, netns_path: str | None, groups: int = 0, rcvbuf: int = 0) -> socket.socket:
    sock = open_socket_in_netns(netns_path, socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        # A dump needs no more than the default: the kernel produces its next part only once the reader made room.
        if rcvbuf:
            try:
                # Beyond net.core.rmem_max needs CAP_NET_ADMIN; without it the plain option is capped, which is fine.
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        for option in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            # Older kernels lack these: errors then just come without the kernel's own text.
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_NETLINK, option, 1)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


class _NetlinkClient:
    """Request/dump plumbing shared by RouteSocket and DiagSocket."""

    def __init__(self, protocol: int, netns_path: str | None) -> None:
        self.netns_path = netns_path
        self._sock = _netlink_socket(protocol, netns_path)
        # The kernel answers at once; a bound keeps a wedged socket from holding a worker thread forever.
        self._sock.settimeout(_RECV_TIMEOUT)
        self._seq = 0
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self._unfinished = False

    def _send(self, mtype: int, payload: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        header = _NLMSGHDR.pack(_NLMSG_HDRLEN + len(payload), mtype, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0)
        self._sock.sendto(header + payload, (0, 0))
        return self._seq

    def _recv(self) -> bytes:
        size = self._sock.recv_into(self._buffer, 0, socket.MSG_TRUNC)
        if size > len(self._buffer):
            raise OSError(
                errno.EMSGSIZE, f"netlink datagram of {size} bytes exceeds the {len(self._buffer)}-byte buffer"
            )
        return bytes(self._view[:size])

    def _dump(self, mtype: int, payload: bytes, consume: Callable[[bytes, int], tuple[bool, bool]]) -> bool:
        """Send a dump request and feed each datagram to ``consume`` until NLMSG_DONE; True if interrupted."""
        if self._unfinished:
            self._drain()
        seq = self._send(mtype, payload)
        self._unfinished = True
        interrupted = False
        while True:
            done, intr = consume(self._recv(), seq)
            interrupted |= intr
            if done:
                self._unfinished = False
                return interrupted

    def _drain(self) -> None:
        """
        Read the rest of an abandoned dump: while one is running the kernel answers a new dump request with
        EBUSY, and each recv produces its next part, so read without blocking until nothing comes.
        """
        self._sock.setblocking(False)
        try:
            while True:
                try:
                    self._sock.recv_into(self._buffer)
                except BlockingIOError:
                    break
        finally:
            self._sock.settimeout(_RECV_TIMEOUT)
        self._unfinished = False

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._sock.fileno()


class RouteSocket(_NetlinkClient):
    """A NETLINK_ROUTE socket in the current network namespace or the one at ``netns_path``."""

    def __init__(self, netns_path: str | None = None) -> None:
        super().__init__(NETLINK_ROUTE, netns_path)

    def dump_links(self, retries: int = 3) -> list[Link]:
        """
        Every link with its counters (RTM_GETLINK dump). A dump the kernel marks interrupted (links added or
        removed meanwhile, NLM_F_DUMP_INTR) is repeated up to ``retries`` times; the last one is returned.
        """
        request = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        pairs: list[tuple[int, Link]] = []

        def consume(data: bytes, seq: int) -> tuple[bool, bool]:
            return _parse_links(data, seq, (RTM_NEWLINK,), pairs)

        for _ in range(retries + 1):
            pairs.clear()
            if not self._dump(RTM_GETLINK, request, consume):
                break
        return [link for _, link in pairs]

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class DiagSocket(_NetlinkClient):
    """A NETLINK_SOCK_DIAG socket in the current network namespace or the one at ``netns_path``."""

    def __init__(self, netns_path: str | None = None) -> None:
        super().__init__(NETLINK_SOCK_DIAG, netns_path)

    def tcp_state_counts(self) -> list[int]:
        """``counts[state]`` over IPv4 and IPv6 TCP sockets (256 entries, indexed by ``TCP_*`` number)."""
        counts = [0] * 256

        def consume(data: bytes, seq: int) -> tuple[bool, bool]:
            return parse_diag_states(data, seq=seq, counts=counts)[1], False

        for family in (socket.AF_INET, socket.AF_INET6):
            request = _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, _TCP_DIAG_STATES)
            try:
                self._dump(SOCK_DIAG_BY_FAMILY, request, consume)
            except NetlinkError as exc:
                # A kernel without IPv6 has no AF_INET6 diag handler: that family simply has no sockets.
                if family == socket.AF_INET6 and exc.errno == errno.ENOENT:
                    continue
                raise
        return counts

    def tcp_states(self) -> dict[str, int]:
        """Sockets per TCP state over IPv4 and IPv6, keyed by ``TCP_STATES`` name (all names, zeros included)."""
        counts = self.tcp_state_counts()
        return {name: counts[state] for state, name in TCP_STATES.items()}

    def __enter__(self) -> DiagSocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LinkEvents:
    """
    A non-blocking NETLINK_ROUTE socket subscribed to RTMGRP_LINK. Register ``fileno()`` with
    ``loop.add_reader`` and call ``read()`` when it is readable; when ``overrun`` is set after a read, events were
    lost (ENOBUFS) and the caller should dump the links again. ``rcvbuf`` (bytes) is how much may queue between
    reads: a burst such as a hundred pods starting brings hundreds of events of a few KiB each.
    """

    def __init__(self, netns_path: str | None = None, rcvbuf: int = 4 << 20) -> None:
        self.netns_path = netns_path
        self._sock = _netlink_socket(NETLINK_ROUTE, netns_path, groups=RTMGRP_LINK, rcvbuf=rcvbuf)
        self._sock.setblocking(False)
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self.overrun = False
        """Whether the last ``read()`` met ENOBUFS: the kernel dropped events because the socket buffer was full."""

    def fileno(self) -> int:
        """The socket's file descriptor, for ``loop.add_reader``."""
        return self._sock.fileno()

    def read(self) -> list[tuple[int, Link]]:
        """(RTM_NEWLINK or RTM_DELLINK, Link) for every pending event, draining the socket."""
        self.overrun = False
        events: list[tuple[int, Link]] = []
        while True:
            try:
                size = self._sock.recv_into(self._buffer, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Reported once per overrun; what is still queued after it is valid, so keep draining.
                self.overrun = True
                continue
            if size > len(self._buffer):
                self.overrun = True  # a truncated datagram is a lost event too
                continue
            events.extend(parse_link_events(bytes(self._view[:size])))

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()

    def __enter__(self) -> LinkEvents:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
