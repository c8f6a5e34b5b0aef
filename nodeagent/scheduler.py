"""
Runs each enabled collector on its own interval, under a timeout, never two runs of one collector at
once, and publishes each finished cycle to the exposition.

A cycle that fails or times out drops that collector's families (stale values never pose as live),
sets its success to 0, and is logged once per distinct error; the next cycle tries again. Every cycle
runs with its own W3C trace id bound to the log context.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from nodeagent.collector import Collector, NoDataError, failure_reason
from nodeagent.exposition import Exposition
from nodeagent.metrics import MetricFamily

# A failure that keeps repeating is logged again at most this often.
ERROR_REPEAT_SECONDS = 300.0


@dataclass(slots=True)
class CollectorState:
    """What the agent knows about one collector's cycles; read by self-metrics, /readyz and /."""

    name: str
    interval: float
    timeout: float
    cycles: int = 0
    success: bool = False
    has_data: bool = False
    last_duration: float = 0.0
    last_success_time: float = 0.0
    skipped: int = 0
    # Failed cycles by reason (nodeagent.collector.FAILURE_REASONS); error and timeout exist from the start, the
    # rarer reasons from their first occurrence.
    failures: dict[str, int] = field(default_factory=lambda: {"error": 0, "timeout": 0})
    last_error: str = ""
    nodata_reason: str = ""
    series: int = 0
    _last_logged_error: str = ""
    _last_logged_at: float = 0.0

    @property
    def ready(self) -> bool:
        """Whether a first cycle has finished, whatever its outcome."""
        return self.cycles > 0

    @property
    def status(self) -> str:
        """``pending``, ``ok``, ``nodata`` or ``failed``."""
        if not self.cycles:
            return "pending"
        if not self.success:
            return "failed"
        return "ok" if self.has_data else "nodata"


def new_trace_ids() -> tuple[str, str]:
    """A W3C trace id (32 hex) and span id (16 hex)."""
    return secrets.token_hex(16), secrets.token_hex(8)


class CollectorRunner:
    """Owns one collector: its cycles, its state, and publishing its snapshot."""

    def __init__(
        self,
        name: str,
        collector: Collector,
        state: CollectorState,
        exposition: Exposition,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.name = name
        self.collector = collector
        self.state = state
        self._exposition = exposition
        self._log = log
        self._running = asyncio.Lock()

    async def run_once(self) -> None:
        """One cycle: collect under the timeout, publish, update state. Never raises (but cancellation)."""
        if self._running.locked():
            # A second request while a cycle runs (a timer tick racing `once`/doctor): never run twice at once.
            self.state.skipped += 1
            return
        async with self._running:
            trace_id, span_id = new_trace_ids()
            with structlog.contextvars.bound_contextvars(
                **{"trace.id": trace_id, "span.id": span_id, "nodeagent.collector": self.name}
            ):
                await self._cycle()

    async def _cycle(self) -> None:
        state = self.state
        started = time.monotonic()
        families: Sequence[MetricFamily] = ()
        outcome = "ok"
        error = ""
        try:
            async with asyncio.timeout(state.timeout):
                families = await self.collector.collect()
        except NoDataError as exc:
            outcome = "nodata"
            error = exc.reason
        except TimeoutError as exc:
            outcome = "timeout"
            # The scheduler's own timeout has no message; a collector's (a stuck source) says what hung.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else f"cycle exceeded its timeout of {state.timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - a collector bug must not stop the agent
            outcome = failure_reason(exc)
            error = f"{type(exc).__name__}: {exc}"
        duration = time.monotonic() - started
        state.cycles += 1
        state.last_duration = duration
        state.series = self._exposition.publish(self.name, families if outcome == "ok" else ())
        if outcome in ("ok", "nodata"):
            recovered = not state.success and state.cycles > 1 and state.last_error
            state.success = True
            state.has_data = outcome == "ok"
            state.last_success_time = time.time()
            if outcome == "nodata" and error != state.nodata_reason:
                self._log.debug("collector.nodata", reason=error)
            state.nodata_reason = error if outcome == "nodata" else ""
            if recovered:
                self._log.info("collector.recovered", after_error=state.last_error)
            state.last_error = ""
            state._last_logged_error = ""
        else:
            state.success = False
            state.has_data = False
            state.failures[outcome] = state.failures.get(outcome, 0) + 1
            state.last_error = error
            self._log_failure(outcome, error)
        self._log.debug("collector.cycle", outcome=outcome, duration_seconds=round(duration, 6), series=state.series)

    def _log_failure(self, outcome: str, error: str) -> None:
        state = self.state
        now = time.monotonic()
        if error != state._last_logged_error or now - state._last_logged_at >= ERROR_REPEAT_SECONDS:
            self._log.error(
                "collector.failed",
                reason=outcome,
                error={"message": error},
                failures_total=state.failures[outcome],
            )
            state._last_logged_error = error
            state._last_logged_at = now

    @property
    def busy(self) -> bool:
        """Whether a cycle is running now."""
        return self._running.locked()


class Scheduler:
    """
    Starts the cycles: one timer per distinct interval, shared by every collector with that interval.

    Collectors that tick together wake the process once instead of once each, which halves the agent's
    CPU per interval (cold caches and loop wake-ups cost more than the reads). Each cycle still runs in its
    own task under its own timeout, so a slow collector delays no other; one still running at its next tick
    is skipped and counted, never run twice at once.
    """

    def __init__(self, runners: Sequence[CollectorRunner], jitter: float = 0.0) -> None:
        self.runners = list(runners)
        self._jitter = jitter
        self._tasks: list[asyncio.Task[None]] = []
        self._cycles: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start one timer task per interval."""
        groups: dict[float, list[CollectorRunner]] = {}
        for runner in self.runners:
            groups.setdefault(runner.state.interval, []).append(runner)
        for interval, runners in groups.items():
            task = asyncio.create_task(self._tick(interval, runners), name=f"collectors-every-{interval:g}s")
            task.add_done_callback(self._timer_ended)
            self._tasks.append(task)

    @staticmethod
    def _timer_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Collection has stopped for these collectors: say so loudly (readiness and success go stale).
            structlog.get_logger().error("scheduler.timer_died", timer=task.get_name(), exc_info=task.exception())

    async def _tick(self, interval: float, runners: list[CollectorRunner]) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + random.uniform(0, min(self._jitter, interval))
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for runner in runners:
                if runner.busy:
                    runner.state.skipped += 1
                    continue
                cycle = asyncio.create_task(runner.run_once(), name=f"cycle:{runner.name}")
                self._cycles.add(cycle)
                cycle.add_done_callback(self._cycles.discard)
            next_at += interval
            now = loop.time()
            if now > next_at:
                # The loop was starved past one or more ticks: skip them rather than run a burst.
                missed = int((now - next_at) // interval) + 1
                next_at += missed * interval
                for runner in runners:
                    runner.state.skipped += missed
                structlog.get_logger().warning("scheduler.overrun", interval_seconds=interval, skipped_cycles=missed)

    async def run_all_once(self) -> None:
        """One cycle of every collector, concurrently (for ``nodeagent once`` and doctor)."""
        await asyncio.gather(*(runner.run_once() for runner in self.runners))

    async def stop(self) -> None:
        """Cancel the timers and running cycles, then release every collector's resources."""
        pending = [*self._tasks, *self._cycles]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()
        for runner in self.runners:
            try:
                await runner.collector.aclose()
            except Exception as exc:  # noqa: BLE001 - shutdown must release the rest
                structlog.get_logger().warning("collector.close_failed", collector=runner.name, error=str(exc))
