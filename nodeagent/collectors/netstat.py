"""
Network protocol statistics from ``/proc/net/netstat``, ``/proc/net/snmp`` and ``/proc/net/snmp6``, the fields a
regular expression selects.

Families: ``node_netstat_<Protocol>_<Field>`` (untyped, node_exporter names: ``node_netstat_Tcp_RetransSegs``,
``node_netstat_TcpExt_TCPSynRetrans``, ``node_netstat_Ip6_InOctets``), by default node_exporter 1.5's field set.
Shell equivalent: ``nstat -az`` (names without the ``_``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, NoDataError, Regex
from nodeagent.hostfs import ParseError, kernel_int, read_text
from nodeagent.metrics import MetricFamily

#: node_exporter 1.5's ``--collector.netstat.fields`` default (as ``prometheus-node-exporter --help`` prints it;
#: ``TcpExt_TCPOFOQueue`` joined the list after 1.5).
DEFAULT_FIELDS = (
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)"
    r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)"
    r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)"
    r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$"
)

_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

_NO_NET_HINT = (
    "the kernel has no networking (CONFIG_NET), or paths.procfs does not point at a procfs with a net/ directory"
)


class NetstatConfig(CollectorConfig):
    """Options of the netstat collector."""

    fields: Regex = DEFAULT_FIELDS
    """Regular expression (searched, as Go's ``MatchString``) selecting ``<Protocol>_<Field>`` keys."""


@dataclass(frozen=True, slots=True)
class NetStat:
    """The ``(protocol, field, value)`` triples of one file in file order."""

    fields: tuple[tuple[str, str, int], ...]


def parse_netstat(text: str, source: str = "/proc/net/netstat") -> NetStat:
    """
    Parse ``/proc/net/netstat`` or ``/proc/net/snmp``: pairs of lines, field names then values, both prefixed
    with the protocol (``Tcp: ActiveOpens PassiveOpens`` / ``Tcp: 17978 14754``). Values may be negative
    (``Tcp MaxConn -1``).

    Raises:
        ParseError: a header without its value line, a different protocol or field count on the value line,
            or a value that is not an integer; the message names ``source`` and the line.
    """
    fields: list[tuple[str, str, int]] = []
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    for i in range(0, len(lines), 2):
        lineno, header = lines[i]
        names = header.split()
        if not names[0].endswith(":") or len(names[0]) < 2:
            raise ParseError(f"{source}: line {lineno}: expected 'Protocol: Field ...': {header!r}")
        if i + 1 == len(lines):
            raise ParseError(f"{source}: line {lineno}: header {names[0]!r} without a value line")
        vlineno, vline = lines[i + 1]
        values = vline.split()
        if values[0] != names[0]:
            raise ParseError(f"{source}: line {vlineno}: expected values for {names[0]!r}: {vline!r}")
        if len(values) != len(names):
            raise ParseError(
                f"{source}: line {vlineno}: {len(values) - 1} values for {len(names) - 1} fields of {names[0]!r}"
            )
        protocol = names[0][:-1]
        for name, value in zip(names[1:], values[1:], strict=True):
            try:
                fields.append((protocol, name, kernel_int(value)))
            except ValueError:
                raise ParseError(f"{source}: line {vlineno}: not an integer for {name}: {value!r}") from None
    return NetStat(tuple(fields))


def parse_snmp6(text: str, source: str = "/proc/net/snmp6") -> NetStat:
    """
    Parse ``/proc/net/snmp6`` (``Ip6InReceives  3``, one pair per line). The protocol is the name up to and
    including its first ``6`` (``Ip6``, ``Icmp6``, ``Udp6``, ``UdpLite6``); a name without a ``6`` is skipped,
    as node_exporter does.

    Raises:
        ParseError: a line is not ``name value`` or the value is not an integer; the message names
            ``source`` and the line.
    """
    fields: list[tuple[str, str, int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ParseError(f"{source}: line {lineno}: expected 'name value': {line!r}")
        six = parts[0].find("6")
        if six < 0:
            continue
        try:
            fields.append((parts[0][: six + 1], parts[0][six + 1 :], kernel_int(parts[1])))
        except ValueError:
            raise ParseError(f"{source}: line {lineno}: not an integer in {line!r}") from None
    return NetStat(tuple(fields))


class NetstatCollector(BaseCollector):
    """Reads the three files each cycle and exports the selected fields."""

    def __init__(self, ctx: CollectorContext, cfg: NetstatConfig) -> None:
        # node_exporter's order: a key found in a later file replaces an earlier one (none repeat today).
        self._sources = (
            (ctx.paths.proc("net", "netstat"), parse_netstat),
            (ctx.paths.proc("net", "snmp"), parse_netstat),
            (ctx.paths.proc("net", "snmp6"), parse_snmp6),  # absent where IPv6 is disabled
        )
        self._pattern = re.compile(cfg.fields)
        # key -> (name, help), or None when the pattern rejects it: the regex runs once per key, not per cycle.
        self._selected: dict[str, tuple[str, str] | None] = {}

    def _select(self, key: str, protocol: str, field: str, path: str) -> tuple[str, str] | None:
        desc: tuple[str, str] | None = None
        if self._pattern.search(key):
            if not _NAME_RE.match(key):
                raise ParseError(f"{path}: field {key!r} does not make a valid metric name")
            desc = (f"node_netstat_{key}", f"Statistic {protocol}{field}.")
        self._selected[key] = desc
        return desc

    async def collect(self) -> Sequence[MetricFamily]:
        """Return one untyped family per selected ``<Protocol>_<Field>``."""
        values: dict[str, tuple[str, str, float]] = {}
        found = False
        for path, parse in self._sources:
            try:
                text = read_text(path)
            except FileNotFoundError:
                continue
            found = True
            for protocol, field, value in parse(text, path).fields:
                key = f"{protocol}_{field}"
                desc = self._selected[key] if key in self._selected else self._select(key, protocol, field, path)
                if desc is not None:
                    values[key] = (desc[0], desc[1], float(value))
        if not found:
            raise NoDataError(f"{self._sources[1][0]} does not exist", _NO_NET_HINT)
        return [MetricFamily(name, "untyped", help_, (), (((), value),)) for name, help_, value in values.values()]


SPEC = CollectorSpec(
    name="netstat",
    description="Selected network protocol statistics from /proc/net/netstat, snmp and snmp6.",
    config_model=NetstatConfig,
    factory=NetstatCollector,
)
