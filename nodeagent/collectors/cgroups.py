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
import contextlib
import errno
import os
import re
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
from nodeagent.events import emit, workload_fields
from nodeagent.hostfs import ParseError
from nodeagent.metrics import LabelValues, MetricFamily, MetricType, Sample
from nodeagent.sources.cgroupfs import (
    CgroupLayout,
    FlatKeys,
    IoTotals,
    NoCgroupsError,
    cpu_weight_to_shares,
    flat_values,
    parse_blkio,
    parse_cpu_max,
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
CONTAINER_INFO_LABELS: LabelValues = (*BASE_LABELS, "runtime", "container_id", "image_id")
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

# Fields parsed from each flat-keyed file (only what is exported).
_V2_CPU_KEYS = FlatKeys(
    (b"usage_usec", b"user_usec", b"system_usec", b"nr_periods", b"nr_throttled", b"throttled_usec")
)
_V2_MEM_KEYS = FlatKeys((b"anon", b"file", b"file_mapped", b"inactive_file"))
_V1_CPU_KEYS = FlatKeys((b"nr_periods", b"nr_throttled", b"throttled_time"))
_V1_ACCT_KEYS = FlatKeys((b"user", b"system"))
_V1_MEM_KEYS_HIER = FlatKeys(
    (b"total_rss", b"total_cache", b"total_swap", b"total_mapped_file", b"total_inactive_file")
)
_V1_MEM_KEYS_LOCAL = FlatKeys((b"rss", b"cache", b"swap", b"mapped_file", b"inactive_file"))
_OOM_KEYS = FlatKeys((b"oom_kill",))

# What each file of a cgroup's read plan holds (the plan is built when a cgroup is new or its spec is re-read).
(
    V2_CPU,
    V2_MEM_CURRENT,
    V2_MEM_STAT,
    V2_SWAP,
    V2_PEAK,
    V2_EVENTS,
    V2_IO,
    PSI_CPU,
    PSI_MEM,
    PSI_IO,
    PIDS,
    V1_USAGE,
    V1_ACCT_STAT,
    V1_CPU_STAT,
    V1_MEM_USAGE,
    V1_MEM_STAT,
    V1_MEM_MAX,
    V1_FAILCNT,
    V1_OOM,
    V1_BLK_BYTES,
    V1_BLK_IOS,
) = range(21)
# Whether the cgroup is gone is only decided by this hierarchy: files of others may be absent by design.
_WALKED = "walk"


class _Gone(Exception):
    """The cgroup was removed while it was being read; it is skipped for this cycle."""


@dataclass(slots=True)
class _Tracked:
    """One exported cgroup: its labels, where its files are, its limits, and the files to read each cycle."""

    workload: Workload
    labels: LabelValues
    cpu_labels: LabelValues
    info: LabelValues
    # nodeagent_container_info's labels, for a container some runtime describes.
    container_info: LabelValues | None
    # Directory of this cgroup in each hierarchy that exists on the host (controller -> dir).
    dirs: dict[str, str]
    # (directory fd, file name, path, what) for each file read every cycle; the first one's absence means
    # the cgroup is gone. Files are opened relative to a held O_PATH descriptor of their cgroup directory,
    # which spares the kernel the walk down the whole path (~1.4 us of ~5 per file here).
    plan: list[tuple[int, str, str, int]] = field(default_factory=list)
    dir_fds: dict[str, int] = field(default_factory=dict)  # directory path -> O_PATH fd (-1: read by path)
    # Limits as (family index, value), appended unchanged every cycle until the next refresh.
    spec_rows: list[tuple[int, float]] = field(default_factory=list)
    quota_set: bool = False
    mem_keys: tuple[bytes, ...] = _V1_MEM_KEYS_HIER
    proc_dirs: tuple[str, ...] = ()
    refreshed_at: float = 0.0
    oom: int | None = None
    new: bool = True


def _close_dirs(t: _Tracked) -> None:
    for fd in t.dir_fds.values():
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    t.dir_fds.clear()


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


def read_file_at(
    dir_fd: int,
    name: str,
    path: str,
    _open: Callable[..., int] = os.open,
    _read: Callable[[int, int], bytes] = os.read,
    _close: Callable[[int], None] = os.close,
) -> bytes | None:
    """
    One cgroup file, ``name`` in the open directory ``dir_fd`` (``path`` itself when ``dir_fd`` < 0), read
    with the fewest syscalls; ``path`` names the file in errors. ``None`` if it does not exist, if its cgroup
    was just removed (the kernel answers ENODEV for a file of a dead cgroup), or if the file cannot be read in
    this kind of cgroup (EOPNOTSUPP: ``cgroup.procs`` of a threaded cgroup such as libvirt's vCPUs). The
    syscalls are bound as defaults: this runs ~15 times per cgroup per cycle.
    """
    try:
        fd = _open(name, _OPEN_FLAGS, dir_fd=dir_fd) if dir_fd >= 0 else _open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    try:
        data = _read(fd, _READ_SIZE)
        if len(data) == _READ_SIZE:
            chunks = [data]
            while chunk := _read(fd, _READ_SIZE):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    except OSError as exc:
        if exc.errno in _GONE_ERRNOS:
            return None
        raise
    finally:
        _close(fd)


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_GONE_ERRNOS = frozenset({errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EOPNOTSUPP})


class _Scratch:
    """What one cgroup's files say that needs more than one file (working set, IO) or the caller (OOM)."""

    __slots__ = ("inactive", "io", "labels", "oom", "rows", "threads", "tracked", "usage")

    def __init__(self, t: _Tracked, rows: list[list[Sample]]) -> None:
        self.tracked = t
        self.labels = t.labels
        self.rows = rows
        self.usage: int | None = None
        self.inactive: int | None = None
        self.threads: int | None = None
        self.oom: int | None = None
        self.io: IoTotals | None = None


# One handler per file kind: parse only the exported fields and append the samples.
def _v2_cpu(st: _Scratch, data: bytes, path: str) -> None:
    usage, user, system, periods, throttled, throttled_us = flat_values(data, _V2_CPU_KEYS, path)
    rows, labels = st.rows, st.labels
    if usage is not None:
        rows[CPU_USAGE].append((st.tracked.cpu_labels, usage / 1e6))
    if user is not None:
        rows[CPU_USER].append((labels, user / 1e6))
    if system is not None:
        rows[CPU_SYSTEM].append((labels, system / 1e6))
    if st.tracked.quota_set and periods is not None:
        rows[CFS_PERIODS].append((labels, float(periods)))
        rows[CFS_THROTTLED].append((labels, float(throttled or 0)))
        rows[CFS_THROTTLED_S].append((labels, (throttled_us or 0) / 1e6))


def _v1_cpu_stat(st: _Scratch, data: bytes, path: str) -> None:
    periods, throttled, throttled_ns = flat_values(data, _V1_CPU_KEYS, path)
    if periods is not None:
        rows, labels = st.rows, st.labels
        rows[CFS_PERIODS].append((labels, float(periods)))
        rows[CFS_THROTTLED].append((labels, float(throttled or 0)))
        rows[CFS_THROTTLED_S].append((labels, (throttled_ns or 0) / 1e9))


def _v1_usage(st: _Scratch, data: bytes, path: str) -> None:
    st.rows[CPU_USAGE].append((st.tracked.cpu_labels, parse_int(data, path) / 1e9))


def _v1_acct_stat(st: _Scratch, data: bytes, path: str) -> None:
    user, system = flat_values(data, _V1_ACCT_KEYS, path)
    if user is not None:
        st.rows[CPU_USER].append((st.labels, user / _CLK_TCK))
    if system is not None:
        st.rows[CPU_SYSTEM].append((st.labels, system / _CLK_TCK))


def _mem_usage(st: _Scratch, data: bytes, path: str) -> None:
    st.usage = parse_int(data, path)
    st.rows[MEM_USAGE].append((st.labels, float(st.usage)))


def _v2_mem_stat(st: _Scratch, data: bytes, path: str) -> None:
    anon, file, mapped, inactive = flat_values(data, _V2_MEM_KEYS, path)
    st.inactive = inactive or 0
    _append_present(st, ((MEM_RSS, anon), (MEM_CACHE, file), (MEM_MAPPED, mapped)))


def _v1_mem_stat(st: _Scratch, data: bytes, path: str) -> None:
    rss, cache, swap, mapped, inactive = flat_values(data, st.tracked.mem_keys, path)
    st.inactive = inactive or 0
    _append_present(st, ((MEM_RSS, rss), (MEM_CACHE, cache), (MEM_SWAP, swap), (MEM_MAPPED, mapped)))


def _append_present(st: _Scratch, values: tuple[tuple[int, int | None], ...]) -> None:
    rows, labels = st.rows, st.labels
    for idx, value in values:
        if value is not None:
            rows[idx].append((labels, float(value)))


def _single(idx: int) -> Callable[[_Scratch, bytes, str], None]:
    def handler(st: _Scratch, data: bytes, path: str) -> None:
        st.rows[idx].append((st.labels, float(parse_int(data, path))))

    return handler


def _oom(st: _Scratch, data: bytes, path: str) -> None:
    (st.oom,) = flat_values(data, _OOM_KEYS, path)
    if st.oom is not None:
        st.rows[OOM].append((st.labels, float(st.oom)))


def _psi(some_idx: int, full_idx: int) -> Callable[[_Scratch, bytes, str], None]:
    def handler(st: _Scratch, data: bytes, path: str) -> None:
        some, full = parse_psi_totals(data, path)
        if some is not None:
            st.rows[some_idx].append((st.labels, some / 1e6))
        if full is not None:
            st.rows[full_idx].append((st.labels, full / 1e6))

    return handler


def _pids(st: _Scratch, data: bytes, path: str) -> None:
    st.threads = parse_int(data, path)
    st.rows[THREADS].append((st.labels, float(st.threads)))


def _v2_io(st: _Scratch, data: bytes, path: str) -> None:
    st.io = parse_io_stat(data, path)


def _blkio(ios: bool) -> Callable[[_Scratch, bytes, str], None]:
    def handler(st: _Scratch, data: bytes, path: str) -> None:
        part = parse_blkio(data, path, ios)
        if st.io is None:
            st.io = part
            return
        for dev, values in part.items():
            merged = st.io.setdefault(dev, [0, 0, 0, 0])
            for i, n in enumerate(values):
                merged[i] += n

    return handler


_HANDLER_OF: dict[int, Callable[[_Scratch, bytes, str], None]] = {
    V2_CPU: _v2_cpu,
    V2_MEM_CURRENT: _mem_usage,
    V2_MEM_STAT: _v2_mem_stat,
    V2_SWAP: _single(MEM_SWAP),
    V2_PEAK: _single(MEM_MAX),
    V2_EVENTS: _oom,
    V2_IO: _v2_io,
    PSI_CPU: _psi(PSI_CPU_SOME, PSI_CPU_FULL),
    PSI_MEM: _psi(PSI_MEM_SOME, PSI_MEM_FULL),
    PSI_IO: _psi(PSI_IO_SOME, PSI_IO_FULL),
    PIDS: _pids,
    V1_USAGE: _v1_usage,
    V1_ACCT_STAT: _v1_acct_stat,
    V1_CPU_STAT: _v1_cpu_stat,
    V1_MEM_USAGE: _mem_usage,
    V1_MEM_STAT: _v1_mem_stat,
    V1_MEM_MAX: _single(MEM_MAX),
    V1_FAILCNT: _single(MEM_FAILCNT),
    V1_OOM: _oom,
    V1_BLK_BYTES: _blkio(False),
    V1_BLK_IOS: _blkio(True),
}
_HANDLERS = tuple(_HANDLER_OF[what] for what in range(len(_HANDLER_OF)))


# Held directory descriptors per cgroup: one per hierarchy read (cpuacct, cpu, memory, blkio, pids, unified).
_FDS_PER_CGROUP = 7


def raise_fd_limit(need: int) -> None:
    """
    Raise the soft RLIMIT_NOFILE towards ``need`` (never past the hard limit), as the Go runtime does for
    node_exporter: the collector holds a directory descriptor per cgroup hierarchy it reads.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


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
        self._fd_warned = False
        raise_fd_limit(_FDS_PER_CGROUP * cfg.max_cgroups + 1024)
        # The last cycle's discovery counts (exported as nodeagent_cgroups_*).
        self.discovered = 0
        self.dropped = 0

    async def aclose(self) -> None:
        """Close the held cgroup directory descriptors."""
        with self._busy:
            self._close_all()

    def _close_all(self) -> None:
        for t in getattr(self, "_tracked", {}).values():
            _close_dirs(t)
        self._tracked = {}

    def __del__(self) -> None:
        # A collector dropped without aclose (doctor, tests) must not leak its descriptors.
        self._close_all()

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
        result = walk(
            layout.walk_root, self._include, self._exclude, self._cfg.max_depth, classify=self._resolver.classify
        )
        describe = self._resolver.describe
        wanted = [describe(w) for w in result.workloads if w.kind in self._kinds or w.kind == "other"]
        self.discovered = len(wanted)
        limit = self._cfg.max_cgroups
        if len(wanted) > limit:
            # Keep what is already tracked first so series do not flap, then new ones in walk order.
            known = [w for w in wanted if w.id in self._tracked]
            fresh = [w for w in wanted if w.id not in self._tracked]
            kept_ids = {w.id for w in (known + fresh)[:limit]}
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
        previous = self._tracked
        tracked: dict[str, _Tracked] = {}
        for w in wanted:
            t = previous.pop(w.id, None)
            if t is None or (t.workload is not w and t.workload != w):
                if t is not None:
                    _close_dirs(t)
                t = self._track(layout, w, t)
            tracked[w.id] = t
            if t.new and w.parent and (parent := tracked.get(w.parent)) is not None:
                # A new container or step is a new sub-cgroup of its pod or job: list those again now.
                parent.refreshed_at = 0.0
        for gone in previous.values():
            _close_dirs(gone)
        self._tracked = tracked
        return list(tracked.values())

    def _track(self, layout: CgroupLayout, w: Workload, old: _Tracked | None) -> _Tracked:
        rel = w.id.lstrip("/")
        dirs: dict[str, str] = {}
        if layout.unified is not None:
            dirs["unified"] = os.path.join(layout.unified, rel)
        for controller, hier in layout.v1.items():
            dirs[controller] = os.path.join(hier, rel)
        dirs[_WALKED] = os.path.join(layout.walk_root, rel)
        labels = _labels(w)
        container_info = (*labels, w.runtime, w.container_id, w.image_id, *w.labels) if w.name else None
        t = _Tracked(w, labels, (*labels, "total"), _info(w), container_info, dirs)
        if old is not None:  # metadata changed (names filled in): keep the OOM baseline
            t.oom, t.new = old.oom, False
        return t

    # --- limits and the read plan (when a cgroup is new, then every spec_interval) ----------------------

    def _refresh(self, t: _Tracked, v2: bool, now: float) -> None:
        """Re-read the limits, list the sub-cgroups, and build the plan of files to read each cycle."""
        self._list_proc_dirs(t)
        t.refreshed_at = now
        quota: int | None
        period: int | None
        shares: int | None
        if v2:
            cpu_max = self._parse_spec(t, "unified", "cpu.max", parse_cpu_max)
            quota, period = cpu_max if cpu_max is not None else (None, None)
            weight = self._parse_spec(t, "unified", "cpu.weight", parse_int)
            shares = cpu_weight_to_shares(weight) if weight else None
            mem_limit = self._parse_spec(t, "unified", "memory.max", parse_limit)
            has_memory = "memory.max" in self._present(t, "unified")
        else:
            quota = self._parse_spec(t, "cpu", "cpu.cfs_quota_us", parse_limit)
            period = self._parse_spec(t, "cpu", "cpu.cfs_period_us", parse_int)
            shares = self._parse_spec(t, "cpu", "cpu.shares", parse_int)
            mem_limit = self._parse_spec(t, "memory", "memory.limit_in_bytes", parse_limit)
            hier = self._file(t, "memory", "memory.use_hierarchy")
            t.mem_keys = _V1_MEM_KEYS_LOCAL if hier is not None and hier.strip() == b"0" else _V1_MEM_KEYS_HIER
            has_memory = "memory" in t.dirs and os.path.isdir(t.dirs["memory"])
        rows: list[tuple[int, float]] = []
        if has_memory:
            rows.append((SPEC_MEM, 0.0 if mem_limit is None or mem_limit >= _UNLIMITED else float(mem_limit)))
        if quota is not None:
            rows.append((SPEC_QUOTA, float(quota)))
        if period is not None:
            rows.append((SPEC_PERIOD, float(period)))
        if shares is not None:
            rows.append((SPEC_SHARES, float(shares)))
        t.spec_rows = rows
        t.quota_set = quota is not None
        t.plan = self._plan(t, v2)

    def _present(self, t: _Tracked, hierarchy: str) -> set[str]:
        d = t.dirs.get(hierarchy)
        if d is None:
            return set()
        try:
            return set(os.listdir(d))
        except OSError:
            return set()

    def _plan(self, t: _Tracked, v2: bool) -> list[tuple[int, str, str, int]]:
        """The files to read each cycle, in order; files this cgroup lacks (older kernel, a controller not
        enabled in its subtree) are left out until the next refresh."""
        wanted: list[tuple[str, str, int]]
        if v2:
            wanted = [
                ("unified", "cpu.stat", V2_CPU),
                ("unified", "memory.current", V2_MEM_CURRENT),
                ("unified", "memory.stat", V2_MEM_STAT),
                ("unified", "memory.swap.current", V2_SWAP),
                ("unified", "memory.peak", V2_PEAK),
                ("unified", "memory.events", V2_EVENTS),
                ("unified", "io.stat", V2_IO),
            ]
        else:
            acct = "cpuacct" if "cpuacct" in t.dirs else "cpu"
            wanted = [
                (acct, "cpuacct.usage", V1_USAGE),
                (acct, "cpuacct.stat", V1_ACCT_STAT),
                ("memory", "memory.usage_in_bytes", V1_MEM_USAGE),
                ("memory", "memory.stat", V1_MEM_STAT),
                ("memory", "memory.max_usage_in_bytes", V1_MEM_MAX),
                ("memory", "memory.failcnt", V1_FAILCNT),
                ("memory", "memory.oom_control", V1_OOM),
                ("blkio", "blkio.throttle.io_service_bytes_recursive", V1_BLK_BYTES),
                ("blkio", "blkio.throttle.io_serviced_recursive", V1_BLK_IOS),
            ]
            if t.quota_set:
                wanted.insert(2, ("cpu", "cpu.stat", V1_CPU_STAT))
        wanted += [
            ("unified", "cpu.pressure", PSI_CPU),
            ("unified", "memory.pressure", PSI_MEM),
            ("unified", "io.pressure", PSI_IO),
            ("unified" if v2 else "pids", "pids.current", PIDS),
        ]
        listings: dict[str, set[str]] = {}
        plan: list[tuple[int, str, str, int]] = []
        for hierarchy, name, what in wanted:
            if hierarchy not in listings:
                listings[hierarchy] = self._present(t, hierarchy)
            if name in listings[hierarchy]:
                plan.append((self._dir_fd(t, hierarchy), name, f"{t.dirs[hierarchy]}/{name}", what))
        return plan

    def _dir_fd(self, t: _Tracked, hierarchy: str) -> int:
        """A held O_PATH descriptor of the cgroup's directory in ``hierarchy``; -1 (read by path) if none."""
        return self._dir_fd_of(t, t.dirs[hierarchy])

    def _dir_fd_of(self, t: _Tracked, directory: str) -> int:
        # Keyed by path: co-mounted hierarchies (cpu,cpuacct) and the walked one share a descriptor.
        fd = t.dir_fds.get(directory)
        if fd is None:
            try:
                fd = os.open(directory, _DIR_FLAGS)
            except OSError as exc:
                fd = -1
                if exc.errno in (errno.EMFILE, errno.ENFILE) and not self._fd_warned:
                    self._fd_warned = True
                    self._log.warning(
                        "cgroups.fd_limit",
                        message="out of file descriptors for cgroup directories; reading the rest by path (slower)",
                        error={"message": str(exc)},
                    )
            t.dir_fds[directory] = fd
        return fd

    def _list_proc_dirs(self, t: _Tracked) -> None:
        dirs: list[str] = []
        for dirpath, _subdirs, _files in os.walk(t.dirs[_WALKED]):
            dirs.append(dirpath)
            if len(dirs) >= 256:
                break
        t.proc_dirs = tuple(dirs)

    def _file(self, t: _Tracked, hierarchy: str, name: str) -> bytes | None:
        d = t.dirs.get(hierarchy)
        if d is None:
            return None
        path = f"{d}/{name}"
        try:
            return read_file_at(-1, name, path)
        except OSError as exc:
            self._gone_or_count(t, path, exc)
            return None

    def _gone_or_count(self, t: _Tracked, path: str, exc: OSError) -> None:
        """
        A read failed with an error other than the usual ones of a removed cgroup: if the cgroup (or this file's
        hierarchy of it) is gone now, it was removed during the read (``_Gone``); otherwise count an io error.
        """
        if not os.path.isdir(t.dirs[_WALKED]) or not os.path.isdir(os.path.dirname(path)):
            raise _Gone(t.workload.id) from exc
        self._error("io", path, f"cannot read {path}: {exc.strerror or exc}")

    def _parse_spec(self, t: _Tracked, hierarchy: str, name: str, parse: Callable[[bytes, str], _T]) -> _T | None:
        data = self._file(t, hierarchy, name)
        if data is None:
            return None
        try:
            return parse(data, f"{t.workload.id}/{name}")
        except ParseError as exc:
            self._error("parse", name, str(exc))
            return None

    # --- one cycle --------------------------------------------------------------------------------------

    def _cycle(self) -> list[MetricFamily]:
        layout = self._layout()
        first = self._cycles == 0
        self._cycles += 1
        now = time.monotonic()
        tracked = self._discover(layout)
        v2 = layout.mode == "v2"
        spec_interval = self._cfg.spec_interval
        rows: list[list[Sample]] = [[] for _ in _DEFS]
        info: list[Sample] = []
        container_info: list[Sample] = []
        procs_cache: dict[str, int] = {}
        rises: list[tuple[_Tracked, int, int]] = []
        for t in tracked:
            try:
                if t.refreshed_at == 0.0 or now - t.refreshed_at >= spec_interval:
                    if not os.path.isdir(t.dirs[_WALKED]):
                        continue
                    self._refresh(t, v2, now)
                    if not os.path.isdir(t.dirs[_WALKED]):
                        # Removed while its files were being listed: the plan lacks what was already gone (even
                        # everything), and what it has would be a partial row set. Once listed, a removal shows
                        # as the first planned file missing.
                        raise _Gone(t.workload.id)
                oom = self._sample(t, rows, procs_cache)
            except _Gone:
                self._discard(t, rows)
                if not os.path.isdir(t.dirs[_WALKED]):
                    continue
                # Made again under the same path (a restarted service): the held directory descriptors point
                # at the removed cgroup. Track the new one afresh; all its OOM kills are news.
                t = self._track(layout, t.workload, None)
                self._tracked[t.workload.id] = t
                try:
                    self._refresh(t, v2, now)
                    oom = self._sample(t, rows, procs_cache)
                except _Gone:
                    self._discard(t, rows)
                    continue
            info.append((t.info, 1.0))
            if t.container_info is not None:
                container_info.append((t.container_info, 1.0))
            if oom is not None:
                rise = self._oom_rise(t, oom, first)
                if rise:
                    rises.append((t, oom, rise))
            t.new = False
        self._log_oom_events(rises)
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
        if container_info:
            meta = self._resolver.metadata
            families.append(
                MetricFamily(
                    "nodeagent_container_info",
                    "info",
                    "A container's runtime, ids and allowlisted labels (runtimes.labels), as its runtime reports them; "
                    "join on id.",
                    CONTAINER_INFO_LABELS + (meta.label_names if meta is not None else ()),
                    tuple(container_info),
                )
            )
        families.extend(self._self_families(layout))
        return families

    def _discard(self, t: _Tracked, rows: list[list[Sample]]) -> None:
        """
        Forget a cgroup that vanished mid-read: drop its samples already appended (they are at the tails) and
        its directory descriptors, so a cgroup made again under the same path is tracked afresh next cycle.
        """
        _close_dirs(t)
        self._tracked.pop(t.workload.id, None)
        cgid = t.workload.id
        for samples in rows:
            while samples and samples[-1][0][0] == cgid:
                samples.pop()

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

    def _error(self, reason: str, path: str, message: str) -> None:
        self._errors[reason] += 1
        key = os.path.basename(path) + reason
        now = time.monotonic()
        if now - self._error_logged.get(key, -3600.0) >= 3600.0:
            self._error_logged[key] = now
            self._log.warning("cgroups.read_error", error={"message": message}, file=path)

    def _sample(self, t: _Tracked, rows: list[list[Sample]], procs_cache: dict[str, int]) -> int | None:
        """
        Read this cycle's files of one cgroup and append its samples to ``rows``; returns its OOM-kill
        count (``None`` if unknown). The collector's hot path: per file one read, one table lookup, one parse.

        Raises:
            _Gone: the cgroup was removed during the reads.
        """
        st = _Scratch(t, rows)
        absent: list[tuple[int, str, str, int]] = []
        handlers = _HANDLERS
        for entry in t.plan:
            dir_fd, name, path, what = entry
            try:
                data = read_file_at(dir_fd, name, path)
            except OSError as exc:
                self._gone_or_count(t, path, exc)
                continue
            if data is None:
                if entry is t.plan[0] or not os.path.isdir(t.dirs[_WALKED]):
                    raise _Gone(t.workload.id)
                absent.append(entry)
                continue
            try:
                handlers[what](st, data, path)
            except ParseError as exc:
                self._error("parse", path, str(exc))
        labels = t.labels
        if st.usage is not None and st.inactive is not None:
            rows[MEM_WS].append((labels, float(max(st.usage - st.inactive, 0))))
        if st.io:
            self._io_rows(t, st.io, rows)
        for idx, value in t.spec_rows:
            rows[idx].append((labels, value))
        procs = self._processes(t, procs_cache)
        if procs == 0 and st.threads:
            # Tasks but no process in the known sub-cgroups: one was created since the last listing.
            self._list_proc_dirs(t)
            procs = self._processes(t, procs_cache)
        if procs is not None:
            rows[PROCESSES].append((labels, float(procs)))
        if absent:
            t.plan = [e for e in t.plan if e not in absent]
        return st.oom

    def _processes(self, t: _Tracked, cache: dict[str, int]) -> int | None:
        """Processes in the cgroup and its sub-cgroups (listed at refresh), each cgroup.procs read once a cycle."""
        total = 0
        seen = False
        for d in t.proc_dirs:
            n = cache.get(d)
            if n is None:
                # The cgroup's own directory has a held descriptor (its statistics files use it).
                try:
                    data = read_file_at(t.dir_fds.get(d, -1), "cgroup.procs", f"{d}/cgroup.procs")
                except OSError as exc:
                    if os.path.isdir(d):  # else a sub-cgroup removed meanwhile: nothing to count
                        self._gone_or_count(t, f"{d}/cgroup.procs", exc)
                    continue
                if data is None:
                    continue
                n = cache[d] = data.count(b"\n")
            total += n
            seen = True
        return total if seen else None

    def _io_rows(self, t: _Tracked, io: IoTotals, rows: list[list[Sample]]) -> None:
        for dev, values in io.items():
            labels = (*t.labels, self._device(dev))
            for idx, value in zip(_FS_FAMILIES, values, strict=True):
                rows[idx].append((labels, float(value)))

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

    def _oom_rise(self, t: _Tracked, count: int, first_cycle: bool) -> int:
        """Kills since the last cycle (0 for a baseline)."""
        previous = t.oom
        t.oom = count
        if previous is None:
            # A cgroup present at start-up: its past kills are history, not news. A cgroup that appeared
            # since: every kill it counts happened while we were watching.
            if first_cycle or not t.new:
                return 0
            previous = 0
        elif count < previous:
            # The counter only grows: this is a new cgroup made under the same path (a restarted service).
            previous = 0
        return count - previous

    def _log_oom_events(self, rises: list[tuple[_Tracked, int, int]]) -> None:
        """
        One event per kill, in the innermost workload: v2 counters are hierarchical, so a kill in a container
        also raises its pod's count (and a step's its job's); the parent logs only the kills its exported
        children do not account for (a container removed before it was seen, a process in the pod itself).
        """
        by_parent: dict[str, int] = {}
        for t, _count, delta in rises:
            if t.workload.parent:
                by_parent[t.workload.parent] = by_parent.get(t.workload.parent, 0) + delta
        for t, count, delta in rises:
            own = delta - by_parent.get(t.workload.id, 0)
            if own > 0:
                log_oom_event(self._log, t.workload, count, own)


_T = TypeVar("_T")


def oom_event_fields(w: Workload, count: int, delta: int) -> dict[str, Any]:
    """The ECS fields of one OOM-kill event beyond its categorisation (``events.EVENT_TYPES``); empty ones left out."""
    return {
        **workload_fields(w),
        "nodeagent.oom_kill.count": count,
        "nodeagent.oom_kill.new": delta,
    }


def log_oom_event(log: structlog.typing.FilteringBoundLogger, w: Workload, count: int, delta: int) -> None:
    """Log one structured OOM-kill event for workload ``w`` (the cycle's trace.id comes from contextvars)."""
    what = f"{w.kind} {w.id}"
    kills = "kill" if delta == 1 else "kills"
    emit(log, "oom_kill", f"{delta} OOM {kills} in {what} (total {count})", oom_event_fields(w, count, delta))


SPEC = CollectorSpec(
    name="cgroups",
    description="Per-workload CPU, memory, IO, pressure and OOM kills from cgroups v1/v2 (cAdvisor names).",
    config_model=CgroupsConfig,
    factory=CgroupsCollector,
)
