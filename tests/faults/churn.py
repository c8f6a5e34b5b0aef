"""
Background loops that make the normal races of a busy node happen while the agent samples: container cgroups
created and removed, pod network namespaces (with a veth pair and a process inside) created and deleted, and
short-lived processes started and exiting. Each loop is a thread with a ``stop()`` that returns how many rounds it
ran; every object it makes comes from the test's ``TestCgroups`` or ``NetnsLab``, whose cleanup removes whatever is
left, and every process it starts is killed and reaped by pid.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Self

from tests.integration.cgroups_helpers import TestCgroups
from tests.integration.netns_helpers import NetnsLab


def pod_rel(uid: str | None = None) -> str:
    """A cgroupfs-driver pod cgroup path (relative to the test parent): ``kubepods/burstable/pod<uid>``."""
    return f"kubepods/burstable/pod{uid or uuid.uuid4()}"


def container_id() -> str:
    """A fresh 64-hex container id."""
    return secrets.token_hex(32)


def _enter(procs_files: Sequence[str]) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the child into a cgroup (every hierarchy's ``cgroup.procs``) before exec."""

    def preexec() -> None:
        pid = str(os.getpid()).encode()
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    return preexec


def spawn_in(tree: TestCgroups, rel: str, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` already inside the cgroup ``rel`` (moved before exec); the caller kills and reaps it."""
    files = sorted({tree.path(h, rel, "cgroup.procs") for h in tree.hierarchies})
    return subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_enter(files),
    )


def in_netns(lab: NetnsLab, ns: str, *cmd: str) -> list[str]:
    """``cmd`` run inside the named network namespace (nsenter, so that no mount namespace is made)."""
    return ["nsenter", f"--net={lab.path(ns)}", *cmd]


def reap(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL (if still running) and reap one started process."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
    proc.wait(10)


class Loop:
    """A thread running ``round()`` until ``stop()``; an exception in a round ends the loop and is re-raised."""

    def __init__(self, name: str) -> None:
        self.rounds = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def round(self) -> None:
        """One round of making and removing things."""
        raise NotImplementedError

    def finish(self) -> None:
        """Remove what the last round left (called on the loop's thread after the last round)."""

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.round()
                self.rounds += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the test by stop()
            self._error = exc
        finally:
            self.finish()

    def start(self) -> Self:
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop after the current round; returns the rounds run, or raises what ended the loop early."""
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), f"{self._thread.name} did not stop"
        if self._error is not None:
            raise AssertionError(f"{self._thread.name} failed after {self.rounds} rounds") from self._error
        return self.rounds


class CgroupChurn(Loop):
    """
    Container cgroups of one pod created and removed in a sliding window: each round makes ``width`` new ones in
    every hierarchy and removes the previous round's, so cgroups are both appearing and vanishing at all times.
    """

    def __init__(self, tree: TestCgroups, pod: str, width: int = 8) -> None:
        super().__init__("cgroup-churn")
        self.tree, self.pod, self.width = tree, pod, width
        self.made: list[str] = []  # ids of every cgroup made
        self._live: list[str] = []

    def round(self) -> None:
        fresh = [f"{self.pod}/{container_id()}" for _ in range(self.width)]
        for rel in fresh:
            self.made.append(self.tree.mkdir(rel))
        for rel in self._live:
            self.tree.rmdir(rel)
        self._live = fresh

    def finish(self) -> None:
        for rel in self._live:
            with contextlib.suppress(OSError):
                self.tree.rmdir(rel)
        self._live = []


class NetnsChurn(Loop):
    """
    Pods that come and go with their network: each round makes a namespace, a veth pair into it (the host end
    named by the lab), a pod cgroup with a process in that namespace, waits ``dwell`` seconds, then kills the
    process, deletes the namespace (the veth pair goes with it) and removes the cgroups, as a pod deletion does.
    """

    def __init__(self, lab: NetnsLab, tree: TestCgroups, dwell: float = 0.05) -> None:
        super().__init__("netns-churn")
        self.lab, self.tree, self.dwell = lab, tree, dwell
        self.pods: list[str] = []  # ids of every pod cgroup made

    def round(self) -> None:
        n = self.rounds
        ns = self.lab.netns(f"c{n}", ipv6=True)
        self.lab.veth(f"h{n}", None, f"n{n}", ns)
        pod = pod_rel()
        rel = f"{pod}/{container_id()}"
        self.pods.append(self.tree.mkdir(pod))
        self.tree.mkdir(rel)
        proc = spawn_in(self.tree, rel, in_netns(self.lab, ns, "sleep", "60"))
        try:
            self._stop.wait(self.dwell)
        finally:
            reap(proc)
            self.lab.delete_netns(ns)
            self.tree.rmdir(rel)
            self.tree.rmdir(pod)


class ExitingProcesses(Loop):
    """
    Short-lived processes started one after another in a cgroup (inside a network namespace if ``ns`` is given),
    each exiting on its own after ``life`` seconds, up to ``alive`` at a time: /proc entries that vanish while the
    agent reads them.
    """

    def __init__(
        self, tree: TestCgroups, rel: str, lab: NetnsLab | None = None, ns: str = "", life: float = 0.02, alive: int = 4
    ) -> None:
        super().__init__("exiting-processes")
        cmd = ["sleep", f"{life:g}"]
        self.cmd = in_netns(lab, ns, *cmd) if lab is not None else cmd
        self.tree, self.rel, self.alive = tree, rel, alive
        self._procs: list[subprocess.Popen[bytes]] = []

    def round(self) -> None:
        self._procs = [p for p in self._procs if p.poll() is None]
        if len(self._procs) < self.alive:
            self._procs.append(spawn_in(self.tree, self.rel, self.cmd))
        else:
            self._procs[0].wait(10)

    def finish(self) -> None:
        for proc in self._procs:
            reap(proc)
        self._procs = []


def quiet_veth(lab: NetnsLab, ns: str, role: str, octet: int) -> tuple[str, str]:
    """
    A veth pair from the host into ``ns`` (IPv6 off on both ends before they come up, addresses 10.254.<octet>.1/2,
    static neighbours), on which nothing moves but what a test sends: its counters hold still between reads.
    Returns (host end, namespace end).
    """
    host_end, ns_end = lab.veth(f"h{role}", None, f"n{role}", ns, up=False)
    subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{host_end}.disable_ipv6=1"], check=True)
    lab.link(None, host_end, "up")
    lab.link(ns, ns_end, "up")
    lab.addr(None, host_end, f"10.254.{octet}.1/30")
    lab.addr(ns, ns_end, f"10.254.{octet}.2/30")
    lab.neigh(None, host_end, f"10.254.{octet}.2", lab.mac(ns, ns_end))
    lab.neigh(ns, ns_end, f"10.254.{octet}.1", lab.mac(None, host_end))
    return host_end, ns_end


def send_udp(dest: str, count: int, size: int) -> None:
    """``count`` datagrams of ``size`` payload bytes from this (the host's) namespace to ``dest`` port 9."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x" * size, (dest, 9))
