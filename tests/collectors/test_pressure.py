"""The PSI parser and the pressure collector."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from nodeagent.collector import NoDataError
from nodeagent.collectors import pressure
from nodeagent.collectors.pressure import Pressure, parse_pressure
from nodeagent.hostfs import HostPaths, ParseError
from tests.prereq import missing

from .conftest import Collect, host_has, read_host


def test_parse_some_and_full() -> None:
    """The ``total=`` of the some and full lines are read in microseconds; the averages are ignored."""
    text = textwrap.dedent(
        """\
        some avg10=0.00 avg60=0.00 avg300=0.05 total=1738272
        full avg10=0.00 avg60=0.00 avg300=0.05 total=1660274
        """
    )
    assert Pressure(1738272, 1660274) == parse_pressure(text)


def test_parse_some_only() -> None:
    """A file with only a some line (cpu on kernels before 5.13) has no full total."""
    assert Pressure(12, None) == parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=12\n")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("half avg10=0.00 total=1", "expected 'some|full avg10=... total=N'"),
        ("full avg10=0.00 avg60=0.00", "expected 'some|full avg10=... total=N'"),
        ("full avg10=0.00 total=lots", "total is not an integer"),
    ],
)
def test_parse_malformed_line_names_file_and_line(line: str, reason: str) -> None:
    """A line that is not ``some|full ... total=N`` raises a ParseError naming the source and the line."""
    with pytest.raises(ParseError, match=rf"^/proc/pressure/io: line 2: {reason}.*{re.escape(repr(line))}"):
        parse_pressure(f"some avg10=0.00 total=1\n{line}\n", "/proc/pressure/io")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """The fixture's totals become seconds; irq, absent from the fixture, is left out and cpu full is ignored."""
    families = await collect(pressure.SPEC, fixture_paths)
    expected = {
        "node_pressure_cpu_waiting_seconds_total": 2.450463,
        "node_pressure_io_waiting_seconds_total": 1.738272,
        "node_pressure_io_stalled_seconds_total": 1.660274,
        "node_pressure_memory_waiting_seconds_total": 0.0,
        "node_pressure_memory_stalled_seconds_total": 0.0,
    }
    assert expected == {name: f.samples[0][1] for name, f in families.items()}
    assert {"counter"} == {f.type for f in families.values()}


async def test_collect_irq(tmp_path: Path, collect: Collect) -> None:
    """An irq file (kernel 6.1+) adds the irq stalled family from its full line."""
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "cpu").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n")
    (tmp_path / "pressure" / "irq").write_text("full avg10=0.00 avg60=0.00 avg300=0.00 total=250000\n")
    families = await collect(pressure.SPEC, HostPaths(procfs=str(tmp_path)))
    expected = {"node_pressure_cpu_waiting_seconds_total": 1.0, "node_pressure_irq_stalled_seconds_total": 0.25}
    assert expected == {name: f.samples[0][1] for name, f in families.items()}


async def test_absent_pressure_dir_is_no_data(empty_paths: HostPaths, collect: Collect) -> None:
    """Without /proc/pressure the collector reports NoDataError with a hint about CONFIG_PSI and psi=1."""
    with pytest.raises(NoDataError) as excinfo:
        await collect(pressure.SPEC, empty_paths)
    assert "CONFIG_PSI" in excinfo.value.hint and "psi=1" in excinfo.value.hint


async def test_malformed_pressure_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the PSI file it read and the offending line."""
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "io").write_text("some total=1\nfull avg10=0.00\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/pressure/io: line 2: .*'full avg10=0.00'"):
        await collect(pressure.SPEC, HostPaths(procfs=str(tmp_path)))


def _fresh_total(resource: str, kind: str) -> float:
    for line in read_host(f"/proc/pressure/{resource}").splitlines():
        if line.startswith(kind):
            return int(line.rsplit("total=", 1)[1]) / 1e6
    raise AssertionError(f"no {kind} line in /proc/pressure/{resource}")


async def test_live_matches_fresh_read(live_paths: HostPaths, collect: Collect) -> None:
    """On this host every total is at most 1 s behind a fresh read of its PSI file."""
    if not host_has("/proc/pressure/cpu"):
        missing("/proc/pressure (kernel with CONFIG_PSI and psi=1)")
    families = await collect(pressure.SPEC, live_paths)
    for name, family in families.items():
        resource, state = name.split("_")[2:4]
        fresh = _fresh_total(resource, "some" if state == "waiting" else "full")
        assert 0 <= fresh - family.samples[0][1] <= 1.0, name
    assert "node_pressure_cpu_waiting_seconds_total" in families
