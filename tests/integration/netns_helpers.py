"""
Real network namespaces for tests: test-only namespaces ``nodeagent-test-<pid>-<hex>-<suffix>`` and veth pairs
named ``na<hex><role>`` (IFNAMSIZ allows 15 characters), made with iproute2 and always removed again.

Only namespaces and links this module created are ever deleted; ``sweep_stale`` removes the ones a killed test
run left behind, recognised by the dead pid in their name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
from types import TracebackType

from tests.prereq import missing

TEST_PREFIX = "nodeagent-test-"
IFNAMSIZ = 16  # with the terminating NUL
_STALE = re.compile(rf"^{re.escape(TEST_PREFIX)}(\d+)-[0-9a-f]+-")


def require_netns() -> str:
    """The ``ip`` binary, after checking for root; fails under CI and skips elsewhere when either is missing."""
    if os.geteuid() != 0:
        missing("root (network namespaces and veth pairs)")
    path = shutil.which("ip")
    if path is None:
        missing("ip (apt-get install iproute2)")
    assert path is not None
    return path


def run(*args: str, check: bool = True, timeout: float = 30) -> str:
    """Run a command, returning stdout; a failure raises with the command and its stderr."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def list_netns() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Delete test namespaces whose creating process is gone; returns their names."""
    removed = []
    for name in list_netns():
        m = _STALE.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


class NetnsLab:
    """
    The namespaces and veth pairs of one test; a context manager whose exit removes all of them, also when the
    test failed half-way. ``None`` as a namespace means the test process's own (the host's) namespace.
    """

    __test__ = False

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.prefix = f"{TEST_PREFIX}{os.getpid()}-{token}"
        self.ifprefix = f"na{token}"
        self.namespaces: list[str] = []
        self.host_links: list[str] = []

    def __enter__(self) -> NetnsLab:
        sweep_stale()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        left = self.cleanup()
        if left and exc is None:
            raise AssertionError(f"test namespaces or links left behind: {left}")

    @staticmethod
    def path(ns: str) -> str:
        """The bind-mounted namespace file that ``RouteSocket(netns_path=...)`` takes."""
        return f"/run/netns/{ns}"

    def ifname(self, role: str) -> str:
        """A test-only interface name."""
        name = f"{self.ifprefix}{role}"
        assert len(name) < IFNAMSIZ, f"interface name {name!r} is longer than IFNAMSIZ allows"
        return name

    def netns(self, suffix: str, ipv6: bool = False) -> str:
        """
        Create a namespace with ``lo`` up. IPv6 is off unless asked for, so that no router solicitation, DAD or
        MLD report adds packets to a counter a test compares.
        """
        name = f"{self.prefix}-{suffix}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        if not ipv6:
            self.sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
            self.sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Set a per-namespace sysctl (missing keys, such as IPv6 ones on a kernel without it, are ignored)."""
        path = f"/proc/sys/{key.replace('.', '/')}"
        self.exec(ns, "sh", "-c", f"test ! -e {path} || echo {value} > {path}")

    def exec(self, ns: str | None, *cmd: str) -> str:
        """Run a command inside ``ns`` (``ip netns exec``, which also mounts that namespace's /sys)."""
        return run(*cmd) if ns is None else run("ip", "netns", "exec", ns, *cmd)

    def veth(self, a_role: str, a_ns: str | None, b_role: str, b_ns: str | None, *, up: bool = True) -> tuple[str, str]:
        """A veth pair ``(a, b)`` with each end created directly in its namespace; both ends up unless ``up=False``."""
        a, b = self.ifname(a_role), self.ifname(b_role)
        args = ["ip", "link", "add", a]
        if a_ns is not None:
            args += ["netns", a_ns]
        args += ["type", "veth", "peer", "name", b]
        if b_ns is not None:
            args += ["netns", b_ns]
        run(*args)
        for name, ns in ((a, a_ns), (b, b_ns)):
            if ns is None:
                self.host_links.append(name)
        if up:
            self.link(a_ns, a, "up")
            self.link(b_ns, b, "up")
        return a, b

    def link(self, ns: str | None, dev: str, *settings: str) -> None:
        """``ip link set dev DEV SETTINGS...`` in ``ns``."""
        run("ip", *self._n(ns), "link", "set", "dev", dev, *settings)

    def addr(self, ns: str | None, dev: str, cidr: str) -> None:
        """Add an address."""
        run("ip", *self._n(ns), "addr", "add", cidr, "dev", dev)

    def neigh(self, ns: str | None, dev: str, address: str, lladdr: str) -> None:
        """A permanent neighbour entry, so that no ARP exchange adds packets a test did not send."""
        run("ip", *self._n(ns), "neigh", "replace", address, "lladdr", lladdr, "dev", dev, "nud", "permanent")

    def link_json(self, ns: str | None, dev: str) -> dict[str, object]:
        """``ip -j -d -s link show DEV`` in ``ns``."""
        out = json.loads(run("ip", *self._n(ns), "-j", "-d", "-s", "link", "show", "dev", dev))
        assert isinstance(out, list) and len(out) == 1
        result = out[0]
        assert isinstance(result, dict)
        return result

    def mac(self, ns: str | None, dev: str) -> str:
        """The link-layer address of ``dev``."""
        address = self.link_json(ns, dev)["address"]
        assert isinstance(address, str)
        return address

    def sysfs_stats(self, ns: str | None, dev: str) -> dict[str, int]:
        """Every file of ``/sys/class/net/DEV/statistics`` as read inside ``ns``: the kernel's own counters."""
        out = self.exec(ns, "grep", "-r", ".", f"/sys/class/net/{dev}/statistics/")
        stats = {}
        for line in out.splitlines():
            path, value = line.rsplit(":", 1)
            stats[path.rsplit("/", 1)[1]] = int(value)
        return stats

    def sysfs(self, ns: str | None, dev: str, name: str) -> str:
        """One attribute of ``/sys/class/net/DEV`` read inside ``ns``."""
        return self.exec(ns, "cat", f"/sys/class/net/{dev}/{name}").strip()

    @staticmethod
    def _n(ns: str | None) -> list[str]:
        return [] if ns is None else ["-n", ns]

    def delete_netns(self, ns: str) -> None:
        """Delete one namespace now (its veth ends go with it, and so do their peers)."""
        run("ip", "netns", "del", ns)
        self.namespaces.remove(ns)

    def cleanup(self) -> list[str]:
        """Delete every namespace and host-side link this lab made; returns what is still there."""
        for name in self.host_links:
            with contextlib.suppress(RuntimeError):
                if os.path.exists(f"/sys/class/net/{name}"):
                    run("ip", "link", "del", "dev", name)
        for ns in self.namespaces:
            with contextlib.suppress(RuntimeError):
                run("ip", "netns", "del", ns)
        present = set(list_netns())
        left = [ns for ns in self.namespaces if ns in present]
        left += [name for name in self.host_links if os.path.exists(f"/sys/class/net/{name}")]
        self.namespaces = []
        self.host_links = []
        return left
