"""
containerd's native gRPC API over its unix socket: containers of every namespace (``k8s.io``, ``moby``,
``default``, ...) with labels, image and runtime, each image's manifest digest, and the event stream
(container create/update/delete, task start/exit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nodeagent.sources.grpc_unix import open_channel, rpc_errors, unavailable
from nodeagent.sources.runtime_model import (
    ContainerEvent,
    ContainerRecord,
    RuntimeUnavailable,
    check_socket,
    is_sandbox,
    k8s_fields,
)

# gRPC metadata key that carries the namespace of a call (containerd's namespaces package).
NAMESPACE_KEY = "containerd-namespace"
# Topics the watcher subscribes to; filters in one Subscribe are OR-ed.
EVENT_TOPICS = ("/containers/create", "/containers/update", "/containers/delete", "/tasks/start", "/tasks/exit")
_IMAGE_CACHE_MAX = 4096


# 10000-01-01: a later time (only a corrupt event has one) cannot be printed as an ISO 8601 date.
_MAX_EVENT_TIME = 253402300800.0


def _timestamp(ts: Any) -> float:
    """A protobuf Timestamp in Unix seconds; 0 (unknown) when it is not a plausible date."""
    seconds = float(ts.seconds) + float(ts.nanos) / 1e9
    return seconds if 0 < seconds < _MAX_EVENT_TIME else 0.0


class ContainerdClient:
    """
    One connection to containerd. ``namespaces`` limits which namespaces are read (empty: all of them).
    Every unary call has ``timeout`` seconds; failures raise ``RuntimeUnavailable``.
    """

    runtime = "containerd"

    def __init__(self, socket: str, timeout: float = 5.0, namespaces: tuple[str, ...] = ()) -> None:
        self.socket = socket
        self.timeout = timeout
        self.namespaces = namespaces
        self._channel: Any = None
        self._image_ids: dict[tuple[str, str], str] = {}
        self.undecodable = 0  # event payloads skipped because they did not decode

    def _open(self) -> Any:
        if self._channel is None:
            check_socket(self.socket)
            self._channel = open_channel(self.socket)
        return self._channel

    async def _call(self, method: str, request: Any, response_type: Any, namespace: str = "") -> Any:
        channel = self._open()
        fn = channel.unary_unary(
            method, request_serializer=type(request).SerializeToString, response_deserializer=response_type.FromString
        )
        metadata = ((NAMESPACE_KEY, namespace),) if namespace else None
        try:
            return await fn(request, timeout=self.timeout, metadata=metadata)
        except rpc_errors() as exc:
            raise unavailable(exc, method.rsplit("/", 1)[-1], self.socket) from exc

    async def list_namespaces(self) -> list[str]:
        """The namespaces to read: the configured ones, or every namespace containerd has."""
        if self.namespaces:
            return list(self.namespaces)
        from nodeagent.sources.proto import containerd_namespaces_pb2 as ns_pb

        resp = await self._call(
            "/containerd.services.namespaces.v1.Namespaces/List",
            ns_pb.ListNamespacesRequest(),
            ns_pb.ListNamespacesResponse,
        )
        return [n.name for n in resp.namespaces]

    async def list(self) -> list[ContainerRecord]:
        """Every container of every namespace read, with its image's manifest digest."""
        self._open()
        from nodeagent.sources.proto import containerd_containers_pb2 as c_pb

        records: list[ContainerRecord] = []
        for ns in await self.list_namespaces():
            resp = await self._call(
                "/containerd.services.containers.v1.Containers/List",
                c_pb.ListContainersRequest(),
                c_pb.ListContainersResponse,
                ns,
            )
            for c in resp.containers:
                records.append(await self._record(ns, c))
        return records

    async def get(self, namespace: str, container_id: str) -> ContainerRecord | None:
        """One container, or ``None`` if it no longer exists."""
        import grpc

        from nodeagent.sources.proto import containerd_containers_pb2 as c_pb

        try:
            resp = await self._call(
                "/containerd.services.containers.v1.Containers/Get",
                c_pb.GetContainerRequest(id=container_id),
                c_pb.GetContainerResponse,
                namespace,
            )
        except RuntimeUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return await self._record(namespace, resp.container)

    async def _record(self, namespace: str, c: Any) -> ContainerRecord:
        labels = dict(c.labels)
        return ContainerRecord(
            id=c.id,
            runtime=self.runtime,
            # cAdvisor's containerd handler names a container by its id.
            name=c.id,
            image=c.image,
            image_id=await self._image_id(namespace, c.image) if c.image else "",
            runtime_namespace=namespace,
            runtime_handler=c.runtime.name,
            labels=labels,
            sandbox=is_sandbox(labels),
            **k8s_fields(labels),
        )

    async def _image_id(self, namespace: str, image: str) -> str:
        """The image's manifest digest (``sha256:...``), cached; ``""`` if containerd no longer has the image."""
        key = (namespace, image)
        cached = self._image_ids.get(key)
        if cached is not None:
            return cached
        from nodeagent.sources.proto import containerd_images_pb2 as i_pb

        try:
            resp = await self._call(
                "/containerd.services.images.v1.Images/Get",
                i_pb.GetImageRequest(name=image),
                i_pb.GetImageResponse,
                namespace,
            )
            digest = str(resp.image.target.digest)
        except RuntimeUnavailable as exc:
            if "NOT_FOUND" not in exc.reason:
                raise
            digest = ""  # the image was removed after the container was created; not worth a retry per cycle
        if len(self._image_ids) >= _IMAGE_CACHE_MAX:
            self._image_ids.clear()
        self._image_ids[key] = digest
        return digest

    def events(self) -> AsyncIterator[ContainerEvent]:
        """containerd's event stream, decoded into container events."""
        return self._events()

    async def _events(self) -> AsyncIterator[ContainerEvent]:
        channel = self._open()  # before the imports: a missing socket must not cost the protobuf modules
        from google.protobuf.message import DecodeError

        from nodeagent.sources.proto import containerd_event_types_pb2 as ev_pb
        from nodeagent.sources.proto import containerd_events_pb2 as env_pb

        subscribe = channel.unary_stream(
            "/containerd.services.events.v1.Events/Subscribe",
            request_serializer=env_pb.SubscribeRequest.SerializeToString,
            response_deserializer=env_pb.Envelope.FromString,
        )
        call = subscribe(env_pb.SubscribeRequest(filters=[f'topic=="{t}"' for t in EVENT_TOPICS]))
        try:
            async for env in call:
                if self.namespaces and env.namespace not in self.namespaces:
                    continue
                try:
                    event = await self._decode(env, ev_pb)
                except DecodeError:
                    self.undecodable += 1  # a payload not in the documented format: skip it, keep the stream
                    continue
                if event is not None:
                    yield event
        except rpc_errors() as exc:
            raise unavailable(exc, "Subscribe", self.socket) from exc
        finally:
            call.cancel()

    async def _decode(self, env: Any, ev_pb: Any) -> ContainerEvent | None:
        """One envelope as a container event; ``None`` for an exec'd process's exit or an event naming no container.

        Raises:
            DecodeError: the payload does not decode as its topic's message.
        """
        when = _timestamp(env.timestamp)
        topic, payload = env.topic, env.event.value
        if topic in ("/containers/create", "/containers/update"):
            cid = ev_pb.ContainerCreate.FromString(payload).id
            return ContainerEvent("create", cid, await self.get(env.namespace, cid), when) if cid else None
        if topic == "/containers/delete":
            cid = ev_pb.ContainerDelete.FromString(payload).id
            return ContainerEvent("delete", cid, None, when) if cid else None
        if topic == "/tasks/start":
            start = ev_pb.TaskStart.FromString(payload)
            if not start.container_id:
                return None
            return ContainerEvent("start", start.container_id, None, when, pid=start.pid)
        if topic == "/tasks/exit":
            ex = ev_pb.TaskExit.FromString(payload)
            if not ex.container_id or (ex.id and ex.id != ex.container_id):
                return None  # an exec'd process ended, not the container (or the event names none)
            exited = _timestamp(ex.exited_at) if ex.HasField("exited_at") else when
            return ContainerEvent("stop", ex.container_id, None, exited, pid=ex.pid, exit_code=ex.exit_status)
        return None

    async def aclose(self) -> None:
        """Close the channel."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
