"""The test doubles checked with independent clients: a plain gRPC channel for the PodResources double, the
``docker`` SDK (PyPI ``docker``) for the Docker Engine double. Blocking clients run in threads; the doubles run
on the test's event loop.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from nodeagent.sources.proto import podresources_v1_pb2 as pb
from tests.doubles.docker_engine import DockerEngineDouble, fake_image_id
from tests.doubles.podresources import (
    GPU_RESOURCE,
    KUBELET_BURST,
    KUBELET_QPS,
    MIG_1G_10GB_RESOURCE,
    RATE_LIMIT_MESSAGE,
    ContainerAlloc,
    Fault,
    PodAlloc,
    PodResourcesDouble,
    TokenBucket,
    gpu_uuid,
    typical_allocations,
    whole_gpus,
)
from tests.prereq import missing

T = TypeVar("T")

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (a socket path must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="na-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- PodResources, through a plain gRPC channel -----------------------------------------------------------------


class PlainPodResourcesClient:
    """A client built only from ``grpc.insecure_channel`` and the generated message classes (no generated stub)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.list = self.channel.unary_unary(
            "/v1.PodResourcesLister/List",
            request_serializer=pb.ListPodResourcesRequest.SerializeToString,
            response_deserializer=pb.ListPodResourcesResponse.FromString,
        )
        self.get = self.channel.unary_unary(
            "/v1.PodResourcesLister/Get",
            request_serializer=pb.GetPodResourcesRequest.SerializeToString,
            response_deserializer=pb.GetPodResourcesResponse.FromString,
        )
        self.allocatable = self.channel.unary_unary(
            "/v1.PodResourcesLister/GetAllocatableResources",
            request_serializer=pb.AllocatableResourcesRequest.SerializeToString,
            response_deserializer=pb.AllocatableResourcesResponse.FromString,
        )

    def list_pods(self, timeout: float = 5.0) -> pb.ListPodResourcesResponse:
        response: pb.ListPodResourcesResponse = self.list(pb.ListPodResourcesRequest(), timeout=timeout)
        return response

    def list_error(self, timeout: float = 5.0) -> grpc.RpcError:
        try:
            self.list(pb.ListPodResourcesRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return exc
        raise AssertionError("List succeeded")

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
async def kubelet(sock_dir: Path) -> AsyncIterator[PodResourcesDouble]:
    async with PodResourcesDouble(sock_dir / "kubelet.sock", typical_allocations()) as double:
        yield double


@pytest.fixture
def grpc_client(kubelet: PodResourcesDouble) -> Iterator[PlainPodResourcesClient]:
    client = PlainPodResourcesClient(kubelet.target)
    try:
        yield client
    finally:
        client.close()


def _devices(resp: pb.ListPodResourcesResponse) -> dict[tuple[str, str, str], list[tuple[str, list[str]]]]:
    return {
        (p.namespace, p.name, c.name): [(d.resource_name, list(d.device_ids)) for d in c.devices]
        for p in resp.pod_resources
        for c in p.containers
    }


async def test_podresources_list_answers_typical_allocations(
    kubelet: PodResourcesDouble, grpc_client: PlainPodResourcesClient
) -> None:
    resp = await asyncio.to_thread(grpc_client.list_pods)
    devices = _devices(resp)
    assert set(devices) == {
        ("ml", "train-0", "trainer"),
        ("ml", "train-0", "sidecar"),
        ("ml", "infer-0", "server"),
        ("ml", "infer-1", "server"),
        ("research", "notebook-a", "jupyter"),
        ("research", "notebook-b", "jupyter"),
        ("default", "web", "nginx"),
    }
    trainer = devices[("ml", "train-0", "trainer")]
    assert [r for r, _ in trainer] == [GPU_RESOURCE]
    assert trainer[0][1] == [gpu_uuid(0), gpu_uuid(1)]
    assert all(re.fullmatch(f"GPU-{UUID_RE}", i) for i in trainer[0][1])
    (mig,) = devices[("ml", "infer-0", "server")]
    assert mig[0] == MIG_1G_10GB_RESOURCE and re.fullmatch(f"MIG-{UUID_RE}", mig[1][0])
    shared = devices[("research", "notebook-a", "jupyter")] + devices[("research", "notebook-b", "jupyter")]
    assert [i for _, ids in shared for i in ids] == [f"{gpu_uuid(3)}::0", f"{gpu_uuid(3)}::1"]
    assert devices[("ml", "train-0", "sidecar")] == [] and devices[("default", "web", "nginx")] == []
    train = next(p for p in resp.pod_resources if p.name == "train-0")
    assert [n.ID for n in train.containers[0].devices[0].topology.nodes] == [0]
    assert list(train.containers[0].cpu_ids) == [2, 3, 4, 5]
    assert kubelet.calls["List"] == 1 and kubelet.answered["List"] == 1


async def test_podresources_state_is_swapped(kubelet: PodResourcesDouble, grpc_client: PlainPodResourcesClient) -> None:
    kubelet.set_pods([PodAlloc("solo", "ns", (ContainerAlloc("c", (whole_gpus(7),)),))])
    resp = await asyncio.to_thread(grpc_client.list_pods)
    assert _devices(resp) == {("ns", "solo", "c"): [(GPU_RESOURCE, [gpu_uuid(7)])]}
    kubelet.set_pods([])
    resp = await asyncio.to_thread(grpc_client.list_pods)
    assert len(resp.pod_resources) == 0
    assert kubelet.calls["List"] == 2


async def test_podresources_rate_limit_fault(kubelet: PodResourcesDouble, grpc_client: PlainPodResourcesClient) -> None:
    kubelet.set_fault(Fault.RATE_LIMIT, times=2)
    for _ in range(2):
        err = await asyncio.to_thread(grpc_client.list_error)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == RATE_LIMIT_MESSAGE == "rejected by rate limit"
    resp = await asyncio.to_thread(grpc_client.list_pods)  # the fault was for two calls
    assert len(resp.pod_resources) == 6
    assert kubelet.calls["List"] == 3 and kubelet.answered["List"] == 1


async def test_podresources_token_bucket(sock_dir: Path) -> None:
    # qps 1 keeps the test deterministic; the bucket's arithmetic at kubelet's 100/10 is checked below
    async with PodResourcesDouble(sock_dir / "k.sock", typical_allocations(), enforce_rate_limit=True, qps=1.0) as d:
        client = PlainPodResourcesClient(d.target)
        try:

            def burst() -> list[grpc.StatusCode]:
                codes = []
                for _ in range(KUBELET_BURST + 1):
                    try:
                        client.list_pods()
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as exc:
                        codes.append(exc.code())
                return codes

            codes = await asyncio.to_thread(burst)
        finally:
            client.close()
    assert codes == [grpc.StatusCode.OK] * KUBELET_BURST + [grpc.StatusCode.RESOURCE_EXHAUSTED]


def test_token_bucket_at_kubelet_defaults() -> None:
    now = [0.0]
    bucket = TokenBucket(KUBELET_QPS, KUBELET_BURST, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(11)] == [True] * 10 + [False]
    now[0] += 0.01  # one token back after 1/100 s
    assert [bucket.allow(), bucket.allow()] == [True, False]
    now[0] += 60.0  # never more than the burst
    assert sum(bucket.allow() for _ in range(20)) == 10


async def test_podresources_unavailable_and_hang(
    kubelet: PodResourcesDouble, grpc_client: PlainPodResourcesClient
) -> None:
    kubelet.set_fault(Fault.UNAVAILABLE)
    err = await asyncio.to_thread(grpc_client.list_error)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    kubelet.set_fault(Fault.HANG, delay_s=30.0)
    t0 = time.monotonic()
    err = await asyncio.to_thread(grpc_client.list_error, 0.3)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5.0
    kubelet.clear_fault()
    assert len((await asyncio.to_thread(grpc_client.list_pods)).pod_resources) == 6


async def test_podresources_get_and_allocatable(
    kubelet: PodResourcesDouble, grpc_client: PlainPodResourcesClient
) -> None:
    resp = await asyncio.to_thread(
        grpc_client.get, pb.GetPodResourcesRequest(pod_name="infer-1", pod_namespace="ml"), timeout=5
    )
    assert resp.pod_resources.name == "infer-1" and resp.pod_resources.containers[0].name == "server"
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.to_thread(
            grpc_client.get, pb.GetPodResourcesRequest(pod_name="nope", pod_namespace="ml"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "pod nope in namespace ml not found"
    kubelet.allocatable_devices = (whole_gpus(0, 1, 2, 3),)
    kubelet.allocatable_cpu_ids = tuple(range(8))
    alloc = await asyncio.to_thread(grpc_client.allocatable, pb.AllocatableResourcesRequest(), timeout=5)
    assert [len(d.device_ids) for d in alloc.devices] == [4] and list(alloc.cpu_ids) == list(range(8))
    assert kubelet.total_calls == 3


async def test_podresources_socket_removed_on_stop(sock_dir: Path) -> None:
    double = PodResourcesDouble(sock_dir / "k.sock")
    await double.start()
    assert double.socket_path.is_socket()
    await double.stop()
    assert not double.socket_path.exists()


# --- Docker Engine, through the docker SDK ----------------------------------------------------------------------


def _docker() -> Any:
    try:
        import docker  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        missing("the docker SDK (pip install docker)")
    return docker


@pytest.fixture
async def engine(sock_dir: Path) -> AsyncIterator[DockerEngineDouble]:
    async with DockerEngineDouble(sock_dir / "docker.sock") as double:
        yield double


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def _take(stream: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` items of a blocking stream (fewer if it ends)."""
    out: list[dict[str, Any]] = []
    for item in stream:
        out.append(item)
        if len(out) == n:
            break
    return out


@pytest.fixture
async def client(engine: DockerEngineDouble) -> AsyncIterator[Any]:
    docker = _docker()
    c = await _call(docker.DockerClient, base_url=engine.base_url, timeout=10)  # version "auto": GET /version
    try:
        yield c
    finally:
        await _call(c.close)


def _populate(engine: DockerEngineDouble) -> tuple[str, str]:
    web = engine.add_container(
        None, "web", "nginx:1.25", labels={"app": "web"}, pid=1234, cgroup_parent="/docker", created=time.time() - 60
    )
    job = engine.add_container(
        None, "job", "nvcr.io/nvidia/pytorch:24.01-py3", labels={"gpu": "yes"}, created=time.time() - 30
    )
    engine.die(job.id, 3)
    return web.id, job.id


async def test_docker_ping_and_version(engine: DockerEngineDouble, client: Any) -> None:
    assert await _call(client.ping) is True
    version = await _call(client.version)
    assert version["ApiVersion"] == "1.43" and version["Components"][0]["Name"] == "Engine"
    assert client.api.api_version == "1.43"
    assert ("GET", "/version") in engine.requests  # the SDK's unversioned version probe
    assert ("GET", "/v1.43/_ping") in engine.requests
    resp = await _call(client.api.get, client.api.base_url + "/_ping")
    assert resp.text == "OK"
    assert resp.headers["Api-Version"] == "1.43"
    assert resp.headers["Docker-Experimental"] == "false" and resp.headers["Ostype"] == "linux"
    assert resp.headers["Server"].startswith("Docker/")


async def test_docker_list_and_inspect(engine: DockerEngineDouble, client: Any) -> None:
    docker = _docker()
    web_id, job_id = _populate(engine)
    running = await _call(client.containers.list)
    assert [c.id for c in running] == [web_id]
    everything = await _call(client.containers.list, all=True)
    assert [c.name for c in everything] == ["job", "web"]  # newest first
    exited = await _call(client.containers.list, filters={"status": "exited"})
    assert [c.id for c in exited] == [job_id]
    labelled = await _call(client.containers.list, all=True, filters={"label": "gpu=yes"})
    assert [c.id for c in labelled] == [job_id]

    raw = await _call(client.api.containers, all=True)
    summary = next(s for s in raw if s["Id"] == web_id)
    assert summary["Names"] == ["/web"] and summary["Image"] == "nginx:1.25"
    assert summary["ImageID"] == fake_image_id("nginx:1.25") and summary["ImageID"].startswith("sha256:")
    assert summary["State"] == "running" and summary["Status"].startswith("Up ")
    assert summary["Labels"] == {"app": "web"} and summary["Command"] == "sleep infinity"
    assert {"HostConfig", "NetworkSettings", "Mounts", "Created"} <= summary.keys()
    job_summary = next(s for s in raw if s["Id"] == job_id)
    assert job_summary["State"] == "exited" and job_summary["Status"].startswith("Exited (3) ")

    web = await _call(client.containers.get, "web")
    assert web.id == web_id and web.name == "web" and web.status == "running" and web.labels == {"app": "web"}
    assert web.attrs["Name"] == "/web" and web.attrs["Image"] == fake_image_id("nginx:1.25")
    assert web.attrs["Config"]["Image"] == "nginx:1.25"
    assert web.attrs["State"]["Pid"] == 1234 and web.attrs["State"]["Running"] is True
    assert web.attrs["State"]["FinishedAt"] == "0001-01-01T00:00:00Z"
    assert web.attrs["HostConfig"]["CgroupParent"] == "/docker"
    job = await _call(client.containers.get, job_id[:12])
    assert job.attrs["State"]["ExitCode"] == 3 and job.attrs["State"]["Pid"] == 0
    assert job.attrs["State"]["OOMKilled"] is False and job.status == "exited"

    with pytest.raises(docker.errors.NotFound) as info:
        await _call(client.containers.get, "deadbeef")
    assert "No such container: deadbeef" in str(info.value)


async def test_docker_events_stream(engine: DockerEngineDouble, client: Any) -> None:
    ctr = engine.add_container(None, "svc", "busybox:1.36", labels={"team": "ml"}, running=False)
    stream = await _call(client.events, decode=True, filters={"type": "container"})
    try:
        reader = asyncio.ensure_future(_call(_take, stream, 4))
        await asyncio.sleep(0.05)
        engine.start(ctr.id)
        engine.die(ctr.id, 137, oom=True)
        engine.remove(ctr.id)
        events = await asyncio.wait_for(reader, 10)
    finally:
        await _call(stream.close)
    assert [e["Action"] for e in events] == ["start", "oom", "die", "destroy"]
    for e in events:
        assert e["Type"] == "container" and e["scope"] == "local" and e["id"] == ctr.id == e["Actor"]["ID"]
        assert e["status"] == e["Action"] and e["from"] == "busybox:1.36"
        assert e["Actor"]["Attributes"]["name"] == "svc" and e["Actor"]["Attributes"]["team"] == "ml"
        assert e["time"] == e["timeNano"] // 1_000_000_000
    assert events[2]["Actor"]["Attributes"]["exitCode"] == "137"


async def test_docker_events_since_until_and_filters(engine: DockerEngineDouble, client: Any) -> None:
    t0 = int(time.time())
    _populate(engine)
    until = int(time.time()) + 1
    replay = await _call(
        lambda: list(client.events(since=t0, until=until, decode=True, filters={"event": ["start", "die"]}))
    )
    assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in replay] == [
        ("start", "web"),
        ("start", "job"),
        ("die", "job"),
    ]
    only_job = await _call(
        lambda: list(client.events(since=t0, until=until, decode=True, filters={"container": "job"}))
    )
    assert {e["Actor"]["Attributes"]["name"] for e in only_job} == {"job"}


async def test_docker_close_event_streams(engine: DockerEngineDouble, client: Any) -> None:
    stream = await _call(client.events, decode=True)
    collected: list[dict[str, Any]] = []
    done = threading.Event()

    def read_all() -> None:
        for event in stream:
            collected.append(event)
        done.set()

    reader = asyncio.ensure_future(_call(read_all))
    await asyncio.sleep(0.05)
    assert engine.open_event_streams == 1
    engine.add_container("a" * 64, "a", "alpine:3.19", running=False)
    await asyncio.sleep(0.1)
    assert engine.close_event_streams() == 1
    await asyncio.wait_for(reader, 10)
    assert done.is_set() and [e["Action"] for e in collected] == ["create"]
    await asyncio.sleep(0.05)
    assert engine.open_event_streams == 0


async def test_docker_event_stream_cut(engine: DockerEngineDouble, client: Any) -> None:
    """``abrupt=True`` drops the connection without the closing chunk. The SDK's ``CancellableStream`` turns the
    resulting urllib3 ``ProtocolError`` into a plain end of iteration, so this reads the response body through
    the SDK's session without that wrapper."""
    import urllib3

    def read_all(resp: Any) -> str:
        try:
            while resp.raw.read(1):
                pass
        except urllib3.exceptions.ProtocolError as exc:
            return f"broken: {exc}"
        return "ended"

    outcomes = []
    for abrupt in (False, True):
        resp = await _call(client.api.get, client.api._url("/events"), stream=True, timeout=None)
        reader = asyncio.ensure_future(_call(read_all, resp))
        await asyncio.sleep(0.05)
        assert engine.close_event_streams(abrupt=abrupt) == 1
        outcomes.append(await asyncio.wait_for(reader, 10))
        resp.close()
    assert outcomes[0] == "ended"
    assert outcomes[1].startswith("broken:") and "IncompleteRead" in outcomes[1]
    # what the SDK's own stream makes of a cut: a silent end
    sdk_stream = await _call(client.events, decode=True)
    ended = asyncio.ensure_future(_call(_take, sdk_stream, 1))
    await asyncio.sleep(0.05)
    engine.close_event_streams(abrupt=True)
    assert await asyncio.wait_for(ended, 10) == []


async def test_docker_injected_error(engine: DockerEngineDouble, client: Any) -> None:
    docker = _docker()
    _populate(engine)
    engine.set_error("containers", 500, "something went wrong", times=1)
    with pytest.raises(docker.errors.APIError) as info:
        await _call(client.containers.list)
    assert info.value.status_code == 500 and info.value.explanation == "something went wrong"
    assert len(await _call(client.containers.list)) == 1  # only once


async def test_docker_api_version_prefixes(engine: DockerEngineDouble, sock_dir: Path) -> None:
    docker = _docker()
    engine.add_container(None, "web", "nginx:1.25")
    old = await _call(docker.DockerClient, base_url=engine.base_url, version="1.41")
    try:
        assert [c.name for c in await _call(old.containers.list)] == ["web"]
        assert any(path.startswith("/v1.41/containers/json") for _, path in engine.requests)
        unversioned = await _call(old.api.get, old.api.base_url + "/containers/json")
        assert unversioned.status_code == 200 and unversioned.json()[0]["Names"] == ["/web"]
        missing_page = await _call(old.api.get, old.api.base_url + "/v1.43/nothing/here")
        assert missing_page.status_code == 404 and missing_page.json() == {"message": "page not found"}
    finally:
        await _call(old.close)
    too_new = await _call(docker.DockerClient, base_url=engine.base_url, version="1.44")
    try:
        with pytest.raises(docker.errors.APIError) as info:
            await _call(too_new.ping)
        assert info.value.status_code == 400
        assert "client version 1.44 is too new. Maximum supported API version is 1.43" in str(info.value)
    finally:
        await _call(too_new.close)


async def test_podman_flavor(sock_dir: Path) -> None:
    docker = _docker()
    async with DockerEngineDouble(sock_dir / "podman.sock", flavor="podman") as engine:
        client = await _call(docker.DockerClient, base_url=engine.base_url)
        try:
            version = await _call(client.version)
            assert client.api.api_version == "1.41"
            assert any(c["Name"] == "Podman Engine" for c in version["Components"])
            resp = await _call(client.api.get, client.api.base_url + "/_ping")
            assert resp.headers["Server"].startswith("Libpod/") and "Libpod-Api-Version" in resp.headers
        finally:
            await _call(client.close)


async def test_docker_restart_keeps_containers(engine: DockerEngineDouble) -> None:
    docker = _docker()
    engine.add_container(None, "web", "nginx:1.25")
    await engine.shutdown()
    assert not engine.socket_path.exists()
    await engine.serve()
    client = await _call(docker.DockerClient, base_url=engine.base_url)
    try:
        assert [c.name for c in await _call(client.containers.list)] == ["web"]
    finally:
        await _call(client.close)
