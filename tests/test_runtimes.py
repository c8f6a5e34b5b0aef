"""The runtime metadata store: merging runtimes, describing workloads, events, reconnects, and the device cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nodeagent.runtimes import (
    PodDeviceCache,
    RuntimeMetadata,
    container_event_fields,
    label_metric_name,
    split_image,
)
from nodeagent.sources.podresources import DeviceAllocation, decode_device_id
from nodeagent.sources.runtime_model import ContainerEvent, ContainerRecord, RuntimeUnavailable, k8s_fields
from nodeagent.workloads import Workload, WorkloadResolver, classify

UID = "3f0c4f2e-8d1a-4b7e-9a8f-2b3c4d5e6f70"
CID = "a" * 64
SID = "b" * 64


def k8s_record(cid: str, container: str, runtime: str = "containerd", **extra: Any) -> ContainerRecord:
    labels = {
        "io.kubernetes.pod.name": "web-0",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": UID,
        **({"io.kubernetes.container.name": container} if container else {}),
        **extra.pop("labels", {}),
    }
    return ContainerRecord(
        id=cid, runtime=runtime, name=cid, image="docker.io/library/nginx:1.25", image_id="sha256:" + "c" * 64,
        runtime_namespace="k8s.io", labels=labels, **k8s_fields(labels), **extra,
    )


class FakeClient:
    """An in-memory RuntimeClient: ``records`` is what ``list`` answers; ``push`` feeds the event stream."""

    def __init__(self, runtime: str = "containerd", records: list[ContainerRecord] | None = None,
                 stream: bool = True) -> None:
        self.runtime = runtime
        self.socket = f"/run/{runtime}.sock"
        self.records = list(records or [])
        self.stream = stream
        self.fail: str | None = None
        self.lists = 0
        self.queue: asyncio.Queue[ContainerEvent | None] = asyncio.Queue()
        self.closed = 0

    async def list(self) -> list[ContainerRecord]:
        self.lists += 1
        if self.fail:
            raise RuntimeUnavailable(self.fail)
        return list(self.records)

    def events(self) -> AsyncIterator[ContainerEvent] | None:
        return self._events() if self.stream else None

    async def _events(self) -> AsyncIterator[ContainerEvent]:
        while True:
            ev = await self.queue.get()
            if ev is None:
                return  # the runtime closed the stream
            yield ev

    async def aclose(self) -> None:
        self.closed += 1


async def until(predicate: Any, limit: float = 5.0) -> None:
    """Poll ``predicate`` (state owned by tasks under test, with no event to wait on) for ``limit`` seconds."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - polling the store's state is the point
            await asyncio.sleep(0.01)


def test_split_image_and_label_names() -> None:
    assert split_image("docker.io/library/nginx:1.25") == ("docker.io/library/nginx", "1.25")
    assert split_image("localhost:5000/app") == ("localhost:5000/app", "")
    assert split_image("nginx@sha256:" + "d" * 64) == ("nginx@sha256:" + "d" * 64, "")
    assert label_metric_name("app.kubernetes.io/name") == "container_label_app_kubernetes_io_name"


@pytest.mark.parametrize(
    ("device_id", "expected"),
    [
        ("GPU-5f7e0b6e-3e4a-4f0a-9d9c-0c1b2a3d4e5f", {"gpu_uuid": "GPU-5f7e0b6e-3e4a-4f0a-9d9c-0c1b2a3d4e5f",
                                                    "replica": None}),
        ("GPU-5f7e0b6e-3e4a-4f0a-9d9c-0c1b2a3d4e5f::3", {"gpu_uuid": "GPU-5f7e0b6e-3e4a-4f0a-9d9c-0c1b2a3d4e5f",
                                                       "replica": 3}),
        ("MIG-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9", {"mig_uuid": "MIG-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"}),
        ("MIG-GPU-5f7e0b6e-3e4a-4f0a-9d9c-0c1b2a3d4e5f/1/0", {"gpu_uuid": "GPU-5f7e0b6e-3e4a-4f0a-9d9c-0c1b2a3d4e5f",
                                                            "gpu_instance": 1, "compute_instance": 0}),
        ("nvidia0", {"gpu_index": 0, "gpu_instance": None, "replica": None}),
        ("nvidia1/gi2/vgpu3", {"gpu_index": 1, "gpu_instance": 2, "replica": 3}),
        ("0000:3b:00.0", {}),
    ],
)
def test_decode_device_id(device_id: str, expected: dict[str, Any]) -> None:
    assert decode_device_id(device_id) == expected


async def test_describe_fills_kubelet_labels_for_container_pod_and_sandbox(log: Any) -> None:
    sandbox = k8s_record(SID, "", sandbox=True, labels={"io.cri-containerd.kind": "sandbox", "app": "web"})
    client = FakeClient(records=[k8s_record(CID, "nginx"), sandbox])
    meta = RuntimeMetadata([client], log, label_allowlist=("app", "io.kubernetes.container.name"))
    await meta.sync_once()
    resolver = WorkloadResolver.__new__(WorkloadResolver)
    WorkloadResolver.__init__(resolver, paths=None, metadata=meta)  # type: ignore[arg-type]

    container = classify(f"/kubepods/burstable/pod{UID}/{CID}")
    pod = classify(f"/kubepods/burstable/pod{UID}")
    pause = classify(f"/kubepods/burstable/pod{UID}/{SID}")
    assert container is not None and pod is not None and pause is not None
    d = resolver.describe(container)
    assert (d.name, d.image, d.container, d.pod, d.namespace, d.runtime) == (
        CID, "docker.io/library/nginx:1.25", "nginx", "web-0", "shop", "containerd")
    assert d.image_id == "sha256:" + "c" * 64
    assert d.labels == ("web", "nginx")  # the pod's label from its sandbox, the container's own label
    p = resolver.describe(pod)
    assert (p.name, p.image, p.container, p.pod, p.namespace) == ("", "", "", "web-0", "shop")
    s = resolver.describe(pause)
    assert (s.container, s.pod, s.image) == ("", "web-0", "docker.io/library/nginx:1.25")
    # Cached per metadata generation: the same object until the metadata changes.
    assert resolver.describe(container) is d


async def test_earlier_runtime_wins_for_the_same_id(log: Any) -> None:
    docker = FakeClient("docker", [ContainerRecord(id=CID, runtime="docker", name="web", image="nginx:1.25")])
    containerd = FakeClient("containerd", [ContainerRecord(id=CID, runtime="containerd", name=CID, image="x",
                                                           runtime_namespace="moby")])
    meta = RuntimeMetadata([docker, containerd], log)
    await meta.sync_once()

    record = meta.container(CID)
    assert record is not None and (record.runtime, record.name) == ("docker", "web")


async def test_events_update_the_index_and_log_ecs_start_and_stop(log: Any, events: list[dict[str, Any]]) -> None:
    client = FakeClient(records=[])
    meta = RuntimeMetadata([client], log, label_allowlist=("app",))
    meta.start()
    try:
        await until(lambda: meta.statuses["containerd"].state == "up")
        rec = k8s_record(CID, "nginx", labels={"app": "web"})
        await client.queue.put(ContainerEvent("create", CID, rec, 1.0))
        await client.queue.put(ContainerEvent("start", CID, None, 1700000000.25, pid=4242))
        await until(lambda: any(e.get("event.action") == "container_start" for e in events))
        assert meta.container(CID) == rec.__class__(**{**_fields(rec), "running": True, "pid": 4242})
        await client.queue.put(ContainerEvent("stop", CID, None, 1700000009.5, pid=4242, exit_code=137))
        await client.queue.put(ContainerEvent("delete", CID, None, 1700000010.0))
        await until(lambda: meta.container(CID) is None and meta.statuses["containerd"].events == 4)
    finally:
        await meta.aclose()

    start = next(e for e in events if e.get("event.action") == "container_start")
    stop = next(e for e in events if e.get("event.action") == "container_stop")
    assert start["event"] == "container shop/web-0/nginx started"
    assert {k: start[k] for k in ("container.id", "container.name", "container.runtime", "container.image.name",
                                  "container.image.tag", "kubernetes.pod.name", "kubernetes.namespace",
                                  "kubernetes.pod.uid", "kubernetes.container.name", "orchestrator.type",
                                  "orchestrator.resource.name", "process.pid", "event.start", "container.labels",
                                  "event.type")} == {
        "container.id": CID, "container.name": CID, "container.runtime": "containerd",
        "container.image.name": "docker.io/library/nginx", "container.image.tag": ["1.25"],
        "kubernetes.pod.name": "web-0", "kubernetes.namespace": "shop", "kubernetes.pod.uid": UID,
        "kubernetes.container.name": "nginx", "orchestrator.type": "kubernetes", "orchestrator.resource.name": "web-0",
        "process.pid": 4242, "event.start": "2023-11-14T22:13:20.250Z", "container.labels": {"app": "web"},
        "event.type": ["start"],
    }
    assert len(start["trace.id"]) == 32 and len(start["span.id"]) == 16
    assert stop["process.exit_code"] == 137 and stop["event.type"] == ["end"]
    assert stop["event"] == "container shop/web-0/nginx stopped (exit code 137)"
    assert stop["trace.id"] != start["trace.id"]


def _fields(rec: ContainerRecord) -> dict[str, Any]:
    return {f: getattr(rec, f) for f in rec.__slots__}  # type: ignore[attr-defined]


async def test_lost_runtime_empties_its_metadata_then_reconnects(log: Any, events: list[dict[str, Any]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nodeagent.runtimes.BACKOFF_FIRST", 0.05)
    client = FakeClient(records=[k8s_record(CID, "nginx")])
    meta = RuntimeMetadata([client], log)
    meta.start()
    try:
        await until(lambda: meta.container(CID) is not None)
        client.fail = "socket /run/containerd.sock does not exist"
        await client.queue.put(None)  # the stream ends: containerd restarting
        await until(lambda: meta.statuses["containerd"].state == "down")
        assert meta.container(CID) is None  # empty until it is back, never stale
        assert meta.statuses["containerd"].reason == "the event stream ended (runtime restarting?)"
        await until(lambda: meta.statuses["containerd"].reason == "socket /run/containerd.sock does not exist")
        assert meta.statuses["containerd"].state == "down"
        client.fail = None
        await until(lambda: meta.statuses["containerd"].state == "up")
        assert meta.container(CID) is not None
        assert meta.statuses["containerd"].reconnects == 1
    finally:
        await meta.aclose()
    assert [e["event"] for e in events if e["level"] == "warning"] == ["runtime.disconnected"]


async def test_missing_runtime_stays_missing_and_is_retried_with_backoff(log: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nodeagent.runtimes.BACKOFF_FIRST", 0.02)
    monkeypatch.setattr("nodeagent.runtimes.BACKOFF_MAX", 0.08)
    client = FakeClient()
    client.fail = "socket /run/containerd.sock does not exist"
    meta = RuntimeMetadata([client], log)
    meta.start()
    try:
        await until(lambda: client.lists >= 5)
        assert meta.statuses["containerd"].state == "missing"
        client.fail = None
        await until(lambda: meta.statuses["containerd"].state == "up")
    finally:
        await meta.aclose()
    assert meta.statuses["containerd"].reconnects == 0  # it was never up before


async def test_poll_turns_differences_into_start_and_stop_events(log: Any, events: list[dict[str, Any]]) -> None:
    client = FakeClient("cri", [k8s_record(CID, "nginx", runtime="cri-o", running=True)], stream=False)
    meta = RuntimeMetadata([client], log, poll_interval=0.05)
    meta.start()
    try:
        await until(lambda: meta.container(CID) is not None)
        client.records = [k8s_record(CID, "nginx", runtime="cri-o", running=False),
                          k8s_record(SID, "sidecar", runtime="cri-o", running=True)]
        await until(lambda: len([e for e in events if str(e.get("event.action", "")).startswith("container_")]) == 2)
    finally:
        await meta.aclose()
    actions = sorted((e["event.action"], e["container.id"]) for e in events if "event.action" in e)
    assert actions == [("container_start", SID), ("container_stop", CID)]


async def test_unknown_container_id_triggers_one_relist(log: Any) -> None:
    client = FakeClient(records=[])
    meta = RuntimeMetadata([client], log)
    meta.start()
    try:
        await until(lambda: meta.statuses["containerd"].state == "up")
        lists = client.lists
        client.records = [k8s_record(CID, "nginx")]  # created while an event was missed
        assert meta.container(CID) is None
        await until(lambda: meta.container(CID) is not None)
        assert client.lists == lists + 1
        assert meta.container("f" * 64) is None  # a second miss within the interval does not re-list
        await asyncio.sleep(0.1)
        assert client.lists == lists + 1
    finally:
        await meta.aclose()


class FakeDevices:
    def __init__(self) -> None:
        self.socket = "/var/lib/kubelet/pod-resources/kubelet.sock"
        self.calls = 0
        self.fail: str | None = None
        self.value = [DeviceAllocation("nvidia.com/gpu", "GPU-x", "shop", "web-0", "nginx")]

    async def list(self) -> list[DeviceAllocation]:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeUnavailable(self.fail)
        return self.value

    async def aclose(self) -> None:
        return None


async def test_device_cache_asks_at_most_once_per_interval_and_keeps_answers_briefly(log: Any) -> None:
    now = [100.0]
    client = FakeDevices()
    cache = PodDeviceCache(client, log, min_interval=10.0, stale_after=60.0, clock=lambda: now[0])  # type: ignore[arg-type]

    results = await asyncio.gather(*(cache.allocations() for _ in range(5)))
    assert client.calls == 1 and all(r == client.value for r in results)
    now[0] += 9.9
    await cache.allocations()
    assert client.calls == 1
    now[0] += 0.2
    client.fail = "List on kubelet.sock failed: RESOURCE_EXHAUSTED: rejected by rate limit"
    assert await cache.allocations() == client.value  # the last answer, still fresh enough
    assert cache.calls == {"ok": 1, "rate_limited": 1}
    now[0] += 61.0
    assert await cache.allocations() == []  # too old to attribute devices with
    assert cache.status.state == "down"


def test_event_fields_without_a_record_name_the_id_only() -> None:
    fields = container_event_fields(ContainerEvent("stop", CID, None, 0.0, exit_code=0), None)
    assert fields["container.id"] == CID and fields["process.exit_code"] == 0
    assert "kubernetes.pod.name" not in fields and "container.name" not in fields


def test_workload_without_metadata_is_unchanged() -> None:
    w = Workload(id="/system.slice/sshd.service", kind="service", service="sshd.service")
    resolver = WorkloadResolver.__new__(WorkloadResolver)
    WorkloadResolver.__init__(resolver, paths=None, metadata=None)  # type: ignore[arg-type]
    assert resolver.describe(w) is w
