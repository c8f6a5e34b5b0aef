"""
The Kubernetes CRI (``runtime.v1.RuntimeService``) over a runtime's unix socket: pod sandboxes and containers
of CRI-O, or of containerd's CRI plugin. CRI has no event stream that every runtime serves, so the metadata store
polls ``list``.
"""

from __future__ import annotations

import re
from typing import Any

from nodeagent.sources.grpc_unix import open_channel, rpc_errors, unavailable
from nodeagent.sources.runtime_model import ContainerRecord, RuntimeUnavailable, check_socket, k8s_fields

_SERVICE = "/runtime.v1.RuntimeService/"
# runtime.v1 enums: PodSandboxState SANDBOX_READY = 0; ContainerState CONTAINER_RUNNING = 1.
SANDBOX_READY = 0
CONTAINER_RUNNING = 1
# An image id rather than a name: what a kubelet puts in CreateContainer's ImageSpec, and containerd echoes back.
_IMAGE_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{64}$")


class CriClient:
    """One CRI endpoint; every call has ``timeout`` seconds. ``runtime_name`` is what the runtime's ``Version``
    reports (``cri-o``, ``containerd``), learned on the first list."""

    runtime = "cri"

    def __init__(self, socket: str, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self.runtime_name = ""
        self._channel: Any = None
        # Container id -> image name, for containers that ListContainers names by image id (asked once each).
        self._image_names: dict[str, str] = {}

    def _open(self) -> Any:
        if self._channel is None:
            check_socket(self.socket)
            self._channel = open_channel(self.socket)
        return self._channel

    async def _call(self, method: str, request: Any, response_type: Any) -> Any:
        fn = self._open().unary_unary(
            _SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return await fn(request, timeout=self.timeout)
        except rpc_errors() as exc:
            raise unavailable(exc, method, self.socket) from exc

    async def list(self) -> list[ContainerRecord]:
        """Every pod sandbox and container the runtime knows (sandboxes as records with ``sandbox=True``)."""
        self._open()
        from nodeagent.sources.proto import cri_runtime_v1_pb2 as cri

        if not self.runtime_name:
            version = await self._call("Version", cri.VersionRequest(version="v1"), cri.VersionResponse)
            self.runtime_name = version.runtime_name or "cri"
        sandboxes = await self._call("ListPodSandbox", cri.ListPodSandboxRequest(), cri.ListPodSandboxResponse)
        containers = await self._call("ListContainers", cri.ListContainersRequest(), cri.ListContainersResponse)
        records: list[ContainerRecord] = []
        pods: dict[str, Any] = {}
        self._image_names = {c.id: n for c in containers.containers if (n := self._image_names.get(c.id))}
        for sb in sandboxes.items:
            md = sb.metadata
            pods[sb.id] = md
            records.append(
                ContainerRecord(
                    id=sb.id,
                    runtime=self.runtime_name,
                    name=sb.id,
                    image="",
                    runtime_handler=sb.runtime_handler,
                    labels=dict(sb.labels),
                    pod_uid=md.uid,
                    pod_name=md.name,
                    pod_namespace=md.namespace,
                    sandbox=True,
                    running=sb.state == SANDBOX_READY,
                )
            )
        for c in containers.containers:
            labels = dict(c.labels)
            fields = k8s_fields(labels)
            md = pods.get(c.pod_sandbox_id)
            if md is not None:  # the sandbox's metadata is authoritative for the pod
                fields["pod_uid"], fields["pod_name"], fields["pod_namespace"] = md.uid, md.name, md.namespace
            if not fields["container_name"]:
                fields["container_name"] = c.metadata.name
            records.append(
                ContainerRecord(
                    id=c.id,
                    runtime=self.runtime_name,
                    # cAdvisor names CRI-O and containerd containers by id too.
                    name=c.id,
                    image=await self._image_name(c),
                    image_id=c.image_ref,
                    labels=labels,
                    running=c.state == CONTAINER_RUNNING,
                    **fields,
                )
            )
        return records

    async def _image_name(self, c: Any) -> str:
        """
        The name of a container's image. ListContainers returns the ImageSpec that CreateContainer was given, and
        the kubelet gives the image id (``sha256:...``) there; then ``user_specified_image`` (cri-api 0.28+), else
        ContainerStatus, which names the image by its tag (asked once per container; the id if it has no tag).
        """
        image = str(c.image.image)
        if not _IMAGE_ID.match(image):
            return image
        if c.image.user_specified_image:
            return str(c.image.user_specified_image)
        name = self._image_names.get(c.id)
        if name is None:
            from nodeagent.sources.proto import cri_runtime_v1_pb2 as cri

            request = cri.ContainerStatusRequest(container_id=c.id)
            try:
                status = await self._call("ContainerStatus", request, cri.ContainerStatusResponse)
            except RuntimeUnavailable:
                return image  # removed since the list, or the runtime went away (the next list says which)
            name = self._image_names[c.id] = status.status.image.image or image
        return name

    def events(self) -> None:
        """No event stream: the store polls ``list``."""
        return None

    async def aclose(self) -> None:
        """Close the channel."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
