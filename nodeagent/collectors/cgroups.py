"""
Per-workload CPU, memory, IO, pressure, processes and OOM kills from cgroups v2, v1 or hybrid hierarchies,
with kubelet/cAdvisor's ``container_*`` names and the label set ``{id, name, image, container, pod,
namespace}``; ``nodeagent_workload_info`` carries what the cgroup path says about each workload.

Cost model (one cgroup file read costs ~8 us here): each cycle reads only the files whose values change;
limits (quota, period, shares, memory limit) are re-read when a cgroup is new and every ``spec_interval``.
Sampling runs in one worker thread so a large tree never stalls the event loop or a scrape.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import Field

from nodeagent.collector import (
    BaseCollector,
    CollectorConfig,
    CollectorContext,
    CollectorSpec,
    Duration,
    NoDataError,
    Regex,
)
from nodeagent.hostfs import ParseError
from nodeagent.metrics import LabelValues, MetricFamily, MetricType, Sample
from nodeagent.sources.cgroupfs import (
    CgroupLayout,
    IoTotals,
    NoCgroupsError,
    cpu_weight_to_shares,
    parse_blkio,
    parse_cpu_max,
    parse_flat_keyed,
    parse_int,
    parse_io_stat,
    parse_limit,
    parse_psi_totals,
)
from nodeagent.workloads import Workload, WorkloadKind, WorkloadResolver, walk

_NO_CGROUPS_HINT = (
    "mount the host's /sys (or its cgroup tree) into the agent and point paths.sysfs or paths.cgroupfs at it"
)
# cAdvisor reports memory limits at or above 2^62 (the kernel's "unlimited" page-rounded max) as 0.
_UNLIMITED = 1 << 62
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_READ_SIZE = 65536


DEFAULT_KINDS: tuple[WorkloadKind, ...] = ("pod", "container", "service", "slurm_job", "vm")


class CgroupsConfig(CollectorConfig):
    """Which cgroups become workload series."""

    kinds: list[WorkloadKind] = Field(default_factory=lambda: list(DEFAULT_KINDS))
    include: Regex | None = None
    exclude: Regex | None = None
    max_cgroups: int = Field(default=2000, ge=1)
    max_depth: int = Field(default=10, ge=1, le=64)
    spec_interval: Duration = 60.0


# --- families ----------------------------------------------------------------------------------------------

BASE_LABELS: LabelValues = ("id", "name", "image", "container", "pod", "namespace")
INFO_LABELS: LabelValues = (
    "id",
    "kind",
    "runtime",
    "pod_uid",
    "qos_class",
    "container_id",
    "service",
    "slurm_job",
    "slurm_step",
    "slurm_uid",
    "vm",
)


@dataclass(frozen=True, slots=True)
class _Def:
    name: str
    type: MetricType
    help: str
    extra: LabelValues = ()


_DEFS: tuple[_Def, ...] = (
    _Def("container_cpu_usage_seconds_total", "counter", "Cumulative CPU time consumed in seconds.", ("cpu",)),
    _Def("container_cpu_user_seconds_total", "counter", "Cumulative user CPU time consumed in seconds."),
    _Def("container_cpu_system_seconds_total", "counter", "Cumulative system CPU time consumed in seconds."),
    _Def("container_cpu_cfs_periods_total", "counter", "Number of elapsed enforcement period intervals."),
    _Def("container_cpu_cfs_throttled_periods_total", "counter", "Number of throttled period intervals."),
    _Def(
        "container_cpu_cfs_throttled_seconds_total", "counter", "Total time duration the container has been throttled."
    ),
    _Def(
        "container_memory_usage_bytes",
        "gauge",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
    ),
    _Def(
        "container_memory_working_set_bytes", "gauge", "Current working set in bytes (usage minus inactive file cache)."
    ),
    _Def("container_memory_rss", "gauge", "Size of RSS (anonymous memory) in bytes."),
    _Def("container_memory_cache", "gauge", "Number of bytes of page cache memory."),
    _Def("container_memory_swap", "gauge", "Container swap usage in bytes."),
    _Def("container_memory_mapped_file", "gauge", "Size of memory mapped files in bytes."),
    _Def("container_memory_max_usage_bytes", "gauge", "Maximum memory usage recorded in bytes."),
    _Def("container_memory_failcnt", "untyped", "Number of memory usage hits limits (cgroup v1 only)."),
    _Def("container_oom_events_total", "counter", "Count of out of memory kills in the cgroup."),
    _Def("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container in bytes (0 when unlimited)."),
    _Def("container_spec_cpu_quota", "gauge", "CPU quota of the container in microseconds per period (only when set)."),
    _Def("container_spec_cpu_period", "gauge", "CPU period of the container in microseconds."),
    _Def("container_spec_cpu_shares", "gauge", "CPU share of the container (cgroup v1 shares; v2 weight converted)."),
    _Def("container_fs_reads_bytes_total", "counter", "Cumulative count of bytes read.", ("device",)),
    _Def("container_fs_writes_bytes_total", "counter", "Cumulative count of bytes written.", ("device",)),
    _Def("container_fs_reads_total", "counter", "Cumulative count of reads completed.", ("device",)),
    _Def("container_fs_writes_total", "counter", "Cumulative count of writes completed.", ("device",)),
    _Def(
        "container_pressure_cpu_waiting_seconds_total",
        "counter",
        "Total time in seconds that tasks in the cgroup have waited for CPU (PSI some).",
    ),
    _Def(
        "container_pressure_cpu_stalled_seconds_total",
        "counter",
        "Total time in seconds no task in the cgroup could make progress for lack of CPU (PSI full).",
    ),
    _Def(
        "container_pressure_memory_waiting_seconds_total",
        "counter",
        "Total time in seconds that tasks in the cgroup have waited for memory (PSI some).",
    ),
    _Def(
        "container_pressure_memory_stalled_seconds_total",
        "counter",
        "Total time in seconds no task in the cgroup could make progress for lack of memory (PSI full).",
    ),
    _Def(
        "container_pressure_io_waiting_seconds_total",
        "counter",
        "Total time in seconds that tasks in the cgroup have waited for IO (PSI some).",
    ),
    _Def(
        "container_pressure_io_stalled_seconds_total",
        "counter",
        "Total time in seconds no task in the cgroup could make progress for IO (PSI full).",
    ),
    _Def("container_processes", "gauge", "Number of processes running inside the cgroup and its descendants."),
    _Def("container_threads", "gauge", "Number of threads (tasks) running inside the cgroup and its descendants."),
)
(
    CPU_USAGE,
    CPU_USER,
    CPU_SYSTEM,
    CFS_PERIODS,
    CFS_THROTTLED,
    CFS_THROTTLED_S,
    MEM_USAGE,
    MEM_WS,
    MEM_RSS,
    MEM_CACHE,
    MEM_SWAP,
    MEM_MAPPED,
    MEM_MAX,
    MEM_FAILCNT,
    OOM,
    SPEC_MEM,
    SPEC_QUOTA,
    SPEC_PERIOD,
    SPEC_SHARES,
    FS_RBYTES,
    FS_WBYTES,
    FS_RIOS,
    FS_WIOS,
    PSI_CPU_SOME,
    PSI_CPU_FULL,
    PSI_MEM_SOME,
    PSI_MEM_FULL,
    PSI_IO_SOME,
    PSI_IO_FULL,
    PROCESSES,
    THREADS,
) = range(len(_DEFS))
_FS_FAMILIES = (FS_RBYTES, FS_WBYTES, FS_RIOS, FS_WIOS)

Row = tuple[int, LabelValues, float]

# Fields parsed from each flat-keyed file (only what is exported).
_V2_CPU_KEYS = frozenset(
    {b"usage_usec", b"user_usec", b"system_usec", b"nr_periods", b"nr_throttled", b"throttled_usec"}
)
_V2_MEM_KEYS = frozenset({b"anon", b"file", b"file_mapped", b"inactive_file"})
_V1_CPU_KEYS = frozenset({b"nr_periods", b"nr_throttled", b"throttled_time"})
_V1_ACCT_KEYS = frozenset({b"user", b"system"})
_V1_MEM_KEYS = frozenset(
    {b"total_rss", b"total_cache", b"total_swap", b"total_mapped_file", b"total_inactive_file"}
    | {b"rss", b"cache", b"swap", b"mapped_file", b"inactive_file"}
)
_OOM_KEYS = frozenset({b"oom_kill"})


class _Gone(Exception):
    """The cgroup was removed while it was being read; it is skipped for this cycle."""


@dataclass(slots=True)
class _Spec:
    """Rarely changing values, re-read every ``spec_interval``."""

    quota: int | None = None
    period: int | None = None
    shares: int | None = None
    mem_limit: int | None = None
    hierarchy: bool = True
    proc_dirs: tuple[str, ...] = ()
    read_at: float = 0.0
    # Optional files found absent (older kernel, controller not enabled): not retried until the next refresh.
    absent: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Tracked:
    workload: Workload
    labels: LabelValues
    cpu_labels: LabelValues
    info: LabelValues
    # Directory of this cgroup in each hierarchy that exists on the host (controller -> dir).
    dirs: dict[str, str]
    spec: _Spec = field(default_factory=_Spec)
    oom: int | None = None
    new: bool = True


def _labels(w: Workload) -> LabelValues:
    return (w.id, w.name, w.image, w.container, w.pod, w.namespace)


def _info(w: Workload) -> LabelValues:
    return (
        w.id,
        w.kind,
        w.runtime,
        w.pod_uid,
        w.qos_class,
        w.container_id,
        w.service,
        w.slurm_job,
        w.slurm_step,
        w.slurm_uid,
        w.vm,
    )


def read_file(path: str) -> bytes | None:
    """
    One cgroup file's content with the fewest syscalls; ``None`` if it does not exist (or its cgroup was
    just removed: the kernel answers ENODEV for a file of a dead cgroup).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) == _READ_SIZE:
            chunks = [data]
            while chunk := os.read(fd, _READ_SIZE):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
            return None
        raise
    finally:
        os.close(fd)


class CgroupsCollector(BaseCollector):
    """Lists workload cgroups each cycle and reads their statistics in one worker thread."""

    def __init__(self, ctx: CollectorContext, cfg: CgroupsConfig) -> None:
        self._cfg = cfg
        self._log = ctx.log
        self._resolver: WorkloadResolver = ctx.resolver()
        self._sysfs_dev_block = ctx.paths.sys("dev", "block")
        self._kinds = frozenset(cfg.kinds)
        self._include = re.compile(cfg.include) if cfg.include else None
        self._exclude = re.compile(cfg.exclude) if cfg.exclude else None
        self._tracked: dict[str, _Tracked] = {}
        self._devices: dict[str, str] = {}
        self._cycles = 0
        self._errors: dict[str, int] = {"parse": 0, "io": 0}
        self._error_logged: dict[str, float] = {}
        self._dropped_logged = 0
        self._busy = threading.Lock()
        # The last cycle's discovery counts (exported as nodeagent_cgroups_*).
        self.discovered = 0
        self.dropped = 0

    async def collect(self) -> Sequence[MetricFamily]:
        """Sample every workload cgroup in a worker thread (cgroupfs reads never block, but 1000s add up)."""
        return await asyncio.to_thread(self.collect_sync)

    def collect_sync(self) -> list[MetricFamily]:
        """One full cycle, synchronously: discover, read, build families, log OOM kill events."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("the previous cgroups cycle is still running (it overran its timeout)")
        try:
            return self._cycle()
        finally:
            self._busy.release()

    # --- discovery --------------------------------------------------------------------------------------

    def _layout(self) -> CgroupLayout:
        try:
            return self._resolver.layout()
        except NoCgroupsError as exc:
            raise NoDataError(str(exc), _NO_CGROUPS_HINT) from None

    def _discover(self, layout: CgroupLayout) -> list[_Tracked]:
        result = walk(layout.walk_root, self._include, self._exclude, self._cfg.max_depth)
        wanted = [w for w in result.workloads if w.kind in self._kinds or w.kind == "other"]
        self.discovered = len(wanted)
        limit = self._cfg.max_cgroups
        if len(wanted) > limit:
            # Keep what is already tracked first so series do not flap, then new ones in walk order.
            known = [w for w in wanted if w.id in self._tracked]
            fresh = [w for w in wanted if w.id not in self._tracked]
            kept = (known + fresh)[:limit]
            kept_ids = {w.id for w in kept}
            wanted = [w for w in wanted if w.id in kept_ids]
        self.dropped = self.discovered - len(wanted)
        if self.dropped != self._dropped_logged:
            if self.dropped:
                self._log.warning(
                    "cgroups.over_limit",
                    message=f"{self.dropped} workload cgroups over max_cgroups={limit} are not exported",
                    discovered=self.discovered,
                    max_cgroups=limit,
                )
            self._dropped_logged = self.dropped
        tracked: dict[str, _Tracked] = {}
        for w in wanted:
            t = self._tracked.get(w.id)
            if t is None or t.workload != w:
                t = self._track(layout, w, t)
            tracked[w.id] = t
        self._tracked = tracked
        return list(tracked.values())

    def _track(self, layout: CgroupLayout, w: Workload, old: _Tracked | None) -> _Tracked:
        rel = w.id.lstrip("/")
        dirs: dict[str, str] = {}
        if layout.unified is not None:
            dirs["unified"] = os.path.join(layout.unified, rel)
        for controller, hier in layout.v1.items():
            dirs[controller] = os.path.join(hier, rel)
        dirs["walk"] = os.path.join(layout.walk_root, rel)
        labels = _labels(w)
        t = _Tracked(w, labels, (*labels, "total"), _info(w), dirs)
        if old is not None:  # metadata changed (names filled in): keep the OOM baseline and spec
            t.oom, t.spec, t.new = old.oom, old.spec, False
        return t

    # --- one cycle --------------------------------------------------------------------------------------

    def _cycle(self) -> list[MetricFamily]:
        layout = self._layout()
        first = self._cycles == 0
        self._cycles += 1
        now = time.monotonic()
        tracked = self._discover(layout)
        v2 = layout.mode == "v2"
        rows: list[list[Sample]] = [[] for _ in _DEFS]
        info: list[Sample] = []
        procs_cache: dict[str, int] = {}
        for t in tracked:
            try:
                if now - t.spec.read_at >= self._cfg.spec_interval or t.spec.read_at == 0.0:
                    t.spec = self._read_spec(t, v2, now)
                out = self._sample_v2(t, procs_cache) if v2 else self._sample_v1(t, procs_cache)
            except _Gone:
                continue
            for idx, labels, value in out:
                rows[idx].append((labels, value))
            info.append((t.info, 1.0))
            oom = next((v for i, _, v in out if i == OOM), None)
            if oom is not None:
                self._oom_check(t, int(oom), first)
            t.new = False
        families = [
            MetricFamily(d.name, d.type, d.help, BASE_LABELS + d.extra, tuple(samples))
            for d, samples in zip(_DEFS, rows, strict=True)
            if samples
        ]
        if info:
            families.append(
                MetricFamily(
                    "nodeagent_workload_info",
                    "info",
                    "What the cgroup path says about each workload cgroup nodeagent exports; join on id.",
                    INFO_LABELS,
                    tuple(info),
                )
            )
        families.extend(self._self_families(layout))
        return families

    def _self_families(self, layout: CgroupLayout) -> list[MetricFamily]:
        return [
            MetricFamily(
                "nodeagent_cgroups_discovered",
                "gauge",
                "Workload cgroups found in the last cycle, before max_cgroups is applied.",
                (),
                (((), float(self.discovered)),),
            ),
            MetricFamily(
                "nodeagent_cgroups_dropped",
                "gauge",
                "Workload cgroups not exported in the last cycle because max_cgroups was reached.",
                (),
                (((), float(self.dropped)),),
            ),
            MetricFamily(
                "nodeagent_cgroups_read_errors_total",
                "counter",
                "cgroup files that could not be read (io) or parsed (parse); their fields were skipped.",
                ("reason",),
                tuple(((reason,), float(n)) for reason, n in self._errors.items()),
            ),
            MetricFamily(
                "nodeagent_cgroups_hierarchy_info",
                "info",
                "The cgroup hierarchy mode of this host (v1, v2 or hybrid).",
                ("mode",),
                (((layout.mode,), 1.0),),
            ),
        ]

    # --- reading ----------------------------------------------------------------------------------------

    def _read(self, t: _Tracked, hierarchy: str, name: str, required: bool = False) -> bytes | None:
        """A file of this cgroup; ``None`` if absent. ``required``: absent means the cgroup is gone."""
        d = t.dirs.get(hierarchy)
        if d is None:
            return None
        path = f"{d}/{name}"
        if path in t.spec.absent:
            return None
        try:
            data = read_file(path)
        except OSError as exc:
            self._error("io", path, f"cannot read {path}: {exc.strerror or exc}")
            return None
        if data is None:
            if required or not os.path.isdir(t.dirs["walk"]):
                raise _Gone(t.workload.id)
            t.spec.absent.add(path)
        return data

    def _error(self, reason: str, path: str, message: str) -> None:
        self._errors[reason] += 1
        key = os.path.basename(path) + reason
        now = time.monotonic()
        if now - self._error_logged.get(key, -3600.0) >= 3600.0:
            self._error_logged[key] = now
            self._log.warning("cgroups.read_error", error={"message": message}, file=path)

    def _parse(self, func: Any, data: bytes | None, path_hint: str, *args: Any) -> Any:
        if data is None:
            return None
        try:
            return func(data, *args)
        except ParseError as exc:
            self._error("parse", path_hint, str(exc))
            return None

    def _processes(self, t: _Tracked, cache: dict[str, int]) -> int | None:
        """Processes in the cgroup and its descendant cgroups (listed with the spec)."""
        total = 0
        seen = False
        for d in t.spec.proc_dirs:
            n = cache.get(d)
            if n is None:
                path = f"{d}/cgroup.procs"
                try:
                    data = read_file(path)
                except OSError as exc:
                    self._error("io", path, f"cannot read {path}: {exc.strerror or exc}")
                    continue
                if data is None:
                    continue
                n = cache[d] = data.count(b"\n")
            total += n
            seen = True
        return total if seen else None

    def _read_spec(self, t: _Tracked, v2: bool, now: float) -> _Spec:
        spec = _Spec(read_at=now)
        dirs: list[str] = []
        walk_dir = t.dirs["walk"]
        for dirpath, _subdirs, _files in os.walk(walk_dir):
            dirs.append(dirpath)
            if len(dirs) >= 256:
                break
        if not dirs:
            raise _Gone(t.workload.id)
        spec.proc_dirs = tuple(dirs)
        if v2:
            src = f"{t.workload.id}/cpu.max"
            cpu_max = self._parse(parse_cpu_max, self._read(t, "unified", "cpu.max"), src, src)
            if cpu_max is not None:
                spec.quota, spec.period = cpu_max
            weight = self._parse(parse_int, self._read(t, "unified", "cpu.weight"), src, src)
            spec.shares = cpu_weight_to_shares(weight) if weight else None
            src = f"{t.workload.id}/memory.max"
            spec.mem_limit = self._parse(parse_limit, self._read(t, "unified", "memory.max"), src, src)
        else:
            src = f"{t.workload.id}/cpu.cfs_quota_us"
            spec.quota = self._parse(parse_limit, self._read(t, "cpu", "cpu.cfs_quota_us"), src, src)
            spec.period = self._parse(parse_int, self._read(t, "cpu", "cpu.cfs_period_us"), src, src)
            spec.shares = self._parse(parse_int, self._read(t, "cpu", "cpu.shares"), src, src)
            src = f"{t.workload.id}/memory.limit_in_bytes"
            spec.mem_limit = self._parse(parse_limit, self._read(t, "memory", "memory.limit_in_bytes"), src, src)
            hier = self._read(t, "memory", "memory.use_hierarchy")
            spec.hierarchy = hier is None or hier.strip() != b"0"
        return spec

    def _common_rows(self, t: _Tracked, out: list[Row], cache: dict[str, int]) -> None:
        """Spec values, processes: the same on v1 and v2."""
        labels = t.labels
        spec = t.spec
        if spec.mem_limit is not None:
            out.append((SPEC_MEM, labels, 0.0 if spec.mem_limit >= _UNLIMITED else float(spec.mem_limit)))
        elif spec.read_at:
            out.append((SPEC_MEM, labels, 0.0))
        if spec.quota is not None:
            out.append((SPEC_QUOTA, labels, float(spec.quota)))
        if spec.period is not None:
            out.append((SPEC_PERIOD, labels, float(spec.period)))
        if spec.shares is not None:
            out.append((SPEC_SHARES, labels, float(spec.shares)))
        procs = self._processes(t, cache)
        if procs is not None:
            out.append((PROCESSES, labels, float(procs)))

    def _io_rows(self, t: _Tracked, io: IoTotals | None, out: list[Row]) -> None:
        if not io:
            return
        for dev, values in io.items():
            labels = (*t.labels, self._device(dev))
            for idx, value in zip(_FS_FAMILIES, values, strict=True):
                out.append((idx, labels, float(value)))

    def _psi_rows(self, t: _Tracked, hierarchy: str, out: list[Row]) -> None:
        for resource, some_idx, full_idx in (
            ("cpu", PSI_CPU_SOME, PSI_CPU_FULL),
            ("memory", PSI_MEM_SOME, PSI_MEM_FULL),
            ("io", PSI_IO_SOME, PSI_IO_FULL),
        ):
            name = f"{resource}.pressure"
            totals = self._parse(parse_psi_totals, self._read(t, hierarchy, name), name, name)
            if totals is None:
                continue
            some, full = totals
            if some is not None:
                out.append((some_idx, t.labels, some / 1e6))
            if full is not None:
                out.append((full_idx, t.labels, full / 1e6))

    def _sample_v2(self, t: _Tracked, cache: dict[str, int]) -> list[Row]:
        out: list[Row] = []
        labels = t.labels
        cpu = self._parse(
            parse_flat_keyed, self._read(t, "unified", "cpu.stat", True), "cpu.stat", _V2_CPU_KEYS, "cpu.stat"
        )
        if cpu:
            if (v := cpu.get(b"usage_usec")) is not None:
                out.append((CPU_USAGE, t.cpu_labels, v / 1e6))
            if (v := cpu.get(b"user_usec")) is not None:
                out.append((CPU_USER, labels, v / 1e6))
            if (v := cpu.get(b"system_usec")) is not None:
                out.append((CPU_SYSTEM, labels, v / 1e6))
            if t.spec.quota is not None and b"nr_periods" in cpu:
                out.append((CFS_PERIODS, labels, float(cpu[b"nr_periods"])))
                out.append((CFS_THROTTLED, labels, float(cpu.get(b"nr_throttled", 0))))
                out.append((CFS_THROTTLED_S, labels, cpu.get(b"throttled_usec", 0) / 1e6))
        usage = self._parse(parse_int, self._read(t, "unified", "memory.current"), "memory.current", "memory.current")
        stat = self._parse(
            parse_flat_keyed, self._read(t, "unified", "memory.stat"), "memory.stat", _V2_MEM_KEYS, "memory.stat"
        )
        if usage is not None:
            out.append((MEM_USAGE, labels, float(usage)))
            if stat is not None:
                out.append((MEM_WS, labels, float(max(usage - stat.get(b"inactive_file", 0), 0))))
        if stat:
            for idx, key in ((MEM_RSS, b"anon"), (MEM_CACHE, b"file"), (MEM_MAPPED, b"file_mapped")):
                if (v := stat.get(key)) is not None:
                    out.append((idx, labels, float(v)))
        for idx, name in ((MEM_SWAP, "memory.swap.current"), (MEM_MAX, "memory.peak")):
            value = self._parse(parse_int, self._read(t, "unified", name), name, name)
            if value is not None:
                out.append((idx, labels, float(value)))
        events = self._parse(
            parse_flat_keyed, self._read(t, "unified", "memory.events"), "memory.events", _OOM_KEYS, "memory.events"
        )
        if events and (v := events.get(b"oom_kill")) is not None:
            out.append((OOM, labels, float(v)))
        self._io_rows(t, self._parse(parse_io_stat, self._read(t, "unified", "io.stat"), "io.stat", "io.stat"), out)
        self._psi_rows(t, "unified", out)
        threads = self._parse(parse_int, self._read(t, "unified", "pids.current"), "pids.current", "pids.current")
        if threads is not None:
            out.append((THREADS, labels, float(threads)))
        self._common_rows(t, out, cache)
        return out

    def _sample_v1(self, t: _Tracked, cache: dict[str, int]) -> list[Row]:
        out: list[Row] = []
        labels = t.labels
        acct = "cpuacct" if "cpuacct" in t.dirs else "cpu"
        usage_ns = self._parse(parse_int, self._read(t, acct, "cpuacct.usage", True), "cpuacct.usage", "cpuacct.usage")
        if usage_ns is not None:
            out.append((CPU_USAGE, t.cpu_labels, usage_ns / 1e9))
        stat = self._parse(
            parse_flat_keyed, self._read(t, acct, "cpuacct.stat"), "cpuacct.stat", _V1_ACCT_KEYS, "cpuacct.stat"
        )
        if stat:
            if (v := stat.get(b"user")) is not None:
                out.append((CPU_USER, labels, v / _CLK_TCK))
            if (v := stat.get(b"system")) is not None:
                out.append((CPU_SYSTEM, labels, v / _CLK_TCK))
        if t.spec.quota is not None:
            cpu = self._parse(parse_flat_keyed, self._read(t, "cpu", "cpu.stat"), "cpu.stat", _V1_CPU_KEYS, "cpu.stat")
            if cpu and b"nr_periods" in cpu:
                out.append((CFS_PERIODS, labels, float(cpu[b"nr_periods"])))
                out.append((CFS_THROTTLED, labels, float(cpu.get(b"nr_throttled", 0))))
                out.append((CFS_THROTTLED_S, labels, cpu.get(b"throttled_time", 0) / 1e9))
        if "memory" in t.dirs:
            self._memory_v1(t, out)
        blk = "blkio"
        rbytes = self._parse(
            parse_blkio, self._read(t, blk, "blkio.throttle.io_service_bytes_recursive"), "blkio", "blkio", False
        )
        rios = self._parse(
            parse_blkio, self._read(t, blk, "blkio.throttle.io_serviced_recursive"), "blkio", "blkio", True
        )
        if rbytes is not None or rios is not None:
            merged: IoTotals = {}
            for part in (rbytes or {}, rios or {}):
                for dev, row in part.items():
                    m = merged.setdefault(dev, [0, 0, 0, 0])
                    for i, v in enumerate(row):
                        m[i] += v
            self._io_rows(t, merged, out)
        self._psi_rows(t, "unified", out)
        threads = self._parse(parse_int, self._read(t, "pids", "pids.current"), "pids.current", "pids.current")
        if threads is not None:
            out.append((THREADS, labels, float(threads)))
        self._common_rows(t, out, cache)
        return out

    def _memory_v1(self, t: _Tracked, out: list[Row]) -> None:
        labels = t.labels
        usage = self._parse(
            parse_int,
            self._read(t, "memory", "memory.usage_in_bytes"),
            "memory.usage_in_bytes",
            "memory.usage_in_bytes",
        )
        stat = self._parse(
            parse_flat_keyed, self._read(t, "memory", "memory.stat"), "memory.stat", _V1_MEM_KEYS, "memory.stat"
        )
        prefix = b"total_" if t.spec.hierarchy else b""
        if usage is not None:
            out.append((MEM_USAGE, labels, float(usage)))
            if stat is not None:
                out.append((MEM_WS, labels, float(max(usage - stat.get(prefix + b"inactive_file", 0), 0))))
        if stat:
            for idx, key in (
                (MEM_RSS, b"rss"),
                (MEM_CACHE, b"cache"),
                (MEM_SWAP, b"swap"),
                (MEM_MAPPED, b"mapped_file"),
            ):
                if (v := stat.get(prefix + key)) is not None:
                    out.append((idx, labels, float(v)))
        for idx, name in ((MEM_MAX, "memory.max_usage_in_bytes"), (MEM_FAILCNT, "memory.failcnt")):
            value = self._parse(parse_int, self._read(t, "memory", name), name, name)
            if value is not None:
                out.append((idx, labels, float(value)))
        oom = self._parse(
            parse_flat_keyed,
            self._read(t, "memory", "memory.oom_control"),
            "memory.oom_control",
            _OOM_KEYS,
            "memory.oom_control",
        )
        if oom and (v := oom.get(b"oom_kill")) is not None:
            out.append((OOM, labels, float(v)))

    def _device(self, majmin: str) -> str:
        """``8:0`` -> ``/dev/sda`` through ``/sys/dev/block`` (cAdvisor's device label), cached."""
        name = self._devices.get(majmin)
        if name is None:
            try:
                name = "/dev/" + os.path.basename(os.readlink(os.path.join(self._sysfs_dev_block, majmin)))
            except OSError:
                name = majmin
            if len(self._devices) < 4096:
                self._devices[majmin] = name
        return name

    # --- OOM kill events --------------------------------------------------------------------------------

    def _oom_check(self, t: _Tracked, count: int, first_cycle: bool) -> None:
        previous = t.oom
        t.oom = count
        if previous is None:
            # A cgroup present at start-up: its past kills are history, not news. A cgroup that appeared
            # since: every kill it counts happened while we were watching.
            if first_cycle or not t.new or count == 0:
                return
            previous = 0
        if count <= previous:
            return
        log_oom_event(self._log, t.workload, count, count - previous)


def oom_event_fields(w: Workload, count: int, delta: int) -> dict[str, Any]:
    """ECS fields of one OOM-kill event (empty fields left out)."""
    fields: dict[str, Any] = {
        "event.kind": "event",
        "event.category": ["process"],
        "event.type": ["end"],
        "event.action": "oom_kill",
        "event.module": "nodeagent",
        "event.dataset": "nodeagent.workload",
        "nodeagent.workload.kind": w.kind,
        "nodeagent.workload.id": w.id,
        "nodeagent.oom_kill.count": count,
        "nodeagent.oom_kill.new": delta,
    }
    optional = {
        "container.id": w.container_id,
        "container.name": w.name,
        "container.image.name": w.image,
        "container.runtime": w.runtime if w.kind == "container" else "",
        "kubernetes.pod.uid": w.pod_uid,
        "kubernetes.pod.name": w.pod,
        "kubernetes.namespace": w.namespace,
        "kubernetes.container.name": w.container,
        "orchestrator.type": "kubernetes" if w.pod_uid else "",
        "systemd.unit": w.service,
        "slurm.job.id": w.slurm_job,
        "slurm.step.id": w.slurm_step,
        "user.id": w.slurm_uid,
        "nodeagent.workload.vm": w.vm,
    }
    fields.update({k: v for k, v in optional.items() if v})
    return fields


def log_oom_event(log: structlog.typing.FilteringBoundLogger, w: Workload, count: int, delta: int) -> None:
    """Log one structured OOM-kill event for workload ``w`` (the cycle's trace.id comes from contextvars)."""
    what = f"{w.kind} {w.id}"
    kills = "kill" if delta == 1 else "kills"
    log.warning(f"{delta} OOM {kills} in {what} (total {count})", **oom_event_fields(w, count, delta))


SPEC = CollectorSpec(
    name="cgroups",
    description="Per-workload CPU, memory, IO, pressure and OOM kills from cgroups v1/v2 (cAdvisor names).",
    config_model=CgroupsConfig,
    factory=CgroupsCollector,
)
