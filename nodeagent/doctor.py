"""
``nodeagent doctor``: runs every collector once and says, per collector, whether it works here, has no
data here, or fails, with the reason and a hint a person can act on; and which privilege (capability or file
access, from ``nodeagent.privileges``) it lacks here and which metrics that costs.
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
from nodeagent.privileges import CAPABILITY_NAMES, Finding, describe, effective_capabilities, missing, needs_here
from nodeagent.runtimes import build_metadata
from nodeagent.workloads import WorkloadResolver


def hint_for(exc: BaseException, paths: HostPaths) -> str:
    """A hint for a person, from the kind of failure."""
    if isinstance(exc, TimeoutError):
        return "a source did not answer in time (a hung network filesystem or device?); raise its timeout or exclude it"
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
        return "permission denied: this user lacks a privilege; what each collector needs: docs/security.md"
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
        # File checks, and a connect() per runtime socket: off the loop, they may block briefly.
        needs = await asyncio.to_thread(needs_here, cfg, paths)
        try:
            caps: frozenset[str] | None = effective_capabilities()
        except (OSError, ParseError):
            caps = None  # reported below; every capability the configuration uses counts as missing
        lacking = missing(needs, caps or frozenset())
        await metadata.sync_once()  # names for the cgroups check, and each socket's state for the list below
        lines = describe(lacking)
        failed = await _check_collectors(cfg, paths, resolver, out, lines)
        statuses = list(metadata.statuses.values())
        if metadata.devices is not None:
            await metadata.devices.allocations()
            statuses.append(metadata.devices.status)
        out.write("runtime and kubelet sockets (runtimes.*, kubelet.podresources.*):\n")
        for s in statuses:
            state = f"up, {s.containers} {'devices' if s.runtime.startswith('kubelet') else 'containers'}"
            out.write(f"  {s.runtime:<21} {state if s.state == 'up' else s.state + ': ' + s.reason}\n")
        _report_privileges(needs, lacking, caps, lines.get("agent", []), out)
        return failed
    finally:
        await metadata.aclose()


def _report_privileges(
    needs: list[Finding], lacking: list[Finding], caps: frozenset[str] | None, agent_lines: list[str], out: TextIO
) -> None:
    """Who the agent runs as and with which capabilities, which ones this configuration uses here, what the agent
    itself lacks, and how many needs are missing in all."""
    if caps is None:
        held = "unknown (/proc/self/status has no readable CapEff line)"
    elif os.geteuid() == 0 and len(caps) > len(CAPABILITY_NAMES) // 2:
        held = f"{len(caps)} (root)"
    else:
        held = ", ".join(sorted(caps)) or "none"
    out.write(f"privileges (uid {os.geteuid()}, gid {os.getegid()}; effective capabilities: {held}):\n")
    used = sorted({f.need.capability for f in needs if f.need.capability})
    out.write(f"  capabilities this configuration uses here: {', '.join(used) or 'none'}\n")
    for line in agent_lines:
        out.write(f"  {line}\n")
    if lacking:
        out.write(f"  {len(lacking)} missing (under each collector above); how to grant them: docs/security.md\n")
    else:
        out.write("  nothing missing: every collector has the privileges it uses here\n")


async def _check_collectors(
    cfg: AgentConfig, paths: HostPaths, resolver: WorkloadResolver, out: TextIO, privileges: dict[str, list[str]]
) -> int:
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
            out.writelines(f"          {line}\n" for line in privileges.get(name, []))
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
        out.writelines(f"          {line}\n" for line in privileges.get(name, []))
    return 1 if failed else 0
