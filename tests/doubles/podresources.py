"""A test double of the kubelet's PodResources v1 gRPC server on a unix socket.

It follows the public kubelet PodResources v1 protocol (service ``v1.PodResourcesLister``: ``List``,
``GetAllocatableResources``, ``Get``; messages from ``nodeagent/sources/proto/podresources_v1.proto``). It is not
a kubelet: the test sets the allocations it answers with. What it copies from the kubelet:

* every pod is listed with all its containers, also those holding no device;
* ``Get`` of an unknown pod fails with code UNKNOWN, message ``pod <name> in namespace <ns> not found``;
* the kubelet rate-limits each call on this socket with a token bucket of 100 QPS, burst 10, and answers a call
  over the limit with RESOURCE_EXHAUSTED ``rejected by rate limit``. ``enforce_rate_limit=True`` applies the same
  bucket; ``set_fault(Fault.RATE_LIMIT)`` rejects every call regardless.

Faults a test can switch on: ``RATE_LIMIT``, ``UNAVAILABLE`` (as while the kubelet restarts), ``HANG`` (answer
only after ``delay_s``; the client's deadline should fire first).

State is swapped atomically: ``set_pods`` replaces one immutable tuple, so a ``List`` in flight answers either
the old or the new allocation, never a mix.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from nodeagent.sources.proto import podresources_v1_pb2 as pb

KUBELET_QPS = 100.0
KUBELET_BURST = 10
RATE_LIMIT_MESSAGE = "rejected by rate limit"
SERVICE = "v1.PodResourcesLister"

GPU_RESOURCE = "nvidia.com/gpu"
MIG_1G_10GB_RESOURCE = "nvidia.com/mig-1g.10gb"


# --- allocations -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceAlloc:
    """Devices of one extended resource assigned to a container (``ContainerDevices``)."""

    resource_name: str
    device_ids: tuple[str, ...]
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class DraDevice:
    """One device of a DRA claim (``ClaimResource``)."""

    driver_name: str
    pool_name: str
    device_name: str
    cdi_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class DraClaim:
    """A DRA resource claim used by a container (``DynamicResource``)."""

    claim_name: str
    claim_namespace: str
    devices: tuple[DraDevice, ...] = ()


@dataclass(frozen=True)
class MemoryAlloc:
    """Memory or hugepages pinned by the memory manager (``ContainerMemory``)."""

    memory_type: str
    size: int
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContainerAlloc:
    """What the kubelet assigned to one container."""

    name: str
    devices: tuple[DeviceAlloc, ...] = ()
    cpu_ids: tuple[int, ...] = ()
    memory: tuple[MemoryAlloc, ...] = ()
    dynamic_resources: tuple[DraClaim, ...] = ()


@dataclass(frozen=True)
class PodAlloc:
    """A pod and its containers, as ``List`` reports it."""

    name: str
    namespace: str
    containers: tuple[ContainerAlloc, ...] = ()


def _topology(nodes: Iterable[int]) -> pb.TopologyInfo | None:
    ids = list(nodes)
    return pb.TopologyInfo(nodes=[pb.NUMANode(ID=n) for n in ids]) if ids else None


def device_message(dev: DeviceAlloc) -> pb.ContainerDevices:
    """The wire form of ``dev``."""
    return pb.ContainerDevices(
        resource_name=dev.resource_name, device_ids=list(dev.device_ids), topology=_topology(dev.numa_nodes)
    )


def container_message(ctr: ContainerAlloc) -> pb.ContainerResources:
    """The wire form of ``ctr``."""
    return pb.ContainerResources(
        name=ctr.name,
        devices=[device_message(d) for d in ctr.devices],
        cpu_ids=list(ctr.cpu_ids),
        memory=[
            pb.ContainerMemory(memory_type=m.memory_type, size=m.size, topology=_topology(m.numa_nodes))
            for m in ctr.memory
        ],
        dynamic_resources=[
            pb.DynamicResource(
                claim_name=c.claim_name,
                claim_namespace=c.claim_namespace,
                claim_resources=[
                    pb.ClaimResource(
                        cdi_devices=[pb.CDIDevice(name=n) for n in d.cdi_devices],
                        driver_name=d.driver_name,
                        pool_name=d.pool_name,
                        device_name=d.device_name,
                    )
                    for d in c.devices
                ],
            )
            for c in ctr.dynamic_resources
        ],
    )


def pod_message(pod: PodAlloc) -> pb.PodResources:
    """The wire form of ``pod``."""
    return pb.PodResources(
        name=pod.name, namespace=pod.namespace, containers=[container_message(c) for c in pod.containers]
    )


# --- typical NVIDIA device plugin allocations ----------------------------------------------------------------

_UUID_NS = uuid.UUID("6f1d3f4e-3b7a-4c55-9a39-0c4b8f0e2a11")


def gpu_uuid(index: int) -> str:
    """A stable GPU UUID as NVML and the NVIDIA device plugin spell it: ``GPU-<uuid>``."""
    return f"GPU-{uuid.uuid5(_UUID_NS, f'gpu-{index}')}"


def mig_uuid(gpu_index: int, instance: int) -> str:
    """A stable MIG device UUID (drivers from R470): ``MIG-<uuid>``."""
    return f"MIG-{uuid.uuid5(_UUID_NS, f'mig-{gpu_index}-{instance}')}"


def whole_gpus(*indexes: int, numa_node: int | None = None) -> DeviceAlloc:
    """Whole GPUs (``nvidia.com/gpu``, device ids ``GPU-<uuid>``)."""
    return DeviceAlloc(GPU_RESOURCE, tuple(gpu_uuid(i) for i in indexes), () if numa_node is None else (numa_node,))


def mig_slices(
    gpu_index: int, *instances: int, resource_name: str = MIG_1G_10GB_RESOURCE, numa_node: int | None = None
) -> DeviceAlloc:
    """MIG slices under the "mixed" strategy (``nvidia.com/mig-1g.10gb``, device ids ``MIG-<uuid>``)."""
    return DeviceAlloc(
        resource_name,
        tuple(mig_uuid(gpu_index, i) for i in instances),
        () if numa_node is None else (numa_node,),
    )


def shared_gpu(gpu_index: int, *replicas: int, resource_name: str = GPU_RESOURCE) -> DeviceAlloc:
    """Time-sliced replicas of one GPU: device ids ``GPU-<uuid>::<n>`` (``resource_name`` is
    ``nvidia.com/gpu.shared`` when the plugin's ``renameByDefault`` is on)."""
    return DeviceAlloc(resource_name, tuple(f"{gpu_uuid(gpu_index)}::{n}" for n in replicas))


def typical_allocations() -> tuple[PodAlloc, ...]:
    """A node with 4 GPUs: GPUs 0-1 whole to a training pod, GPU 2 split into MIG slices for two inference pods,
    GPU 3 time-sliced between two notebooks, and a pod without devices.

    ======================  ===========  ==========================================
    pod (namespace)         container    devices
    ======================  ===========  ==========================================
    train-0 (ml)            trainer      nvidia.com/gpu GPU-<0>, GPU-<1> (NUMA 0)
                            sidecar      none
    infer-0 (ml)            server       nvidia.com/mig-1g.10gb MIG-<2/0>
    infer-1 (ml)            server       nvidia.com/mig-1g.10gb MIG-<2/1>
    notebook-a (research)   jupyter      nvidia.com/gpu GPU-<3>::0
    notebook-b (research)   jupyter      nvidia.com/gpu GPU-<3>::1
    web (default)           nginx        none
    ======================  ===========  ==========================================
    """
    return (
        PodAlloc(
            "train-0",
            "ml",
            (
                ContainerAlloc("trainer", (whole_gpus(0, 1, numa_node=0),), cpu_ids=(2, 3, 4, 5)),
                ContainerAlloc("sidecar"),
            ),
        ),
        PodAlloc("infer-0", "ml", (ContainerAlloc("server", (mig_slices(2, 0),)),)),
        PodAlloc("infer-1", "ml", (ContainerAlloc("server", (mig_slices(2, 1),)),)),
        PodAlloc("notebook-a", "research", (ContainerAlloc("jupyter", (shared_gpu(3, 0),)),)),
        PodAlloc("notebook-b", "research", (ContainerAlloc("jupyter", (shared_gpu(3, 1),)),)),
        PodAlloc("web", "default", (ContainerAlloc("nginx"),)),
    )


# --- the server ------------------------------------------------------------------------------------------------


class Fault(enum.Enum):
    """How the double misbehaves."""

    NONE = "none"
    RATE_LIMIT = "rate_limit"  # RESOURCE_EXHAUSTED "rejected by rate limit"
    UNAVAILABLE = "unavailable"  # UNAVAILABLE, as while the kubelet restarts
    HANG = "hang"  # answer after delay_s


class TokenBucket:
    """``golang.org/x/time/rate.Limiter.Allow``: starts full with ``burst`` tokens, refills ``qps`` per second."""

    def __init__(self, qps: float, burst: int, clock: Any = time.monotonic) -> None:
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        """Take a token if one is there."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _Servicer:
    """The three PodResourcesLister methods, registered by name (``_handler``) as the kubelet serves them."""

    def __init__(self, double: PodResourcesDouble) -> None:
        self._double = double

    async def List(  # gRPC method names
        self, request: pb.ListPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPodResourcesResponse:
        await self._double._admit("List", context)
        pods = self._double.pods  # one read of the swapped tuple
        return pb.ListPodResourcesResponse(pod_resources=[pod_message(p) for p in pods])

    async def GetAllocatableResources(
        self, request: pb.AllocatableResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.AllocatableResourcesResponse:
        await self._double._admit("GetAllocatableResources", context)
        return pb.AllocatableResourcesResponse(
            devices=[device_message(d) for d in self._double.allocatable_devices],
            cpu_ids=list(self._double.allocatable_cpu_ids),
        )

    async def Get(
        self, request: pb.GetPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPodResourcesResponse:
        await self._double._admit("Get", context)
        if not self._double.get_enabled:
            await context.abort(grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
        for pod in self._double.pods:
            if pod.name == request.pod_name and pod.namespace == request.pod_namespace:
                return pb.GetPodResourcesResponse(pod_resources=pod_message(pod))
        await context.abort(
            grpc.StatusCode.UNKNOWN, f"pod {request.pod_name} in namespace {request.pod_namespace} not found"
        )
        raise AssertionError("unreachable: abort raises")


def _handler(servicer: _Servicer) -> grpc.GenericRpcHandler:
    """Service ``v1.PodResourcesLister`` with its public method names and message types."""

    def unary(method: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request.FromString, response_serializer=response.SerializeToString
        )

    return grpc.method_handlers_generic_handler(
        "v1.PodResourcesLister",
        {
            "List": unary(servicer.List, pb.ListPodResourcesRequest, pb.ListPodResourcesResponse),
            "GetAllocatableResources": unary(
                servicer.GetAllocatableResources, pb.AllocatableResourcesRequest, pb.AllocatableResourcesResponse
            ),
            "Get": unary(servicer.Get, pb.GetPodResourcesRequest, pb.GetPodResourcesResponse),
        },
    )


class PodResourcesDouble:
    """Test double of the kubelet PodResources v1 gRPC server (public protocol) on ``socket_path``.

    Use ``async with PodResourcesDouble(path, typical_allocations()) as kubelet:`` or ``await start()`` /
    ``await stop()``. ``calls`` counts every call received per method (rejected ones included), ``answered`` the
    ones answered with OK.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        pods: Iterable[PodAlloc] = (),
        *,
        allocatable_devices: Iterable[DeviceAlloc] = (),
        allocatable_cpu_ids: Iterable[int] = (),
        enforce_rate_limit: bool = False,
        qps: float = KUBELET_QPS,
        burst: int = KUBELET_BURST,
        get_enabled: bool = True,
    ) -> None:
        self.socket_path = Path(socket_path)
        self._pods: tuple[PodAlloc, ...] = tuple(pods)
        self.allocatable_devices: tuple[DeviceAlloc, ...] = tuple(allocatable_devices)
        self.allocatable_cpu_ids: tuple[int, ...] = tuple(allocatable_cpu_ids)
        self.limiter: TokenBucket | None = TokenBucket(qps, burst) if enforce_rate_limit else None
        self.get_enabled = get_enabled
        self.calls: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.fault = Fault.NONE
        self.delay_s = 0.0
        self._fault_times: int | None = None
        self._server: grpc.aio.Server | None = None

    # state

    @property
    def target(self) -> str:
        """The gRPC target of the socket: ``unix:<absolute path>``."""
        return f"unix:{self.socket_path}"

    @property
    def pods(self) -> tuple[PodAlloc, ...]:
        """The allocations ``List`` answers with now."""
        return self._pods

    def set_pods(self, pods: Iterable[PodAlloc]) -> None:
        """Replace all allocations at once."""
        self._pods = tuple(pods)

    def set_fault(self, fault: Fault, *, delay_s: float = 30.0, times: int | None = None) -> None:
        """Misbehave from the next call on: for ``times`` calls, or until ``clear_fault`` when None.

        ``delay_s`` is how long ``Fault.HANG`` waits before answering normally.
        """
        self.fault = fault
        self.delay_s = delay_s
        self._fault_times = times

    def clear_fault(self) -> None:
        """Behave again."""
        self.set_fault(Fault.NONE)

    @property
    def total_calls(self) -> int:
        """All calls received, every method."""
        return sum(self.calls.values())

    # lifecycle

    async def start(self) -> PodResourcesDouble:
        """Listen on the socket (an old socket file there is removed first, as the kubelet does)."""
        if self._server is not None:
            raise RuntimeError("already started")
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handler(_Servicer(self)),))
        if server.add_insecure_port(self.target) == 0:
            raise RuntimeError(f"cannot listen on {self.target}")
        await server.start()
        self._server = server
        return self

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening (calls in flight are cancelled after ``grace``) and remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        self.socket_path.unlink(missing_ok=True)

    async def __aenter__(self) -> PodResourcesDouble:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # per call

    async def _admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Count the call and apply the fault or the rate limit; returns when the call may be answered."""
        self.calls[method] += 1
        fault = self.fault
        if fault is not Fault.NONE and self._fault_times is not None:
            self._fault_times -= 1
            if self._fault_times <= 0:
                self.fault, self._fault_times = Fault.NONE, None
        if fault is Fault.RATE_LIMIT or (self.limiter is not None and not self.limiter.allow()):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMIT_MESSAGE)
        if fault is Fault.UNAVAILABLE:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is restarting")
        if fault is Fault.HANG:
            await asyncio.sleep(self.delay_s)
        self.answered[method] += 1
