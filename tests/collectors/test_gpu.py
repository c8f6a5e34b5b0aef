"""
The gpu collector through the NVML test double (tests/nvml_double), loaded into the real pynvml in this process:
every value below crossed pynvml's ctypes structs and error mapping, exactly as with NVIDIA's library.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from nodeagent.collector import CollectorContext, NoDataError
from nodeagent.collectors.gpu import GpuCollector, GpuConfig, NvmlBusy, allocation_rows
from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily
from nodeagent.runtimes import PodDeviceCache, RuntimeMetadata
from nodeagent.sources.cgroupfs import discover_layout
from nodeagent.sources.nvml import GpuSample, MigSample, mig_profile
from nodeagent.sources.podresources import DeviceAllocation, PodResourcesClient
from nodeagent.workloads import WorkloadResolver
from tests.doubles.podresources import ContainerAlloc, DeviceAlloc, PodAlloc, PodResourcesDouble, typical_allocations
from tests.integration.cgroups_helpers import TestCgroups
from tests.nvml_double import SCENARIO_ENV, build_or_missing, loaded_into_pynvml
from tests.nvml_double.scenario import (
    GPU_IS_LOST,
    NO_PERMISSION,
    NOT_SUPPORTED,
    Field,
    FieldError,
    Gpu,
    MigDevice,
    Process,
    ProcUtil,
    Scenario,
    Xid,
    gpu_uuid,
    mig_uuid,
)
from tests.prereq import missing

SLEEPER = "print('ready', flush=True); import time; time.sleep(60)"


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_or_missing()


@pytest.fixture
def scenario_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "nvml.scenario"
    monkeypatch.setenv(SCENARIO_ENV, str(path))
    return path


@pytest.fixture
def double(lib_dir: Path, scenario_path: Path) -> Iterator[Path]:
    Scenario().write(scenario_path)
    with loaded_into_pynvml(lib_dir):
        yield scenario_path


@pytest.fixture
def cgroups() -> Iterator[TestCgroups]:
    if os.geteuid() != 0:
        missing("root (test cgroups)")
    tree = TestCgroups(discover_layout(HostPaths().cgroup_root))
    try:
        yield tree
    finally:
        assert tree.cleanup() == []


def make(resolver: WorkloadResolver | None = None, **cfg: bool) -> GpuCollector:
    """A collector; the Xid watcher only where a test asks for it (stopping it waits up to a second)."""
    cfg.setdefault("xid_events", False)
    paths = HostPaths()
    ctx = CollectorContext("gpu", paths, structlog.get_logger(), resolver or WorkloadResolver(paths))
    return GpuCollector(ctx, GpuConfig(**cfg))


async def passes(c: GpuCollector, n: int = 1) -> list[list[MetricFamily]]:
    try:
        return [list(await c.collect()) for _ in range(n)]
    finally:
        await c.aclose()


def rows(families: list[MetricFamily], name: str) -> dict[tuple[str, ...], float]:
    return {labels: v for f in families if f.name == name for labels, v in f.samples}


def named(families: list[MetricFamily], name: str) -> list[dict[str, str]]:
    """Each sample's labels by name."""
    return [dict(zip(f.labelnames, labels, strict=True)) for f in families if f.name == name for labels, _ in f.samples]


def g(index: int) -> tuple[str, str]:
    return (str(index), gpu_uuid(index))


async def test_values_equal_the_scenario(double: Path) -> None:
    gpu0 = Gpu(
        util_gpu=87,
        util_mem=41,
        encoder=(12, 167000),
        mem_used=40 << 30,
        power_mw=412_345,
        enforced_power_limit_mw=650_000,
        energy_mj=9_876_543_210,
        temp_gpu=66,
        clocks={0: 1755, 1: 1755, 2: 2619, 3: 1500},
        pstate=2,
        fans=[55, 60],
        clocks_event_reasons=0x4 | 0x40,  # sw power cap + hw thermal
        remapped=(3, 1, 1, 0),
        pcie_gen=4,
        pcie_width=8,
        fields=[
            Field(3, 11),
            Field(4, 2),
            Field(5, 123),
            Field(6, 7),
            Field(29, 5),
            Field(31, 1),
            Field(74, 2_500_000_000),
            Field(270, 1_000_000),
            Field(82, 47),
            Field(94, 9),
            Field(197, 123_456_789),
            Field(198, 987_654_321),
            Field(91, 2),
            Field(138, 100, 0),
            Field(138, 200, 1),
            Field(139, 300, 0),
            Field(139, 400, 1),
            Field(161, 4, 1),
            Field(163, 6, 0),
        ],
    )
    Scenario(gpus=[gpu0, Gpu(util_gpu=3, temp_gpu=40)]).write(double)
    [families] = await passes(make())
    g0 = g(0)
    assert rows(families, "nodeagent_gpu_up") == {g0: 1.0, g(1): 1.0}
    util = rows(families, "nodeagent_gpu_utilization_ratio")
    assert {k[2]: v for k, v in util.items() if k[:2] == g0} == {
        "gpu": 0.87,
        "memory": 0.41,
        "encoder": 0.12,
        "decoder": 0.0,
    }
    assert util[(*g(1), "gpu")] == 0.03
    assert rows(families, "nodeagent_gpu_memory_used_bytes")[g0] == 40 << 30
    total = rows(families, "nodeagent_gpu_memory_total_bytes")[g0]
    reserved = rows(families, "nodeagent_gpu_memory_reserved_bytes")[g0]
    assert rows(families, "nodeagent_gpu_memory_free_bytes")[g0] == total - reserved - (40 << 30)
    assert rows(families, "nodeagent_gpu_power_watts")[g0] == 412.345
    assert rows(families, "nodeagent_gpu_power_limit_watts")[g0] == 650.0
    assert rows(families, "nodeagent_gpu_energy_joules_total")[g0] == 9_876_543.21
    temps = rows(families, "nodeagent_gpu_temperature_celsius")
    assert (temps[(*g0, "gpu")], temps[(*g0, "memory")], temps[(*g(1), "gpu")]) == (66, 47, 40)
    assert (*g(1), "memory") not in temps  # no field 82 on GPU 1: NOT_SUPPORTED, left out
    thresholds = rows(families, "nodeagent_gpu_temperature_threshold_celsius")
    assert {k[2]: v for k, v in thresholds.items() if k[:2] == g0} == {
        "shutdown": 92,
        "slowdown": 89,
        "memory_max": 95,
        "gpu_max": 87,
    }
    clocks = rows(families, "nodeagent_gpu_clock_hertz")
    assert clocks[(*g0, "sm")] == 1755e6 and clocks[(*g0, "memory")] == 2619e6
    assert rows(families, "nodeagent_gpu_clock_max_hertz")[(*g0, "graphics")] == 1980e6
    assert rows(families, "nodeagent_gpu_performance_state")[g0] == 2
    assert rows(families, "nodeagent_gpu_fan_speed_ratio") == {(*g0, "0"): 0.55, (*g0, "1"): 0.60}
    reasons = {k[2]: v for k, v in rows(families, "nodeagent_gpu_clocks_event_reason").items() if k[:2] == g0}
    assert {r for r, v in reasons.items() if v} == {"sw_power_cap", "hw_thermal_slowdown"} and len(reasons) == 9
    assert rows(families, "nodeagent_gpu_clocks_event_seconds_total") == {
        (*g0, "sw_power_cap"): 2.5,
        (*g0, "hw_thermal_slowdown"): 0.001,
    }
    assert rows(families, "nodeagent_gpu_ecc_errors_total") == {
        (*g0, "corrected", "volatile"): 11,
        (*g0, "uncorrected", "volatile"): 2,
        (*g0, "corrected", "aggregate"): 123,
        (*g0, "uncorrected", "aggregate"): 7,
    }
    assert rows(families, "nodeagent_gpu_retired_pages_total") == {(*g0, "single_bit_ecc"): 5}
    assert rows(families, "nodeagent_gpu_retired_pages_pending") == {g0: 1}
    remapped = rows(families, "nodeagent_gpu_remapped_rows_total")
    assert (remapped[(*g0, "correctable")], remapped[(*g0, "uncorrectable")]) == (3, 1)
    assert rows(families, "nodeagent_gpu_remapped_rows_pending")[g0] == 1
    assert rows(families, "nodeagent_gpu_remapped_rows_failure")[g0] == 0
    assert rows(families, "nodeagent_gpu_pcie_link_generation")[g0] == 4
    assert rows(families, "nodeagent_gpu_pcie_link_width")[g0] == 8
    assert rows(families, "nodeagent_gpu_pcie_replay_total") == {g0: 9}
    assert rows(families, "nodeagent_gpu_pcie_transmit_bytes_total") == {g0: 123_456_789}
    assert rows(families, "nodeagent_gpu_pcie_receive_bytes_total") == {g0: 987_654_321}
    assert rows(families, "nodeagent_gpu_nvlink_transmit_bytes_total") == {
        (*g0, "0"): 100 * 1024,
        (*g0, "1"): 200 * 1024,
    }
    assert rows(families, "nodeagent_gpu_nvlink_receive_bytes_total") == {
        (*g0, "0"): 300 * 1024,
        (*g0, "1"): 400 * 1024,
    }
    assert rows(families, "nodeagent_gpu_nvlink_errors_total") == {(*g0, "1", "replay"): 4, (*g0, "0", "crc"): 6}
    [info0, info1] = named(families, "nodeagent_gpu_info")
    assert info0 == {
        "gpu": "0",
        "uuid": gpu_uuid(0),
        "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": "00000000:18:00.0",
        "device": "nvidia0",
        "serial": info0["serial"],
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "mig_mode": "disabled",
        "compute_mode": "default",
        "persistence_mode": "enabled",
    }
    assert info0["serial"] and info1["serial"] != info0["serial"] and info1["device"] == "nvidia1"


async def test_a_value_never_supported_is_not_asked_again_but_a_refused_one_is(double: Path) -> None:
    scenario = Scenario(
        gpus=[Gpu(errors={"nvmlDeviceGetPowerUsage": NOT_SUPPORTED, "nvmlDeviceGetTemperatureV": NO_PERMISSION})]
    )
    scenario.write(double)
    c = make()
    try:
        first = list(await c.collect())
        Scenario(gpus=[Gpu(power_mw=100_000)]).write(double)  # both answer again
        second = list(await c.collect())
    finally:
        await c.aclose()
    # Only those series are missing; everything else of the GPU is there and the GPU is up.
    assert "nodeagent_gpu_power_watts" not in {f.name for f in first}
    assert rows(first, "nodeagent_gpu_temperature_celsius") == {}
    assert rows(first, "nodeagent_gpu_up") == {g(0): 1.0}
    assert rows(first, "nodeagent_gpu_processes") == {(*g(0), "", ""): 0.0}  # none running is a value
    assert rows(first, "nodeagent_gpu_memory_used_bytes") and rows(first, "nodeagent_gpu_energy_joules_total")
    # NOT_SUPPORTED is remembered: power is not asked again. NO_PERMISSION was for that pass only.
    assert "nodeagent_gpu_power_watts" not in {f.name for f in second}
    assert rows(second, "nodeagent_gpu_temperature_celsius") == {(*g(0), "gpu"): 31}


async def test_memory_falls_back_to_the_v1_call_on_drivers_without_v2(double: Path) -> None:
    Scenario(gpus=[Gpu(mem_used=1 << 30, errors={"nvmlDeviceGetMemoryInfo_v2": 13})]).write(
        double
    )  # FUNCTION_NOT_FOUND
    [families] = await passes(make())
    total = rows(families, "nodeagent_gpu_memory_total_bytes")[g(0)]
    used = rows(families, "nodeagent_gpu_memory_used_bytes")[g(0)]
    assert used == (1 << 30) + Gpu().mem_reserved  # v1 counts the reserved memory as used
    assert rows(families, "nodeagent_gpu_memory_free_bytes")[g(0)] == total - used
    assert "nodeagent_gpu_memory_reserved_bytes" not in {f.name for f in families}


async def test_field_entry_errors_drop_only_their_field(double: Path) -> None:
    fields = [Field(197, 10), Field(82, 50)]
    Scenario(gpus=[Gpu(fields=fields, field_errors=[FieldError(198, NO_PERMISSION)])]).write(double)
    c = make()
    try:
        first = list(await c.collect())
        Scenario(gpus=[Gpu(fields=[*fields, Field(198, 20)])]).write(double)
        second = list(await c.collect())
        Scenario(gpus=[Gpu(fields=fields[:1], field_errors=[FieldError(82, GPU_IS_LOST)])]).write(double)
        lost = list(await c.collect())
    finally:
        await c.aclose()
    assert rows(first, "nodeagent_gpu_pcie_transmit_bytes_total") == {g(0): 10}
    assert "nodeagent_gpu_pcie_receive_bytes_total" not in {f.name for f in first}
    assert rows(first, "nodeagent_gpu_temperature_celsius")[(*g(0), "memory")] == 50
    assert rows(second, "nodeagent_gpu_pcie_receive_bytes_total") == {g(0): 20}  # refused once, asked again
    # A lifecycle code in one entry means the GPU is gone, as for a whole call.
    assert rows(lost, "nodeagent_gpu_up") == {g(0): 0.0}


async def test_lost_gpu_is_down_and_recovers(double: Path) -> None:
    Scenario(gpus=[Gpu(), Gpu()]).write(double)
    c = make()
    try:
        await c.collect()
        Scenario(gpus=[Gpu(), Gpu(errors={"*": GPU_IS_LOST})]).write(double)
        lost = list(await c.collect())
        Scenario(gpus=[Gpu(), Gpu()]).write(double)
        back = list(await c.collect())
        nvml = c._nvml
        assert nvml is not None and nvml.inits == 2  # initialised again after the lifecycle error
    finally:
        await c.aclose()
    assert rows(lost, "nodeagent_gpu_up") == {g(0): 1.0, g(1): 0.0}  # GPU 1 keeps its uuid label while lost
    assert {k[:2] for k in rows(lost, "nodeagent_gpu_power_watts")} == {g(0)}  # GPU 0 goes on being sampled
    assert rows(back, "nodeagent_gpu_up") == {g(0): 1.0, g(1): 1.0}
    assert {k[:2] for k in rows(back, "nodeagent_gpu_power_watts")} == {g(0), g(1)}


async def test_driver_gone_after_gpus_were_seen_reports_them_down(double: Path) -> None:
    Scenario(gpus=[Gpu(), Gpu()]).write(double)
    c = make()
    try:
        await c.collect()
        Scenario(init_error=9, errors={"*": 9}).write(double)  # driver unloaded
        gone = list(await c.collect())
        Scenario(gpus=[Gpu(), Gpu()]).write(double)
        back = list(await c.collect())
    finally:
        await c.aclose()
    assert rows(gone, "nodeagent_gpu_up") == {g(0): 0.0, g(1): 0.0}
    assert rows(back, "nodeagent_gpu_up") == {g(0): 1.0, g(1): 1.0}


async def test_no_driver_is_no_data(lib_dir: Path, scenario_path: Path) -> None:
    Scenario(init_error=9).write(scenario_path)
    with loaded_into_pynvml(lib_dir):
        c = make()
        try:
            with pytest.raises(NoDataError, match="driver is not loaded") as info:
                await c.collect()
            assert "install the NVIDIA driver" in info.value.hint
        finally:
            await c.aclose()


async def test_an_overrun_pass_fails_the_next_fast_and_nvml_is_checked_again(double: Path) -> None:
    Scenario(gpus=[Gpu(delays={"nvmlDeviceGetPowerUsage": 1500})]).write(double)
    c = make()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # the scheduler's per-cycle timeout
                await c.collect()
        started = time.monotonic()
        with pytest.raises(NvmlBusy, match="has not returned"):
            await c.collect()  # the NVML thread is still inside the slow call
        assert time.monotonic() - started < 0.2
        Scenario(gpus=[Gpu()]).write(double)
        await asyncio.sleep(1.5)
        families = list(await c.collect())
        nvml = c._nvml
        assert nvml is not None and nvml.inits == 2  # shut down and initialised again before this pass
    finally:
        await c.aclose()
    assert rows(families, "nodeagent_gpu_up") == {g(0): 1.0}


async def test_processes_are_attributed_to_their_cgroup_workloads(double: Path, cgroups: TestCgroups) -> None:
    pod_uid = str(uuid.uuid4())
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    rel = f"kubepods/burstable/pod{pod_uid}/{cid}"
    job = "slurm/uid_0/job_4242"
    cgroups.mkdir(rel)
    cgroups.mkdir(job)
    a = cgroups.spawn_ready(rel, SLEEPER)
    b = cgroups.spawn_ready(rel, SLEEPER)
    j = cgroups.spawn_ready(job, SLEEPER)
    now_us = int(time.time() * 1e6)
    gpu0 = Gpu(
        processes=[Process(a.pid, 3 << 30), Process(b.pid, 1 << 30), Process(j.pid, None)],
        graphics_processes=[Process(a.pid, 3 << 30)],  # a compute+graphics process counts once
        proc_util=[
            ProcUtil(a.pid, now_us + 10, 30, 10),
            ProcUtil(b.pid, now_us + 20, 25, 5),
            ProcUtil(j.pid, 5, 99, 99),
        ],
    )
    gpu1 = Gpu(processes=[Process(j.pid, 2 << 30)], xids=[Xid(1, 79)])
    Scenario(gpus=[gpu0, gpu1]).write(double)
    c = make(xid_events=True)
    try:
        with structlog.testing.capture_logs() as logged:
            families = list(await c.collect())
            for _ in range(100):
                if any(e.get("event.action") == "gpu_xid" for e in logged):
                    break
                await asyncio.sleep(0.05)
            again = list(await c.collect())  # no per-process samples newer than the last pass
    finally:
        await c.aclose()
    pod, slurm = cgroups.id(rel), cgroups.id(job)
    mem = {
        (x["gpu"], x["id"]): v
        for x, v in zip(
            named(families, "nodeagent_gpu_workload_memory_used_bytes"),
            rows(families, "nodeagent_gpu_workload_memory_used_bytes").values(),
            strict=True,
        )
    }
    assert mem == {("0", pod): float(4 << 30), ("1", slurm): float(2 << 30)}  # job's bytes on GPU 0: unknown
    procs = {(x["gpu"], x["id"]) for x in named(families, "nodeagent_gpu_workload_processes")}
    assert procs == {("0", pod), ("0", slurm), ("1", slurm)}
    assert rows(families, "nodeagent_gpu_workload_processes")[(*g(0), "", "", pod, "", "", "", "", "")] == 2
    assert rows(families, "nodeagent_gpu_processes") == {(*g(0), "", ""): 3, (*g(1), "", ""): 1}
    util = rows(families, "nodeagent_gpu_workload_utilization_ratio")
    # The pod's two processes add up; the job's sample is older than the first pass's window and is not counted.
    assert util[(*g(0), "", "", pod, "", "", "", "", "", "sm")] == pytest.approx(0.55)
    assert util[(*g(0), "", "", pod, "", "", "", "", "", "memory")] == pytest.approx(0.15)
    assert {k[4] for k in util} == {pod}
    assert "nodeagent_gpu_workload_utilization_ratio" not in {f.name for f in again}
    [event] = [e for e in logged if e.get("event.action") == "gpu_xid"]
    assert event["nodeagent.gpu.uuid"] == gpu_uuid(1) and event["nodeagent.gpu.xid"] == 79
    assert event["nodeagent.workload.id"] == slurm and event["slurm.job.id"] == "4242"


async def test_process_attribution_can_be_switched_off(double: Path) -> None:
    Scenario(gpus=[Gpu(processes=[Process(os.getpid(), 1 << 30)])]).write(double)
    [families] = await passes(make(processes=False))
    names = {f.name for f in families}
    assert "nodeagent_gpu_workload_processes" not in names
    assert rows(families, "nodeagent_gpu_processes") == {(*g(0), "", ""): 1}


async def test_xid_errors_are_counted_and_logged_once_each(double: Path) -> None:
    Scenario(gpus=[Gpu(), Gpu(xids=[Xid(1, 79), Xid(2, 48), Xid(3, 79)])]).write(double)
    c = make(xid_events=True)
    try:
        with structlog.testing.capture_logs() as logged:
            await c.collect()  # starts the watcher
            for _ in range(100):
                if len([e for e in logged if e.get("event.action") == "gpu_xid"]) >= 3:
                    break
                await asyncio.sleep(0.05)
            families = list(await c.collect())
            await asyncio.sleep(1.2)  # a further wait round delivers nothing new
            again = list(await c.collect())
    finally:
        await c.aclose()
    assert rows(families, "nodeagent_gpu_xid_errors_total") == {(*g(1), "48"): 1.0, (*g(1), "79"): 2.0}
    assert rows(families, "nodeagent_gpu_xid_watch_gpus") == {(): 2.0}  # both GPUs subscribed
    assert rows(again, "nodeagent_gpu_xid_errors_total") == rows(families, "nodeagent_gpu_xid_errors_total")
    events = [e for e in logged if e.get("event.action") == "gpu_xid"]
    assert sorted(e["nodeagent.gpu.xid"] for e in events) == [48, 79, 79]
    assert all(e["event.category"] == ["host", "driver"] and e["event.type"] == ["error"] for e in events)
    assert all(e["log_level"] == "error" and e["nodeagent.gpu.index"] == "1" for e in events)
    assert len({e["trace.id"] for e in events}) == 3 and all(len(e["trace.id"]) == 32 for e in events)


async def test_xid_watch_recovers_after_the_gpu_was_lost(double: Path) -> None:
    Scenario(gpus=[Gpu()]).write(double)
    c = make(xid_events=True)
    try:
        with structlog.testing.capture_logs() as logged:
            await c.collect()
            Scenario(gpus=[Gpu(errors={"*": GPU_IS_LOST})]).write(double)
            await asyncio.sleep(0.3)  # the wait returns the error; the watcher backs off (1 s)
            Scenario(gpus=[Gpu(xids=[Xid(1, 94)])]).write(double)
            for _ in range(80):
                if any(e.get("event.action") == "gpu_xid" for e in logged):
                    break
                await asyncio.sleep(0.05)
            families = list(await c.collect())
    finally:
        await c.aclose()
    assert rows(families, "nodeagent_gpu_xid_errors_total") == {(*g(0), "94"): 1.0}


async def test_mig_instances_memory_and_processes(double: Path, cgroups: TestCgroups) -> None:
    rel = "system.slice/nodeagent-test-mig.service"
    cgroups.mkdir(rel)
    p = cgroups.spawn_ready(rel, SLEEPER)
    migs = [
        MigDevice(0, mem_used=2 << 30, processes=[Process(p.pid, 2 << 30)]),
        MigDevice(1, name="NVIDIA H100 80GB HBM3 MIG 3g.40gb", gpu_instance_id=2, mem_total=40 << 30),
    ]
    Scenario(gpus=[Gpu(util_gpu=50, migs=migs, proc_util=[ProcUtil(p.pid, 2**62, 90, 90)])]).write(double)
    [families] = await passes(make(xid_events=False))
    info = named(families, "nodeagent_gpu_mig_info")
    assert [(x["gpu_instance"], x["compute_instance"], x["profile"], x["mig_uuid"]) for x in info] == [
        ("7", "0", "1g.10gb", mig_uuid(0, 0)),
        ("2", "0", "3g.40gb", mig_uuid(0, 1)),
    ]
    assert rows(families, "nodeagent_gpu_mig_memory_used_bytes")[(*g(0), "7", "0", "1g.10gb")] == 2 << 30
    assert rows(families, "nodeagent_gpu_mig_memory_total_bytes")[(*g(0), "2", "0", "3g.40gb")] == 40 << 30
    assert [x["mig_mode"] for x in named(families, "nodeagent_gpu_info")] == ["enabled"]
    # NVML does not give utilization rates (or per-process utilization) on a MIG-enabled GPU.
    assert {k[2] for k in rows(families, "nodeagent_gpu_utilization_ratio")} == {"encoder", "decoder"}
    assert "nodeagent_gpu_workload_utilization_ratio" not in {f.name for f in families}
    assert rows(families, "nodeagent_gpu_processes") == {(*g(0), "7", "0"): 1, (*g(0), "2", "0"): 0}
    wl = cgroups.id(rel)
    assert rows(families, "nodeagent_gpu_workload_memory_used_bytes") == {
        (*g(0), "7", "0", wl, "", "", "", "", ""): float(2 << 30)
    }


async def test_gpus_are_labelled_with_the_pods_the_kubelet_assigned(double: Path) -> None:
    Scenario(gpus=[Gpu(), Gpu(), Gpu(migs=[MigDevice(0), MigDevice(1)]), Gpu()]).write(double)
    pods = (
        *typical_allocations(),
        PodAlloc("gke", "ml", (ContainerAlloc("c", (DeviceAlloc("nvidia.com/gpu", ("nvidia1",)),)),)),
        PodAlloc("amd", "ml", (ContainerAlloc("c", (DeviceAlloc("amd.com/gpu", ("0",)),)),)),
    )
    sockdir = Path(tempfile.mkdtemp(prefix="na-gpu-", dir="/tmp"))
    paths = HostPaths()
    meta = RuntimeMetadata([], structlog.get_logger())
    try:
        async with PodResourcesDouble(sockdir / "kubelet.sock", pods):
            meta.devices = PodDeviceCache(
                PodResourcesClient(str(sockdir / "kubelet.sock"), 5.0), structlog.get_logger()
            )
            [families] = await passes(make(WorkloadResolver(paths, meta)))
    finally:
        await meta.aclose()
        shutil.rmtree(sockdir)
    alloc = {
        (x["gpu"], x["gpu_instance"], x["compute_instance"], x["replica"], x["namespace"], x["pod"], x["container"])
        for x in named(families, "nodeagent_gpu_allocation_info")
    }
    assert alloc == {
        ("0", "", "", "", "ml", "train-0", "trainer"),
        ("1", "", "", "", "ml", "train-0", "trainer"),
        ("2", "7", "0", "", "ml", "infer-0", "server"),
        ("2", "8", "0", "", "ml", "infer-1", "server"),
        ("3", "", "", "0", "research", "notebook-a", "jupyter"),
        ("3", "", "", "1", "research", "notebook-b", "jupyter"),
        ("1", "", "", "", "ml", "gke", "c"),
    }
    assert {x["uuid"] for x in named(families, "nodeagent_gpu_allocation_info") if x["gpu"] == "3"} == {gpu_uuid(3)}
    assert {x["resource"] for x in named(families, "nodeagent_gpu_allocation_info") if x["gpu"] == "2"} == {
        "nvidia.com/mig-1g.10gb"
    }


def test_allocation_rows_skip_devices_of_other_hosts_and_vendors() -> None:
    gpus = [GpuSample(0, "GPU-a", mig=[MigSample("MIG-x", 1, 0, "n", "1g.10gb")])]
    uuids = {0: "GPU-a"}

    def alloc(**kw: object) -> DeviceAllocation:
        return DeviceAllocation("nvidia.com/gpu", "id", "ns", "p", "c", **kw)  # type: ignore[arg-type]

    allocations = [
        alloc(gpu_uuid="GPU-other-host"),
        alloc(mig_uuid="MIG-unknown"),
        alloc(gpu_index=5),
        DeviceAllocation("example.com/fpga", "fpga0", "ns", "p", "c"),
        alloc(gpu_uuid="GPU-a", gpu_instance=1),  # legacy MIG-GPU-<uuid>/1/0 without ci: filled from the layout
        alloc(mig_uuid="MIG-x"),
    ]
    assert allocation_rows(allocations, gpus, uuids) == [("0", "GPU-a", "1", "0", "", "nvidia.com/gpu", "ns", "p", "c")]


def test_mig_profile_from_the_device_name() -> None:
    assert mig_profile("NVIDIA H100 80GB HBM3 MIG 1g.10gb") == "1g.10gb"
    assert mig_profile("NVIDIA A100-SXM4-40GB MIG 2g.10gb+me") == "2g.10gb+me"
    assert mig_profile("NVIDIA H100 80GB HBM3") == ""
