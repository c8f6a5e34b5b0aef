"""Smoke test of bench/gpu.py: a small run over the NVML test double reports sane figures and leaves nothing."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from nodeagent.hostfs import HostPaths
from tests.integration.cgroups_helpers import TEST_PREFIX
from tests.nvml_double import build_or_missing

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench" / "gpu.py"

GPUS, PROCESSES = 2, 5  # GPU 0 runs processes 0, 2, 4; GPU 1 runs 1, 3
# The collector's series per GPU for the bench's scenario: up, info, 4 utilization engines, 4 memory, power, power
# limit, energy, 2 temperatures (gpu, memory field 82), 4 thresholds, 4 clocks, 4 max clocks, performance state,
# 9 clocks event reasons, 5 clocks event counters (fields 74/76/269-271), 4 ECC (3-6), 2 retired pages (29/30),
# retired pending (31), 2 remapped rows, remapped pending, remapped failure, PCIe generation and width, PCIe replay
# (94), PCIe tx/rx (197/198), 18 NVLinks x (tx, rx, 3 error kinds), and the processes gauge.
PER_GPU = 1 + 1 + 4 + 4 + 3 + 2 + 4 + 4 + 4 + 1 + 9 + 5 + 4 + 2 + 1 + 2 + 1 + 1 + 2 + 3 + 18 * 5 + 1
# Per (GPU, workload): memory, processes, 4 engines of per-process utilization.
PER_GPU_WORKLOAD = 6


def _lib_dir() -> Path:
    return build_or_missing()


def _leftovers(pid: int) -> list[str]:
    root = HostPaths().cgroup_root
    return glob.glob(os.path.join(root, "*", f"{TEST_PREFIX}{pid}-*")) + glob.glob(
        os.path.join(root, f"{TEST_PREFIX}{pid}-*")
    )


def test_small_run_reports_sane_figures(tmp_path: Path) -> None:
    _lib_dir()
    out = tmp_path / "report.md"
    cmd = [sys.executable, str(BENCH), "--gpus", str(GPUS), "--processes", str(PROCESSES), "--cycles", "4"]
    cmd += ["--warmup", "1", "--pace", "0", "--xid-seconds", "0.3", "--profile", "--json", "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert _leftovers(proc.pid) == []
    f = json.loads(stdout[: stdout.index("\n}") + 2])

    assert (f["gpus"], f["processes"], f["started_processes"]) == (GPUS, PROCESSES, PROCESSES)
    # Each process in its own container cgroup (root), or all in the bench's one: workloads per GPU differ.
    workloads_per_gpu = [3, 2] if f["process_cgroups"] else [1, 1]
    assert f["workloads"] == (PROCESSES if f["process_cgroups"] else 1)
    expected = GPUS * PER_GPU + PER_GPU_WORKLOAD * sum(workloads_per_gpu)
    assert f["series"] == sum(f["families"].values()) == expected
    assert f["families"]["nodeagent_gpu_nvlink_errors_total"] == GPUS * 18 * 3
    assert f["families"]["nodeagent_gpu_workload_utilization_ratio"] == 4 * sum(workloads_per_gpu)
    # Without new per-process samples the 4 utilization rows per (GPU, workload) go.
    assert f["no_new_samples_series"] == expected - 4 * sum(workloads_per_gpu)

    # One nvmlDeviceGetCount, then per GPU the same calls every pass (fans, NOT_SUPPORTED, only on the first).
    assert f["nvml_calls_per_pass"] > 0 and (f["nvml_calls_per_pass"] - 1) % GPUS == 0
    assert f["nvml_calls_first_pass"] > f["nvml_calls_per_pass"]
    for key in (
        "collect_cpu_ms_median",
        "collect_cpu_ms_p95",
        "collect_wall_ms_median",
        "render_cpu_ms_median",
        "render_changed_cpu_ms_median",
        "cycle_changed_cpu_ms_p95",
        "cpu_ms_per_gpu",
        "first_pass_cpu_ms",
        "rss_pynvml_import_mib",
        "rss_added_mib",
        "xid_watch_cpu_ms_per_s",
        "library_wait_cpu_ms_per_s",
    ):
        assert math.isfinite(f[key]) and f[key] > 0, key
    assert f["collect_cpu_ms_median"] <= f["collect_cpu_ms_p95"]
    assert f["cycle_changed_cpu_ms_median"] >= f["collect_cpu_ms_median"]
    assert f["target_ratio"] == f["cycle_changed_cpu_ms_p95"] / f["target_ms"]
    assert len(f["samples_ms"]["collect_cpu"]) == 4
    parts = f["breakdown_ms"]
    assert 0 < parts["pass_field_values_pynvml_only"] < parts["pass_field_values"] < parts["pass"]
    assert 0 < parts["families_resolve"] < parts["families"]
    assert "no GPU collector" in f["node_exporter"]
    assert f["profile"]["top"] and f["profile"]["groups"]

    text = out.read_text()
    assert text in stdout
    for heading in ("# Performance: the gpu collector over NVML", "## Where a cycle's CPU goes", "## Machine"):
        assert heading in text
    assert "## Method" in text and "## Profile" in text
    assert f"- command: `python3 bench/gpu.py --gpus {GPUS} --processes {PROCESSES} --cycles 4" in text
