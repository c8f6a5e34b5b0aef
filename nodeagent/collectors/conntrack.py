"""
Netfilter connection tracking: table size and limit from ``/proc/sys/net/netfilter/nf_conntrack_{count,max}``, and
the per-CPU statistics of ``/proc/net/stat/nf_conntrack`` summed over CPUs.

Families (gauges, node_exporter names, the statistics too): ``node_nf_conntrack_entries``,
``node_nf_conntrack_entries_limit``, ``node_nf_conntrack_stat_{found,invalid,ignore,insert,insert_failed,drop,
early_drop,search_restart}``. Shell equivalent: ``conntrack -C; conntrack -S``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.hostfs import ParseError, kernel_int, read_text
from nodeagent.metrics import MetricFamily, single

_NOT_LOADED_HINT = (
    "the nf_conntrack kernel module is not loaded: it loads with the first iptables/nftables rule or NAT that "
    "needs connection tracking (kube-proxy, Docker), or with 'modprobe nf_conntrack'"
)

# (column of /proc/net/stat/nf_conntrack, family, help) in node_exporter's order. node_exporter reads the columns
# by position; on every kernel since 2.6.35 these names sit at those positions (newer kernels renamed others).
_STAT_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("found", "node_nf_conntrack_stat_found", "Number of searched entries which were successful."),
    ("invalid", "node_nf_conntrack_stat_invalid", "Number of packets seen which can not be tracked."),
    (
        "ignore",
        "node_nf_conntrack_stat_ignore",
        "Number of packets seen which are already connected to a conntrack entry.",
    ),
    ("insert", "node_nf_conntrack_stat_insert", "Number of entries inserted into the list."),
    (
        "insert_failed",
        "node_nf_conntrack_stat_insert_failed",
        "Number of entries for which list insertion was attempted but failed.",
    ),
    ("drop", "node_nf_conntrack_stat_drop", "Number of packets dropped due to conntrack failure."),
    (
        "early_drop",
        "node_nf_conntrack_stat_early_drop",
        "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached.",
    ),
    (
        "search_restart",
        "node_nf_conntrack_stat_search_restart",
        "Number of conntrack table lookups which had to be restarted due to hashtable resizes.",
    ),
)


@dataclass(frozen=True, slots=True)
class ConntrackStat:
    """The columns of ``/proc/net/stat/nf_conntrack`` summed over the CPU rows, in header order."""

    cpus: int
    totals: tuple[tuple[str, int], ...]


def parse_count(text: str, source: str) -> int:
    """
    Parse a one-number file such as ``nf_conntrack_count``.

    Raises:
        ParseError: not one non-negative integer; the message names ``source`` and the content.
    """
    value = text.strip()
    try:
        if not (value.isascii() and value.isdigit()):
            raise ValueError(value)
        return kernel_int(value)
    except ValueError:
        raise ParseError(f"{source}: line 1: expected a non-negative integer, got {value[:40]!r}") from None


def parse_conntrack_stat(text: str, source: str = "/proc/net/stat/nf_conntrack") -> ConntrackStat:
    """
    Parse ``/proc/net/stat/nf_conntrack``: a header naming the columns, then one row of hexadecimal numbers per
    CPU. Columns are matched by the header's names, so a kernel that renames or adds columns does not shift them.

    Raises:
        ParseError: no header, a row with a different number of columns, or a value that is not hexadecimal; the
            message names ``source`` and the line.
    """
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ParseError(f"{source}: line 1: empty, expected a header naming the columns")
    header_lineno, header = lines[0]
    names = header.split()
    if names[0] != "entries":
        raise ParseError(f"{source}: line {header_lineno}: expected a header starting with 'entries': {header!r}")
    totals = [0] * len(names)
    for lineno, line in lines[1:]:
        row = line.split()
        if len(row) != len(names):
            raise ParseError(f"{source}: line {lineno}: {len(row)} columns, the header names {len(names)}: {line!r}")
        for i, value in enumerate(row):
            try:
                totals[i] += kernel_int(value, 16)
            except ValueError:
                raise ParseError(f"{source}: line {lineno}: not hexadecimal for {names[i]}: {value!r}") from None
    return ConntrackStat(len(lines) - 1, tuple(zip(names, totals, strict=True)))


class ConntrackCollector(BaseCollector):
    """Reads the two sysctls and the statistics file each cycle."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._count = ctx.paths.proc("sys", "net", "netfilter", "nf_conntrack_count")
        self._max = ctx.paths.proc("sys", "net", "netfilter", "nf_conntrack_max")
        self._stat = ctx.paths.proc("net", "stat", "nf_conntrack")

    async def collect(self) -> Sequence[MetricFamily]:
        """Return entries, limit and (where the kernel has the statistics file) the summed statistics."""
        try:
            count = parse_count(read_text(self._count), self._count)
            limit = parse_count(read_text(self._max), self._max)
        except FileNotFoundError as exc:
            raise NoDataError(f"{exc.filename} does not exist", _NOT_LOADED_HINT) from None
        out = [
            single(
                "node_nf_conntrack_entries",
                "gauge",
                "Number of currently allocated flow entries for connection tracking.",
                float(count),
            ),
            single(
                "node_nf_conntrack_entries_limit", "gauge", "Maximum size of connection tracking table.", float(limit)
            ),
        ]
        try:
            text = read_text(self._stat)
        except FileNotFoundError:
            # A kernel without CONFIG_NF_CONNTRACK_PROCFS: entries and limit are still worth having.
            return out
        totals = dict(parse_conntrack_stat(text, self._stat).totals)
        for column, name, help_ in _STAT_FAMILIES:
            if column in totals:  # search_restart is absent before Linux 2.6.35
                out.append(single(name, "gauge", help_, float(totals[column])))
        return out


SPEC = CollectorSpec(
    name="conntrack",
    description="Connection tracking table size, limit and statistics from /proc/sys/net/netfilter and /proc/net/stat.",
    config_model=CollectorConfig,
    factory=ConntrackCollector,
)
