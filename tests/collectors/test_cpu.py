"""The /proc/stat parser's CPU lines and the cpu collector."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import psutil
import pytest

from nodeagent.collectors import cpu
from nodeagent.collectors.procstat import ProcStat, parse_proc_stat
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect, MakeCollector, by_name

HZ = float(os.sysconf("SC_CLK_TCK"))
MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _proc_with_stat(tmp_path: Path, text: str) -> HostPaths:
    (tmp_path / "stat").write_text(textwrap.dedent(text))
    return HostPaths(procfs=str(tmp_path), sysfs=str(tmp_path), rootfs=str(tmp_path))


def test_parse_per_cpu_lines_skips_aggregate() -> None:
    """The per-CPU lines become ten tick counters each and the aggregate ``cpu`` line is skipped."""
    text = textwrap.dedent(
        """\
        cpu  3895 0 981 336501 249 0 56 121 0 0
        cpu0 1083 0 382 169293 50 0 22 97 5 1
        cpu1 2812 3 599 167207 198 7 34 24 0 0
        ctxt 261913
        btime 1795422900
        """
    )
    expected = (
        ("0", (1083, 0, 382, 169293, 50, 0, 22, 97, 5, 1)),
        ("1", (2812, 3, 599, 167207, 198, 7, 34, 24, 0, 0)),
    )
    assert expected == parse_proc_stat(text).cpus


def test_parse_pads_missing_trailing_columns() -> None:
    """A line from an old kernel with only 7 columns reads the missing steal and guest columns as 0."""
    expected = (("3", (10, 20, 30, 40, 50, 60, 70, 0, 0, 0)),)
    assert expected == parse_proc_stat("cpu3 10 20 30 40 50 60 70\n").cpus


def test_parse_without_cpus_skips_cpu_lines() -> None:
    """``with_cpus=False`` leaves ``cpus`` empty even when the CPU lines are malformed."""
    expected = ProcStat((), 1795422900, None, None, None, None, None)
    assert expected == parse_proc_stat("cpu0 garbage\nbtime 1795422900\n", with_cpus=False)


def test_parse_malformed_cpu_line_names_file_and_line() -> None:
    """A non-integer tick raises a ParseError naming the source and the line number."""
    with pytest.raises(ParseError, match=r"^/host/proc/stat: line 2: not an integer in 'cpu0 1 2 x 4'"):
        parse_proc_stat("cpu  1 2 3 4\ncpu0 1 2 x 4\n", "/host/proc/stat")


def test_parse_short_cpu_line_is_an_error() -> None:
    """A CPU line with fewer than four counters raises a ParseError."""
    with pytest.raises(ParseError, match=r"line 1: expected 'cpuN user nice system idle"):
        parse_proc_stat("cpu0 1 2 3\n")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """Every (cpu, mode) sample is the fixture's tick count divided by USER_HZ."""
    families = await collect(cpu.SPEC, fixture_paths)
    seconds = families["node_cpu_seconds_total"]
    assert ("counter", ("cpu", "mode")) == (seconds.type, seconds.labelnames)
    ticks = {"0": (1083, 0, 382, 169293, 50, 0, 22, 97), "1": (2812, 0, 599, 167207, 198, 0, 34, 24)}
    expected = [((c, mode), t / HZ) for c, row in ticks.items() for mode, t in zip(MODES, row, strict=True)]
    assert expected == list(seconds.samples)
    guest = families["node_cpu_guest_seconds_total"]
    assert "Seconds the CPUs spent in guests (VMs) for each mode." == guest.help
    expected_guest = [(("0", "user"), 0.0), (("0", "nice"), 0.0), (("1", "user"), 0.0), (("1", "nice"), 0.0)]
    assert expected_guest == list(guest.samples)


async def test_counters_never_go_backwards(tmp_path: Path, make_collector: MakeCollector) -> None:
    """An iowait counter that steps back is held at its previous value, as node_exporter does."""
    paths = _proc_with_stat(tmp_path, "cpu0 100 0 100 10000 500 0 0 0 0 0\n")
    collector = make_collector(cpu.SPEC, paths)
    await collector.collect()
    (tmp_path / "stat").write_text("cpu0 101 0 100 10010 450 0 0 0 0 0\n")
    samples = dict(by_name(await collector.collect())["node_cpu_seconds_total"].samples)
    assert 500 / HZ == samples[("0", "iowait")]
    assert 101 / HZ == samples[("0", "user")]


async def test_idle_jump_back_resets_held_values(tmp_path: Path, make_collector: MakeCollector) -> None:
    """Idle dropping by 3 s or more (CPU hot-plug) makes the collector report the new values as they are."""
    paths = _proc_with_stat(tmp_path, "cpu0 100 0 100 10000 500 0 0 0 0 0\n")
    collector = make_collector(cpu.SPEC, paths)
    await collector.collect()
    (tmp_path / "stat").write_text("cpu0 1 0 1 5 0 0 0 0 0 0\n")
    samples = dict(by_name(await collector.collect())["node_cpu_seconds_total"].samples)
    assert (1 / HZ, 5 / HZ, 0.0) == (samples[("0", "user")], samples[("0", "idle")], samples[("0", "iowait")])


async def test_absent_stat_raises_file_not_found(empty_paths: HostPaths, collect: Collect) -> None:
    """A procfs root without ``stat`` is a broken configuration, reported as FileNotFoundError, not no-data."""
    with pytest.raises(FileNotFoundError):
        await collect(cpu.SPEC, empty_paths)


async def test_malformed_stat_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read and the offending line."""
    paths = _proc_with_stat(tmp_path, "cpu  1 2 3 4\ncpu0 1 2 three 4\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/stat: line 2: .*'cpu0 1 2 three 4'"):
        await collect(cpu.SPEC, paths)


async def test_live_matches_psutil(live_paths: HostPaths, collect: Collect) -> None:
    """On this host every (cpu, mode) sample is within 1 s of psutil's own read of /proc/stat right after."""
    families = await collect(cpu.SPEC, live_paths)
    fresh = psutil.cpu_times(percpu=True)
    seconds = dict(families["node_cpu_seconds_total"].samples)
    assert len(fresh) * len(MODES) == len(seconds)
    for (c, mode), value in seconds.items():
        assert abs(getattr(fresh[int(c)], mode) - value) <= 1.0, (c, mode)
    guest = dict(families["node_cpu_guest_seconds_total"].samples)
    for (c, mode), value in guest.items():
        field = "guest" if mode == "user" else "guest_nice"
        assert abs(getattr(fresh[int(c)], field) - value) <= 1.0, (c, mode)
