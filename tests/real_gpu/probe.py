"""
Reads the real NVML through nodeagent and prints what it saw as JSON: two ``Nvml.sample()`` passes about a second
apart (a short Xid watch runs meanwhile, as in the agent), then one ``GpuCollector`` cycle. For the real-GPU tests
and fixture captures (tests/real_gpu/README.md).

    python3 -m tests.real_gpu.probe [--pid PID ...] [--json OUT] [--interval SECONDS]

Run it as a child process with a clean environment (``tests.real_gpu.child.real_env``): in a process that has
loaded the NVML test double, every ``CDLL("libnvidia-ml.so.1")`` resolves to the double. ``library`` in the output
names the file that was loaded. Exit status 3: NVML is unavailable here (the reason is on stderr and in the JSON).

Readings are ``{suffix: {"label/values": value}}`` (``""`` for a value without labels), as nodeagent.sources.nvml
keys them; families are the collector's, with their label names.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = 1
UNAVAILABLE = 3


def readings_json(readings: dict[str, dict[tuple[str, ...], float]]) -> dict[str, dict[str, float]]:
    return {
        suffix: {"/".join(labels): value for labels, value in values.items()} for suffix, values in readings.items()
    }


def gpu_json(s: Any) -> dict[str, Any]:
    """One ``GpuSample`` as plain data."""
    return {
        "index": s.index,
        "uuid": s.uuid,
        "up": s.up,
        "error": s.error,
        "name": s.name,
        "pci_bus_id": s.pci_bus_id,
        "minor": s.minor,
        "serial": s.serial,
        "info": dict(s.info),
        "readings": readings_json(s.readings),
        "processes": [
            {
                "pid": p.pid,
                "used_bytes": p.used_bytes,
                "gpu_instance": p.gpu_instance,
                "compute_instance": p.compute_instance,
                "graphics": p.graphics,
            }
            for p in s.processes
        ],
        "process_utilization": {
            str(pid): dict(zip(("sm", "memory", "encoder", "decoder"), u, strict=True))
            for pid, u in s.process_utilization.items()
        },
        "mig": [
            {
                "uuid": m.uuid,
                "gpu_instance": m.gpu_instance,
                "compute_instance": m.compute_instance,
                "name": m.name,
                "profile": m.profile,
                "readings": readings_json(m.readings),
            }
            for m in s.mig
        ],
    }


def families_json(families: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": f.name,
            "type": f.type,
            "help": f.help,
            "labels": list(f.labelnames),
            "samples": [
                {"labels": dict(zip(f.labelnames, values, strict=True)), "value": value} for values, value in f.samples
            ],
        }
        for f in families
    ]


def loaded_library() -> dict[str, Any]:
    """The ``libnvidia-ml`` file mapped into this process, and whether it is the NVML test double."""
    from tests.nvml_double.build import STAMP_NAME

    path = ""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "libnvidia-ml.so" in os.path.basename(fields[5].strip()):
                path = fields[5].strip()
                break
    return {"path": path, "is_test_double": bool(path) and Path(path).with_name(STAMP_NAME).exists()}


def unavailable(reason: str, code: int | None, out: Path | None) -> int:
    data = {"schema": SCHEMA, "available": False, "reason": reason, "code": code}
    emit(data, out)
    suffix = f" (NVML return code {code})" if code is not None else ""
    print(f"tests.real_gpu.probe: NVML is not available here: {reason}{suffix}", file=sys.stderr)
    return UNAVAILABLE


def emit(data: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(data, indent=1, sort_keys=False)
    if out is not None:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
    print(text)


class XidWatch:
    """``nodeagent.sources.nvml.watch_xids`` on a thread of its own for the length of the probe."""

    def __init__(self, nv: Any, wait_ms: int = 250) -> None:
        self.nv = nv
        self.wait_ms = wait_ms
        self.stop = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.error: str | None = None
        self.started = 0.0
        self.thread = threading.Thread(target=self._run, name="probe-xid", daemon=True)

    def _run(self) -> None:
        from nodeagent.sources.nvml import watch_xids

        try:
            watch_xids(self._on_xid, self.stop, self.nv, wait_ms=self.wait_ms)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON
            self.error = f"{type(exc).__name__}: {exc}"

    def _on_xid(self, event: Any) -> None:
        self.events.append(
            {
                "uuid": event.uuid,
                "xid": event.xid,
                "gpu_instance": event.gpu_instance,
                "compute_instance": event.compute_instance,
                "time": event.time,
            }
        )

    def start(self) -> None:
        self.started = time.monotonic()
        self.thread.start()

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join(self.wait_ms / 1000 * 8 + 5)
        return {
            "seconds": round(time.monotonic() - self.started, 3),
            "wait_ms": self.wait_ms,
            "stopped": not self.thread.is_alive(),
            "error": self.error,
            "events": self.events,
        }


async def collector_cycle(log: Any) -> tuple[list[Any], float]:
    """One cycle of the GPU collector as the agent builds it (its own Nvml, host roots, a private resolver)."""
    from nodeagent.collector import CollectorContext
    from nodeagent.collectors.gpu import GpuCollector, GpuConfig
    from nodeagent.hostfs import HostPaths
    from nodeagent.workloads import WorkloadResolver

    paths = HostPaths()
    # No Xid watcher here: the probe runs its own (XidWatch) and reports it.
    collector = GpuCollector(CollectorContext("gpu", paths, log, WorkloadResolver(paths)), GpuConfig(xid_events=False))
    started = time.monotonic()
    try:
        families = list(await collector.collect())
    finally:
        await collector.aclose()
    return families, time.monotonic() - started


def pid_json(pid: int, gpus: list[Any]) -> dict[str, Any]:
    """Where ``pid`` runs (cgroup, workload id) and which GPUs NVML lists it on."""
    from nodeagent.hostfs import HostPaths
    from nodeagent.workloads import WorkloadResolver

    resolver = WorkloadResolver(HostPaths())
    cgroup: str | None
    workload: str | None
    try:
        cgroup = resolver.cgroup_of(pid)
        w = resolver.resolve(pid)
        workload = w.id if w is not None else None
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        cgroup = workload = f"error: {type(exc).__name__}: {exc}"
    listed = [
        {"gpu": s.index, "uuid": s.uuid, "used_bytes": p.used_bytes, "graphics": p.graphics}
        for s in gpus
        for p in s.processes
        if p.pid == pid
    ]
    return {"pid": pid, "cgroup": cgroup, "workload": workload, "listed": listed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, action="append", default=[], help="report where this pid runs and its GPUs")
    parser.add_argument("--json", type=Path, help="also write the JSON to this file")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between the two samples (default 1)")
    args = parser.parse_args(argv)
    out: Path | None = args.json

    import structlog

    log_events: list[dict[str, Any]] = []

    def keep(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        log_events.append({"level": method, **{k: str(v) for k, v in event.items()}})
        return event

    # stdout carries the JSON: the collector's log lines go to stderr.
    log = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr), processors=[keep, structlog.processors.JSONRenderer(default=str)]
    )

    from nodeagent.sources.nvml import Nvml, NvmlUnavailable

    try:
        nvml = Nvml()
    except ImportError as exc:
        return unavailable(f"nvidia-ml-py (pynvml) is not installed: {exc}", None, out)
    try:
        nvml.init()
    except NvmlUnavailable as exc:
        return unavailable(exc.reason, exc.code, out)

    xid = XidWatch(nvml.nv)
    xid.start()
    samples: list[dict[str, Any]] = []
    raw: list[list[Any]] = []
    try:
        for n in range(2):
            if n:
                time.sleep(args.interval)
            calls, t0, started = nvml.calls, time.time(), time.monotonic()
            try:
                gpus = nvml.sample()
            except NvmlUnavailable as exc:
                return unavailable(exc.reason, exc.code, out)
            raw.append(gpus)
            samples.append(
                {
                    "time": t0,
                    "duration_seconds": round(time.monotonic() - started, 6),
                    "calls": nvml.calls - calls,
                    "gpus": [gpu_json(s) for s in gpus],
                }
            )
    finally:
        xid_result = xid.finish()

    energy = []
    for s0, s1 in zip(raw[0], raw[1], strict=False):
        energy.append(
            {
                "index": s1.index,
                "uuid": s1.uuid,
                "first_joules": s0.value("energy"),
                "second_joules": s1.value("energy"),
                "seconds": samples[1]["time"] - samples[0]["time"],
            }
        )

    collector: dict[str, Any]
    try:
        families, seconds = asyncio.run(collector_cycle(log))
        collector = {"error": None, "duration_seconds": round(seconds, 6), "families": families_json(families)}
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        collector = {"error": f"{type(exc).__name__}: {exc}", "duration_seconds": None, "families": []}
    collector["log"] = log_events

    try:
        pynvml_version = importlib.metadata.version("nvidia-ml-py")
    except importlib.metadata.PackageNotFoundError:
        pynvml_version = ""
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "available": True,
        "reason": "",
        "code": None,
        "library": loaded_library(),
        "pynvml_version": pynvml_version,
        "python": sys.version.split()[0],
        "driver_version": nvml.driver_version,
        "cuda_version": nvml.cuda_version,
        "nvml_version": nvml.nvml_version,
        "gpu_count": len(raw[1]),
        "samples": samples,
        "energy": energy,
        "xid_watch": xid_result,
        "collector": collector,
        "pids": [pid_json(pid, raw[1]) for pid in args.pid],
    }
    nvml.shutdown()
    emit(data, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
