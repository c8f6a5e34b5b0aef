"""
Network interfaces over netlink: node_exporter's netdev counters (``node_network_*_total``, folded into the
/proc/net/dev names) and netclass state (``node_network_up``, ``_mtu_bytes``, ``_carrier_changes_total``,
``_info`` ...) from one RTM_GETLINK dump per cycle; per-workload ``container_network_*`` counters read inside
each pod's network namespace; and link up/down events logged as they happen.
Shell equivalent: ``ip -s -s link; for ns in ...; do nsenter -t $pid -n ip -s link; done``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from nodeagent.collector import CollectorConfig, CollectorContext, CollectorSpec, NoDataError, Regex
from nodeagent.collectors.cgroups import BASE_LABELS
from nodeagent.events import emit
from nodeagent.hostfs import kernel_int
from nodeagent.metrics import MetricFamily, MetricType, Sample
from nodeagent.scheduler import new_trace_ids
from nodeagent.sources import netlink
from nodeagent.sources.netlink import LINK_STATS64_FIELDS, OPERSTATES, Link
from nodeagent.workloads import NoCgroupsError, Workload, WorkloadResolver, walk

# Processes of one workload tried in a cycle to find its network namespace (each may exit while it is looked at).
_PID_ATTEMPTS = 8
# Link up/down changes are logged this long after they arrive: a deleted link (a pod's veth when its namespace goes)
# is first reported down, then deleted (after an RCU grace period), and that is a deletion, not a change.
_LINK_EVENT_GRACE = 0.25
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
IFF_DORMANT = 0x20000
# netlink's ifi_flags add the operational bits to the device's own flags; sysfs `flags` (node_exporter's
# node_network_flags) shows only the device's own.
_OPERATIONAL_FLAGS = IFF_RUNNING | IFF_LOWER_UP | IFF_DORMANT

# node_exporter's netdev keys from rtnl_link_stats64 (netdev_linux.go), before the legacy folding.
_STAT_KEY = {
    "rx_packets": "receive_packets",
    "tx_packets": "transmit_packets",
    "rx_bytes": "receive_bytes",
    "tx_bytes": "transmit_bytes",
    "rx_errors": "receive_errors",
    "tx_errors": "transmit_errors",
    "rx_dropped": "receive_dropped",
    "tx_dropped": "transmit_dropped",
    "multicast": "multicast",
    "collisions": "collisions",
    "rx_length_errors": "receive_length_errors",
    "rx_over_errors": "receive_over_errors",
    "rx_crc_errors": "receive_crc_errors",
    "rx_frame_errors": "receive_frame_errors",
    "rx_fifo_errors": "receive_fifo_errors",
    "rx_missed_errors": "receive_missed_errors",
    "tx_aborted_errors": "transmit_aborted_errors",
    "tx_carrier_errors": "transmit_carrier_errors",
    "tx_fifo_errors": "transmit_fifo_errors",
    "tx_heartbeat_errors": "transmit_heartbeat_errors",
    "tx_window_errors": "transmit_window_errors",
    "rx_compressed": "receive_compressed",
    "tx_compressed": "transmit_compressed",
    "rx_nohandler": "receive_nohandler",
}
_IDX = {name: i for i, name in enumerate(LINK_STATS64_FIELDS)}


def _sum(*names: str) -> tuple[int, ...]:
    return tuple(_IDX[n] for n in names)


# The kernel's /proc/net/dev folding (dev_seq_printf_stats), which node_exporter's legacy() reproduces: each
# exported family is the sum of these rtnl_link_stats64 fields. Order: node_exporter's families.
LEGACY_FAMILIES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("receive_bytes", _sum("rx_bytes")),
    ("receive_packets", _sum("rx_packets")),
    ("receive_errs", _sum("rx_errors")),
    ("receive_drop", _sum("rx_dropped", "rx_missed_errors")),
    ("receive_fifo", _sum("rx_fifo_errors")),
    ("receive_frame", _sum("rx_frame_errors", "rx_length_errors", "rx_over_errors", "rx_crc_errors")),
    ("receive_compressed", _sum("rx_compressed")),
    ("receive_multicast", _sum("multicast")),
    ("receive_nohandler", _sum("rx_nohandler")),
    ("transmit_bytes", _sum("tx_bytes")),
    ("transmit_packets", _sum("tx_packets")),
    ("transmit_errs", _sum("tx_errors")),
    ("transmit_drop", _sum("tx_dropped")),
    ("transmit_fifo", _sum("tx_fifo_errors")),
    ("transmit_colls", _sum("collisions")),
    (
        "transmit_carrier",
        _sum("tx_carrier_errors", "tx_aborted_errors", "tx_heartbeat_errors", "tx_window_errors"),
    ),
    ("transmit_compressed", _sum("tx_compressed")),
)
# cAdvisor's per-container families, from the same stats.
CONTAINER_FAMILIES: tuple[tuple[str, int, str], ...] = (
    ("container_network_receive_bytes_total", _IDX["rx_bytes"], "Cumulative count of bytes received."),
    ("container_network_receive_packets_total", _IDX["rx_packets"], "Cumulative count of packets received."),
    (
        "container_network_receive_errors_total",
        _IDX["rx_errors"],
        "Cumulative count of errors encountered while receiving.",
    ),
    (
        "container_network_receive_packets_dropped_total",
        _IDX["rx_dropped"],
        "Cumulative count of packets dropped while receiving.",
    ),
    ("container_network_transmit_bytes_total", _IDX["tx_bytes"], "Cumulative count of bytes transmitted."),
    ("container_network_transmit_packets_total", _IDX["tx_packets"], "Cumulative count of packets transmitted."),
    (
        "container_network_transmit_errors_total",
        _IDX["tx_errors"],
        "Cumulative count of errors encountered while transmitting.",
    ),
    (
        "container_network_transmit_packets_dropped_total",
        _IDX["tx_dropped"],
        "Cumulative count of packets dropped while transmitting.",
    ),
)
# Workload kinds that can have a network namespace of their own.
_NETNS_KINDS = ("pod", "container", "vm")


class NetworkConfig(CollectorConfig):
    """Options of the ``network`` collector."""

    # Host interfaces to leave out, e.g. "^veth" on a Kubernetes node (their traffic shows per pod instead).
    device_exclude: Regex | None = None
    device_include: Regex | None = None
    # container_network_* for every pod or container with a network namespace of its own.
    workloads: bool = True
    # Interfaces inside workload namespaces to leave out (cAdvisor skips lo).
    workload_device_exclude: Regex | None = "^lo$"
    max_namespaces: int = 1000
    # Log link up/down as it happens (RTNLGRP_LINK), not at the next cycle.
    link_events: bool = True


@dataclass(slots=True)
class _Netns:
    """One workload network namespace: the netlink socket opened inside it, and who it belongs to."""

    inode: int
    sock: netlink.RouteSocket
    workload: Workload
    pid: int


class NetworkCollector:
    """Samples the host's links and each workload namespace's links in a worker thread; events on the loop."""

    def __init__(self, ctx: CollectorContext, cfg: NetworkConfig) -> None:
        self._ctx = ctx
        self._cfg = cfg
        self._log = ctx.log
        self._resolver: WorkloadResolver = ctx.resolver()
        self._include = re.compile(cfg.device_include) if cfg.device_include else None
        self._exclude = re.compile(cfg.device_exclude) if cfg.device_exclude else None
        self._wl_exclude = re.compile(cfg.workload_device_exclude) if cfg.workload_device_exclude else None
        self._host: netlink.RouteSocket | None = None
        self._netns: dict[int, _Netns] = {}  # by namespace inode
        self._pids: dict[str, int] = {}  # workload id -> a pid in it (re-checked every cycle)
        self._sysfs_net = ctx.paths.sys("class", "net")
        self._events: netlink.LinkEvents | None = None
        self._states: dict[int, tuple[str, int, str]] = {}  # ifindex -> (name, flags, operstate)
        self._changes: list[tuple[Link, str, str, bool]] = []  # up/down changes waiting out _LINK_EVENT_GRACE
        self._deleted: set[int] = set()  # ifindexes deleted while changes wait
        self._flush: asyncio.TimerHandle | None = None
        self._errors: dict[str, int] = {}
        self._ethtool_cache: dict[int, tuple[tuple[int, str, int | None], str, int | None]] = {}

    # --- the cycle (worker thread) -------------------------------------------------------------------------

    async def collect(self) -> Sequence[MetricFamily]:
        """One cycle; starts the link-event listener on the first."""
        if self._cfg.link_events and self._events is None:
            self._start_events()
        return await asyncio.to_thread(self.collect_sync)

    def collect_sync(self) -> list[MetricFamily]:
        """Dump the host's links, then every workload namespace's."""
        if self._host is None:
            self._host = open_netlink(netlink.RouteSocket, "an rtnetlink")
        try:
            links = self._host.dump_links()
        except OSError:
            self._host.close()
            self._host = None
            raise
        families = self._host_families(links)
        self._remember_states(links)
        if len(self._ethtool_cache) > 2 * len(links) + 64:
            present = {ln.index for ln in links}
            self._ethtool_cache = {i: v for i, v in self._ethtool_cache.items() if i in present}
        if self._cfg.workloads:
            families += self._workload_families()
        return families

    def _wanted(self, name: str) -> bool:
        if self._include is not None and not self._include.search(name):
            return False
        return not (self._exclude is not None and self._exclude.search(name))

    def _host_families(self, links: list[Link]) -> list[MetricFamily]:
        counters: list[list[Sample]] = [[] for _ in LEGACY_FAMILIES]
        up: list[Sample] = []
        info: list[Sample] = []
        gauges: dict[str, list[Sample]] = {k: [] for k in _CLASS_GAUGES}
        for link in links:
            if not self._wanted(link.name):
                continue
            key = (link.name,)
            stats = link.stats
            if stats:
                for i, (_name, idx) in enumerate(LEGACY_FAMILIES):
                    counters[i].append((key, float(sum(stats[j] for j in idx))))
            operstate = OPERSTATES.get(link.operstate, "unknown")
            up.append((key, 1.0 if operstate == "up" else 0.0))
            duplex, speed = self._ethtool(link)
            info.append(
                (
                    (
                        link.name,
                        link.address,
                        link.broadcast,
                        duplex,
                        operstate,
                        "up" if link.flags & IFF_UP else "down",
                        link.alias,
                        link.kind,
                    ),
                    1.0,
                )
            )
            values: dict[str, int | None] = {
                "mtu_bytes": link.mtu,
                "carrier": link.carrier if link.flags & IFF_UP else None,
                "carrier_changes_total": link.carrier_changes,
                "carrier_up_changes_total": link.carrier_up,
                "carrier_down_changes_total": link.carrier_down,
                "flags": link.flags & ~_OPERATIONAL_FLAGS,
                "iface_id": link.index,
                "iface_link": link.iflink if link.iflink is not None else link.index,
                "protocol_type": link.type,
                "transmit_queue_length": link.txqlen,
                "speed_bytes": speed * 125000 if speed is not None and speed > 0 else None,
            }
            for k, v in values.items():
                if v is not None:
                    gauges[k].append((key, float(v)))
        out = [
            MetricFamily(
                f"node_network_{name}_total", "counter", f"Network device statistic {name}.", ("device",), tuple(rows)
            )
            for (name, _), rows in zip(LEGACY_FAMILIES, counters, strict=True)
            if rows
        ]
        out.append(
            MetricFamily(
                "node_network_up", "gauge", "Value is 1 if operstate is 'up', 0 otherwise.", ("device",), tuple(up)
            )
        )
        out.append(
            MetricFamily(
                "node_network_info",
                "gauge",
                "Non-numeric data of a network device; value is always 1.",
                ("device", "address", "broadcast", "duplex", "operstate", "adminstate", "ifalias", "kind"),
                tuple(info),
            )
        )
        for k, (mtype, help_) in _CLASS_GAUGES.items():
            if gauges[k]:
                out.append(MetricFamily(f"node_network_{k}", mtype, help_, ("device",), tuple(gauges[k])))
        return out

    def _ethtool(self, link: Link) -> tuple[str, int | None]:
        """Duplex and speed, re-read only when the link's carrier changed (a renegotiation changes the carrier)."""
        key = (link.index, link.name, link.carrier_changes)
        cached = self._ethtool_cache.get(link.index)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        duplex, speed = self._ethtool_sysfs(link.name)
        self._ethtool_cache[link.index] = (key, duplex, speed)
        return duplex, speed

    def _ethtool_sysfs(self, name: str) -> tuple[str, int | None]:
        """Duplex and speed (Mb/s) from sysfs, which rtnetlink does not carry; absent for virtual devices."""
        base = f"{self._sysfs_net}/{name}"
        duplex = ""
        speed: int | None = None
        try:
            with open(f"{base}/duplex", "rb") as f:
                duplex = f.read().strip().decode("utf-8", "replace")  # a label: never fail the cycle on bad bytes
        except OSError:
            pass
        try:
            with open(f"{base}/speed", "rb") as f:
                speed = kernel_int(f.read().decode("ascii", "replace").strip())
        except (OSError, ValueError):
            pass
        return duplex, speed

    # --- per-workload namespaces ---------------------------------------------------------------------------

    def _host_netns_inode(self) -> int:
        return os.stat(self._ctx.paths.proc("self", "ns", "net")).st_ino

    def _workload_families(self) -> list[MetricFamily]:
        try:
            layout = self._resolver.layout()
        except NoCgroupsError:
            return []
        host_inode = self._host_netns_inode()
        result = walk(layout.walk_root, classify=self._resolver.classify)
        candidates = [w for w in result.workloads if w.kind in _NETNS_KINDS]
        pods = {w.id for w in candidates if w.kind == "pod"}
        seen: set[int] = set()
        rows: list[list[Sample]] = [[] for _ in CONTAINER_FAMILIES]
        for w in candidates:
            if w.kind == "container" and w.parent in pods:
                continue  # a pod's containers share its namespace: reported once, at pod level
            ns = self._namespace_of(w, layout.walk_root)
            if ns is None or ns.inode == host_inode or ns.inode in seen:
                continue  # host network (not duplicated), or a namespace already reported
            seen.add(ns.inode)
            if len(seen) > self._cfg.max_namespaces:
                break
            try:
                links = ns.sock.dump_links()
            except OSError as exc:
                self._release(ns.inode)
                self._count_error("netns", f"{w.id}: {exc}")
                continue
            d = self._resolver.describe(w)
            base = (d.id, d.name, d.image, d.container, d.pod, d.namespace)
            for link in links:
                if not link.stats or (self._wl_exclude is not None and self._wl_exclude.search(link.name)):
                    continue
                labels = (*base, link.name)
                for i, (_, idx, _) in enumerate(CONTAINER_FAMILIES):
                    rows[i].append((labels, float(link.stats[idx])))
        for inode in [i for i in self._netns if i not in seen]:
            self._release(inode)  # the namespace went with its workload
        alive = {w.id for w in candidates}
        self._pids = {wid: pid for wid, pid in self._pids.items() if wid in alive}
        return [
            MetricFamily(name, "counter", help_, (*BASE_LABELS, "interface"), tuple(r))
            for (name, _, help_), r in zip(CONTAINER_FAMILIES, rows, strict=True)
            if r
        ]

    def _namespace_of(self, w: Workload, walk_root: str) -> _Netns | None:
        """
        The workload's namespace socket, opening it (inside the namespace, via a pid of the workload) if new.
        A process may exit between being listed and its namespace being looked at or entered (a pod's short-lived
        processes do all the time): then the workload's next process is tried, so the pod is still reported.
        """
        cached = self._pids.get(w.id)
        listed = _pids_in(os.path.join(walk_root, w.id.lstrip("/")))
        for pid in itertools.islice(itertools.chain((cached,) if cached else (), listed), _PID_ATTEMPTS):
            inode = self._netns_inode(pid)
            if inode is None:
                continue  # exited since it was listed
            ns = self._netns.get(inode)
            if ns is None:
                try:
                    sock = netlink.RouteSocket(self._ctx.paths.proc(str(pid), "ns", "net"))
                except (FileNotFoundError, ProcessLookupError):
                    continue  # exited between the two looks
                except OSError as exc:
                    self._count_error("netns", f"{w.id}: cannot enter the network namespace of pid {pid}: {exc}")
                    return None
                ns = self._netns[inode] = _Netns(inode, sock, w, pid)
            self._pids[w.id] = pid
            return ns
        self._pids.pop(w.id, None)
        return None

    def _netns_inode(self, pid: int | None) -> int | None:
        try:
            return os.stat(self._ctx.paths.proc(str(pid), "ns", "net")).st_ino
        except OSError:
            return None

    def _release(self, inode: int) -> None:
        ns = self._netns.pop(inode, None)
        if ns is not None:
            ns.sock.close()

    def _count_error(self, reason: str, message: str) -> None:
        self._errors[reason] = self._errors.get(reason, 0) + 1
        self._log.debug("network.workload_skipped", message=message)

    # --- link events (event loop) --------------------------------------------------------------------------

    def _remember_states(self, links: list[Link]) -> None:
        self._states = {ln.index: (ln.name, ln.flags, OPERSTATES.get(ln.operstate, "unknown")) for ln in links}

    def _start_events(self) -> None:
        try:
            self._events = netlink.LinkEvents()
        except OSError as exc:
            self._log.warning("network.link_events_unavailable", error={"message": str(exc)})
            self._cfg = self._cfg.model_copy(update={"link_events": False})
            return
        asyncio.get_running_loop().add_reader(self._events.fileno(), self._on_events)

    def _on_events(self) -> None:
        events = self._events
        if events is None:
            return
        for msg_type, link in events.read():
            if msg_type != netlink.RTM_NEWLINK:
                self._states.pop(link.index, None)
                if self._changes:
                    self._deleted.add(link.index)
                continue
            new = (link.name, link.flags, OPERSTATES.get(link.operstate, "unknown"))
            old = self._states.get(link.index)
            self._states[link.index] = new
            if old is None or not self._wanted(link.name):
                continue  # a link created just now is news for the next cycle, not an up/down change
            was_up, is_up = _is_up(old[1], old[2]), _is_up(new[1], new[2])
            if was_up != is_up:
                self._changes.append((link, old[2], new[2], is_up))
        if self._changes and self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(_LINK_EVENT_GRACE, self._log_changes)
        if events.overrun:
            # Messages were lost: resynchronise the states from a dump rather than log from stale ones.
            events.overrun = False
            if self._host is not None:
                with contextlib.suppress(OSError):
                    self._remember_states(self._host.dump_links())

    def _log_changes(self) -> None:
        """Log the up/down changes that waited out the grace, in order, but not the "down" of a deleted link."""
        self._flush = None
        changes, self._changes = self._changes, []
        deleted, self._deleted = self._deleted, set()
        for link, old_state, new_state, is_up in changes:
            if not is_up and (link.index in deleted or not _link_exists(link.index)):
                continue
            log_link_event(self._log, link, old_state, new_state, is_up)

    async def aclose(self) -> None:
        """Stop listening for events and close every netlink socket."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._events is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
        if self._host is not None:
            self._host.close()
            self._host = None
        for inode in list(self._netns):
            self._release(inode)


_CLASS_GAUGES: dict[str, tuple[MetricType, str]] = {
    "mtu_bytes": ("gauge", "Network device MTU in bytes."),
    "carrier": ("gauge", "Network device carrier (1 when a link is detected); only for devices administratively up."),
    "carrier_changes_total": ("counter", "Number of times the network device's carrier changed."),
    "carrier_up_changes_total": ("counter", "Number of times the network device's carrier came up."),
    "carrier_down_changes_total": ("counter", "Number of times the network device's carrier went down."),
    "flags": ("gauge", "Network device interface flags (IFF_*)."),
    "iface_id": ("gauge", "Network device interface index."),
    "iface_link": ("gauge", "Interface index of the device's link (its own index for most devices)."),
    "protocol_type": ("gauge", "Network device hardware type (ARPHRD_*)."),
    "transmit_queue_length": ("gauge", "Network device transmit queue length."),
    "speed_bytes": ("gauge", "Network device link speed in bytes per second, where the driver reports it."),
}


_S = TypeVar("_S")


def open_netlink(factory: Callable[[], _S], what: str) -> _S:
    """
    A netlink socket from ``factory``, for a collector: a host that refuses netlink sockets (SELinux, seccomp) has
    no data for it rather than a failure.

    Raises:
        NoDataError: the socket cannot be opened.
    """
    try:
        return factory()
    except OSError as exc:
        raise NoDataError(
            f"cannot open {what} socket: {exc}", "netlink sockets may be denied by SELinux or seccomp"
        ) from exc


def _link_exists(index: int) -> bool:
    """Whether a link with this ifindex exists in the agent's network namespace now."""
    try:
        socket.if_indextoname(index)
    except OSError:
        return False
    return True


def _is_up(flags: int, operstate: str) -> bool:
    return bool(flags & IFF_UP) and (operstate in ("up", "unknown") and bool(flags & IFF_LOWER_UP))


def _pids_in(directory: str) -> Iterator[int]:
    """The pids in the cgroup ``directory`` and below it, lazily (a pod's own cgroup may hold none; its containers
    do); a cgroup removed meanwhile is skipped."""
    for dirpath, _dirs, _files in os.walk(directory):
        try:
            with open(os.path.join(dirpath, "cgroup.procs"), "rb") as f:
                pids = f.read().split()
        except OSError:
            continue
        yield from (int(pid) for pid in pids)


def link_event_fields(link: Link, old_state: str, new_state: str, is_up: bool) -> dict[str, Any]:
    """The ECS fields of a link up/down event beyond its categorisation (``events.EVENT_TYPES``)."""
    fields: dict[str, Any] = {
        "interface.name": link.name,
        "interface.id": str(link.index),
        "nodeagent.link.state.old": old_state,
        "nodeagent.link.state.new": new_state,
        "nodeagent.link.admin": "up" if link.flags & IFF_UP else "down",
    }
    optional = {
        "interface.alias": link.alias,
        "nodeagent.link.kind": link.kind,
        "nodeagent.link.carrier_changes": link.carrier_changes,
    }
    fields.update({k: v for k, v in optional.items() if v not in (None, "")})
    return fields


def log_link_event(
    log: structlog.typing.FilteringBoundLogger, link: Link, old_state: str, new_state: str, is_up: bool
) -> None:
    """Log one link up/down event with a fresh trace id."""
    verb = "up" if is_up else "down"
    message = f"link {link.name} {verb} (operstate {old_state} -> {new_state})"
    emit(
        log, f"link_{verb}", message, link_event_fields(link, old_state, new_state, is_up), trace_id=new_trace_ids()[0]
    )


SPEC = CollectorSpec(
    name="network",
    description="Network interfaces over netlink (node_exporter netdev/netclass names), per-pod network, link events.",
    config_model=NetworkConfig,
    factory=NetworkCollector,
)
