"""
The disk spool on real files: round trip, restart, kill -9, corruption, priorities, a full disk (a real small
tmpfs), and concurrent appends, flushes, peeks and acks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodeagent.ship import PRIORITY_EVENT, PRIORITY_LOG, PRIORITY_LOG_PROBLEM
from nodeagent.ship.spool import CURSOR_NAME, HEADER_SIZE, MAGIC, Spool, frame, scan_records
from tests.prereq import missing, require_binary

REPO = Path(__file__).resolve().parents[2]


def rec(i: int) -> bytes:
    """Record ``i``: a JSON document whose content is checkable (a digest of ``i``, varying length)."""
    return json.dumps({"i": i, "pad": hashlib.sha256(str(i).encode()).hexdigest() * (1 + i % 4)}).encode()


def index_of(record: bytes) -> int:
    doc = json.loads(record)
    assert record == rec(doc["i"]), f"record {doc['i']} damaged"
    return int(doc["i"])


def drain(spool: Spool, max_records: int = 7, max_bytes: int = 1 << 20) -> list[bytes]:
    """Peek and acknowledge until nothing is pending."""
    out: list[bytes] = []
    while batch := spool.peek(max_records, max_bytes):
        out += batch
        spool.ack(len(batch))
    return out


def payload_at(data: bytes, offset: int) -> bytes:
    """The payload of the record framed at ``offset`` (its length read from the header)."""
    length = int.from_bytes(data[offset + 4 : offset + 8], "little")
    return data[offset + HEADER_SIZE : offset + HEADER_SIZE + length]


def crash(spool: Spool) -> None:
    """What the kernel does to the spool at a kill -9: close its descriptors (nothing is flushed, nothing closed)."""
    active = spool._active
    for fd in (spool._lock_fd, active.fd if active is not None else -1):
        if fd >= 0:
            os.close(fd)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_frame_and_scan_on_inline_bytes() -> None:
    records = [b'{"a":1}', b"", b'{"b":"' + b"x" * 300 + b'"}']
    data = b"".join(frame(r, 2) for r in records)
    assert data[:4] == MAGIC
    assert len(data) == sum(len(r) + HEADER_SIZE for r in records)
    found = scan_records(data)
    assert found.offsets == [0, 20, 33]
    assert (found.valid_end, found.corrupt) == (len(data), 0)
    # Scanning from an offset (the cursor) sees only what follows.
    assert scan_records(data, 20).offsets == [20, 33]


@pytest.mark.parametrize(
    ("damage", "lost"),
    [
        ("payload", [3]),  # a flipped byte in a payload: that record only
        ("length", [3]),  # a length pointing past the end: resync at the next magic
        ("magic", [3]),
        ("crc", [3]),
        ("garbage", []),  # garbage between records 3 and 4: nothing lost
        ("tail", [5]),  # the last record cut short (crash mid-write)
        ("header_tail", [5]),  # only part of the last header written
        ("two", [1, 2]),  # two adjacent damaged records count twice
    ],
)
def test_scan_skips_exactly_the_damaged_records(damage: str, lost: list[int]) -> None:
    records = [rec(i) for i in range(6)]
    frames = [bytearray(frame(r, 1)) for r in records]
    if damage == "payload":
        frames[3][HEADER_SIZE + 10] ^= 0xFF
    elif damage == "length":
        frames[3][4:8] = (1 << 30).to_bytes(4, "little")
    elif damage == "magic":
        frames[3][0] ^= 0x01
    elif damage == "crc":
        frames[3][8] ^= 0x01
    elif damage == "garbage":
        frames[3] += b"\x00\x01 not a record \xff" * 5
    elif damage == "tail":
        frames[5] = frames[5][:-7]
    elif damage == "header_tail":
        frames[5] = frames[5][: HEADER_SIZE - 3]
    elif damage == "two":
        frames[1][HEADER_SIZE] ^= 0x55
        frames[2][HEADER_SIZE + 1] ^= 0x55
    data = b"".join(frames)
    found = scan_records(data)
    assert [index_of(payload_at(data, o)) for o in found.offsets] == [i for i in range(6) if i not in lost]
    assert found.corrupt == max(1, len(lost))


def test_round_trip_partial_acks_segment_deletion_and_cursor(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(str(directory), segment_bytes=4096, memory_max_bytes=16 << 10)
    spool.open()
    assert (directory.stat().st_mode & 0o777) == 0o700
    sent = [rec(i) for i in range(300)]
    for i, r in enumerate(sent):
        assert spool.append(r, PRIORITY_EVENT)
        if i % 40 == 39:
            spool.flush()
    spool.flush()
    assert spool.backlog_on_disk  # memory keeps the newest 16 KiB: the oldest are read back from disk
    assert spool.appended == spool.pending_records == 300
    assert spool.pending_bytes == sum(len(r) + HEADER_SIZE for r in sent)
    assert spool.memory_bytes == 0  # everything flushed
    assert spool.disk_bytes == spool.pending_bytes == sum(p.stat().st_size for p in segments(directory))
    assert len(segments(directory)) > 5  # rolled past segment_bytes

    got: list[bytes] = []
    while batch := spool.peek(17, 1 << 20):
        assert batch[0] == sent[len(got)]
        # Partial ACKs: acknowledge 5, then 3 more of the same peek, then peek again.
        spool.ack(min(5, len(batch)))
        got += batch[:5]
        if len(batch) > 5:
            spool.ack(min(3, len(batch) - 5))
            got += batch[5:8]
        if len(got) % 40 < 8:
            spool.flush()  # delete fully acknowledged segments while records remain
    assert got == sent
    assert spool.peek(10, 1 << 20) == []
    assert (spool.pending_records, spool.pending_bytes, spool.acknowledged) == (0, 0, 300)
    spool.flush()
    left = segments(directory)
    assert len(left) == 1  # only the active one; every sealed, fully acknowledged segment is gone
    assert spool.disk_bytes == left[0].stat().st_size
    cursor = json.loads((directory / CURSOR_NAME).read_text())
    assert cursor == {"segment": int(left[0].stem), "offset": left[0].stat().st_size, "acknowledged": 300}
    spool.close()
    reopened = Spool(str(directory))
    reopened.open()
    assert reopened.pending_records == 0
    assert reopened.peek(10, 1 << 20) == []


def test_peek_limits_and_ack_validation(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.open()
    big = b'{"m":"' + b"y" * 5000 + b'"}'
    for r in (big, rec(1), rec(2)):
        spool.append(r, PRIORITY_LOG)
    assert spool.peek(10, 100) == [big]  # at least one record even if it alone exceeds max_bytes
    assert spool.peek(2, 1 << 20) == [big, rec(1)]
    assert spool.peek(0, 1 << 20) == []
    with pytest.raises(ValueError, match="cannot acknowledge"):
        spool.ack(4)
    with pytest.raises(ValueError, match="cannot acknowledge"):
        spool.ack(-1)
    spool.ack(1)
    assert spool.peek(10, len(rec(1)) + len(rec(2))) == [rec(1), rec(2)]
    assert spool.peek(10, len(rec(1)) + len(rec(2)) - 1) == [rec(1)]


def test_restart_delivers_exactly_the_unacknowledged_records(tmp_path: Path) -> None:
    first = Spool(str(tmp_path), segment_bytes=2048)
    first.open()
    for i in range(100):
        first.append(rec(i), PRIORITY_EVENT)
    first.flush()
    assert len(first.peek(30, 1 << 20)) == 30
    first.ack(30)
    first.flush()  # the cursor is persisted
    for i in range(100, 110):
        first.append(rec(i), PRIORITY_EVENT)  # never flushed: lost in the crash (only flushed records are durable)
    crash(first)  # no close, no final flush

    second = Spool(str(tmp_path), segment_bytes=2048)
    second.open()
    assert second.pending_records == 70
    assert second.backlog_on_disk
    assert [index_of(r) for r in drain(second)] == list(range(30, 100))
    assert second.corrupt == 0


def test_restart_redelivers_acks_not_yet_persisted(tmp_path: Path) -> None:
    first = Spool(str(tmp_path), segment_bytes=2048)
    first.open()
    for i in range(50):
        first.append(rec(i), PRIORITY_LOG)
    first.flush()
    first.peek(20, 1 << 20)
    first.ack(20)
    first.flush()
    first.peek(10, 1 << 20)
    first.ack(10)  # delivered, but the cursor moves on disk only at the next flush, which never comes
    crash(first)

    second = Spool(str(tmp_path), segment_bytes=2048)
    second.open()
    assert [index_of(r) for r in drain(second)] == list(range(20, 50))  # 20..29 again: at least once


def test_records_appended_before_open_follow_the_recovered_ones(tmp_path: Path) -> None:
    first = Spool(str(tmp_path))
    first.open()
    for i in range(5):
        first.append(rec(i), PRIORITY_EVENT)
    first.close()
    second = Spool(str(tmp_path))
    assert second.append(rec(5), PRIORITY_EVENT)  # the logging chain may start before the spool is opened
    assert second.peek(10, 1 << 20) == []  # nothing is handed out before recovery
    second.open()
    assert [index_of(r) for r in drain(second)] == list(range(6))


def test_acknowledged_before_flush_is_never_written(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.open()
    for i in range(10):
        spool.append(rec(i), PRIORITY_EVENT)
    spool.flush()
    written = spool.disk_bytes
    for i in range(10, 20):
        spool.append(rec(i), PRIORITY_EVENT)
    assert [index_of(r) for r in drain(spool)] == list(range(20))
    assert spool.memory_bytes == 0
    spool.append(rec(20), PRIORITY_EVENT)
    spool.flush()
    assert spool.disk_bytes == written + len(rec(20)) + HEADER_SIZE  # records 10..19 skipped
    spool.close()
    again = Spool(str(tmp_path))
    again.open()
    assert [index_of(r) for r in drain(again)] == [20]


CHILD = r"""
import hashlib, json, os, sys, threading, time
sys.path.insert(0, sys.argv[2])
from nodeagent.ship.spool import Spool

def rec(i):
    return json.dumps({"i": i, "pad": hashlib.sha256(str(i).encode()).hexdigest() * (1 + i % 4)}).encode()

def say(doc):
    os.write(1, (json.dumps(doc) + "\n").encode())  # one write per line: lines from two threads do not mix

spool = Spool(sys.argv[1], segment_bytes=32 << 10, memory_max_bytes=256 << 10)
spool.open()

def flusher():
    while True:
        appended, acked = spool.appended, spool.acknowledged
        spool.flush()
        say({"flushed": appended, "acked_before": acked, "errors": spool.write_errors})
        time.sleep(0.003)

threading.Thread(target=flusher, daemon=True).start()
i = 0
while True:
    if spool.append(rec(i), 2):
        i += 1
    if i % 5 == 0:
        batch = spool.peek(10, 1 << 20)
        spool.ack(min(3, len(batch)))
        say({"acked": spool.acknowledged})
    if i % 200 == 0:
        time.sleep(0.001)
"""


def test_kill_9_loses_nothing_that_was_flushed(tmp_path: Path) -> None:
    """
    A child appends, acknowledges some, and flushes every few milliseconds from another thread; it is SIGKILLed
    mid-stream. Guaranteed: every record unacknowledged at the kill that was appended before a flush that completed
    is there, intact, in order; records acknowledged after the last completed flush may come again; records
    appended after the last flush began may be lost.
    """
    directory = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(REPO)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    lines: list[dict[str, int]] = []
    try:
        assert child.stdout is not None
        flushes = 0
        deadline = time.monotonic() + 30
        while flushes < 40 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
            flushes += "flushed" in lines[-1]
        assert flushes >= 40, child.stderr.read() if child.stderr else ""
        # While the child runs, the directory is locked against a second process.
        with pytest.raises(OSError, match="in use by another process"):
            Spool(str(directory)).open()
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    lines += [json.loads(x) for x in rest.decode().splitlines() if x.endswith("}")]
    flushed = [x for x in lines if "flushed" in x]
    last = max(flushed, key=lambda x: x["flushed"])
    acked_printed = max(x["acked"] for x in lines if "acked" in x)
    # The kill can fall between an ack (at most 3 records) and its line.
    surely_unacked = acked_printed + 3
    assert last["errors"] == 0
    assert last["flushed"] > surely_unacked + 100, "the test needs flushed, unacknowledged records"

    spool = Spool(str(directory))
    spool.open()
    got = [index_of(r) for r in drain(spool, 500)]  # index_of checks every payload is intact
    assert got == sorted(set(got)), "order kept, no record twice"
    assert got[0] >= last["acked_before"], "records acknowledged before a completed flush do not come back"
    assert set(range(surely_unacked, last["flushed"])) <= set(got), "a flushed, unacknowledged record was lost"
    assert got[-1] >= last["flushed"] - 1


def _build_segment(directory: Path, count: int) -> tuple[Path, bytes]:
    spool = Spool(str(directory))
    spool.open()
    for i in range(count):
        spool.append(rec(i), PRIORITY_LOG_PROBLEM)
    spool.close()
    (path,) = segments(directory)
    return path, path.read_bytes()


def _recover(directory: Path) -> tuple[Spool, list[int]]:
    spool = Spool(str(directory))
    spool.open()  # never raises on corrupt content
    return spool, [index_of(r) for r in drain(spool)]


def test_recovery_skips_a_flipped_payload(tmp_path: Path) -> None:
    path, data = _build_segment(tmp_path, 10)
    offsets = scan_records(data).offsets
    damaged = bytearray(data)
    damaged[offsets[5] + HEADER_SIZE + 20] ^= 0x20
    path.write_bytes(bytes(damaged))
    spool, got = _recover(tmp_path)
    assert got == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert spool.corrupt == 1


def test_recovery_treats_a_truncated_tail_as_the_end(tmp_path: Path) -> None:
    path, data = _build_segment(tmp_path, 10)
    path.write_bytes(data[:-9])
    spool, got = _recover(tmp_path)
    assert got == list(range(9))
    assert spool.corrupt == 1


def test_recovery_resyncs_after_garbage_between_records(tmp_path: Path) -> None:
    path, data = _build_segment(tmp_path, 10)
    offsets = scan_records(data).offsets
    garbage = b"\x00\x13garbage from a bad sector\x00" * 40
    path.write_bytes(data[: offsets[4]] + garbage + data[offsets[4] :])
    spool, got = _recover(tmp_path)
    assert got == list(range(10))
    assert spool.corrupt == 1


def test_recovery_across_segments_with_a_cursor_and_several_kinds_of_damage(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), segment_bytes=1500)
    spool.open()
    for i in range(60):
        spool.append(rec(i), PRIORITY_EVENT)
    spool.flush()
    spool.peek(7, 1 << 20)
    spool.ack(7)
    spool.close()
    cursor = json.loads((tmp_path / CURSOR_NAME).read_text())
    files = segments(tmp_path)
    assert len(files) > 4
    # Map each record to its segment and offset.
    where: dict[int, tuple[Path, int]] = {}
    for path in files:
        data = path.read_bytes()
        for off in scan_records(data).offsets:
            where[index_of(payload_at(data, off))] = (path, off)
    assert where[7] == (tmp_path / f"{cursor['segment']:020d}.seg", cursor["offset"])

    def patch(i: int, delta: int, value: int) -> None:
        path, off = where[i]
        data = bytearray(path.read_bytes())
        data[off + delta] ^= value
        path.write_bytes(bytes(data))

    patch(12, HEADER_SIZE + 3, 0x01)  # payload
    patch(30, 5, 0x40)  # length
    patch(45, 0, 0xFF)  # magic
    last_path = files[-1]
    assert last_path not in {where[i][0] for i in (12, 30, 45)}
    last_path.write_bytes(last_path.read_bytes()[:-4])  # truncated tail
    last_in_last = max(i for i, (p, _) in where.items() if p == last_path)
    (tmp_path / "00000000000000009999.seg.tmp").write_bytes(b"not a segment name: ignored")

    spool, got = _recover(tmp_path)
    assert got == [i for i in range(7, 60) if i not in (12, 30, 45, last_in_last)]
    assert spool.corrupt == 4


def test_recovery_of_unreadable_segments_and_cursor(tmp_path: Path) -> None:
    _build_segment(tmp_path, 5)
    (tmp_path / f"{10**6:020d}.seg").write_bytes(b"\x00" * 3000)  # nothing but garbage
    (tmp_path / f"{10**6 + 1:020d}.seg").write_bytes(b"")  # empty
    (tmp_path / CURSOR_NAME).write_bytes(b'{"segment": "x"')  # torn cursor: deliver everything again
    spool, got = _recover(tmp_path)
    assert got == list(range(5))
    assert spool.corrupt == 1
    assert "cursor" in spool.last_error
    assert not (tmp_path / f"{10**6:020d}.seg").exists()  # no intact record: removed
    spool.append(rec(99), PRIORITY_EVENT)
    spool.flush()
    assert int(segments(tmp_path)[-1].stem) > 10**6 + 1  # new segment numbers never reuse old ones


def test_damage_found_when_reading_back_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), memory_max_bytes=4096)
    spool.open()
    for i in range(40):
        spool.append(rec(i), PRIORITY_EVENT)
        spool.flush()  # memory keeps only the newest ~4 KiB; the rest is read from disk
    assert spool.backlog_on_disk
    (path,) = segments(tmp_path)
    data = bytearray(path.read_bytes())
    offsets = scan_records(bytes(data)).offsets
    for i in (0, 1, 3):  # two leading damaged records and one inside the first batch
        data[offsets[i] + HEADER_SIZE + 2] ^= 0x08
    path.write_bytes(bytes(data))
    batch = spool.peek(6, 1 << 20)  # reads records 0..5 from disk
    assert [index_of(r) for r in batch] == [2, 4, 5]
    assert spool.pending_records == 38  # the leading damaged ones are gone
    assert spool.corrupt == 3
    spool.ack(2)  # acknowledges 2, (3 skipped), 4
    assert spool.pending_records == 35
    assert [index_of(r) for r in spool.peek(2, 1 << 20)] == [5, 6]
    spool.ack(1)
    spool.ack(1)
    assert [index_of(r) for r in drain(spool)] == list(range(7, 40))
    assert spool.corrupt == 3
    assert spool.pending_records == 0


def _fill(spool: Spool, priority: int, size: int) -> int:
    """Append records of ``size`` framed bytes at ``priority`` until one is refused; returns how many went in."""
    n = 0
    while spool.append(b"x" * (size - HEADER_SIZE), priority):
        n += 1
    return n


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_priorities_are_refused_at_70_90_and_100_percent(tmp_path: Path, mode: str) -> None:
    if mode == "disk":
        spool = Spool(str(tmp_path), max_bytes=10_000, memory_max_bytes=1 << 20)
        reason = "spool_full"
    else:
        spool = Spool(None, max_bytes=1 << 30, memory_max_bytes=10_000)
        reason = "memory_full"
    spool.open()
    assert _fill(spool, PRIORITY_LOG, 100) == 70  # 70 % of 10,000
    spool.flush()  # on disk or in memory, pending bytes are what counts
    assert spool.pending_bytes == 7000
    assert not spool.append(b"x", PRIORITY_LOG)
    assert _fill(spool, PRIORITY_LOG_PROBLEM, 100) == 20  # up to 90 %
    assert not spool.append(b"x", PRIORITY_LOG)
    assert _fill(spool, PRIORITY_EVENT, 100) == 10  # node events until 100 %, never beyond
    assert spool.pending_bytes == 10_000
    assert not spool.append(b"", 7)  # priorities above 2 count as 2
    expected = {(r, p): 0 for r in ("spool_full", "memory_full", "closed") for p in range(3)}
    expected[(reason, 0)] = 3
    expected[(reason, 1)] = 1
    expected[(reason, 2)] = 2
    assert spool.dropped == expected
    assert spool.appended == 100
    # Acknowledging frees room for the lowest priority again.
    spool.peek(40, 1 << 20)
    spool.ack(40)
    assert _fill(spool, PRIORITY_LOG, 100) == 10  # 6,000 pending + 10 x 100 = 70 %


def test_close_refuses_appends_and_memory_only_mode(tmp_path: Path) -> None:
    spool = Spool(None)
    spool.open()
    for i in range(5):
        spool.append(rec(i), PRIORITY_LOG)
    spool.flush()  # nothing to do
    assert spool.memory_bytes == spool.pending_bytes == sum(len(rec(i)) + HEADER_SIZE for i in range(5))
    assert [index_of(r) for r in drain(spool)] == list(range(5))
    assert spool.memory_bytes == spool.memory_held_bytes == 0
    spool.close()
    assert not spool.append(rec(9), PRIORITY_EVENT)
    assert spool.dropped[("closed", PRIORITY_EVENT)] == 1

    durable = Spool(str(tmp_path))
    durable.open()
    durable.append(rec(1), PRIORITY_EVENT)
    durable.close()  # the final flush
    assert not durable.append(rec(2), PRIORITY_EVENT)
    assert durable.memory_bytes == 0
    assert [index_of(r) for r in durable.peek(5, 1 << 20)] == [1]  # still readable after close


def test_open_raises_only_when_the_directory_cannot_be_used(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(OSError):
        Spool(str(not_a_dir)).open()
    with pytest.raises(OSError):
        Spool(str(not_a_dir / "sub")).open()


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 256 KiB tmpfs, unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        missing("root (the disk-full test mounts a 256 KiB tmpfs)")
    mount = require_binary("mount", "mount")
    umount = require_binary("umount", "mount")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run([mount, "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        missing(f"mounting a tmpfs ({proc.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run([umount, "-l", str(mnt)], check=False)


def test_disk_full_keeps_records_in_memory_and_writes_them_later(small_tmpfs: Path) -> None:
    directory = small_tmpfs / "spool"
    filler = small_tmpfs / "filler"
    spool = Spool(str(directory), max_bytes=8 << 20, memory_max_bytes=256 << 10, segment_bytes=32 << 10)
    spool.open()
    filler.write_bytes(b"\0" * (200 << 10))  # leaves about 56 KiB
    size = 1024 + HEADER_SIZE
    sent = [json.dumps({"i": i, "pad": "p" * (1024 - 18 - len(str(i)))}).encode() for i in range(200)]
    assert {len(r) for r in sent} == {1024}
    for r in sent:
        assert spool.append(r, PRIORITY_EVENT)
    spool.flush()  # must not raise
    assert spool.write_errors >= 1
    assert "No space left on device" in spool.last_error
    unwritten = spool.memory_bytes // size
    assert 50 <= unwritten < 200  # what fitted was written, the rest waits in memory
    assert spool.pending_records == 200
    assert spool.peek(500, 1 << 20) == sent  # nothing already queued is lost

    # The agent keeps running: records pile up in memory, and the memory shares apply.
    logs = _fill(spool, PRIORITY_LOG, size)
    assert spool.dropped[("memory_full", PRIORITY_LOG)] == 1
    assert spool.memory_bytes + size > int(0.7 * (256 << 10)) >= spool.memory_bytes
    assert spool.append(sent[0], PRIORITY_EVENT)  # node events still go in

    # Acknowledging releases memory at once.
    pending_before = spool.memory_bytes
    spool.ack(150)
    assert spool.memory_bytes == pending_before - size * (150 - (200 - unwritten))
    errors = spool.write_errors

    filler.unlink()  # space again
    spool.flush()
    assert spool.write_errors == errors
    assert spool.memory_bytes == 0
    spool.close()
    again = Spool(str(directory))
    again.open()
    assert again.peek(1000, 1 << 30) == [*sent[150:], *[b"x" * (size - HEADER_SIZE)] * logs, sent[0]]


def test_concurrent_appends_flushes_peeks_and_acks(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), memory_max_bytes=64 << 10, segment_bytes=16 << 10)
    spool.open()
    threads, per_thread = 4, 3000
    accepted: list[list[int]] = [[] for _ in range(threads)]
    done = threading.Event()
    errors: list[Exception] = []

    def appender(t: int) -> None:
        try:
            for n in range(per_thread):
                if spool.append(json.dumps({"t": t, "n": n}).encode(), PRIORITY_EVENT):
                    accepted[t].append(n)
                if n % 50 == 0:
                    time.sleep(0.001)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread's assertion
            errors.append(exc)

    def flusher() -> None:
        while not done.is_set():
            spool.flush()
            time.sleep(0.001)

    workers = [threading.Thread(target=appender, args=(t,)) for t in range(threads)]
    sync = threading.Thread(target=flusher)
    sync.start()
    for w in workers:
        w.start()
    received: list[list[int]] = [[] for _ in range(threads)]
    rng = random.Random(7)
    deadline = time.monotonic() + 60
    # Start consuming once the backlog outgrew memory, so that peek reads segments while they are written.
    while not spool.backlog_on_disk and any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert spool.backlog_on_disk
    while time.monotonic() < deadline:
        batch = spool.peek(rng.randint(1, 300), rng.randint(1, 8000))
        if not batch:
            if all(not w.is_alive() for w in workers) and spool.pending_records == 0:
                break
            time.sleep(0.0005)
            continue
        k = rng.randint(1, len(batch))  # partial ACKs
        for r in batch[:k]:
            doc = json.loads(r)
            received[doc["t"]].append(doc["n"])
        spool.ack(k)
        if rng.random() < 0.3:
            time.sleep(0.002)  # let a backlog build up
    done.set()
    sync.join()
    for w in workers:
        w.join()
    assert not errors
    assert received == accepted  # nothing lost, nothing twice, each thread's order kept
    total = sum(map(len, accepted))
    dropped = sum(spool.dropped.values())
    assert total + dropped == threads * per_thread
    assert spool.appended == spool.acknowledged == total
    assert (spool.pending_records, spool.pending_bytes, spool.memory_bytes) == (0, 0, 0)
    assert (spool.corrupt, spool.write_errors) == (0, 0)
    spool.close()
    reopened = Spool(str(tmp_path))
    reopened.open()
    assert reopened.pending_records == 0


def _expected_peek(pending: list[bytes], max_records: int, max_bytes: int) -> list[bytes]:
    out: list[bytes] = []
    used = 0
    for r in pending[:max_records]:
        if out and used + len(r) > max_bytes:
            break
        out.append(r)
        used += len(r)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_operations_match_a_model(tmp_path: Path, seed: int) -> None:
    """
    Random appends, flushes, peeks, partial acks, clean restarts and crashes against a model of the guarantee:
    after a crash exactly the records unacknowledged at the last flush and appended before it come back.
    """
    rng = random.Random(seed)

    def new() -> Spool:
        spool = Spool(str(tmp_path), max_bytes=64 << 10, memory_max_bytes=6 << 10, segment_bytes=2048)
        spool.open()
        return spool

    spool = new()
    records: list[bytes] = []  # every accepted record, in order
    acked = 0  # records[:acked] are acknowledged
    durable_acked, durable_end = 0, 0  # as of the last flush
    counter = 0
    for _ in range(3000):
        op = rng.random()
        if op < 0.6:
            counter += 1
            r = json.dumps({"n": counter, "pad": "z" * rng.randint(0, 400)}).encode()
            if spool.append(r, rng.choice((PRIORITY_LOG, PRIORITY_LOG_PROBLEM, PRIORITY_EVENT))):
                records.append(r)
        elif op < 0.7:
            spool.flush()
            assert spool.write_errors == 0, spool.last_error
            durable_acked, durable_end = acked, len(records)
        elif op < 0.97:
            max_records, max_bytes = rng.randint(1, 40), rng.randint(1, 6000)
            batch = spool.peek(max_records, max_bytes)
            assert batch == _expected_peek(records[acked:], max_records, max_bytes)
            if batch:
                first = rng.randint(0, len(batch))
                second = rng.randint(0, len(batch) - first)
                spool.ack(first)
                spool.ack(second)  # a second partial ACK of the same peek
                acked += first + second
        else:
            if rng.random() < 0.5:
                spool.close()
                durable_acked, durable_end = acked, len(records)
            else:
                crash(spool)
            records = records[durable_acked:durable_end]
            acked = 0
            durable_acked, durable_end = 0, len(records)
            spool = new()
        assert spool.pending_records == len(records) - acked
        assert spool.pending_bytes == sum(len(r) + HEADER_SIZE for r in records[acked:])
    assert drain(spool) == records[acked:]
    assert spool.corrupt == 0
