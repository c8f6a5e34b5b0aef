"""
The shipper: moves records from the spool to Logstash and acknowledges them there, never blocking sampling or
scrapes. One asyncio task sends; another writes the spool to disk (in a worker thread) every ``sync_interval``,
and at once after a node event, so a ``kill -9`` loses at most the agent's own records of the last interval.

Delivery is at least once: a record leaves the spool only when the transport acknowledged it (for ``tcp``: once
written, which the docs call unacknowledged). After a failure the unacknowledged records are sent again, to the
next host in order (failover), after an exponential backoff with full jitter. The batch (window) grows by half
after each acknowledged batch, up to ``batch_max``, and halves after a failure, as Filebeat's Logstash output does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Callable, Sequence

import structlog

from nodeagent.config import ShipConfig, _host_port
from nodeagent.metrics import MetricFamily
from nodeagent.ship import PRIORITY_EVENT, PRIORITY_NAMES, Transport, TransportError
from nodeagent.ship.spool import Spool

BATCH_BYTES = 4 << 20  # at most this much JSON per batch
START_WINDOW = 64


class Shipper:
    """Ships the spool's records through ``transports`` (tried in order; the next one after a failure)."""

    def __init__(
        self,
        spool: Spool,
        transports: Sequence[Transport],
        log: structlog.typing.FilteringBoundLogger,
        batch_max: int = 2048,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        sync_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not transports:
            raise ValueError("a shipper needs at least one transport")
        self.spool = spool
        self.transports = list(transports)
        self.log = log
        self.batch_max = batch_max
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.sync_interval = sync_interval
        self._clock = clock
        self.window = min(START_WINDOW, batch_max)
        self.current = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._sync_now: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Self-metrics.
        self.shipped: dict[str, int] = {}  # endpoint -> records sent (acknowledged or, for tcp, written)
        self.failures: dict[str, int] = {}  # endpoint -> failed batches
        self.batches = 0
        self.ack_seconds = 0.0  # summed over acknowledged batches
        self.last_ack_latency = 0.0
        self.last_ack_time = 0.0  # wall time of the last acknowledgement (0: none yet)
        self.up: dict[str, int] = {t.endpoint: 0 for t in self.transports}
        self._failing = ""
        self._spool_failing = False

    # --- the producer side (any thread) ----------------------------------------------------------------------

    def submit(self, record: bytes, priority: int) -> bool:
        """Queue one record (the logging sink); never blocks. Returns False if the spool refused it."""
        ok: bool = self.spool.append(record, priority)
        loop, wake, sync = self._loop, self._wake, self._sync_now
        if ok and loop is not None and wake is not None and sync is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed (shutting down)
                if not wake.is_set():
                    loop.call_soon_threadsafe(wake.set)
                if priority == PRIORITY_EVENT and not sync.is_set():
                    loop.call_soon_threadsafe(sync.set)  # a node event goes to disk now, not at the next tick
        return ok

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the send and sync tasks on the running loop."""
        # Bound here, not when built: binding a structlog lazy logger freezes the logging configuration of that
        # moment, and the shipper is built before logging is configured (logging needs the shipper as its sink);
        # bound earlier, its records would bypass the ECS JSON renderer and the spool.
        self.log = self.log.bind(**{"event.dataset": "nodeagent.ship"})
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake.set()  # records recovered from the spool go out at once
        self._sync_now = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="nodeagent-ship-send"),
            asyncio.create_task(self._sync_loop(), name="nodeagent-ship-sync"),
        ]

    async def aclose(self, drain_timeout: float = 5.0) -> None:
        """
        Stop: give the sender up to ``drain_timeout`` seconds to deliver what is queued, then write the spool to
        disk (what is still unacknowledged is sent after the next start) and close the connections.
        """
        if self._tasks:
            deadline = time.monotonic() + drain_timeout
            # A bounded poll of the spool's counter while the sender works (shutdown only).
            while self.spool.pending_records and time.monotonic() < deadline and self.up.get(self._endpoint()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await asyncio.to_thread(self.spool.close)
        if self.spool.memory_bytes:
            self.log.error(
                "ship.spool_lost",
                message=f"{self.spool.memory_bytes} bytes of records could not be written to the spool at shutdown "
                f"and are lost: {self.spool.last_error}",
            )
        for t in self.transports:
            await t.aclose()

    def _endpoint(self) -> str:
        return self.transports[self.current].endpoint

    # --- the loops ------------------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        assert self._sync_now is not None
        errors = self.spool.write_errors
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_now.wait(), self.sync_interval)
            self._sync_now.clear()
            await asyncio.to_thread(self.spool.flush)
            errors = self._report_spool(errors)

    def _report_spool(self, errors_before: int) -> int:
        """
        Log once when spool writes start failing (disk full, read-only, I/O error) and once when a flush works
        again: the counter alone would leave a person reading the logs unaware that records live in memory only.
        Returns the write error count to compare the next flush with.
        """
        sp = self.spool
        if sp.write_errors > errors_before:
            if not self._spool_failing:
                self._spool_failing = True
                self.log.warning(
                    "ship.spool_write_failed",
                    message=f"{sp.last_error} (spool_dir {sp.directory}); records stay in memory, "
                    f"{sp.memory_bytes} bytes now, and are written when the disk accepts them",
                    **{"error.message": sp.last_error},
                )
        elif self._spool_failing:
            self._spool_failing = False
            self.log.info("ship.spool_written", message=f"the spool in {sp.directory} is written again")
        return sp.write_errors

    async def _send_loop(self) -> None:
        assert self._wake is not None
        backoff = self.backoff_initial
        while True:
            if self.spool.backlog_on_disk:  # the oldest records must be read from the segment files
                records = await asyncio.to_thread(self.spool.peek, self.window, BATCH_BYTES)
            else:
                records = self.spool.peek(self.window, BATCH_BYTES)
            if not records:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # woken by the next record (or every second)
                    await asyncio.wait_for(self._wake.wait(), 1.0 if not self.spool.pending_records else 0.05)
                continue
            transport = self.transports[self.current]
            if await self._send(transport, records):
                backoff = self.backoff_initial
                self.window = min(self.batch_max, max(self.window + 1, int(self.window * 1.5)))
                continue
            self.window = max(1, self.window // 2)
            await transport.aclose()
            self.current = (self.current + 1) % len(self.transports)
            # Full jitter: a fleet of agents does not reconnect in step after a Logstash restart.
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(self.backoff_max, backoff * 2)

    async def _send(self, transport: Transport, records: list[bytes]) -> bool:
        endpoint = transport.endpoint
        acked = 0

        def progress(n: int) -> None:
            nonlocal acked
            if n > acked:
                self.spool.ack(n - acked)
                self.shipped[endpoint] = self.shipped.get(endpoint, 0) + n - acked
                acked = n
                self.last_ack_time = self._clock()

        started = time.monotonic()
        try:
            await transport.send(records, progress)
        except TransportError as exc:
            self.failures[endpoint] = self.failures.get(endpoint, 0) + 1
            self.up[endpoint] = 0
            self._report_failure(endpoint, exc.reason, len(records) - acked)
            return False
        progress(len(records))  # a transport that returned has delivered everything
        latency = time.monotonic() - started
        self.batches += 1
        self.ack_seconds += latency
        self.last_ack_latency = latency
        if not self.up.get(endpoint):
            self.up[endpoint] = 1
            if self._failing:
                self.log.info("ship.connected", message=f"log shipping to {endpoint} works again")
            self._failing = ""
        return True

    def _report_failure(self, endpoint: str, reason: str, unacked: int) -> None:
        # Logged when the reason changes, not for every retry: the shipper's own records go through the spool too.
        key = f"{endpoint}: {reason}"
        if key != self._failing:
            self._failing = key
            self.log.warning(
                "ship.failed",
                message=f"log shipping to {endpoint} failed: {reason}; {unacked} records will be sent again",
                **{"url.original": endpoint, "error.message": reason},
            )

    # --- self-metrics ---------------------------------------------------------------------------------------

    def families(self) -> list[MetricFamily]:
        """The shipper's and spool's self-metrics (no I/O)."""
        sp = self.spool
        now = self._clock()
        endpoints = [t.endpoint for t in self.transports]
        dropped = tuple(((reason, PRIORITY_NAMES.get(p, str(p))), float(n)) for (reason, p), n in sp.dropped.items())
        since = now - self.last_ack_time if self.last_ack_time else 0.0
        return [
            MetricFamily(
                "nodeagent_log_records_queued_total", "counter", "Records put into the spool.", (), (((), sp.appended),)
            ),
            MetricFamily(
                "nodeagent_log_records_shipped_total",
                "counter",
                "Records delivered to an endpoint: acknowledged (beats, http) or written (tcp).",
                ("endpoint",),
                tuple(((e,), float(self.shipped.get(e, 0))) for e in endpoints),
            ),
            MetricFamily(
                "nodeagent_log_records_acknowledged_total",
                "counter",
                "Records that left the spool because delivery was confirmed.",
                (),
                (((), float(sp.acknowledged)),),
            ),
            MetricFamily(
                "nodeagent_log_records_dropped_total",
                "counter",
                "Records refused by a full spool (reason spool_full), by a full memory buffer while the disk "
                "could not be written (memory_full), or after shutdown began (closed), by priority: log "
                "(debug/info), log_problem (warning/error), event (node events, dropped last).",
                ("reason", "priority"),
                dropped,
            ),
            MetricFamily(
                "nodeagent_log_records_unacknowledged",
                "gauge",
                "Records in the spool not yet acknowledged.",
                (),
                (((), float(sp.pending_records)),),
            ),
            MetricFamily(
                "nodeagent_log_spool_bytes",
                "gauge",
                "Bytes the spool holds: on disk, and in memory only (not yet written).",
                ("where",),
                ((("disk",), float(sp.disk_bytes)), (("memory",), float(sp.memory_bytes))),
            ),
            MetricFamily(
                "nodeagent_log_spool_corrupt_records_total",
                "counter",
                "Spool records skipped because their length or checksum was wrong.",
                (),
                (((), float(sp.corrupt)),),
            ),
            MetricFamily(
                "nodeagent_log_spool_read_errors_total",
                "counter",
                "Failed reads of spool segment files (the records are read again on the next attempt).",
                (),
                (((), float(sp.read_errors)),),
            ),
            MetricFamily(
                "nodeagent_log_spool_write_errors_total",
                "counter",
                "Failed spool writes (disk full, I/O error); the records stay in memory and are written later.",
                (),
                (((), float(sp.write_errors)),),
            ),
            MetricFamily(
                "nodeagent_log_ship_failures_total",
                "counter",
                "Batches that failed (refused, timed out, closed, 429/5xx) and will be sent again.",
                ("endpoint",),
                tuple(((e,), float(self.failures.get(e, 0))) for e in endpoints),
            ),
            MetricFamily(
                "nodeagent_log_ship_up",
                "gauge",
                "1 if the last batch to the endpoint was delivered, 0 if it failed or none was sent yet.",
                ("endpoint",),
                tuple(((e,), float(self.up.get(e, 0))) for e in endpoints),
            ),
            MetricFamily(
                "nodeagent_log_ack_seconds_total",
                "counter",
                "Seconds from sending a batch to its last acknowledgement, summed (divide by batches for the mean).",
                (),
                (((), self.ack_seconds),),
            ),
            MetricFamily(
                "nodeagent_log_batches_total",
                "counter",
                "Batches delivered.",
                (),
                (((), float(self.batches)),),
            ),
            MetricFamily(
                "nodeagent_log_last_ack_latency_seconds",
                "gauge",
                "Seconds the last delivered batch took from send to acknowledgement.",
                (),
                (((), self.last_ack_latency),),
            ),
            MetricFamily(
                "nodeagent_log_last_ack_timestamp_seconds",
                "gauge",
                "Unix time of the last acknowledgement (0: none since start); alert on time() - this.",
                (),
                (((), self.last_ack_time),),
            ),
            MetricFamily(
                "nodeagent_log_seconds_since_last_ack",
                "gauge",
                "Seconds since the last acknowledgement, as of the last metrics refresh (0: none since start).",
                (),
                (((), since),),
            ),
        ]


def tls_context(cfg: ShipConfig) -> ssl.SSLContext | None:
    """The client TLS context of ``logs.ship.tls`` (None when TLS is off)."""
    t = cfg.tls
    if not t.enabled:
        return None
    ctx = ssl.create_default_context(cafile=t.ca_file or None)
    if not t.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if t.cert_file:
        ctx.load_cert_chain(t.cert_file, t.key_file)
    return ctx


def build_transports(cfg: ShipConfig) -> list[Transport]:
    """One transport per configured host, of the configured protocol."""
    ctx = tls_context(cfg)
    name = cfg.tls.server_name or None
    out: list[Transport] = []
    for host in cfg.hosts:
        if cfg.protocol == "http":
            from nodeagent.ship.http import HttpTransport

            out.append(HttpTransport(host, ssl=ctx, timeout=cfg.timeout))
            continue
        hostname, port = _host_port(host)
        if cfg.protocol == "beats":
            from nodeagent.ship.lumberjack import BeatsTransport

            out.append(
                BeatsTransport(
                    hostname,
                    port,
                    ssl=ctx,
                    timeout=cfg.timeout,
                    compression_level=cfg.compression_level,
                    server_hostname=name,
                    progress_timeout=cfg.progress_timeout,
                )
            )
        else:
            from nodeagent.ship.tcp import TcpTransport

            out.append(TcpTransport(hostname, port, ssl=ctx, timeout=cfg.timeout, server_hostname=name))
    return out


def build_shipper(cfg: ShipConfig, log: structlog.typing.FilteringBoundLogger) -> Shipper | None:
    """
    The shipper of ``logs.ship``, its spool opened (and recovered), or None when no host is configured.

    Raises:
        OSError: the spool directory cannot be created or used.
        ssl.SSLError: the TLS files cannot be loaded.
    """
    if not cfg.hosts:
        return None
    spool = Spool(cfg.spool_dir or None, cfg.spool_max_bytes, cfg.memory_max_bytes)
    spool.open()
    return Shipper(
        spool,
        build_transports(cfg),
        log,
        batch_max=cfg.batch_max,
        backoff_initial=cfg.backoff_initial,
        backoff_max=cfg.backoff_max,
        sync_interval=cfg.sync_interval,
    )
