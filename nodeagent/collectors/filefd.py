"""
System-wide file handle counts from ``/proc/sys/fs/file-nr``.

Families: ``node_filefd_allocated``, ``node_filefd_maximum`` (gauges, node_exporter names).
Shell equivalent: ``cat /proc/sys/fs/file-nr`` (allocated, unused (always 0 since 2.6), maximum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.hostfs import ParseError, kernel_int, read_text
from nodeagent.metrics import MetricFamily, single


@dataclass(frozen=True, slots=True)
class FileNr:
    """Allocated and maximum file handles."""

    allocated: int
    maximum: int


def parse_file_nr(text: str, source: str = "/proc/sys/fs/file-nr") -> FileNr:
    """
    Parse ``/proc/sys/fs/file-nr`` (``1184\\t0\\t9223372036854775807``).

    Raises:
        ParseError: not three integers; the message names ``source`` and the content.
    """
    fields = text.split()
    if len(fields) != 3:
        raise ParseError(f"{source}: line 1: expected 3 fields, got {text.strip()!r}")
    try:
        return FileNr(kernel_int(fields[0]), kernel_int(fields[2]))
    except ValueError:
        raise ParseError(f"{source}: line 1: not an integer in {text.strip()!r}") from None


class FilefdCollector(BaseCollector):
    """Reads ``/proc/sys/fs/file-nr`` each cycle."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._path = ctx.paths.proc("sys", "fs", "file-nr")

    async def collect(self) -> Sequence[MetricFamily]:
        """Return allocated and maximum file handles."""
        nr = parse_file_nr(read_text(self._path), self._path)
        return (
            single(
                "node_filefd_allocated",
                "gauge",
                "File descriptor statistics: allocated.",
                float(nr.allocated),
            ),
            single("node_filefd_maximum", "gauge", "File descriptor statistics: maximum.", float(nr.maximum)),
        )


SPEC = CollectorSpec(
    name="filefd",
    description="Allocated and maximum file handles from /proc/sys/fs/file-nr.",
    config_model=CollectorConfig,
    factory=FilefdCollector,
)
