"""
Socket counts per protocol from ``/proc/net/sockstat`` (IPv4) and ``/proc/net/sockstat6`` (IPv6).

Families (gauges, node_exporter names): ``node_sockstat_sockets_used`` and ``node_sockstat_<PROTO>_<key>`` for the
keys ``inuse``, ``orphan``, ``tw``, ``alloc``, ``mem`` (pages), ``memory`` (bytes, FRAG lines) that a line has, plus
``node_sockstat_<PROTO>_mem_bytes`` (``mem`` times the page size): ``node_sockstat_TCP_inuse``,
``node_sockstat_TCP6_inuse``, ``node_sockstat_UDP_mem_bytes``. Shell equivalent: ``cat /proc/net/sockstat*``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.hostfs import ParseError, kernel_int, read_text
from nodeagent.metrics import MetricFamily, single

# The keys node_exporter exports, in its order; others (none today) are ignored as it ignores them.
_KEYS = ("inuse", "orphan", "tw", "alloc", "mem", "memory")

_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Sockstat:
    """
    One sockstat file: ``used`` from the ``sockets:`` line (IPv4 only) and each protocol line's
    ``(key, value)`` pairs, in file order.
    """

    used: int | None
    protocols: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]


def parse_sockstat(text: str, source: str = "/proc/net/sockstat") -> Sockstat:
    """
    Parse ``/proc/net/sockstat`` or ``sockstat6`` (``TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 79``).

    Raises:
        ParseError: a line is not ``PROTO: key value ...`` with integer values; the message names ``source``
            and the line.
    """
    used: int | None = None
    protocols: list[tuple[str, tuple[tuple[str, int], ...]]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or len(parts) % 2 == 0 or not parts[0].endswith(":") or len(parts[0]) < 2:
            raise ParseError(f"{source}: line {lineno}: expected 'PROTO: key value ...': {line!r}")
        pairs: list[tuple[str, int]] = []
        for key, value in zip(parts[1::2], parts[2::2], strict=True):
            try:
                pairs.append((key, kernel_int(value)))
            except ValueError:
                raise ParseError(f"{source}: line {lineno}: not an integer for {key}: {value!r}") from None
        protocol = parts[0][:-1]
        if protocol == "sockets":
            used = dict(pairs).get("used")
            if used is None:
                raise ParseError(f"{source}: line {lineno}: sockets line without 'used': {line!r}")
        else:
            protocols.append((protocol, tuple(pairs)))
    return Sockstat(used, tuple(protocols))


class SockstatCollector(BaseCollector):
    """Reads both files each cycle; a file that is absent (IPv6 disabled) is skipped."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._paths = (ctx.paths.proc("net", "sockstat"), ctx.paths.proc("net", "sockstat6"))
        self._page_size = os.sysconf("SC_PAGE_SIZE")  # the unit of the mem key, as node_exporter's os.Getpagesize

    def _families(self, stat: Sockstat, ipv6: bool, path: str) -> list[MetricFamily]:
        out: list[MetricFamily] = []
        if stat.used is not None and not ipv6:
            help_ = "Number of IPv4 sockets in use."
            out.append(single("node_sockstat_sockets_used", "gauge", help_, float(stat.used)))
        for protocol, pairs in stat.protocols:
            if not _NAME_RE.match(protocol):
                raise ParseError(f"{path}: protocol {protocol!r} does not make a valid metric name")
            values = dict(pairs)
            if "mem" in values:
                values["mem_bytes"] = values["mem"] * self._page_size
            for key in (*_KEYS, "mem_bytes"):
                if key in values:
                    name = f"node_sockstat_{protocol}_{key}"
                    help_ = f"Number of {protocol} sockets in state {key}."
                    out.append(single(name, "gauge", help_, float(values[key])))
        return out

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the IPv4 then the IPv6 families."""
        out: list[MetricFamily] = []
        found = False
        for ipv6, path in enumerate(self._paths):
            try:
                text = read_text(path)
            except FileNotFoundError:
                continue
            found = True
            out.extend(self._families(parse_sockstat(text, path), bool(ipv6), path))
        if not found:
            raise NoDataError(
                f"neither {self._paths[0]} nor {self._paths[1]} exists",
                "the kernel has neither IPv4 nor IPv6, or paths.procfs does not point at a procfs",
            )
        return out


SPEC = CollectorSpec(
    name="sockstat",
    description="Socket counts and memory per protocol from /proc/net/sockstat and sockstat6.",
    config_model=CollectorConfig,
    factory=SockstatCollector,
)
