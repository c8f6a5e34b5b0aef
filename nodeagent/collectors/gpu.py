"""
NVIDIA GPUs over NVML: health, performance, memory, power, clocks, errors, MIG instances, Xid errors and per-workload
use. Every NVML call runs on one dedicated thread (a wedged driver call cannot be cancelled, so a cycle that overruns
fails, the next ones fail fast until the thread is free, and the first after that initialises NVML again). Families
are ``nodeagent_gpu_*`` in base units; see docs/gpu.md and docs/metrics.md. Shell equivalent: ``nvidia-smi -q``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from nodeagent.collector import CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.collectors.cgroups import BASE_LABELS
from nodeagent.events import emit, workload_fields
from nodeagent.metrics import Exemplar, LabelValues, MetricFamily, MetricType, Sample
from nodeagent.scheduler import new_trace_ids
from nodeagent.sources.blocking import DaemonThreadExecutor
from nodeagent.sources.nvml import GpuProcess, GpuSample, Nvml, NvmlUnavailable, XidEvent, init_hint, watch_xids
from nodeagent.workloads import Workload, WorkloadResolver

if TYPE_CHECKING:
    from nodeagent.sources.podresources import DeviceAllocation

GPU_LABELS = ("gpu", "uuid")
INSTANCE_LABELS = ("gpu_instance", "compute_instance")
MIG_LABELS = (*GPU_LABELS, *INSTANCE_LABELS, "profile")
WORKLOAD_LABELS = (*GPU_LABELS, *INSTANCE_LABELS, *BASE_LABELS)


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


# Reading suffix (nodeagent.sources.nvml) -> family, in exposition order. Labels follow GPU_LABELS.
FAMILIES: dict[str, _Family] = {
    "utilization": _Family(
        "nodeagent_gpu_utilization_ratio",
        "gauge",
        "Fraction of NVML's last sample period (1/6 s to 1 s) an engine was busy (gpu and memory are absent on "
        "MIG-enabled GPUs).",
        ("engine",),
    ),
    "memory_total": _Family("nodeagent_gpu_memory_total_bytes", "gauge", "Framebuffer memory in total."),
    "memory_used": _Family("nodeagent_gpu_memory_used_bytes", "gauge", "Framebuffer memory in use."),
    "memory_free": _Family("nodeagent_gpu_memory_free_bytes", "gauge", "Framebuffer memory free."),
    "memory_reserved": _Family(
        "nodeagent_gpu_memory_reserved_bytes", "gauge", "Framebuffer memory reserved by the driver and firmware."
    ),
    "power": _Family("nodeagent_gpu_power_watts", "gauge", "Power draw."),
    "power_limit": _Family("nodeagent_gpu_power_limit_watts", "gauge", "Enforced power limit."),
    "energy": _Family(
        "nodeagent_gpu_energy_joules_total", "counter", "Energy consumed since the driver was loaded (resets then)."
    ),
    "temperature": _Family("nodeagent_gpu_temperature_celsius", "gauge", "Temperature, by sensor.", ("sensor",)),
    "temperature_threshold": _Family(
        "nodeagent_gpu_temperature_threshold_celsius",
        "gauge",
        "Temperature at which the GPU slows down, shuts down, or which it should stay under.",
        ("threshold",),
    ),
    "clock": _Family("nodeagent_gpu_clock_hertz", "gauge", "Current clock.", ("clock",)),
    "clock_max": _Family("nodeagent_gpu_clock_max_hertz", "gauge", "Maximum clock.", ("clock",)),
    "performance_state": _Family(
        "nodeagent_gpu_performance_state", "gauge", "Performance state (0 = P0, the fastest; 15 the slowest)."
    ),
    "fan_speed": _Family(
        "nodeagent_gpu_fan_speed_ratio", "gauge", "Intended fan speed as a fraction of its maximum.", ("fan",)
    ),
    "clocks_event_reason": _Family(
        "nodeagent_gpu_clocks_event_reason",
        "gauge",
        "1 while this reason holds the clocks down (NVML clocks event reasons, formerly throttle reasons).",
        ("reason",),
    ),
    "clocks_event_seconds": _Family(
        "nodeagent_gpu_clocks_event_seconds_total",
        "counter",
        "Time the clocks were held down for this reason, since the driver was loaded.",
        ("reason",),
    ),
    "ecc_errors": _Family(
        "nodeagent_gpu_ecc_errors_total",
        "counter",
        "ECC memory errors; counter=volatile since the last driver load, aggregate over the board's life.",
        ("type", "counter"),
    ),
    "retired_pages": _Family(
        "nodeagent_gpu_retired_pages_total", "counter", "Framebuffer pages retired, by cause (pre-Ampere).", ("cause",)
    ),
    "retired_pages_pending": _Family(
        "nodeagent_gpu_retired_pages_pending", "gauge", "1 if pages await retirement at the next driver reload."
    ),
    "remapped_rows": _Family(
        "nodeagent_gpu_remapped_rows_total", "counter", "Memory rows remapped, by error type (Ampere+).", ("type",)
    ),
    "remapped_rows_pending": _Family(
        "nodeagent_gpu_remapped_rows_pending", "gauge", "1 if a row remapping awaits a GPU reset."
    ),
    "remapped_rows_failure": _Family(
        "nodeagent_gpu_remapped_rows_failure", "gauge", "1 if a row remapping failed (the GPU needs service)."
    ),
    "pcie_link_generation": _Family("nodeagent_gpu_pcie_link_generation", "gauge", "Current PCIe link generation."),
    "pcie_link_width": _Family("nodeagent_gpu_pcie_link_width", "gauge", "Current PCIe link width in lanes."),
    "pcie_replay": _Family("nodeagent_gpu_pcie_replay_total", "counter", "PCIe replays (link-level retransmits)."),
    "pcie_transmit_bytes": _Family(
        "nodeagent_gpu_pcie_transmit_bytes_total", "counter", "Bytes the GPU sent over PCIe."
    ),
    "pcie_receive_bytes": _Family(
        "nodeagent_gpu_pcie_receive_bytes_total", "counter", "Bytes the GPU received over PCIe."
    ),
    "nvlink_transmit_bytes": _Family(
        "nodeagent_gpu_nvlink_transmit_bytes_total", "counter", "Data bytes sent over an NVLink.", ("link",)
    ),
    "nvlink_receive_bytes": _Family(
        "nodeagent_gpu_nvlink_receive_bytes_total", "counter", "Data bytes received over an NVLink.", ("link",)
    ),
    "nvlink_errors": _Family(
        "nodeagent_gpu_nvlink_errors_total",
        "counter",
        "NVLink data-link errors (replay, recovery, CRC), by link.",
        ("link", "type"),
    ),
}
MIG_MEMORY = {
    "memory_total": _Family("nodeagent_gpu_mig_memory_total_bytes", "gauge", "A MIG device's framebuffer memory."),
    "memory_used": _Family("nodeagent_gpu_mig_memory_used_bytes", "gauge", "A MIG device's framebuffer memory in use."),
    "memory_free": _Family("nodeagent_gpu_mig_memory_free_bytes", "gauge", "A MIG device's framebuffer memory free."),
}
ENGINES = ("sm", "memory", "encoder", "decoder")


class GpuConfig(CollectorConfig):
    """Options of the ``gpu`` collector."""

    # Attribute GPU processes to the workloads (cgroups) they run in; needs the host's /proc (hostPID).
    processes: bool = True
    # Follow critical Xid errors on an NVML event set (a thread of its own).
    xid_events: bool = True


class NvmlBusy(TimeoutError):
    """The previous NVML pass has not returned: the driver or a GPU is not answering (counted as a timeout)."""


class GpuCollector:
    """Samples every GPU on one NVML thread; attributes GPU processes to workloads through the shared resolver."""

    def __init__(self, ctx: CollectorContext, cfg: GpuConfig, nvml: Nvml | None = None) -> None:
        self._cfg = cfg
        self._log = ctx.log
        self._resolver: WorkloadResolver = ctx.resolver()
        # A daemon thread: a wedged NVML call must not keep the agent from exiting.
        self._executor = DaemonThreadExecutor(1, "nodeagent-nvml")
        self._busy = threading.Lock()
        self._recheck = False  # a pass overran: re-initialise NVML before the next one
        self._nvml = nvml
        self._uuids: dict[int, str] = {}  # index -> uuid of GPUs seen, so a lost GPU keeps its labels
        self._xids: dict[tuple[str, str, str], int] = {}  # (gpu index, uuid, xid) -> count
        self._xid_lock = threading.Lock()
        self._xid_exemplars: dict[LabelValues, Exemplar] = {}  # the trace id of the last event of each
        # Workloads last seen per (gpu uuid, gpu instance or None): what an Xid event names as affected.
        self._gpu_workloads: dict[tuple[str, int | None], list[Workload]] = {}
        self._watcher: threading.Thread | None = None
        self._xid_gpus = 0  # GPUs the Xid watch is subscribed to now
        self._stop = threading.Event()

    async def collect(self) -> Sequence[MetricFamily]:
        """One pass over every GPU on the NVML thread, then attribution and families on the event loop."""
        allocations = await self._allocations()
        if not self._busy.acquire(blocking=False):
            raise NvmlBusy("the previous NVML pass has not returned (a GPU or the driver is not answering)")
        try:
            future = self._executor.submit(self._pass)
        except BaseException:
            self._busy.release()
            raise
        future.add_done_callback(lambda _: self._busy.release())
        try:
            gpus = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self._recheck = True  # the scheduler's timeout: the thread finishes the call, then NVML is re-checked
            raise
        if gpus is None:  # NVML went away after GPUs had been seen: report them down
            gpus = [GpuSample(i, u, up=False) for i, u in sorted(self._uuids.items())]
        families = self._families(gpus, allocations)
        if self._cfg.xid_events and self._watcher is None and self._uuids:
            # Started once the first pass named the GPUs and their workloads, which Xid events refer to.
            self._watcher = threading.Thread(target=self._watch_xids, name="nodeagent-nvml-xid", daemon=True)
            self._watcher.start()
        return families

    async def _allocations(self) -> list[DeviceAllocation]:
        meta = self._resolver.metadata
        devices = meta.devices if meta is not None else None
        return await devices.allocations() if devices is not None else []

    def _pass(self) -> list[GpuSample] | None:
        if self._nvml is None:
            try:
                self._nvml = Nvml()
            except ImportError as exc:
                raise NoDataError(f"nvidia-ml-py is not installed: {exc}", "pip install nvidia-ml-py") from exc
        nvml = self._nvml
        if self._recheck:
            self._recheck = False
            nvml.shutdown()
        try:
            gpus = nvml.sample()
        except NvmlUnavailable as exc:
            if self._uuids:
                self._log.debug("gpu.nvml_unavailable", message=exc.reason)
                return None
            raise NoDataError(exc.reason, init_hint(exc.code)) from exc
        uuids = dict(self._uuids)
        uuids.update((s.index, s.uuid) for s in gpus if s.uuid)
        self._uuids = uuids  # swapped whole: the Xid thread reads it
        return gpus

    # --- Xid events (their own thread: nvmlEventSetWait blocks in C) ------------------------------------

    def _watch_xids(self) -> None:
        backoff = 1.0
        nv = self._nvml.nv if self._nvml is not None else None
        failing = ""
        while not self._stop.is_set():
            try:
                watch_xids(self._count_xid, self._stop, nv, on_registered=self._xid_registered)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive a driver hiccup
                if self._xid_gpus:
                    backoff = 1.0  # the session had been subscribed: start the backoff over
                self._xid_gpus = 0
                if self._stop.is_set():
                    break
                reason = f"{type(exc).__name__}: {exc}"
                # Warn when the watch breaks (or breaks differently); repeats of one failure go to debug.
                log = self._log.debug if reason == failing else self._log.warning
                log("gpu.xid_watch_failed", message=f"Xid event watch stopped ({reason}); retrying in {backoff:g}s")
                failing = reason
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _xid_registered(self, count: int) -> None:
        self._xid_gpus = count

    def _count_xid(self, event: XidEvent) -> None:
        index = next((str(i) for i, u in self._uuids.items() if u == event.uuid), "")
        key = (index, event.uuid, str(event.xid))
        workloads = self._gpu_workloads.get((event.uuid, event.gpu_instance)) or self._gpu_workloads.get(
            (event.uuid, None), []
        )
        trace_id = log_xid_event(self._log, index, event, workloads)
        with self._xid_lock:
            self._xids[key] = self._xids.get(key, 0) + 1
            self._xid_exemplars[key] = Exemplar(trace_id, 1.0, event.time)

    # --- families ----------------------------------------------------------------------------------------------

    def _families(self, gpus: list[GpuSample], allocations: list[DeviceAllocation]) -> list[MetricFamily]:
        nvml = self._nvml
        rows: dict[str, list[Sample]] = {}
        up: list[Sample] = []
        info: list[Sample] = []
        mig_info: list[Sample] = []
        processes: dict[tuple[str, ...], float] = {}
        attributed = _Attribution()
        for s in gpus:
            key = (str(s.index), s.uuid or self._uuids.get(s.index, ""))
            up.append((key, 1.0 if s.up else 0.0))
            if not s.up:
                continue
            info.append(
                (
                    (
                        *key,
                        s.name,
                        s.pci_bus_id,
                        f"nvidia{s.minor}" if s.minor is not None else "",
                        s.serial,
                        nvml.driver_version if nvml else "",
                        nvml.cuda_version if nvml else "",
                        s.info.get("mig_mode", ""),
                        s.info.get("compute_mode", ""),
                        s.info.get("persistence_mode", ""),
                    ),
                    1.0,
                )
            )
            for suffix, values in s.readings.items():
                bucket = rows.setdefault(suffix, [])
                bucket.extend(((*key, *labels), value) for labels, value in values.items())
            for m in s.mig:
                mkey = (*key, str(m.gpu_instance), str(m.compute_instance), m.profile)
                mig_info.append(((*mkey, m.uuid, m.name), 1.0))
                for suffix, values in m.readings.items():
                    if suffix in MIG_MEMORY:
                        rows.setdefault("mig_" + suffix, []).extend(((*mkey, *lb), v) for lb, v in values.items())
            if not s.mig:  # zero rows too, so "no processes" is a value and not an absence
                processes[(*key, "", "")] = 0.0
            for m in s.mig:
                processes[(*key, str(m.gpu_instance), str(m.compute_instance))] = 0.0
            for p in _unique(s.processes):
                pkey = (*key, _id(p.gpu_instance), _id(p.compute_instance))
                processes[pkey] = processes.get(pkey, 0.0) + 1
            if self._cfg.processes:
                attributed.add(self._resolver, key, s)
        out = [
            MetricFamily(
                "nodeagent_gpu_up", "gauge", "1 if the GPU answers NVML, 0 if it is lost.", GPU_LABELS, tuple(up)
            ),
            MetricFamily(
                "nodeagent_gpu_info",
                "info",
                "A GPU's identity, driver and modes.",
                (
                    *GPU_LABELS,
                    "name",
                    "pci_bus_id",
                    "device",
                    "serial",
                    "driver_version",
                    "cuda_version",
                    "mig_mode",
                    "compute_mode",
                    "persistence_mode",
                ),
                tuple(info),
            ),
        ]
        for suffix, fam in FAMILIES.items():
            if rows.get(suffix):
                out.append(MetricFamily(fam.name, fam.type, fam.help, (*GPU_LABELS, *fam.labels), tuple(rows[suffix])))
        if mig_info:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_mig_info",
                    "info",
                    "A MIG device: its GPU instance, compute instance, profile and uuid.",
                    (*MIG_LABELS, "mig_uuid", "name"),
                    tuple(mig_info),
                )
            )
            for suffix, fam in MIG_MEMORY.items():
                if rows.get("mig_" + suffix):
                    out.append(MetricFamily(fam.name, fam.type, fam.help, MIG_LABELS, tuple(rows["mig_" + suffix])))
        out.append(
            MetricFamily(
                "nodeagent_gpu_processes",
                "gauge",
                "Compute and graphics processes on a GPU or MIG instance (instances are empty for a whole GPU).",
                (*GPU_LABELS, *INSTANCE_LABELS),
                tuple(processes.items()),
            )
        )
        out += attributed.families()
        self._gpu_workloads = attributed.by_scope  # swapped whole: the Xid thread reads it
        out += self._xid_families()
        alloc = allocation_rows(allocations, gpus, self._uuids)
        if alloc:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_allocation_info",
                    "info",
                    "A GPU, MIG instance or time-sliced replica the kubelet assigned to a container (PodResources).",
                    (*GPU_LABELS, *INSTANCE_LABELS, "replica", "resource", "namespace", "pod", "container"),
                    tuple((labels, 1.0) for labels in alloc),
                )
            )
        return out

    def _xid_families(self) -> list[MetricFamily]:
        with self._xid_lock:
            xids = tuple(((i, u, x), float(n)) for (i, u, x), n in sorted(self._xids.items()))
            exemplars: dict[LabelValues, Exemplar] = dict(self._xid_exemplars)
        out = []
        if self._watcher is not None:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_xid_watch_gpus",
                    "gauge",
                    "GPUs whose critical Xid events the agent is subscribed to (0 while the watch is down).",
                    (),
                    (((), float(self._xid_gpus)),),
                )
            )
        if not xids:
            return out
        return [
            *out,
            MetricFamily(
                "nodeagent_gpu_xid_errors_total",
                "counter",
                "Critical Xid errors the driver reported, by Xid (a counter of every event, not the last value).",
                (*GPU_LABELS, "xid"),
                xids,
                exemplars,
            ),
        ]

    async def aclose(self) -> None:
        """Stop the Xid watcher (its wait returns within a second) and shut NVML down on its thread (without
        waiting for a stuck call)."""
        self._stop.set()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 2.0)
        if self._nvml is not None:
            nvml = self._nvml
            with contextlib.suppress(RuntimeError):  # the executor is already shut down
                self._executor.submit(nvml.shutdown)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def _unique(processes: list[GpuProcess]) -> list[GpuProcess]:
    """One entry per (pid, instance): a process in both the compute and graphics lists counts once."""
    seen: dict[tuple[int, int | None, int | None], GpuProcess] = {}
    for p in processes:
        k = (p.pid, p.gpu_instance, p.compute_instance)
        old = seen.get(k)
        if old is None or (p.used_bytes or 0) > (old.used_bytes or 0):
            seen[k] = p
    return list(seen.values())


class _Attribution:
    """Per-workload sums over GPU processes: memory, process count, utilization by engine."""

    def __init__(self) -> None:
        self.memory: dict[tuple[str, ...], float] = {}
        self.count: dict[tuple[str, ...], float] = {}
        self.util: dict[tuple[str, ...], float] = {}
        self.by_scope: dict[tuple[str, int | None], list[Workload]] = {}  # (gpu uuid, gpu instance) -> workloads

    def add(self, resolver: WorkloadResolver, key: tuple[str, str], s: GpuSample) -> None:
        seen = self.by_scope
        for p in _unique(s.processes):
            w = resolver.resolve(p.pid)
            if w is None:
                continue  # exited since NVML listed it, or not visible (no host PID namespace)
            for scope in {(key[1], None), (key[1], p.gpu_instance)}:
                listed = seen.setdefault(scope, [])
                if w not in listed:
                    listed.append(w)
            wkey = (
                *key,
                _id(p.gpu_instance),
                _id(p.compute_instance),
                w.id,
                w.name,
                w.image,
                w.container,
                w.pod,
                w.namespace,
            )
            self.count[wkey] = self.count.get(wkey, 0.0) + 1
            if p.used_bytes is not None:
                self.memory[wkey] = self.memory.get(wkey, 0.0) + p.used_bytes
            util = s.process_utilization.get(p.pid)
            if util is not None:
                for engine, value in zip(ENGINES, util, strict=True):
                    ukey = (*wkey, engine)
                    self.util[ukey] = min(1.0, self.util.get(ukey, 0.0) + value)

    def families(self) -> list[MetricFamily]:
        out: list[MetricFamily] = []
        if self.memory:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_workload_memory_used_bytes",
                    "gauge",
                    "GPU memory used by a workload's processes on a GPU or MIG instance.",
                    WORKLOAD_LABELS,
                    tuple(self.memory.items()),
                )
            )
        if self.count:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_workload_processes",
                    "gauge",
                    "A workload's processes on a GPU or MIG instance.",
                    WORKLOAD_LABELS,
                    tuple(self.count.items()),
                )
            )
        if self.util:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_workload_utilization_ratio",
                    "gauge",
                    "A workload's use of a GPU engine since the last cycle: the busiest NVML per-process sample of "
                    "each of its processes, summed and capped at 1 (not available under MIG).",
                    (*WORKLOAD_LABELS, "engine"),
                    tuple(self.util.items()),
                )
            )
        return out


def allocation_rows(
    allocations: list[DeviceAllocation], gpus: list[GpuSample], uuids: dict[int, str]
) -> list[tuple[str, ...]]:
    """
    Label rows of ``nodeagent_gpu_allocation_info``: each NVIDIA device the kubelet assigned, matched to a GPU this
    pass saw (by GPU uuid, MIG device uuid, or index for GKE's ``nvidia<N>`` ids). Devices of other vendors and
    devices on no GPU of this host are left out.
    """
    by_uuid = {u: i for i, u in uuids.items()}
    mig: dict[str, tuple[str, int, int]] = {}  # MIG uuid -> (gpu uuid, gi, ci)
    mig_ci: dict[tuple[str, int], int] = {}  # (gpu uuid, gi) -> ci
    for s in gpus:
        for m in s.mig:
            mig[m.uuid] = (s.uuid, m.gpu_instance, m.compute_instance)
            mig_ci.setdefault((s.uuid, m.gpu_instance), m.compute_instance)
    out: set[tuple[str, ...]] = set()
    for a in allocations:
        gi, ci = a.gpu_instance, a.compute_instance
        if a.mig_uuid:
            if a.mig_uuid not in mig:
                continue
            gpu_uuid, gi, ci = mig[a.mig_uuid]
        elif a.gpu_uuid:
            gpu_uuid = a.gpu_uuid
        elif a.gpu_index is not None:
            gpu_uuid = uuids.get(a.gpu_index, "")
        else:
            continue
        if gpu_uuid not in by_uuid:
            continue
        if gi is not None and ci is None:
            ci = mig_ci.get((gpu_uuid, gi))
        out.add(
            (
                str(by_uuid[gpu_uuid]),
                gpu_uuid,
                _id(gi),
                _id(ci),
                _id(a.replica),
                a.resource,
                a.namespace,
                a.pod,
                a.container,
            )
        )
    return sorted(out)


def xid_event_fields(index: str, event: XidEvent, workloads: list[Workload]) -> dict[str, Any]:
    """ECS fields of one Xid event; the GPU's workloads (from the last pass) name what it may have hit."""
    fields: dict[str, Any] = {
        "event.code": str(event.xid),
        "nodeagent.gpu.index": index,
        "nodeagent.gpu.uuid": event.uuid,
        "nodeagent.gpu.xid": event.xid,
    }
    if event.gpu_instance is not None:
        fields["nodeagent.gpu.gpu_instance"] = event.gpu_instance
    if event.compute_instance is not None:
        fields["nodeagent.gpu.compute_instance"] = event.compute_instance
    if workloads:
        fields.update(workload_fields(workloads[0]))
        if len(workloads) > 1:
            fields["nodeagent.gpu.workloads"] = [x.id for x in workloads]
    return fields


def log_xid_event(
    log: structlog.typing.FilteringBoundLogger, index: str, event: XidEvent, workloads: list[Workload]
) -> str:
    """Log one Xid error as it arrives, with a fresh trace id (returned)."""
    message = f"GPU {index} ({event.uuid}) reported Xid {event.xid}"
    return emit(log, "gpu_xid", message, xid_event_fields(index, event, workloads), trace_id=new_trace_ids()[0])


SPEC = CollectorSpec(
    name="gpu",
    description="NVIDIA GPUs over NVML: health, use, memory, power, clocks, errors, MIG, Xid, per-workload use.",
    config_model=GpuConfig,
    factory=GpuCollector,
)
