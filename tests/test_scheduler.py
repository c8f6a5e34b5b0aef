"""The scheduler: cycles, timeouts, failure isolation, no overlap, skipped ticks, trace ids."""

from __future__ import annotations

import asyncio
import errno
import re
import time
from collections.abc import Sequence

import structlog
from structlog.testing import capture_logs

from nodeagent.collector import FAILURE_REASONS, NoDataError, SourceUnavailable, failure_reason
from nodeagent.exposition import Exposition
from nodeagent.hostfs import ParseError
from nodeagent.metrics import MetricFamily, single
from nodeagent.scheduler import CollectorRunner, CollectorState, Scheduler


class Scripted:
    """A collector whose behaviour each cycle is given by a function."""

    def __init__(self, behaviour) -> None:  # type: ignore[no-untyped-def]
        self.behaviour = behaviour
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.closed = False

    async def collect(self) -> Sequence[MetricFamily]:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self.behaviour(self.calls)
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        self.closed = True


def _runner(name: str, collector: Scripted, exposition: Exposition, interval: float = 1.0, timeout: float = 1.0):  # type: ignore[no-untyped-def]
    state = CollectorState(name, interval, timeout)
    return CollectorRunner(name, collector, state, exposition, log=structlog.get_logger())


async def test_failure_drops_only_that_collectors_families() -> None:
    """A raising collector publishes nothing and reports success 0; its neighbour is unaffected."""

    async def good(_: int) -> Sequence[MetricFamily]:
        return [single("good_metric", "gauge", "Good.", 1)]

    async def bad(_: int) -> Sequence[MetricFamily]:
        raise RuntimeError("disk on fire")

    exposition = Exposition(["good", "bad"], lambda: [])
    runners = [_runner("good", Scripted(good), exposition), _runner("bad", Scripted(bad), exposition)]
    with capture_logs() as logs:
        await Scheduler(runners).run_all_once()
    body = exposition.body(False, False).decode()

    assert "good_metric 1\n" in body
    assert (True, False) == (runners[0].state.success, runners[1].state.success)
    assert {"error": 1, "timeout": 0} == runners[1].state.failures
    assert "RuntimeError: disk on fire" == runners[1].state.last_error
    failed = [e for e in logs if e["event"] == "collector.failed"]
    assert 1 == len(failed)
    assert "RuntimeError: disk on fire" == failed[0]["error"]["message"]


async def test_timeout_fails_the_cycle_and_next_cycle_recovers() -> None:
    """A cycle that exceeds its timeout fails as 'timeout'; a later quick cycle succeeds and publishes."""

    async def slow_then_fast(call: int) -> Sequence[MetricFamily]:
        if call == 1:
            await asyncio.sleep(10)
        return [single("m", "gauge", "M.", call)]

    exposition = Exposition(["c"], lambda: [])
    runner = _runner("c", Scripted(slow_then_fast), exposition, timeout=0.05)
    started = time.monotonic()
    await runner.run_once()

    assert time.monotonic() - started < 1
    assert (False, 1) == (runner.state.success, runner.state.failures["timeout"])
    await runner.run_once()
    assert runner.state.success
    assert b"m 2\n" in exposition.body(False, False)


async def test_repeated_identical_error_is_logged_once() -> None:
    """The same error on every cycle is logged once, not every cycle."""

    async def bad(_: int) -> Sequence[MetricFamily]:
        raise OSError("EIO")

    runner = _runner("c", Scripted(bad), Exposition(["c"], lambda: []))
    with capture_logs() as logs:
        for _ in range(5):
            await runner.run_once()

    assert 1 == len([e for e in logs if e["event"] == "collector.failed"])
    assert 5 == runner.state.failures["error"]


async def test_nodata_is_success_without_data() -> None:
    """NoDataError is not a failure: success 1, has_data 0, reason kept for doctor and the index page."""

    async def absent(_: int) -> Sequence[MetricFamily]:
        raise NoDataError("no GPU here", "install the driver")

    runner = _runner("c", Scripted(absent), Exposition(["c"], lambda: []))
    await runner.run_once()

    assert (True, False, "nodata", "no GPU here") == (
        runner.state.success,
        runner.state.has_data,
        runner.state.status,
        runner.state.nodata_reason,
    )


async def test_never_overlaps_and_counts_skipped_ticks() -> None:
    """A collector that blocks the loop past its interval never runs twice at once; missed ticks are counted."""

    async def blocking(_: int) -> Sequence[MetricFamily]:
        time.sleep(0.25)  # noqa: ASYNC251 - blocks the loop, as a misbehaving collector would
        return []

    collector = Scripted(blocking)
    runner = _runner("c", collector, Exposition(["c"], lambda: []), interval=0.1, timeout=0.1)
    scheduler = Scheduler([runner])
    scheduler.start()
    await asyncio.sleep(0.9)
    await scheduler.stop()

    assert 1 == collector.max_active
    assert collector.calls >= 2
    assert runner.state.skipped >= 2 * (collector.calls - 1)
    assert collector.closed


async def test_cycles_run_on_the_interval() -> None:
    """A quick collector on a 0.1 s interval runs about 10 times a second, with no skips."""

    async def quick(_: int) -> Sequence[MetricFamily]:
        return []

    collector = Scripted(quick)
    scheduler = Scheduler([_runner("c", collector, Exposition(["c"], lambda: []), interval=0.1, timeout=0.1)])
    scheduler.start()
    await asyncio.sleep(1.05)
    await scheduler.stop()

    assert 9 <= collector.calls <= 12


async def test_each_cycle_has_its_own_trace_id() -> None:
    """Log lines inside a cycle carry a W3C trace id (32 hex) and span id (16 hex), new for each cycle."""

    async def chatty(call: int) -> Sequence[MetricFamily]:
        structlog.get_logger().info("inside", call=call)
        structlog.get_logger().info("inside.again", call=call)
        return []

    structlog.configure(processors=[structlog.contextvars.merge_contextvars, structlog.testing.LogCapture()])
    capture = structlog.get_config()["processors"][-1]
    try:
        runner = _runner("c", Scripted(chatty), Exposition(["c"], lambda: []))
        await runner.run_once()
        await runner.run_once()
    finally:
        structlog.reset_defaults()
    inside = [e for e in capture.entries if e["event"].startswith("inside")]
    traces = [e["trace.id"] for e in inside]

    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in traces)
    assert all(re.fullmatch(r"[0-9a-f]{16}", e["span.id"]) for e in inside)
    assert traces[0] == traces[1] != traces[2] == traces[3]
    assert "c" == inside[0]["nodeagent.collector"]


async def test_collector_that_cannot_start_fails_its_cycles_only() -> None:
    """A factory that raises leaves the agent running; that collector's cycles fail with the start-up error."""
    from nodeagent.agent import Agent
    from nodeagent.collector import CollectorSpec
    from nodeagent.collectors import COLLECTORS
    from nodeagent.config import build_config

    def broken_factory(ctx, cfg):  # type: ignore[no-untyped-def]
        raise PermissionError("cannot open /dev/nvidiactl")

    original = COLLECTORS["loadavg"]
    COLLECTORS["loadavg"] = CollectorSpec("loadavg", "x", original.config_model, broken_factory)
    try:
        agent = Agent(build_config(environ={}), names=["loadavg", "stat"])
    finally:
        COLLECTORS["loadavg"] = original
    await agent.scheduler.run_all_once()

    assert (False, True) == (agent.states["loadavg"].success, agent.states["stat"].success)
    assert "collector did not start: PermissionError: cannot open /dev/nvidiactl" in agent.states["loadavg"].last_error


async def test_failures_are_counted_by_reason() -> None:
    """Each kind of failure is counted and logged under its own reason; errno reasons survive wrapping."""
    errors: list[BaseException] = [
        PermissionError(errno.EACCES, "Permission denied", "/run/containerd/containerd.sock"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/pressure/cpu"),
        ParseError("/proc/stat line 3: expected 10 fields"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        SourceUnavailable("GPU 0 is lost"),
        RuntimeError("disk on fire"),
    ]

    async def failing(call: int) -> Sequence[MetricFamily]:
        if call == len(errors) + 1:
            try:
                raise PermissionError(errno.EPERM, "Operation not permitted")
            except PermissionError as exc:
                raise RuntimeError("setns failed") from exc
        raise errors[call - 1]

    exposition = Exposition(["x"], lambda: [])
    runner = _runner("x", Scripted(failing), exposition)
    with capture_logs() as logs:
        for _ in range(len(errors) + 1):
            await runner.run_once()

    assert {
        "error": 1,
        "timeout": 0,
        "permission_denied": 2,
        "not_found": 1,
        "parse_error": 1,
        "unavailable": 2,
    } == runner.state.failures
    assert [
        "permission_denied",
        "not_found",
        "parse_error",
        "unavailable",
        "unavailable",
        "error",
        "permission_denied",
    ] == [e["reason"] for e in logs if e["event"] == "collector.failed"]
    assert set(runner.state.failures) <= set(FAILURE_REASONS)


def test_failure_reason_of_plain_errors() -> None:
    """Timeouts in any form are timeouts; an OSError with an unlisted errno is an error."""
    assert "timeout" == failure_reason(TimeoutError())
    assert "timeout" == failure_reason(OSError(errno.ETIMEDOUT, "Connection timed out"))
    assert "error" == failure_reason(OSError(errno.EIO, "Input/output error"))
    assert "error" == failure_reason(ValueError("bad"))
