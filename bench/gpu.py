#!/usr/bin/env python3
"""CPU and wall time per cycle of the gpu collector over the NVML test double: 8 GPUs, 64 processes by default.

Builds the C test double of ``libnvidia-ml.so.1`` (tests/nvml_double), writes a scenario with ``--gpus`` H100 SXM5
GPUs (every field-values entry the collector asks for, 18 NVLinks each) and ``--processes`` GPU processes spread
over them, whose pids are real ``sleep`` processes this bench starts (each in its own pod-style container cgroup
when run as root, so the shared ``WorkloadResolver`` reads a real ``/proc/<pid>/cgroup`` and names a real workload).
A child process started with ``LD_LIBRARY_PATH`` on the double (pynvml's own ``CDLL`` finds it, as on a GPU node)
then runs ``GpuCollector.collect()`` on an asyncio loop as the agent does and measures, per cycle: process CPU (every
thread), wall time, NVML calls, series, the exposition render; RSS added by pynvml and the first pass; and the Xid
watcher's idle CPU. node_exporter has no GPU collector, so there is nothing of it to run next to this.
Always kills the processes and removes the cgroups it made.
Run: ``python3 bench/gpu.py --profile --output docs/performance-gpu.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ctypes
import datetime as dt
import gc
import importlib.metadata
import json
import logging
import os
import platform
import pstats
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import structlog  # noqa: E402

from bench.cgroups import changed_values  # noqa: E402
from bench.run import quantile  # noqa: E402
from nodeagent.collector import CollectorContext  # noqa: E402
from nodeagent.collectors.gpu import GpuCollector, GpuConfig  # noqa: E402
from nodeagent.exposition import FamilyRenderer  # noqa: E402
from nodeagent.hostfs import HostPaths  # noqa: E402
from nodeagent.metrics import MetricFamily  # noqa: E402
from nodeagent.sources.nvml import FIELDS, NVLINK_FIELDS, GpuSample  # noqa: E402
from nodeagent.workloads import WorkloadResolver  # noqa: E402
from tests.nvml_double import Field, Gpu, Process, ProcUtil, Scenario, ValueType, build, subprocess_env  # noqa: E402
from tests.nvml_double.build import BuildFailed, CompilerMissing  # noqa: E402
from tests.nvml_double.scenario import GiB  # noqa: E402

TARGET_MS = 20.0  # the target: CPU per cycle for 8 GPUs
MAX_GPUS = 16  # the double's table size
MAX_PROCS_PER_GPU = 256
NVLINKS = 18  # an H100 SXM5 has 18 NVLink 4 links
DEFAULT_INTERVAL_S = 15.0  # the agent's default collection interval (nodeagent/config.py)


def log(message: str) -> None:
    print(f"bench/gpu.py: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# The scenario


def gpu_fields() -> list[Field]:
    """Every field-values entry the collector asks for, as an H100 answers them (values plausible, constant)."""
    ull, ui = ValueType.UNSIGNED_LONG_LONG, ValueType.UNSIGNED_INT
    fields = [Field(fid, 0, value_type=ull) for fid in (3, 4, 5, 6)]  # ECC volatile/aggregate, corrected/uncorrected
    fields += [Field(fid, 0, value_type=ui) for fid in (29, 30, 31)]  # retired pages (Hopper answers 0 here)
    fields += [Field(fid, ns, value_type=ull) for fid, ns in ((74, 8_500_000_000), (76, 0), (269, 0), (270, 0))]
    fields += [Field(271, 0, value_type=ull)]  # clocks event time, ns
    fields += [Field(82, 38, value_type=ui), Field(94, 0, value_type=ui)]  # memory temperature, PCIe replays
    fields += [Field(197, 81_604_378_624, value_type=ull), Field(198, 412_316_860_416, value_type=ull)]  # PCIe bytes
    fields += [Field(91, NVLINKS, value_type=ui)]  # NVLink count
    # Per-link counters: no scope, so every link (scopeId 0..17) gets the same answer.
    fields += [Field(138, 73_014_444_032, value_type=ull), Field(139, 72_980_889_600, value_type=ull)]  # KiB
    fields += [Field(fid, 0, value_type=ull) for fid in (161, 162, 163)]
    return fields


def make_scenario(gpus: int, pids: Sequence[int], sample_ts_us: int) -> Scenario:
    """``gpus`` busy H100s; process ``i`` runs on GPU ``i % gpus`` with one per-process utilization sample."""
    out: list[Gpu] = []
    for g in range(gpus):
        mine = [(i, pid) for i, pid in enumerate(pids) if i % gpus == g]
        procs = [Process(pid, (1 + i % 4) * GiB) for i, pid in mine]
        util = [ProcUtil(pid, sample_ts_us, sm=10 + i % 80, mem=5 + i % 40) for i, pid in mine]
        out.append(
            Gpu(
                util_gpu=87,
                util_mem=41,
                mem_used=sum(p.used_bytes or 0 for p in procs),
                power_mw=512_345,
                energy_mj=9_876_543_210,
                temp_gpu=61,
                clocks={0: 1980, 1: 1980, 2: 2619, 3: 1545},
                clocks_event_reasons=0,
                fields=gpu_fields(),
                processes=procs,
                proc_util=util,
            )
        )
    return Scenario(gpus=out)


# ---------------------------------------------------------------------------------------------------
# The GPU processes: real sleeping processes, each in its own container cgroup when possible


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _enter(procs_files: Sequence[str]) -> None:
    _die_with_parent()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)


class Workers:
    """``count`` sleeping processes; with cgroups, each in ``/nodeagent-test-<pid>-<hex>.slice/kubepods/...``."""

    def __init__(self, count: int, cgroups: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tree: Any = None
        if cgroups != "no":
            reason = self._cgroups_unavailable()
            if reason and cgroups == "yes":
                raise SystemExit(f"bench/gpu.py: --cgroups yes, but {reason}")
            if reason:
                log(f"processes share the bench's cgroup ({reason})")
            else:
                from nodeagent.sources.cgroupfs import discover_layout
                from tests.integration.cgroups_helpers import TestCgroups

                self.tree = TestCgroups(discover_layout(HostPaths().cgroup_root))
        try:
            for _ in range(count):
                self._start()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _cgroups_unavailable() -> str:
        if os.geteuid() != 0:
            return "not root"
        from nodeagent.sources.cgroupfs import NoCgroupsError, discover_layout

        try:
            layout = discover_layout(HostPaths().cgroup_root)
        except NoCgroupsError as exc:
            return f"no cgroup hierarchy ({exc})"
        if not os.access(layout.walk_root, os.W_OK):
            return f"{layout.walk_root} is read-only"
        return ""

    def _start(self) -> None:
        cmd = ["sleep", "3600"]
        if self.tree is None:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent
            )
        else:
            rel = f"kubepods/burstable/pod{uuid.uuid4()}/{secrets.token_hex(32)}"
            self.tree.mkdir(rel)
            files = sorted({self.tree.path(h, rel, "cgroup.procs") for h in self.tree.hierarchies})
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=lambda: _enter(files)
            )
            self.tree.procs.append(proc)  # killed by pid and reaped by the tree's cleanup
        self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> list[str]:
        """Kill and reap every started process, remove every cgroup made; returns what could not be removed."""
        if self.tree is not None:
            left: list[str] = self.tree.cleanup()
            return left
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        return []


# ---------------------------------------------------------------------------------------------------
# The measurement (child process, LD_LIBRARY_PATH on the double)


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def series_by_family(families: Sequence[MetricFamily]) -> dict[str, int]:
    return {f.name: len(f.samples) for f in families}


def make_collector(xid_events: bool) -> GpuCollector:
    """The collector as the agent builds it (one shared resolver on the host's /proc and cgroup tree)."""
    paths = HostPaths()
    ctx = CollectorContext("gpu", paths, structlog.get_logger(), WorkloadResolver(paths))
    return GpuCollector(ctx, GpuConfig(xid_events=xid_events))


def forget_process_samples(collector: GpuCollector) -> None:
    """Make the next pass ask for the last second of per-process samples again (see ``--proc-util``)."""
    nvml = collector._nvml
    if nvml is not None:
        nvml._process_seen.clear()


async def cycles(
    collector: GpuCollector, n: int, pace: float, every: bool, renderers: tuple[FamilyRenderer, FamilyRenderer]
) -> dict[str, list[float]]:
    """``n`` measured cycles: collect, then render as sampled, then render with every value moved."""
    sampled, changed = renderers
    cpu, wall = time.process_time, time.perf_counter
    out: dict[str, list[float]] = {
        k: [] for k in ("collect_cpu", "collect_wall", "render_cpu", "render_changed_cpu", "calls", "series", "rss_kib")
    }
    nvml = collector._nvml
    assert nvml is not None
    for k in range(n):
        if every:
            forget_process_samples(collector)
        if pace:
            await asyncio.sleep(pace)
        calls = nvml.calls
        c0, w0 = cpu(), wall()
        families = await collector.collect()
        c1, w1 = cpu(), wall()
        chunk = sampled.render(families)
        c2 = cpu()
        other = changed_values(families, k + 1)
        c3 = cpu()
        changed.render(other)
        c4 = cpu()
        out["collect_cpu"].append(c1 - c0)
        out["collect_wall"].append(w1 - w0)
        out["render_cpu"].append(c2 - c1)
        out["render_changed_cpu"].append(c4 - c3)
        out["calls"].append(nvml.calls - calls)
        out["series"].append(chunk.series)
        out["rss_kib"].append(rss_kib()[0])
    return out


async def profile_cycles(collector: GpuCollector, n: int, every: bool, top: int = 25) -> dict[str, Any]:
    """cProfile of ``n`` more cycles (collect + render), on the event loop thread and on the NVML thread."""
    loop = asyncio.get_running_loop()
    # Per-thread CPU clocks: wall time would charge the loop thread's epoll wait while the NVML thread works.
    on_loop, on_nvml = cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time)
    renderer = FamilyRenderer()
    await loop.run_in_executor(collector._executor, on_nvml.enable)  # cProfile hooks only the enabling thread
    on_loop.enable()
    for _ in range(n):
        if every:
            forget_process_samples(collector)
        renderer.render(await collector.collect())
    on_loop.disable()
    await loop.run_in_executor(collector._executor, on_nvml.disable)
    stats = pstats.Stats(on_loop, stream=StringIO())
    stats.add(on_nvml)
    entries = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, ncalls, tottime, cumtime, callers)}
    total = sum(tt for _cc, _nc, tt, _ct, _callers in entries.values())
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]:
        rows.append(
            {
                "function": name if file == "~" else f"{_short(file)}:{line} {name}",
                "calls": nc / n,
                "own_ms": tt / n * 1e3,
                "own_pct": tt / total * 100 if total else 0.0,
                "cum_ms": ct / n * 1e3,
            }
        )
    groups: dict[str, float] = {}
    for (file, _line, name), (_cc, _nc, tt, _ct, _callers) in entries.items():
        g = _group(file, name)
        groups[g] = groups.get(g, 0.0) + tt
    return {
        "cycles": n,
        "total_ms": total / n * 1e3,
        "top": rows,
        "groups": {g: v / n * 1e3 for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
    }


def _short(file: str) -> str:
    for root in (str(REPO_ROOT) + os.sep, os.path.dirname(os.__file__) + os.sep):
        if file.startswith(root):
            return file[len(root) :]
    return file.rsplit("site-packages" + os.sep, 1)[-1]


def _group(file: str, name: str) -> str:
    """Where own time was spent, by owner (pynvml's own time includes the C call into the library)."""
    if file.endswith("pynvml.py"):
        return "pynvml (Python wrappers + the ctypes calls into the library)"
    if file == "~":
        if "ctypes" in name or "byref" in name or "sizeof" in name:
            return "ctypes helpers (byref, sizeof, casts)"
        return "builtins (str, dict, list, getattr, ...)"
    if "ctypes" in file:
        return "ctypes helpers (byref, sizeof, casts)"
    if file.endswith("nodeagent/sources/nvml.py"):
        return "nodeagent/sources/nvml.py (the pass)"
    if file.endswith("nodeagent/collectors/gpu.py"):
        return "nodeagent/collectors/gpu.py (families, attribution)"
    if file.endswith("nodeagent/workloads.py") or "cgroupfs" in file or "procfs" in file:
        return "workload resolver (/proc/<pid>/cgroup, classify)"
    if file.endswith("nodeagent/exposition.py"):
        return "exposition renderer"
    if "asyncio" in file or "concurrent" in file or "threading" in file or "selectors" in file:
        return "asyncio + thread hand-off"
    return "other"


def breakdown(collector: GpuCollector, n: int, every: bool) -> dict[str, list[float]]:
    """The parts of a cycle, each timed alone on this thread (no profiler): the NVML pass, its field-values batch,
    pynvml's ``nvmlDeviceGetFieldValues`` alone, attribution + families, and the workload resolver alone."""
    import pynvml

    nvml, resolver = collector._nvml, collector._resolver
    assert nvml is not None
    cpu = time.process_time
    gpus = nvml.sample()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(s.index) for s in gpus]
    links = max(nvml._links.values(), default=0)
    wanted = [(fid, 0) for fid in FIELDS] + [(fid, link) for link in range(links) for fid in NVLINK_FIELDS]
    out: dict[str, list[float]] = {k: [] for k in ("pass", "fields", "field_values_pynvml", "families", "resolve")}
    for _ in range(n):
        if every:
            forget_process_samples(collector)
        c0 = cpu()
        gpus = nvml.sample()
        c1 = cpu()
        for s, h in zip(gpus, handles, strict=True):
            nvml._fields(GpuSample(s.index, s.uuid), h)
        c2 = cpu()
        for h in handles:
            pynvml.nvmlDeviceGetFieldValues(h, wanted)
        c3 = cpu()
        collector._families(gpus, [])
        c4 = cpu()
        for s in gpus:
            for p in s.processes:
                resolver.resolve(p.pid)
        c5 = cpu()
        for key, value in zip(out, (c1 - c0, c2 - c1, c3 - c2, c4 - c3, c5 - c4), strict=True):
            out[key].append(value)
    return out


def xid_watch_cpu(seconds: float) -> dict[str, float]:
    """Idle CPU of this process, then with the collector's Xid watcher, then with one bare nvmlEventSetWait."""
    import pynvml

    def idle(window: float) -> float:
        c0 = time.process_time()
        time.sleep(window)
        return (time.process_time() - c0) / window

    base = idle(seconds)
    collector = make_collector(xid_events=True)

    async def start() -> None:
        await collector.collect()  # the first pass starts the watcher thread

    asyncio.run(start())
    time.sleep(0.2)  # registration done, now waiting
    watching = idle(seconds)
    assert collector._watcher is not None and collector._watcher.is_alive()
    collector._stop.set()
    collector._watcher.join(5)
    asyncio.run(collector.aclose())

    # The library alone: one wait of the whole window (one Python call), so its CPU is the library's waiting.
    pynvml.nvmlInit()
    try:
        es = pynvml.nvmlEventSetCreate()
        for i in range(pynvml.nvmlDeviceGetCount()):
            pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(i), 0x8, es)
        c0 = time.process_time()
        with contextlib.suppress(pynvml.NVMLError_Timeout):
            pynvml.nvmlEventSetWait(es, int(seconds * 1000))
        bare = (time.process_time() - c0) / seconds
        pynvml.nvmlEventSetFree(es)
    finally:
        pynvml.nvmlShutdown()
    return {
        "xid_window_s": seconds,
        "idle_cpu_ms_per_s": base * 1e3,
        "xid_watch_cpu_ms_per_s": (watching - base) * 1e3,
        "library_wait_cpu_ms_per_s": bare * 1e3,
    }


def child(args: argparse.Namespace) -> int:
    """Measure in this process (started with LD_LIBRARY_PATH on the double); print the figures as JSON."""
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    every = args.proc_util == "every"
    gc.collect()
    rss_start, _ = rss_kib()
    import pynvml  # noqa: F401 - what the agent loads on its first GPU pass, measured apart

    rss_import, _ = rss_kib()
    result: dict[str, Any] = {}

    async def run() -> None:
        collector = make_collector(xid_events=False)
        try:
            renderers = (FamilyRenderer(), FamilyRenderer())
            c0, w0 = time.process_time(), time.perf_counter()
            families = await collector.collect()  # nvmlInit, the NVLink count, everything "asked once"
            renderers[0].render(families)  # every series new: prefixes formatted once
            first_cpu, first_wall = time.process_time() - c0, time.perf_counter() - w0
            renderers[1].render(families)
            nvml = collector._nvml
            assert nvml is not None
            result["first_pass_calls"] = nvml.calls
            result["rss_after_first_pass_kib"] = rss_kib()[0]
            for _ in range(args.warmup):
                if every:
                    forget_process_samples(collector)
                await collector.collect()
            forget_process_samples(collector)  # so the families below hold the per-process figures
            families = list(await collector.collect())
            result["families"] = series_by_family(families)
            result["workload_ids"] = sorted(
                {labels[4] for f in families if f.name == "nodeagent_gpu_workload_processes" for labels, _ in f.samples}
            )
            gc.collect()
            measured = await cycles(collector, args.cycles, args.pace, every, renderers)
            result["rss_after_cycles_kib"], result["vmhwm_kib"] = rss_kib()
            parts = breakdown(collector, args.cycles, every)
            # The steady state of an idle GPU or a long interval's end: no per-process sample newer than the last
            # pass, so nvmlDeviceGetProcessUtilization answers NOT_FOUND (pynvml raises) every pass.
            quiet = await cycles(collector, max(3, args.cycles // 2), args.pace, False, renderers)
            prof = await profile_cycles(collector, args.cycles, every) if args.profile else None
        finally:
            await collector.aclose()
        result.update(
            first_pass_cpu_ms=first_cpu * 1e3,
            first_pass_wall_ms=first_wall * 1e3,
            samples=measured,
            no_new_samples=quiet,
            breakdown=parts,
            profile=prof,
        )

    asyncio.run(run())
    result.update(
        rss_start_kib=rss_start,
        rss_pynvml_import_kib=rss_import - rss_start,
        rss_first_pass_kib=result["rss_after_first_pass_kib"] - rss_import,
        rss_growth_over_cycles_kib=result["rss_after_cycles_kib"] - result["rss_after_first_pass_kib"],
    )
    if args.xid_seconds > 0:
        result.update(xid_watch_cpu(args.xid_seconds))
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------------
# Figures and report (parent)


def figures(raw: dict[str, Any], args: argparse.Namespace, workers: int, cgroups: bool) -> dict[str, Any]:
    s, q = raw["samples"], raw["no_new_samples"]
    cycle = [a + b for a, b in zip(s["collect_cpu"], s["render_cpu"], strict=True)]
    worst = [a + b for a, b in zip(s["collect_cpu"], s["render_changed_cpu"], strict=True)]
    ms = 1e3
    out: dict[str, Any] = {
        "gpus": args.gpus,
        "processes": args.processes,
        "workloads": len(raw["workload_ids"]),
        "process_cgroups": cgroups,
        "proc_util": args.proc_util,
        "cycles": args.cycles,
        "warmup": args.warmup,
        "pace_s": args.pace,
        "node_exporter": "no GPU collector: nothing to run next to this (not measured)",
        "target_ms": TARGET_MS,
        "collect_cpu_ms_median": statistics.median(s["collect_cpu"]) * ms,
        "collect_cpu_ms_p95": quantile(s["collect_cpu"], 0.95) * ms,
        "collect_wall_ms_median": statistics.median(s["collect_wall"]) * ms,
        "collect_wall_ms_p95": quantile(s["collect_wall"], 0.95) * ms,
        "render_cpu_ms_median": statistics.median(s["render_cpu"]) * ms,
        "render_changed_cpu_ms_median": statistics.median(s["render_changed_cpu"]) * ms,
        "cycle_cpu_ms_median": statistics.median(cycle) * ms,
        "cycle_cpu_ms_p95": quantile(cycle, 0.95) * ms,
        "cycle_changed_cpu_ms_median": statistics.median(worst) * ms,
        "cycle_changed_cpu_ms_p95": quantile(worst, 0.95) * ms,
        "no_new_samples_collect_cpu_ms_median": statistics.median(q["collect_cpu"]) * ms,
        "no_new_samples_calls_per_pass": statistics.median(q["calls"]),
        "no_new_samples_series": int(statistics.median(q["series"])),
        "nvml_calls_per_pass": statistics.median(s["calls"]),
        "nvml_calls_first_pass": raw["first_pass_calls"],
        "series": int(statistics.median(s["series"])),
        "families": raw["families"],
        "first_pass_cpu_ms": raw["first_pass_cpu_ms"],
        "first_pass_wall_ms": raw["first_pass_wall_ms"],
        "rss_start_mib": raw["rss_start_kib"] / 1024,
        "rss_pynvml_import_mib": raw["rss_pynvml_import_kib"] / 1024,
        "rss_first_pass_mib": raw["rss_first_pass_kib"] / 1024,
        "rss_added_mib": (raw["rss_pynvml_import_kib"] + raw["rss_first_pass_kib"]) / 1024,
        "rss_growth_over_cycles_mib": raw["rss_growth_over_cycles_kib"] / 1024,
        # Allocator settling levels off; a leak keeps growing: compare the two halves of the measured cycles.
        "rss_growth_first_half_mib": (s["rss_kib"][len(s["rss_kib"]) // 2] - s["rss_kib"][0]) / 1024,
        "rss_growth_second_half_mib": (s["rss_kib"][-1] - s["rss_kib"][len(s["rss_kib"]) // 2]) / 1024,
        "vmhwm_mib": raw["vmhwm_kib"] / 1024,
        "started_processes": workers,
    }
    b = {k: statistics.median(v) * ms for k, v in raw["breakdown"].items()}
    out["breakdown_ms"] = {
        "pass": b["pass"],
        "pass_field_values": b["fields"],
        "pass_field_values_pynvml_only": b["field_values_pynvml"],
        "pass_other_calls": b["pass"] - b["fields"],
        "families": b["families"],
        "families_resolve": b["resolve"],
        "thread_and_loop": out["collect_cpu_ms_median"] - b["pass"] - b["families"],
    }
    other_calls = out["nvml_calls_per_pass"] - 1 - args.gpus  # less nvmlDeviceGetCount and the field batches
    out["us_per_other_call"] = (b["pass"] - b["fields"]) * 1e3 / max(other_calls, 1)
    out["cpu_ms_per_gpu"] = out["cycle_changed_cpu_ms_median"] / args.gpus
    out["us_per_nvml_call"] = out["collect_cpu_ms_median"] * 1e3 / max(out["nvml_calls_per_pass"], 1)
    out["target_ratio"] = out["cycle_changed_cpu_ms_p95"] / TARGET_MS
    out["target_met"] = out["cycle_changed_cpu_ms_p95"] <= TARGET_MS
    for key in ("xid_window_s", "idle_cpu_ms_per_s", "xid_watch_cpu_ms_per_s", "library_wait_cpu_ms_per_s"):
        if key in raw:
            out[key] = raw[key]
    out["samples_ms"] = {
        k: [round(v * ms, 4) for v in s[k]] for k in ("collect_cpu", "collect_wall", "render_cpu", "render_changed_cpu")
    }
    if raw.get("profile"):
        out["profile"] = raw["profile"]
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def report(f: dict[str, Any], command: str) -> str:
    gpus, procs = f["gpus"], f["processes"]
    met = "met" if f["target_met"] else "**not met**"
    who = (
        f"each in a pod-style container cgroup of its own: {f['workloads']} workloads"
        if f["process_cgroups"]
        else f"all in the bench's own cgroup: {f['workloads']} workload"
    )
    uname = platform.uname()
    lines = [
        "# Performance: the gpu collector over NVML",
        "",
        "Generated by `bench/gpu.py` (see bench/README.md); do not edit by hand. Reproduce on an otherwise idle host, "
        "as root (without root the processes share one cgroup and the per-workload series shrink):",
        "",
        f"```sh\n{command}\n```",
        "",
        f"{gpus} H100 SXM5 GPUs and {procs} GPU processes ({procs / gpus:.3g} per GPU, real `sleep` processes "
        f"{who}), served by the NVML test double (`tests/nvml_double`) through the real pynvml. One child process "
        "runs `GpuCollector.collect()` on an asyncio loop, as the agent does, with the Xid watcher off; CPU is "
        "`time.process_time()` of that process (every thread: the NVML thread and the event loop). "
        f"{f['cycles']} measured cycles after {f['warmup']} warm-up cycles. node_exporter has no GPU collector, so "
        "there is no node_exporter figure to put next to these.",
        "",
        "| per cycle | median | p95 |",
        "|---|---:|---:|",
        f"| **CPU: collect + render, every value changed** (the target's figure) | "
        f"**{f['cycle_changed_cpu_ms_median']:.2f} ms** | **{f['cycle_changed_cpu_ms_p95']:.2f} ms** |",
        f"| CPU: collect + render, values as sampled | {f['cycle_cpu_ms_median']:.2f} ms | "
        f"{f['cycle_cpu_ms_p95']:.2f} ms |",
        f"| CPU: `collect()` alone (NVML pass + attribution + families) | {f['collect_cpu_ms_median']:.2f} ms | "
        f"{f['collect_cpu_ms_p95']:.2f} ms |",
        f"| wall: `collect()` | {f['collect_wall_ms_median']:.2f} ms | {f['collect_wall_ms_p95']:.2f} ms |",
        f"| CPU: render, values as sampled / every value changed | {f['render_cpu_ms_median']:.2f} / "
        f"{f['render_changed_cpu_ms_median']:.2f} ms | |",
        "",
        f"- Target: <= {TARGET_MS:g} ms CPU per cycle for 8 GPUs (p95 of collect + render, every value changed): "
        f"{met} ({f['cycle_changed_cpu_ms_p95']:.2f} ms = {f['target_ratio']:.2f} x the target; median "
        f"{f['cycle_changed_cpu_ms_median'] / TARGET_MS:.2f} x).",
        f"- CPU per GPU: {f['cpu_ms_per_gpu']:.2f} ms per cycle (median, collect + render, values changed).",
        f"- NVML calls per pass: {f['nvml_calls_per_pass']:.0f} ({f['nvml_calls_per_pass'] / gpus:.1f} per GPU; the "
        f"first pass {f['nvml_calls_first_pass']}, with `nvmlInit`, the NVLink count and the values asked once); "
        f"{f['us_per_nvml_call']:.1f} µs of `collect()` CPU per call.",
        f"- Series per cycle: {f['series']} ({sum(f['families'].values())} in the families).",
        f"- First pass (`nvmlInit`, everything asked once, every series rendered anew): "
        f"{f['first_pass_cpu_ms']:.1f} ms CPU, {f['first_pass_wall_ms']:.1f} ms wall.",
        f"- No per-process sample newer than the last pass (`nvmlDeviceGetProcessUtilization` answers NOT_FOUND): "
        f"{f['no_new_samples_collect_cpu_ms_median']:.2f} ms CPU per `collect()`, "
        f"{f['no_new_samples_calls_per_pass']:.0f} calls, {f['no_new_samples_series']} series.",
        f"- RSS: {f['rss_start_mib']:.1f} MiB before; `import pynvml` adds {f['rss_pynvml_import_mib']:.1f} MiB, the "
        f"first pass (library loaded, NVML thread started, caches filled) {f['rss_first_pass_mib']:.1f} MiB: "
        f"{f['rss_added_mib']:.1f} MiB in all (the double is a small library; the real libnvidia-ml.so.1 maps more). "
        f"From the first pass to the end of the measured cycles {f['rss_growth_over_cycles_mib']:+.2f} MiB: "
        f"{f['rss_growth_first_half_mib']:+.2f} MiB over the first half of the measured cycles, "
        f"{f['rss_growth_second_half_mib']:+.2f} MiB over the second; peak {f['vmhwm_mib']:.1f} MiB.",
    ]
    if "xid_watch_cpu_ms_per_s" in f:
        lines.append(
            f"- Xid watcher (measured apart, over {f['xid_window_s']:g} s idle): "
            f"{f['xid_watch_cpu_ms_per_s']:.2f} ms CPU per second of watching; one bare `nvmlEventSetWait` on the "
            f"double costs {f['library_wait_cpu_ms_per_s']:.2f} ms per second by itself (it polls every 10 ms), so "
            "nearly all of it is the double's waiting; the real library waits on the driver instead (not measured "
            "here). The watcher's own Python runs once per `wait_ms` (1 s)."
        )
    bd = f["breakdown_ms"]
    collect = f["collect_cpu_ms_median"]

    def share(v: float) -> str:
        return f"{v / collect * 100:.0f} %" if collect > 0 else ""

    field_entries = len(FIELDS) + NVLINKS * len(NVLINK_FIELDS)
    lines += [
        "",
        "## Where a cycle's CPU goes",
        "",
        f"Each part timed alone on one thread, {f['cycles']} times, no profiler; median ms per cycle and share of "
        f"`collect()` ({collect:.2f} ms).",
        "",
        "| part | ms / cycle | share of `collect()` |",
        "|---|---:|---:|",
        f"| NVML pass (`Nvml.sample()`: {f['nvml_calls_per_pass']:.0f} pynvml calls) | {bd['pass']:.2f} | "
        f"{share(bd['pass'])} |",
        f"| - of which the field-values batch (`Nvml._fields`, {field_entries} entries per GPU, one call each) | "
        f"{bd['pass_field_values']:.2f} | {share(bd['pass_field_values'])} |",
        f"| - - of which pynvml's `nvmlDeviceGetFieldValues` alone (request array, C call; no decoding) | "
        f"{bd['pass_field_values_pynvml_only']:.2f} | {share(bd['pass_field_values_pynvml_only'])} |",
        f"| - of which the other calls ({f['us_per_other_call']:.1f} µs each) | {bd['pass_other_calls']:.2f} | "
        f"{share(bd['pass_other_calls'])} |",
        f"| attribution + families (`GpuCollector._families`) | {bd['families']:.2f} | {share(bd['families'])} |",
        f"| - of which `WorkloadResolver.resolve` of the {procs} pids (`/proc/<pid>/cgroup`) | "
        f"{bd['families_resolve']:.2f} | {share(bd['families_resolve'])} |",
        f"| thread hand-off and event loop (`collect()` less the two above) | {bd['thread_and_loop']:.2f} | "
        f"{share(bd['thread_and_loop'])} |",
        f"| render (not in `collect()`): as sampled / every value changed | {f['render_cpu_ms_median']:.2f} / "
        f"{f['render_changed_cpu_ms_median']:.2f} | |",
        "",
        f"The field-values batch is {share(bd['pass_field_values'])} of `collect()`: {gpus * field_entries} entries "
        f"per pass, of which pynvml building the request array (every `fieldId`/`scopeId` set through its "
        f"`_PrintableStructure.__setattr__`) and the call take {bd['pass_field_values_pynvml_only']:.2f} ms and "
        f"decoding the answers (`field_value`, each attribute read through pynvml's Python-level "
        f"`__getattribute__`) and recording them the other "
        f"{bd['pass_field_values'] - bd['pass_field_values_pynvml_only']:.2f} ms. The other "
        f"{f['nvml_calls_per_pass'] - 1 - gpus:.0f} calls cost {f['us_per_other_call']:.1f} µs each in pynvml, "
        f"ctypes and the double. Attribution reads `/proc/<pid>/cgroup` for every listed process every pass "
        f"({bd['families_resolve'] * 1e3 / max(procs, 1):.0f} µs per process). The profile below names the "
        "functions.",
    ]
    lines += [
        "",
        "## Machine",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- CPUs (`nproc`): {len(os.sched_getaffinity(0))}; CPU model: {_cpu_model()}",
        f"- kernel: {uname.system} {uname.release} ({uname.machine})",
        f"- Python: {platform.python_version()}; nvidia-ml-py {_version('nvidia-ml-py')}; "
        f"nodeagent {_version('nodeagent')}",
        "",
        "## Method",
        "",
        f"""\
The scenario: {gpus} GPUs with the double's H100 SXM5 80GB defaults, busy (utilization, power, clocks), every
field-values entry the collector asks for (ECC 3-6, retired pages 29-31, clocks event time 74/76/269-271, memory
temperature 82, PCIe 94/197/198, the NVLink count 91 = {NVLINKS}, and the per-link counters 138/139/161-163 answering
every link), and {procs} compute processes, process `i` on GPU `i mod {gpus}` with 1-4 GiB each and one
per-process utilization sample. Its pids are live `sleep` processes, so `WorkloadResolver.resolve` reads each one's
`/proc/<pid>/cgroup` and classifies a real cgroup path{"" if f["process_cgroups"] else " (the bench's own)"}.

Per-process utilization (`--proc-util {f["proc_util"]}`): the samples carry a timestamp one day ahead. With `every`
(the default) the bench clears the collector's last-seen timestamps (`Nvml._process_seen`) before each cycle, outside
the timing, so every measured pass asks for the last second and gets every process's sample: the steady state of
busy GPUs, where each process has a new sample each interval. The second row set ("no per-process sample newer")
runs {max(3, f["cycles"] // 2)} more cycles without clearing, so NVML answers NOT_FOUND, as for idle GPUs.

The child process is started with `LD_LIBRARY_PATH` on the double, so pynvml's own `CDLL("libnvidia-ml.so.1")`
loads it as it would the driver's library on a GPU node. The collector is `GpuCollector` with
`GpuConfig(xid_events=False)`, a `WorkloadResolver(HostPaths())` and no runtime metadata. It first runs one pass
(timed apart: `nvmlInit`, the NVLink count, values the GPU will never give are asked once), then {f["warmup"]}
warm-up cycles, then {f["cycles"]} measured cycles {f["pace_s"]:g} s apart. Each cycle times `await collect()` with
`time.process_time()` (CPU of every thread of the process) and `time.perf_counter()`, then renders the families with
`FamilyRenderer` (the exposition's renderer, as `Exposition.publish` does) twice: as sampled (the double's values are
constant, so nearly every series takes the unchanged path) and with every value moved since the previous render
(building the moved copy is not timed), the worst case of a busy node where every counter moves. The target is
checked against the p95 of collect + render with every value changed. NVML calls are `Nvml.calls` (pynvml calls;
the process list and per-process utilization each make two C calls per pynvml call).

What this does not measure: the driver. On a GPU node each NVML call is an ioctl into the NVIDIA kernel driver,
and many read the GPU over PCIe; the double answers from memory after a `stat()` of the scenario file. So these
figures are nodeagent's own cost (Python, pynvml, ctypes, attribution, families, rendering) plus a small stand-in
for the library; the driver's share on a real node is about calls per pass x its cost per call. The Xid watcher is
measured apart because its cost is per second, not per cycle: at the agent's default {DEFAULT_INTERVAL_S:g} s
interval its share per cycle is {DEFAULT_INTERVAL_S:g} x the per-second figure above.
""",
    ]
    prof = f.get("profile")
    if prof:
        lines += [
            f"## Profile: {prof['cycles']} cycles (collect + render as sampled) under cProfile, on the event loop "
            "thread and the NVML thread",
            "",
            f"Not part of any figure above (cProfile inflates call-heavy code: {prof['total_ms']:.1f} ms of own time "
            "per cycle under the profiler). Own time by owner, per cycle:",
            "",
            "| where | own ms / cycle | share |",
            "|---|---:|---:|",
        ]
        total = prof["total_ms"] or 1.0
        lines += [f"| {g} | {v:.2f} | {v / total * 100:.0f} % |" for g, v in prof["groups"].items()]
        lines += [
            "",
            "Top functions by own time:",
            "",
            "| function | calls / cycle | own ms / cycle | own % | cumulative ms / cycle |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| `{r['function']}` | {r['calls']:.0f} | {r['own_ms']:.3f} | {r['own_pct']:.1f} | {r['cum_ms']:.2f} |"
            for r in prof["top"]
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, help=f"GPUs in the scenario, 1-{MAX_GPUS} (default 8)")
    parser.add_argument("--processes", type=int, default=64, help="GPU processes, spread over the GPUs (default 64)")
    parser.add_argument("--cycles", type=int, default=50, help="measured cycles (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured cycles after the first pass (default 5)")
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between cycles (default 0.05)")
    parser.add_argument(
        "--proc-util",
        choices=("every", "first"),
        default="every",
        help="per-process utilization samples on every measured pass (default) or only on the first",
    )
    parser.add_argument(
        "--cgroups",
        choices=("auto", "yes", "no"),
        default="auto",
        help="a container cgroup per process: auto (when root and the tree is writable), yes, no",
    )
    parser.add_argument(
        "--xid-seconds", type=float, default=5.0, help="idle window for the Xid watcher's CPU (0: skip; default 5)"
    )
    parser.add_argument("--profile", action="store_true", help="append a cProfile of --cycles more cycles")
    parser.add_argument("--output", type=Path, help="also write the markdown report here (docs/performance-gpu.md)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON before the report")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.gpus <= MAX_GPUS:
        parser.error(f"--gpus must be 1-{MAX_GPUS} (the double's limit), got {args.gpus}")
    if not 0 <= args.processes <= args.gpus * MAX_PROCS_PER_GPU:
        parser.error(f"--processes must be 0-{args.gpus * MAX_PROCS_PER_GPU} for {args.gpus} GPUs")
    if args.cycles < 2 or args.warmup < 0 or args.pace < 0 or args.xid_seconds < 0:
        parser.error("--cycles >= 2, --warmup >= 0, --pace >= 0 and --xid-seconds >= 0 are required")
    return args


def child_argv(args: argparse.Namespace) -> list[str]:
    out = ["--child", "--gpus", str(args.gpus), "--processes", str(args.processes), "--cycles", str(args.cycles)]
    out += ["--warmup", str(args.warmup), "--pace", str(args.pace), "--proc-util", args.proc_util]
    out += ["--xid-seconds", str(args.xid_seconds)]
    return out + (["--profile"] if args.profile else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        return child(args)
    command = shlex.join(["python3", "bench/gpu.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        lib_dir = build()
    except (CompilerMissing, BuildFailed) as exc:
        log(f"cannot build the NVML test double: {exc}")
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="na-bench-gpu-") as tmp:
        log(f"starting {args.processes} GPU processes")
        workers = Workers(args.processes, args.cgroups)
        try:
            scenario = Path(tmp) / "nvml.scenario"
            # One day ahead: newer than any lastSeenTimeStamp the collector asks with (see --proc-util).
            make_scenario(args.gpus, workers.pids, int((time.time() + 86_400) * 1e6)).write(scenario)
            log(f"measuring {args.gpus} GPUs: first pass, {args.warmup} warm-up and {args.cycles} measured cycles")
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *child_argv(args)],
                env=subprocess_env(lib_dir, scenario),
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=_die_with_parent,
                check=False,
            )
            alive = sum(p.poll() is None for p in workers.procs)
        finally:
            left = workers.stop()
            if left:
                log(f"WARNING: could not remove {left}; remove them with rmdir, deepest first")
    if proc.returncode != 0:
        log(f"the measuring process exited {proc.returncode}")
        return 1
    fig = figures(json.loads(proc.stdout), args, alive, workers.tree is not None)
    if args.json:
        print(json.dumps(fig, indent=2))
    text = report(fig, command)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        log(f"wrote {args.output}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
