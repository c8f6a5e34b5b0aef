"""Smoke test of bench/network.py: a tiny real run reports plausible figures and leaves no namespace behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.netns_helpers import list_netns, require_netns

pytestmark = [pytest.mark.integration, pytest.mark.root]

BENCH = Path(__file__).resolve().parents[1] / "bench" / "network.py"


def test_tiny_run_reports_plausible_figures(tmp_path: Path) -> None:
    require_netns()
    before = set(list_netns())
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(BENCH), "--namespaces", "2", "--sockets", "100", "--cycles", "2",
                           "--json", "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout[: proc.stdout.index("\n}") + 2])

    assert figures["namespaces"] == 2 and figures["namespace_interfaces"] == 6
    assert figures["container_rows"] == 2 * 2 * 8  # 2 namespaces x 2 veth ends (lo left out) x 8 families
    assert 0 < figures["host_us_per_interface"] < 5000
    assert 0 < figures["host_cycle_ms"] < figures["full_cycle_ms"]
    assert 0 < figures["ne_netdev_netclass_ms"] and 0 < figures["tcp_us_per_socket"] < 1000
    assert "2 network namespaces" in out.read_text()
    assert set(list_netns()) == before
