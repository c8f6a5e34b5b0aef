"""Node events: one table, emitted as a log record plus a counter with the record's trace id as exemplar."""

from __future__ import annotations

import io
import json
import re
import time

import structlog
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from nodeagent.events import EVENT_TYPES, EventCounter, emit, new_event_id
from nodeagent.exposition import FamilyRenderer
from nodeagent.logs import configure
from nodeagent.ship import PRIORITY_EVENT, PRIORITY_LOG, PRIORITY_LOG_PROBLEM

# ECS allowed values (elastic/ecs schemas, event.category and event.type).
ECS_CATEGORIES = {
    "api", "authentication", "configuration", "database", "driver", "email", "file", "host", "iam",
    "intrusion_detection", "library", "malware", "network", "package", "process", "registry", "session", "threat",
    "vulnerability", "web",
}  # fmt: skip
ECS_TYPES = {
    "access", "admin", "allowed", "change", "connection", "creation", "deletion", "denied", "device", "end", "error",
    "group", "indicator", "info", "installation", "protocol", "start", "user",
}  # fmt: skip
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_every_event_type_uses_ecs_allowed_values() -> None:
    for action, t in EVENT_TYPES.items():
        assert set(t.category) <= ECS_CATEGORIES, action
        assert set(t.type) <= ECS_TYPES, action
        assert t.level in ("info", "warning", "error"), action
        assert t.dataset.startswith("nodeagent."), action


def test_event_ids_are_unique_uuid7_in_time_order() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(UUID7.match(i) for i in ids)
    first_ms = int(ids[0].replace("-", "")[:12], 16)
    assert abs(first_ms - time.time() * 1000) < 5000
    assert ids[0][:13] <= ids[-1][:13]  # the millisecond prefix never goes back


def test_emit_logs_the_event_and_counts_it_with_its_trace_id() -> None:
    counter = EventCounter()
    shipped: list[tuple[bytes, int]] = []
    stream = io.StringIO()
    configure("info", "json", stream, hostname="node-1", sink=lambda b, p: shipped.append((b, p)))
    try:
        log = structlog.get_logger()
        trace = emit(log, "gpu_xid", "GPU 0 reported Xid 79", {"nodeagent.gpu.xid": 79}, counter=counter)
        with structlog.contextvars.bound_contextvars(**{"trace.id": "c" * 32}):
            in_cycle = emit(log, "oom_kill", "1 OOM kill", {}, counter=counter)
        log.info("plain", message="the agent's own record")
        log.warning("trouble")
    finally:
        structlog.reset_defaults()
    xid, oom, plain, warn = (json.loads(line) for line in stream.getvalue().splitlines())
    assert xid["trace.id"] == trace and len(trace) == 32 and len(xid["span.id"]) == 16
    assert (xid["event.kind"], xid["event.category"], xid["event.type"], xid["event.action"]) == (
        "event",
        ["host", "driver"],
        ["error"],
        "gpu_xid",
    )
    assert (xid["log.level"], xid["data_stream.dataset"], xid["nodeagent.gpu.xid"]) == ("error", "nodeagent.gpu", 79)
    assert in_cycle == "c" * 32 and oom["trace.id"] == in_cycle  # inside a cycle: the cycle's trace
    assert (plain["message"], plain["nodeagent.log.event"], plain["data_stream.dataset"]) == (
        "the agent's own record",
        "plain",
        "nodeagent.log",
    )
    # Every record has its own event id; the shipped copy carries it as @metadata._id, with a spool priority.
    records = [xid, oom, plain, warn]
    assert len({r["event.id"] for r in records}) == 4 and all(UUID7.match(r["event.id"]) for r in records)
    assert [p for _, p in shipped] == [PRIORITY_EVENT, PRIORITY_EVENT, PRIORITY_LOG, PRIORITY_LOG_PROBLEM]
    for (data, _), record in zip(shipped, records, strict=True):
        doc = json.loads(data)
        assert doc.pop("@metadata") == {"_id": record["event.id"]}
        assert doc == record
    assert (counter.count("gpu_xid"), counter.count("oom_kill"), counter.count("link_up")) == (1, 1, 0)
    # The counter's exemplar is the trace id of the last event, in OpenMetrics only.
    chunk = FamilyRenderer().render(counter.families())
    assert "trace_id" not in chunk.text
    parsed = {
        s.labels["action"]: s
        for f in text_string_to_metric_families(chunk.openmetrics + "# EOF\n")
        for s in f.samples
        if s.name == "nodeagent_events_total"
    }
    assert set(parsed) == set(EVENT_TYPES)  # every action from the start, 0 until it happens
    assert (parsed["gpu_xid"].value, parsed["gpu_xid"].exemplar.labels) == (1.0, {"trace_id": trace})
    assert parsed["oom_kill"].exemplar.labels == {"trace_id": in_cycle}
    assert parsed["link_up"].value == 0 and parsed["link_up"].exemplar is None


def test_console_format_still_ships_ecs_json() -> None:
    shipped: list[tuple[bytes, int]] = []
    stream = io.StringIO()
    configure("info", "console", stream, hostname="node-1", sink=lambda b, p: shipped.append((b, p)))
    try:
        emit(structlog.get_logger(), "link_down", "link eth0 down", {"interface.name": "eth0"}, counter=EventCounter())
    finally:
        structlog.reset_defaults()
    assert "link eth0 down" in stream.getvalue() and not stream.getvalue().startswith("{")
    [(data, priority)] = shipped
    doc = json.loads(data)
    assert (doc["message"], doc["event.action"], doc["log.level"], priority) == (
        "link eth0 down",
        "link_down",
        "warning",
        PRIORITY_EVENT,
    )
    assert doc["@metadata"]["_id"] == doc["event.id"]


def test_every_node_event_validates_against_the_ecs_schema() -> None:
    """Each emitter's real fields, through the real logging chain, give records the ECS schema accepts."""
    from nodeagent.collectors.cgroups import oom_event_fields
    from nodeagent.collectors.gpu import xid_event_fields
    from nodeagent.collectors.network import link_event_fields
    from nodeagent.runtimes import container_event_fields
    from nodeagent.sources.netlink import Link
    from nodeagent.sources.nvml import XidEvent
    from nodeagent.sources.runtime_model import ContainerEvent, ContainerRecord
    from nodeagent.workloads import Workload
    from tests.ecs_schema import problems

    pod = Workload(
        "/kubepods/pod1/abc",
        "container",
        runtime="containerd",
        pod_uid="6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b",
        container_id="abc",
        name="trainer",
        image="reg/train:1",
        container="trainer",
        pod="train-0",
        namespace="ml",
    )
    job = Workload("/slurm/uid_0/job_7", "slurm_job", slurm_job="7", slurm_uid="0")
    record = ContainerRecord(
        "abc",
        "containerd",
        "trainer",
        "reg/train:1",
        labels={"app": "train"},
        pod_uid="6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b",
        pod_name="train-0",
        pod_namespace="ml",
        container_name="trainer",
    )
    shipped: list[bytes] = []
    stream = io.StringIO()
    configure("debug", "json", stream, hostname="node-1", sink=lambda b, _p: shipped.append(b))
    try:
        log = structlog.get_logger()
        c = EventCounter()
        emit(log, "oom_kill", "OOM", oom_event_fields(pod, 3, 1), counter=c)
        emit(log, "oom_kill", "OOM", oom_event_fields(job, 1, 1), counter=c)
        xid = XidEvent("GPU-0", 79, None, None, time.time())
        emit(log, "gpu_xid", "Xid", xid_event_fields("0", xid, [pod, job]), counter=c)
        link = Link(
            3, "eth0", 0, 1, 1500, 2, 0, 4, 2, 2, "02:00:00:00:00:01", "", "uplink", "veth", 1000, 4, None, (), True
        )
        emit(log, "link_down", "down", link_event_fields(link, "up", "down", False), counter=c)
        for action, exit_code in (("start", None), ("stop", 137)):
            event = ContainerEvent(action, "abc", "containerd", time.time(), pid=42, exit_code=exit_code)
            emit(log, f"container_{action}", action, container_event_fields(event, record, ("app",)), counter=c)
        log.error("agent.failed", error={"message": "disk on fire", "type": "OSError"})
    finally:
        structlog.reset_defaults()
    assert len(shipped) == 7
    for data in shipped:
        doc = json.loads(data)
        assert problems(doc) == [], doc
