"""Smoke test of bench/spool.py: a quick real run reports plausible, self-consistent figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "spool.py"


def test_quick_run_reports_plausible_figures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)

    assert r["quick"] is True
    assert r["record_bytes"] == 1024
    assert r["filesystem"]
    assert 0 < r["append_us"] < 100
    for mode in ("backlog", "shipping"):
        rows = {row["events_per_flush"]: row for row in r["spooled"][mode]}
        assert sorted(rows) == [100, 1000]
        for row in rows.values():
            # Append plus a share of the write and the sync costs more than the append alone.
            assert r["append_us"] < row["wall_us_per_event"] < 10_000
            assert 0 < row["cpu_us_per_event"] < 10_000
        assert rows[100]["flush_ms"] < rows[1000]["flush_ms"]  # ten times the bytes per flush
    shipping = {row["events_per_flush"]: row for row in r["spooled"]["shipping"]}
    assert r["spooled_us_per_event"] == shipping[r["target_events_per_flush"]]["wall_us_per_event"]
    assert r["target_us_per_event"] == 20.0
    assert r["target_met"] == (r["spooled_us_per_event"] <= 20.0)
    assert r["fdatasync_ms"] > 0
    peek = r["peek_ack_us"]
    assert 0 < peek["memory_us_per_event"] < peek["disk_us_per_event"] < 1000
    assert peek["recovery_ms_per_mib"] > 0
    for label in ("idle", "while_flushing"):
        lat = r["append_latency_us"][label]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert not list(tmp_path.iterdir())  # everything it made is removed
