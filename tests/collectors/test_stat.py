"""The /proc/stat parser's scalar lines and the stat collector."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psutil
import pytest

from nodeagent.collectors import stat
from nodeagent.collectors.procstat import ProcStat, parse_proc_stat
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect


def test_parse_scalars() -> None:
    """btime, ctxt, processes, the first intr number and the procs lines are read; softirq is ignored."""
    text = textwrap.dedent(
        """\
        cpu  3895 0 981 336501 249 0 56 121 0 0
        intr 153534 0 0 0 7 0 341
        ctxt 261913
        btime 1795422900
        processes 4072
        procs_running 3
        procs_blocked 1
        softirq 105353 0 18166 3
        """
    )
    expected = ProcStat((), 1795422900, 261913, 4072, 153534, 3, 1)
    assert expected == parse_proc_stat(text, with_cpus=False)


def test_parse_absent_scalars_are_none() -> None:
    """A scalar line that is absent reads as None rather than 0."""
    expected = ProcStat((), None, 5, None, None, None, None)
    assert expected == parse_proc_stat("ctxt 5\n")


def test_parse_malformed_scalar_names_file_and_line() -> None:
    """A non-integer after a known key raises a ParseError naming the source and the line."""
    with pytest.raises(ParseError, match=r"^/proc/stat: line 2: not an integer after 'btime': 'btime soon'"):
        parse_proc_stat("ctxt 5\nbtime soon\n")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """Each family carries the fixture's number with node_exporter's type."""
    families = await collect(stat.SPEC, fixture_paths)
    expected = {
        "node_boot_time_seconds": ("gauge", 1795422900.0),
        "node_context_switches_total": ("counter", 261913.0),
        "node_forks_total": ("counter", 4072.0),
        "node_intr_total": ("counter", 153534.0),
        "node_procs_running": ("gauge", 1.0),
        "node_procs_blocked": ("gauge", 0.0),
    }
    actual = {name: (f.type, f.samples[0][1]) for name, f in families.items()}
    assert expected == actual


async def test_absent_stat_raises_file_not_found(empty_paths: HostPaths, collect: Collect) -> None:
    """A procfs root without ``stat`` raises FileNotFoundError (a broken root, not a missing feature)."""
    with pytest.raises(FileNotFoundError):
        await collect(stat.SPEC, empty_paths)


async def test_malformed_stat_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read and the line."""
    (tmp_path / "stat").write_text("ctxt 1\nprocesses many\n")
    paths = HostPaths(procfs=str(tmp_path))
    with pytest.raises(ParseError, match=rf"^{tmp_path}/stat: line 2: .*'processes many'"):
        await collect(stat.SPEC, paths)


async def test_live_matches_psutil(live_paths: HostPaths, collect: Collect) -> None:
    """On this host boot time equals psutil's and the counters trail psutil's read right after."""
    families = await collect(stat.SPEC, live_paths)
    value = {name: f.samples[0][1] for name, f in families.items()}
    fresh = psutil.cpu_stats()
    assert psutil.boot_time() == value["node_boot_time_seconds"]
    assert 0 <= fresh.ctx_switches - value["node_context_switches_total"] < 1_000_000
    assert 0 <= fresh.interrupts - value["node_intr_total"] < 1_000_000
    assert value["node_procs_running"] >= 1  # this test itself is running
