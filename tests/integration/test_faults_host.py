"""
The host and kernel half of the fault matrix (docs/reliability.md). Each test injects one fault into a real agent
(``nodeagent run`` as a process; for the narrowest race windows also the collector in this process, with the
window opened deterministically by a hook) and checks what an SRE relies on: /metrics and /healthz keep answering,
the affected collector reports what happened (success 0 and the right reason when its source is unusable; when
the fault is a normal race of a busy node, such as a cgroup, namespace or process vanishing while it is read,
success stays 1, the vanished object's series are simply gone and nothing is logged), the other collectors and
the other objects' values are unaffected, and everything is back within one cycle after the fault clears.

Faults: a cgroup removed mid-read; a network namespace deleted mid-read; the /proc entry of an exiting process;
an NVML GPU lost; an NVML call hanging; a hung file system (a FUSE mount whose daemon is stopped, so statfs blocks
in the kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nodeagent.collectors.cgroups as cgroups_module
import nodeagent.workloads as workloads_module
from nodeagent import hostfs
from nodeagent.collector import CollectorContext
from nodeagent.collectors.cgroups import CgroupsCollector, CgroupsConfig
from nodeagent.collectors.network import NetworkCollector, NetworkConfig
from nodeagent.hostfs import HostPaths, SourceReadError
from nodeagent.metrics import MetricFamily
from nodeagent.sources import netlink
from nodeagent.sources.blocking import DaemonThreadExecutor
from nodeagent.workloads import WorkloadResolver
from tests.faults.churn import (
    CgroupChurn,
    ExitingProcesses,
    NetnsChurn,
    container_id,
    in_netns,
    pod_rel,
    quiet_veth,
    reap,
    send_udp,
    spawn_in,
)
from tests.faults.fuse import STATFS as FUSE_STATFS
from tests.faults.mountns import REPO, STATFS_SYSCALL, TMPFS_BYTES, NamespacedAgent, agent_with_mounts
from tests.faults.observe import Scrape, healthz_seconds, of_collector, problems, records, scrape
from tests.integration.agent_proc import AgentProcess, free_port, http_get, run_agent, started_process, wait_until
from tests.integration.cgroups_helpers import TestCgroups, cgroup_tree, ids, value
from tests.integration.netns_helpers import NetnsLab, require_netns
from tests.nvml_double import Gpu, Process, Scenario, Xid, build_or_missing, subprocess_env
from tests.nvml_double.scenario import GPU_IS_LOST, GiB
from tests.prereq import missing

pytestmark = [pytest.mark.integration, pytest.mark.root]

MiB = 1 << 20
SLEEP = "import time\nprint('ready', flush=True)\ntime.sleep(120)\n"
# Every collector cycles every 2 s (not the default 15 s), so the ones a fault must not affect run during it.
OTHERS_RUN = ("--set", "interval=2s", "--set", "jitter=1ms")


# --- shared ----------------------------------------------------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[TestCgroups]:
    """A test-only cgroup tree, removed afterwards (tests/integration/cgroups_helpers.py)."""
    with cgroup_tree() as t:
        yield t


def limit_memory(tree: TestCgroups, rel: str, limit: int) -> None:
    """Set the memory limit of ``rel`` (v1 ``memory.limit_in_bytes``, else v2 ``memory.max``)."""
    if "memory" in tree.layout.v1:
        tree.write("memory", rel, "memory.limit_in_bytes", str(limit))
    else:
        tree.write("unified", rel, "memory.max", str(limit))


def series_of(families: list[MetricFamily], id: str) -> list[str]:
    """Names of the families with any sample for the workload ``id``."""
    return sorted({f.name for f in families for v, _ in f.samples if "id" in f.labelnames and v[0] == id})


def logged_problems(events: list[dict[str, Any]]) -> list[str]:
    """Events logged at warning or above by an in-process collector."""
    return [str(e.get("event")) for e in events if e["level"] in ("warning", "error", "critical")]


def cgroups_collector(tree: TestCgroups, log: Any) -> CgroupsCollector:
    """The cgroups collector on the real roots, seeing only the test tree."""
    paths = HostPaths()
    ctx = CollectorContext("cgroups", paths, log, WorkloadResolver(paths))
    return CgroupsCollector(ctx, CgroupsConfig(exclude=tree.exclude))


def read_errors(families: list[MetricFamily]) -> tuple[float | None, float | None]:
    """``nodeagent_cgroups_read_errors_total`` for io and parse."""
    name = "nodeagent_cgroups_read_errors_total"
    return value(families, name, reason="io"), value(families, name, reason="parse")


def cycles(agent: AgentProcess, collector: str) -> dict[str, int]:
    """The agent's finished cycles of one collector by outcome, from its debug ``collector.cycle`` records."""
    out: dict[str, int] = {}
    for doc in of_collector(records(agent.log()), collector, "collector.cycle"):
        outcome = str(doc.get("nodeagent.outcome"))
        out[outcome] = out.get(outcome, 0) + 1
    return out


def others_unaffected(before: Scrape, during: Scrape, collector: str) -> None:
    """
    Every other collector still succeeds and has not failed since ``before``. ``runtimes`` is left out: its sources
    are the host's container runtimes, which other tests on a shared machine start and stop.
    """
    skip = {collector, "runtimes"}
    assert {k: v for k, v in during.success().items() if k not in skip} == {
        k: 1.0 for k in before.success() if k not in skip
    }
    assert {k: v for k, v in before.all_failures().items() if k[0] not in skip} == {
        k: v for k, v in during.all_failures().items() if k[0] not in skip
    }


def watch(url: str, seconds: float, check: Callable[[Scrape], None], every: float = 0.1) -> int:
    """Scrape every ``every`` seconds for ``seconds``, running ``check`` on each; returns the number of scrapes."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        check(scrape(url))
        assert healthz_seconds(url) < 1.0
        n += 1
        time.sleep(every)
    return n


# --- 1. a cgroup removed mid-read ----------------------------------------------------------------------------


def test_a_cgroup_removed_mid_read_is_skipped_without_an_error(
    tree: TestCgroups, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]], log: Any
) -> None:
    """
    The two windows the walk-then-read race leaves, opened by hooks on a real tree: (a) a new container removed
    after the walk listed it and its directory was checked, before its limits are read; (b) a known container
    removed between its first and second file reads. Neither leaves a series behind (not even its info row),
    counts a read error or logs anything; the pod's other container keeps its exact values.
    """
    pod = pod_rel()
    stable = f"{pod}/{container_id()}"
    tree.mkdir(stable)
    limit_memory(tree, stable, 64 * MiB)
    tree.spawn_ready(stable, SLEEP)
    c = cgroups_collector(tree, log)
    c.collect_sync()

    late = f"{pod}/{container_id()}"
    tree.mkdir(late)
    refresh = c._refresh

    def remove_then_refresh(t: Any, v2: bool, now: float) -> None:
        if t.workload.id == tree.id(late):
            tree.rmdir(late)
        refresh(t, v2, now)

    monkeypatch.setattr(c, "_refresh", remove_then_refresh)
    after_a = c.collect_sync()
    monkeypatch.undo()

    mid = f"{pod}/{container_id()}"
    tree.mkdir(mid)
    c.collect_sync()  # mid is known now, its files planned
    read_file_at = cgroups_module.read_file_at
    removed: list[str] = []

    def read_then_remove(dir_fd: int, name: str, path: str) -> bytes | None:
        data = read_file_at(dir_fd, name, path)
        if f"{tree.id(mid)}/" in path and not removed:
            tree.rmdir(mid)
            removed.append(name)
        return data

    monkeypatch.setattr(cgroups_module, "read_file_at", read_then_remove)
    after_b = c.collect_sync()
    monkeypatch.undo()
    recovered = c.collect_sync()

    assert not os.path.exists(tree.path("unified" if tree.layout.mode == "v2" else tree.layout.walk_controller, late))
    assert [] == series_of(after_a, tree.id(late))
    assert len(removed) == 1  # mid's first file was read, then it was removed
    assert [] == series_of(after_b, tree.id(mid))
    for families in (after_a, after_b, recovered):
        assert sorted([tree.id(pod), tree.id(stable)]) == sorted(ids(families))
        assert 64 * MiB == value(families, "container_spec_memory_limit_bytes", id=tree.id(stable))
        assert 1.0 == value(families, "container_processes", id=tree.id(stable))
        assert (0.0, 0.0) == read_errors(families)
    assert [] == logged_problems(events)


def test_cgroup_churn_in_process_hits_the_race_and_never_misreports(
    tree: TestCgroups, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]], log: Any
) -> None:
    """
    Eight containers made and removed in a sliding window while the collector runs 150 cycles back to back: the
    race is hit for real (cgroups vanish between the walk and their reads, counted by the collector's discard
    path), yet no cycle raises, no read error is counted, every exported container has its CPU row (no orphan
    info row), and the stable container's values never change.
    """
    pod = pod_rel()
    stable = f"{pod}/{container_id()}"
    tree.mkdir(stable)
    limit_memory(tree, stable, 48 * MiB)
    c = cgroups_collector(tree, log)
    discards = 0
    discard = c._discard

    def counted_discard(t: Any, rows: Any) -> None:
        nonlocal discards
        discards += 1
        discard(t, rows)

    monkeypatch.setattr(c, "_discard", counted_discard)
    churn = CgroupChurn(tree, pod).start()
    seen: set[str] = set()
    try:
        for _ in range(150):
            families = c.collect_sync()
            exported = set(ids(families))
            seen |= exported
            with_cpu = {
                dict(zip(f.labelnames, v, strict=True))["id"]
                for f in families
                if f.name == "container_cpu_usage_seconds_total"
                for v, _ in f.samples
            }
            assert exported - {tree.id(pod)} <= with_cpu
            assert 48 * MiB == value(families, "container_spec_memory_limit_bytes", id=tree.id(stable))
            assert (0.0, 0.0) == read_errors(families)
    finally:
        rounds = churn.stop()
    final = c.collect_sync()
    print(f"cgroup churn in process: 150 cycles, {rounds} churn rounds, {discards} vanished mid-read")

    assert rounds >= 10, rounds
    assert discards >= 1, f"no cgroup vanished mid-read in 150 cycles over {rounds} churn rounds"
    assert len(seen & set(churn.made)) >= 10
    assert sorted([tree.id(pod), tree.id(stable)]) == sorted(ids(final))
    assert [] == logged_problems(events)


def test_the_agent_keeps_every_cgroups_cycle_while_containers_come_and_go(tree: TestCgroups, tmp_path: Path) -> None:
    """
    The real agent samples cgroups every 0.2 s while containers are made and removed in a loop for 4 s: every
    cycle succeeds (counted from its own cycle records), /metrics and /healthz answer throughout, the stable
    container's values stay exact, nothing is logged above info, and after the churn the removed containers are
    gone and a new one appears within one cycle.
    """
    pod = pod_rel()
    stable = f"{pod}/{container_id()}"
    tree.mkdir(stable)
    limit_memory(tree, stable, 40 * MiB)
    tree.spawn_ready(stable, SLEEP)
    args = [
        *OTHERS_RUN,
        *("--log-level", "debug", "--set", "collectors.cgroups.interval=0.2s"),
        *("--set", f"collectors.cgroups.exclude={tree.exclude}"),
    ]
    with run_agent(args, tmp_dir=str(tmp_path)) as agent:
        before = scrape(agent.url)

        def steady(s: Scrape) -> None:
            others_unaffected(before, s, "cgroups")
            assert 1.0 == s.success()["cgroups"]
            assert 40 * MiB == s.one("container_spec_memory_limit_bytes", id=tree.id(stable))
            assert 1.0 == s.one("container_processes", id=tree.id(stable))

        churn = CgroupChurn(tree, pod).start()
        try:
            scrapes = watch(agent.url, 4.0, steady)
        finally:
            rounds = churn.stop()
        stopped = time.monotonic()
        churned = set(churn.made)
        wait_until(lambda: not set(scrape(agent.url).by("nodeagent_workload_info", "id")) & churned, 5, "churn gone")
        vanished = time.monotonic() - stopped
        after = scrape(agent.url)
        fresh = f"{pod}/{container_id()}"
        made = time.monotonic()
        tree.mkdir(fresh)
        wait_until(lambda: scrape(agent.url).one("nodeagent_workload_info", id=tree.id(fresh)) == 1.0, 5, "the new one")
        appeared = time.monotonic() - made
        counted = cycles(agent, "cgroups")
        docs = records(agent.log())

    print(f"cgroup churn in the agent: {counted} cycles, {rounds} churn rounds, {scrapes} scrapes")
    assert rounds >= 5 and scrapes >= 10
    assert set(counted) == {"ok"} and counted["ok"] >= 15, counted
    assert before.failures("cgroups") == after.failures("cgroups")
    others_unaffected(before, after, "cgroups")
    assert set(after.by("nodeagent_workload_info", "id")) == {tree.id(pod), tree.id(stable)}
    assert 40 * MiB == after.one("container_spec_memory_limit_bytes", id=tree.id(stable))
    # Removed ones gone, a new one present, each within one 0.2 s cycle (plus scheduling slack on a busy CI host).
    print(f"cgroups: removed gone after {vanished:.2f} s, a new one in after {appeared:.2f} s")
    assert vanished < 0.2 + 1.0 and appeared < 0.2 + 1.0, (vanished, appeared)
    assert [] == problems(docs, "cgroups")


# --- 2. a network namespace deleted mid-read; 3. the /proc entry of an exiting process ---------------------------

# container_network_<name>_total -> its sysfs statistics file.
NETWORK = {
    "receive_bytes": "rx_bytes",
    "receive_packets": "rx_packets",
    "transmit_bytes": "tx_bytes",
    "transmit_packets": "tx_packets",
}


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    """Test-only network namespaces and veth pairs, all removed afterwards."""
    require_netns()
    with NetnsLab() as lab:
        yield lab


@dataclass(frozen=True)
class NetPod:
    """A pod with its own network namespace: a quiet veth pair into it, and its pod and container cgroups."""

    ns: str
    host_end: str
    ns_end: str
    address: str
    pod: str
    container: str


def net_pod(lab: NetnsLab, tree: TestCgroups, role: str, octet: int) -> NetPod:
    """Make one ``NetPod`` (no process yet)."""
    ns = lab.netns(f"p{role}")
    host_end, ns_end = quiet_veth(lab, ns, role, octet)
    pod = pod_rel()
    container = f"{pod}/{container_id()}"
    tree.mkdir(container)
    return NetPod(ns, host_end, ns_end, f"10.254.{octet}.2", pod, container)


def start_in_netns(
    lab: NetnsLab, tree: TestCgroups, rel: str, ns: str, seconds: float = 120
) -> subprocess.Popen[bytes]:
    """A process in cgroup ``rel`` and namespace ``ns`` (returned once it is in both); the tree's cleanup reaps it."""
    proc = spawn_in(tree, rel, in_netns(lab, ns, "sleep", f"{seconds:g}"))
    tree.procs.append(proc)
    want = os.stat(lab.path(ns)).st_ino
    wait_until(lambda: os.stat(f"/proc/{proc.pid}/ns/net").st_ino == want, 5, f"pid {proc.pid} to enter {ns}")
    return proc


def network_collector(log: Any) -> NetworkCollector:
    """The network collector on the real roots, per-workload namespaces on, no link event listener."""
    paths = HostPaths()
    return NetworkCollector(
        CollectorContext("network", paths, log, WorkloadResolver(paths)), NetworkConfig(link_events=False)
    )


def pod_rows(families: Sequence[MetricFamily], tree: TestCgroups, p: NetPod) -> dict[str, float | None]:
    """The pod's container_network_* counters of its namespace end."""
    return {
        name: value(families, f"container_network_{name}_total", id=tree.id(p.pod), interface=p.ns_end)
        for name in NETWORK
    }


def kernel_rows(lab: NetnsLab, p: NetPod) -> dict[str, float | None]:
    """The same counters as the kernel has them (sysfs inside the namespace)."""
    stats = lab.sysfs_stats(p.ns, p.ns_end)
    return {name: float(stats[sysfs]) for name, sysfs in NETWORK.items()}


def sampled_with_kernel(lab: NetnsLab, p: NetPod, sample: Callable[[], list[MetricFamily]]) -> tuple[Any, Any]:
    """The kernel's counters and a sample taken while they held still (retried if anything moved)."""
    for _ in range(20):
        before = kernel_rows(lab, p)
        families = sample()
        if kernel_rows(lab, p) == before:
            return before, families
    raise AssertionError(f"{p.ns_end}: counters never held still around a sample")


def test_a_namespace_whose_process_exits_or_that_is_deleted_mid_read_is_skipped_silently(
    lab: NetnsLab, tree: TestCgroups, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]], log: Any
) -> None:
    """
    Two windows opened by hooks on real namespaces: (a) the pod process the collector listed first exits between
    the listing and the collector entering its namespace (another process of the pod is still there); (b) a pod's
    process exits and its namespace is deleted while the collector dumps that namespace's links. (a) still
    reports the pod with the kernel's exact counters; (b) finishes the cycle, and in the next one the pod is
    gone, its socket released (so the kernel frees the namespace and its veth) and nothing was logged.
    """
    p = net_pod(lab, tree, "a", 40)
    q = net_pod(lab, tree, "b", 41)
    start_in_netns(lab, tree, p.container, p.ns)
    first = start_in_netns(lab, tree, p.pod, p.ns)  # the pod's own cgroup is listed before its container's
    q_proc = start_in_netns(lab, tree, q.container, q.ns)
    send_udp(p.address, 30, 200)
    send_udp(q.address, 10, 100)
    c = network_collector(log)
    route_socket = netlink.RouteSocket

    def exits_first(netns_path: str | None = None) -> netlink.RouteSocket:
        if netns_path is not None and netns_path.startswith(f"/proc/{first.pid}/"):
            reap(first)
        return route_socket(netns_path)

    monkeypatch.setattr(netlink, "RouteSocket", exits_first)
    try:
        kernel_a, after_a = sampled_with_kernel(lab, p, c.collect_sync)
        assert first.poll() is not None  # the window was hit: the listed process is gone
        assert kernel_a == pod_rows(after_a, tree, p)
        assert kernel_a["receive_packets"] >= 30

        dump_links = route_socket.dump_links
        q_path = f"/proc/{q_proc.pid}/ns/net"
        q_inode = os.stat(lab.path(q.ns)).st_ino

        def deleted_while_dumping(sock: netlink.RouteSocket, retries: int = 3) -> list[netlink.Link]:
            if sock.netns_path == q_path and q_proc.poll() is None:
                reap(q_proc)
                lab.delete_netns(q.ns)
            return dump_links(sock, retries)

        monkeypatch.setattr(route_socket, "dump_links", deleted_while_dumping)
        kernel_b, after_b = sampled_with_kernel(lab, p, c.collect_sync)
        assert q_proc.poll() is not None
        monkeypatch.setattr(route_socket, "dump_links", dump_links)
        kernel_c, after_c = sampled_with_kernel(lab, p, c.collect_sync)
        held = set(c._netns)
    finally:
        monkeypatch.undo()
        asyncio.run(c.aclose())

    assert kernel_b == pod_rows(after_b, tree, p) and kernel_c == pod_rows(after_c, tree, p)
    assert {n: None for n in NETWORK} == pod_rows(after_c, tree, q)
    assert os.stat(lab.path(p.ns)).st_ino in held and q_inode not in held  # q's socket released
    wait_until(lambda: not os.path.exists(f"/sys/class/net/{q.host_end}"), 10, "the kernel to free q's namespace")
    assert [] == logged_problems(events)


def test_the_network_collector_keeps_every_cycle_while_pods_and_processes_come_and_go(
    lab: NetnsLab, tree: TestCgroups, tmp_path: Path
) -> None:
    """
    The real agent samples the network every 0.4 s for 5 s while pods with their own namespace and veth pair are
    made and deleted in a loop, and short-lived processes start and exit in a stable pod's own cgroup (listed
    before its long-lived process, so the collector keeps picking pids that are exiting): every cycle succeeds,
    the stable pod's counters equal the kernel's at every scrape, nothing is logged above info, and the deleted
    pods' series are gone within one cycle after the churn stops.
    """
    p = net_pod(lab, tree, "s", 42)
    start_in_netns(lab, tree, p.container, p.ns)
    send_udp(p.address, 25, 300)
    args = [
        *OTHERS_RUN,
        *("--log-level", "debug", "--set", "collectors.network.interval=0.4s"),
        # Only this test's links: another test setting its own link down must not log into this agent.
        *(
            "--set",
            f"collectors.network.device_include=^{lab.ifprefix}",
            "--set",
            f"collectors.cgroups.exclude={tree.exclude}",
        ),
    ]
    pod_id = tree.id(p.pod)

    def pod_counters(s: Scrape) -> dict[str, float | None]:
        return {name: s.one(f"container_network_{name}_total", id=pod_id, interface=p.ns_end) for name in NETWORK}

    with run_agent(args, tmp_dir=str(tmp_path)) as agent:
        wait_until(lambda: pod_counters(scrape(agent.url)) == kernel_rows(lab, p), 5, "the stable pod's counters")
        before = scrape(agent.url)
        kernel = kernel_rows(lab, p)

        def steady(s: Scrape) -> None:
            others_unaffected(before, s, "network")
            assert 1.0 == s.success()["network"]
            assert kernel == pod_counters(s)

        churn = NetnsChurn(lab, tree).start()
        exiting = ExitingProcesses(tree, p.pod, lab, p.ns).start()
        try:
            scrapes = watch(agent.url, 5.0, steady)
        finally:
            rounds, exits = churn.stop(), exiting.stop()
        stopped = time.monotonic()
        churned = set(churn.pods)
        wait_until(
            lambda: not set(scrape(agent.url).by("container_network_receive_bytes_total", "id")) & churned,
            5,
            "the deleted pods' series to go",
        )
        vanished = time.monotonic() - stopped
        after = scrape(agent.url)
        counted = cycles(agent, "network")
        docs = records(agent.log())

    print(f"netns churn in the agent: {counted} cycles, {rounds} pods, {exits} exiting processes, {scrapes} scrapes")
    assert kernel == kernel_rows(lab, p) == pod_counters(after)
    assert rounds >= 5 and exits >= 20 and scrapes >= 10, (rounds, exits, scrapes)
    assert set(counted) == {"ok"} and counted["ok"] >= 10, counted
    assert before.failures("network") == after.failures("network")
    others_unaffected(before, after, "network")
    print(f"network: deleted pods gone after {vanished:.2f} s")
    assert vanished < 0.4 + 1.0
    assert [] == problems(docs, "network")


def process_state(pid: int) -> str:
    """The state letter of a process (``R``, ``S``, ``Z`` ...) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_a_process_exiting_while_its_proc_entry_is_read_belongs_to_no_workload(
    tree: TestCgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The resolver (pid -> cgroup -> workload, used for GPU processes) on the three states of an exiting process:
    exited between the open and the read of /proc/<pid>/cgroup (the kernel answers ESRCH), exited and not yet
    reaped (a zombie, which cgroup v1 has already moved to the root cgroup), and gone. Each resolves to no
    workload, without an error; a live process still resolves to its container.
    """
    pod = pod_rel()
    rel = f"{pod}/{container_id()}"
    tree.mkdir(rel)
    resolver = WorkloadResolver(HostPaths())
    live = tree.spawn_ready(rel, SLEEP)
    assert tree.id(rel) == getattr(resolver.resolve(live.pid), "id", None)

    opened_then_exited = tree.spawn_ready(rel, SLEEP)
    read_text = hostfs.read_text  # what nodeagent.workloads calls

    def exits_after_open(path: str) -> str:
        if path == f"/proc/{opened_then_exited.pid}/cgroup":
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                reap(opened_then_exited)
                return os.read(fd, 65536).decode()
            except OSError as exc:
                raise SourceReadError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
            finally:
                os.close(fd)
        return read_text(path)

    monkeypatch.setattr(workloads_module, "read_text", exits_after_open)
    assert resolver.resolve(opened_then_exited.pid) is None
    monkeypatch.undo()

    zombie = spawn_in(tree, rel, ["true"])
    tree.procs.append(zombie)
    wait_until(lambda: process_state(zombie.pid) == "Z", 5, "a zombie")
    assert resolver.resolve(zombie.pid) is None
    zombie.wait()
    assert resolver.resolve(zombie.pid) is None
    assert tree.id(rel) == getattr(resolver.resolve(live.pid), "id", None)


# --- 4. NVML: a GPU lost, a call hanging ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def nvml_lib() -> Path:
    """The NVML test double, built once."""
    return build_or_missing()


@contextlib.contextmanager
def gpu_agent(lib_dir: Path, scenario: Path, tmp_path: Path, args: Sequence[str]) -> Iterator[AgentProcess]:
    """``nodeagent run`` whose pynvml loads the NVML test double (tests/nvml_double)."""
    port = free_port()
    log_path = str(tmp_path / f"nodeagent-{port}.log")
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{port}", *args]
    with started_process(
        cmd, log_path, lambda: http_get(url + "/readyz")[0] == 200, "the agent", env=subprocess_env(lib_dir, scenario)
    ) as proc:
        yield AgentProcess(proc, port, log_path)


def gpus(gpu0: dict[str, Any] | None = None, gpu1: dict[str, Any] | None = None) -> list[Gpu]:
    """Two GPUs with distinct values; ``gpu0`` and ``gpu1`` add to or override each one's."""
    return [Gpu(**{"power_mw": 123_456, "util_gpu": 87, **(gpu0 or {})}), Gpu(power_mw=287_500, **(gpu1 or {}))]


def test_a_lost_gpu_is_down_alone_keeps_what_was_counted_and_is_back_within_a_cycle(
    nvml_lib: Path, tree: TestCgroups, tmp_path: Path
) -> None:
    """
    GPU 1 starts answering every NVML call with GPU_IS_LOST. The source (NVML) still works, so the collector keeps
    succeeding and says it per GPU: nodeagent_gpu_up{gpu="1"} 0 (the alert), GPU 1's other series gone, GPU 0's
    values exact, the Xid already counted on GPU 0 kept, no failure logged. GPU processes that exited (one
    reaped, one a zombie) are attributed to no workload while the live one is. Restored, GPU 1 is back within one
    cycle.
    """
    rel = f"{pod_rel()}/{container_id()}"
    tree.mkdir(rel)
    live = tree.spawn_ready(rel, SLEEP)
    gone = spawn_in(tree, rel, ["true"])
    gone.wait()
    zombie = spawn_in(tree, rel, ["true"])
    tree.procs.append(zombie)
    listed = [Process(live.pid, 2 * GiB), Process(gone.pid, 1 * GiB), Process(zombie.pid, 3 * GiB)]
    scenario = tmp_path / "nvml.scenario"
    Scenario(gpus=gpus({"processes": listed, "xids": [Xid(1, 79)]})).write(scenario)
    interval = 0.5
    args = (*OTHERS_RUN, "--set", f"collectors.gpu.interval={interval}s")
    with gpu_agent(nvml_lib, scenario, tmp_path, args) as agent:
        wait_until(lambda: scrape(agent.url).by("nodeagent_gpu_xid_errors_total", "gpu") == {"0": 1.0}, 10, "the Xid")
        # Delivered: the double would hand a re-registered event set the same event again, real NVML would not.
        healthy = gpus({"processes": listed})
        Scenario(gpus=healthy).write(scenario)
        before = scrape(agent.url)
        Scenario(gpus=gpus({"processes": listed}, {"errors": {"*": GPU_IS_LOST}})).write(scenario)
        wait_until(lambda: scrape(agent.url).by("nodeagent_gpu_up", "gpu") == {"0": 1.0, "1": 0.0}, 5, "GPU 1 down")
        lost = scrape(agent.url)
        scrapes = watch(agent.url, 2.5, lambda s: others_unaffected(before, s, "gpu"))  # a 2 s cycle of the others
        Scenario(gpus=healthy).write(scenario)
        restored = time.monotonic()
        wait_until(
            lambda: scrape(agent.url).by("nodeagent_gpu_power_watts", "gpu") == {"0": 123.456, "1": 287.5},
            5,
            "GPU 1 back",
        )
        back_after = time.monotonic() - restored
        back = scrape(agent.url)
        docs = records(agent.log())

    assert scrapes >= 3
    assert 1.0 == lost.success()["gpu"] and {} == {k: v for k, v in lost.failures("gpu").items() if v}
    assert {"0": 123.456} == lost.by("nodeagent_gpu_power_watts", "gpu")
    assert {"0": 0.87} == lost.by("nodeagent_gpu_utilization_ratio", "gpu", engine="gpu")
    assert ["0"] == sorted(lost.by("nodeagent_gpu_info", "gpu"))
    assert {"0": 1.0} == lost.by("nodeagent_gpu_xid_errors_total", "gpu")
    assert {"0": 1.0} == back.by("nodeagent_gpu_xid_errors_total", "gpu")
    for s in (before, lost, back):
        assert {tree.id(rel): 2.0 * GiB} == s.by("nodeagent_gpu_workload_memory_used_bytes", "id")
        assert {tree.id(rel): 1.0} == s.by("nodeagent_gpu_workload_processes", "id")
    print(f"GPU lost: back {back_after:.2f} s after the restore")
    assert back_after < interval + 1.0
    assert [] == of_collector(docs, "gpu", "collector.failed")


def test_an_nvml_call_hanging_times_out_fails_fast_and_recovers_within_a_cycle(nvml_lib: Path, tmp_path: Path) -> None:
    """
    GPU 0's nvmlDeviceGetPowerUsage hangs (the double's hang mode: blocked until the rule is removed). The cycle
    times out: success 0, reason timeout, the gpu series dropped (never stale values), and while the call is still
    stuck the next cycles fail at once, also as timeouts, logged once per distinct error rather than every cycle;
    /metrics and /healthz answer at once and the other collectors are untouched. Released, the collector is back
    within one cycle with the Xid counted before the hang. Hung again, SIGTERM still stops the agent promptly.
    """
    scenario = tmp_path / "nvml.scenario"
    Scenario(gpus=gpus({"xids": [Xid(1, 79)]})).write(scenario)
    interval = 1.0
    args = (*OTHERS_RUN, "--set", f"collectors.gpu.interval={interval:g}s")
    hung = gpus({"hangs": ["nvmlDeviceGetPowerUsage"]})
    with gpu_agent(nvml_lib, scenario, tmp_path, args) as agent:
        wait_until(lambda: scrape(agent.url).by("nodeagent_gpu_xid_errors_total", "gpu") == {"0": 1.0}, 10, "the Xid")
        Scenario(gpus=gpus()).write(scenario)  # the Xid was delivered (see the lost-GPU test)
        before = scrape(agent.url)
        Scenario(gpus=hung).write(scenario)
        wait_until(lambda: scrape(agent.url).failures("gpu").get("timeout", 0) >= 1, 5, "a gpu cycle to time out")
        slowest: list[float] = []

        def failing(s: Scrape) -> None:
            slowest.append(s.seconds)
            assert 0.0 == s.success()["gpu"]
            assert {} == s.series("nodeagent_gpu_up") == s.series("nodeagent_gpu_xid_errors_total")
            others_unaffected(before, s, "gpu")

        watch(agent.url, 2.5 * interval, failing)
        during = scrape(agent.url)
        Scenario(gpus=gpus()).write(scenario)
        released = time.monotonic()
        wait_until(lambda: scrape(agent.url).success()["gpu"] == 1.0, 5, "the gpu collector back")
        back_after = time.monotonic() - released
        back = scrape(agent.url)
        docs = records(agent.log())

        Scenario(gpus=hung).write(scenario)
        wait_until(lambda: scrape(agent.url).success()["gpu"] == 0.0, 5, "hung again")
        stopping = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        try:
            code = agent.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        stop_seconds = time.monotonic() - stopping

    failed = of_collector(docs, "gpu", "collector.failed")
    timeouts = during.failures("gpu")["timeout"]
    assert max(slowest) < 0.5, slowest
    assert timeouts >= 3 and {k: v for k, v in during.failures("gpu").items() if k != "timeout" and v} == {}
    assert ["timeout"] * len(failed) == [d.get("nodeagent.reason") for d in failed]
    assert 1 <= len(failed) <= 2 < timeouts  # once per distinct error, not once per cycle
    print(f"NVML hang: {timeouts:g} timeouts, back {back_after:.2f} s after release, SIGTERM exit {stop_seconds:.2f} s")
    assert back_after < interval + 1.5
    assert {"0": 123.456, "1": 287.5} == back.by("nodeagent_gpu_power_watts", "gpu")
    assert {"0": 1.0} == back.by("nodeagent_gpu_xid_errors_total", "gpu")
    assert of_collector(docs, "gpu", "collector.recovered")
    assert (0, True) == (code, stop_seconds < 5.0), (code, stop_seconds)


# --- 5. a hung file system: statfs that never returns ------------------------------------------------------------


@pytest.fixture
def fuse_prereq() -> None:
    """Root, /dev/fuse and util-linux's unshare and nsenter."""
    if os.geteuid() != 0:
        missing("root (mount namespaces and a FUSE mount)")
    if not os.path.exists("/dev/fuse"):
        missing("/dev/fuse (the fuse kernel module)")
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            missing(f"{tool} (apt-get install util-linux)")
    if STATFS_SYSCALL is None:
        missing(f"the statfs syscall number of {os.uname().machine}")


def fs_args(interval: float, mount_timeout: float) -> list[str]:
    """Agent flags: the filesystem collector every ``interval`` (its cycle timeout too) with ``mount_timeout``."""
    return [
        *("--set", f"collectors.filesystem.interval={interval:g}s"),
        *("--set", f"collectors.filesystem.mount_timeout={mount_timeout:g}s", *OTHERS_RUN),
    ]


def mount_rows(s: Scrape, mountpoint: str) -> dict[str, float | None]:
    """The filesystem collector's values for one mount point."""
    names = ("size_bytes", "free_bytes", "avail_bytes", "files", "files_free", "device_error")
    return {name: s.one(f"node_filesystem_{name}", mountpoint=mountpoint) for name in names}


def fuse_values(device_error: float = 0.0) -> dict[str, float | None]:
    """What the FUSE daemon's statfs answer becomes (tests.faults.fuse.STATFS), or only device_error while hung."""
    blocks, bfree, bavail, files, ffree, bsize, _namelen, _frsize = FUSE_STATFS
    sizes = (blocks * bsize, bfree * bsize, bavail * bsize, files, ffree)
    names = ("size_bytes", "free_bytes", "avail_bytes", "files", "files_free")
    values: dict[str, float | None] = {n: None if device_error else float(v) for n, v in zip(names, sizes, strict=True)}
    return {**values, "device_error": device_error}


def tmpfs_ok(s: Scrape, agent: NamespacedAgent) -> None:
    """The tmpfs next to the hung mount keeps its exact values."""
    rows = mount_rows(s, agent.tmpfs_mount)
    got = (rows["size_bytes"], rows["free_bytes"], rows["avail_bytes"], rows["device_error"])
    assert (TMPFS_BYTES, TMPFS_BYTES, TMPFS_BYTES, 0.0) == got, rows


def sigterm_exits(agent: NamespacedAgent) -> tuple[int | None, float]:
    """SIGTERM the agent; its exit status (None if it did not exit within 10 s) and how long it took."""
    stopping = time.monotonic()
    os.kill(agent.pid, signal.SIGTERM)
    try:
        code: int | None = agent.proc.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - stopping


def test_a_hung_mount_is_marked_alone_and_back_within_a_cycle(fuse_prereq: None, tmp_path: Path) -> None:
    """
    The FUSE daemon is stopped, so statfs on its mount blocks in the kernel. With the per-mount bound (0.5 s)
    inside the cycle (1 s), the collector keeps succeeding: the mount reports node_filesystem_device_error 1 and
    no stale sizes, the tmpfs beside it keeps its exact values, one warning is logged, and the stuck statfs is
    never issued again while it hangs (one agent thread in statfs, not one per cycle). Continued, the mount's
    values are back within one cycle; hung again, SIGTERM still stops the agent promptly.
    """
    interval = 1.0
    args = fs_args(interval, mount_timeout=0.5)
    with agent_with_mounts(args, tmp_path) as agent:
        wait_until(lambda: mount_rows(scrape(agent.url), agent.fuse_mount) == fuse_values(), 5, "the FUSE mount")
        before = scrape(agent.url)
        agent.hang()
        wait_until(lambda: mount_rows(scrape(agent.url), agent.fuse_mount) == fuse_values(1.0), 5, "the mount stuck")

        def stuck(s: Scrape) -> None:
            assert 1.0 == s.success()["filesystem"]
            assert fuse_values(1.0) == mount_rows(s, agent.fuse_mount)
            tmpfs_ok(s, agent)
            others_unaffected(before, s, "filesystem")
            assert s.seconds < 0.5

        watch(agent.url, 3 * interval, stuck)
        threads_stuck = agent.threads_in_statfs()
        agent.release()
        released = time.monotonic()
        wait_until(lambda: mount_rows(scrape(agent.url), agent.fuse_mount) == fuse_values(), 5, "the mount back")
        back_after = time.monotonic() - released
        threads_after = agent.threads_in_statfs()
        after = scrape(agent.url)
        docs = records(agent.log())
        agent.hang()
        wait_until(lambda: agent.threads_in_statfs() == 1, 5, "a statfs stuck again")
        code, stop_seconds = sigterm_exits(agent)

    assert (1, 0) == (threads_stuck, threads_after)
    print(f"hung mount: back {back_after:.2f} s after SIGCONT, SIGTERM exit {stop_seconds:.2f} s")
    assert back_after < interval + 1.0
    assert before.failures("filesystem") == after.failures("filesystem")
    others_unaffected(before, after, "filesystem")
    assert 1 == len(of_collector(docs, "filesystem", "filesystem.mount_stuck"))
    assert 1 == len(of_collector(docs, "filesystem", "filesystem.mount_recovered"))
    assert [] == of_collector(docs, "filesystem", "collector.failed")
    assert (0, True) == (code, stop_seconds < 5.0), (code, stop_seconds)


def test_a_statfs_hanging_past_the_cycle_timeout_fails_one_cycle_only(fuse_prereq: None, tmp_path: Path) -> None:
    """
    With mount_timeout (5 s) longer than the cycle's timeout (1 s), a hung statfs times the cycle out: success 0,
    reason timeout, logged. From the next cycle on the stuck mount is skipped and marked (device_error 1), so the
    collector succeeds again with the other mounts' values and no further timeouts or threads pile up. Continued,
    the mount is back within one cycle.
    """
    interval = 1.0
    args = fs_args(interval, mount_timeout=5.0)
    with agent_with_mounts(args, tmp_path) as agent:
        wait_until(lambda: mount_rows(scrape(agent.url), agent.fuse_mount) == fuse_values(), 5, "the FUSE mount")
        before = scrape(agent.url)
        agent.hang()
        timeouts: list[float] = []

        def timed_out() -> bool:
            s = scrape(agent.url)
            if s.failures("filesystem").get("timeout", 0) >= 1:
                timeouts.append(s.success()["filesystem"])
                return True
            return False

        wait_until(timed_out, 5, "a filesystem cycle to time out")
        wait_until(lambda: scrape(agent.url).success()["filesystem"] == 1.0, 5, "the next cycle to succeed")

        def skipped(s: Scrape) -> None:
            assert 1.0 == s.success()["filesystem"]
            assert {"timeout": 1.0} == {k: v for k, v in s.failures("filesystem").items() if v}
            assert fuse_values(1.0) == mount_rows(s, agent.fuse_mount)
            tmpfs_ok(s, agent)
            others_unaffected(before, s, "filesystem")

        watch(agent.url, 3 * interval, skipped)
        threads_stuck = agent.threads_in_statfs()
        agent.release()
        released = time.monotonic()
        wait_until(lambda: mount_rows(scrape(agent.url), agent.fuse_mount) == fuse_values(), 5, "the mount back")
        back_after = time.monotonic() - released
        docs = records(agent.log())

    failed = of_collector(docs, "filesystem", "collector.failed")
    assert [0.0] == timeouts  # the timed-out cycle itself reported success 0
    assert ["timeout"] == [d.get("nodeagent.reason") for d in failed]
    assert 1 == threads_stuck
    print(f"statfs past the cycle timeout: back {back_after:.2f} s after SIGCONT")
    assert back_after < interval + 1.0


STUCK_WORKER = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
from nodeagent.sources.blocking import DaemonThreadExecutor
r, _w = os.pipe()
pool = DaemonThreadExecutor(2, "stuck") if sys.argv[1] == "daemon" else ThreadPoolExecutor(2)
pool.submit(os.read, r, 1)  # blocks for good: nobody writes
pool.shutdown(wait=False, cancel_futures=True)
"""


def test_a_worker_stuck_in_a_call_does_not_keep_the_process_from_exiting() -> None:
    """
    The mechanism behind "SIGTERM still stops the agent" above: with a worker blocked for good, a process using
    DaemonThreadExecutor exits at once, while one using ThreadPoolExecutor hangs at exit (it joins its workers).
    Otherwise it behaves as a thread pool: results, exceptions, at most max_workers threads, no work after shutdown.
    """
    exited = {}
    for kind, wait in (("daemon", 10.0), ("pool", 2.0)):
        proc = subprocess.Popen([sys.executable, "-c", STUCK_WORKER, kind], cwd=REPO)
        try:
            exited[kind] = proc.wait(wait) == 0
        except subprocess.TimeoutExpired:
            exited[kind] = False
            proc.kill()
            proc.wait()
    assert {"daemon": True, "pool": False} == exited

    pool = DaemonThreadExecutor(2, "natest-pool")
    started = time.monotonic()
    for f in [pool.submit(time.sleep, 0.2) for _ in range(4)]:
        f.result(5)
    elapsed = time.monotonic() - started
    assert pool.submit(divmod, 7, 2).result(5) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        pool.submit(divmod, 1, 0).result(5)
    workers = [t for t in threading.enumerate() if t.name.startswith("natest-pool_")]
    pool.shutdown()
    assert 0.35 < elapsed < 2.0  # four 0.2 s calls on two workers
    assert ["natest-pool_0", "natest-pool_1"] == sorted(t.name for t in workers) and all(t.daemon for t in workers)
    assert not any(t.is_alive() for t in workers)
    with pytest.raises(RuntimeError):
        pool.submit(divmod, 1, 1)
