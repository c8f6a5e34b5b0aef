"""
The kernel clock discipline state from adjtimex(2), read-only (``modes = 0``), through libc via ctypes.

``AdjtimexReader`` owns the syscall; ``timex_values`` is the pure conversion to base units that the
``timex`` collector publishes (node_exporter ``collector/timex.go``). The struct layout is glibc's
``struct timex`` for 64-bit Linux (x86_64, aarch64): 208 bytes, 11 trailing padding ints.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

TIME_ERROR = 5
"""adjtimex(2) return value when the clock is not synchronised."""

STA_NANO = 0x2000
"""``status`` bit: ``offset`` and ``jitter`` are in nanoseconds instead of microseconds."""

_NANOSECONDS = 1e9
_MICROSECONDS = 1e6
_PPM16FRAC = 1e6 * 65536.0  # "scaled ppm": ppm with a 16-bit binary fraction, see NOTES in adjtimex(2)


class Timeval(ctypes.Structure):
    """``struct timeval`` on 64-bit Linux."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """glibc's ``struct timex`` on 64-bit Linux (``__syscall_slong_t`` is ``long``); natural alignment."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


TIMEX_SIZE = 208
"""``sizeof(struct timex)`` on 64-bit Linux."""


@dataclass(frozen=True, slots=True)
class RawTimex:
    """The adjtimex(2) return value (clock state) and the struct fields, in the kernel's units."""

    state: int
    offset: int
    freq: int
    maxerror: int
    esterror: int
    status: int
    constant: int
    tick: int
    ppsfreq: int
    jitter: int
    shift: int
    stabil: int
    jitcnt: int
    calcnt: int
    errcnt: int
    stbcnt: int
    tai: int


@dataclass(frozen=True, slots=True)
class TimexValues:
    """The clock discipline state in base units, one field per ``node_timex_*`` family."""

    sync_status: float
    offset_seconds: float
    frequency_adjustment_ratio: float
    maxerror_seconds: float
    estimated_error_seconds: float
    status: float
    loop_time_constant: float
    tick_seconds: float
    pps_frequency_hertz: float
    pps_jitter_seconds: float
    pps_shift_seconds: float
    pps_stability_hertz: float
    pps_jitter_total: float
    pps_calibration_total: float
    pps_error_total: float
    pps_stability_exceeded_total: float
    tai_offset_seconds: float


def timex_values(raw: RawTimex) -> TimexValues:
    """
    Convert adjtimex(2) fields as node_exporter does.

    ``offset`` and ``jitter`` are ns when ``STA_NANO`` is set, else us; ``maxerror``, ``esterror`` and
    ``tick`` are always us; ``freq``, ``ppsfreq`` and ``stabil`` are scaled ppm (2^-16 ppm units, so the
    ratio is 1 + freq / 2^16 / 1e6);
    ``shift`` is reported unconverted (it is log2 of the PPS interval in seconds), as node_exporter does.
    """
    divisor = _NANOSECONDS if raw.status & STA_NANO else _MICROSECONDS
    return TimexValues(
        sync_status=0.0 if raw.state == TIME_ERROR else 1.0,
        offset_seconds=raw.offset / divisor,
        frequency_adjustment_ratio=1.0 + raw.freq / _PPM16FRAC,
        maxerror_seconds=raw.maxerror / _MICROSECONDS,
        estimated_error_seconds=raw.esterror / _MICROSECONDS,
        status=float(raw.status),
        loop_time_constant=float(raw.constant),
        tick_seconds=raw.tick / _MICROSECONDS,
        pps_frequency_hertz=raw.ppsfreq / _PPM16FRAC,
        pps_jitter_seconds=raw.jitter / divisor,
        pps_shift_seconds=float(raw.shift),
        pps_stability_hertz=raw.stabil / _PPM16FRAC,
        pps_jitter_total=float(raw.jitcnt),
        pps_calibration_total=float(raw.calcnt),
        pps_error_total=float(raw.errcnt),
        pps_stability_exceeded_total=float(raw.stbcnt),
        tai_offset_seconds=float(raw.tai),
    )


class AdjtimexReader:
    """
    Calls libc ``adjtimex`` with ``modes = 0`` (read only; needs no privilege).

    Raises ``OSError`` at construction when libc has no ``adjtimex`` or the struct layout is not the 64-bit
    one (32-bit userland), and from ``read`` when the call fails (``EPERM`` under a seccomp profile).
    """

    def __init__(self) -> None:
        if ctypes.sizeof(Timex) != TIMEX_SIZE:
            raise OSError(f"struct timex is {ctypes.sizeof(Timex)} bytes here, not the 64-bit Linux layout")
        try:
            fn = ctypes.CDLL(None, use_errno=True).adjtimex
        except AttributeError:
            raise OSError("libc has no adjtimex") from None
        fn.argtypes = [ctypes.POINTER(Timex)]
        fn.restype = ctypes.c_int
        self._adjtimex = fn

    def read(self) -> RawTimex:
        """One adjtimex(2) call."""
        tx = Timex()  # zeroed: modes = 0 reads without adjusting anything
        state = self._adjtimex(ctypes.byref(tx))
        if state == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"adjtimex: {os.strerror(err)}")
        return RawTimex(
            state=state,
            offset=tx.offset,
            freq=tx.freq,
            maxerror=tx.maxerror,
            esterror=tx.esterror,
            status=tx.status,
            constant=tx.constant,
            tick=tx.tick,
            ppsfreq=tx.ppsfreq,
            jitter=tx.jitter,
            shift=tx.shift,
            stabil=tx.stabil,
            jitcnt=tx.jitcnt,
            calcnt=tx.calcnt,
            errcnt=tx.errcnt,
            stbcnt=tx.stbcnt,
            tai=tx.tai,
        )
