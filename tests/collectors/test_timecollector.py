"""The clocksource parser and the time collector."""

from __future__ import annotations

import time
from pathlib import Path

from nodeagent.collectors import timecollector
from nodeagent.collectors.timecollector import ClockSource, parse_clocksource
from nodeagent.hostfs import HostPaths
from tests.prereq import missing

from .conftest import Collect, host_has, read_host

CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0"


def test_parse_clocksource() -> None:
    """The available list splits on whitespace and the current one loses its newline."""
    expected = ClockSource("0", ("tsc", "kvm-clock", "hpet", "acpi_pm"), "kvm-clock")
    assert expected == parse_clocksource("0", "tsc kvm-clock hpet acpi_pm \n", "kvm-clock\n")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """The fixture's clocksource0 gives device "0" rows for tsc and kvm-clock, tsc being current."""
    before = time.time()
    families = await collect(timecollector.SPEC, fixture_paths)
    after = time.time()
    available = families["node_time_clocksource_available_info"]
    current = families["node_time_clocksource_current_info"]
    assert ("gauge", ("device", "clocksource")) == (available.type, available.labelnames)
    assert ((("0", "tsc"), 1.0), (("0", "kvm-clock"), 1.0)) == available.samples
    assert ((("0", "tsc"), 1.0),) == current.samples
    assert before <= families["node_time_seconds"].samples[0][1] <= after


async def test_zone_offset_is_local_zone(fixture_paths: HostPaths, collect: Collect) -> None:
    """The zone family carries the local zone's abbreviation and its offset from UTC in seconds."""
    families = await collect(timecollector.SPEC, fixture_paths)
    local = time.localtime()
    assert (((local.tm_zone,), float(local.tm_gmtoff)),) == families["node_time_zone_offset_seconds"].samples


async def test_absent_sysfs_omits_clocksources(empty_paths: HostPaths, collect: Collect) -> None:
    """Without the clocksource directory only the time and zone families are reported."""
    families = await collect(timecollector.SPEC, empty_paths)
    assert {"node_time_seconds", "node_time_zone_offset_seconds"} == set(families)


async def test_clocksource_without_files_is_skipped(tmp_path: Path, collect: Collect) -> None:
    """A clocksource directory missing its files is skipped while later ones keep their index."""
    base = tmp_path / "devices" / "system" / "clocksource"
    (base / "clocksource0").mkdir(parents=True)
    (base / "clocksource1").mkdir()
    (base / "clocksource1" / "available_clocksource").write_text("hpet\n")
    (base / "clocksource1" / "current_clocksource").write_text("hpet\n")
    families = await collect(timecollector.SPEC, HostPaths(sysfs=str(tmp_path)))
    assert ((("1", "hpet"), 1.0),) == families["node_time_clocksource_current_info"].samples


async def test_live_matches_sysfs(live_paths: HostPaths, collect: Collect) -> None:
    """On this host the time is now and the current clocksource is what sysfs says right after."""
    if not host_has(CLOCKSOURCE):
        missing(CLOCKSOURCE)
    families = await collect(timecollector.SPEC, live_paths)
    assert abs(time.time() - families["node_time_seconds"].samples[0][1]) < 1.0
    current = read_host(f"{CLOCKSOURCE}/current_clocksource").strip()
    assert (("0", current), 1.0) in families["node_time_clocksource_current_info"].samples
    available = read_host(f"{CLOCKSOURCE}/available_clocksource").split()
    listed = families["node_time_clocksource_available_info"].samples
    assert available == [cs for (device, cs), _ in listed if device == "0"]
