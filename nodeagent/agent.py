"""
Wires configuration, collectors, scheduler and exposition into one agent, and serves it over HTTP.

Routes: ``/metrics`` (cached exposition, text or OpenMetrics, gzip when accepted), ``/healthz`` (the
process serves), ``/readyz`` (every enabled collector finished a first cycle), ``/`` (endpoints and
collector states).
"""

from __future__ import annotations

import asyncio
import html
import os
import time
from collections.abc import Sequence

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from nodeagent import __version__
from nodeagent.collector import Collector, CollectorContext
from nodeagent.collectors import COLLECTORS
from nodeagent.config import AgentConfig
from nodeagent.events import EVENTS
from nodeagent.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Exposition,
    accepts_gzip,
    negotiate,
)
from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily, counter, gauge
from nodeagent.runtimes import build_metadata
from nodeagent.scheduler import CollectorRunner, CollectorState, Scheduler
from nodeagent.ship.shipper import Shipper
from nodeagent.workloads import WorkloadResolver


class FailedCollector:
    """Stands in for a collector whose factory raised: every cycle fails with the start-up error."""

    def __init__(self, error: Exception) -> None:
        self._error = error

    async def collect(self) -> Sequence[MetricFamily]:
        """Fail the cycle with the start-up error."""
        raise RuntimeError(f"collector did not start: {type(self._error).__name__}: {self._error}") from self._error

    async def aclose(self) -> None:
        """Nothing to release."""
        return None


# Keys a reload (SIGHUP) cannot apply to a running process: the listening socket, the shipper's connections and
# spool, and the web security files (those are re-read on their own when they change).
RESTART_KEYS = ("listen", "logs.ship", "web")

# What a reload replaces: everything built from the configuration except the shipper.
_RELOADED_PARTS = ("cfg", "paths", "names", "states", "exposition", "metadata", "workloads", "scheduler")


def _key_value(cfg: AgentConfig, dotted: str) -> object:
    value: object = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


class Agent:
    """One agent: its collectors' runners and states, the exposition, and the scheduler."""

    def __init__(
        self,
        cfg: AgentConfig,
        names: Sequence[str] | None = None,
        shipper: Shipper | None = None,
        owner: Agent | None = None,
    ) -> None:
        """``owner``: the running agent a reload builds this one for (its self-metrics are served)."""
        self.cfg = cfg
        self.shipper = shipper
        self.paths = HostPaths(cfg.paths.procfs, cfg.paths.sysfs, cfg.paths.rootfs, cfg.paths.cgroupfs)
        self.names = list(names if names is not None else cfg.enabled_collectors())
        self.states = {
            name: CollectorState(name, cfg.collector_interval(name), cfg.collector_timeout(name)) for name in self.names
        }
        self.exposition = Exposition(self.names, (owner or self).self_families)
        log = structlog.get_logger()
        self.metadata = build_metadata(cfg.runtimes, cfg.kubelet, self.paths, log)
        self.workloads = WorkloadResolver(self.paths, self.metadata)
        runners = []
        for name in self.names:
            clog = log.bind(**{"nodeagent.collector": name})
            collector = self._build(name, clog)
            runners.append(CollectorRunner(name, collector, self.states[name], self.exposition, clog))
        self.scheduler = Scheduler(runners, cfg.jitter)
        self.started_at = time.time()
        self.reload_successful = True
        self.reload_success_time = self.started_at
        self._reloading = asyncio.Lock()

    async def reload(self, cfg: AgentConfig) -> list[str]:
        """
        Apply a new configuration without a restart: collectors, intervals, timeouts, paths, runtimes and the
        kubelet. The new collectors finish a first cycle while the old ones still serve; then they are swapped and
        the old ones closed. Returns the changed keys of ``RESTART_KEYS``, which keep their running values.
        """
        async with self._reloading:
            restart = [key for key in RESTART_KEYS if _key_value(cfg, key) != _key_value(self.cfg, key)]
            applied = cfg.model_copy(
                update={
                    "listen": self.cfg.listen,
                    "web": self.cfg.web,
                    "logs": cfg.logs.model_copy(update={"ship": self.cfg.logs.ship}),
                }
            )
            if applied != self.cfg:
                fresh = Agent(applied, shipper=self.shipper, owner=self)
                await fresh.metadata.sync_once()
                await fresh.scheduler.run_all_once()
                old_scheduler, old_metadata = self.scheduler, self.metadata
                for part in _RELOADED_PARTS:
                    setattr(self, part, getattr(fresh, part))
                self.metadata.start()
                self.scheduler.start()
                await old_scheduler.stop()
                await old_metadata.aclose()
            self.reload_successful = True
            self.reload_success_time = time.time()
            self.exposition.invalidate()
            return restart

    def reload_failed(self) -> None:
        """Record a reload that was refused (the running configuration stays)."""
        self.reload_successful = False
        self.exposition.invalidate()

    def _build(self, name: str, log: structlog.typing.FilteringBoundLogger) -> Collector:
        spec = COLLECTORS[name]
        try:
            return spec.factory(CollectorContext(name, self.paths, log, self.workloads), self.cfg.collector(name))
        except Exception as exc:  # noqa: BLE001 - one collector's start-up failure must not stop the agent
            log.error("collector.start_failed", error={"message": f"{type(exc).__name__}: {exc}"})
            return FailedCollector(exc)

    def self_families(self) -> Sequence[MetricFamily]:
        """The agent's per-collector self-metrics, from the states (no I/O: called when rendering)."""
        labels = ("collector",)
        duration = gauge("nodeagent_collector_duration_seconds", "Duration of the collector's last cycle.", labels)
        success = gauge(
            "nodeagent_collector_success",
            "Whether the collector's last cycle succeeded (1), including finding no data; 0 if it failed or timed out.",
            labels,
        )
        has_data = gauge(
            "nodeagent_collector_has_data",
            "Whether the collector's last cycle found its source on this host.",
            labels,
        )
        last_ok = gauge(
            "nodeagent_collector_last_success_timestamp_seconds",
            "Unix time of the collector's last successful cycle (0 if none yet).",
            labels,
        )
        skipped = counter(
            "nodeagent_collector_skipped_total",
            "Cycles skipped because the previous one overran the interval.",
            labels,
        )
        failures = counter(
            "nodeagent_collector_failures_total",
            "Failed cycles by reason (timeout, permission_denied, not_found, parse_error, unavailable or error).",
            ("collector", "reason"),
        )
        series = gauge("nodeagent_collector_series", "Series the collector published in its last cycle.", labels)
        for name, st in self.states.items():
            key = (name,)
            duration.add(key, st.last_duration)
            success.add(key, 1 if st.success else 0)
            has_data.add(key, 1 if st.has_data else 0)
            last_ok.add(key, st.last_success_time)
            skipped.add(key, st.skipped)
            for reason, count in st.failures.items():
                failures.add((name, reason), count)
            series.add(key, st.series)
        reload_ok = gauge(
            "nodeagent_config_last_reload_successful",
            "Whether the last configuration reload (SIGHUP) succeeded (1) or was refused and the running one kept (0).",
        )
        reload_ok.add((), 1 if self.reload_successful else 0)
        reload_time = gauge(
            "nodeagent_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration reload, or of the start.",
        )
        reload_time.add((), self.reload_success_time)
        out = [
            b.build() for b in (duration, success, has_data, last_ok, skipped, failures, series, reload_ok, reload_time)
        ]
        out += EVENTS.families()
        if self.shipper is not None:
            out += self.shipper.families()
        return out

    def missing_roots(self) -> list[str]:
        """One message per configured host root that is not a directory (a mount missing in a container)."""
        roots = (
            ("paths.procfs", self.paths.procfs, "/proc"),
            ("paths.sysfs", self.paths.sysfs, "/sys"),
            ("paths.rootfs", self.paths.rootfs, "/"),
        )
        return [
            f"{key}={path} is not a directory; mount the host's {host} there or fix the key"
            for key, path, host in roots
            if not os.path.isdir(path)
        ]

    def not_ready(self) -> list[str]:
        """Enabled collectors that have not finished a first cycle."""
        return [name for name, st in self.states.items() if not st.ready]


def build_app(agent: Agent, middlewares: Sequence[Middleware] = ()) -> web.Application:
    """The aiohttp application; the scheduler starts and stops with it. ``middlewares`` (e.g. the basic-auth and
    headers middleware of nodeagent.webconfig) wrap every route."""
    app = web.Application(middlewares=list(middlewares))

    async def lifecycle(_: web.Application):  # type: ignore[no-untyped-def]
        if agent.shipper is not None:
            agent.shipper.start()
        agent.metadata.start()
        agent.scheduler.start()
        yield
        await agent.scheduler.stop()
        await agent.metadata.aclose()
        if agent.shipper is not None:
            await agent.shipper.aclose()

    app.cleanup_ctx.append(lifecycle)

    async def metrics(request: web.Request) -> web.Response:
        openmetrics = negotiate(request.headers.get("Accept"))
        compress = accepts_gzip(request.headers.get("Accept-Encoding"))
        headers = {
            "Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE,
            "Vary": "Accept-Encoding, Accept",
        }
        if compress:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=agent.exposition.body(openmetrics, compress), headers=headers)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        pending = agent.not_ready()
        if pending:
            return web.Response(status=503, text="not ready: no finished cycle yet for " + ", ".join(pending) + "\n")
        return web.Response(text="ready\n")

    async def index(_: web.Request) -> web.Response:
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{st.status}</td><td>{st.interval:g}s</td>"
            f"<td>{st.last_duration * 1000:.1f} ms</td><td>{st.series}</td>"
            f"<td>{html.escape(st.last_error or st.nodata_reason)}</td></tr>"
            for name, st in agent.states.items()
        )
        page = (
            f"<!doctype html><html><head><title>nodeagent</title></head><body><h1>nodeagent {__version__}</h1>"
            '<ul><li><a href="/metrics">/metrics</a></li><li><a href="/healthz">/healthz</a></li>'
            '<li><a href="/readyz">/readyz</a></li></ul>'
            "<table border=1><tr><th>collector</th><th>state</th><th>interval</th><th>last cycle</th>"
            f"<th>series</th><th>detail</th></tr>{rows}</table></body></html>"
        )
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    return app
