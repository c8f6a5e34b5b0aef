"""
The real-GPU probe and its checks, run here against the NVML test double (in a child process, as the probe is meant
to run) so that neither rots on machines without a GPU. Not marked ``gpu``: these run everywhere gcc does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.nvml_double import Gpu, Process, Scenario, build_or_missing, gpu_uuid, subprocess_env
from tests.nvml_double.scenario import H100_MEM_TOTAL, H100_NAME, SCENARIO_ENV
from tests.real_gpu import capture, checks
from tests.real_gpu.child import UNAVAILABLE, ProbeResult, real_env, run_probe


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_or_missing()


def test_probe_runs_against_the_double(lib_dir: Path, tmp_path: Path) -> None:
    scenario = Scenario(gpus=[Gpu(processes=[Process(os.getpid(), 3 << 30)]), Gpu()]).write(tmp_path / "nvml.scenario")
    result = run_probe(
        tmp_path / "probe.json", ["--pid", str(os.getpid()), "--interval", "0.2"], env=subprocess_env(lib_dir, scenario)
    )
    assert result.rc == 0 and result.data is not None, result.describe()
    data = result.data
    assert data["library"] == {"path": str(lib_dir / "libnvidia-ml.so.1"), "is_test_double": True}
    assert (data["driver_version"], data["cuda_version"], data["gpu_count"]) == ("550.54.15", "12.4", 2)
    assert [(g["uuid"], g["name"], g["pci_bus_id"]) for g in checks.gpus(data)] == [
        (gpu_uuid(0), H100_NAME, "00000000:18:00.0"),
        (gpu_uuid(1), H100_NAME, "00000000:2A:00.0"),
    ]
    g0 = checks.gpus(data)[0]
    assert checks.reading(g0, "memory_total") == H100_MEM_TOTAL
    assert checks.reading(g0, "power") == 69.0 and checks.reading(g0, "clock", "memory") == 2619e6
    assert [(e["first_joules"], e["second_joules"]) for e in data["energy"]] == [(1_234_567.89, 1_234_567.89)] * 2
    assert g0["processes"] == [
        {"pid": os.getpid(), "used_bytes": 3 << 30, "gpu_instance": None, "compute_instance": None, "graphics": False}
    ]
    [me] = data["pids"]
    assert me["listed"] == [{"gpu": 0, "uuid": gpu_uuid(0), "used_bytes": 3 << 30, "graphics": False}]
    memory = checks.family(data, "nodeagent_gpu_workload_memory_used_bytes")
    assert [(s["labels"]["uuid"], s["labels"]["id"], s["value"]) for s in memory] == [
        (gpu_uuid(0), me["workload"], float(3 << 30))
    ]
    for check in checks.COMMON:  # everything the real-GPU tests assert, except the energy rate (static here)
        check(data)
    with pytest.raises(AssertionError):  # the rate check can fail: the double's energy counter never moves
        checks.check_energy_rate(data)


def test_probe_exits_3_when_nvml_is_unavailable(lib_dir: Path, tmp_path: Path) -> None:
    scenario = Scenario(init_error=9).write(tmp_path / "nvml.scenario")  # DRIVER_NOT_LOADED
    result = run_probe(tmp_path / "probe.json", env=subprocess_env(lib_dir, scenario))
    assert result.rc == UNAVAILABLE, result.describe()
    assert result.data == {
        "schema": 1,
        "available": False,
        "reason": "the NVIDIA kernel driver is not loaded",
        "code": 9,
    }
    assert "NVML is not available here: the NVIDIA kernel driver is not loaded" in result.stderr


def test_checks_catch_impossible_values(lib_dir: Path, tmp_path: Path) -> None:
    """A GPU whose numbers cannot be real fails the checks that guard them, for the reason they guard."""
    bad = Gpu(mem_free=1 << 30, power_mw=1_200_000, clocks={0: 2500, 1: 345, 2: 2619, 3: 765}, pcie_width=0)
    scenario = Scenario(gpus=[bad]).write(tmp_path / "nvml.scenario")
    result = run_probe(tmp_path / "probe.json", ["--interval", "0"], env=subprocess_env(lib_dir, scenario))
    assert result.rc == 0 and result.data is not None, result.describe()
    data = result.data
    with pytest.raises(AssertionError, match=r"total 85520809984 != reserved 567279616 \+ used 4194304 \+ free"):
        checks.check_memory(data)
    with pytest.raises(AssertionError, match=r"power 1200.0 W, limit 700.0 W"):
        checks.check_power(data)
    with pytest.raises(AssertionError, match=r"graphics clock 2500000000.0 Hz above its maximum 1980000000.0 Hz"):
        checks.check_clocks(data)
    with pytest.raises(AssertionError, match=r"PCIe width 0.0"):
        checks.check_pcie(data)
    checks.gpus(data, 1)[0]["readings"]["energy"][""] -= 1.0  # a counter that went back
    with pytest.raises(AssertionError, match=r"energy\[\] went from 1234567.89 to 1234566.89"):
        checks.check_counters_never_decrease(data)


def test_real_env_drops_the_double(lib_dir: Path) -> None:
    base = subprocess_env(lib_dir, Path("/nonexistent.scenario"), {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64"})
    base["LD_PRELOAD"] = f"{lib_dir}/libnvidia-ml.so.1 /usr/lib/libfoo.so"
    env = real_env(base)
    assert SCENARIO_ENV not in env
    assert env["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"
    assert env["LD_PRELOAD"] == "/usr/lib/libfoo.so"
    assert "LD_LIBRARY_PATH" not in real_env(subprocess_env(lib_dir, Path("/x"), {}))


@pytest.fixture
def capture_on_the_double(lib_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``capture`` with its probe run against the double (it normally strips the double from the environment)."""
    scenario = tmp_path / "nvml.scenario"

    def probe_on_the_double(
        json_path: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None, timeout: float = 120.0
    ) -> ProbeResult:
        return run_probe(json_path, [*args, "--interval", "0"], subprocess_env(lib_dir, scenario), timeout)

    monkeypatch.setattr(capture, "run_probe", probe_on_the_double)
    return scenario


def test_capture_writes_a_fixture_directory(capture_on_the_double: Path, tmp_path: Path) -> None:
    Scenario(gpus=[Gpu(), Gpu()]).write(capture_on_the_double)
    assert capture.main([str(tmp_path / "nvml"), "--depth", "1", "--max-entries", "3"]) == 0
    out = tmp_path / "nvml" / "nvidia-h100-80gb-hbm3_550.54.15"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == manifest["files"]
    assert {"probe.json", "proc-self-cgroup.txt", "cgroup-mounts.txt", "cgroup-tree.txt"} <= set(manifest["files"])
    assert (manifest["driver_version"], [g["index"] for g in manifest["gpus"]]) == ("550.54.15", [0, 1])
    assert json.loads((out / "probe.json").read_text())["gpu_count"] == 2
    tree = (out / "cgroup-tree.txt").read_text().splitlines()
    top = sorted(e.name for e in os.scandir("/sys/fs/cgroup") if e.is_dir(follow_symlinks=False) or e.is_symlink())
    assert tree[0] == "/sys/fs/cgroup/"
    assert [line.split()[0].rstrip("/") for line in tree[1:4]] == top[:3]  # names only, one level, three entries
    assert all(line.startswith("  ") for line in tree[1:])


def test_capture_writes_nothing_without_nvml(capture_on_the_double: Path, tmp_path: Path) -> None:
    Scenario(init_error=9).write(capture_on_the_double)
    assert capture.main([str(tmp_path / "nvml")]) == UNAVAILABLE
    assert not (tmp_path / "nvml").exists()


def test_directory_name_joins_models_and_driver() -> None:
    probe = {
        "driver_version": "550.54.15",
        "samples": [{"gpus": [{"name": "NVIDIA H100 80GB HBM3"}, {"name": "NVIDIA L40S"}, {"name": "NVIDIA L40S"}]}],
    }
    assert capture.directory_name(probe) == "nvidia-h100-80gb-hbm3+nvidia-l40s_550.54.15"
