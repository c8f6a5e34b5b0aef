"""Smoke test of bench/ship.py: a quick real run delivers every record and reports sane figures; its receiver."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.ship import TARGET_EVENTS_PER_S, BenchFailure, LeanBeatsSink, ReceiverCounts, check_delivery
from nodeagent.ship.lumberjack import encode_compressed, encode_json_frames, encode_window

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench" / "ship.py"
QUICK_RECORDS = 5_000


def test_quick_run_delivers_every_record_and_reports_sane_figures(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path), "--output", str(report)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 20, f"the quick run took {elapsed:.1f} s"
    r = json.loads(proc.stdout)

    assert (r["quick"], r["records"], r["receiver"]) == (True, QUICK_RECORDS, "lean")
    assert [x["variant"] for x in r["runs"]] == ["live", "paced", "replay"]
    for x in r["runs"]:
        assert x["records"] == QUICK_RECORDS
        assert x["delivery"]["delivered"] == QUICK_RECORDS  # the bench itself fails on a missing id
        assert x["delivery"]["unexpected"] == 0
        assert x["receiver"]["events"] == QUICK_RECORDS + x["delivery"]["duplicates"]
        assert x["receiver"]["protocol_errors"] == []
        assert (x["failures"], x["dropped"], x["write_errors"]) == (0, 0, 0)
        assert x["cpus"] == [r["agent_cpu"]]  # pinned to one CPU
        assert x["events_per_s"] > 0
        assert x["events_per_s"] == pytest.approx(QUICK_RECORDS / x["wall_s"])
        assert x["target_ratio"] == pytest.approx(x["events_per_s"] / TARGET_EVENTS_PER_S)
        assert 0 < x["shipping_us_per_event"] <= x["cpu_us_per_event"]
        assert x["cpu_s"] == pytest.approx(x["loop_thread_cpu_s"] + x["worker_threads_cpu_s"])
        assert 0 < x["rss_start_bytes"] <= x["rss_peak_bytes"] < 1 << 30
        assert 1 <= x["window_final"] <= x["batch_max"] == 2048
        assert x["batches"] >= 1
        assert x["records_per_batch"] * x["batches"] == pytest.approx(QUICK_RECORDS)
        assert x["receiver_cpu_us_per_event"] > 0
        if x["variant"] == "replay":
            assert x["producer_us_per_record"] == 0
            assert x["spool_bytes"] > QUICK_RECORDS * 600 and x["open_s"] > 0
            assert 600 < x["fill"]["record_bytes_mean"] < 1200
            assert x["fill"]["producer_us_per_record"] > 0
            assert x["fill"]["compression_ratio"]["3"] > 2
        else:
            assert 0 < x["producer_us_per_record"] < x["cpu_us_per_event"]
            assert 0 < x["produced_s"] <= x["wall_s"]
    assert r["shipping_events_per_s"] == r["runs"][2]["events_per_s"]
    assert r["end_to_end_events_per_s"] == r["runs"][0]["events_per_s"]
    assert r["target_met_shipping"] == (r["shipping_events_per_s"] >= 20_000)
    text = report.read_text()
    assert f"**{r['shipping_events_per_s']:,.0f} events/s**" in text
    assert "node_exporter" in text and "Filebeat" in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # spools and id lists removed


class _Wire(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True


def _records(n: int) -> list[bytes]:
    return [b'{"@metadata":{"_id":"x"},"event.id":"%036d","message":"m"}' % i for i in range(n)]


@pytest.mark.parametrize("compressed", [True, False])
def test_lean_sink_acks_a_window_once_its_last_frame_is_parsed(compressed: bool) -> None:
    records = _records(5)
    if compressed:
        header, body = encode_compressed(records, 3)
        data = encode_window(5) + header + body
    else:
        data = encode_window(5) + b"".join(encode_json_frames(records))
    counts = ReceiverCounts()
    sink, wire = LeanBeatsSink(counts), _Wire()
    sink.connection_made(wire)
    for i in range(len(data)):  # one byte at a time: every frame boundary split every way
        assert wire.written == [], f"ACK before byte {i} of {len(data)}"
        sink.data_received(data[i : i + 1])
    assert wire.written == [b"2A\x00\x00\x00\x05"]  # ACK of the window's highest sequence, once
    assert counts.ids == [b"%036d" % i for i in range(5)]
    assert (counts.windows, counts.max_window, counts.protocol_errors) == (1, 5, [])
    sink.data_received(encode_window(1) + b"".join(encode_json_frames(records[:1])))  # the next window
    assert wire.written[1:] == [b"2A\x00\x00\x00\x01"]


@pytest.mark.parametrize(
    "data", [b"1W\x00\x00\x00\x01", b"2Z\x00\x00", b"2J\x00\x00\x00\x01\x00\x00\x00\x02{}", b"2C\x00\x00\x00\x02xx"]
)
def test_lean_sink_closes_on_a_protocol_error(data: bytes) -> None:
    counts = ReceiverCounts()
    sink, wire = LeanBeatsSink(counts), _Wire()
    sink.connection_made(wire)
    sink.data_received(data)
    assert wire.aborted and wire.written == []
    assert len(counts.protocol_errors) == 1


def test_a_missing_record_fails_the_bench_and_duplicates_are_counted(tmp_path: Path) -> None:
    sent, got = tmp_path / "sent", tmp_path / "got"
    sent.write_bytes(b"a\nb\nc")
    got.write_bytes(b"c\na\nb\na\nzz")
    assert check_delivery(sent, got) == {"delivered": 3, "duplicates": 1, "unexpected": 1}
    got.write_bytes(b"a\nc\na")
    with pytest.raises(BenchFailure, match=r"1 of 3 records never reached the receiver \(first: \[b'b'\]\)"):
        check_delivery(sent, got)
