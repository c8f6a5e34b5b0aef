"""
Filesystem size, free space and inodes for each mount, from mountinfo plus statfs.

Families (node_exporter names, labels ``device, mountpoint, fstype``): ``node_filesystem_size_bytes``,
``node_filesystem_free_bytes``, ``node_filesystem_avail_bytes``, ``node_filesystem_files``,
``node_filesystem_files_free``, ``node_filesystem_readonly``, ``node_filesystem_device_error``, and
``node_filesystem_mount_info{device,major,minor,mountpoint}``.
Sources: ``<procfs>/1/mountinfo`` (``<procfs>/self/mountinfo`` if that is unreadable), then statfs of
``<rootfs>/<mountpoint>`` in worker threads, each under ``mount_timeout``. A mount whose statfs has not
returned is "stuck": it reports ``device_error 1`` and gets no new statfs until the old one returns, so a
hung NFS server costs one thread, never the agent.
Shell equivalent: ``findmnt -D`` / ``df -T; df -i``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import CollectorConfig, CollectorContext, CollectorSpec, Duration, NoDataError, Regex
from nodeagent.hostfs import ParseError, read_text
from nodeagent.metrics import MetricFamily, gauge
from nodeagent.sources.blocking import DaemonThreadExecutor

# node_exporter's defaults (collector/filesystem_linux.go).
DEFAULT_MOUNT_POINTS_EXCLUDE = (
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)
DEFAULT_FS_TYPES_EXCLUDE = (
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|"
    r"overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs)$"
)
STATFS_WORKERS = 4

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One mountinfo line, the fields the collector uses."""

    major: str
    minor: str
    mountpoint: str
    options: frozenset[str]
    fstype: str
    device: str


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in mountinfo as \ooo octal.
    if "\\" not in field:
        return field
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str, source: str = "mountinfo") -> list[Mount]:
    """
    Parse ``/proc/<pid>/mountinfo``: ``id parent maj:min root mountpoint options [optional...] - fstype source super``.
    """
    mounts = []
    # Lines end at "\n" only: the kernel escapes space, tab, newline and backslash in paths but prints every other
    # character raw, and a user's FUSE mount point may hold \x1c, \x85 or U+2028, where str.splitlines would split.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, _, minor = fields[2].partition(":")
            mounts.append(
                Mount(
                    major=major,
                    minor=minor,
                    mountpoint=_unescape(fields[4]),
                    options=frozenset(fields[5].split(",")),
                    fstype=fields[sep + 1],
                    device=_unescape(fields[sep + 2]),
                )
            )
        except (ValueError, IndexError) as exc:
            raise ParseError(
                f"{source}: line {lineno}: {line!r}: expected 'id parent maj:min root mountpoint "
                "options ... - fstype source superoptions'"
            ) from exc
    return mounts


class FilesystemConfig(CollectorConfig):
    """Options of the ``filesystem`` collector."""

    mount_points_exclude: Regex = DEFAULT_MOUNT_POINTS_EXCLUDE
    fs_types_exclude: Regex = DEFAULT_FS_TYPES_EXCLUDE
    mount_timeout: Duration = 5.0


@dataclass(frozen=True, slots=True)
class FsStats:
    """The statfs numbers, already in bytes."""

    size: int
    free: int
    avail: int
    files: int
    files_free: int


def statfs(path: str) -> FsStats:
    """statfs(2) one path; sizes use f_bsize like node_exporter."""
    st = os.statvfs(path)
    return FsStats(st.f_blocks * st.f_bsize, st.f_bfree * st.f_bsize, st.f_bavail * st.f_bsize, st.f_files, st.f_ffree)


_LABELS = ("device", "mountpoint", "fstype")


class FilesystemCollector:
    """Reads mountinfo inline and statfs in a small thread pool."""

    def __init__(self, ctx: CollectorContext, cfg: FilesystemConfig) -> None:
        self._paths = ctx.paths
        self._log = ctx.log
        self._mountinfo = (ctx.paths.proc("1", "mountinfo"), ctx.paths.proc("self", "mountinfo"))
        self._exclude_mp = re.compile(cfg.mount_points_exclude)
        self._exclude_fs = re.compile(cfg.fs_types_exclude)
        self._timeout = cfg.mount_timeout
        # Daemon threads: a statfs stuck in the kernel must not keep the agent from exiting.
        self._pool = DaemonThreadExecutor(STATFS_WORKERS, "statfs")
        self._stuck: dict[str, asyncio.Future[FsStats]] = {}
        self.statfs = statfs  # replaceable in tests to simulate a hung mount

    def _read_mounts(self) -> list[Mount]:
        for path in self._mountinfo:
            try:
                return parse_mountinfo(read_text(path), path)
            except FileNotFoundError:
                continue
        raise NoDataError(
            f"no mountinfo at {' or '.join(self._mountinfo)}",
            "mount the host's /proc and point paths.procfs at it",
        )

    def _selected(self, mounts: list[Mount]) -> list[Mount]:
        # Later entries shadow earlier ones at the same mount point; keep the visible one.
        visible: dict[str, Mount] = {}
        for m in mounts:
            if self._exclude_fs.match(m.fstype) or self._exclude_mp.match(m.mountpoint):
                continue
            visible[m.mountpoint] = m
        return list(visible.values())

    async def collect(self) -> Sequence[MetricFamily]:
        """Statfs every selected mount concurrently, each bounded by ``mount_timeout``."""
        mounts = self._selected(self._read_mounts())
        self._release_stuck()
        loop = asyncio.get_running_loop()
        pending: dict[str, asyncio.Future[FsStats]] = {}
        for m in mounts:
            if m.mountpoint in self._stuck:
                continue
            pending[m.mountpoint] = loop.run_in_executor(self._pool, self.statfs, self._paths.root(m.mountpoint))
        if pending:
            try:
                await asyncio.wait(pending.values(), timeout=self._timeout)
            except asyncio.CancelledError:
                # The cycle's own timeout (shorter than mount_timeout) ended it. A statfs still out is stuck all
                # the same: issuing it again next cycle would hold one more thread each time, until none is left.
                for mountpoint, unanswered in pending.items():
                    if not unanswered.done():
                        self._mark_stuck(mountpoint, unanswered)
                raise

        size = gauge("node_filesystem_size_bytes", "Filesystem size in bytes.", _LABELS)
        free = gauge("node_filesystem_free_bytes", "Filesystem free space in bytes.", _LABELS)
        avail = gauge("node_filesystem_avail_bytes", "Filesystem space available to non-root users in bytes.", _LABELS)
        files = gauge("node_filesystem_files", "Filesystem total file nodes.", _LABELS)
        files_free = gauge("node_filesystem_files_free", "Filesystem total free file nodes.", _LABELS)
        readonly = gauge("node_filesystem_readonly", "Filesystem read-only status.", _LABELS)
        device_error = gauge(
            "node_filesystem_device_error",
            "Whether an error occurred while getting statistics for the given device.",
            _LABELS,
        )
        mount_info = gauge(
            "node_filesystem_mount_info",
            "Filesystem mount information.",
            ("device", "major", "minor", "mountpoint"),
        )
        for m in mounts:
            labels = (m.device, m.mountpoint, m.fstype)
            mount_info.add((m.device, m.major, m.minor, m.mountpoint), 1)
            readonly.add(labels, 1 if "ro" in m.options else 0)
            fut = pending.get(m.mountpoint)
            stats: FsStats | None = None
            if fut is not None and fut.done():
                try:
                    stats = fut.result()
                except (OSError, ValueError) as exc:  # ValueError: a NUL in the path (only a corrupt mountinfo)
                    self._log.debug("filesystem.statfs_failed", mountpoint=m.mountpoint, error=str(exc))
            elif fut is not None:
                self._mark_stuck(m.mountpoint, fut)
            if stats is None:
                device_error.add(labels, 1)
                continue
            device_error.add(labels, 0)
            size.add(labels, stats.size)
            free.add(labels, stats.free)
            avail.add(labels, stats.avail)
            files.add(labels, stats.files)
            files_free.add(labels, stats.files_free)
        return [b.build() for b in (size, free, avail, files, files_free, readonly, device_error, mount_info)]

    def _mark_stuck(self, mountpoint: str, fut: asyncio.Future[FsStats]) -> None:
        self._log.warning("filesystem.mount_stuck", mountpoint=mountpoint, timeout_seconds=self._timeout)
        self._stuck[mountpoint] = fut

    def _release_stuck(self) -> None:
        for mountpoint, fut in list(self._stuck.items()):
            if fut.done():
                del self._stuck[mountpoint]
                if not fut.cancelled():
                    fut.exception()  # retrieved, so asyncio does not warn about it
                self._log.info("filesystem.mount_recovered", mountpoint=mountpoint)

    async def aclose(self) -> None:
        """Stop the statfs threads (a stuck one is left to the kernel)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


SPEC = CollectorSpec(
    name="filesystem",
    description="Filesystem space and inodes per mount (statfs in threads, per-mount timeout).",
    config_model=FilesystemConfig,
    factory=FilesystemCollector,
)
