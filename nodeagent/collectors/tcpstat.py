"""
TCP connection counts by state from one sock_diag dump per cycle (IPv4 and IPv6), with node_exporter's
``node_tcp_connection_states{state}``. Only each socket's state byte is decoded, so a node with tens of
thousands of sockets stays cheap. Shell equivalent: ``ss -Htan | awk '{print $1}' | sort | uniq -c``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nodeagent.collector import CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.collectors.network import open_netlink
from nodeagent.metrics import MetricFamily
from nodeagent.sources import netlink


class TcpstatCollector:
    """Counts TCP sockets by state in the agent's network namespace (the host's, with hostNetwork)."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._sock: netlink.DiagSocket | None = None

    async def collect(self) -> Sequence[MetricFamily]:
        """One dump, in a worker thread."""
        return await asyncio.to_thread(self.collect_sync)

    def collect_sync(self) -> list[MetricFamily]:
        """Dump and count."""
        if self._sock is None:
            self._sock = open_netlink(netlink.DiagSocket, "a sock_diag netlink")
        try:
            counts = self._sock.tcp_states()
        except OSError:
            self._sock.close()
            self._sock = None
            raise
        # Every state, zeros included, so a series does not vanish when its count drops to 0.
        samples = tuple(((state,), float(counts.get(state, 0))) for state in netlink.TCP_STATES.values())
        return [
            MetricFamily("node_tcp_connection_states", "gauge", "Number of connection states.", ("state",), samples)
        ]

    async def aclose(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


SPEC = CollectorSpec(
    name="tcpstat",
    description="TCP connections by state from a sock_diag netlink dump (node_exporter tcpstat names).",
    config_model=CollectorConfig,
    factory=TcpstatCollector,
)
