"""
Node events: OOM kills, GPU Xid errors, link up/down, container start/stop. One table says how each is categorised
in the Elastic Common Schema; ``emit`` writes the event as one structured log record (shipped to Logstash at the
highest spool priority) and counts it in ``nodeagent_events_total{action}`` with the record's ``trace.id`` as the
counter's OpenMetrics exemplar, so a dashboard can jump from the counter to the log record.

Adding a node event is one line in ``EVENT_TYPES`` and one ``emit`` call where it is detected.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from nodeagent.metrics import Exemplar, LabelValues, MetricFamily
from nodeagent.scheduler import new_trace_ids
from nodeagent.workloads import Workload


@dataclass(frozen=True, slots=True)
class EventType:
    """How one kind of node event is categorised (ECS ``event.category``/``event.type``) and logged."""

    category: tuple[str, ...]
    type: tuple[str, ...]
    level: str  # log level: info, warning or error
    dataset: str  # event.dataset (and the Logstash data stream's dataset)


# event.action -> its categorisation. Category and type values are from ECS's allowed values.
EVENT_TYPES: dict[str, EventType] = {
    "oom_kill": EventType(("process",), ("end",), "warning", "nodeagent.workload"),
    "gpu_xid": EventType(("host", "driver"), ("error",), "error", "nodeagent.gpu"),
    "link_down": EventType(("network",), ("change",), "warning", "nodeagent.network"),
    "link_up": EventType(("network",), ("change",), "info", "nodeagent.network"),
    "container_start": EventType(("process",), ("start",), "info", "nodeagent.container"),
    "container_stop": EventType(("process",), ("end",), "info", "nodeagent.container"),
}

# The key that marks a log record as a node event (set by ``emit`` only).
NODE_EVENT_KEY = "event.kind"


def workload_fields(w: Workload) -> dict[str, Any]:
    """
    The ECS fields naming a workload in an event: ``container.*``, ECS ``orchestrator.*`` beside Beats'
    ``kubernetes.*`` (Elastic's Kubernetes dashboards read the latter), systemd unit, Slurm job; empty ones left out.
    """
    pod = bool(w.pod_uid)
    optional = {
        "nodeagent.workload.kind": w.kind,
        "nodeagent.workload.id": w.id,
        "container.id": w.container_id,
        "container.name": w.name,
        "container.image.name": w.image,
        "container.runtime": w.runtime if w.kind == "container" else "",
        "orchestrator.type": "kubernetes" if pod else "",
        "orchestrator.namespace": w.namespace if pod else "",
        "orchestrator.resource.type": "pod" if pod else "",
        "orchestrator.resource.name": w.pod if pod else "",
        "orchestrator.resource.id": w.pod_uid,
        "kubernetes.pod.uid": w.pod_uid,
        "kubernetes.pod.name": w.pod,
        "kubernetes.namespace": w.namespace,
        "kubernetes.container.name": w.container,
        "systemd.unit": w.service,
        "slurm.job.id": w.slurm_job,
        "slurm.step.id": w.slurm_step,
        "user.id": w.slurm_uid,
        "nodeagent.workload.vm": w.vm,
    }
    return {k: v for k, v in optional.items() if v}


# Seeded from os.urandom when created; a Mersenne Twister draw costs a fraction of an os.urandom call.
_random_bits = random.Random().getrandbits


def new_event_id() -> str:
    """
    A unique, time-ordered id for one log record (UUIDv7 layout: 48-bit Unix milliseconds, version 7, random
    bits), used as ``event.id`` and as the Elasticsearch document id so that a re-sent record overwrites itself.
    """
    ms = time.time_ns() // 1_000_000
    rand = _random_bits(74)  # uniqueness, not secrecy: 74 random bits per millisecond
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | rand & (2**62 - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class EventCounter:
    """Node events counted by action since the agent started, each with the trace id of the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._last: dict[str, Exemplar] = {}

    def add(self, action: str, trace_id: str) -> None:
        """Count one event (thread-safe)."""
        with self._lock:
            self._counts[action] = self._counts.get(action, 0) + 1
            self._last[action] = Exemplar(trace_id, 1.0, time.time())

    def count(self, action: str) -> int:
        """Events of ``action`` so far."""
        with self._lock:
            return self._counts.get(action, 0)

    def families(self) -> Sequence[MetricFamily]:
        """``nodeagent_events_total{action}``; every known action is present from the start (0 until it happens)."""
        with self._lock:
            counts = {a: self._counts.get(a, 0) for a in EVENT_TYPES} | self._counts
            exemplars: dict[LabelValues, Exemplar] = {(a,): ex for a, ex in self._last.items()}
        return [
            MetricFamily(
                "nodeagent_events_total",
                "counter",
                "Node events logged (OOM kills, GPU Xid errors, link changes, container starts and stops), by "
                "event.action; the exemplar is the trace.id of the last one.",
                ("action",),
                tuple(((a,), float(n)) for a, n in sorted(counts.items())),
                exemplars,
            )
        ]


# The agent's one counter (events come from collectors, runtime watchers and the NVML Xid thread).
EVENTS = EventCounter()


def emit(
    log: structlog.typing.FilteringBoundLogger,
    action: str,
    message: str,
    fields: Mapping[str, Any],
    *,
    level: str | None = None,
    trace_id: str | None = None,
    counter: EventCounter | None = None,
) -> str:
    """
    Log one node event and count it. ``fields`` are the event's own ECS fields (container, interface, GPU ...);
    the categorisation comes from ``EVENT_TYPES``. The trace id is ``trace_id``, else the current collection
    cycle's, else a fresh one; it is returned.

    Raises:
        KeyError: ``action`` is not in ``EVENT_TYPES`` (a programming error).
    """
    t = EVENT_TYPES[action]
    span_id = secrets.token_hex(8)
    if trace_id is None:  # the collection cycle's trace (bound by the scheduler), else a trace of its own
        trace_id = structlog.contextvars.get_contextvars().get("trace.id") or new_trace_ids()[0]
    record: dict[str, Any] = {
        NODE_EVENT_KEY: "event",
        "event.category": list(t.category),
        "event.type": list(t.type),
        "event.action": action,
        "event.module": "nodeagent",
        "event.dataset": t.dataset,
        **fields,
        "trace.id": trace_id,
        "span.id": span_id,
    }
    (counter or EVENTS).add(action, trace_id)
    getattr(log, level or t.level)(message, **record)
    return trace_id
