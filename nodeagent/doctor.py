"""
``nodeagent doctor``: runs every collector once and says, per collector, whether it works here, has no
data here, or fails, with the reason and a hint a person can act on.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import TextIO

import structlog

from nodeagent.collector import CollectorContext, NoDataError
from nodeagent.collectors import COLLECTORS
from nodeagent.config import AgentConfig
from nodeagent.hostfs import HostPaths, ParseError
from nodeagent.runtimes import build_metadata
from nodeagent.workloads import WorkloadResolver


def hint_for(exc: BaseException, paths: HostPaths) -> str:
    """A hint for a person, from the kind of failure."""
    if isinstance(exc, TimeoutError):
        return "a source did not answer in time (a hung network filesystem or device?); raise its timeout or exclude it"
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
        return "permission denied: run as root, or grant the capability the collector needs (see README)"
    if isinstance(exc, FileNotFoundError):
        return (
            f"a file is missing: check that paths.procfs={paths.procfs}, paths.sysfs={paths.sysfs} and "
            f"paths.rootfs={paths.rootfs} point at the host's /proc, /sys and /"
        )
    if isinstance(exc, ParseError):
        return "the file's format is not what this kernel version was expected to write; please report it"
    return "unexpected failure; run with --log-level debug and report it"


async def run_doctor(cfg: AgentConfig, out: TextIO) -> int:
    """Check each collector; returns 1 if an enabled collector fails, else 0."""
    paths = HostPaths(cfg.paths.procfs, cfg.paths.sysfs, cfg.paths.rootfs, cfg.paths.cgroupfs)
    log = structlog.get_logger()
    metadata = build_metadata(cfg.runtimes, cfg.kubelet, paths, log)
    resolver = WorkloadResolver(paths, metadata)
    try:
        await metadata.sync_once()  # names for the cgroups check, and each socket's state for the list below
        failed = await _check_collectors(cfg, paths, resolver, out)
        statuses = list(metadata.statuses.values())
        if metadata.devices is not None:
            await metadata.devices.allocations()
            statuses.append(metadata.devices.status)
        out.write("runtime and kubelet sockets (runtimes.*, kubelet.podresources.*):\n")
        for s in statuses:
            state = f"up, {s.containers} {'devices' if s.runtime.startswith('kubelet') else 'containers'}"
            out.write(f"  {s.runtime:<21} {state if s.state == 'up' else s.state + ': ' + s.reason}\n")
        return failed
    finally:
        await metadata.aclose()


async def _check_collectors(cfg: AgentConfig, paths: HostPaths, resolver: WorkloadResolver, out: TextIO) -> int:
    log = structlog.get_logger()
    failed = False
    out.write(f"nodeagent doctor (pid {os.getpid()}, uid {os.geteuid()})\n")
    for name, spec in COLLECTORS.items():
        ccfg = cfg.collector(name)
        enabled = "" if ccfg.enabled else " [disabled]"
        try:
            collector = spec.factory(CollectorContext(name, paths, log.bind(collector=name), resolver), ccfg)
        except Exception as exc:  # noqa: BLE001 - report every collector
            out.write(f"  FAIL    {name}{enabled}: cannot start: {exc}\n          hint: {hint_for(exc, paths)}\n")
            failed = failed or ccfg.enabled
            continue
        try:
            async with asyncio.timeout(cfg.collector_timeout(name)):
                families = await collector.collect()
            series = sum(len(f.samples) for f in families)
            out.write(f"  OK      {name}{enabled}: {len(families)} families, {series} series\n")
        except NoDataError as exc:
            out.write(f"  NODATA  {name}{enabled}: {exc.reason}\n")
            if exc.hint:
                out.write(f"          hint: {exc.hint}\n")
        except Exception as exc:  # noqa: BLE001 - report every collector
            message = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                message = f"no answer within {cfg.collector_timeout(name):g}s"
            out.write(f"  FAIL    {name}{enabled}: {message}\n          hint: {hint_for(exc, paths)}\n")
            failed = failed or ccfg.enabled
        finally:
            await collector.aclose()
    return 1 if failed else 0
