"""
Real cgroups for integration tests: a test-only tree ``/nodeagent-test-<pid>-<hex>.slice/...`` made in every
hierarchy the cgroups collector reads, processes started inside it, and a cleanup that removes both.

Only processes this module started are ever killed (by pid); only directories below the test parent are
ever removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily
from nodeagent.sources.cgroupfs import CgroupLayout, NoCgroupsError, discover_layout
from tests.prereq import missing

TEST_PREFIX = "nodeagent-test-"


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _enter_cgroups(procs_files: Sequence[str]) -> None:
    """In the child before exec: die with the test process, then move into the test cgroup everywhere."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    pid = str(os.getpid())
    for path in procs_files:
        _write(path, pid)


def _rmdir(path: str, pids: set[int], attempts: int = 100) -> bool:
    """rmdir one cgroup, retrying on EBUSY (a task that just exited still holds it for a moment)."""
    for i in range(attempts):
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return False
        if i % 20 == 19:  # still busy: kill what is left inside, but only processes this module started
            with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as f:
                for pid in (int(x) for x in f.read().split()):
                    if pid in pids:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return False


class TestCgroups:
    """
    One test's cgroup tree. ``rel`` paths are relative to the test parent; ``id(rel)`` is the collector's
    ``id`` label for it. Hierarchies are named as in ``CgroupLayout.v1`` (``cpu``, ``cpuacct``, ``memory``,
    ``pids``, ``blkio``, ``name=systemd``) plus ``unified``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, layout: CgroupLayout) -> None:
        self.layout = layout
        self.parent = f"{TEST_PREFIX}{os.getpid()}-{secrets.token_hex(3)}.slice"
        self.hierarchies: dict[str, str] = dict(layout.v1)
        if layout.unified is not None:
            self.hierarchies["unified"] = layout.unified
        seen: set[str] = set()
        self.dirs: list[str] = []  # each hierarchy directory once (co-mounted controllers share one)
        for d in self.hierarchies.values():
            real = os.path.realpath(d)
            if real not in seen:
                seen.add(real)
                self.dirs.append(d)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def exclude(self) -> str:
        """A collector ``exclude`` regex that drops every cgroup outside the test parent."""
        return rf"^/(?!{re.escape(self.parent)}(?:/|$))"

    def id(self, rel: str) -> str:
        """The cgroup path (the collector's ``id``) of ``rel``."""
        return f"/{self.parent}/{rel}".rstrip("/")

    def path(self, hierarchy: str, rel: str, name: str = "") -> str:
        """A directory of this tree (or a file in it) in one hierarchy."""
        return os.path.join(self.hierarchies[hierarchy], self.parent, rel, name).rstrip("/")

    def mkdir(self, rel: str) -> str:
        """Create ``rel`` (and its missing parents) in every hierarchy; returns its id."""
        for d in self.dirs:
            os.makedirs(os.path.join(d, self.parent, rel), exist_ok=True)
        return self.id(rel)

    def rmdir(self, rel: str) -> None:
        """Remove one empty cgroup from every hierarchy."""
        for d in self.dirs:
            if not _rmdir(os.path.join(d, self.parent, rel), self._pids()):
                raise OSError(f"cannot remove {os.path.join(d, self.parent, rel)}")

    def read(self, hierarchy: str, rel: str, name: str) -> str:
        """The kernel's content of one file of ``rel``."""
        with open(self.path(hierarchy, rel, name)) as f:
            return f.read()

    def read_int(self, hierarchy: str, rel: str, name: str) -> int:
        """A single-value file as an integer."""
        return int(self.read(hierarchy, rel, name))

    def read_keyed(self, hierarchy: str, rel: str, name: str) -> dict[str, int]:
        """A flat-keyed file (``key value`` lines) as a dict."""
        fields = self.read(hierarchy, rel, name).split()
        return {k: int(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}

    def read_psi_total(self, rel: str, resource: str, kind: str = "some") -> int:
        """``total=`` (microseconds) of the ``some`` or ``full`` line of ``<resource>.pressure`` in the unified tree."""
        for line in self.read("unified", rel, f"{resource}.pressure").splitlines():
            if line.startswith(kind + " "):
                return int(line.rsplit("total=", 1)[1])
        raise AssertionError(f"no {kind} line in {resource}.pressure")

    def write(self, hierarchy: str, rel: str, name: str, value: str) -> None:
        """Write one control file of ``rel``."""
        _write(self.path(hierarchy, rel, name), value)

    def spawn(
        self, rel: str, code: str, hierarchies: Sequence[str] | None = None, stdin: int | None = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        """
        Start ``python3 -c code`` already inside ``rel`` (moved before exec, so everything it allocates is
        charged there) in every hierarchy, or in ``hierarchies`` only. Its stdout is a pipe.
        """
        names = hierarchies if hierarchies is not None else list(self.hierarchies)
        files = sorted({self.path(h, rel, "cgroup.procs") for h in names})
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _enter_cgroups(files),
        )
        self.procs.append(proc)
        return proc

    def spawn_ready(self, rel: str, code: str, timeout: float = 10.0) -> subprocess.Popen[bytes]:
        """``spawn``, then wait until the process prints ``ready`` (its setup, such as allocating, is done)."""
        proc = self.spawn(rel, code)
        assert proc.stdout is not None
        poller = select.poll()  # not select(): the test process may hold more than FD_SETSIZE descriptors
        poller.register(proc.stdout, select.POLLIN)
        line = proc.stdout.readline() if poller.poll(timeout * 1000) else b""
        assert line == b"ready\n", f"process in {rel} did not get ready: {line!r} (exit {proc.poll()})"
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL one started process and reap it."""
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        proc.wait(10)

    def _pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def cleanup(self) -> list[str]:
        """Kill and reap every started process, remove the whole tree deepest first; returns what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        pids = self._pids()
        left: list[str] = []
        for d in self.dirs:
            top = os.path.join(d, self.parent)
            if not os.path.isdir(top):
                continue
            for dirpath, _subdirs, _files in os.walk(top, topdown=False):
                if not _rmdir(dirpath, pids):
                    left.append(dirpath)
        return left


def writable_layout(why: str, v1_needed: Sequence[str] = ()) -> tuple[str, CgroupLayout]:
    """
    The host's cgroup root and layout, if this process may create cgroups there (root, a mounted and writable
    hierarchy, the v1 controllers in ``v1_needed``); otherwise ``missing`` (fails under CI, skips elsewhere).
    """
    if os.geteuid() != 0:
        missing(f"root ({why})")
    root = HostPaths().cgroup_root
    try:
        layout = discover_layout(root)
    except NoCgroupsError as exc:
        missing(f"a mounted cgroup hierarchy ({exc})")
    absent = [c for c in v1_needed if c not in layout.v1]
    if absent:
        missing(
            f"cgroup v1 hierarchies {', '.join(absent)} under {root} (a v1 or hybrid host; these tests read v1 files)"
        )
    if not os.access(layout.walk_root, os.W_OK):
        missing(f"a writable cgroup hierarchy ({layout.walk_root} is read-only)")
    return root, layout


@contextlib.contextmanager
def cgroup_tree(v1_needed: Sequence[str] = ()) -> Iterator[TestCgroups]:
    """A test-only cgroup tree; afterwards its processes are killed and reaped and every directory is removed."""
    root, layout = writable_layout("the tests create cgroups", v1_needed)
    t = TestCgroups(layout)
    try:
        yield t
    finally:
        left = t.cleanup()
    assert left == [], f"cgroups left behind: {left}"
    assert leftovers(root, os.getpid()) == []


def leftovers(cgroup_root: str, pid: int) -> list[str]:
    """Test parents of process ``pid`` still present in any hierarchy below ``cgroup_root``."""
    out = []
    for hier in sorted(os.listdir(cgroup_root)):
        d = os.path.join(cgroup_root, hier)
        with contextlib.suppress(OSError):
            out += [os.path.join(d, n) for n in os.listdir(d) if n.startswith(f"{TEST_PREFIX}{pid}-")]
    return out


def value(families: Sequence[MetricFamily], name: str, **labels: str) -> float | None:
    """The value of the one sample of family ``name`` whose labels include ``labels``, or None if there is none."""
    found = [
        v
        for f in families
        if f.name == name
        for values, v in f.samples
        if all(dict(zip(f.labelnames, values, strict=True)).get(k) == x for k, x in labels.items())
    ]
    assert len(found) <= 1, f"{len(found)} samples of {name} match {labels}"
    return found[0] if found else None


def ids(families: Sequence[MetricFamily], name: str = "nodeagent_workload_info") -> list[str]:
    """The ``id`` label of every sample of family ``name``, in order."""
    return [dict(zip(f.labelnames, v, strict=True))["id"] for f in families if f.name == name for v, _ in f.samples]


def rows(families: Sequence[MetricFamily], name: str) -> list[dict[str, str]]:
    """Every sample of family ``name`` as a dict of its labels."""
    return [dict(zip(f.labelnames, v, strict=True)) for f in families if f.name == name for v, _ in f.samples]
