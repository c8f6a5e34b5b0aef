"""
Virtual memory statistics from ``/proc/vmstat``, the fields a regular expression selects.

Families: ``node_vmstat_<field>`` (untyped, node_exporter names), by default only
``^(oom_kill|pgpg|pswp|pg.*fault).*``.
Shell equivalent: ``grep -E '^(oom_kill|pgpg|pswp|pg.*fault)' /proc/vmstat``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, Regex
from nodeagent.hostfs import ParseError, kernel_int, read_text
from nodeagent.metrics import MetricFamily

#: node_exporter's ``--collector.vmstat.fields`` default.
DEFAULT_FIELDS = r"^(oom_kill|pgpg|pswp|pg.*fault).*"

_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class VmstatConfig(CollectorConfig):
    """Options of the vmstat collector."""

    fields: Regex = DEFAULT_FIELDS
    """Regular expression (searched, as Go's ``MatchString``) selecting the ``/proc/vmstat`` fields."""


@dataclass(frozen=True, slots=True)
class VmStat:
    """The ``(field, value)`` pairs of ``/proc/vmstat`` in file order."""

    fields: tuple[tuple[str, int], ...]


def parse_vmstat(text: str, source: str = "/proc/vmstat") -> VmStat:
    """
    Parse ``/proc/vmstat`` (``pgfault 1168471``, one pair per line).

    Raises:
        ParseError: a line is not ``name value``; the message names ``source`` and the line.
    """
    fields: list[tuple[str, int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ParseError(f"{source}: line {lineno}: expected 'name value': {line!r}")
        try:
            fields.append((parts[0], kernel_int(parts[1])))
        except ValueError:
            raise ParseError(f"{source}: line {lineno}: not an integer in {line!r}") from None
    return VmStat(tuple(fields))


class VmstatCollector(BaseCollector):
    """Reads ``/proc/vmstat`` each cycle and exports the selected fields."""

    def __init__(self, ctx: CollectorContext, cfg: VmstatConfig) -> None:
        self._path = ctx.paths.proc("vmstat")
        self._pattern = re.compile(cfg.fields)
        # field -> (name, help), or None when the pattern rejects it: the regex runs once per field name,
        # not once per line per cycle. The field set is fixed per kernel, so this stays small.
        self._selected: dict[str, tuple[str, str] | None] = {}

    def _select(self, field: str) -> tuple[str, str] | None:
        desc: tuple[str, str] | None = None
        if self._pattern.search(field):
            if not _NAME_RE.match(field):
                raise ParseError(f"{self._path}: field {field!r} does not make a valid metric name")
            desc = (f"node_vmstat_{field}", f"/proc/vmstat information field {field}.")
        self._selected[field] = desc
        return desc

    async def collect(self) -> Sequence[MetricFamily]:
        """Return one untyped family per selected field."""
        stat = parse_vmstat(read_text(self._path), self._path)
        selected = self._selected
        out: list[MetricFamily] = []
        for field, value in stat.fields:
            desc = selected[field] if field in selected else self._select(field)
            if desc is not None:
                out.append(MetricFamily(desc[0], "untyped", desc[1], (), (((), float(value)),)))
        return out


SPEC = CollectorSpec(
    name="vmstat",
    description="Selected virtual memory statistics from /proc/vmstat.",
    config_model=VmstatConfig,
    factory=VmstatCollector,
)
