"""
NVIDIA GPUs over NVML: health, performance, memory, power, clocks, errors, per-workload use. Every NVML call runs on
one dedicated thread (a wedged driver call cannot be cancelled, so a cycle that overruns fails and the next one
fails fast until the thread is free). Families are ``nodeagent_gpu_*`` in base units; see docs/metrics.md.
Shell equivalent: ``nvidia-smi -q``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import structlog

from nodeagent.collector import CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.collectors.cgroups import BASE_LABELS
from nodeagent.metrics import MetricFamily, MetricType, Sample
from nodeagent.scheduler import new_trace_ids
from nodeagent.sources.nvml import LIFECYCLE, TIMEOUT, XID_CRITICAL_ERROR, GpuSample, Nvml, NvmlUnavailable, error_code
from nodeagent.workloads import Workload, WorkloadResolver

GPU_LABELS = ("gpu", "uuid")

# (value key in GpuSample.values, family, type, help)
_SIMPLE: tuple[tuple[str, str, MetricType, str], ...] = (
    ("memory_total", "nodeagent_gpu_memory_total_bytes", "gauge", "Framebuffer memory in total."),
    ("memory_used", "nodeagent_gpu_memory_used_bytes", "gauge", "Framebuffer memory in use."),
    ("memory_free", "nodeagent_gpu_memory_free_bytes", "gauge", "Framebuffer memory free."),
    ("memory_reserved", "nodeagent_gpu_memory_reserved_bytes", "gauge", "Framebuffer memory reserved by the driver."),
    ("power", "nodeagent_gpu_power_watts", "gauge", "Power draw."),
    ("power_limit", "nodeagent_gpu_power_limit_watts", "gauge", "Enforced power limit."),
    ("energy", "nodeagent_gpu_energy_joules_total", "counter", "Energy consumed since the driver was loaded."),
    ("temperature", "nodeagent_gpu_temperature_celsius", "gauge", "GPU die temperature."),
    ("performance_state", "nodeagent_gpu_performance_state", "gauge", "Performance state (0 = P0, fastest)."),
    ("retired_pages_pending", "nodeagent_gpu_retired_pages_pending", "gauge", "1 if retired pages await a reboot."),
    ("remapped_rows_pending", "nodeagent_gpu_remapped_rows_pending", "gauge", "1 if row remapping awaits a reset."),
    ("remapped_rows_failure", "nodeagent_gpu_remapped_rows_failure", "gauge", "1 if a row remapping failed."),
    ("pcie_link_generation", "nodeagent_gpu_pcie_link_generation", "gauge", "Current PCIe link generation."),
    ("pcie_link_width", "nodeagent_gpu_pcie_link_width", "gauge", "Current PCIe link width (lanes)."),
    ("pcie_replay", "nodeagent_gpu_pcie_replay_total", "counter", "PCIe replays."),
)
_UTILIZATION = (
    ("utilization_gpu", "gpu"),
    ("utilization_memory", "memory"),
    ("utilization_encoder", "encoder"),
    ("utilization_decoder", "decoder"),
)
# (labelled key, family, label name, type, help)
_LABELLED: tuple[tuple[str, str, str, MetricType, str], ...] = (
    ("clock", "nodeagent_gpu_clock_hertz", "clock", "gauge", "Current clock."),
    ("max_clock", "nodeagent_gpu_clock_max_hertz", "clock", "gauge", "Maximum clock."),
    (
        "temperature_threshold",
        "nodeagent_gpu_temperature_threshold_celsius",
        "threshold",
        "gauge",
        "Temperature threshold.",
    ),
    (
        "clocks_event_reason",
        "nodeagent_gpu_clocks_event_reason",
        "reason",
        "gauge",
        "1 while this reason holds the clocks down (NVML clocks event reasons).",
    ),
    ("remapped_rows", "nodeagent_gpu_remapped_rows_total", "type", "counter", "Rows remapped, by error type."),
)


class GpuConfig(CollectorConfig):
    """Options of the ``gpu`` collector."""


class GpuCollector:
    """Samples every GPU on one NVML thread; attributes GPU processes to workloads through the shared resolver."""

    def __init__(self, ctx: CollectorContext, cfg: GpuConfig, nvml: Nvml | None = None) -> None:
        self._ctx = ctx
        self._log = ctx.log
        self._resolver: WorkloadResolver = ctx.resolver()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nodeagent-nvml")
        self._busy = threading.Lock()
        self._nvml = nvml
        self._uuids: dict[int, str] = {}  # index -> uuid of GPUs seen, so a lost GPU keeps its labels
        # Xid watcher: counts per (gpu index, uuid, xid), and the workloads last seen on each GPU (for the event).
        self._xids: dict[tuple[str, str, str], int] = {}
        self._xid_lock = threading.Lock()
        self._gpu_workloads: dict[str, list[Workload]] = {}
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()

    async def collect(self) -> Sequence[MetricFamily]:
        """One pass over every GPU on the NVML thread."""
        if not self._busy.acquire(blocking=False):
            raise TimeoutError("the previous NVML pass has not returned (a GPU or the driver is not answering)")
        try:
            future = self._executor.submit(self._pass)
        except BaseException:
            self._busy.release()
            raise
        future.add_done_callback(lambda _: self._busy.release())
        return await asyncio.wrap_future(future)

    def _pass(self) -> list[MetricFamily]:
        if self._nvml is None:
            try:
                self._nvml = Nvml()
            except ImportError as exc:
                raise NoDataError(f"nvidia-ml-py is not installed: {exc}") from exc
        try:
            gpus = self._nvml.sample()
        except NvmlUnavailable as exc:
            raise NoDataError(exc.reason, "install the NVIDIA driver, or mount it into the agent's container") from exc
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_xids, name="nodeagent-nvml-xid", daemon=True)
            self._watcher.start()
        return self._families(gpus)

    # --- Xid events (their own thread: nvmlEventSetWait blocks in C) ------------------------------------

    def _watch_xids(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._xid_session()
                backoff = 1.0
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive a driver hiccup
                self._log.debug("gpu.xid_watch_failed", message=f"Xid event watch stopped: {exc}; retrying")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _xid_session(self) -> None:
        import pynvml as nv

        nv.nvmlInit()  # a reference of its own: the sampling pass may shut down and re-initialise meanwhile
        event_set = nv.nvmlEventSetCreate()
        try:
            for index in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(index)
                try:
                    if nv.nvmlDeviceGetSupportedEventTypes(h) & XID_CRITICAL_ERROR:
                        nv.nvmlDeviceRegisterEvents(h, XID_CRITICAL_ERROR, event_set)
                except nv.NVMLError as exc:
                    if error_code(exc) in LIFECYCLE:
                        raise
            while not self._stop.is_set():
                try:
                    data = nv.nvmlEventSetWait(event_set, 1000)
                except nv.NVMLError as exc:
                    if error_code(exc) == TIMEOUT:
                        continue  # nothing happened in the last second
                    raise
                if data.eventType & XID_CRITICAL_ERROR:
                    uuid = nv.nvmlDeviceGetUUID(data.device)
                    uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                    self._count_xid(uuid, int(data.eventData), data)
        finally:
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlEventSetFree(event_set)
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlShutdown()

    def _count_xid(self, uuid: str, xid: int, data: Any) -> None:
        index = next((str(i) for i, u in self._uuids.items() if u == uuid), "")
        key = (index, uuid, str(xid))
        with self._xid_lock:
            self._xids[key] = self._xids.get(key, 0) + 1
        log_xid_event(self._log, index, uuid, xid, self._gpu_workloads.get(uuid, []), data)

    def _families(self, gpus: list[GpuSample]) -> list[MetricFamily]:
        nvml = self._nvml
        assert nvml is not None
        up: list[Sample] = []
        info: list[Sample] = []
        simple: list[list[Sample]] = [[] for _ in _SIMPLE]
        util: list[Sample] = []
        labelled: list[list[Sample]] = [[] for _ in _LABELLED]
        workload_mem: dict[tuple[str, ...], float] = {}
        workload_procs: dict[tuple[str, ...], float] = {}
        for s in gpus:
            if s.uuid:
                self._uuids[s.index] = s.uuid
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
                        nvml.driver_version,
                        nvml.cuda_version,
                        s.info.get("mig_mode", ""),
                        s.info.get("compute_mode", ""),
                        s.info.get("persistence_mode", ""),
                    ),
                    1.0,
                )
            )
            for i, (vkey, *_rest) in enumerate(_SIMPLE):
                if vkey in s.values:
                    simple[i].append((key, s.values[vkey]))
            for vkey, engine in _UTILIZATION:
                if vkey in s.values:
                    util.append(((*key, engine), s.values[vkey]))
            for i, (lkey, *_rest) in enumerate(_LABELLED):
                for (family_key, label), value in s.labelled.items():
                    if family_key == lkey:
                        labelled[i].append(((*key, label), value))
            seen: list[Workload] = []
            for pid, used, _gi, _ci in s.processes:
                w = self._resolver.resolve(pid)
                if w is None:
                    continue  # exited since NVML listed it
                if w not in seen:
                    seen.append(w)
                wkey = (*key, w.id, w.name, w.image, w.container, w.pod, w.namespace)
                workload_mem[wkey] = workload_mem.get(wkey, 0.0) + used
                workload_procs[wkey] = workload_procs.get(wkey, 0.0) + 1
            self._gpu_workloads[key[1]] = seen
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
                    "driver_version",
                    "cuda_version",
                    "mig_mode",
                    "compute_mode",
                    "persistence_mode",
                ),
                tuple(info),
            ),
        ]
        out += [
            MetricFamily(name, mtype, help_, GPU_LABELS, tuple(rows))
            for (_, name, mtype, help_), rows in zip(_SIMPLE, simple, strict=True)
            if rows
        ]
        if util:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_utilization_ratio",
                    "gauge",
                    "Fraction of the last sample period an engine was busy (NVML utilization rates).",
                    (*GPU_LABELS, "engine"),
                    tuple(util),
                )
            )
        out += [
            MetricFamily(name, mtype, help_, (*GPU_LABELS, label), tuple(rows))
            for (_, name, label, mtype, help_), rows in zip(_LABELLED, labelled, strict=True)
            if rows
        ]
        with self._xid_lock:
            xids = tuple(((i, u, x), float(n)) for (i, u, x), n in sorted(self._xids.items()))
        if xids:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_xid_errors_total",
                    "counter",
                    "Critical Xid errors the driver reported, by Xid (a counter: every event, not the last value).",
                    (*GPU_LABELS, "xid"),
                    xids,
                )
            )
        wl_labels = (*GPU_LABELS, *BASE_LABELS)
        if workload_mem:
            out.append(
                MetricFamily(
                    "nodeagent_gpu_workload_memory_used_bytes",
                    "gauge",
                    "GPU memory used by a workload's processes on this GPU.",
                    wl_labels,
                    tuple(workload_mem.items()),
                )
            )
            out.append(
                MetricFamily(
                    "nodeagent_gpu_workload_processes",
                    "gauge",
                    "A workload's processes running on this GPU.",
                    wl_labels,
                    tuple(workload_procs.items()),
                )
            )
        return out

    async def aclose(self) -> None:
        """Shut NVML down on its thread and stop the threads (without waiting for a stuck call)."""
        self._stop.set()
        if self._nvml is not None:
            nvml = self._nvml
            with contextlib.suppress(RuntimeError):
                self._executor.submit(nvml.shutdown)
        self._executor.shutdown(wait=False, cancel_futures=True)


def xid_event_fields(index: str, uuid: str, xid: int, workloads: list[Workload]) -> dict[str, Any]:
    """ECS fields of one Xid event; the GPU's workloads (from the last pass) name what it may have hit."""
    fields: dict[str, Any] = {
        "event.kind": "event",
        "event.category": ["host", "driver"],
        "event.type": ["error"],
        "event.action": "gpu_xid",
        "event.code": str(xid),
        "event.module": "nodeagent",
        "event.dataset": "nodeagent.gpu",
        "nodeagent.gpu.index": index,
        "nodeagent.gpu.uuid": uuid,
        "nodeagent.gpu.xid": xid,
    }
    if workloads:
        w = workloads[0]
        fields["nodeagent.workload.id"] = w.id
        optional = {
            "container.id": w.container_id,
            "container.name": w.name,
            "kubernetes.pod.name": w.pod,
            "kubernetes.namespace": w.namespace,
            "kubernetes.container.name": w.container,
            "slurm.job.id": w.slurm_job,
        }
        fields.update({k: v for k, v in optional.items() if v})
        if len(workloads) > 1:
            fields["nodeagent.gpu.workloads"] = [x.id for x in workloads]
    return fields


def log_xid_event(
    log: structlog.typing.FilteringBoundLogger, index: str, uuid: str, xid: int, workloads: list[Workload], data: Any
) -> None:
    """Log one Xid error as it arrives, with a fresh trace id."""
    trace_id, span_id = new_trace_ids()
    fields = xid_event_fields(index, uuid, xid, workloads)
    fields["trace.id"], fields["span.id"] = trace_id, span_id
    log.error(f"GPU {index} ({uuid}) reported Xid {xid}", **fields)


SPEC = CollectorSpec(
    name="gpu",
    description="NVIDIA GPUs over NVML: health, utilization, memory, power, clocks, errors, per-workload use.",
    config_model=GpuConfig,
    factory=GpuCollector,
)
