"""Smoke test of bench/runtimes.py: a tiny real run against a private containerd reports plausible figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.containerd_harness import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.root]

BENCH = Path(__file__).resolve().parents[1] / "bench" / "runtimes.py"


def test_tiny_run_reports_plausible_figures(tmp_path: Path) -> None:
    require_tools()
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(BENCH), "--count", "12", "--repeats", "2", "--json", "--output",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout[: proc.stdout.index("\n}") + 2])

    assert figures["containers"] == 12
    assert 0 < figures["list_cpu_us_per_container"] < 5000
    assert 0 < figures["describe_cached_us"] < figures["describe_after_change_us"]
    assert 0 < figures["index_bytes_per_container"] < 64 * 1024
    assert 0 < figures["event_us"] < 10_000
    assert "holding 12 container records" in out.read_text()
