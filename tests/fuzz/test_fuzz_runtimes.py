"""
Decoders of what container runtimes and the kubelet answer (``nodeagent.sources``):

* the Docker Engine API client (``DockerClient``, also Podman's compat socket): a real client over a unix socket
  against a server that answers ``/containers/json``, ``/containers/{id}/json`` and ``/events`` with damaged JSON
  (wrong types, out-of-range numbers, missing keys, invalid or deeply nested JSON). Documented error:
  ``RuntimeUnavailable``; every record and event that comes out is well-typed, with an event time ``_iso`` can print;
* containerd's event decoder (``ContainerdClient._decode``) on damaged protobuf payloads of every topic. Documented
  error: protobuf's ``DecodeError`` (the stream skips and counts such an event). The one call it makes to containerd
  (``get`` for a created container) is answered by a stub here: the gRPC transport is not what is fuzzed;
* the kubelet PodResources response: ``ListPodResourcesResponse`` bytes damaged (``DecodeError``; grpc reports a
  response that does not decode as an RPC error) and ``allocations`` / ``decode_device_id`` on any device id.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st

from nodeagent.runtimes import container_event_fields
from nodeagent.sources.containerd import ContainerdClient
from nodeagent.sources.docker import DockerClient
from nodeagent.sources.podresources import allocations, decode_device_id
from nodeagent.sources.proto import containerd_event_types_pb2 as ev_pb
from nodeagent.sources.proto import containerd_events_pb2 as env_pb
from nodeagent.sources.proto import podresources_v1_pb2 as pr_pb
from nodeagent.sources.runtime_model import ContainerEvent, ContainerRecord, RuntimeUnavailable
from tests.doubles.docker_engine import FakeContainer, fake_container_id, fake_image_id
from tests.fuzz.strategies import hostile_bytes, hostile_json
from tests.fuzz.support import Cases, budget

CID = fake_container_id("web")


def _fake(status: str) -> FakeContainer:
    return FakeContainer(
        id=CID,
        name="web",
        image="nvcr.io/nvidia/pytorch:24.01-py3",
        image_id=fake_image_id("nvcr.io/nvidia/pytorch:24.01-py3"),
        labels={"io.kubernetes.pod.uid": "6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b", "io.kubernetes.pod.name": "trainer"},
        status=status,
        pid=4242 if status == "running" else 0,
        started_at=1_700_000_000.0,
    )


SUMMARIES = ([_fake("running").summary(1_700_000_100.0), _fake("exited").summary(1_700_000_100.0)],)
INSPECTS = (_fake("running").inspect(), _fake("exited").inspect())
EVENTS: tuple[Any, ...] = tuple(
    {
        "status": action,
        "id": CID,
        "from": "nvcr.io/nvidia/pytorch:24.01-py3",
        "Type": "container",
        "Action": action,
        "Actor": {"ID": CID, "Attributes": {"name": "web", **({"exitCode": "137"} if action == "die" else {})}},
        "scope": "local",
        "time": 1_700_000_000,
        "timeNano": 1_700_000_000_123_456_789,
    }
    for action in ("create", "start", "die", "destroy")
)


@dataclass
class EngineScript:
    """The bodies (and status) the fake engine answers with, set per example."""

    status: int = 200
    containers: bytes = b"[]"
    inspect: bytes = b"{}"
    events: bytes = b""


class FakeEngine:
    """An aiohttp server on a unix socket answering the three endpoints from an ``EngineScript``."""

    def __init__(self, socket_path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.script = EngineScript()
        app = web.Application()
        app.router.add_get("/containers/json", self._containers)
        app.router.add_get("/containers/{id}/json", self._inspect)
        app.router.add_get("/events", self._events)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.UnixSite(self.runner, socket_path).start())

    async def _containers(self, _request: web.Request) -> web.Response:
        return web.Response(status=self.script.status, body=self.script.containers, content_type="application/json")

    async def _inspect(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.script.inspect, content_type="application/json")

    async def _events(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.script.events, content_type="application/json")

    def close(self) -> None:
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeEngine, DockerClient]]:
    socket_path = str(tmp_path_factory.mktemp("docker") / "docker.sock")
    fake = FakeEngine(socket_path)
    client = DockerClient(socket_path, "docker", timeout=10.0)
    yield fake, client
    fake.loop.run_until_complete(client.aclose())
    fake.close()


def _check_record(record: ContainerRecord) -> None:
    for name in ("id", "runtime", "name", "image", "image_id", "pod_uid", "pod_name", "pod_namespace"):
        assert isinstance(getattr(record, name), str), name
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in record.labels.items())
    assert isinstance(record.pid, int) and record.pid >= 0


def _check_event(event: ContainerEvent) -> None:
    assert event.action in ("create", "start", "stop", "delete") and event.container_id
    assert isinstance(event.time, float) and math.isfinite(event.time)
    assert event.exit_code is None or isinstance(event.exit_code, int)
    if event.record is not None:
        _check_record(event.record)
    container_event_fields(event, event.record, ("io.kubernetes.pod.name",))  # prints the time: must not raise


@budget(150)
@given(hostile_json(SUMMARIES), st.sampled_from((200, 200, 200, 500, 404)))
@example(body=b'[{"Id": "x", "Names": 1.5}, {"Id": "y", "Names": {"a": 1}}]', status=200)  # TypeError, KeyError
@example(body=b"[" * 5_000, status=500)  # RecursionError in the error message's JSON
def test_docker_list(cases: Cases, engine: tuple[FakeEngine, DockerClient], body: bytes, status: int) -> None:
    """A damaged container list gives well-typed records, or RuntimeUnavailable naming the socket."""
    fake, client = engine
    fake.script = EngineScript(status=status, containers=body)
    outcome = cases.call(
        "docker_list", fake.loop.run_until_complete, client.list(), allowed=(RuntimeUnavailable,), names=client.socket
    )
    for record in outcome.value or ():
        _check_record(record)


@budget(150)
@given(hostile_json(INSPECTS))
@example(body=b"[" * 5_000)  # RecursionError
@example(body=b'{"Id": "x", "Config": [1], "State": {"Pid": "many"}}')  # AttributeError, ValueError
def test_docker_inspect(cases: Cases, engine: tuple[FakeEngine, DockerClient], body: bytes) -> None:
    """A damaged inspect answer gives a well-typed record or None, or RuntimeUnavailable."""
    fake, client = engine
    fake.script = EngineScript(inspect=body)
    outcome = cases.call(
        "docker_inspect", fake.loop.run_until_complete, client.inspect(CID), allowed=(RuntimeUnavailable,)
    )
    if outcome.value is not None:
        _check_record(outcome.value)


@budget(150)
@given(st.lists(hostile_json(EVENTS), min_size=1, max_size=4), hostile_json(INSPECTS))
@example(
    lines=[
        b'{"Action": "destroy", "id": "x", "Actor": "x"}',  # AttributeError
        b'{"Action": "die", "id": "x", "timeNano": 1e400, "Actor": {"Attributes": {"exitCode": [1]}}}',  # TypeError
        b'{"Action": "die", "id": "x", "time": 1e300}',  # a time no ISO 8601 date can print
        b"[" * 5_000,  # RecursionError
    ],
    inspect=b"{}",
)
def test_docker_events(
    cases: Cases, engine: tuple[FakeEngine, DockerClient], lines: list[bytes], inspect: bytes
) -> None:
    """A stream of damaged event lines: well-typed events (bad lines skipped) until it ends, or RuntimeUnavailable."""
    fake, client = engine
    fake.script = EngineScript(events=b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines), inspect=inspect)

    async def follow() -> list[ContainerEvent]:
        return [event async for event in client.events()]

    outcome = cases.call("docker_events", fake.loop.run_until_complete, follow(), allowed=(RuntimeUnavailable,))
    for event in outcome.value or ():
        _check_event(event)


def test_docker_seeds_decode(cases: Cases, engine: tuple[FakeEngine, DockerClient]) -> None:
    """The undamaged seeds decode to the values the fake container holds, so the damage is what the tests vary."""
    fake, client = engine
    fake.script = EngineScript(
        containers=json.dumps(SUMMARIES[0]).encode(),
        inspect=json.dumps(INSPECTS[0]).encode(),
        events=b"".join(json.dumps(e).encode() + b"\n" for e in EVENTS),
    )
    records = cases.call("docker_list", fake.loop.run_until_complete, client.list()).value
    assert [(CID, "web", True), (CID, "web", False)] == [(r.id, r.name, r.running) for r in records]
    assert "trainer" == records[0].pod_name

    async def follow() -> list[ContainerEvent]:
        return [event async for event in client.events()]

    events = cases.call("docker_events", fake.loop.run_until_complete, follow()).value
    assert ["create", "start", "stop", "delete"] == [e.action for e in events]
    assert 1_700_000_000.123456789 == pytest.approx(events[0].time)
    assert (4242, 137) == (events[1].pid, events[2].exit_code)


# --- containerd events ------------------------------------------------------------------------------------------------


class _StubbedContainerd(ContainerdClient):
    """``ContainerdClient`` whose one containerd call during decoding (``get``) is answered without a socket."""

    async def get(self, namespace: str, container_id: str) -> ContainerRecord | None:
        return ContainerRecord(id=container_id, runtime="containerd", name=container_id, image="busybox")


PAYLOADS: dict[str, Any] = {
    "/containers/create": ev_pb.ContainerCreate(id=CID, image="docker.io/library/busybox:latest"),
    "/containers/update": ev_pb.ContainerCreate(id=CID, image="docker.io/library/busybox:latest"),
    "/containers/delete": ev_pb.ContainerDelete(id=CID),
    "/tasks/start": ev_pb.TaskStart(container_id=CID, pid=4242),
    "/tasks/exit": ev_pb.TaskExit(container_id=CID, id=CID, pid=4242, exit_status=137),
}
PAYLOAD_SEEDS = tuple(p.SerializeToString() for p in PAYLOADS.values())


@budget(250)
@given(st.sampled_from(sorted(PAYLOADS)), hostile_bytes(PAYLOAD_SEEDS), st.integers(-(2**63), 2**63 - 1))
@example(topic="/tasks/start", payload=b"", seconds=1_700_000_000)  # an event naming no container
@example(topic="/containers/delete", payload=PAYLOAD_SEEDS[2], seconds=2**62)  # a time past year 9999
def test_containerd_event_decode(cases: Cases, topic: str, payload: bytes, seconds: int) -> None:
    """A damaged payload of any topic, any envelope time: a well-typed event, None, or DecodeError."""
    env = env_pb.Envelope(namespace="k8s.io", topic=topic)
    env.event.value = payload
    env.timestamp.seconds = seconds
    client = _StubbedContainerd("/nonexistent.sock")
    outcome = cases.call("containerd_event", asyncio.run, client._decode(env, ev_pb), allowed=(DecodeError,))
    if outcome.value is not None:
        _check_event(outcome.value)


def test_containerd_seeds_decode(cases: Cases) -> None:
    """The undamaged payloads decode to their actions, ids, pid and exit status."""
    client = _StubbedContainerd("/nonexistent.sock")
    got = []
    for topic, payload in PAYLOADS.items():
        env = env_pb.Envelope(namespace="k8s.io", topic=topic)
        env.event.value = payload.SerializeToString()
        env.timestamp.seconds = 1_700_000_000
        event = cases.call("containerd_event", asyncio.run, client._decode(env, ev_pb)).value
        got.append((event.action, event.container_id, event.pid, event.exit_code, event.time))
    t = 1_700_000_000.0
    assert [
        ("create", CID, 0, None, t),
        ("create", CID, 0, None, t),
        ("delete", CID, 0, None, t),
        ("start", CID, 4242, None, t),
        ("stop", CID, 4242, 137, t),
    ] == got


# --- kubelet PodResources -------------------------------------------------------------------------------------------

GPU = "GPU-8b2f1c4e-3a5d-4e6f-9a0b-1c2d3e4f5a6b"
DEVICE_IDS = (
    GPU,
    f"{GPU}::3",
    "MIG-0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
    f"MIG-{GPU}/1/0",
    "nvidia0",
    "nvidia3/gi2/vgpu1",
)


def _response(ids: list[str]) -> pr_pb.ListPodResourcesResponse:
    response = pr_pb.ListPodResourcesResponse()
    pod = response.pod_resources.add(name="trainer", namespace="ml")
    container = pod.containers.add(name="main")
    container.devices.add(resource_name="nvidia.com/gpu", device_ids=ids)
    return response


@budget(300)
@given(hostile_bytes(tuple(d.encode() for d in DEVICE_IDS)).map(lambda b: b.decode("utf-8", "replace")))
@example(device_id="nvidia" + "9" * 5000)  # ValueError: past int()'s 4300 digits
def test_decode_device_id_any_string(cases: Cases, device_id: str) -> None:
    """Any device id decodes to the NVIDIA fields it carries, or to none; indexes are plausible numbers."""
    fields = cases.call("podresources_device_id", decode_device_id, device_id).value
    for key in ("gpu_index", "gpu_instance", "compute_instance", "replica"):
        value = fields.get(key)
        assert value is None or (isinstance(value, int) and 0 <= value < 2**32), (key, value)


@budget(200)
@given(hostile_bytes((_response(list(DEVICE_IDS)).SerializeToString(),)))
def test_podresources_response_bytes(cases: Cases, data: bytes) -> None:
    """Damaged response bytes: DecodeError, or a message whose allocations all come out."""
    outcome = cases.call(
        "podresources_response", pr_pb.ListPodResourcesResponse.FromString, data, allowed=(DecodeError,)
    )
    if outcome.value is not None:
        for allocation in cases.call("podresources_allocations", allocations, outcome.value).value:
            assert isinstance(allocation.device_id, str)


def test_device_id_seeds_decode(cases: Cases) -> None:
    """Every NVIDIA id form decodes to its fields."""
    got = cases.call("podresources_allocations", allocations, _response(list(DEVICE_IDS))).value
    assert [
        (GPU, "", None, None, None, None),
        (GPU, "", None, None, None, 3),
        ("", "MIG-0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", None, None, None, None),
        (GPU, "", None, 1, 0, None),
        ("", "", 0, None, None, None),
        ("", "", 3, 2, None, 1),
    ] == [(a.gpu_uuid, a.mig_uuid, a.gpu_index, a.gpu_instance, a.compute_instance, a.replica) for a in got]
    assert {("ml", "trainer", "main")} == {(a.namespace, a.pod, a.container) for a in got}
