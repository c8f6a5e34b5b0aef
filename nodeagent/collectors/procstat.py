"""
The one parser of ``/proc/stat``, shared by the ``cpu`` and ``stat`` collectors.

Each collector reads the file itself each cycle; this module only turns its text into ``ProcStat``.
Shell equivalent: ``cat /proc/stat``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.hostfs import ParseError, kernel_int

#: Order of the per-CPU tick columns in ``/proc/stat`` (proc(5)); older kernels print fewer.
CPU_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
_NCOLUMNS = len(CPU_COLUMNS)
_PADDING = (0,) * _NCOLUMNS

CpuTicks = tuple[int, ...]
"""The ten tick counters of one CPU, in ``CPU_COLUMNS`` order, in USER_HZ ticks."""


@dataclass(frozen=True, slots=True)
class ProcStat:
    """
    What ``/proc/stat`` says. ``cpus`` holds ``(cpu number as text, ticks)`` per ``cpuN`` line
    (the aggregate ``cpu`` line is skipped); a scalar is ``None`` when its line is absent.
    """

    cpus: tuple[tuple[str, CpuTicks], ...]
    boot_time: int | None
    context_switches: int | None
    forks: int | None
    interrupts: int | None
    procs_running: int | None
    procs_blocked: int | None


# Line key -> ProcStat field of the single-number lines.
_SCALARS = {
    "btime": "boot_time",
    "ctxt": "context_switches",
    "processes": "forks",
    "intr": "interrupts",
    "procs_running": "procs_running",
    "procs_blocked": "procs_blocked",
}


def parse_proc_stat(text: str, source: str = "/proc/stat", *, with_cpus: bool = True) -> ProcStat:
    """
    Parse ``/proc/stat``.

    ``with_cpus=False`` skips the per-CPU lines (hundreds on a big host) for callers that only need
    the scalars. Missing trailing CPU columns (kernels before 2.6.33, OpenVZ) read as 0.

    Raises:
        ParseError: a line has the wrong shape; the message names ``source``, the line number and the line.
    """
    cpus: list[tuple[str, CpuTicks]] = []
    scalars: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("cpu"):
            if not with_cpus or line.startswith("cpu "):
                continue
            fields = line.split()
            cpu = fields[0][3:]
            if not cpu.isdigit() or len(fields) < 5:
                raise ParseError(f"{source}: line {lineno}: expected 'cpuN user nice system idle ...': {line!r}")
            try:
                ticks = tuple(map(kernel_int, fields[1 : _NCOLUMNS + 1]))
            except ValueError:
                raise ParseError(f"{source}: line {lineno}: not an integer in {line!r}") from None
            if len(ticks) < _NCOLUMNS:
                ticks += _PADDING[len(ticks) :]
            cpus.append((cpu, ticks))
            continue
        key, _, rest = line.partition(" ")
        field = _SCALARS.get(key)
        if field is None:
            continue
        # Only the first number matters; intr is followed by one count per IRQ (thousands of them).
        first = rest.lstrip(" ").partition(" ")[0]
        try:
            scalars[field] = kernel_int(first)
        except ValueError:
            raise ParseError(f"{source}: line {lineno}: not an integer after {key!r}: {line[:80]!r}") from None
    return ProcStat(
        cpus=tuple(cpus),
        boot_time=scalars.get("boot_time"),
        context_switches=scalars.get("context_switches"),
        forks=scalars.get("forks"),
        interrupts=scalars.get("interrupts"),
        procs_running=scalars.get("procs_running"),
        procs_blocked=scalars.get("procs_blocked"),
    )
