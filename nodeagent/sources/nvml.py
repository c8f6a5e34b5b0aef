"""
The one boundary to NVIDIA's NVML (PyPI ``nvidia-ml-py``, module ``pynvml``): initialisation and re-initialisation,
error classification, and one sampling pass per GPU. Every call runs on the caller's thread; the GPU collector
runs this module on its single dedicated NVML thread, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# NVML return codes (nvml.h; pynvml exposes them as NVML_ERROR_*).
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
TIMEOUT = 10
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
UNINITIALIZED = 1
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
LIB_RM_VERSION_MISMATCH = 18
GPU_NOT_FOUND = 28
DEPRECATED = 26
INVALID_ARGUMENT = 2

# Errors that say NVML or the GPU itself is gone: the GPU is marked down and NVML is initialised again.
LIFECYCLE = frozenset({GPU_IS_LOST, UNINITIALIZED, DRIVER_NOT_LOADED, LIB_RM_VERSION_MISMATCH, GPU_NOT_FOUND})
# Errors that only mean "this value is not available here": that series is left out.
FIELD_LEVEL = frozenset({NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND, DEPRECATED, NOT_FOUND, INVALID_ARGUMENT})

_T = TypeVar("_T")

CLOCK_TYPES = {"graphics": 0, "sm": 1, "memory": 2, "video": 3}
# nvmlClocksEventReasons bits (nvml.h), named as the reason labels nodeagent exports.
CLOCK_EVENT_REASONS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
XID_CRITICAL_ERROR = 0x8
NOT_MIG = 0xFFFFFFFF


class NvmlUnavailable(Exception):
    """NVML cannot be used here (no library, no driver, no permission); ``reason`` says which."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def error_code(exc: BaseException) -> int | None:
    """The NVML return code of a pynvml error, ``None`` for anything else."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


@dataclass(slots=True)
class GpuSample:
    """One GPU's readings in one pass; a value NVML did not give is absent from ``values``."""

    index: int
    uuid: str
    name: str = ""
    pci_bus_id: str = ""
    minor: int | None = None
    up: bool = True
    error: str = ""
    info: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    labelled: dict[tuple[str, str], float] = field(default_factory=dict)  # (family suffix, label value) -> value
    processes: list[tuple[int, int, int, int]] = field(default_factory=list)  # pid, used bytes, gi, ci
    process_util: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> (sm, memory) ratios
    mig: list[MigSample] = field(default_factory=list)


@dataclass(slots=True)
class MigSample:
    """One MIG device (a GPU instance / compute instance pair) of a GPU."""

    uuid: str
    gpu_instance: int
    compute_instance: int
    profile: str
    values: dict[str, float] = field(default_factory=dict)


class Nvml:
    """
    NVML for one agent. ``init()`` loads and initialises the library; ``sample()`` reads every GPU once. Field-level
    errors drop single values (and are remembered per GPU and function, so a value NVML never supports is not
    asked again); lifecycle errors mark the GPU down, and the next ``sample()`` initialises NVML again.
    """

    def __init__(self, pynvml: Any = None) -> None:
        if pynvml is None:
            import pynvml as _pynvml  # the vendor binding: imported here only

            pynvml = _pynvml
        self.nv = pynvml
        self.initialised = False
        self.driver_version = ""
        self.cuda_version = ""
        self._unsupported: set[tuple[str, str]] = set()  # (gpu uuid, what) never to ask again
        self._lock = threading.Lock()
        self._last_process_ts: dict[str, int] = {}

    # --- lifecycle -----------------------------------------------------------------------------------------

    def init(self) -> None:
        """
        Initialise NVML (again, after a lifecycle error).

        Raises:
            NvmlUnavailable: no library, no driver, or no permission.
        """
        nv = self.nv
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            code = error_code(exc)
            raise NvmlUnavailable(_init_reason(code, exc), code) from exc
        self.initialised = True
        self.driver_version = self._call(lambda: _text(nv.nvmlSystemGetDriverVersion()), "")
        cuda = self._call(nv.nvmlSystemGetCudaDriverVersion, 0)
        self.cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else ""

    def shutdown(self) -> None:
        """Release NVML (pynvml keeps the library loaded)."""
        if self.initialised:
            self.initialised = False
            try:
                self.nv.nvmlShutdown()
            except self.nv.NVMLError:
                pass

    def _call(self, fn: Callable[[], _T], default: _T) -> _T:
        try:
            return fn()
        except self.nv.NVMLError as exc:
            if error_code(exc) in LIFECYCLE:
                raise
            return default

    # --- sampling ------------------------------------------------------------------------------------------

    def sample(self) -> list[GpuSample]:
        """
        Read every GPU once. A GPU whose calls fail with a lifecycle error is returned with ``up=False``.

        Raises:
            NvmlUnavailable: NVML cannot be initialised.
        """
        if not self.initialised:
            self.init()
        nv = self.nv
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as exc:
            self.shutdown()
            raise NvmlUnavailable(f"nvmlDeviceGetCount failed: {exc}", error_code(exc)) from exc
        out: list[GpuSample] = []
        lost = False
        for index in range(count):
            try:
                out.append(self._sample_gpu(index))
            except nv.NVMLError as exc:
                code = error_code(exc)
                out.append(GpuSample(index, uuid="", up=False, error=str(exc)))
                lost = lost or code in LIFECYCLE
        if lost:
            self.shutdown()  # re-initialised at the next pass, which also finds GPUs that came back
        return out

    def _get(self, uuid: str, what: str, fn: Callable[[], _T]) -> _T | None:
        """One value; ``None`` if NVML does not give it here (remembered, so it is not asked again)."""
        if (uuid, what) in self._unsupported:
            return None
        try:
            return fn()
        except self.nv.NVMLError as exc:
            code = error_code(exc)
            if code in LIFECYCLE:
                raise
            if code in (NOT_SUPPORTED, FUNCTION_NOT_FOUND, DEPRECATED):
                self._unsupported.add((uuid, what))
            return None

    def _sample_gpu(self, index: int) -> GpuSample:
        nv = self.nv
        h = nv.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nv.nvmlDeviceGetUUID(h))
        s = GpuSample(index, uuid)
        g = lambda what, fn: self._get(uuid, what, fn)  # noqa: E731 - local shorthand
        s.name = _text(g("name", lambda: nv.nvmlDeviceGetName(h)) or "")
        pci = g("pci", lambda: nv.nvmlDeviceGetPciInfo(h))
        s.pci_bus_id = _text(pci.busId) if pci is not None else ""
        s.minor = g("minor", lambda: nv.nvmlDeviceGetMinorNumber(h))
        mig = g("mig_mode", lambda: nv.nvmlDeviceGetMigMode(h))
        mig_enabled = bool(mig and mig[0] == 1)
        s.info = {
            "mig_mode": "enabled" if mig_enabled else ("disabled" if mig is not None else ""),
            "compute_mode": _COMPUTE_MODES.get(g("compute_mode", lambda: nv.nvmlDeviceGetComputeMode(h)), ""),
            "persistence_mode": {1: "enabled", 0: "disabled"}.get(
                g("persistence", lambda: nv.nvmlDeviceGetPersistenceMode(h)), ""
            ),
        }
        v = s.values
        if not mig_enabled:  # NOT_SUPPORTED on a MIG-enabled parent, as on MIG devices
            util = g("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
            if util is not None:
                v["utilization_gpu"] = util.gpu / 100
                v["utilization_memory"] = util.memory / 100
        enc = g("encoder", lambda: nv.nvmlDeviceGetEncoderUtilization(h))
        if enc is not None:
            v["utilization_encoder"] = enc[0] / 100
        dec = g("decoder", lambda: nv.nvmlDeviceGetDecoderUtilization(h))
        if dec is not None:
            v["utilization_decoder"] = dec[0] / 100
        mem = g("memory", lambda: nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2))
        if mem is not None:
            v["memory_total"] = float(mem.total)
            v["memory_used"] = float(mem.used)
            v["memory_free"] = float(mem.free)
            v["memory_reserved"] = float(getattr(mem, "reserved", 0))
        power = g("power", lambda: nv.nvmlDeviceGetPowerUsage(h))
        if power is not None:
            v["power"] = power / 1000
        limit = g("power_limit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
        if limit is not None:
            v["power_limit"] = limit / 1000
        energy = g("energy", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h))
        if energy is not None:
            v["energy"] = energy / 1000
        temp = g("temperature", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
        if temp is not None:
            v["temperature"] = float(temp)
        for name, kind in (("slowdown", 1), ("shutdown", 0), ("gpu_max", 3)):
            t = g(f"threshold_{name}", lambda kind=kind: nv.nvmlDeviceGetTemperatureThreshold(h, kind))
            if t is not None:
                s.labelled[("temperature_threshold", name)] = float(t)
        for name, ctype in CLOCK_TYPES.items():
            c = g(f"clock_{name}", lambda ctype=ctype: nv.nvmlDeviceGetClockInfo(h, ctype))
            if c is not None:
                s.labelled[("clock", name)] = c * 1e6
            m = g(f"max_clock_{name}", lambda ctype=ctype: nv.nvmlDeviceGetMaxClockInfo(h, ctype))
            if m is not None:
                s.labelled[("max_clock", name)] = m * 1e6
        pstate = g("pstate", lambda: nv.nvmlDeviceGetPerformanceState(h))
        if pstate is not None:
            v["performance_state"] = float(pstate)
        reasons = g("clocks_event_reasons", lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h))
        if reasons is not None:
            for name, bit in CLOCK_EVENT_REASONS.items():
                s.labelled[("clocks_event_reason", name)] = 1.0 if reasons & bit else 0.0
        pending = g("retired_pending", lambda: nv.nvmlDeviceGetRetiredPagesPendingStatus(h))
        if pending is not None:
            v["retired_pages_pending"] = float(pending)
        remap = g("remapped_rows", lambda: nv.nvmlDeviceGetRemappedRows(h))
        if remap is not None:
            s.labelled[("remapped_rows", "correctable")] = float(remap[0])
            s.labelled[("remapped_rows", "uncorrectable")] = float(remap[1])
            v["remapped_rows_pending"] = float(remap[2])
            v["remapped_rows_failure"] = float(remap[3])
        gen = g("pcie_gen", lambda: nv.nvmlDeviceGetCurrPcieLinkGeneration(h))
        if gen is not None:
            v["pcie_link_generation"] = float(gen)
        width = g("pcie_width", lambda: nv.nvmlDeviceGetCurrPcieLinkWidth(h))
        if width is not None:
            v["pcie_link_width"] = float(width)
        replay = g("pcie_replay", lambda: nv.nvmlDeviceGetPcieReplayCounter(h))
        if replay is not None:
            v["pcie_replay"] = float(replay)
        procs = g("processes", lambda: nv.nvmlDeviceGetComputeRunningProcesses(h)) or []
        gfx = g("graphics_processes", lambda: nv.nvmlDeviceGetGraphicsRunningProcesses(h)) or []
        for p in list(procs) + list(gfx):
            used = p.usedGpuMemory if p.usedGpuMemory is not None else 0
            s.processes.append((int(p.pid), int(used), int(p.gpuInstanceId), int(p.computeInstanceId)))
        return s


_COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _init_reason(code: int | None, exc: BaseException) -> str:
    if code == LIBRARY_NOT_FOUND:
        return "libnvidia-ml.so.1 not found (no NVIDIA driver on this host, or not mounted into the agent's container)"
    if code == DRIVER_NOT_LOADED:
        return "the NVIDIA kernel driver is not loaded"
    if code == NO_PERMISSION:
        return "no permission to open /dev/nvidia* (run privileged or add the devices)"
    if code == LIB_RM_VERSION_MISMATCH:
        return "libnvidia-ml does not match the loaded kernel driver (driver upgraded without a reboot?)"
    return f"nvmlInit failed: {exc}"
