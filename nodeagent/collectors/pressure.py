"""
Pressure stall information (PSI) from ``/proc/pressure/{cpu,io,memory,irq}``.

Families (counters in seconds, node_exporter names; waiting = ``some``, stalled = ``full``):
``node_pressure_cpu_waiting_seconds_total``, ``node_pressure_io_waiting_seconds_total``,
``node_pressure_io_stalled_seconds_total``, ``node_pressure_memory_waiting_seconds_total``,
``node_pressure_memory_stalled_seconds_total``, ``node_pressure_irq_stalled_seconds_total`` (kernel >= 6.1
with IRQ time accounting; omitted where the file is absent). Shell equivalent: ``grep . /proc/pressure/*``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.hostfs import ParseError, SourceReadError, kernel_int, read_text
from nodeagent.metrics import MetricFamily, single

_NO_PSI_HINT = (
    "pressure stall information needs Linux >= 4.20 built with CONFIG_PSI=y; "
    "a kernel built with CONFIG_PSI_DEFAULT_DISABLED=y also needs the psi=1 boot option"
)

# (resource, kind, family name, help) in exposition order.
_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    (
        "cpu",
        "some",
        "node_pressure_cpu_waiting_seconds_total",
        "Total time in seconds that processes have waited for CPU time.",
    ),
    (
        "io",
        "some",
        "node_pressure_io_waiting_seconds_total",
        "Total time in seconds that processes have waited due to IO congestion.",
    ),
    (
        "io",
        "full",
        "node_pressure_io_stalled_seconds_total",
        "Total time in seconds no process could make progress due to IO congestion.",
    ),
    (
        "memory",
        "some",
        "node_pressure_memory_waiting_seconds_total",
        "Total time in seconds that processes have waited for memory.",
    ),
    (
        "memory",
        "full",
        "node_pressure_memory_stalled_seconds_total",
        "Total time in seconds no process could make progress due to memory congestion.",
    ),
    (
        "irq",
        "full",
        "node_pressure_irq_stalled_seconds_total",
        "Total time in seconds no process could make progress due to IRQ congestion.",
    ),
)
_RESOURCES = ("cpu", "io", "memory", "irq")


@dataclass(frozen=True, slots=True)
class Pressure:
    """The ``total=`` stall times of one PSI file, in microseconds; ``None`` where the line is absent."""

    some_us: int | None
    full_us: int | None


def parse_pressure(text: str, source: str = "/proc/pressure/cpu") -> Pressure:
    """
    Parse one PSI file (``some avg10=0.00 avg60=0.00 avg300=0.00 total=12345`` and a ``full`` line).

    Raises:
        ParseError: a line is not ``some|full ... total=N``; the message names ``source`` and the line.
    """
    totals: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        kind = parts[0]
        total = next((p for p in parts[1:] if p.startswith("total=")), None)
        if kind not in ("some", "full") or total is None:
            raise ParseError(f"{source}: line {lineno}: expected 'some|full avg10=... total=N': {line!r}")
        try:
            totals[kind] = kernel_int(total[6:])
        except ValueError:
            raise ParseError(f"{source}: line {lineno}: total is not an integer in {line!r}") from None
    return Pressure(totals.get("some"), totals.get("full"))


class PressureCollector(BaseCollector):
    """Reads the PSI files each cycle."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._dir = ctx.paths.proc("pressure")
        self._paths = {res: os.path.join(self._dir, res) for res in _RESOURCES}

    def _read(self, resource: str, path: str) -> str | None:
        """One PSI file's text; ``None`` when that file is absent but PSI as a whole is there."""
        try:
            return read_text(path)
        except FileNotFoundError:
            if resource == "cpu" and not os.path.isdir(self._dir):
                raise NoDataError(f"{self._dir} does not exist", _NO_PSI_HINT) from None
            return None  # irq needs kernel 6.1+ with IRQ time accounting; an absent file is not reported
        except SourceReadError as exc:
            # Kernels that keep the files when PSI is disabled at boot refuse the read instead.
            if exc.errno == errno.EOPNOTSUPP:
                raise NoDataError(f"{path}: pressure stall information is disabled", _NO_PSI_HINT) from None
            raise

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the stall totals in seconds; ``NoDataError`` when the kernel has no PSI."""
        parsed: dict[str, Pressure] = {}
        for res, path in self._paths.items():
            text = self._read(res, path)
            if text is not None:
                parsed[res] = parse_pressure(text, path)
        out: list[MetricFamily] = []
        for res, kind, name, help_ in _FAMILIES:
            pressure = parsed.get(res)
            if pressure is None:
                continue
            total = pressure.some_us if kind == "some" else pressure.full_us
            if total is not None:
                out.append(single(name, "counter", help_, total / 1_000_000))
        return out


SPEC = CollectorSpec(
    name="pressure",
    description="Pressure stall information (PSI) from /proc/pressure.",
    config_model=CollectorConfig,
    factory=PressureCollector,
)
