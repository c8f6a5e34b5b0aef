"""
Shipping logs and node events to Logstash (or anything that speaks one of its inputs) without losing them.

The pieces, each in its own module:

* ``spool``: a bounded, crash-safe spool (memory in front of append-only disk segments). The logging chain
  appends to it without blocking; the shipper reads the oldest unacknowledged records and acknowledges them.
* ``lumberjack``: the Beats / Lumberjack v2 transport (Logstash's ``beats`` input), acknowledged per batch.
* ``http``: ndjson to Logstash's ``http`` input, acknowledged by the HTTP status.
* ``tcp``: ``json_lines`` over TCP (Logstash's ``tcp`` input, rsyslog's imtcp): **not acknowledged**; bytes
  written are not events stored.
* ``shipper``: the asyncio task that moves records from the spool to a transport, with backoff, failover and
  self-metrics.

Every transport implements ``Transport``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

# Spool priorities: when the spool fills up, the lowest priority is refused first.
PRIORITY_LOG = 0  # the agent's own debug and info records
PRIORITY_LOG_PROBLEM = 1  # the agent's own warning and error records
PRIORITY_EVENT = 2  # node events (OOM kill, Xid, link up/down, container start/stop)
PRIORITY_NAMES = {PRIORITY_LOG: "log", PRIORITY_LOG_PROBLEM: "log_problem", PRIORITY_EVENT: "event"}


class TransportError(Exception):
    """Delivery failed (connection refused or lost, timeout, protocol error, 429/5xx); the caller retries."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Transport(Protocol):
    """One destination (one Logstash host) of one protocol."""

    name: str  # "beats", "http" or "tcp"
    endpoint: str  # "host:port" or the URL, for logs and metric labels
    acknowledged: bool  # False for tcp: "delivered" only means written to the socket

    async def send(self, records: Sequence[bytes], on_progress: Callable[[int], None]) -> None:
        """
        Deliver ``records`` (each one JSON document, UTF-8, without a trailing newline) in order. Returns once
        all are acknowledged. ``on_progress(n)`` may be called with the number of records, counted from the
        start of ``records``, acknowledged so far (a partial ACK); it never decreases within one call.

        Raises:
            TransportError: anything that stopped delivery; records not acknowledged are sent again later.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection (the next ``send`` opens a new one)."""
        ...
