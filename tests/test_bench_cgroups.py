"""Smoke test of bench/cgroups.py: a tiny real run creates cgroups, reports plausible figures, leaves nothing."""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.cgroups_helpers import writable_layout

pytestmark = pytest.mark.root

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench" / "cgroups.py"


@pytest.fixture
def cgroup_root() -> str:
    """The host's cgroup root, writable by this (root) process; fails under CI, skips elsewhere, if not."""
    root, _ = writable_layout("the bench creates cgroups")
    return root


def _leftovers(root: str, pid: int) -> list[str]:
    return glob.glob(os.path.join(root, "*", f"nodeagent-bench-{pid}.slice")) + glob.glob(
        os.path.join(root, f"nodeagent-bench-{pid}.slice")
    )


def test_tiny_run_reports_plausible_figures_and_cleans_up(cgroup_root: str, tmp_path: Path) -> None:
    """5 workloads (3 pods + 2 containers), 3 cycles: the report and JSON carry the expected figures."""
    report, raw = tmp_path / "report.md", tmp_path / "figures.json"
    cmd = [sys.executable, str(BENCH), "--counts", "5", "--cycles", "3", "--warmup", "1"]
    proc = subprocess.Popen(
        [*cmd, "--output", str(report), "--json", str(raw), "--profile"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert _leftovers(cgroup_root, proc.pid) == []

    text = report.read_text()
    assert text in stdout
    for heading in (
        "# Performance: the cgroups collector, cost per workload cgroup",
        "## Per cycle",
        "## Machine",
        "## Method",
        "## Profile",
    ):
        assert heading in text
    for row in (
        "workload cgroups exported (pods + containers) | 5 (3 + 2) |",
        "**collector**, µs CPU per cgroup per cycle (marginal)",
        "**floor**: open+read+close of the same files",
        "**collector / floor** (target <= 1.5)",
        "render, every value changed, µs per cgroup",
        "- command: `python3 bench/cgroups.py --counts 5 --cycles 3 --warmup 1",
        "- kernel: Linux",
    ):
        assert row in text

    data = json.loads(raw.read_text())
    base, (point,), (fig,) = data["baseline"], data["points"], data["figures"]
    assert (base["exported"], base["files"], base["series"]) == (0, 0, 0)
    assert (point["exported"], point["pods"], point["containers"]) == (5, 3, 2)
    assert len(point["collector"]) == len(point["floor"]) == len(point["render_changed"]) == 3
    assert point["missing"] == []
    # v1/hybrid: about 14 files per cgroup (cpuacct, memory, blkio, pids, pressure, cgroup.procs); v2: fewer.
    assert 4 <= fig["files_per_cgroup"] <= 20
    assert point["files"] == round(fig["files_per_cgroup"] * 5)
    assert 10 <= fig["series_per_cgroup"] <= 40  # cAdvisor's container_* series plus nodeagent_workload_info
    assert fig["dirs_per_cgroup"] > 0  # pods are listed to find their containers
    for key in ("collector_us", "ratio", "listing_us", "render_sampled_us", "render_changed_us", "first_cycle_us"):
        assert math.isfinite(fig[key]), key
    assert fig["floor_us"] > 0 and fig["per_file_us"] > 0
    assert all(v > 0 for v in point["collector"])


def test_sigterm_mid_run_removes_cgroups_and_processes(cgroup_root: str) -> None:
    """SIGTERM while measuring: the bench kills its sleeps and removes every cgroup it made."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--counts", "20", "--cycles", "5000", "--warmup", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sleeps: list[int] = []
        deadline = time.monotonic() + 60
        while not sleeps and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            for procs in glob.glob(
                os.path.join(cgroup_root, "*", f"nodeagent-bench-{proc.pid}.slice", "**", "cgroup.procs"),
                recursive=True,
            ):
                with open(procs) as f:
                    sleeps += [int(x) for x in f.read().split()]
        assert sleeps, "the bench never started its workload processes"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert _leftovers(cgroup_root, proc.pid) == []
    alive = [pid for pid in set(sleeps) if os.path.exists(f"/proc/{pid}") and _is_sleep(pid)]
    assert alive == []


def _is_sleep(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"sleep\0")
    except OSError:
        return False
