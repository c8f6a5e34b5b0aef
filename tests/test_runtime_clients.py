"""
nodeagent's Docker/Podman and PodResources clients against the protocol test doubles in ``tests/doubles``
(no Docker Engine or kubelet runs here), through the metadata store and the ``runtimes`` collector.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.collector import CollectorConfig, CollectorContext
from nodeagent.collectors.runtimes import RuntimesCollector
from nodeagent.runtimes import PodDeviceCache, RuntimeMetadata
from nodeagent.sources.docker import DockerClient
from nodeagent.sources.podresources import PodResourcesClient
from nodeagent.sources.runtime_model import RuntimeUnavailable, check_socket
from nodeagent.workloads import WorkloadResolver
from tests.doubles.docker_engine import DockerEngineDouble
from tests.doubles.podresources import Fault, PodResourcesDouble, gpu_uuid, mig_uuid, typical_allocations
from tests.test_runtimes import until

UID = "3f0c4f2e-8d1a-4b7e-9a8f-2b3c4d5e6f70"
K8S_LABELS = {
    "io.kubernetes.pod.name": "web-0",
    "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.pod.uid": UID,
    "io.kubernetes.container.name": "nginx",
}


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="na-rt-", dir="/tmp"))  # unix socket paths must stay under 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def engine(sockdir: Path) -> AsyncIterator[DockerEngineDouble]:
    async with DockerEngineDouble(sockdir / "docker.sock") as e:
        yield e


async def test_docker_list_and_inspect_give_names_images_and_pod_labels(engine: DockerEngineDouble) -> None:
    web = engine.add_container(None, "k8s_nginx_web-0_shop", "nginx:1.25", labels=K8S_LABELS, pid=4321)
    engine.add_container(None, "db", "postgres:16", running=False)
    client = DockerClient(str(engine.socket_path))
    try:
        records = {r.name: r for r in await client.list()}
        inspected = await client.inspect(web.id)
        gone = await client.inspect("f" * 64)
    finally:
        await client.aclose()

    assert sorted(records) == ["db", "k8s_nginx_web-0_shop"]
    rec = records["k8s_nginx_web-0_shop"]
    assert (rec.id, rec.runtime, rec.image, rec.image_id, rec.running) == (
        web.id, "docker", "nginx:1.25", web.image_id, True)
    assert (rec.pod_name, rec.pod_namespace, rec.pod_uid, rec.container_name) == ("web-0", "shop", UID, "nginx")
    assert records["db"].running is False and records["db"].pod_name == ""
    assert inspected is not None and (inspected.name, inspected.pid, inspected.image) == (
        "k8s_nginx_web-0_shop", 4321, "nginx:1.25")
    assert gone is None


async def test_docker_error_answer_names_the_endpoint(engine: DockerEngineDouble) -> None:
    engine.set_error("containers", 500, "Internal Server Error: database locked")
    client = DockerClient(str(engine.socket_path))
    try:
        with pytest.raises(RuntimeUnavailable) as exc:
            await client.list()
    finally:
        await client.aclose()
    assert "GET /containers/json" in exc.value.reason and "HTTP 500" in exc.value.reason
    assert "database locked" in exc.value.reason


async def test_docker_events_feed_the_store_and_survive_a_daemon_restart(
    engine: DockerEngineDouble, log: Any, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nodeagent.runtimes.BACKOFF_FIRST", 0.05)
    client = DockerClient(str(engine.socket_path), "docker")
    meta = RuntimeMetadata([client], log)
    meta.start()
    try:
        await until(lambda: meta.statuses["docker"].state == "up" and engine.open_event_streams == 1)
        c = engine.add_container(None, "web", "nginx:1.25", labels=K8S_LABELS, pid=5000)
        await until(lambda: any(e.get("event.action") == "container_start" for e in events))
        record = meta.container(c.id)
        assert record is not None and (record.name, record.running, record.pid) == ("web", True, 5000)
        engine.die(c.id, exit_code=3)
        await until(lambda: any(e.get("event.action") == "container_stop" for e in events))

        await engine.shutdown()  # dockerd restarts: the stream ends, the socket goes away
        await until(lambda: meta.statuses["docker"].state == "down")
        assert meta.container(c.id) is None
        await engine.serve()
        await until(lambda: meta.statuses["docker"].state == "up")
        assert meta.container(c.id) is not None
        assert meta.statuses["docker"].reconnects == 1
    finally:
        await meta.aclose()

    start = next(e for e in events if e.get("event.action") == "container_start")
    stop = next(e for e in events if e.get("event.action") == "container_stop")
    assert (start["container.name"], start["kubernetes.pod.name"], start["process.pid"]) == ("web", "web-0", 5000)
    assert (stop["container.id"], stop["process.exit_code"]) == (c.id, 3)


async def test_podman_flavour_is_read_the_same_way(sockdir: Path) -> None:
    async with DockerEngineDouble(sockdir / "podman.sock", flavor="podman") as podman:
        c = podman.add_container(None, "api", "quay.io/acme/api:2")
        client = DockerClient(str(podman.socket_path), "podman")
        try:
            records = await client.list()
        finally:
            await client.aclose()
    assert [(r.id, r.runtime, r.name, r.image) for r in records] == [(c.id, "podman", "api", "quay.io/acme/api:2")]


@pytest.fixture
async def kubelet(sockdir: Path) -> AsyncIterator[PodResourcesDouble]:
    async with PodResourcesDouble(sockdir / "kubelet.sock", typical_allocations()) as k:
        yield k


async def test_podresources_list_decodes_whole_mig_and_time_sliced_gpus(kubelet: PodResourcesDouble) -> None:
    client = PodResourcesClient(str(kubelet.socket_path))
    try:
        allocs = await client.list()
    finally:
        await client.aclose()

    got = {(a.namespace, a.pod, a.container, a.resource, a.device_id): a for a in allocs}
    assert sorted((k[1], k[2], k[4]) for k in got) == sorted([
        ("train-0", "trainer", gpu_uuid(0)),
        ("train-0", "trainer", gpu_uuid(1)),
        ("infer-0", "server", mig_uuid(2, 0)),
        ("infer-1", "server", mig_uuid(2, 1)),
        ("notebook-a", "jupyter", gpu_uuid(3) + "::0"),
        ("notebook-b", "jupyter", gpu_uuid(3) + "::1"),
    ])
    shared = got[("research", "notebook-b", "jupyter", "nvidia.com/gpu", gpu_uuid(3) + "::1")]
    assert (shared.gpu_uuid, shared.replica) == (gpu_uuid(3), 1)
    mig = got[("ml", "infer-1", "server", "nvidia.com/mig-1g.10gb", mig_uuid(2, 1))]
    assert (mig.mig_uuid, mig.gpu_uuid) == (mig_uuid(2, 1), "")


async def test_podresources_rate_limit_and_hang_are_errors_not_stalls(kubelet: PodResourcesDouble, log: Any) -> None:
    kubelet.set_fault(Fault.RATE_LIMIT, times=1)
    client = PodResourcesClient(str(kubelet.socket_path), timeout=0.5)
    cache = PodDeviceCache(client, log, min_interval=0.0)
    try:
        assert await cache.allocations() == []
        assert cache.calls == {"rate_limited": 1}
        assert "RESOURCE_EXHAUSTED" in cache.status.reason
        assert len(await cache.allocations()) == 6
        kubelet.set_fault(Fault.HANG, delay_s=30.0)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert len(await cache.allocations()) == 6  # the last answer, kept while fresh
        assert loop.time() - began < 2.0
        assert cache.calls == {"rate_limited": 1, "ok": 1, "error": 1}
        assert "no answer in time" in cache.status.reason or "DEADLINE_EXCEEDED" in cache.status.reason
    finally:
        kubelet.clear_fault()
        await cache.aclose()


async def test_runtimes_collector_reports_sources_and_device_assignments(
    engine: DockerEngineDouble, kubelet: PodResourcesDouble, sockdir: Path, log: Any
) -> None:
    engine.add_container(None, "web", "nginx:1.25", labels=K8S_LABELS)
    missing = DockerClient(str(sockdir / "podman.sock"), "podman")
    meta = RuntimeMetadata([DockerClient(str(engine.socket_path)), missing], log)
    meta.devices = PodDeviceCache(PodResourcesClient(str(kubelet.socket_path)), log)
    resolver = WorkloadResolver.__new__(WorkloadResolver)
    WorkloadResolver.__init__(resolver, paths=None, metadata=meta)  # type: ignore[arg-type]
    collector = RuntimesCollector(CollectorContext("runtimes", None, log, resolver), CollectorConfig())  # type: ignore[arg-type]
    try:
        families = {f.name: f for f in await collector.collect()}
    finally:
        await meta.aclose()

    assert dict(families["nodeagent_runtime_up"].samples) == {
        ("docker", str(engine.socket_path)): 1.0,
        ("kubelet-podresources", str(kubelet.socket_path)): 1.0,
    }  # podman's socket never existed: no row
    assert dict(families["nodeagent_runtime_containers"].samples)[("docker",)] == 1.0
    devices = {labels for labels, _ in families["nodeagent_pod_device_info"].samples}
    assert ("ml", "train-0", "trainer", "nvidia.com/gpu", gpu_uuid(1)) in devices and len(devices) == 6
    assert dict(families["nodeagent_kubelet_podresources_requests_total"].samples) == {("ok",): 1.0}
    assert meta.statuses["podman"].reason == f"socket {sockdir / 'podman.sock'} does not exist"


def test_socket_the_agent_may_not_use_is_reported_as_permission_denied(sockdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a socket another user may not open")
    path = sockdir / "root-only.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    os.chmod(path, 0o600)
    os.chmod(sockdir, 0o755)
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # the child drops to nobody and checks the socket
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    check_socket(str(path))
                    message = "usable"
                except RuntimeUnavailable as exc:
                    message = exc.reason
                os.write(write_end, message.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as f:
            reason = f.read().decode()
    finally:
        srv.close()
    assert reason == f"permission denied on {path}: run as root or add this user to the socket's group"


def test_socket_checks_name_missing_and_not_a_socket(sockdir: Path) -> None:
    with pytest.raises(RuntimeUnavailable, match="does not exist"):
        check_socket(str(sockdir / "absent.sock"))
    (sockdir / "file").write_text("")
    with pytest.raises(RuntimeUnavailable, match="is not a unix socket"):
        check_socket(str(sockdir / "file"))


def test_agent_without_runtime_sockets_never_loads_grpc_or_protobuf(sockdir: Path) -> None:
    """grpcio costs ~18 MiB of memory: a host without containerd, CRI or kubelet sockets must not pay it."""
    code = (
        "import asyncio, sys\n"
        "from nodeagent.config import AgentConfig\n"
        "from nodeagent.agent import Agent\n"
        f"cfg = AgentConfig.model_validate({{'paths': {{'rootfs': {str(sockdir)!r}}}}})\n"
        "agent = Agent(cfg)\n"
        "async def main():\n"
        "    agent.metadata.start()\n"
        "    await asyncio.sleep(0.3)\n"
        "    await agent.metadata.aclose()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


@pytest.mark.parametrize(
    "line",
    [b"not json\n", b"[1, 2]\n", b'{"Type": "network", "Action": "connect", "Actor": {"ID": "n1"}}\n',
     b'{"Type": "container", "Action": "exec_start: sh", "Actor": {"ID": "c1"}}\n',
     b'{"Type": "container", "Action": "start", "Actor": {}}\n'],
)
async def test_docker_event_lines_that_are_not_container_changes_are_skipped(line: bytes) -> None:
    assert await DockerClient("/nonexistent.sock")._event(line) is None


async def test_docker_die_with_a_bad_exit_code_still_counts_as_a_stop() -> None:
    line = b'{"Type": "container", "Action": "die", "Actor": {"ID": "c1", "Attributes": {"exitCode": "oops"}},' \
           b' "time": 1700000000}\n'
    event = await DockerClient("/nonexistent.sock")._event(line)
    assert event is not None and (event.action, event.container_id, event.exit_code, event.time) == (
        "stop", "c1", None, 1700000000.0)
