"""
nodeagent's CRI client (``nodeagent.sources.cri.CriClient``) against the real CRI plugin of a private containerd
(``containerd_harness``), driven the way a kubelet drives it: ``RunPodSandbox`` (host network: the harness has no
CNI), ``CreateContainer`` and ``StartContainer`` in a kubepods cgroup; then what nodeagent makes of it: the cgroup
paths and ``classify``, ``CriClient.list()`` beside the native ``ContainerdClient``, and the polling metadata store
logging a ``container_stop`` event and dropping the removed container.

Every test's pod is stopped and removed through CRI, then the harness removes whatever is left (also after a
failed assertion) and fails the test if anything of it survives.
"""

from __future__ import annotations

import asyncio
import json
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from nodeagent.runtimes import RuntimeMetadata
from nodeagent.sources.containerd import ContainerdClient
from nodeagent.sources.cri import CriClient
from nodeagent.sources.proto import cri_runtime_v1_pb2 as cri
from nodeagent.sources.runtime_model import CRI_KIND, ContainerRecord
from nodeagent.workloads import classify
from tests.integration.containerd_harness import (
    BUSYBOX_REF,
    CRI_PLUGIN,
    MEMORY_V1,
    PAUSE_REF,
    Containerd,
    alive,
    prerequisites_and_image,
    proc_cgroup,
)

pytestmark = [pytest.mark.integration, pytest.mark.root]

MEMORY = MEMORY_V1
K8S_NS = "k8s.io"  # the containerd namespace of the CRI plugin
CALL_TIMEOUT = 30.0
POD_NAME, POD_NAMESPACE, CONTAINER = "web-0", "shop", "nginx"

M = TypeVar("M", bound=Message)
T = TypeVar("T")


def _image_service_messages() -> tuple[type[Message], type[Message]]:
    """
    ``ImageStatusRequest`` and ``ImageStatusResponse`` of ``runtime.v1.ImageService``, which nodeagent's reduced
    CRI proto leaves out: only ``ImageSpec.image`` and ``Image.id``, ``repo_tags``, ``repo_digests``, with the
    public field numbers, built in a private descriptor pool (the rest of the answer is kept as unknown fields).
    """
    f = descriptor_pb2.FileDescriptorProto(
        name="nodeagent_tests_cri_images.proto", package="runtime.v1", syntax="proto3"
    )
    fdp = descriptor_pb2.FieldDescriptorProto
    one, many = fdp.LABEL_OPTIONAL, fdp.LABEL_REPEATED

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for field_name, number, label, type_name in fields:
            field = m.field.add(name=field_name, number=number, label=label, type=fdp.TYPE_STRING)
            if type_name:
                field.type, field.type_name = fdp.TYPE_MESSAGE, type_name

    message("ImageSpec", ("image", 1, one, ""))
    message("ImageStatusRequest", ("image", 1, one, ".runtime.v1.ImageSpec"))
    message("Image", ("id", 1, one, ""), ("repo_tags", 2, many, ""), ("repo_digests", 3, many, ""))
    message("ImageStatusResponse", ("image", 1, one, ".runtime.v1.Image"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    request, response = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"runtime.v1.{name}"))
        for name in ("ImageStatusRequest", "ImageStatusResponse")
    )
    return request, response


ImageStatusRequest, ImageStatusResponse = _image_service_messages()


class CriRuntime:
    """A kubelet's side of CRI: a plain synchronous gRPC channel to the runtime's socket."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel("unix:" + address)

    def call(self, method: str, request: Message, response_type: type[M], service: str = "RuntimeService") -> M:
        fn = self.channel.unary_unary(
            f"/runtime.v1.{service}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        response: M = fn(request, timeout=CALL_TIMEOUT)
        return response

    def image_id(self, ref: str) -> str:
        """CRI's image id (``sha256:`` of the image config) of ``ref``; ``""`` while the CRI plugin does not know it."""
        request: Any = ImageStatusRequest()
        request.image.image = ref
        response: Any = self.call("ImageStatus", request, ImageStatusResponse, service="ImageService")
        return str(response.image.id) if response.HasField("image") else ""

    def close(self) -> None:
        self.channel.close()


def pod_labels(uid: str) -> dict[str, str]:
    """The kubelet's labels of pod ``shop/web-0`` (its sandbox), plus the pod's own label ``app=web``."""
    return {
        "app": "web",
        "io.kubernetes.pod.name": POD_NAME,
        "io.kubernetes.pod.namespace": POD_NAMESPACE,
        "io.kubernetes.pod.uid": uid,
    }


def container_labels(uid: str, name: str) -> dict[str, str]:
    """The kubelet's labels of container ``name`` of pod ``shop/web-0``."""
    return {
        "io.kubernetes.container.name": name,
        "io.kubernetes.pod.name": POD_NAME,
        "io.kubernetes.pod.namespace": POD_NAMESPACE,
        "io.kubernetes.pod.uid": uid,
    }


def namespaces() -> cri.NamespaceOption:
    """What a kubelet asks for a hostNetwork pod without shareProcessNamespace."""
    return cri.NamespaceOption(network=cri.NODE, pid=cri.CONTAINER, ipc=cri.POD)


def sandbox_config(uid: str, cgroup_parent: str, log_directory: Path) -> cri.PodSandboxConfig:
    """
    The sandbox of pod ``shop/web-0`` on the host network. No ``hostname``: like the kubelet for a hostNetwork
    pod, since the sandbox shares the host's UTS namespace and runc refuses "to set hostname without a private
    UTS namespace".
    """
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=POD_NAME, uid=uid, namespace=POD_NAMESPACE, attempt=0),
        log_directory=str(log_directory),
        labels=pod_labels(uid),
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=namespaces()),
        ),
    )


def archive_digests(tarball: Path, ref: str) -> tuple[str, str]:
    """(manifest digest, config digest) of image ``ref`` in the harness's OCI archive."""
    with tarfile.open(tarball) as tar:

        def blob(name: str) -> Any:
            member = tar.extractfile(name)
            assert member is not None, name
            return json.load(member)

        for manifest in blob("index.json")["manifests"]:
            if manifest["annotations"]["io.containerd.image.name"] == ref:
                digest = str(manifest["digest"])
                config = blob("blobs/" + digest.replace(":", "/"))["config"]
                return digest, str(config["digest"])
    raise AssertionError(f"{ref} is not in {tarball}")


@dataclass
class Pod:
    """Pod ``shop/web-0``: a running sandbox and one running container ``nginx`` of ``BUSYBOX_REF``."""

    ctrd: Containerd
    runtime: CriRuntime
    uid: str
    cgroup_parent: str
    config: cri.PodSandboxConfig
    sandbox_id: str
    container_id: str
    # CRI's image id of BUSYBOX_REF (its config digest) and the manifest digest, from the archive.
    image_id: str
    manifest_digest: str

    def pid(self, container_id: str) -> int:
        """The init pid of a running task (sandbox or container)."""
        pid, status = self.ctrd.tasks(K8S_NS).get(container_id, (0, "absent"))
        assert status == "RUNNING" and pid > 0, f"task {container_id} is {status}"
        return pid

    def create_container(self, name: str, image: cri.ImageSpec) -> str:
        """CreateContainer + StartContainer of ``sleep 3600`` in the sandbox, as the kubelet would; its id."""
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=0),
            image=image,
            command=["/bin/sleep", "3600"],
            labels=container_labels(self.uid, name),
            log_path=f"{name}/0.log",
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(namespace_options=namespaces())
            ),
        )
        request = cri.CreateContainerRequest(pod_sandbox_id=self.sandbox_id, config=config, sandbox_config=self.config)
        container_id = self.runtime.call("CreateContainer", request, cri.CreateContainerResponse).container_id
        # close() then kills what is still in its cgroup and checks its process is gone (the harness only knows
        # the cgroups of its own run_container).
        self.ctrd.container_cgroups.add(f"{self.cgroup_parent}/{container_id}")
        start = cri.StartContainerRequest(container_id=container_id)
        self.runtime.call("StartContainer", start, cri.StartContainerResponse)
        self.ctrd.containers[(K8S_NS, container_id)] = self.pid(container_id)
        return container_id

    def container_status(self, container_id: str) -> cri.ContainerStatus:
        request = cri.ContainerStatusRequest(container_id=container_id)
        return self.runtime.call("ContainerStatus", request, cri.ContainerStatusResponse).status


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll (blocking) until ``predicate()`` is truthy; returns it."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


async def eventually(predicate: Callable[[], T | None], limit: float, what: str) -> T:
    """Poll (on the event loop) until ``predicate()`` is truthy, for at most ``limit`` seconds; returns it."""
    deadline = time.monotonic() + limit
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    """
    Pod ``shop/web-0`` in ``/kubepods/burstable/pod<uid>`` on a private containerd, made through CRI. Afterwards
    StopPodSandbox and RemovePodSandbox (also when the test failed), then the harness's close(), which kills
    and removes whatever is left and fails the test if something survives.
    """
    image = prerequisites_and_image()
    manifest_digest, config_digest = archive_digests(image, BUSYBOX_REF)
    uid = str(uuid.uuid4())
    cgroup_parent = f"/kubepods/burstable/pod{uid}"
    log_directory = tmp_path / "pods" / f"{POD_NAMESPACE}_{POD_NAME}_{uid}"
    log_directory.mkdir(parents=True)
    cleanup_errors: list[str] = []
    with Containerd(tmp_path) as ctrd:
        assert ctrd.plugins()[CRI_PLUGIN] == "ok", ctrd.log(40)
        ctrd.import_image(image, K8S_NS)
        runtime = CriRuntime(ctrd.address)
        sandbox_id = ""
        try:
            # The CRI plugin learns of imported images from containerd's events, asynchronously: RunPodSandbox
            # right after the import could miss the pause image and try to pull it (there is no registry).
            image_id = wait_for(lambda: runtime.image_id(BUSYBOX_REF), 10, "the CRI plugin to know the busybox image")
            wait_for(lambda: runtime.image_id(PAUSE_REF), 10, "the CRI plugin to know the pause image")
            assert image_id == config_digest
            ctrd.track_cgroup_parent(cgroup_parent)  # runc makes the pod's cgroups; close() removes them
            config = sandbox_config(uid, cgroup_parent, log_directory)
            response = runtime.call("RunPodSandbox", cri.RunPodSandboxRequest(config=config), cri.RunPodSandboxResponse)
            sandbox_id = response.pod_sandbox_id
            ctrd.container_cgroups.add(f"{cgroup_parent}/{sandbox_id}")
            p = Pod(ctrd, runtime, uid, cgroup_parent, config, sandbox_id, "", image_id, manifest_digest)
            ctrd.containers[(K8S_NS, sandbox_id)] = p.pid(sandbox_id)
            p.container_id = p.create_container(CONTAINER, cri.ImageSpec(image=BUSYBOX_REF))
            yield p
        finally:
            if sandbox_id and ctrd.running:  # stops and removes its containers too; close() does the rest
                stop = cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
                remove = cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
                for method, request, response_type in (
                    ("StopPodSandbox", stop, cri.StopPodSandboxResponse),
                    ("RemovePodSandbox", remove, cri.RemovePodSandboxResponse),
                ):
                    try:
                        runtime.call(method, request, response_type)
                    except grpc.RpcError as exc:
                        cleanup_errors.append(f"{method}: {exc}\ncontainerd log tail:\n{ctrd.log(20)}")
            runtime.close()
    # After close() (which raised if anything of this containerd was left): every process of the pod is gone.
    assert not [pid for pid in ctrd.containers.values() if alive(pid)]
    assert cleanup_errors == []


def test_cri_pod_cgroups(pod: Pod) -> None:
    """The sandbox and the container get ``<cgroup_parent>/<id>``, which ``classify`` reads as the pod's containers."""
    for container_id in (pod.container_id, pod.sandbox_id):
        cgroup = f"{pod.cgroup_parent}/{container_id}"
        groups = proc_cgroup(pod.pid(container_id))
        assert groups["memory"] == cgroup
        assert groups["cpu"] == cgroup
        workload = classify(cgroup)
        assert workload is not None
        assert (workload.kind, workload.container_id, workload.pod_uid) == ("container", container_id, pod.uid)
        assert (workload.parent, workload.qos_class) == (pod.cgroup_parent, "burstable")
        # A bare id (cgroupfs driver): classify cannot tell the runtime; the metadata store names it later.
        assert workload.runtime == ""
    pod_workload = classify(pod.cgroup_parent)
    assert pod_workload is not None
    assert (pod_workload.kind, pod_workload.pod_uid) == ("pod", pod.uid)
    with open(f"/proc/{pod.pid(pod.container_id)}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"/bin/sleep", b"3600"]


async def test_cri_list(pod: Pod) -> None:
    """CriClient.list() sees the sandbox and the container as CRI describes them; the native client agrees."""
    client = CriClient(pod.ctrd.address)
    try:
        records = {r.id: r for r in await client.list()}
    finally:
        await client.aclose()
    version = pod.runtime.call("Version", cri.VersionRequest(version="v1"), cri.VersionResponse)
    assert version.runtime_name == "containerd"
    assert client.runtime_name == version.runtime_name
    assert set(records) == {pod.sandbox_id, pod.container_id}

    sandbox = records[pod.sandbox_id]
    assert sandbox.sandbox and sandbox.running
    assert (sandbox.runtime, sandbox.name, sandbox.image) == ("containerd", pod.sandbox_id, "")
    assert (sandbox.pod_uid, sandbox.pod_name, sandbox.pod_namespace) == (pod.uid, POD_NAME, POD_NAMESPACE)
    assert sandbox.labels == pod_labels(pod.uid)
    assert sandbox.container_name == ""

    container = records[pod.container_id]
    assert not container.sandbox and container.running
    assert (container.runtime, container.name, container.container_name) == ("containerd", pod.container_id, CONTAINER)
    assert (container.pod_uid, container.pod_name, container.pod_namespace) == (pod.uid, POD_NAME, POD_NAMESPACE)
    # containerd 1.6 answers ListContainers with the ImageSpec that CreateContainer was given, verbatim: the ref
    # here, because that is what this test sent (a kubelet sends the image id there: see
    # test_kubelet_style_image_spec). image_ref is CRI's image id, the sha256 of the image config.
    assert container.image == BUSYBOX_REF
    assert container.image_id == pod.image_id
    assert container.labels == container_labels(pod.uid, CONTAINER)

    native_client = ContainerdClient(pod.ctrd.address)
    try:
        native = {r.id: r for r in await native_client.list() if r.runtime_namespace == K8S_NS}
    finally:
        await native_client.aclose()
    assert set(native) == {pod.sandbox_id, pod.container_id}
    n_sandbox, n_container = native[pod.sandbox_id], native[pod.container_id]
    # The CRI plugin puts the kubelet's labels on its containerd containers and marks their kind.
    assert n_sandbox.labels == {**pod_labels(pod.uid), CRI_KIND: "sandbox"}
    assert n_container.labels == {**container_labels(pod.uid, CONTAINER), CRI_KIND: "container"}
    assert n_sandbox.sandbox and not n_container.sandbox
    assert (n_sandbox.image, n_container.image) == (PAUSE_REF, BUSYBOX_REF)
    for record in (n_sandbox, n_container):
        assert (record.pod_uid, record.pod_name, record.pod_namespace) == (pod.uid, POD_NAME, POD_NAMESPACE)
        assert record.runtime_handler == "io.containerd.runc.v2"
    assert n_container.container_name == CONTAINER
    # The native client's image_id is the manifest digest, CRI's the config digest: the same image, two ids.
    assert n_container.image_id == pod.manifest_digest != container.image_id


async def test_cri_poll_logs_stop_and_drops_removed(pod: Pod, log: Any, events: list[dict[str, Any]]) -> None:
    """The metadata store polls CRI: a stopped container is logged as container_stop, a removed one is dropped."""
    meta = RuntimeMetadata([CriClient(pod.ctrd.address)], log, poll_interval=0.2)
    meta.start()
    try:
        await eventually(
            lambda: meta.statuses["cri"].state == "up" and pod.container_id in meta.index.containers,
            10,
            "the CRI watcher to list the container",
        )
        assert meta.index.containers[pod.container_id].running
        pod_record = meta.pod(pod.uid)
        assert pod_record is not None
        assert (pod_record.name, pod_record.namespace, pod_record.labels["app"]) == (POD_NAME, POD_NAMESPACE, "web")

        stop = cri.StopContainerRequest(container_id=pod.container_id, timeout=0)
        await asyncio.to_thread(pod.runtime.call, "StopContainer", stop, cri.StopContainerResponse)
        assert pod.container_status(pod.container_id).state == cri.CONTAINER_EXITED

        def stop_event() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in events
                    if e.get("event.action") == "container_stop" and e.get("container.id") == pod.container_id
                ),
                None,
            )

        event = await eventually(stop_event, 10, f"a container_stop event of {pod.container_id}")
        assert event["event"] == f"container {POD_NAMESPACE}/{POD_NAME}/{CONTAINER} stopped"
        assert event["event.type"] == ["end"]
        assert event["container.runtime"] == "containerd"
        assert event["container.image.name"] == BUSYBOX_REF.rsplit(":", 1)[0]
        assert event["container.image.tag"] == [BUSYBOX_REF.rsplit(":", 1)[1]]
        assert (event["kubernetes.pod.uid"], event["kubernetes.container.name"]) == (pod.uid, CONTAINER)
        stopped = meta.index.containers[pod.container_id]
        assert not stopped.running
        # The sandbox keeps running, and nothing else started or stopped.
        assert meta.index.containers[pod.sandbox_id].running
        actions = [(e["event.action"], e["container.id"]) for e in events if "event.action" in e]
        assert actions == [("container_stop", pod.container_id)]

        remove = cri.RemoveContainerRequest(container_id=pod.container_id)
        await asyncio.to_thread(pod.runtime.call, "RemoveContainer", remove, cri.RemoveContainerResponse)
        await eventually(
            lambda: pod.container_id not in meta.index.containers, 10, "the removed container to leave the index"
        )
        assert pod.sandbox_id in meta.index.containers
        assert meta.statuses["cri"].state == "up"
        # A stopped container's removal is no second stop.
        assert [e for e in events if e.get("event.action")] == [event]
    finally:
        await meta.aclose()


async def test_kubelet_style_image_spec(pod: Pod) -> None:
    """
    A kubelet creates containers with ``ImageSpec.image`` set to the image id it resolved (and, with cri-api
    0.28+, ``user_specified_image`` to the pod spec's image). containerd 1.6 echoes that id back in ListContainers,
    while ContainerStatus and the native API name the image by its ref, as cAdvisor does.
    """
    spec = cri.ImageSpec(image=pod.image_id, user_specified_image=BUSYBOX_REF)
    sidecar = pod.create_container("sidecar", spec)
    listed = pod.runtime.call("ListContainers", cri.ListContainersRequest(), cri.ListContainersResponse)
    (item,) = [c for c in listed.containers if c.id == sidecar]
    assert (item.image.image, item.image_ref) == (pod.image_id, pod.image_id)
    assert item.image.user_specified_image == ""  # containerd 1.6 predates the field and drops it
    assert pod.container_status(sidecar).image.image == BUSYBOX_REF

    client = CriClient(pod.ctrd.address)
    try:
        records: dict[str, ContainerRecord] = {r.id: r for r in await client.list()}
    finally:
        await client.aclose()
    record = records[sidecar]
    assert (record.container_name, record.image_id, record.running) == ("sidecar", pod.image_id, True)
    # ListContainers echoes the image id the kubelet created it with; the name comes from ContainerStatus.
    assert record.image == BUSYBOX_REF
