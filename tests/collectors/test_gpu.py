"""The gpu collector through the NVML test double (tests/nvml_double), loaded into pynvml in this process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from nodeagent.collector import CollectorContext, NoDataError
from nodeagent.collectors.gpu import GpuCollector, GpuConfig
from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily
from nodeagent.sources.cgroupfs import discover_layout
from nodeagent.workloads import WorkloadResolver
from tests.integration.cgroups_helpers import TestCgroups
from tests.nvml_double import SCENARIO_ENV, loaded_into_pynvml
from tests.nvml_double.build import CompilerMissing, build
from tests.nvml_double.scenario import GPU_IS_LOST, Gpu, Process, Scenario, Xid
from tests.prereq import missing


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    try:
        return build()
    except CompilerMissing as exc:
        missing(f"gcc to build the NVML test double ({exc})")
        raise


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


def make(resolver: WorkloadResolver | None = None) -> GpuCollector:
    paths = HostPaths()
    return GpuCollector(CollectorContext("gpu", paths, structlog.get_logger(), resolver or WorkloadResolver(paths)),
                        GpuConfig())


def rows(families: list[MetricFamily], name: str) -> dict[tuple[str, ...], float]:
    return {labels: v for f in families if f.name == name for labels, v in f.samples}


async def test_values_equal_the_scenario(double: Path) -> None:
    gpus = [Gpu(util_gpu=87, util_mem=41, power_mw=412_345, energy_mj=9_876_543_210, temp_gpu=66, mem_used=40 << 30),
            Gpu(util_gpu=3)]
    Scenario(gpus=gpus).write(double)
    c = make()
    try:
        families = list(await c.collect())
    finally:
        await c.aclose()
    uuids = {labels[0]: labels[1] for labels in rows(families, "nodeagent_gpu_up")}
    assert sorted(uuids) == ["0", "1"] and all(u.startswith("GPU-") for u in uuids.values())
    g0 = ("0", uuids["0"])
    assert rows(families, "nodeagent_gpu_up") == {g0: 1.0, ("1", uuids["1"]): 1.0}
    util = rows(families, "nodeagent_gpu_utilization_ratio")
    assert (util[(*g0, "gpu")], util[(*g0, "memory")]) == (0.87, 0.41)
    assert rows(families, "nodeagent_gpu_power_watts")[g0] == 412.345
    assert rows(families, "nodeagent_gpu_energy_joules_total")[g0] == 9_876_543.21
    assert rows(families, "nodeagent_gpu_temperature_celsius")[(*g0, "gpu")] == 66
    assert rows(families, "nodeagent_gpu_memory_used_bytes")[g0] == 40 << 30
    info = [labels for f in families if f.name == "nodeagent_gpu_info" for labels, _ in f.samples]
    assert info[0][2] == "NVIDIA H100 80GB HBM3" and info[0][5] == "550.54.15" and info[0][6] == "12.4"


async def test_lost_gpu_is_down_and_recovers(double: Path) -> None:
    Scenario(gpus=[Gpu(), Gpu()]).write(double)
    c = make()
    try:
        first = list(await c.collect())
        Scenario(gpus=[Gpu(), Gpu(errors={"*": GPU_IS_LOST})]).write(double)
        lost = list(await c.collect())
        Scenario(gpus=[Gpu(), Gpu()]).write(double)
        back = list(await c.collect())
    finally:
        await c.aclose()
    up = rows(first, "nodeagent_gpu_up")
    uuid1 = next(labels for labels in up if labels[0] == "1")
    assert rows(lost, "nodeagent_gpu_up")[uuid1] == 0.0  # keeps its uuid label while lost
    assert rows(back, "nodeagent_gpu_up")[uuid1] == 1.0


async def test_no_driver_is_no_data(lib_dir: Path, scenario_path: Path) -> None:
    Scenario(init_error=9).write(scenario_path)
    with loaded_into_pynvml(lib_dir):
        c = make()
        try:
            with pytest.raises(NoDataError, match="driver is not loaded"):
                await c.collect()
        finally:
            await c.aclose()


@pytest.mark.root
async def test_gpu_processes_are_attributed_to_their_cgroup_workloads(double: Path) -> None:
    if os.geteuid() != 0:
        missing("root (test cgroups)")
    tree = TestCgroups(discover_layout(HostPaths().cgroup_root))
    pod_uid = str(uuid.uuid4())
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    rel = f"kubepods/burstable/pod{pod_uid}/{cid}"
    tree.mkdir(rel)
    try:
        a = tree.spawn_ready(rel, "print('ready', flush=True); import time; time.sleep(60)")
        b = tree.spawn_ready(rel, "print('ready', flush=True); import time; time.sleep(60)")
        Scenario(gpus=[Gpu(processes=[Process(a.pid, 3 << 30), Process(b.pid, 1 << 30)])]).write(double)
        c = make()
        try:
            families = list(await c.collect())
        finally:
            await c.aclose()
        mem = {labels[2]: v for labels, v in rows(families, "nodeagent_gpu_workload_memory_used_bytes").items()}
        procs = {labels[2]: v for labels, v in rows(families, "nodeagent_gpu_workload_processes").items()}
        assert mem == {tree.id(rel): float(4 << 30)} and procs == {tree.id(rel): 2.0}
    finally:
        assert tree.cleanup() == []


async def test_xid_errors_are_counted_and_logged_once_each(double: Path) -> None:
    import asyncio

    Scenario(gpus=[Gpu(), Gpu(xids=[Xid(1, 79), Xid(2, 48)])]).write(double)
    c = make()
    try:
        with structlog.testing.capture_logs() as logged:
            await c.collect()  # starts the watcher
            for _ in range(100):
                if len([e for e in logged if e.get("event.action") == "gpu_xid"]) >= 2:
                    break
                await asyncio.sleep(0.05)
            families = list(await c.collect())
            await asyncio.sleep(1.2)  # a further wait round delivers nothing new
            again = list(await c.collect())
    finally:
        await c.aclose()
    xids = {labels[0] + ":" + labels[2]: v for labels, v in rows(families, "nodeagent_gpu_xid_errors_total").items()}
    assert xids == {"1:79": 1.0, "1:48": 1.0}
    assert rows(again, "nodeagent_gpu_xid_errors_total") == rows(families, "nodeagent_gpu_xid_errors_total")
    events = [e for e in logged if e.get("event.action") == "gpu_xid"]
    assert sorted(e["nodeagent.gpu.xid"] for e in events) == [48, 79]
    assert all(e["event.category"] == ["host", "driver"] and e["event.type"] == ["error"] for e in events)
    assert all(len(e["trace.id"]) == 32 for e in events)
