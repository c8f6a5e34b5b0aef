"""
Memory statistics from ``/proc/meminfo``, one gauge per field.

Families: ``node_memory_<Field>_bytes`` for fields in kB (value x 1024) and ``node_memory_<Field>`` for
counts without a unit (``HugePages_Total`` ...), with node_exporter's names: ``Active(anon)`` becomes
``Active_anon``. Shell equivalent: ``cat /proc/meminfo``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.hostfs import ParseError, kernel_int, read_text
from nodeagent.metrics import MetricFamily, MetricType

_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

MeminfoField = tuple[str, int, bool]
"""``(kernel field name, value, in_bytes)``: value is bytes when the kernel gave kB, else a plain count."""


@dataclass(frozen=True, slots=True)
class Meminfo:
    """The fields of ``/proc/meminfo`` in file order."""

    fields: tuple[MeminfoField, ...]


def parse_meminfo(text: str, source: str = "/proc/meminfo") -> Meminfo:
    """
    Parse ``/proc/meminfo`` (``MemTotal:  16384 kB``, ``HugePages_Total:  0``).

    Raises:
        ParseError: a line is not ``Key: value [kB]``; the message names ``source`` and the line.
    """
    fields: list[MeminfoField] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        key = parts[0]
        if len(parts) not in (2, 3) or not key.endswith(":") or (len(parts) == 3 and parts[2] != "kB"):
            raise ParseError(f"{source}: line {lineno}: expected 'Key: value [kB]': {line!r}")
        try:
            value = kernel_int(parts[1])
        except ValueError:
            raise ParseError(f"{source}: line {lineno}: not an integer in {line!r}") from None
        if len(parts) == 3:
            fields.append((key[:-1], value * 1024, True))
        else:
            fields.append((key[:-1], value, False))
    return Meminfo(tuple(fields))


def metric_suffix(field: str, in_bytes: bool) -> str:
    """node_exporter's name for a field: ``Active(anon)`` -> ``Active_anon``, plus ``_bytes`` if in kB."""
    if "(" in field:
        field = field.replace("(", "_").replace(")", "")
    return field + "_bytes" if in_bytes else field


class MeminfoCollector(BaseCollector):
    """Reads ``/proc/meminfo`` each cycle."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._path = ctx.paths.proc("meminfo")
        # (field, in_bytes) -> (name, type, help); the field set is fixed per kernel, so this stays small.
        self._descs: dict[tuple[str, bool], tuple[str, MetricType, str]] = {}

    def _describe(self, field: str, in_bytes: bool) -> tuple[str, MetricType, str]:
        suffix = metric_suffix(field, in_bytes)
        if not _NAME_RE.match(suffix):
            raise ParseError(f"{self._path}: field {field!r} does not make a valid metric name")
        # node_exporter's rule: a key ending in _total is a counter, everything else a gauge.
        kind: MetricType = "counter" if suffix.endswith("_total") else "gauge"
        desc = (f"node_memory_{suffix}", kind, f"Memory information field {suffix}.")
        self._descs[(field, in_bytes)] = desc
        return desc

    async def collect(self) -> Sequence[MetricFamily]:
        """Return one gauge per ``/proc/meminfo`` field."""
        info = parse_meminfo(read_text(self._path), self._path)
        descs = self._descs
        out: list[MetricFamily] = []
        for field, value, in_bytes in info.fields:
            name, kind, help_ = descs.get((field, in_bytes)) or self._describe(field, in_bytes)
            out.append(MetricFamily(name, kind, help_, (), (((), float(value)),)))
        return out


SPEC = CollectorSpec(
    name="meminfo",
    description="Memory statistics from /proc/meminfo.",
    config_model=CollectorConfig,
    factory=MeminfoCollector,
)
