"""The adjtimex(2) struct layout, the pure timex conversion and the timex collector."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import struct
from collections.abc import Callable

import pytest

from nodeagent.collector import CollectorConfig, NoDataError
from nodeagent.collectors.timex import TimexCollector
from nodeagent.hostfs import HostPaths
from nodeagent.sources.timex import TIME_ERROR, AdjtimexReader, RawTimex, Timex, TimexValues, timex_values
from tests.prereq import missing

from .conftest import by_name, make_ctx

# A clock disciplined by chrony: STA_PLL | STA_NANO, so offset and jitter are in ns. Values are made up.
SYNCED = RawTimex(
    state=0,
    offset=-1_500_000,
    freq=64_000_000,
    maxerror=16_000_000,
    esterror=250_000,
    status=0x2001,
    constant=6,
    tick=10000,
    ppsfreq=131072,
    jitter=2000,
    shift=4,
    stabil=32768,
    jitcnt=3,
    calcnt=12,
    errcnt=1,
    stbcnt=2,
    tai=37,
)


def _collector(read: Callable[[], RawTimex]) -> TimexCollector:
    return TimexCollector(make_ctx("timex", HostPaths()), CollectorConfig(), read=read)


def _failing(err: int) -> Callable[[], RawTimex]:
    def read() -> RawTimex:
        raise OSError(err, f"adjtimex: {errno.errorcode[err]}")

    return read


@pytest.mark.skipif(struct.calcsize("P") != 8, reason="the layout under test is the 64-bit Linux one")
def test_struct_layout_is_glibc_64bit() -> None:
    """struct timex is 208 bytes with glibc's field offsets (status 40, time 72, tick 88, shift 112, tai 160)."""
    expected = (208, 8, 40, 72, 88, 112, 160)
    actual = (
        ctypes.sizeof(Timex),
        Timex.offset.offset,
        Timex.status.offset,
        Timex.time.offset,
        Timex.tick.offset,
        Timex.shift.offset,
        Timex.tai.offset,
    )
    assert expected == actual


def test_values_nanosecond_status() -> None:
    """With STA_NANO offset and jitter are ns; errors and tick are us; frequencies are scaled ppm."""
    expected = TimexValues(
        sync_status=1.0,
        offset_seconds=-0.0015,
        frequency_adjustment_ratio=1.0009765625,
        maxerror_seconds=16.0,
        estimated_error_seconds=0.25,
        status=8193.0,
        loop_time_constant=6.0,
        tick_seconds=0.01,
        pps_frequency_hertz=2e-06,
        pps_jitter_seconds=2e-06,
        pps_shift_seconds=4.0,
        pps_stability_hertz=5e-07,
        pps_jitter_total=3.0,
        pps_calibration_total=12.0,
        pps_error_total=1.0,
        pps_stability_exceeded_total=2.0,
        tai_offset_seconds=37.0,
    )
    assert expected == timex_values(SYNCED)


def test_values_microsecond_status() -> None:
    """Without STA_NANO offset and jitter are microseconds."""
    values = timex_values(dataclasses.replace(SYNCED, status=0x0001, offset=1500, jitter=2))
    assert (0.0015, 2e-06) == (values.offset_seconds, values.pps_jitter_seconds)


@pytest.mark.parametrize(("state", "synced"), [(0, 1.0), (1, 1.0), (4, 1.0), (TIME_ERROR, 0.0)])
def test_sync_status_is_zero_only_for_time_error(state: int, synced: float) -> None:
    """sync_status is 0 only when adjtimex returns TIME_ERROR (5)."""
    assert synced == timex_values(dataclasses.replace(SYNCED, state=state)).sync_status


async def test_collect_injected_reading() -> None:
    """One reading gives node_exporter's 17 families, four of them counters, with converted values."""
    families = by_name(await _collector(lambda: SYNCED).collect())
    assert 17 == len(families)
    expected_counters = {
        "node_timex_pps_jitter_total",
        "node_timex_pps_calibration_total",
        "node_timex_pps_error_total",
        "node_timex_pps_stability_exceeded_total",
    }
    assert expected_counters == {name for name, f in families.items() if f.type == "counter"}
    picked = {name: families[name].samples for name in ("node_timex_offset_seconds", "node_timex_sync_status")}
    assert {"node_timex_offset_seconds": (((), -0.0015),), "node_timex_sync_status": (((), 1.0),)} == picked
    assert "Seconds between clock ticks." == families["node_timex_tick_seconds"].help


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS])
async def test_forbidden_syscall_is_no_data(err: int) -> None:
    """adjtimex refused by seccomp (EPERM) or missing (ENOSYS) is no data, with a hint about seccomp."""
    with pytest.raises(NoDataError) as excinfo:
        await _collector(_failing(err)).collect()
    assert "seccomp" in excinfo.value.hint


async def test_other_errors_propagate() -> None:
    """Any other adjtimex failure is a real error of the cycle."""
    with pytest.raises(OSError, match="EINVAL"):
        await _collector(_failing(errno.EINVAL)).collect()


class _NtpTimeval(ctypes.Structure):
    """glibc's ``struct ntptimeval`` on 64-bit Linux: timeval, maxerror, esterror, tai, 4 reserved longs."""

    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("tai", ctypes.c_long),
        ("reserved", ctypes.c_long * 4),
    ]


def _ntp_gettime() -> tuple[int, _NtpTimeval]:
    """An independent read of the clock state through glibc's ntp_gettime(3)."""
    tv = _NtpTimeval()
    state = ctypes.CDLL(None).ntp_gettime(ctypes.byref(tv))
    return state, tv


@pytest.mark.skipif(struct.calcsize("P") != 8, reason="the layout under test is the 64-bit Linux one")
async def test_live_matches_ntp_gettime() -> None:
    """On this host sync status, errors and TAI offset agree with ntp_gettime(3) read right after."""
    collector = TimexCollector(make_ctx("timex", HostPaths()), CollectorConfig())
    try:
        values = {f.name: f.samples[0][1] for f in await collector.collect()}
    except NoDataError as exc:
        missing(f"adjtimex(2) allowed for this process ({exc})")
    state, tv = _ntp_gettime()
    assert (0.0 if state == TIME_ERROR else 1.0) == values["node_timex_sync_status"]
    assert float(tv.tai) == values["node_timex_tai_offset_seconds"]
    assert abs(tv.maxerror / 1e6 - values["node_timex_maxerror_seconds"]) < 0.01
    assert tv.esterror / 1e6 == values["node_timex_estimated_error_seconds"]
    # tick is 1e6/CONFIG_HZ us, steered by at most 10 % (adjtimex(2)); CONFIG_HZ is 100, 250, 300 or 1000.
    hz = 1.0 / values["node_timex_tick_seconds"]
    assert any(abs(hz - k) <= 0.1 * k for k in (100, 250, 300, 1000)), hz


def test_reader_reads_without_privilege() -> None:
    """A read-only adjtimex call succeeds for this process and returns a known clock state."""
    try:
        raw = AdjtimexReader().read()
    except PermissionError:
        missing("adjtimex(2) allowed by this process's seccomp profile")
    assert raw.state in (0, 1, 2, 3, 4, 5)
