#!/usr/bin/env python3
"""CPU per workload cgroup per cycle of the cgroups collector, next to the floor of reading the same files.

Creates N synthetic Kubernetes workload cgroups (pods, each with containers holding one live ``sleep``)
under a bench-only parent ``/nodeagent-bench-<pid>.slice`` in every hierarchy the collector reads, runs
``CgroupsCollector.collect_sync()`` restricted to that parent, and measures in the same process and run:
the collector's CPU per cycle, the CPU of only opening and reading the files that cycle read (the floor),
the directory listings, and rendering the families. Always removes what it created. Needs root.
Run: ``python3 bench/cgroups.py --counts 100,1000`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import cProfile
import ctypes
import datetime as dt
import errno
import functools
import gc
import json
import os
import platform
import pstats
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import structlog

import nodeagent.collectors.cgroups as cgroups_module
from nodeagent.collector import CollectorContext
from nodeagent.collectors.cgroups import CgroupsCollector, CgroupsConfig
from nodeagent.exposition import FamilyRenderer
from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily
from nodeagent.sources.cgroupfs import CgroupLayout, NoCgroupsError, discover_layout
from nodeagent.workloads import walk

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFIX = "nodeagent-bench-"
# The v1 controllers whose files the collector reads (the named systemd hierarchy it only may walk).
V1_READ = ("cpu", "cpuacct", "memory", "blkio", "pids")
# Controllers enabled below the bench parent on a v2 host, where the host root offers them.
V2_CONTROLLERS = ("cpu", "memory", "io", "pids")
QUOTA_US, PERIOD_US = 50_000, 100_000
MEMORY_LIMIT = 256 * 1024 * 1024
SELF_FAMILY_PREFIX = "nodeagent_cgroups_"
_STALE_RE = re.compile(rf"^{PREFIX}(\d+)\.slice$")


def log(message: str) -> None:
    """Progress on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# The synthetic cgroup tree


def hierarchies(layout: CgroupLayout) -> list[str]:
    """The hierarchy directories the collector reads on this host, each once (co-mounted ones share one)."""
    dirs = [layout.v1[c] for c in V1_READ if c in layout.v1]
    if layout.unified is not None:
        dirs.append(layout.unified)
    dirs.append(layout.walk_root)  # where the collector finds workloads (normally one of the above)
    seen: set[str] = set()
    out = []
    for d in dirs:
        real = os.path.realpath(d)
        if real not in seen:
            seen.add(real)
            out.append(d)
    return out


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the bench dies, even by SIGKILL (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _pids_in(cgroup_dir: str) -> list[int]:
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "rb") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _rmdir(path: str, attempts: int = 100) -> bool:
    """rmdir a cgroup, retrying while it is busy (tasks still exiting); kill anything left in it."""
    for i in range(attempts):
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log(f"cannot remove {path}: {exc}")
                return False
        if i % 10 == 9:  # still busy: anything left inside is a bench process (we never move ourselves)
            for pid in _pids_in(path):
                if pid != os.getpid():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    log(f"cannot remove {path}: still busy after {attempts} attempts")
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(hier_dirs: Sequence[str]) -> int:
    """Remove ``nodeagent-bench-<pid>.slice`` trees left by a bench that was SIGKILLed; returns how many."""
    removed = 0
    for h in hier_dirs:
        with contextlib.suppress(OSError):
            for name in os.listdir(h):
                m = _STALE_RE.match(name)
                if m is None or _alive(int(m.group(1))):
                    continue
                top = os.path.join(h, name)
                for dirpath, _subdirs, _files in os.walk(top, topdown=False):
                    for pid in _pids_in(dirpath):
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                    _rmdir(dirpath)
                removed += 1
    return removed


@dataclass
class Tree:
    """
    The bench's cgroups: ``/<slice>/kubepods/burstable/pod<uuid>/<64 hex>`` in every hierarchy, one
    ``sleep`` per container. ``cleanup`` is idempotent and safe to call from atexit and finally blocks.
    """

    hier_dirs: list[str]
    v2: bool
    slice_name: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}.slice")
    created: list[str] = field(default_factory=list)  # relative dirs, parents first
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    parent_depth: int = 0
    pods: int = 0
    containers: int = 0
    quota: int = 0

    @property
    def parent(self) -> str:
        """The relative directory pods go in."""
        return f"{self.slice_name}/kubepods/burstable"

    def _mkdir(self, rel: str, inner: bool) -> None:
        self.created.append(rel)
        for h in self.hier_dirs:
            os.mkdir(os.path.join(h, rel))
            if self.v2 and inner:
                self._enable_controllers(os.path.join(h, rel))

    @staticmethod
    def _enable_controllers(path: str) -> None:
        offered: list[str] = []
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.controllers")) as f:
            offered = f.read().split()
        for c in V2_CONTROLLERS:
            if c in offered:
                with contextlib.suppress(OSError):
                    _write(os.path.join(path, "cgroup.subtree_control"), f"+{c}")

    def create_parent(self) -> None:
        """The slice, ``kubepods`` and ``burstable``: structural cgroups the collector walks but does not export."""
        for rel in (self.slice_name, f"{self.slice_name}/kubepods", self.parent):
            self._mkdir(rel, inner=True)
        self.parent_depth = len(self.created)

    def add_workloads(self, n: int, containers_per_pod: int) -> None:
        """``n`` exported workloads: pods with ``containers_per_pod`` containers each (the last may have fewer)."""
        made = 0
        while made < n:
            pod = f"{self.parent}/pod{uuid.uuid4()}"
            self._mkdir(pod, inner=True)
            self.pods += 1
            made += 1
            for _ in range(min(containers_per_pod, n - made)):
                self._add_container(f"{pod}/{os.urandom(32).hex()}")
                made += 1

    def _add_container(self, rel: str) -> None:
        self._mkdir(rel, inner=False)
        limited = self.containers % 2 == 0  # every other container has a CPU quota and a memory limit
        self.containers += 1
        for h in self.hier_dirs:
            d = os.path.join(h, rel)
            if limited and os.path.exists(os.path.join(d, "cpu.cfs_quota_us")):
                _write(os.path.join(d, "cpu.cfs_quota_us"), str(QUOTA_US))
            if limited and os.path.exists(os.path.join(d, "memory.limit_in_bytes")):
                _write(os.path.join(d, "memory.limit_in_bytes"), str(MEMORY_LIMIT))
            if limited and self.v2 and os.path.exists(os.path.join(d, "cpu.max")):
                _write(os.path.join(d, "cpu.max"), f"{QUOTA_US} {PERIOD_US}")
            if limited and self.v2 and os.path.exists(os.path.join(d, "memory.max")):
                _write(os.path.join(d, "memory.max"), str(MEMORY_LIMIT))
        self.quota += limited
        proc = subprocess.Popen(
            ["sleep", "3600"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.procs.append(proc)
        for h in self.hier_dirs:
            _write(os.path.join(h, rel, "cgroup.procs"), str(proc.pid))

    def remove_workloads(self) -> bool:
        """Kill the sleeps, wait for them, rmdir pods and containers deepest first; the parent stays."""
        return self._remove(keep=self.parent_depth)

    def cleanup(self) -> bool:
        """Remove everything the bench created; True when nothing is left."""
        return self._remove(keep=0)

    def _remove(self, keep: int) -> bool:
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # finish cleaning before dying
        try:
            for proc in self.procs:
                if proc.poll() is None:
                    with contextlib.suppress(OSError):
                        proc.kill()
            for proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            self.procs = []
            ok = True
            while len(self.created) > keep:
                rel = self.created.pop()  # children were created after their parents
                for h in self.hier_dirs:
                    ok = _rmdir(os.path.join(h, rel)) and ok
            if keep == self.parent_depth:
                self.pods = self.containers = self.quota = 0
            return ok
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def leftovers(self) -> list[str]:
        """Bench directories that still exist in any hierarchy."""
        return [
            os.path.join(h, self.slice_name) for h in self.hier_dirs if os.path.exists(os.path.join(h, self.slice_name))
        ]


# ---------------------------------------------------------------------------------------------------
# Measuring


def bench_config(slice_name: str, max_cgroups: int) -> CgroupsConfig:
    """The collector's configuration: only the bench parent, limits re-read only when a cgroup is new."""
    return CgroupsConfig(
        exclude=rf"^/(?!{re.escape(slice_name)}(?:/|$))",
        max_cgroups=max(2000, max_cgroups),
        spec_interval=3600.0,
    )


def make_collector(cfg: CgroupsConfig, cgroup_root: str) -> CgroupsCollector:
    """The collector as the agent builds it."""
    ctx = CollectorContext(name="cgroups", paths=HostPaths(cgroupfs=cgroup_root), log=structlog.get_logger())
    return CgroupsCollector(ctx, cfg)


@dataclass
class Recorded:
    """What one collector cycle touched: files read (in order), directories listed, files found missing."""

    files: list[str]
    dirs: list[str]
    missing: list[str]


def record_cycle(collector: CgroupsCollector) -> tuple[Recorded, list[MetricFamily]]:
    """Run one cycle with ``cgroups.read_file_at`` and ``os.scandir`` wrapped to record the paths."""
    rec = Recorded([], [], [])
    real_read_at, real_scandir = cgroups_module.read_file_at, os.scandir

    def read_file_at(dir_fd: int, name: str, path: str) -> bytes | None:
        # The collector opens relative to held directory descriptors; the floor opens the same files by path.
        data = real_read_at(dir_fd, name, path)
        rec.files.append(path)
        if data is None:
            rec.missing.append(path)
        return data

    def scandir(path: str = ".") -> Any:
        rec.dirs.append(path)
        return real_scandir(path)

    cgroups_module.read_file_at = read_file_at
    os.scandir = scandir  # type: ignore[assignment]
    try:
        families = collector.collect_sync()
    finally:
        cgroups_module.read_file_at = real_read_at
        os.scandir = real_scandir
    return rec, families


def read_files(paths: Sequence[str]) -> None:
    """The floor: open, read (one read, the collector's buffer size), close; nothing else."""
    open_, read, close, flags = os.open, os.read, os.close, os.O_RDONLY | os.O_CLOEXEC
    for path in paths:
        fd = open_(path, flags)
        read(fd, 65536)
        close(fd)


def open_held(paths: Sequence[str]) -> list[int] | None:
    """Open every file once (for the held-fd reference); None when the fd limit cannot allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The collector holds its own descriptors (one per cgroup directory it reads) while this reference runs.
    need = len(os.listdir("/proc/self/fd")) + len(paths) + 64
    if need > soft:
        if hard != resource.RLIM_INFINITY and need > hard:
            return None
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in paths]


def pread_held(fds: Sequence[int]) -> None:
    """The held-fd reference: pread from offset 0 (cgroupfs regenerates the content on every read at 0)."""
    pread = os.pread
    for fd in fds:
        pread(fd, 65536, 0)


def list_dirs(dirs: Sequence[str]) -> None:
    """The listing floor: scandir each directory and iterate its entries."""
    scandir = os.scandir
    for d in dirs:
        with scandir(d) as it:
            for _ in it:
                pass


def changed_values(families: Sequence[MetricFamily], k: int) -> list[MetricFamily]:
    """The same series with every value moved (integral values stay integral, others stay fractional)."""
    return [
        MetricFamily(
            f.name,
            f.type,
            f.help,
            f.labelnames,
            tuple((labels, v + k if float(v).is_integer() else v + k * 1e-3) for labels, v in f.samples),
        )
        for f in families
    ]


def workload_series(families: Sequence[MetricFamily]) -> int:
    """Samples of the per-workload families (the collector's own ``nodeagent_cgroups_*`` left out)."""
    return sum(len(f.samples) for f in families if not f.name.startswith(SELF_FAMILY_PREFIX))


def exported_workloads(families: Sequence[MetricFamily]) -> int:
    """Workloads exported: the samples of ``nodeagent_workload_info``."""
    return next((len(f.samples) for f in families if f.name == "nodeagent_workload_info"), 0)


@dataclass
class Point:
    """Measurements at one cgroup count: CPU seconds per cycle, one list entry per measured cycle."""

    requested: int
    pods: int
    containers: int
    with_quota: int
    exported: int
    series: int
    files: int
    dirs: int
    missing: list[str]
    first_cycle: float
    collector: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    listing: list[float] = field(default_factory=list)
    render_sampled: list[float] = field(default_factory=list)
    render_changed: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    walk: list[float] = field(default_factory=list)
    profile: str = ""


def measure(tree: Tree, cgroup_root: str, n: int, args: argparse.Namespace) -> Point:
    """Create ``n`` workloads, measure ``--cycles`` interleaved cycles of everything, remove them."""
    try:
        if n:
            log(f"N={n}: creating cgroups and processes")
            tree.add_workloads(n, args.containers_per_pod)
        cfg = bench_config(tree.slice_name, n)
        collector = make_collector(cfg, cgroup_root)
        cpu = time.process_time
        gc.collect()
        t0 = cpu()
        collector.collect_sync()
        first = cpu() - t0
        for _ in range(args.warmup):
            collector.collect_sync()
        rec, families = record_cycle(collector)
        point = Point(
            requested=n,
            pods=tree.pods,
            containers=tree.containers,
            with_quota=tree.quota,
            exported=exported_workloads(families),
            series=workload_series(families),
            files=len(rec.files),
            dirs=len(rec.dirs),
            missing=rec.missing,
            first_cycle=first,
        )
        sampled, changed = FamilyRenderer(), FamilyRenderer()
        sampled.render(families)
        changed.render(families)
        log(f"N={n}: measuring {args.cycles} cycles ({point.files} files, {point.dirs} directories per cycle)")
        held = open_held(rec.files)
        try:
            discovery = functools.partial(
                walk,
                discover_layout(cgroup_root).walk_root,
                None,
                re.compile(cfg.exclude) if cfg.exclude else None,
                cfg.max_depth,
                classify=collector._resolver.classify,  # the collector's cached classification, as in a cycle
            )
            measure_rounds(collector, discovery, rec, sampled, changed, held, point, args.cycles)
        finally:
            for fd in held or ():
                os.close(fd)
        if args.profile and n == max(args.counts):
            point.profile = profile(collector, args.cycles, point.exported)
        return point
    finally:
        if n:
            log(f"N={n}: removing cgroups and processes")
            tree.remove_workloads()


def measure_rounds(
    collector: CgroupsCollector,
    discovery: Callable[[], object],
    rec: Recorded,
    sampled: FamilyRenderer,
    changed: FamilyRenderer,
    held: list[int] | None,
    point: Point,
    cycles: int,
) -> None:
    """The measured rounds: each times one collector cycle, then each reference on the same cgroups."""
    cpu = time.process_time
    gc.collect()
    for i in range(cycles):
        t0 = cpu()
        families = collector.collect_sync()
        t1 = cpu()
        read_files(rec.files)
        t2 = cpu()
        list_dirs(rec.dirs)
        t3 = cpu()
        sampled.render(families)
        t4 = cpu()
        moved = changed_values(families, i + 1)
        t5 = cpu()
        changed.render(moved)
        t6 = cpu()
        if held is not None:
            pread_held(held)
        t7 = cpu()
        discovery()
        t8 = cpu()
        point.collector.append(t1 - t0)
        point.floor.append(t2 - t1)
        point.listing.append(t3 - t2)
        point.render_sampled.append(t4 - t3)
        point.render_changed.append(t6 - t5)
        if held is not None:
            point.held.append(t7 - t6)
        point.walk.append(t8 - t7)


def profile(collector: CgroupsCollector, cycles: int, cgroups: int, top: int = 20) -> str:
    """cProfile of ``cycles`` more collector cycles (not part of any figure): a table of the top own times."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(cycles):
        collector.collect_sync()
    prof.disable()
    stats = pstats.Stats(prof, stream=StringIO())
    entries = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, ncalls, tottime, cumtime, callers)}
    total = sum(tt for _cc, _nc, tt, _ct, _callers in entries.values())
    rows = [
        "| function | calls / cycle | own ms / cycle | own µs / cgroup / cycle | own % | cumulative ms / cycle |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ranked = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (file, line, name), (_cc, nc, tt, ct, _callers) in ranked:
        where = name if file == "~" else f"{os.path.relpath(file, REPO_ROOT)}:{line} {name}"
        own, cum = tt / cycles * 1e3, ct / cycles * 1e3
        per = own * 1e3 / max(cgroups, 1)
        rows.append(f"| `{where}` | {nc / cycles:.0f} | {own:.2f} | {per:.2f} | {tt / total * 100:.1f} | {cum:.2f} |")
    return "\n".join(rows)


def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass
class Figures:
    """Per-cgroup figures at one count, against the 0-cgroup baseline of the same run."""

    n: int
    exported: int
    pods: int
    containers: int
    with_quota: int
    files_per_cgroup: float
    dirs_per_cgroup: float
    series_per_cgroup: float
    collector_us: float
    floor_us: float
    ratio: float
    listing_us: float
    ratio_with_listing: float
    render_sampled_us: float
    render_changed_us: float
    first_cycle_us: float
    per_file_us: float
    held_us: float
    walk_us: float
    collector_ms_per_cycle: float
    collector_ms_min: float
    collector_ms_max: float
    missing_files: int


def figures(p: Point, base: Point) -> Figures:
    """Marginal per-cgroup figures: (cost at N - cost at 0) / cgroups exported."""
    e = p.exported or 1

    def per(a: list[float], b: list[float]) -> float:
        return (_med(a) - _med(b)) / e * 1e6

    collector = per(p.collector, base.collector)
    floor = per(p.floor, base.floor)
    listing = per(p.listing, base.listing)
    return Figures(
        n=p.requested,
        exported=p.exported,
        pods=p.pods,
        containers=p.containers,
        with_quota=p.with_quota,
        files_per_cgroup=(p.files - base.files) / e,
        dirs_per_cgroup=(p.dirs - base.dirs) / e,
        series_per_cgroup=(p.series - base.series) / e,
        collector_us=collector,
        floor_us=floor,
        ratio=collector / floor if floor > 0 else float("nan"),
        listing_us=listing,
        ratio_with_listing=collector / (floor + listing) if floor + listing > 0 else float("nan"),
        render_sampled_us=per(p.render_sampled, base.render_sampled),
        render_changed_us=per(p.render_changed, base.render_changed),
        first_cycle_us=(p.first_cycle - base.first_cycle) / e * 1e6,
        per_file_us=_med(p.floor) / p.files * 1e6 if p.files else float("nan"),
        held_us=per(p.held, base.held) if p.held and base.held else float("nan"),
        walk_us=per(p.walk, base.walk),
        collector_ms_per_cycle=_med(p.collector) * 1e3,
        collector_ms_min=min(p.collector) * 1e3,
        collector_ms_max=max(p.collector) * 1e3,
        missing_files=len(p.missing),
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _nodeagent_version() -> str:
    with contextlib.suppress(Exception):
        from nodeagent import __version__

        return str(__version__)
    return "unknown"


def report(
    args: argparse.Namespace,
    layout: CgroupLayout,
    hier_dirs: Sequence[str],
    base: Point,
    points: Sequence[Point],
    figs: Sequence[Figures],
    command: str,
) -> str:
    """The markdown report: per-count table, targets, absolute cycle costs, machine, method."""
    cols = [f"N = {f.n}" for f in figs]
    rows: list[tuple[str, Callable[[Figures], str]]] = [
        ("workload cgroups exported (pods + containers)", lambda f: f"{f.exported} ({f.pods} + {f.containers})"),
        ("containers with a CPU quota and a memory limit", lambda f: f"{f.with_quota}"),
        ("files read per cgroup per cycle", lambda f: f"{f.files_per_cgroup:.2f}"),
        ("directories listed per cgroup per cycle", lambda f: f"{f.dirs_per_cgroup:.2f}"),
        ("series per cgroup", lambda f: f"{f.series_per_cgroup:.1f}"),
        ("**collector**, µs CPU per cgroup per cycle (marginal)", lambda f: f"**{f.collector_us:.1f}**"),
        ("**floor**: open+read+close of the same files, µs per cgroup per cycle", lambda f: f"**{f.floor_us:.1f}**"),
        ("**collector / floor** (target <= 1.5)", lambda f: f"**{f.ratio:.2f}**"),
        ("directory listing floor (scandir), µs per cgroup per cycle", lambda f: f"{f.listing_us:.1f}"),
        (
            "of the collector: discovery alone (`workloads.walk()`), µs per cgroup per cycle",
            lambda f: f"{f.walk_us:.1f}",
        ),
        ("collector / (floor + listing floor)", lambda f: f"{f.ratio_with_listing:.2f}"),
        ("one open+read+close, µs (floor / files)", lambda f: f"{f.per_file_us:.2f}"),
        (
            "reference, not the target: pread of the same files on fds held open, µs per cgroup ²",
            lambda f: f"{f.held_us:.1f}",
        ),
        ("render, values as sampled (unchanged), µs per cgroup", lambda f: f"{f.render_sampled_us:.1f}"),
        ("render, every value changed, µs per cgroup", lambda f: f"{f.render_changed_us:.1f}"),
        ("first cycle (all new: discovery, limits), µs per cgroup ¹", lambda f: f"{f.first_cycle_us:.1f}"),
    ]
    table = ["| figure | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    table += [f"| {name} | " + " | ".join(fmt(f) for f in figs) + " |" for name, fmt in rows]

    ratio_met = all(f.ratio <= 1.5 for f in figs)
    targets = [
        f"- collector <= 1.5 x floor at every N: **{'met' if ratio_met else 'not met'}** ("
        + ", ".join(f"{f.ratio:.2f} at N = {f.n}" for f in figs)
        + ")"
    ]
    if len(figs) >= 2:
        lo, hi = figs[0], figs[-1]
        lin = hi.collector_us / lo.collector_us if lo.collector_us > 0 else float("nan")
        linear = 0.8 <= lin <= 1.25
        targets.append(
            f"- linear in count (marginal at N = {hi.n} within ±25 % of that at N = {lo.n}): "
            f"**{'met' if linear else 'not met'}** ({hi.collector_us:.1f} / {lo.collector_us:.1f} µs = {lin:.2f})"
        )

    absolute = [
        "| N | exported | files / cycle | dirs / cycle | collector ms / cycle: median (min - max) | floor ms | "
        "listing ms | render ms (sampled / changed) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in (base, *points):
        absolute.append(
            f"| {p.requested} | {p.exported} | {p.files} | {p.dirs} | {_med(p.collector) * 1e3:.2f} "
            f"({min(p.collector) * 1e3:.2f} - {max(p.collector) * 1e3:.2f}) | {_med(p.floor) * 1e3:.2f} | "
            f"{_med(p.listing) * 1e3:.2f} | {_med(p.render_sampled) * 1e3:.2f} / {_med(p.render_changed) * 1e3:.2f} |"
        )
    missing = sorted({os.path.basename(m) for p in (base, *points) for m in p.missing})

    uname = platform.uname()
    facts = [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- CPUs (`nproc`): {len(os.sched_getaffinity(0))}; CPU model: {_cpu_model()}",
        f"- kernel: {uname.system} {uname.release} ({uname.machine})",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- nodeagent: {_nodeagent_version()}",
        f"- cgroups: {layout.mode} under {layout.root}; bench cgroups created in "
        + ", ".join(f"`{d}`" for d in hier_dirs),
    ]
    if missing:
        facts.append(
            f"- files the collector found missing (not retried until the limits refresh): {', '.join(missing)}"
        )

    method = f"""\
Every workload is a Kubernetes cgroup as the cgroupfs driver names it,
`/{PREFIX}<pid>.slice/kubepods/burstable/pod<uuid>/<64 hex>`, created in each hierarchy listed above: pods with
{args.containers_per_pod} container(s) each, one live `sleep` per container (its pid written to `cgroup.procs` of
every hierarchy), a CPU quota ({QUOTA_US} us per {PERIOD_US} us) and a 256 MiB memory limit on every other
container. N counts what the collector exports: pods and containers. The collector is `CgroupsCollector`
built with `HostPaths()` and `exclude: ^/(?!{PREFIX}<pid>\\.slice(?:/|$))`, so it walks and exports only the bench
parent; `spec_interval` is 1 h so no limits refresh lands in the measured cycles (the steady state the floor
describes: limits are read when a cgroup is new, ¹ the first-cycle row).

Per N: one first cycle (timed alone), {args.warmup} warm-up cycles, one cycle with `cgroups.read_file_at` and
`os.scandir` wrapped to record the files it reads and the directories it lists, then {args.cycles} measured rounds,
each timing in turn with `time.process_time()` (CPU of this single-threaded process, user + system):

1. `collect_sync()`: one full collector cycle;
2. the floor: `os.open` + `os.read(fd, 65536)` + `os.close` of the recorded files, in the same order;
3. the listing floor: `os.scandir` of the recorded directories, iterating the entries;
4. rendering the cycle's families with `FamilyRenderer` (the exposition's renderer), values as sampled
   (the sleeping workloads' counters barely move, so this is the unchanged-series path);
5. rendering the same series with every value moved since the previous render (building the moved
   families is not timed): the worst case;
6. ² a reference that is not the target's floor: `os.pread(fd, 65536, 0)` of the same files on descriptors
   opened once before the rounds (cgroupfs regenerates a file's content on every read at offset 0), the
   cost left when the open and close are not paid each cycle;
7. `workloads.walk()` with the collector's root, exclude and depth: the discovery part of a cycle (listing
   and classifying), the part of the collector's cost that is not per file.

Each figure is the median over the measured rounds; "per cgroup" is (median at N - median at N = 0) /
cgroups exported, where N = 0 is the same bench parent with no pods (its cost is the walk of the parent
and the collector's own families). The floor is what any reader of these files pays in syscalls plus a
minimal Python loop; the ratio collector / floor is the overhead of everything else (discovery,
classification, parsing, building families). Directory listing and rendering are reported separately.
"""
    prof = [
        (
            f"## Profile: `collect_sync()` at N = {p.requested}, {args.cycles} cycles under cProfile "
            "(not part of any figure above; cProfile inflates call-heavy code)"
        )
        for p in points
        if p.profile
    ]
    for p in points:
        if p.profile:
            prof += ["", p.profile, ""]
    return "\n".join(
        [
            "# Performance: the cgroups collector, cost per workload cgroup",
            "",
            "Generated by `bench/cgroups.py` (see bench/README.md); do not edit by hand.",
            "",
            "Generated by `bench/cgroups.py` (see bench/README.md). Reproduce, as root on an otherwise idle host:",
            "",
            f"```sh\n{command}\n```",
            "",
            *table,
            "",
            "Targets:",
            "",
            *targets,
            "",
            "## Per cycle",
            "",
            *absolute,
            "",
            "## Machine",
            "",
            *facts,
            "",
            "## Method",
            "",
            method,
            *prof,
        ]
    )


# ---------------------------------------------------------------------------------------------------
# Main


def _counts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("counts must be integers >= 1")
    return sorted(set(values))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, build the tree, measure the baseline and each count, always clean up, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=_counts, default=[100, 1000], help="workload cgroup counts (default 100,1000)")
    parser.add_argument("--cycles", type=int, default=20, help="measured cycles per count (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured cycles after the first (default 2)")
    parser.add_argument("--containers-per-pod", type=int, default=1, help="containers in each pod (default 1)")
    parser.add_argument("--cgroup-root", default="", help="cgroup root (default: /sys/fs/cgroup, as nodeagent's)")
    parser.add_argument(
        "--output", type=Path, default=None, help="also write the markdown report here (docs/performance-cgroups.md)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the raw and derived figures here as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="append a cProfile of the collector at the largest count to the report"
    )
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.warmup < 0 or args.containers_per_pod < 1:
        parser.error("--cycles >= 1, --warmup >= 0 and --containers-per-pod >= 1 are required")
    if os.geteuid() != 0:
        parser.error("needs root: it creates cgroups and moves processes into them")
    cgroup_root = args.cgroup_root or HostPaths().cgroup_root
    try:
        layout = discover_layout(cgroup_root)
    except NoCgroupsError as exc:
        parser.error(str(exc))
    hier_dirs = hierarchies(layout)

    # The collector logs (over-limit, read errors) to stderr, never into the report on stdout.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    if stale := remove_stale(hier_dirs):
        log(f"removed {stale} bench tree(s) left by earlier runs")
    command = shlex.join(["python3", "bench/cgroups.py", *(argv if argv is not None else sys.argv[1:])])
    tree = Tree(hier_dirs, v2=layout.mode == "v2")
    atexit.register(tree.cleanup)
    try:
        tree.create_parent()
        log(f"bench parent /{tree.slice_name} in {', '.join(hier_dirs)}")
        base = measure(tree, cgroup_root, 0, args)
        points = [measure(tree, cgroup_root, n, args) for n in args.counts]
    finally:
        tree.cleanup()
        if left := tree.leftovers():
            log(f"WARNING: could not remove {left}; remove them with rmdir, deepest first")
    figs = [figures(p, base) for p in points]
    text = report(args, layout, hier_dirs, base, points, figs, command)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        log(f"wrote {args.output}")
    if args.json is not None:
        data = {
            "command": command,
            "mode": layout.mode,
            "baseline": asdict(base),
            "points": [asdict(p) for p in points],
            "figures": [asdict(f) for f in figs],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1), encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
