"""
nodeagent's NVML path on real NVIDIA hardware: the probe (a child process with a clean environment, so the NVML
test double other tests load cannot stand in for the real library) reads every GPU twice and runs one collector
cycle; the checks in ``checks.py`` must hold on any working GPU. A CUDA process the test starts in a test cgroup
must be attributed to that cgroup.

Every test here is marked ``gpu`` and is skipped (not failed, even under CI=true) where NVML is unavailable: CI
machines have no GPU. ``pytest -m gpu tests/real_gpu`` on a GPU node; see README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nodeagent.hostfs import HostPaths
from nodeagent.sources.cgroupfs import discover_layout
from tests.integration.cgroups_helpers import TestCgroups
from tests.prereq import missing
from tests.real_gpu import checks
from tests.real_gpu.child import (
    check_cuda,
    exec_cuda_context_code,
    in_child_pid_namespace,
    real_env,
    run_probe,
)

pytestmark = pytest.mark.gpu

ALLOC_MIB = 64  # device memory the CUDA process allocates on top of its context


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The probe's JSON from this machine's real NVML; skips every test that uses it where NVML is unavailable."""
    result = run_probe(tmp_path_factory.mktemp("probe") / "probe.json")
    if result.unavailable:
        pytest.skip(f"NVML is not available here (no NVIDIA GPU or driver): {result.reason}")
    assert result.rc == 0 and result.data is not None, result.describe()
    return result.data


def test_probe_loaded_the_real_library(probe: dict[str, Any]) -> None:
    library = probe["library"]
    assert library["path"] and Path(library["path"]).exists(), library
    assert not library["is_test_double"], f"the probe loaded the NVML test double: {library}"


@pytest.mark.parametrize(
    "check",
    [*checks.COMMON, checks.check_energy_rate],
    ids=lambda c: c.__name__.removeprefix("check_"),
)
def test_holds_on_real_hardware(probe: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> None:
    check(probe)


def test_gpus_match_nvidia_smi(probe: dict[str, Any]) -> None:
    """An independent client of the same driver lists the same GPUs, names, bus ids, memory and driver."""
    smi = shutil.which("nvidia-smi", path=real_env().get("PATH"))
    if smi is None:
        pytest.skip("nvidia-smi is not installed (the cross-check needs it)")
    out = subprocess.run(
        [smi, "--query-gpu=index,uuid,pci.bus_id,name,driver_version,memory.total", "--format=csv,noheader,nounits"],
        env=real_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    smi_gpus = {int(i): (u, bus.upper(), name, driver) for i, u, bus, name, driver, _ in rows}
    ours = {
        g["index"]: (g["uuid"], g["pci_bus_id"].upper(), g["name"], probe["driver_version"]) for g in checks.gpus(probe)
    }
    assert ours == smi_gpus
    # nvidia-smi prints whole MiB; allow its rounding either way.
    smi_mib = {int(row[0]): int(row[5]) for row in rows}
    our_mib = {g["index"]: checks.need(g, "memory_total") / (1 << 20) for g in checks.gpus(probe)}
    assert all(abs(our_mib[i] - smi_mib[i]) <= 1 for i in smi_mib), (our_mib, smi_mib)


def test_driver_version_is_the_kernel_modules(probe: dict[str, Any]) -> None:
    """The driver version NVML reports is the loaded kernel module's (/proc/driver/nvidia/version)."""
    path = Path("/proc/driver/nvidia/version")
    if not path.exists():
        pytest.skip(f"{path} is not visible here (a container without the host's /proc/driver)")
    text = path.read_text()
    found = re.search(r"Kernel Module(?: for [\w-]+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    assert found is not None, text
    assert found.group(1) == probe["driver_version"], text


def test_a_cuda_process_is_attributed_to_its_cgroup(probe: dict[str, Any], tmp_path: Path) -> None:
    """
    A process holding a CUDA context (and ALLOC_MIB MiB) in a test cgroup is listed by NVML on the GPU it chose,
    and the collector attributes it, with its memory, to that cgroup's workload.
    """
    if os.geteuid() != 0:
        missing("root (test cgroups)")
    if in_child_pid_namespace():
        pytest.skip("this process is in a child pid namespace; NVML lists host pids (run with the host's pids)")
    rc, message = check_cuda()
    if rc == 4:
        pytest.skip(f"libcuda.so.1 cannot be loaded: {message}")
    assert rc == 0, message
    tree = TestCgroups(discover_layout(HostPaths().cgroup_root))
    rel = f"kubepods/burstable/pod{uuid.uuid4()}/{uuid.uuid4().hex}{uuid.uuid4().hex}"
    try:
        tree.mkdir(rel)
        code = exec_cuda_context_code(["--alloc-mib", str(ALLOC_MIB), "--seconds", "600"])
        proc = tree.spawn_ready(rel, code, timeout=120)  # first CUDA init on a node can take tens of seconds
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        assert len(line) == 2 and line[0] == "uuid", line
        gpu_uuid = line[1]
        result = run_probe(tmp_path / "probe.json", ["--pid", str(proc.pid)])
        assert result.rc == 0 and result.data is not None, result.describe()
        data = result.data
        assert proc.poll() is None, "the CUDA process exited during the probe"

        [where] = data["pids"]
        workload = tree.id(rel)
        assert where["workload"] == workload, where
        listed = [x for x in where["listed"] if x["uuid"] == gpu_uuid]
        assert listed, f"NVML does not list pid {proc.pid} on {gpu_uuid}: {where}"
        assert all(x["used_bytes"] is not None and x["used_bytes"] >= ALLOC_MIB << 20 for x in listed), listed

        def ours(name: str) -> list[dict[str, Any]]:
            return [
                s
                for s in checks.family(data, name)
                if s["labels"]["id"] == workload and s["labels"]["uuid"] == gpu_uuid
            ]

        processes = ours("nodeagent_gpu_workload_processes")
        assert [s["value"] for s in processes] == [1.0], checks.family(data, "nodeagent_gpu_workload_processes")
        memory = ours("nodeagent_gpu_workload_memory_used_bytes")
        assert len(memory) == 1 and memory[0]["value"] >= ALLOC_MIB << 20, memory
        on_gpu = [s for s in checks.family(data, "nodeagent_gpu_processes") if s["labels"]["uuid"] == gpu_uuid]
        assert sum(s["value"] for s in on_gpu) >= 1, on_gpu
    finally:
        assert tree.cleanup() == []
