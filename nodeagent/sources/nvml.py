"""
The one boundary to NVIDIA's NVML (PyPI ``nvidia-ml-py``, module ``pynvml``): initialisation and re-initialisation,
error classification, and one sampling pass over every GPU and MIG device. Every call runs on the caller's thread;
the GPU collector runs this module on its single dedicated NVML thread, never on the event loop.

Values come back in base units (bytes, watts, joules, hertz, seconds, ratios) keyed by the metric family suffix
the collector exports, so this module is the only place that knows NVML's units and call shapes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# NVML return codes (nvml.h; pynvml exposes them as NVML_ERROR_*).
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18
DEPRECATED = 26
GPU_NOT_FOUND = 28

# Errors that say NVML or the GPU itself is gone: the GPU is marked down and NVML is initialised again.
LIFECYCLE = frozenset({GPU_IS_LOST, UNINITIALIZED, DRIVER_NOT_LOADED, LIB_RM_VERSION_MISMATCH, GPU_NOT_FOUND})
# Errors meaning "this value will never be available here": asked once, then left out for good.
NEVER_AVAILABLE = frozenset({NOT_SUPPORTED, FUNCTION_NOT_FOUND, DEPRECATED})

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
TEMPERATURE_THRESHOLDS = {"shutdown": 0, "slowdown": 1, "memory_max": 2, "gpu_max": 3}
XID_CRITICAL_ERROR = 0x8
NOT_MIG = 0xFFFFFFFF
MIG_ENABLED = 1

# The field-values batch (nvmlDeviceGetFieldValues, one call per GPU per pass):
# field id -> (family suffix, label values, scale to the base unit).
FIELDS: dict[int, tuple[str, tuple[str, ...], float]] = {
    3: ("ecc_errors", ("corrected", "volatile"), 1.0),  # NVML_FI_DEV_ECC_SBE_VOL_TOTAL
    4: ("ecc_errors", ("uncorrected", "volatile"), 1.0),  # ..._DBE_VOL_TOTAL
    5: ("ecc_errors", ("corrected", "aggregate"), 1.0),  # ..._SBE_AGG_TOTAL
    6: ("ecc_errors", ("uncorrected", "aggregate"), 1.0),  # ..._DBE_AGG_TOTAL
    29: ("retired_pages", ("single_bit_ecc",), 1.0),  # NVML_FI_DEV_RETIRED_SBE
    30: ("retired_pages", ("double_bit_ecc",), 1.0),  # NVML_FI_DEV_RETIRED_DBE
    31: ("retired_pages_pending", (), 1.0),  # NVML_FI_DEV_RETIRED_PENDING
    74: ("clocks_event_seconds", ("sw_power_cap",), 1e-9),  # NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP, ns
    76: ("clocks_event_seconds", ("sync_boost",), 1e-9),  # ..._SYNC_BOOST
    269: ("clocks_event_seconds", ("sw_thermal_slowdown",), 1e-9),
    270: ("clocks_event_seconds", ("hw_thermal_slowdown",), 1e-9),
    271: ("clocks_event_seconds", ("hw_power_brake_slowdown",), 1e-9),
    82: ("temperature", ("memory",), 1.0),  # NVML_FI_DEV_MEMORY_TEMP
    94: ("pcie_replay", (), 1.0),  # NVML_FI_DEV_PCIE_REPLAY_COUNTER
    197: ("pcie_transmit_bytes", (), 1.0),  # NVML_FI_DEV_PCIE_COUNT_TX_BYTES
    198: ("pcie_receive_bytes", (), 1.0),  # NVML_FI_DEV_PCIE_COUNT_RX_BYTES
}
NVLINK_LINK_COUNT = 91
# Per-link fields (scopeId = link): field id -> (family suffix, extra label value or "", scale).
NVLINK_FIELDS: dict[int, tuple[str, str, float]] = {
    138: ("nvlink_transmit_bytes", "", 1024.0),  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, KiB
    139: ("nvlink_receive_bytes", "", 1024.0),  # ..._DATA_RX
    161: ("nvlink_errors", "replay", 1.0),  # NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY
    162: ("nvlink_errors", "recovery", 1.0),  # ..._DL_RECOVERY
    163: ("nvlink_errors", "crc", 1.0),  # ..._DL_CRC
}

Readings = dict[str, dict[tuple[str, ...], float]]


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
class GpuProcess:
    """A process NVML lists on a GPU: host pid, framebuffer bytes (``None``: NVML does not say), MIG ids."""

    pid: int
    used_bytes: int | None
    gpu_instance: int | None = None
    compute_instance: int | None = None
    graphics: bool = False


@dataclass(slots=True)
class MigSample:
    """One MIG device (a GPU instance / compute instance pair) of a GPU."""

    uuid: str
    gpu_instance: int
    compute_instance: int
    name: str
    profile: str
    readings: Readings = field(default_factory=dict)


@dataclass(slots=True)
class GpuSample:
    """
    One GPU's readings in one pass. ``readings`` maps a family suffix to {label values: value}; a value NVML did
    not give is absent. ``up`` is False when a lifecycle error cut the GPU's pass short.
    """

    index: int
    uuid: str
    up: bool = True
    error: str = ""
    name: str = ""
    pci_bus_id: str = ""
    minor: int | None = None
    serial: str = ""
    info: dict[str, str] = field(default_factory=dict)
    readings: Readings = field(default_factory=dict)
    processes: list[GpuProcess] = field(default_factory=list)
    process_utilization: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)
    mig: list[MigSample] = field(default_factory=list)

    def put(self, suffix: str, labels: tuple[str, ...], value: float) -> None:
        """Record one value."""
        self.readings.setdefault(suffix, {})[labels] = value

    def value(self, suffix: str, labels: tuple[str, ...] = ()) -> float | None:
        """One recorded value, or ``None``."""
        return self.readings.get(suffix, {}).get(labels)


@dataclass(slots=True)
class _Static:
    name: str
    serial: str
    pci_bus_id: str
    minor: int | None
    thresholds: dict[str, float] = field(default_factory=dict)
    max_clocks: dict[str, float] = field(default_factory=dict)


def mig_profile(name: str) -> str:
    """The MIG profile in a MIG device's name (``NVIDIA H100 80GB HBM3 MIG 1g.10gb`` -> ``1g.10gb``)."""
    _head, sep, tail = name.rpartition(" MIG ")
    return tail.strip() if sep else ""


class Nvml:
    """
    NVML for one agent. ``init()`` loads and initialises the library; ``sample()`` reads every GPU once. A value
    NVML never gives on a GPU (NOT_SUPPORTED, FUNCTION_NOT_FOUND, DEPRECATED) is asked once and then left out; a
    value it refuses this time (NO_PERMISSION, NOT_FOUND, ...) is left out of this pass only. A lifecycle error
    marks the GPU down, and the next ``sample()`` initialises NVML again (which also finds GPUs that came back).
    """

    def __init__(self, pynvml: Any = None, clock: Callable[[], float] = time.time) -> None:
        if pynvml is None:
            import pynvml as _pynvml  # the vendor binding: imported here only

            pynvml = _pynvml
        self.nv = pynvml
        self.initialised = False
        self.driver_version = ""
        self.cuda_version = ""
        self.nvml_version = ""
        self.calls = 0  # NVML calls made (bench/gpu.py reports calls per pass)
        self.inits = 0  # successful initialisations (the first, and one after each lifecycle error or overrun)
        self._clock = clock
        self._unsupported: set[tuple[str, str]] = set()  # (gpu uuid, what) never to ask again
        self._links: dict[str, int] = {}  # gpu uuid -> NVLink count (0: none or not supported)
        self._bad_fields: set[tuple[str, int, int]] = set()  # (gpu uuid, field id, scope) never available
        self._ask: dict[str, list[tuple[int, int]]] = {}  # gpu uuid -> the field-values request
        self._static: dict[str, _Static] = {}  # gpu uuid -> what is read once per initialisation
        self._process_seen: dict[str, int] = {}  # gpu uuid -> newest per-process utilization sample (µs)
        self._mismatch: type[Exception] = getattr(pynvml, "NVMLLibraryMismatchError", _NeverRaised)

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
            raise NvmlUnavailable(init_reason(code, exc), code) from exc
        self.initialised = True
        self.inits += 1
        # A new driver, or a reset GPU, may answer what the old one did not.
        for cache in (self._unsupported, self._bad_fields, self._links, self._ask, self._static):
            cache.clear()
        self.driver_version = _text(self._system(nv.nvmlSystemGetDriverVersion, ""))
        self.nvml_version = _text(self._system(nv.nvmlSystemGetNVMLVersion, ""))
        cuda = self._system(nv.nvmlSystemGetCudaDriverVersion, 0)
        self.cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else ""

    def shutdown(self) -> None:
        """Release NVML (pynvml keeps the library loaded)."""
        if self.initialised:
            self.initialised = False
            with contextlib.suppress(self.nv.NVMLError):
                self.nv.nvmlShutdown()

    def _system(self, fn: Callable[[], _T], default: _T) -> _T:
        self.calls += 1
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
            NvmlUnavailable: NVML cannot be initialised, or the GPUs cannot be counted.
        """
        if not self.initialised:
            self.init()
        nv = self.nv
        try:
            self.calls += 1
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as exc:
            self.shutdown()
            raise NvmlUnavailable(f"nvmlDeviceGetCount failed: {exc}", error_code(exc)) from exc
        out: list[GpuSample] = []
        lost = False
        for index in range(count):
            s = GpuSample(index, uuid="")
            try:
                self._sample_gpu(s)
            except nv.NVMLError as exc:
                s.up, s.error = False, str(exc)
                lost = lost or error_code(exc) in LIFECYCLE
            out.append(s)
        if lost:
            self.shutdown()  # initialised again at the next pass
        return out

    def _get(self, uuid: str, what: str, fn: Callable[..., _T], *args: Any) -> _T | None:
        """One value, or ``None`` if NVML does not give it (remembered when it never will)."""
        if (uuid, what) in self._unsupported:
            return None
        self.calls += 1
        try:
            return fn(*args)
        except self.nv.NVMLError as exc:
            code = error_code(exc)
            if code in LIFECYCLE:
                raise
            if code in NEVER_AVAILABLE:
                self._unsupported.add((uuid, what))
            return None
        except self._mismatch:
            # pynvml's wrapper for a versioned symbol the driver lacks (not an NVMLError): never there.
            self._unsupported.add((uuid, what))
            return None

    def _sample_gpu(self, s: GpuSample) -> None:
        nv = self.nv
        self.calls += 2
        h = nv.nvmlDeviceGetHandleByIndex(s.index)
        uuid = s.uuid = _text(nv.nvmlDeviceGetUUID(h))
        g = self._get
        st = self._static.get(uuid)
        if st is None:
            st = self._static[uuid] = self._read_static(uuid, h)
        s.name, s.serial, s.pci_bus_id, s.minor = st.name, st.serial, st.pci_bus_id, st.minor
        for name, value in st.thresholds.items():
            s.put("temperature_threshold", (name,), value)
        for name, value in st.max_clocks.items():
            s.put("clock_max", (name,), value)
        mig = g(uuid, "mig_mode", nv.nvmlDeviceGetMigMode, h)
        mig_enabled = bool(mig and mig[0] == MIG_ENABLED)
        compute = g(uuid, "compute_mode", nv.nvmlDeviceGetComputeMode, h)
        persistence = g(uuid, "persistence", nv.nvmlDeviceGetPersistenceMode, h)
        s.info = {
            "mig_mode": ("enabled" if mig_enabled else "disabled") if mig is not None else "",
            "compute_mode": _COMPUTE_MODES.get(compute, "") if compute is not None else "",
            "persistence_mode": {1: "enabled", 0: "disabled"}.get(persistence, "") if persistence is not None else "",
        }
        if not mig_enabled:  # NOT_SUPPORTED on a MIG-enabled parent and on MIG devices
            util = g(uuid, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
            if util is not None:
                s.put("utilization", ("gpu",), util.gpu / 100)
                s.put("utilization", ("memory",), util.memory / 100)
        for engine, fn in (
            ("encoder", nv.nvmlDeviceGetEncoderUtilization),
            ("decoder", nv.nvmlDeviceGetDecoderUtilization),
        ):
            pair = g(uuid, engine, fn, h)
            if pair is not None:
                s.put("utilization", (engine,), pair[0] / 100)
        mem = g(uuid, "memory", nv.nvmlDeviceGetMemoryInfo, h, nv.nvmlMemory_v2)
        if mem is None and (uuid, "memory") in self._unsupported:  # drivers before the v2 struct: no "reserved"
            mem = g(uuid, "memory_v1", nv.nvmlDeviceGetMemoryInfo, h)
        if mem is not None:
            _put_memory(s.readings, mem)
        power = g(uuid, "power", nv.nvmlDeviceGetPowerUsage, h)
        if power is not None:
            s.put("power", (), power / 1000)
        limit = g(uuid, "power_limit", nv.nvmlDeviceGetEnforcedPowerLimit, h)
        if limit is not None:
            s.put("power_limit", (), limit / 1000)
        energy = g(uuid, "energy", nv.nvmlDeviceGetTotalEnergyConsumption, h)
        if energy is not None:
            s.put("energy", (), energy / 1000)
        temp = g(uuid, "temperature", nv.nvmlDeviceGetTemperatureV, h, 0)
        if temp is None and (uuid, "temperature") in self._unsupported:  # drivers before the versioned call
            temp = g(uuid, "temperature_v0", nv.nvmlDeviceGetTemperature, h, 0)
        if temp is not None:
            s.put("temperature", ("gpu",), float(temp))
        for name, ctype in CLOCK_TYPES.items():
            c = g(uuid, f"clock_{name}", nv.nvmlDeviceGetClockInfo, h, ctype)
            if c is not None:
                s.put("clock", (name,), c * 1e6)
        pstate = g(uuid, "pstate", nv.nvmlDeviceGetPerformanceState, h)
        if pstate is not None and pstate != 32:  # 32 = NVML_PSTATE_UNKNOWN
            s.put("performance_state", (), float(pstate))
        fans = g(uuid, "fans", nv.nvmlDeviceGetNumFans, h) or 0
        for fan in range(fans):
            speed = g(uuid, f"fan_{fan}", nv.nvmlDeviceGetFanSpeed_v2, h, fan)
            if speed is not None:
                s.put("fan_speed", (str(fan),), speed / 100)
        reasons = g(uuid, "clocks_event_reasons", nv.nvmlDeviceGetCurrentClocksEventReasons, h)
        if reasons is not None:
            for name, bit in CLOCK_EVENT_REASONS.items():
                s.put("clocks_event_reason", (name,), 1.0 if reasons & bit else 0.0)
        remap = g(uuid, "remapped_rows", nv.nvmlDeviceGetRemappedRows, h)
        if remap is not None:
            s.put("remapped_rows", ("correctable",), float(remap[0]))
            s.put("remapped_rows", ("uncorrectable",), float(remap[1]))
            s.put("remapped_rows_pending", (), float(remap[2]))
            s.put("remapped_rows_failure", (), float(remap[3]))
        gen = g(uuid, "pcie_gen", nv.nvmlDeviceGetCurrPcieLinkGeneration, h)
        if gen is not None:
            s.put("pcie_link_generation", (), float(gen))
        width = g(uuid, "pcie_width", nv.nvmlDeviceGetCurrPcieLinkWidth, h)
        if width is not None:
            s.put("pcie_link_width", (), float(width))
        self._fields(s, h)
        self._processes(s, h, mig_enabled)
        if mig_enabled:
            self._sample_mig(s, h)

    def _read_static(self, uuid: str, h: Any) -> _Static:
        """What does not change while the driver stays loaded: read once per GPU and initialisation."""
        nv = self.nv
        g = self._get
        pci = g(uuid, "pci", nv.nvmlDeviceGetPciInfo, h)
        st = _Static(
            name=_text(g(uuid, "name", nv.nvmlDeviceGetName, h) or ""),
            serial=_text(g(uuid, "serial", nv.nvmlDeviceGetSerial, h) or ""),
            pci_bus_id=_text(pci.busId) if pci is not None else "",  # as nvidia-smi and dcgm-exporter print it
            minor=g(uuid, "minor", nv.nvmlDeviceGetMinorNumber, h),
        )
        for name, kind in TEMPERATURE_THRESHOLDS.items():
            t = g(uuid, f"threshold_{name}", nv.nvmlDeviceGetTemperatureThreshold, h, kind)
            if t is not None and t > 0:
                st.thresholds[name] = float(t)
        for name, ctype in CLOCK_TYPES.items():
            m = g(uuid, f"max_clock_{name}", nv.nvmlDeviceGetMaxClockInfo, h, ctype)
            if m is not None:
                st.max_clocks[name] = m * 1e6
        return st

    def _fields(self, s: GpuSample, h: Any) -> None:
        """The field-values batch: one nvmlDeviceGetFieldValues call per GPU (after the first pass)."""
        uuid = s.uuid
        links = self._links.get(uuid)
        if links is None:  # asked once per GPU
            got = self._field_batch(s, h, [(NVLINK_LINK_COUNT, 0)])
            links = self._links[uuid] = int(got.get((NVLINK_LINK_COUNT, 0), 0))
        ask = self._ask.get(uuid)
        if ask is None:  # built once per GPU; rebuilt when a field turns out never to be available
            ask = [(fid, 0) for fid in FIELDS] + [(fid, link) for link in range(links) for fid in NVLINK_FIELDS]
            ask = self._ask[uuid] = [w for w in ask if (uuid, *w) not in self._bad_fields]
        got = self._field_batch(s, h, ask)
        for (fid, scope), value in got.items():
            if fid in FIELDS:
                suffix, labels, scale = FIELDS[fid]
            else:
                suffix, kind, scale = NVLINK_FIELDS[fid]
                labels = (str(scope), kind) if kind else (str(scope),)
            s.put(suffix, labels, value * scale)

    def _field_batch(self, s: GpuSample, h: Any, ask: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
        nv = self.nv
        uuid = s.uuid
        if not ask or (uuid, "field_values") in self._unsupported:
            return {}
        values = self._get(uuid, "field_values", nv.nvmlDeviceGetFieldValues, h, ask)
        if values is None:
            return {}
        out: dict[tuple[int, int], float] = {}
        for want, fv in zip(ask, values, strict=True):
            ret = int(fv.nvmlReturn)
            if ret == 0:
                out[want] = field_value(fv)
            elif ret in LIFECYCLE:
                raise nv.NVMLError(ret)
            elif ret in NEVER_AVAILABLE:
                self._bad_fields.add((uuid, *want))
                self._ask.pop(uuid, None)
        return out

    def _processes(self, s: GpuSample, h: Any, mig_enabled: bool) -> None:
        nv = self.nv
        uuid = s.uuid
        for graphics, what, fn in (
            (False, "processes", nv.nvmlDeviceGetComputeRunningProcesses),
            (True, "graphics_processes", nv.nvmlDeviceGetGraphicsRunningProcesses),
        ):
            for p in g_list(self._get(uuid, what, fn, h)):
                gi = int(p.gpuInstanceId) if p.gpuInstanceId != NOT_MIG else None
                ci = int(p.computeInstanceId) if p.computeInstanceId != NOT_MIG else None
                used = int(p.usedGpuMemory) if p.usedGpuMemory is not None else None
                s.processes.append(GpuProcess(int(p.pid), used, gi, ci, graphics))
        if mig_enabled or not s.processes:
            return  # per-process utilization is not supported under MIG; nothing to ask about without processes
        since = self._process_seen.get(uuid)
        if since is None:
            since = int((self._clock() - 1.0) * 1e6)  # the first pass: the last second only
        samples = self._get(uuid, "process_utilization", nv.nvmlDeviceGetProcessUtilization, h, since)
        newest = since
        for u in g_list(samples):
            ts = int(u.timeStamp)
            if ts <= since:
                continue
            newest = max(newest, ts)
            pid = int(u.pid)
            current = (u.smUtil / 100, u.memUtil / 100, u.encUtil / 100, u.decUtil / 100)
            previous = s.process_utilization.get(pid, current)
            # Several samples of one pid in the window: keep the largest (the busiest moment since the last pass).
            s.process_utilization[pid] = (
                max(previous[0], current[0]),
                max(previous[1], current[1]),
                max(previous[2], current[2]),
                max(previous[3], current[3]),
            )
        self._process_seen[uuid] = newest

    def _sample_mig(self, s: GpuSample, h: Any) -> None:
        nv = self.nv
        uuid = s.uuid
        slots = self._get(uuid, "mig_max", nv.nvmlDeviceGetMaxMigDeviceCount, h) or 0
        for slot in range(slots):
            self.calls += 1
            try:
                m = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
            except nv.NVMLError as exc:
                if error_code(exc) in LIFECYCLE:
                    raise
                continue  # an empty slot (NOT_FOUND / INVALID_ARGUMENT)
            mig_uuid = _text(self._get(uuid, f"mig_{slot}_uuid", nv.nvmlDeviceGetUUID, m) or "")
            name = _text(self._get(uuid, f"mig_{slot}_name", nv.nvmlDeviceGetName, m) or "")
            gi = self._get(uuid, f"mig_{slot}_gi", nv.nvmlDeviceGetGpuInstanceId, m)
            ci = self._get(uuid, f"mig_{slot}_ci", nv.nvmlDeviceGetComputeInstanceId, m)
            if gi is None or ci is None:
                continue
            sample = MigSample(mig_uuid, int(gi), int(ci), name, mig_profile(name))
            mem = self._get(uuid, f"mig_{slot}_memory", nv.nvmlDeviceGetMemoryInfo, m, nv.nvmlMemory_v2)
            if mem is not None:
                _put_memory(sample.readings, mem)
            s.mig.append(sample)


class _NeverRaised(Exception):
    """Stands in for pynvml's NVMLLibraryMismatchError where a binding lacks it."""


def g_list(value: Any) -> list[Any]:
    """A pynvml list result, or an empty list for ``None``."""
    return list(value) if value is not None else []


def field_value(fv: Any) -> float:
    """The value of one ``c_nvmlFieldValue_t`` by its ``valueType`` (nvmlValueType_t)."""
    v = fv.value
    t = int(fv.valueType)
    if t == 0:
        return float(v.dVal)
    attr = _VALUE_TYPES.get(t)
    if attr is None:
        raise ValueError(f"NVML field {fv.fieldId}: unknown value type {t}")
    return float(getattr(v, attr))


_VALUE_TYPES = {1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _put_memory(readings: Readings, mem: Any) -> None:
    for key in ("total", "used", "free", "reserved"):
        value = getattr(mem, key, None)
        if value is not None:
            readings.setdefault(f"memory_{key}", {})[()] = float(value)


_COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def init_hint(code: int | None) -> str:
    """What a person can do about an NVML start-up failure."""
    if code == NO_PERMISSION:
        return "give the agent access to /dev/nvidia* (privileged, or the devices added to its container)"
    if code == LIB_RM_VERSION_MISMATCH:
        return "reboot, or reload the nvidia kernel modules, so the driver matches its library"
    return "install the NVIDIA driver, or mount it and /dev/nvidia* into the agent's container"


def init_reason(code: int | None, exc: BaseException) -> str:
    """Why NVML could not be initialised, in words a person can act on."""
    if code == LIBRARY_NOT_FOUND:
        return "libnvidia-ml.so.1 not found (no NVIDIA driver on this host, or not mounted into the agent's container)"
    if code == DRIVER_NOT_LOADED:
        return "the NVIDIA kernel driver is not loaded"
    if code == NO_PERMISSION:
        return "no permission to open /dev/nvidia* (run privileged or add the devices)"
    if code == LIB_RM_VERSION_MISMATCH:
        return "libnvidia-ml does not match the loaded kernel driver (driver upgraded without a reboot?)"
    return f"nvmlInit failed: {exc}"


@dataclass(frozen=True, slots=True)
class XidEvent:
    """One critical Xid error as NVML's event set delivered it."""

    uuid: str
    xid: int
    gpu_instance: int | None
    compute_instance: int | None
    time: float


def watch_xids(
    on_xid: Callable[[XidEvent], None],
    stop: threading.Event,
    pynvml: Any = None,
    wait_ms: int = 1000,
    clock: Callable[[], float] = time.time,
    on_registered: Callable[[int], None] | None = None,
) -> None:
    """
    One session of the Xid watch, on the caller's (dedicated) thread: register every GPU that supports critical
    Xid events in a new event set and hand each event to ``on_xid`` until ``stop`` is set. The session holds an
    NVML reference of its own, so the sampling pass may shut down and initialise again meanwhile. ``on_registered``
    learns how many GPUs the session subscribed.
    ``nvmlEventSetWait`` blocks in C (ctypes releases the GIL) for at most ``wait_ms``; a timeout is normal.

    Raises:
        NVMLError: NVML failed (GPU lost, driver gone, no event support at all); the caller retries with backoff.
    """
    if pynvml is None:
        import pynvml as _pynvml

        pynvml = _pynvml
    nv = pynvml
    nv.nvmlInit()
    try:
        event_set = nv.nvmlEventSetCreate()
        try:
            registered = 0
            for index in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(index)
                try:
                    if nv.nvmlDeviceGetSupportedEventTypes(h) & XID_CRITICAL_ERROR:
                        nv.nvmlDeviceRegisterEvents(h, XID_CRITICAL_ERROR, event_set)
                        registered += 1
                except nv.NVMLError as exc:
                    if error_code(exc) in LIFECYCLE:
                        raise
            if not registered:
                raise nv.NVMLError(NOT_SUPPORTED)  # nothing to wait for: the caller backs off and asks again
            if on_registered is not None:
                on_registered(registered)
            while not stop.is_set():
                try:
                    data = nv.nvmlEventSetWait(event_set, wait_ms)
                except nv.NVMLError as exc:
                    if error_code(exc) == TIMEOUT:
                        continue  # nothing happened in the last wait
                    raise
                if not data.eventType & XID_CRITICAL_ERROR:
                    continue
                gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
                on_xid(
                    XidEvent(
                        _text(nv.nvmlDeviceGetUUID(data.device)),
                        int(data.eventData),
                        gi if gi != NOT_MIG else None,
                        ci if ci != NOT_MIG else None,
                        clock(),
                    )
                )
        finally:
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlEventSetFree(event_set)
    finally:
        with contextlib.suppress(nv.NVMLError):
            nv.nvmlShutdown()
