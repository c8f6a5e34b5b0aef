"""
The kubelet's PodResources v1 API (``v1.PodResourcesLister/List``) over its unix socket: which pod and
container holds which device, and the NVIDIA device-id forms decoded (whole GPU, time-sliced replica, MIG).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nodeagent.sources.grpc_unix import open_channel, rpc_errors, unavailable
from nodeagent.sources.runtime_model import check_socket

LIST_METHOD = "/v1.PodResourcesLister/List"

_GPU_UUID = r"GPU-[0-9a-fA-F-]{36}"
# Indexes are at most 9 ASCII digits: a longer run is no NVIDIA id form (and int() refuses more than 4300 digits).
_WHOLE_OR_REPLICA = re.compile(rf"^(?P<gpu>{_GPU_UUID})(?:::(?P<replica>[0-9]{{1,9}}))?$")
_MIG = re.compile(r"^MIG-[0-9a-fA-F-]{36}$")
# R450/R460 drivers named MIG devices by parent GPU, GPU instance and compute instance.
_MIG_LEGACY = re.compile(rf"^MIG-(?P<gpu>{_GPU_UUID})/(?P<gi>[0-9]{{1,9}})/(?P<ci>[0-9]{{1,9}})$")
# GKE's device plugin: nvidia<N>, nvidia<N>/gi<M>, nvidia<N>/vgpu<k>, nvidia<N>/gi<M>/vgpu<k>.
_GKE = re.compile(r"^nvidia(?P<index>[0-9]{1,9})(?:/gi(?P<gi>[0-9]{1,9}))?(?:/vgpu(?P<replica>[0-9]{1,9}))?$")


@dataclass(frozen=True, slots=True)
class DeviceAllocation:
    """
    One device the kubelet assigned to a container. For NVIDIA devices the id is decoded: ``gpu_uuid`` (whole
    GPU or the parent of a legacy MIG id), ``mig_uuid``, ``gpu_index`` (GKE ids), ``gpu_instance`` /
    ``compute_instance`` (MIG) and ``replica`` (time-slicing or MPS); ``None``/``""`` where the id does not say.
    """

    resource: str
    device_id: str
    namespace: str
    pod: str
    container: str
    gpu_uuid: str = ""
    mig_uuid: str = ""
    gpu_index: int | None = None
    gpu_instance: int | None = None
    compute_instance: int | None = None
    replica: int | None = None


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def decode_device_id(device_id: str) -> dict[str, Any]:
    """The NVIDIA fields of ``DeviceAllocation`` that ``device_id`` carries (empty for other forms)."""
    if m := _WHOLE_OR_REPLICA.match(device_id):
        return {"gpu_uuid": m["gpu"], "replica": _int(m["replica"])}
    if _MIG.match(device_id):
        return {"mig_uuid": device_id}
    if m := _MIG_LEGACY.match(device_id):
        return {"gpu_uuid": m["gpu"], "gpu_instance": int(m["gi"]), "compute_instance": int(m["ci"])}
    if m := _GKE.match(device_id):
        return {"gpu_index": int(m["index"]), "gpu_instance": _int(m["gi"]), "replica": _int(m["replica"])}
    return {}


def allocations(response: Any) -> list[DeviceAllocation]:
    """Flatten a ``ListPodResourcesResponse`` into one allocation per (container, device id)."""
    out: list[DeviceAllocation] = []
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                nvidia = devices.resource_name.startswith("nvidia.com/")
                for device_id in devices.device_ids:
                    out.append(
                        DeviceAllocation(
                            devices.resource_name,
                            device_id,
                            pod.namespace,
                            pod.name,
                            container.name,
                            **(decode_device_id(device_id) if nvidia else {}),
                        )
                    )
    return out


class PodResourcesClient:
    """The kubelet's PodResources endpoint; ``list`` makes one ``List`` call with ``timeout`` seconds."""

    def __init__(self, socket: str, timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel: Any = None

    async def list(self) -> list[DeviceAllocation]:
        """
        Every device assigned to a container on this node.

        Raises:
            RuntimeUnavailable: socket missing or refused, the call failed (``RESOURCE_EXHAUSTED`` when the
                kubelet's rate limit rejected it) or timed out.
        """
        if self._channel is None:
            check_socket(self.socket)
            self._channel = open_channel(self.socket)
        from nodeagent.sources.proto import podresources_v1_pb2 as pr

        fn = self._channel.unary_unary(
            LIST_METHOD,
            request_serializer=pr.ListPodResourcesRequest.SerializeToString,
            response_deserializer=pr.ListPodResourcesResponse.FromString,
        )
        try:
            response = await fn(pr.ListPodResourcesRequest(), timeout=self.timeout)
        except rpc_errors() as exc:
            raise unavailable(exc, "List", self.socket) from exc
        return allocations(response)

    async def aclose(self) -> None:
        """Close the channel."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
