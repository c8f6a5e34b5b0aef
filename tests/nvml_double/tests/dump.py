"""Reads every value the NVML double serves through the real pynvml API and returns it as plain data.

Used in-process by the tests and as a child process (``python -m tests.nvml_double.tests.dump``, printing JSON),
so both ways of loading the double are checked with the same reader. A call that raises an NVMLError yields
``{"error": "<exception class name>"}`` in place of its value.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pynvml


def q(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except pynvml.NVMLError as e:
        return {"error": type(e).__name__}


def struct(obj: Any, *names: str) -> Any:
    if isinstance(obj, dict):  # an error
        return obj
    return {n: (v.decode() if isinstance(v, bytes) else v) for n in names for v in [getattr(obj, n)]}


def procs(result: Any) -> Any:
    if isinstance(result, dict):
        return result
    return [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId] for p in result]


def device(h: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "index": q(pynvml.nvmlDeviceGetIndex, h),
        "uuid": q(pynvml.nvmlDeviceGetUUID, h),
        "name": q(pynvml.nvmlDeviceGetName, h),
        "serial": q(pynvml.nvmlDeviceGetSerial, h),
        "pci": struct(
            q(pynvml.nvmlDeviceGetPciInfo, h),
            "busIdLegacy",
            "domain",
            "bus",
            "device",
            "pciDeviceId",
            "pciSubSystemId",
            "busId",
        ),
        "minor": q(pynvml.nvmlDeviceGetMinorNumber, h),
        "persistence": q(pynvml.nvmlDeviceGetPersistenceMode, h),
        "compute_mode": q(pynvml.nvmlDeviceGetComputeMode, h),
        "util": struct(q(pynvml.nvmlDeviceGetUtilizationRates, h), "gpu", "memory"),
        "encoder": q(pynvml.nvmlDeviceGetEncoderUtilization, h),
        "decoder": q(pynvml.nvmlDeviceGetDecoderUtilization, h),
        "mem_v1": struct(q(pynvml.nvmlDeviceGetMemoryInfo, h), "total", "free", "used"),
        "mem_v2": struct(
            q(pynvml.nvmlDeviceGetMemoryInfo, h, version=pynvml.nvmlMemory_v2),
            "version",
            "total",
            "reserved",
            "free",
            "used",
        ),
        "power_mw": q(pynvml.nvmlDeviceGetPowerUsage, h),
        "power_limit_mw": q(pynvml.nvmlDeviceGetPowerManagementLimit, h),
        "enforced_power_limit_mw": q(pynvml.nvmlDeviceGetEnforcedPowerLimit, h),
        "energy_mj": q(pynvml.nvmlDeviceGetTotalEnergyConsumption, h),
        "temp": q(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        "temp_v": q(pynvml.nvmlDeviceGetTemperatureV, h, pynvml.NVML_TEMPERATURE_GPU),
        "thresholds": {t: q(pynvml.nvmlDeviceGetTemperatureThreshold, h, t) for t in range(4)},
        "clocks": {t: q(pynvml.nvmlDeviceGetClockInfo, h, t) for t in range(4)},
        "max_clocks": {t: q(pynvml.nvmlDeviceGetMaxClockInfo, h, t) for t in range(4)},
        "pstate": q(pynvml.nvmlDeviceGetPerformanceState, h),
        "num_fans": q(pynvml.nvmlDeviceGetNumFans, h),
        "fan": q(pynvml.nvmlDeviceGetFanSpeed, h),
        "fans_v2": [q(pynvml.nvmlDeviceGetFanSpeed_v2, h, i) for i in range(2)],
        "clocks_event_reasons": q(pynvml.nvmlDeviceGetCurrentClocksEventReasons, h),
        "clocks_throttle_reasons": q(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h),
        "ecc": {f"{et}{ct}": q(pynvml.nvmlDeviceGetTotalEccErrors, h, et, ct) for et in range(2) for ct in range(2)},
        "retired_pending": q(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, h),
        "remapped": q(pynvml.nvmlDeviceGetRemappedRows, h),
        "pcie_gen": q(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
        "pcie_width": q(pynvml.nvmlDeviceGetCurrPcieLinkWidth, h),
        "pcie_replay": q(pynvml.nvmlDeviceGetPcieReplayCounter, h),
        "processes": procs(q(pynvml.nvmlDeviceGetComputeRunningProcesses, h)),
        "graphics_processes": procs(q(pynvml.nvmlDeviceGetGraphicsRunningProcesses, h)),
        "mig_mode": q(pynvml.nvmlDeviceGetMigMode, h),
        "max_mig": q(pynvml.nvmlDeviceGetMaxMigDeviceCount, h),
        "is_mig": struct(q(pynvml.nvmlDeviceIsMigDeviceHandle, h), "value"),
        "supported_events": q(pynvml.nvmlDeviceGetSupportedEventTypes, h),
    }
    if isinstance(d["remapped"], tuple):
        d["remapped"] = list(d["remapped"])
    return d


def dump() -> dict[str, Any]:
    """Everything, for an initialised pynvml."""
    count = pynvml.nvmlDeviceGetCount()
    return {
        "driver": q(pynvml.nvmlSystemGetDriverVersion),
        "cuda": q(pynvml.nvmlSystemGetCudaDriverVersion),
        "cuda_v2": q(pynvml.nvmlSystemGetCudaDriverVersion_v2),
        "nvml_version": q(pynvml.nvmlSystemGetNVMLVersion),
        "count": count,
        "gpus": [device(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)],
    }


def main() -> None:
    pynvml.nvmlInit()
    try:
        # JSON turns int dict keys into strings; the tests compare through the same round trip.
        json.dump(dump(), sys.stdout)
    finally:
        pynvml.nvmlShutdown()


if __name__ == "__main__":
    main()
