"""
The network and tcpstat collectors against real network namespaces, veth pairs and cgroups: counters equal the
kernel's own (sysfs) for the same moment, link down/up is logged as it happens and raises carrier_changes, a
process in its own namespace inside a pod cgroup gets container_network_* rows at pod level, a namespace that
vanishes is skipped, and TCP state counts equal what ``ss`` reports.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from nodeagent.collector import CollectorConfig, CollectorContext
from nodeagent.collectors.network import NetworkCollector, NetworkConfig
from nodeagent.collectors.tcpstat import TcpstatCollector
from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily
from nodeagent.sources.cgroupfs import discover_layout
from nodeagent.workloads import WorkloadResolver
from tests.integration.cgroups_helpers import TestCgroups
from tests.integration.netns_helpers import NetnsLab, require_netns
from tests.test_netlink import SS_STATES  # ss(8) state names -> node_tcp_connection_states{state}

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    require_netns()
    with NetnsLab() as lab:
        yield lab


def values(families: list[MetricFamily], name: str, **labels: str) -> list[float]:
    out = []
    for f in families:
        if f.name != name:
            continue
        for labelvalues, v in f.samples:
            row = dict(zip(f.labelnames, labelvalues, strict=True))
            if all(row.get(k) == x for k, x in labels.items()):
                out.append(v)
    return out


def one(families: list[MetricFamily], name: str, **labels: str) -> float:
    found = values(families, name, **labels)
    assert len(found) == 1, f"{len(found)} samples of {name} with {labels}"
    return found[0]


def collector(log: Any, **cfg: Any) -> NetworkCollector:
    paths = HostPaths()
    ctx = CollectorContext("network", paths, log, WorkloadResolver(paths))
    return NetworkCollector(ctx, NetworkConfig(**cfg))


def send_udp(lab: NetnsLab, ns: str, dest: str, count: int, size: int) -> None:
    """``count`` datagrams of ``size`` payload bytes from inside ``ns`` to ``dest`` port 9 (discard)."""
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}):\n"
        f"    s.sendto(b'x' * {size}, ({dest!r}, 9))\n"
    )
    lab.exec(ns, sys.executable, "-c", code)


def quiet_pair(lab: NetnsLab, suffix: str) -> tuple[str, str, str]:
    """A namespace and a veth pair (host end, namespace end) with addresses and static neighbours: no ARP."""
    ns = lab.netns(suffix)
    host_end, ns_end = lab.veth(f"h{suffix}", None, f"n{suffix}", ns)
    octet = 16 + len(lab.namespaces)
    lab.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
    subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{host_end}.disable_ipv6=1"], check=False)
    lab.addr(None, host_end, f"10.254.{octet}.1/30")
    lab.addr(ns, ns_end, f"10.254.{octet}.2/30")
    lab.neigh(None, host_end, f"10.254.{octet}.2", lab.mac(ns, ns_end))
    lab.neigh(ns, ns_end, f"10.254.{octet}.1", lab.mac(None, host_end))
    return ns, host_end, ns_end


def kernel_stable(lab: NetnsLab, ns: str | None, dev: str, sample: Any) -> tuple[dict[str, int], Any]:
    """Kernel counters, the sample, kernel counters again; retried until nothing moved in between."""
    for _ in range(20):
        before = lab.sysfs_stats(ns, dev)
        result = sample()
        if lab.sysfs_stats(ns, dev) == before:
            return before, result
    raise AssertionError(f"{dev}: counters never held still around a sample")


async def test_host_interface_counters_equal_the_kernels(lab: NetnsLab) -> None:
    ns, host_end, _ = quiet_pair(lab, "a")
    lab.link(None, host_end, "mtu", "1400")
    send_udp(lab, ns, f"10.254.{16 + len(lab.namespaces)}.1", 200, 1000)
    c = collector(structlog.get_logger(), link_events=False, workloads=False)
    try:
        kernel, families = kernel_stable(lab, None, host_end, c.collect_sync)
    finally:
        await c.aclose()

    assert kernel["rx_packets"] >= 200 and kernel["rx_bytes"] >= 200 * 1000
    pairs = {
        "receive_bytes": kernel["rx_bytes"],
        "receive_packets": kernel["rx_packets"],
        "transmit_bytes": kernel["tx_bytes"],
        "transmit_packets": kernel["tx_packets"],
        "receive_errs": kernel["rx_errors"],
        "transmit_errs": kernel["tx_errors"],
        "receive_drop": kernel["rx_dropped"] + kernel["rx_missed_errors"],
        "transmit_drop": kernel["tx_dropped"],
        "receive_multicast": kernel["multicast"],
        "transmit_colls": kernel["collisions"],
        "receive_frame": kernel["rx_frame_errors"]
        + kernel["rx_length_errors"]
        + kernel["rx_over_errors"]
        + kernel["rx_crc_errors"],
        "receive_nohandler": kernel["rx_nohandler"],
    }
    got = {k: one(families, f"node_network_{k}_total", device=host_end) for k in pairs}
    assert got == {k: float(v) for k, v in pairs.items()}
    assert one(families, "node_network_mtu_bytes", device=host_end) == 1400
    assert one(families, "node_network_up", device=host_end) == 1
    assert one(families, "node_network_iface_id", device=host_end) == int(lab.sysfs(None, host_end, "ifindex"))
    assert one(families, "node_network_flags", device=host_end) == int(lab.sysfs(None, host_end, "flags"), 16)
    assert one(families, "node_network_flags", device="lo") == int(lab.sysfs(None, "lo", "flags"), 16)
    assert one(families, "node_network_iface_link", device=host_end) == int(lab.sysfs(None, host_end, "iflink"))
    assert one(families, "node_network_transmit_queue_length", device=host_end) == int(
        lab.sysfs(None, host_end, "tx_queue_len")
    )
    assert one(families, "node_network_protocol_type", device=host_end) == int(lab.sysfs(None, host_end, "type"))
    assert one(families, "node_network_carrier_changes_total", device=host_end) == int(
        lab.sysfs(None, host_end, "carrier_changes")
    )
    info = [
        dict(zip(f.labelnames, v, strict=True))
        for f in families
        if f.name == "node_network_info"
        for v, _ in f.samples
        if v[0] == host_end
    ]
    assert info == [
        {
            "device": host_end,
            "address": lab.mac(None, host_end),
            "broadcast": "ff:ff:ff:ff:ff:ff",
            "duplex": lab.sysfs(None, host_end, "duplex"),
            "operstate": "up",
            "adminstate": "up",
            "ifalias": "",
            "kind": "veth",
        }
    ]


async def test_device_exclude_drops_matching_interfaces(lab: NetnsLab) -> None:
    _, host_end, _ = quiet_pair(lab, "x")
    c = collector(structlog.get_logger(), link_events=False, workloads=False, device_exclude=f"^{host_end}$")
    try:
        families = c.collect_sync()
    finally:
        await c.aclose()
    assert values(families, "node_network_receive_bytes_total", device=host_end) == []
    assert values(families, "node_network_receive_bytes_total", device="lo")


async def test_link_down_and_up_are_logged_live_and_count_carrier_changes(lab: NetnsLab) -> None:
    _, host_end, _ = quiet_pair(lab, "l")
    c = collector(structlog.get_logger(), workloads=False)
    try:
        with structlog.testing.capture_logs() as logged:
            before = one(list(await c.collect()), "node_network_carrier_changes_total", device=host_end)
            await asyncio.to_thread(lab.link, None, host_end, "down")
            await _until(lambda: any(e.get("event.action") == "link_down" for e in logged))
            await asyncio.to_thread(lab.link, None, host_end, "up")
            await _until(lambda: any(e.get("event.action") == "link_up" for e in logged))
        after = one(list(await c.collect()), "node_network_carrier_changes_total", device=host_end)
    finally:
        await c.aclose()

    down = next(e for e in logged if e.get("event.action") == "link_down")
    up = next(e for e in logged if e.get("event.action") == "link_up")
    assert (down["interface.name"], down["event.category"], down["event.type"]) == (host_end, ["network"], ["change"])
    assert down["nodeagent.link.state.old"] == "up" and down["nodeagent.link.state.new"] == "down"
    assert down["log_level"] == "warning" and up["log_level"] == "info"
    assert len(down["trace.id"]) == 32 and down["trace.id"] != up["trace.id"]
    assert after >= before + 2  # down and up again
    assert after == int(lab.sysfs(None, host_end, "carrier_changes"))


async def _until(predicate: Any, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - the log capture has no event to wait on
            await asyncio.sleep(0.02)


ENTER_NETNS = """
import ctypes, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
    raise OSError(ctypes.get_errno(), "setns")
print("ready", flush=True)
time.sleep(600)
"""


async def test_process_in_its_own_namespace_gets_container_network_rows_at_pod_level(lab: NetnsLab) -> None:
    ns, host_end, ns_end = quiet_pair(lab, "w")
    layout = discover_layout(HostPaths().cgroup_root)
    tree = TestCgroups(layout)
    pod_uid = str(uuid.uuid4())
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    pod_rel = f"kubepods/burstable/pod{pod_uid}"
    tree.mkdir(f"{pod_rel}/{cid}")
    c = collector(structlog.get_logger(), link_events=False)
    try:
        code = ENTER_NETNS.replace("sys.argv[1]", repr(lab.path(ns)))
        tree.spawn_ready(f"{pod_rel}/{cid}", code)
        send_udp(lab, None, f"10.254.{16 + len(lab.namespaces)}.2", 50, 500)
        kernel, families = kernel_stable(lab, ns, ns_end, c.collect_sync)
        pod_id, container_id = tree.id(pod_rel), tree.id(f"{pod_rel}/{cid}")
        rows = {
            name: one(families, f"container_network_{name}_total", id=pod_id, interface=ns_end)
            for name in ("receive_bytes", "receive_packets", "transmit_bytes", "transmit_packets")
        }
        assert rows == {
            "receive_bytes": kernel["rx_bytes"],
            "receive_packets": kernel["rx_packets"],
            "transmit_bytes": kernel["tx_bytes"],
            "transmit_packets": kernel["tx_packets"],
        }
        assert kernel["rx_packets"] >= 50
        assert values(families, "container_network_receive_bytes_total", id=container_id) == []  # once, per pod
        assert values(families, "container_network_receive_bytes_total", id=pod_id, interface="lo") == []
        # The host's own namespace (the test process's cgroup holds host-network processes) is not duplicated.
        assert values(families, "container_network_receive_bytes_total", interface=host_end) == []

        # The namespace goes away with its process: skipped without error, its socket released.
        inode = os.stat(f"/run/netns/{ns}").st_ino
        assert inode in c._netns
        for proc in tree.procs:
            TestCgroups.stop(proc)
        lab.delete_netns(ns)
        families = c.collect_sync()
        assert values(families, "container_network_receive_bytes_total", id=pod_id) == []
        assert inode not in c._netns  # other pods on the host may hold their own entries
    finally:
        await c.aclose()
        assert tree.cleanup() == []


async def test_tcp_state_counts_equal_ss() -> None:
    listeners, pairs = [], []
    try:
        for _ in range(5):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
            listeners.append(s)
        for srv in listeners[:3]:
            client = socket.create_connection(srv.getsockname())
            conn, _ = srv.accept()
            pairs += [client, conn]
        c = TcpstatCollector(CollectorContext("tcpstat", HostPaths(), structlog.get_logger()), CollectorConfig())
        for _ in range(20):
            before = _ss_states()
            families = c.collect_sync()
            if _ss_states() == before:
                break
        else:
            raise AssertionError("TCP states never held still around a sample")
        await c.aclose()
    finally:
        for s in listeners + pairs:
            s.close()

    got = {labels[0]: v for labels, v in families[0].samples}
    assert {k: v for k, v in got.items() if v} == {k: float(v) for k, v in before.items()}
    assert got["listen"] >= 5 and got["established"] >= 6
    assert set(got) == {
        "established",
        "syn_sent",
        "syn_recv",
        "fin_wait1",
        "fin_wait2",
        "time_wait",
        "close",
        "close_wait",
        "last_ack",
        "listen",
        "closing",
    }


def _ss_states() -> dict[str, int]:
    out = subprocess.run(["ss", "-Htan"], capture_output=True, text=True, check=True, timeout=30).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        state = SS_STATES[line.split()[0]]
        counts[state] = counts.get(state, 0) + 1
    return counts
