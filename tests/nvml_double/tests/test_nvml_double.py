"""Tests of the NVML test double through the real pynvml (nvidia-ml-py) ctypes path.

Two ways of loading it are exercised: a child process that finds ``libnvidia-ml.so.1`` through
``LD_LIBRARY_PATH`` (pynvml's own ``CDLL("libnvidia-ml.so.1")``), and this process, with ``pynvml.nvmlLib``
pointed at the double (``loaded_into_pynvml``, which also balances the double's init refcount after each test,
as the shared object stays loaded for the whole session).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from tests.nvml_double import (
    SCENARIO_ENV,
    Field,
    FieldError,
    Gpu,
    MigDevice,
    Process,
    ProcUtil,
    Scenario,
    ValueType,
    Xid,
    build,
    gpu_uuid,
    loaded_into_pynvml,
    mig_uuid,
    subprocess_env,
)
from tests.nvml_double.build import LIBRARY_NAME, STAMP_NAME, source_hash
from tests.nvml_double.scenario import (
    DRIVER_NOT_LOADED,
    GPU_IS_LOST,
    NO_PERMISSION,
    NOT_SUPPORTED,
    UNKNOWN,
    XID_CRITICAL_ERROR,
    GiB,
    MiB,
)
from tests.nvml_double.tests import dump as dumper
from tests.prereq import require_binary

REPO = Path(__file__).resolve().parents[3]
NO_INSTANCE = 0xFFFFFFFF
NOT_SUPPORTED_ERR = {"error": "NVMLError_NotSupported"}

# Every C symbol the double exports (and nothing else starting with "nvml").
EXPORTED = frozenset(
    {
        "nvmlInitWithFlags",
        "nvmlInit_v2",
        "nvmlShutdown",
        "nvmlErrorString",
        "nvmlSystemGetDriverVersion",
        "nvmlSystemGetCudaDriverVersion",
        "nvmlSystemGetCudaDriverVersion_v2",
        "nvmlSystemGetNVMLVersion",
        "nvmlDeviceGetCount_v2",
        "nvmlDeviceGetHandleByIndex_v2",
        "nvmlDeviceGetHandleByUUID",
        "nvmlDeviceGetIndex",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetSerial",
        "nvmlDeviceGetPciInfo_v3",
        "nvmlDeviceGetMinorNumber",
        "nvmlDeviceGetPersistenceMode",
        "nvmlDeviceGetComputeMode",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetEncoderUtilization",
        "nvmlDeviceGetDecoderUtilization",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetPowerManagementLimit",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetTemperatureThreshold",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetMaxClockInfo",
        "nvmlDeviceGetPerformanceState",
        "nvmlDeviceGetNumFans",
        "nvmlDeviceGetFanSpeed",
        "nvmlDeviceGetFanSpeed_v2",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRetiredPagesPendingStatus",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetCurrPcieLinkGeneration",
        "nvmlDeviceGetCurrPcieLinkWidth",
        "nvmlDeviceGetPcieReplayCounter",
        "nvmlDeviceGetFieldValues",
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetProcessUtilization",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetMigDeviceHandleByIndex",
        "nvmlDeviceIsMigDeviceHandle",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
        "nvmlEventSetCreate",
        "nvmlDeviceGetSupportedEventTypes",
        "nvmlDeviceRegisterEvents",
        "nvmlEventSetWait_v2",
        "nvmlEventSetFree",
    }
)


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lib_dir() -> Path:
    """The compiled double (cached by source hash); under CI=true a missing gcc fails instead of skipping."""
    require_binary("gcc", "gcc")
    return build()


@pytest.fixture
def scenario_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "nvml-scenario.txt"
    monkeypatch.setenv(SCENARIO_ENV, str(path))
    return path


@pytest.fixture
def lib(lib_dir: Path, scenario_path: Path) -> Iterator[ctypes.CDLL]:
    """This process's pynvml bound to the double; yields the CDLL for raw ctypes calls."""
    with loaded_into_pynvml(lib_dir) as cdll:
        yield cdll


def start(scenario: Scenario, path: Path) -> None:
    scenario.write(path)
    pynvml.nvmlInit()


def roundtrip(value: Any) -> Any:
    """As a child's JSON output reads (tuples become lists, int keys strings)."""
    return json.loads(json.dumps(value))


def run_dump(lib_dir: Path, scenario_path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.nvml_double.tests.dump"],
        cwd=REPO,
        env=subprocess_env(lib_dir, scenario_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run_child(code: str, lib_dir: Path, scenario_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=subprocess_env(lib_dir, scenario_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- what the dump should read for a scenario --------------------------------------------------------------


def expected_procs(procs: list[Process], mig: MigDevice | None = None) -> list[list[int | None]]:
    out: list[list[int | None]] = []
    for p in procs:
        if p.gpu_instance_id is not None or p.compute_instance_id is not None:
            gi = NO_INSTANCE if p.gpu_instance_id is None else p.gpu_instance_id
            ci = NO_INSTANCE if p.compute_instance_id is None else p.compute_instance_id
        elif mig is not None:
            gi = mig.gpu_instance_id if mig.gpu_instance_id is not None else 7 + mig.slot
            ci = NO_INSTANCE if mig.compute_instance_id is None else mig.compute_instance_id
        else:
            gi = ci = NO_INSTANCE
        out.append([p.pid, p.used_bytes, gi, ci])
    return out


def opt(value: Any) -> Any:
    return NOT_SUPPORTED_ERR if value is None else value


def expected_device(g: Gpu, index: int) -> dict[str, Any]:
    mig_on = (g.mig_mode or ((1, 1) if g.migs else (0, 0)))[0] == 1
    reserved, used = g.mem_reserved or 0, g.mem_used or 0
    if g.mem_total is None:
        mem_v1 = mem_v2 = NOT_SUPPORTED_ERR
    else:
        free = g.mem_free if g.mem_free is not None else g.mem_total - reserved - used
        mem_v1 = {"total": g.mem_total, "free": free, "used": used + reserved}
        mem_v2 = {
            "version": pynvml.nvmlMemory_v2,
            "total": g.mem_total,
            "reserved": reserved,
            "free": free,
            "used": used,
        }
    bus_id = g.resolved_pci_bus_id(index)
    domain, bus, dev = (int(x, 16) for x in bus_id.replace(".", ":").split(":")[:3])
    fans = g.num_fans if g.num_fans is not None else len(g.fans)
    compute = expected_procs(g.processes)
    graphics = expected_procs(g.graphics_processes)
    if mig_on:
        for m in g.migs:
            compute += expected_procs(m.processes, m)
            graphics += expected_procs(m.graphics_processes, m)
    return roundtrip(
        {
            "index": index,
            "uuid": g.resolved_uuid(index),
            "name": opt(g.name),
            "serial": g.serial if g.serial is not None else f"165492200{index:04d}",
            "pci": {
                "busIdLegacy": f"{domain:04X}:{bus:02X}:{dev:02X}.0",
                "domain": domain,
                "bus": bus,
                "device": dev,
                "pciDeviceId": g.pci_device_id or 0,
                "pciSubSystemId": g.pci_subsystem_id or 0,
                "busId": f"{domain:08X}:{bus:02X}:{dev:02X}.0",
            },
            "minor": g.minor if g.minor is not None else index,
            "persistence": opt(g.persistence),
            "compute_mode": opt(g.compute_mode),
            "util": (
                NOT_SUPPORTED_ERR
                if mig_on or (g.util_gpu is None and g.util_mem is None)
                else {"gpu": g.util_gpu or 0, "memory": g.util_mem or 0}
            ),
            "encoder": opt(g.encoder and list(g.encoder)),
            "decoder": opt(g.decoder and list(g.decoder)),
            "mem_v1": mem_v1,
            "mem_v2": mem_v2,
            "power_mw": opt(g.power_mw),
            "power_limit_mw": opt(g.power_limit_mw),
            "enforced_power_limit_mw": opt(
                g.enforced_power_limit_mw if g.enforced_power_limit_mw is not None else g.power_limit_mw
            ),
            "energy_mj": opt(g.energy_mj),
            "temp": opt(g.temp_gpu),
            "temp_v": opt(g.temp_gpu),
            "thresholds": {t: opt(g.temp_thresholds.get(t)) for t in range(4)},
            "clocks": {t: opt(g.clocks.get(t)) for t in range(4)},
            "max_clocks": {t: opt(g.max_clocks.get(t)) for t in range(4)},
            "pstate": opt(g.pstate),
            "num_fans": fans,
            "fan": g.fans[0] if g.fans else NOT_SUPPORTED_ERR,
            "fans_v2": [
                g.fans[i]
                if i < len(g.fans)
                else (NOT_SUPPORTED_ERR if not fans else {"error": "NVMLError_InvalidArgument"})
                for i in range(2)
            ],
            "clocks_event_reasons": opt(g.clocks_event_reasons),
            "clocks_throttle_reasons": opt(g.clocks_event_reasons),
            "ecc": {f"{et}{ct}": opt(g.ecc.get((et, ct))) for et in range(2) for ct in range(2)},
            "retired_pending": opt(g.retired_pending),
            "remapped": opt(g.remapped and list(g.remapped)),
            "pcie_gen": opt(g.pcie_gen),
            "pcie_width": opt(g.pcie_width),
            "pcie_replay": opt(g.pcie_replay),
            "processes": compute,
            "graphics_processes": graphics,
            "mig_mode": list(g.mig_mode or ((1, 1) if g.migs else (0, 0))),
            "max_mig": g.mig_max if g.mig_max is not None else 7,  # the double's default once mig_mode is given
            "is_mig": {"value": 0},
            "supported_events": opt(g.supported_events),
        }
    )


def expected_dump(sc: Scenario) -> dict[str, Any]:
    nvml_version = sc.nvml_version or f"{(sc.cuda or 0) // 1000}.{sc.driver}"
    return roundtrip(
        {
            "driver": opt(sc.driver),
            "cuda": opt(sc.cuda),
            "cuda_v2": opt(sc.cuda),
            "nvml_version": nvml_version,
            "count": len(sc.gpus),
            "gpus": [expected_device(g, i) for i, g in enumerate(sc.gpus)],
        }
    )


def busy_scenario() -> Scenario:
    """Two GPUs: an H100 with defaults, and one with every value moved off its default."""
    return Scenario(
        driver="570.86.15",
        cuda=12080,
        gpus=[
            Gpu(processes=[Process(4242, 2 * GiB)], fans=[]),
            Gpu(
                uuid="GPU-00000000-1111-2222-3333-444444444444",
                name="NVIDIA H100 NVL",
                serial="1321023045678",
                pci_bus_id="0001:C1:1F.0",
                pci_device_id=0x232110DE,
                pci_subsystem_id=0x183910DE,
                minor=7,
                persistence=0,
                compute_mode=3,
                util_gpu=97,
                util_mem=41,
                encoder=(12, 100000),
                decoder=(34, 200000),
                mem_total=95830 * MiB,
                mem_reserved=600 * MiB,
                mem_used=70 * GiB,
                mem_free=123,
                power_mw=351_234,
                power_limit_mw=400_000,
                enforced_power_limit_mw=350_000,
                energy_mj=2**40 + 5,
                temp_gpu=78,
                temp_thresholds={0: 95, 1: 92, 3: 89},
                clocks={0: 1755, 1: 1755, 2: 2619},
                max_clocks={0: 1785, 1: 1785, 2: 2619, 3: 1620},
                pstate=2,
                fans=[55, 60],
                clocks_event_reasons=0x4 | 0x40,
                ecc={(0, 0): 3, (0, 1): 120, (1, 0): 1, (1, 1): 2},
                retired_pending=1,
                remapped=(2, 1, 1, 0),
                pcie_gen=4,
                pcie_width=8,
                pcie_replay=17,
                processes=[Process(1, None), Process(2, 3 * GiB), Process(3, 0)],
                graphics_processes=[Process(99, 77 * MiB)],
                mig_max=None,
                mig_mode=(0, 1),
                supported_events=0x8 | 0x2,
            ),
        ],
    )


# --- ABI -----------------------------------------------------------------------------------------------------


def test_struct_layouts_and_versions_match_pynvml() -> None:
    assert ctypes.sizeof(pynvml.nvmlPciInfo_t) == 68
    assert ctypes.sizeof(pynvml.c_nvmlMemory_t) == 24
    assert ctypes.sizeof(pynvml.c_nvmlMemory_v2_t) == 40
    assert ctypes.sizeof(pynvml.c_nvmlUtilization_t) == 8
    assert ctypes.sizeof(pynvml.c_nvmlProcessInfo_v3_t) == 24
    assert ctypes.sizeof(pynvml.c_nvmlTemperature_v1_t) == 12
    assert ctypes.sizeof(pynvml.c_nvmlFieldValue_t) == 40
    assert pynvml.c_nvmlFieldValue_t.valueType.offset == 24
    assert pynvml.c_nvmlFieldValue_t.value.offset == 32
    assert ctypes.sizeof(pynvml.c_nvmlProcessUtilizationSample_t) == 32
    assert ctypes.sizeof(pynvml.c_nvmlEventData_t) == 32
    assert pynvml.nvmlMemory_v2 == 0x02000028
    assert pynvml.nvmlTemperature_v1 == 0x0100000C


def test_exports_exactly_the_faked_symbols(lib_dir: Path) -> None:
    nm = require_binary("nm", "binutils")
    out = subprocess.run(
        [nm, "-D", "--defined-only", str(lib_dir / LIBRARY_NAME)], capture_output=True, text=True, check=True
    ).stdout
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert {s for s in symbols if s.startswith("nvml")} == EXPORTED
    readelf = subprocess.run(["readelf", "-d", str(lib_dir / LIBRARY_NAME)], capture_output=True, text=True)
    if readelf.returncode == 0:
        assert f"[{LIBRARY_NAME}]" in readelf.stdout  # DT_SONAME


class Recorder:
    """Stands in for ``pynvml.nvmlLib`` and records which C symbols pynvml looks up."""

    def __init__(self, cdll: ctypes.CDLL) -> None:
        self._cdll = cdll
        self.names: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.names.append(name)
        return getattr(self._cdll, name)


def test_pynvml_resolves_the_documented_symbols(lib: ctypes.CDLL, scenario_path: Path) -> None:
    """Calls each pynvml wrapper and records the C symbol it resolves (the mapping the README documents)."""
    Scenario(
        gpus=[
            Gpu(fans=[40], retired_pending=0, proc_util=[ProcUtil(7, 10, 1, 2)], xids=[Xid(1, 79)]),
            Gpu(migs=[MigDevice(0)]),
        ]
    ).write(scenario_path)
    rec = Recorder(lib)
    pynvml.nvmlLib = rec  # restored by the fixture
    seen: list[tuple[str, list[str], str]] = []

    def via(symbol: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        pynvml._nvmlGetFunctionPointer_cache.clear()
        rec.names.clear()
        result = fn(*args, **kwargs)
        seen.append((fn.__name__, list(rec.names), symbol))
        return result

    via("nvmlInitWithFlags", pynvml.nvmlInit)
    via("nvmlSystemGetDriverVersion", pynvml.nvmlSystemGetDriverVersion)
    via("nvmlSystemGetCudaDriverVersion", pynvml.nvmlSystemGetCudaDriverVersion)
    via("nvmlSystemGetCudaDriverVersion_v2", pynvml.nvmlSystemGetCudaDriverVersion_v2)
    via("nvmlSystemGetNVMLVersion", pynvml.nvmlSystemGetNVMLVersion)
    via("nvmlDeviceGetCount_v2", pynvml.nvmlDeviceGetCount)
    h = via("nvmlDeviceGetHandleByIndex_v2", pynvml.nvmlDeviceGetHandleByIndex, 0)
    via("nvmlDeviceGetHandleByUUID", pynvml.nvmlDeviceGetHandleByUUID, gpu_uuid(0))
    via("nvmlDeviceGetIndex", pynvml.nvmlDeviceGetIndex, h)
    via("nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, h)
    via("nvmlDeviceGetName", pynvml.nvmlDeviceGetName, h)
    via("nvmlDeviceGetSerial", pynvml.nvmlDeviceGetSerial, h)
    via("nvmlDeviceGetPciInfo_v3", pynvml.nvmlDeviceGetPciInfo, h)
    via("nvmlDeviceGetMinorNumber", pynvml.nvmlDeviceGetMinorNumber, h)
    via("nvmlDeviceGetPersistenceMode", pynvml.nvmlDeviceGetPersistenceMode, h)
    via("nvmlDeviceGetComputeMode", pynvml.nvmlDeviceGetComputeMode, h)
    via("nvmlDeviceGetUtilizationRates", pynvml.nvmlDeviceGetUtilizationRates, h)
    via("nvmlDeviceGetEncoderUtilization", pynvml.nvmlDeviceGetEncoderUtilization, h)
    via("nvmlDeviceGetDecoderUtilization", pynvml.nvmlDeviceGetDecoderUtilization, h)
    via("nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo, h)
    via("nvmlDeviceGetMemoryInfo_v2", pynvml.nvmlDeviceGetMemoryInfo, h, version=pynvml.nvmlMemory_v2)
    via("nvmlDeviceGetPowerUsage", pynvml.nvmlDeviceGetPowerUsage, h)
    via("nvmlDeviceGetEnforcedPowerLimit", pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
    via("nvmlDeviceGetPowerManagementLimit", pynvml.nvmlDeviceGetPowerManagementLimit, h)
    via("nvmlDeviceGetTotalEnergyConsumption", pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
    via("nvmlDeviceGetTemperature", pynvml.nvmlDeviceGetTemperature, h, 0)
    via("nvmlDeviceGetTemperatureV", pynvml.nvmlDeviceGetTemperatureV, h, 0)
    via("nvmlDeviceGetTemperatureThreshold", pynvml.nvmlDeviceGetTemperatureThreshold, h, 0)
    via("nvmlDeviceGetClockInfo", pynvml.nvmlDeviceGetClockInfo, h, 1)
    via("nvmlDeviceGetMaxClockInfo", pynvml.nvmlDeviceGetMaxClockInfo, h, 1)
    via("nvmlDeviceGetPerformanceState", pynvml.nvmlDeviceGetPerformanceState, h)
    via("nvmlDeviceGetNumFans", pynvml.nvmlDeviceGetNumFans, h)
    via("nvmlDeviceGetFanSpeed", pynvml.nvmlDeviceGetFanSpeed, h)
    via("nvmlDeviceGetFanSpeed_v2", pynvml.nvmlDeviceGetFanSpeed_v2, h, 0)
    via("nvmlDeviceGetCurrentClocksEventReasons", pynvml.nvmlDeviceGetCurrentClocksEventReasons, h)
    via("nvmlDeviceGetCurrentClocksThrottleReasons", pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h)
    via("nvmlDeviceGetTotalEccErrors", pynvml.nvmlDeviceGetTotalEccErrors, h, 0, 0)
    via("nvmlDeviceGetRetiredPagesPendingStatus", pynvml.nvmlDeviceGetRetiredPagesPendingStatus, h)
    via("nvmlDeviceGetRemappedRows", pynvml.nvmlDeviceGetRemappedRows, h)
    via("nvmlDeviceGetCurrPcieLinkGeneration", pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h)
    via("nvmlDeviceGetCurrPcieLinkWidth", pynvml.nvmlDeviceGetCurrPcieLinkWidth, h)
    via("nvmlDeviceGetPcieReplayCounter", pynvml.nvmlDeviceGetPcieReplayCounter, h)
    via("nvmlDeviceGetFieldValues", pynvml.nvmlDeviceGetFieldValues, h, [82])
    via("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.nvmlDeviceGetComputeRunningProcesses, h)
    via("nvmlDeviceGetGraphicsRunningProcesses_v3", pynvml.nvmlDeviceGetGraphicsRunningProcesses, h)
    via("nvmlDeviceGetProcessUtilization", pynvml.nvmlDeviceGetProcessUtilization, h, 0)
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    via("nvmlDeviceGetMigMode", pynvml.nvmlDeviceGetMigMode, h1)
    via("nvmlDeviceGetMaxMigDeviceCount", pynvml.nvmlDeviceGetMaxMigDeviceCount, h1)
    m = via("nvmlDeviceGetMigDeviceHandleByIndex", pynvml.nvmlDeviceGetMigDeviceHandleByIndex, h1, 0)
    via("nvmlDeviceIsMigDeviceHandle", pynvml.nvmlDeviceIsMigDeviceHandle, m)
    via("nvmlDeviceGetGpuInstanceId", pynvml.nvmlDeviceGetGpuInstanceId, m)
    via("nvmlDeviceGetComputeInstanceId", pynvml.nvmlDeviceGetComputeInstanceId, m)
    via("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, m)
    s = via("nvmlEventSetCreate", pynvml.nvmlEventSetCreate)
    via("nvmlDeviceGetSupportedEventTypes", pynvml.nvmlDeviceGetSupportedEventTypes, h)
    via("nvmlDeviceRegisterEvents", pynvml.nvmlDeviceRegisterEvents, h, XID_CRITICAL_ERROR, s)
    via("nvmlEventSetWait_v2", pynvml.nvmlEventSetWait, s, 0)
    via("nvmlEventSetFree", pynvml.nvmlEventSetFree, s)
    via("nvmlErrorString", pynvml.nvmlErrorString, 15)
    via("nvmlShutdown", pynvml.nvmlShutdown)

    wrong = [(wrapper, names, symbol) for wrapper, names, symbol in seen if names != [symbol]]
    assert wrong == []
    assert {symbol for _, _, symbol in seen} | {"nvmlInit_v2"} == EXPORTED


# --- values ------------------------------------------------------------------------------------------------


def test_child_process_finds_the_double_through_ld_library_path(lib_dir: Path, scenario_path: Path) -> None:
    sc = busy_scenario()
    sc.write(scenario_path)
    assert run_dump(lib_dir, scenario_path) == expected_dump(sc)


def test_every_value_in_process(lib: ctypes.CDLL, scenario_path: Path) -> None:
    sc = busy_scenario()
    start(sc, scenario_path)
    assert roundtrip(dumper.dump()) == expected_dump(sc)


def test_values_left_out_are_not_supported(lib: ctypes.CDLL, scenario_path: Path) -> None:
    bare = Gpu(
        name=None,
        pci_device_id=None,
        pci_subsystem_id=None,
        persistence=None,
        compute_mode=None,
        util_gpu=None,
        util_mem=None,
        encoder=None,
        decoder=None,
        mem_total=None,
        power_mw=None,
        power_limit_mw=None,
        enforced_power_limit_mw=None,
        energy_mj=None,
        temp_gpu=None,
        temp_thresholds={},
        clocks={},
        max_clocks={},
        pstate=None,
        clocks_event_reasons=None,
        ecc={},
        remapped=None,
        pcie_gen=None,
        pcie_width=None,
        pcie_replay=None,
        mig_max=None,
        supported_events=None,
    )
    sc = Scenario(gpus=[bare], driver=None, cuda=None)
    start(sc, scenario_path)
    got = roundtrip(dumper.dump())
    assert got == expected_dump(sc) | {"nvml_version": NOT_SUPPORTED_ERR}
    assert got["gpus"][0]["power_mw"] == NOT_SUPPORTED_ERR
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(0))


def test_memory_v1_counts_reserved_as_used_and_v2_checks_its_version(lib: ctypes.CDLL, scenario_path: Path) -> None:
    start(Scenario(gpus=[Gpu(mem_total=1000, mem_reserved=100, mem_used=300)]), scenario_path)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    v1 = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert (v1.total, v1.free, v1.used) == (1000, 600, 400)
    v2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (v2.total, v2.reserved, v2.free, v2.used) == (1000, 100, 600, 300)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=0x01000028)

    temp = pynvml.c_nvmlTemperature_v1_t(version=0x0200000C, sensorType=0)
    assert lib.nvmlDeviceGetTemperatureV(h, ctypes.byref(temp)) == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetTemperature(h, 1)  # NVML_TEMPERATURE_GPU (0) is the only sensor


def test_string_buffers_too_small_are_insufficient_size(lib: ctypes.CDLL, scenario_path: Path) -> None:
    start(Scenario(), scenario_path)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    buf = ctypes.create_string_buffer(96)
    assert lib.nvmlDeviceGetUUID(h, buf, ctypes.c_uint(40)) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE  # 40 chars + NUL
    assert lib.nvmlDeviceGetUUID(h, buf, ctypes.c_uint(41)) == pynvml.NVML_SUCCESS
    assert buf.value.decode() == gpu_uuid(0)
    assert lib.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(4)) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE


# --- errors ------------------------------------------------------------------------------------------------


def test_injected_errors_map_to_pynvml_exception_classes(lib: ctypes.CDLL, scenario_path: Path) -> None:
    sc = Scenario(
        gpus=[
            Gpu(errors={"nvmlDeviceGetPowerUsage": NOT_SUPPORTED, "nvmlDeviceGetTemperatureV": NO_PERMISSION}),
            Gpu(errors={"*": GPU_IS_LOST}),
            Gpu(errors={"nvmlDeviceGetMemoryInfo": UNKNOWN}),  # the unversioned name also selects ..._v2
        ],
        errors={"nvmlSystemGetDriverVersion": NO_PERMISSION},
    )
    start(sc, scenario_path)
    h0, h2 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_NotSupported) as not_supported:
        pynvml.nvmlDeviceGetPowerUsage(h0)
    assert not_supported.value.value == 3
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlDeviceGetTemperatureV(h0, 0)
    assert pynvml.nvmlDeviceGetTemperature(h0, 0) == 31  # the deprecated call is a different function
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlSystemGetDriverVersion()
    with pytest.raises(pynvml.NVMLError_GpuIsLost) as lost:
        pynvml.nvmlDeviceGetHandleByIndex(1)
    assert str(lost.value) == "GPU is lost"
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByUUID(gpu_uuid(1))
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetMemoryInfo(h2)
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetMemoryInfo(h2, version=pynvml.nvmlMemory_v2)
    assert pynvml.nvmlDeviceGetPowerUsage(h2) == 69_000
    assert pynvml.nvmlDeviceGetCount() == 3
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-does-not-exist")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(3)


def test_function_the_double_does_not_export_is_function_not_found(lib: ctypes.CDLL, scenario_path: Path) -> None:
    start(Scenario(), scenario_path)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetBoardPartNumber(h)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h)  # only the _v3 symbol exists
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetPowerState(h)


def test_init_error_and_missing_scenario_are_driver_not_loaded(
    lib: ctypes.CDLL, scenario_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Scenario(init_error=DRIVER_NOT_LOADED).write(scenario_path)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()

    scenario_path.unlink()
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    monkeypatch.delenv(SCENARIO_ENV)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()

    monkeypatch.setenv(SCENARIO_ENV, str(scenario_path))
    Scenario().write(scenario_path)
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 1
    scenario_path.unlink()  # the driver goes away under a running process
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlDeviceGetCount()


def test_init_is_reference_counted(lib: ctypes.CDLL, scenario_path: Path) -> None:
    Scenario().write(scenario_path)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlInit()
    assert lib.nvmlInit_v2() == 0
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 1  # one reference left
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


def test_gpu_lost_then_restored_mid_process(lib: ctypes.CDLL, scenario_path: Path) -> None:
    sc = Scenario(gpus=[Gpu(power_mw=100_000), Gpu(power_mw=200_000)])
    start(sc, scenario_path)
    h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetPowerUsage(h1) == 200_000

    sc.gpus[1].errors = {"*": GPU_IS_LOST}
    sc.gpus[0].power_mw = 150_000
    sc.write(scenario_path)
    assert pynvml.nvmlDeviceGetPowerUsage(h0) == 150_000
    for call in (pynvml.nvmlDeviceGetPowerUsage, pynvml.nvmlDeviceGetUUID, pynvml.nvmlDeviceGetMemoryInfo):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call(h1)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetCount() == 2

    sc.gpus[1].errors = {}
    sc.gpus[1].power_mw = 210_000
    sc.write(scenario_path)
    assert pynvml.nvmlDeviceGetPowerUsage(h1) == 210_000  # the old handle works again
    assert pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(1)) == 210_000


def test_delay_makes_a_call_hang(lib: ctypes.CDLL, scenario_path: Path) -> None:
    start(
        Scenario(
            gpus=[Gpu(delays={"nvmlDeviceGetPowerUsage": 300}), Gpu()],
            delays={"nvmlDeviceGetCount_v2": 200},
        ),
        scenario_path,
    )
    h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
    t = time.monotonic()
    assert pynvml.nvmlDeviceGetPowerUsage(h0) == 69_000
    assert time.monotonic() - t >= 0.29
    t = time.monotonic()
    pynvml.nvmlDeviceGetPowerUsage(h1)
    pynvml.nvmlDeviceGetTemperature(h0, 0)
    assert time.monotonic() - t < 0.1
    t = time.monotonic()
    assert pynvml.nvmlDeviceGetCount() == 2
    assert time.monotonic() - t >= 0.19


def test_hang_blocks_a_call_until_the_rule_is_removed(lib: ctypes.CDLL, scenario_path: Path) -> None:
    """A hung call (GPU 0's power) blocks with the lock released, so other calls and GPUs answer meanwhile; it
    returns its normal value once a scenario without the rule is written."""
    hung = Scenario(gpus=[Gpu(hangs=["nvmlDeviceGetPowerUsage"]), Gpu(power_mw=123_000)])
    start(hung, scenario_path)
    h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
    result: list[int] = []
    caller = threading.Thread(target=lambda: result.append(pynvml.nvmlDeviceGetPowerUsage(h0)), daemon=True)
    caller.start()
    caller.join(0.5)
    assert caller.is_alive() and result == []  # still blocked after 0.5 s
    t = time.monotonic()
    assert pynvml.nvmlDeviceGetPowerUsage(h1) == 123_000
    assert pynvml.nvmlDeviceGetTemperature(h0, 0) == 31  # only the named function hangs
    assert time.monotonic() - t < 0.2
    Scenario(gpus=[Gpu(), Gpu(power_mw=123_000)]).write(scenario_path)
    caller.join(2.0)
    assert not caller.is_alive() and result == [69_000]


def test_hang_everything_includes_init_and_shutdown_releases_calls(lib: ctypes.CDLL, scenario_path: Path) -> None:
    """``hang *`` blocks nvmlInit too (released by removing the rule); a call hanging while initialised returns
    UNINITIALIZED once another thread shuts NVML down."""
    Scenario(hangs=["*"]).write(scenario_path)
    done = threading.Event()
    init = threading.Thread(target=lambda: (pynvml.nvmlInit(), done.set()), daemon=True)
    init.start()
    assert not done.wait(0.3)
    Scenario().write(scenario_path)
    assert done.wait(2.0)
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    Scenario(gpus=[Gpu(hangs=["*"])]).write(scenario_path)
    errors: list[int] = []

    def call() -> None:
        try:
            pynvml.nvmlDeviceGetPowerUsage(h0)
        except pynvml.NVMLError as exc:
            errors.append(exc.value)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(0.3)
    assert caller.is_alive()
    pynvml.nvmlShutdown()
    caller.join(2.0)
    assert not caller.is_alive() and errors == [pynvml.NVML_ERROR_UNINITIALIZED]


def test_unknown_keys_are_reported_once_on_stderr(lib_dir: Path, scenario_path: Path) -> None:
    Scenario(
        extra_lines=[
            "bogus_key 1",
            "device 0 frobnicate 2",
            "device 0 power_mw not-a-number",
            "device 0 error nvmlDeviceGetFooBar 3",
            "hang nvmlDeviceGetCount_v2 5",
        ]
    ).write(scenario_path)
    code = (
        "import os, pathlib, pynvml\n"
        "pynvml.nvmlInit()\n"
        "h = pynvml.nvmlDeviceGetHandleByIndex(0)\n"
        "print(pynvml.nvmlDeviceGetTemperature(h, 0))\n"
        "p = pathlib.Path(os.environ['NVML_DOUBLE_SCENARIO'])\n"
        "p.write_text(p.read_text() + '# changed\\n')  # parsed again: each problem still reported once\n"
        "print(pynvml.nvmlDeviceGetTemperature(h, 0))\n"
    )
    proc = run_child(code, lib_dir, scenario_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["31", "31"]
    lines = proc.stderr.splitlines()
    for needle in (
        "unknown key: bogus_key 1",
        "unknown device key: device 0 frobnicate 2",
        "expected one unsigned number: device 0 power_mw not-a-number",
        "function not implemented by the double (rule kept): device 0 error nvmlDeviceGetFooBar 3",
        "expected: hang <function|*>: hang nvmlDeviceGetCount_v2 5",
    ):
        assert sum(needle in line for line in lines) == 1, proc.stderr


# --- processes, fields -----------------------------------------------------------------------------------


def test_process_list_two_call_protocol_with_64_processes(lib: ctypes.CDLL, scenario_path: Path) -> None:
    procs = [Process(1000 + i, (i + 1) * MiB) for i in range(64)]
    procs[5] = Process(1005, None)  # NVML_VALUE_NOT_AVAILABLE
    start(Scenario(gpus=[Gpu(processes=procs), Gpu()]), scenario_path)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)

    got = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in got] == [
        (p.pid, p.used_bytes, NO_INSTANCE, NO_INSTANCE) for p in procs
    ]
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(1)) == []
    assert pynvml.nvmlDeviceGetGraphicsRunningProcesses(h) == []

    fn = lib.nvmlDeviceGetComputeRunningProcesses_v3
    count = ctypes.c_uint(0)
    assert fn(h, ctypes.byref(count), None) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 64
    small = (pynvml.c_nvmlProcessInfo_v3_t * 10)()
    count.value = 10
    assert fn(h, ctypes.byref(count), small) == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 64
    exact = (pynvml.c_nvmlProcessInfo_v3_t * 64)()
    assert fn(h, ctypes.byref(count), exact) == pynvml.NVML_SUCCESS
    assert (count.value, exact[63].pid, exact[63].usedGpuMemory) == (64, 1063, 64 * MiB)


def test_process_utilization_samples_newer_than_last_seen(lib: ctypes.CDLL, scenario_path: Path) -> None:
    samples = [ProcUtil(11, 1_000, 50, 20, 1, 2), ProcUtil(12, 2_000, 60, 30), ProcUtil(11, 3_000, 70, 40, 5, 6)]
    start(Scenario(gpus=[Gpu(proc_util=samples), Gpu(migs=[MigDevice(0)], proc_util=samples)]), scenario_path)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)

    def read(last_seen: int) -> list[tuple[int, ...]]:
        got = pynvml.nvmlDeviceGetProcessUtilization(h, last_seen)
        return [(s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil) for s in got]

    assert read(0) == [(11, 1_000, 50, 20, 1, 2), (12, 2_000, 60, 30, 0, 0), (11, 3_000, 70, 40, 5, 6)]
    assert read(2_000) == [(11, 3_000, 70, 40, 5, 6)]
    with pytest.raises(pynvml.NVMLError_NotFound):
        read(3_000)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # MIG enabled: no per-process utilisation
        pynvml.nvmlDeviceGetProcessUtilization(pynvml.nvmlDeviceGetHandleByIndex(1), 0)


def test_field_values_batch_with_per_entry_return(lib: ctypes.CDLL, scenario_path: Path) -> None:
    gpu = Gpu(
        fields=[
            Field(82, 43, value_type=ValueType.UNSIGNED_INT),  # NVML_FI_DEV_MEMORY_TEMP
            Field(186, 312.5, scope_id=0),  # NVML_FI_DEV_POWER_INSTANT, NVML_POWER_SCOPE_GPU
            Field(186, 2**40, scope_id=1),  # ... NVML_POWER_SCOPE_MODULE
            Field(3, -7),
            Field(83, 65535, value_type=ValueType.UNSIGNED_SHORT),
        ],
        field_errors=[FieldError(155, NO_PERMISSION)],
    )
    start(Scenario(gpus=[gpu]), scenario_path)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    before_us = time.time_ns() // 1000
    values = pynvml.nvmlDeviceGetFieldValues(h, [82, (186, 0), (186, 1), (186, 2), 155, 3, 83, 999])
    after_us = time.time_ns() // 1000
    got = [(v.fieldId, v.scopeId, v.nvmlReturn, v.valueType) for v in values]
    assert got == [
        (82, 0, 0, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT),
        (186, 0, 0, pynvml.NVML_VALUE_TYPE_DOUBLE),
        (186, 1, 0, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG),
        (186, 2, NOT_SUPPORTED, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG),
        (155, 0, NO_PERMISSION, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG),
        (3, 0, 0, pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG),
        (83, 0, 0, pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT),
        (999, 0, NOT_SUPPORTED, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG),
    ]
    assert values[0].value.uiVal == 43
    assert values[1].value.dVal == 312.5
    assert values[2].value.ullVal == 2**40
    assert values[5].value.sllVal == -7
    assert values[6].value.usVal == 65535
    assert all(before_us <= v.timestamp <= after_us for v in values)


# --- MIG ---------------------------------------------------------------------------------------------------


def test_mig_device_handles(lib: ctypes.CDLL, scenario_path: Path) -> None:
    migs = [
        MigDevice(0, processes=[Process(501, 2 * GiB)]),
        MigDevice(
            2,
            name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
            gpu_instance_id=2,
            compute_instance_id=0,
            mem_total=40 * GiB,
            mem_used=5 * GiB,
            processes=[Process(502, 3 * GiB), Process(503, None, 2, 1)],
        ),
    ]
    start(Scenario(gpus=[Gpu(util_gpu=80, migs=migs), Gpu(util_gpu=10)]), scenario_path)
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMigMode(parent) == [1, 1]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    assert pynvml.nvmlDeviceIsMigDeviceHandle(parent).value == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):  # MIG-enabled parent
        pynvml.nvmlDeviceGetUtilizationRates(parent)

    m0 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    with pytest.raises(pynvml.NVMLError_NotFound):  # empty slot: skip it
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    m2 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 2)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 7)

    assert pynvml.nvmlDeviceIsMigDeviceHandle(m2).value == 1
    assert pynvml.nvmlDeviceGetUUID(m0) == mig_uuid(0, 0)
    assert pynvml.nvmlDeviceGetName(m2) == "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    assert (pynvml.nvmlDeviceGetGpuInstanceId(m0), pynvml.nvmlDeviceGetComputeInstanceId(m0)) == (7, 0)
    assert (pynvml.nvmlDeviceGetGpuInstanceId(m2), pynvml.nvmlDeviceGetComputeInstanceId(m2)) == (2, 0)
    mem = pynvml.nvmlDeviceGetMemoryInfo(m2, version=pynvml.nvmlMemory_v2)
    assert (mem.total, mem.used, mem.free) == (40 * GiB, 5 * GiB, 35 * GiB)
    assert pynvml.nvmlDeviceGetMemoryInfo(m0).total == 9984 * MiB
    with pytest.raises(pynvml.NVMLError_NotSupported):  # no utilisation per MIG device either
        pynvml.nvmlDeviceGetUtilizationRates(m0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuInstanceId(parent)

    def pids(handle: Any) -> list[tuple[int, int | None, int, int]]:
        return [
            (p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ]

    assert pids(m2) == [(502, 3 * GiB, 2, 0), (503, None, 2, 1)]
    assert pids(parent) == [(501, 2 * GiB, 7, 0), (502, 3 * GiB, 2, 0), (503, None, 2, 1)]

    back = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m2)
    assert pynvml.nvmlDeviceGetUUID(back) == gpu_uuid(0)
    assert pynvml.nvmlDeviceGetIndex(back) == 0
    by_uuid = pynvml.nvmlDeviceGetHandleByUUID(mig_uuid(0, 2))
    assert pynvml.nvmlDeviceIsMigDeviceHandle(by_uuid).value == 1
    assert pynvml.nvmlDeviceGetName(by_uuid).endswith("3g.40gb")

    other = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetUtilizationRates(other).gpu == 10
    assert pynvml.nvmlDeviceGetMigMode(other) == [0, 0]
    with pytest.raises(pynvml.NVMLError_NotSupported):  # MIG disabled
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(other, 0)


def test_lost_parent_makes_its_mig_devices_lost(lib: ctypes.CDLL, scenario_path: Path) -> None:
    sc = Scenario(gpus=[Gpu(migs=[MigDevice(0)])])
    start(sc, scenario_path)
    m0 = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 0)
    sc.gpus[0].errors = {"*": GPU_IS_LOST}
    sc.write(scenario_path)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetMemoryInfo(m0)


# --- events ------------------------------------------------------------------------------------------------


def test_xid_events_are_delivered_once_each_to_every_set(lib: ctypes.CDLL, scenario_path: Path) -> None:
    sc = Scenario(
        gpus=[
            Gpu(xids=[Xid(2, 48), Xid(1, 79)]),
            Gpu(xids=[Xid(3, 31, gpu_instance_id=9, compute_instance_id=0)]),
            Gpu(xids=[Xid(4, 13)]),  # never registered
        ]
    )
    start(sc, scenario_path)
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
    assert pynvml.nvmlDeviceGetSupportedEventTypes(handles[0]) & XID_CRITICAL_ERROR
    first, second = pynvml.nvmlEventSetCreate(), pynvml.nvmlEventSetCreate()
    for s in (first, second):
        pynvml.nvmlDeviceRegisterEvents(handles[0], XID_CRITICAL_ERROR, s)
        pynvml.nvmlDeviceRegisterEvents(handles[1], XID_CRITICAL_ERROR | 0x2, s)

    def drain(s: Any) -> list[tuple[int, int, int, int, int]]:
        events = []
        while True:
            try:
                e = pynvml.nvmlEventSetWait(s, 0)
            except pynvml.NVMLError_Timeout:
                return events
            index = pynvml.nvmlDeviceGetIndex(e.device)
            events.append((index, e.eventType, e.eventData, e.gpuInstanceId, e.computeInstanceId))

    expected = [
        (0, XID_CRITICAL_ERROR, 79, NO_INSTANCE, NO_INSTANCE),
        (0, XID_CRITICAL_ERROR, 48, NO_INSTANCE, NO_INSTANCE),
        (1, XID_CRITICAL_ERROR, 31, 9, 0),
    ]
    assert drain(first) == expected
    assert drain(first) == []
    assert drain(second) == expected

    sc.gpus[0].xids.append(Xid(5, 94))  # a new event while the process runs
    sc.write(scenario_path)
    assert drain(first) == [(0, XID_CRITICAL_ERROR, 94, NO_INSTANCE, NO_INSTANCE)]
    assert drain(second) == [(0, XID_CRITICAL_ERROR, 94, NO_INSTANCE, NO_INSTANCE)]
    pynvml.nvmlEventSetFree(first)
    pynvml.nvmlEventSetFree(second)

    with pytest.raises(pynvml.NVMLError_NotSupported):  # not in supported_events
        pynvml.nvmlDeviceRegisterEvents(handles[2], 0x4000, pynvml.nvmlEventSetCreate())


def test_event_wait_blocks_until_timeout_without_using_cpu(lib: ctypes.CDLL, scenario_path: Path) -> None:
    start(Scenario(), scenario_path)
    s = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(0), XID_CRITICAL_ERROR, s)
    wall, cpu = time.monotonic(), time.process_time()
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(s, 500)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert 0.49 <= wall < 1.5, wall
    assert cpu < 0.05, cpu  # ~50 wake-ups of a stat() each, not a busy loop
    pynvml.nvmlEventSetFree(s)


def test_event_wait_wakes_for_an_event_written_while_waiting(lib: ctypes.CDLL, scenario_path: Path) -> None:
    sc = Scenario()
    start(sc, scenario_path)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    s = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(h, XID_CRITICAL_ERROR, s)

    def later() -> None:
        time.sleep(0.2)
        sc.gpus[0].xids = [Xid(1, 119)]
        sc.write(scenario_path)

    writer = threading.Thread(target=later)
    t = time.monotonic()
    writer.start()
    event = pynvml.nvmlEventSetWait(s, 5000)
    elapsed = time.monotonic() - t
    writer.join()
    assert event.eventData == 119
    assert 0.15 <= elapsed < 1.5, elapsed

    # Other calls go on while a thread waits: the wait holds neither the GIL nor the double's lock.
    waiter_result: list[str] = []

    def wait_idle() -> None:
        try:
            pynvml.nvmlEventSetWait(s, 1000)
        except pynvml.NVMLError as e:
            waiter_result.append(type(e).__name__)

    waiter = threading.Thread(target=wait_idle)
    waiter.start()
    time.sleep(0.05)
    t = time.monotonic()
    for _ in range(20):
        pynvml.nvmlDeviceGetPowerUsage(h)
    assert time.monotonic() - t < 0.2
    waiter.join()
    assert waiter_result == ["NVMLError_Timeout"]
    pynvml.nvmlEventSetFree(s)


def test_event_wait_reports_a_gpu_lost_while_waiting(lib: ctypes.CDLL, scenario_path: Path) -> None:
    sc = Scenario()
    start(sc, scenario_path)
    s = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(0), XID_CRITICAL_ERROR, s)

    def lose() -> None:
        time.sleep(0.2)
        sc.gpus[0].errors = {"*": GPU_IS_LOST}
        sc.write(scenario_path)

    writer = threading.Thread(target=lose)
    writer.start()
    t = time.monotonic()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlEventSetWait(s, 5000)
    assert time.monotonic() - t < 1.5
    writer.join()


def test_event_wait_in_a_child_process(lib_dir: Path, scenario_path: Path) -> None:
    Scenario(gpus=[Gpu(xids=[Xid(1, 79)])]).write(scenario_path)
    code = (
        "import json, time, pynvml\n"
        "pynvml.nvmlInit()\n"
        "s = pynvml.nvmlEventSetCreate()\n"
        "pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(0), 8, s)\n"
        "e = pynvml.nvmlEventSetWait(s, 500)\n"
        "t, c = time.monotonic(), time.process_time()\n"
        "try:\n"
        "    pynvml.nvmlEventSetWait(s, 500)\n"
        "except pynvml.NVMLError_Timeout:\n"
        "    pass\n"
        "print(json.dumps([e.eventData, time.monotonic() - t, time.process_time() - c]))\n"
    )
    proc = run_child(code, lib_dir, scenario_path)
    assert proc.returncode == 0, proc.stderr
    xid, wall, cpu = json.loads(proc.stdout)
    assert xid == 79
    assert 0.49 <= wall < 1.5
    assert cpu < 0.05


# --- concurrency, build, scenario writer -------------------------------------------------------------------


def test_concurrent_calls_while_the_scenario_changes(lib: ctypes.CDLL, scenario_path: Path) -> None:
    a = Scenario(gpus=[Gpu(power_mw=100_000, processes=[Process(i) for i in range(3)])])
    b = Scenario(gpus=[Gpu(power_mw=200_000, processes=[Process(i) for i in range(5)])])
    start(a, scenario_path)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                power = pynvml.nvmlDeviceGetPowerUsage(h)
                count = len(pynvml.nvmlDeviceGetComputeRunningProcesses(h))
            except pynvml.NVMLError as e:
                problems.append(repr(e))
                return
            if power not in (100_000, 200_000) or count not in (3, 5):
                problems.append(f"{power} {count}")

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    for i in range(60):
        (b if i % 2 == 0 else a).write(scenario_path)
        time.sleep(0.005)
    stop.set()
    for t in threads:
        t.join()
    assert problems == []


def test_build_is_cached_by_source_hash(tmp_path: Path) -> None:
    require_binary("gcc", "gcc")
    out = build(tmp_path / "lib")
    library, stamp = out / LIBRARY_NAME, out / STAMP_NAME
    assert stamp.read_text().strip() == source_hash()
    mtime = library.stat().st_mtime_ns
    assert build(tmp_path / "lib") == out
    assert library.stat().st_mtime_ns == mtime
    stamp.write_text("stale\n")
    time.sleep(0.01)
    build(tmp_path / "lib")
    assert library.stat().st_mtime_ns != mtime
    assert stamp.read_text().strip() == source_hash()


def test_scenario_rendering() -> None:
    sc = Scenario(
        gpus=[
            Gpu(
                migs=[MigDevice(1, processes=[Process(7, None)])],
                xids=[Xid(3, 79, 1, 0)],
                fields=[Field(186, 1.5, scope_id=2)],
                field_errors=[FieldError(155, 4)],
                errors={"*": 15},
                delays={"nvmlDeviceGetPowerUsage": 250},
                hangs=["nvmlDeviceGetTemperature"],
            )
        ],
        init_error=9,
        errors={"nvmlDeviceGetCount_v2": 999},
        hangs=["nvmlDeviceGetCount_v2"],
    )
    lines = sc.render().splitlines()
    for line in (
        "driver 550.54.15",
        "cuda 12040",
        "init_error 9",
        "error nvmlDeviceGetCount_v2 999",
        f"device 0 uuid {gpu_uuid(0)}",
        "device 0 name NVIDIA H100 80GB HBM3",
        "device 0 pci_bus_id 00000000:18:00.0",
        "device 0 pci_device_id 0x233010de",
        "device 0 mig_mode 1 1",
        f"device 0 mig 1 uuid {mig_uuid(0, 1)}",
        "device 0 mig 1 gi 8",
        "device 0 mig 1 process 7 na",
        "device 0 xid 3 79 1 0",
        "device 0 field 186 2 d:1.5",
        "device 0 field_error 155 4",
        "device 0 error * 15",
        "device 0 delay nvmlDeviceGetPowerUsage 250",
        "device 0 hang nvmlDeviceGetTemperature",
        "hang nvmlDeviceGetCount_v2",
    ):
        assert line in lines
    with pytest.raises(ValueError, match="one non-empty line"):
        Scenario(gpus=[Gpu(name="two\nlines")]).render()


def test_scenario_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    Scenario().write(path)
    inode = path.stat().st_ino
    Scenario(driver="1.2.3").write(path)
    assert path.stat().st_ino != inode  # a rename: the double sees a new file, never a half-written one
    assert "driver 1.2.3" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["s.txt"]


def test_environment_helpers(lib_dir: Path, tmp_path: Path) -> None:
    env = subprocess_env(lib_dir, tmp_path / "s.txt", base={"LD_LIBRARY_PATH": "/opt/x", "PATH": "/bin"})
    assert env == {
        "LD_LIBRARY_PATH": f"{lib_dir}{os.pathsep}/opt/x",
        "PATH": "/bin",
        SCENARIO_ENV: str(tmp_path / "s.txt"),
    }
