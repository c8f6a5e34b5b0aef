"""
The spool between the logging chain and the shipper: a bounded, crash-safe FIFO of records (one JSON document
each). ``append`` only touches memory; ``flush`` writes append-only segment files with a length and CRC per record
and one ``fdatasync`` per batch; ``peek``/``ack`` hand the oldest unacknowledged records out and release them.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import os
import re
import struct
import threading
import zlib
from array import array
from collections import deque
from typing import NamedTuple

# Framing of one record on disk: magic, payload length (u32 LE), CRC32 of the payload (u32 LE), priority (u8),
# payload. 0xFE and 0xFD never occur in UTF-8, so the magic cannot appear inside a JSON payload, which is what lets a
# reader resynchronise after garbage by scanning for it.
MAGIC = b"\xfe\xfdNA"
_HEADER = struct.Struct("<4sIIB")
HEADER_SIZE = _HEADER.size  # 13 bytes

# Share of the limit (max_bytes, memory_max_bytes) a record of each priority may fill: PRIORITY_LOG (0) is refused
# once accepting it would take the pending bytes above 70 % of the limit, PRIORITY_LOG_PROBLEM (1) above 90 %,
# PRIORITY_EVENT (2) only above 100 %. So the agent's own debug/info records go first, node events last.
LIMIT_SHARES = (0.70, 0.90, 1.00)
DROP_REASONS = ("spool_full", "memory_full", "closed")

SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
CURSOR_NAME = "cursor"
_CURSOR_TMP = "cursor.tmp"
LOCK_NAME = "lock"


def frame(record: bytes, priority: int) -> bytes:
    """One record as it is stored in a segment: header (magic, length, CRC32, priority) and payload."""
    return _HEADER.pack(MAGIC, len(record), zlib.crc32(record), priority) + record


def segment_name(number: int) -> str:
    """File name of segment ``number`` (zero-padded so that names sort in segment order)."""
    return f"{number:020d}{SEGMENT_SUFFIX}"


class ScanResult(NamedTuple):
    """What ``scan_records`` found in one segment."""

    offsets: list[int]  # start of every intact record, in order
    valid_end: int  # end of the last intact record (``start`` when there is none)
    corrupt: int  # damaged stretches skipped: a record with a bad checksum or length, garbage, a truncated tail


def record_at(data: bytes | memoryview, pos: int) -> bytes | None:
    """The payload of the record framed at ``data[pos:]``, or None if its magic, length or checksum is wrong."""
    if len(data) - pos < HEADER_SIZE:
        return None
    magic, length, crc, _priority = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if magic != MAGIC or end > len(data):
        return None
    payload = bytes(data[pos + HEADER_SIZE : end])
    return payload if zlib.crc32(payload) == crc else None


def scan_records(data: bytes, start: int = 0) -> ScanResult:
    """
    Find the intact records of a segment from offset ``start`` on (a pure function of the file's bytes).

    A record whose checksum fails is skipped: if another record starts right where its length says it ends, only
    that record is lost; otherwise the scan resynchronises at the next magic. Each damaged stretch counts once:
    failures found while resynchronising, before the next intact record, are part of the same stretch. A tail too
    short for its header or its length (a crash in the middle of a write) ends the scan and counts as one.
    """
    view = memoryview(data)
    n = len(data)
    offsets: list[int] = []
    valid_end = start
    corrupt = 0
    resyncing = False  # inside a damaged stretch that has already been counted
    pos = start
    unpack = _HEADER.unpack_from
    crc32 = zlib.crc32
    while pos < n:
        if n - pos < HEADER_SIZE:
            corrupt += not resyncing
            break
        magic, length, crc, _priority = unpack(data, pos)
        end = pos + HEADER_SIZE + length
        if magic == MAGIC and end <= n and crc32(view[pos + HEADER_SIZE : end]) == crc:
            offsets.append(pos)
            valid_end = pos = end
            resyncing = False
            continue
        corrupt += not resyncing
        if magic == MAGIC and end <= n and (end == n or data.startswith(MAGIC, end)):
            pos = end  # a damaged payload with an intact length: the next record starts where this one ends
            resyncing = False
            continue
        nxt = data.find(MAGIC, pos + 1)
        if nxt < 0:
            break
        pos = nxt
        resyncing = True
    return ScanResult(offsets, valid_end, corrupt)


class _Segment:
    """One segment file and the index of its unacknowledged intact records (sequence numbers and offsets)."""

    __slots__ = ("fd", "first_seq", "number", "offsets", "path", "size", "valid_end")

    def __init__(self, number: int, path: str, typecode: str, first_seq: int) -> None:
        self.number = number
        self.path = path
        self.first_seq = first_seq  # sequence number of the record at offsets[0]
        self.offsets: array[int] = array(typecode)
        self.valid_end = 0  # end of the last indexed record
        self.size = 0  # bytes in the file
        self.fd = -1  # write descriptor while this is the active segment


class Spool:
    """
    A bounded, crash-safe spool of records (bytes, one JSON document each), oldest first.

    Records live in memory (a deque of the newest ones, up to ``memory_max_bytes``) in front of append-only segment
    files in ``directory`` (``segment_bytes`` each, named by an increasing number). ``append`` never does disk I/O;
    ``flush`` writes what was appended since the last flush with one ``fdatasync``; ``peek`` reads the oldest
    unacknowledged records (from memory when it still holds them, else from the segments); ``ack`` releases them.
    Acknowledged records that were never written are never written; fully acknowledged segments are deleted.

    **Bounds.** Every record costs its payload plus the 13-byte frame (``HEADER_SIZE``). A record of priority 0
    (``PRIORITY_LOG``) is refused when accepting it would take the pending bytes (disk + memory, unacknowledged)
    above 70 % of ``max_bytes``, priority 1 (``PRIORITY_LOG_PROBLEM``) above 90 %, priority 2 (``PRIORITY_EVENT``)
    above 100 %: the agent's own debug/info records go first, node events last, and appends never take the pending
    bytes past ``max_bytes``. Refusals count in ``dropped[("spool_full", priority)]``. The same shares apply to the
    bytes held only in memory (not yet written, ``memory_bytes``) against ``memory_max_bytes``, counted as
    ``"memory_full"``: that is what happens while the disk cannot be written (full, read-only, I/O errors), or in
    memory-only mode (``directory`` None), where every pending record is in memory. Priorities above 2 count as 2,
    below 0 as 0. Appends after ``close`` are refused as ``"closed"``. The files may exceed ``max_bytes`` by the
    acknowledged records of segments not yet fully acknowledged (about one segment while the shipper keeps up).

    **Durability.** Everything ``flush`` wrote is on disk when it returns (``fdatasync``, and an ``fsync`` of the
    directory for a new segment): every record appended before a flush began and not acknowledged survives a kill -9
    or a power cut; records appended after the last flush began are lost if the process dies. The cursor
    (segment number, offset of the oldest unacknowledged record, records acknowledged in the spool's lifetime) is
    written by ``flush`` through a temporary file, ``fsync`` and ``rename``: records acknowledged after the last
    flush are delivered again after a crash (at least once; duplicates carry the same ``event.id``).

    **Corruption** never raises: on recovery and on every read, a record whose magic, length or checksum is wrong is
    skipped (``scan_records``) and counted in ``corrupt``; intact records around it are kept.

    **Threads.** Every method may be called from any thread. One lock guards the state and is held for
    bookkeeping only: ``flush`` takes the batch in O(1), writes and syncs without the lock, then commits; ``peek``
    reads segment files without it. ``flush`` calls are serialised among themselves. ``flush`` framing a large batch
    is Python code holding the GIL (about 2 us per 1 KiB record), which other threads feel, the lock aside.

    **Memory.** Besides the records held (``memory_held_bytes`` <= ``memory_max_bytes``), the index of the records
    on disk costs 4 bytes per record.

    Only one process may use a directory at a time (a POSIX record lock on ``lock``).
    """

    def __init__(
        self,
        directory: str | None,
        max_bytes: int = 256 << 20,
        memory_max_bytes: int = 16 << 20,
        segment_bytes: int = 8 << 20,
    ) -> None:
        if max_bytes <= 0 or memory_max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError(
                f"spool sizes must be positive: max_bytes={max_bytes}, memory_max_bytes={memory_max_bytes}, "
                f"segment_bytes={segment_bytes}"
            )
        self.directory = directory
        self.max_bytes = max_bytes
        self.memory_max_bytes = memory_max_bytes
        self.segment_bytes = segment_bytes
        self._limits = tuple(int(max_bytes * share) for share in LIMIT_SHARES)
        self._memory_limits = tuple(int(memory_max_bytes * share) for share in LIMIT_SHARES)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._durable = directory is not None
        self._opened = not self._durable
        self._closed = False  # appends refused
        self._flush_closed = False  # files closed (after the final flush)
        # Records are numbered in append order (numbering restarts at each open). Acknowledged: [0, _acked_seq).
        # In memory: [_mem_start, _next_seq), always _mem_start >= _acked_seq. Written and synced: below
        # _written_seq. Not yet taken by a flush: [_batch_start, _next_seq).
        self._next_seq = 0
        self._acked_seq = 0
        self._written_seq = 0
        self._mem: deque[bytes] = deque()
        self._mem_start = 0
        self._mem_bytes = 0  # framed bytes of everything in _mem (written or not)
        self._unwritten_bytes = 0  # framed bytes of unacknowledged records not yet written
        self._disk_pending = 0  # bytes on disk from the oldest unacknowledged record on (what a restart re-reads)
        self._batch_records: list[bytes] = []
        self._batch_prios = bytearray()
        self._batch_start = 0
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._next_number = 1
        self._typecode = "I" if segment_bytes + memory_max_bytes + HEADER_SIZE < 1 << 32 else "Q"
        self._persisted_cursor: tuple[int, int] | None = None
        self._acked_before = 0  # lifetime acknowledged count read from the cursor at open
        self._lock_fd = -1
        # The last peek, when it skipped corrupt records: the sequence number after each record it returned.
        self._peek_ends: list[int] | None = None
        self._peek_for = -1
        self._peek_used = 0
        # Self-metrics (read them from any thread; they only grow, except the gauges).
        self.disk_bytes = 0
        self.dropped: dict[tuple[str, int], int] = {(r, p): 0 for r in DROP_REASONS for p in range(3)}
        self.corrupt = 0
        self.write_errors = 0
        self.read_errors = 0
        self.last_error = ""
        self.appended = 0
        self.acknowledged = 0

    # --- gauges ---------------------------------------------------------------------------------------------

    @property
    def pending_records(self) -> int:
        """Records appended (or recovered) and not yet acknowledged."""
        return self._next_seq - self._acked_seq

    @property
    def pending_bytes(self) -> int:
        """Framed bytes of the pending records (on disk: from the oldest unacknowledged one on, damage included)."""
        with self._lock:
            return self._disk_pending + self._unwritten_bytes

    @property
    def memory_bytes(self) -> int:
        """Framed bytes of the pending records held only in memory (not yet written)."""
        return self._unwritten_bytes

    @property
    def memory_held_bytes(self) -> int:
        """Framed bytes of every record held in memory: not yet written, plus written ones kept for ``peek``."""
        return self._mem_bytes

    @property
    def backlog_on_disk(self) -> bool:
        """Whether the next ``peek`` reads segment files (after a restart, or a backlog larger than memory)."""
        return self._acked_seq < self._mem_start

    # --- lifecycle ------------------------------------------------------------------------------------------

    def open(self) -> None:
        """
        Create the directory (mode 0700), lock it, and recover: read the cursor, drop segments before it, scan the
        others and index their intact records (corrupt ones are skipped and counted). New records go to a new
        segment. Records appended before ``open`` come after the recovered ones. Reads every unacknowledged byte
        once: call it from a worker thread. A no-op in memory-only mode and when already open.

        Raises:
            OSError: the directory cannot be created, read or written, or another process holds its lock.
        """
        if self._opened:
            return
        assert self.directory is not None
        directory = self.directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        lock_fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            names = os.listdir(directory)
        except OSError as exc:
            os.close(lock_fd)
            if isinstance(exc, BlockingIOError | PermissionError) and exc.filename is None:
                raise OSError(exc.errno, f"spool directory {directory} is in use by another process") from exc
            raise
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, _CURSOR_TMP))
        cursor_number, cursor_offset = self._read_cursor()
        numbers = sorted(int(m.group(1)) for m in map(_SEGMENT_NAME.match, names) if m)
        segments: list[_Segment] = []
        seq = corrupt = disk = 0
        for number in numbers:
            path = os.path.join(directory, segment_name(number))
            if number < cursor_number:  # every record before the cursor was acknowledged
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                self.read_errors += 1
                self.last_error = f"reading spool segment: {exc}"
                continue
            start = min(cursor_offset, len(data)) if number == cursor_number else 0
            found = scan_records(data, start)
            corrupt += found.corrupt
            if not found.offsets:  # nothing unacknowledged and intact left in it
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            seg = _Segment(number, path, "I" if len(data) < 1 << 32 else "Q", seq)
            seg.offsets.extend(found.offsets)
            seg.valid_end = found.valid_end
            seg.size = len(data)
            segments.append(seg)
            seq += len(found.offsets)
            disk += len(data)
        with self._lock:
            # Records appended before open are renumbered after the recovered ones (none was peeked or written).
            self._segments = segments
            self._next_seq += seq
            self._mem_start += seq
            self._batch_start += seq
            self._written_seq = seq
            self._next_number = max([cursor_number, *numbers]) + 1
            self._persisted_cursor = (cursor_number, cursor_offset)
            self.disk_bytes = disk
            self.corrupt += corrupt
            self._disk_pending = self._compute_disk_pending()
            self._lock_fd = lock_fd
            self._opened = True

    def close(self) -> None:
        """Refuse further appends, flush once more, close the files. ``peek`` and ``ack`` keep working."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self._durable:
            return
        self.flush()
        with self._flush_lock:
            self._flush_closed = True
            if self._active is not None and self._active.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._active.fd)
                self._active.fd = -1
            if self._lock_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = -1

    # --- producer -------------------------------------------------------------------------------------------

    def append(self, record: bytes, priority: int) -> bool:
        """
        Queue ``record`` (immutable bytes, no newline needed); O(1), no I/O, any thread. Returns False when it was
        refused (full for its priority, or closed); every refusal counts in ``dropped``.
        """
        p = 2 if priority >= 2 else 1 if priority == 1 else 0
        size = len(record) + HEADER_SIZE
        with self._lock:
            if self._closed:
                self.dropped[("closed", p)] += 1
                return False
            unwritten = self._unwritten_bytes + size
            if self._disk_pending + unwritten > self._limits[p]:
                self.dropped[("spool_full", p)] += 1
                return False
            if unwritten > self._memory_limits[p]:
                self.dropped[("memory_full", p)] += 1
                return False
            self._mem.append(record)
            self._mem_bytes += size
            self._unwritten_bytes = unwritten
            self._next_seq += 1
            self.appended += 1
            if self._durable:
                self._batch_records.append(record)
                self._batch_prios.append(p)
                if self._mem_bytes > self.memory_max_bytes:
                    self._evict_locked()
            return True

    # --- consumer -------------------------------------------------------------------------------------------

    def peek(self, max_records: int, max_bytes: int) -> list[bytes]:
        """
        The oldest unacknowledged records, in order, without removing them: at most ``max_records``, and at most
        ``max_bytes`` of payload unless the first record alone is larger. Served from memory while memory still
        holds them (the steady state: no I/O); otherwise reads segment files (at most about ``max_bytes``) without
        holding the lock: a few milliseconds for megabytes, see ``backlog_on_disk``.
        """
        if max_records <= 0:
            return []
        while True:
            with self._lock:
                if not self._opened:
                    return []
                start = self._acked_seq
                if start >= self._mem_start:
                    out: list[bytes] = []
                    self._take_memory_locked(out, 0, max_records, max_bytes)
                    self._peek_ends = None
                    self._peek_for = start
                    self._peek_used = 0
                    return out
                plan = self._plan_read_locked(start, max_records, max_bytes)
            if not plan:  # cannot happen while the index is consistent; never spin on it
                return []
            records, seqs, bad, plan_end, errors = self._read_plan(plan, start, max_records, max_bytes)
            with self._lock:
                if self._acked_seq != start:  # acknowledged meanwhile by another thread: read again
                    continue
                if errors:
                    self.read_errors += len(errors)
                    self.last_error = errors[-1]
                if not records:  # nothing intact in the range: those records can never be delivered, skip them
                    self.corrupt += len(bad)
                    self._advance_locked(plan_end)
                    continue
                first = seqs[0]
                ends = [s + 1 for s in seqs]
                if plan_end == self._mem_start and len(records) < max_records:
                    used = sum(map(len, records))
                    if used < max_bytes:
                        n = self._take_memory_locked(records, used, max_records, max_bytes)
                        ends.extend(range(plan_end + 1, plan_end + n + 1))
                # Damaged records before the last one returned are skipped by the acknowledgement (counted now);
                # damaged ones after it come first in the next peek and are counted then.
                self.corrupt += sum(1 for s in bad if s < ends[-1])
                if first > start:  # leading damaged records: skip them now
                    self._advance_locked(first)
                contiguous = ends[-1] - first == len(ends)
                self._peek_ends = None if contiguous else ends
                self._peek_for = first
                self._peek_used = 0
                return records

    def ack(self, n: int) -> None:
        """
        The first ``n`` records the last ``peek`` returned were delivered (successive calls continue where the
        previous one stopped, so partial acknowledgements add up). Persisted by the next ``flush``.

        Raises:
            ValueError: ``n`` is negative or more than is pending.
        """
        if n < 0:
            raise ValueError(f"cannot acknowledge {n} records")
        if n == 0:
            return
        with self._lock:
            ends = self._peek_ends
            if ends is not None and self._peek_for == self._acked_seq:
                k = self._peek_used + n
                new = ends[k - 1] if k <= len(ends) else ends[-1] + k - len(ends)
                self._peek_used = k
            else:
                new = self._acked_seq + n
                self._peek_ends = None
            if new > self._next_seq:
                raise ValueError(f"cannot acknowledge {n} records: {self._next_seq - self._acked_seq} pending")
            self._peek_for = new
            self.acknowledged += n
            self._advance_locked(new)

    # --- writer ---------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """
        Write the records appended since the last flush to the active segment (a new one past ``segment_bytes``),
        ``fdatasync`` it once (and ``fsync`` the directory when a segment was created), persist the cursor when it
        moved (temporary file, ``fsync``, ``rename``: one more sync), and delete fully acknowledged segments.
        Blocks for the write and the syncs: call it from a worker thread. Never raises: on an ``OSError`` the
        records not written stay in memory (still counted in ``memory_bytes``) and the next flush retries;
        ``write_errors`` and ``last_error`` say what happened. A no-op in memory-only mode and after ``close``.
        """
        if not self._durable:
            return
        with self._flush_lock:
            if not self._opened or self._flush_closed:
                return
            try:
                self._write_batch()
            except OSError as exc:
                self._note_write_error(exc)
            try:
                self._persist_cursor()
            except OSError as exc:
                self._note_write_error(exc)
            # Only segments whose every record is acknowledged go, so this is safe even when the cursor could not
            # be written (after a crash the old cursor re-delivers, never skips).
            self._delete_acknowledged_segments()

    # --- internals: memory ----------------------------------------------------------------------------------

    def _evict_locked(self) -> None:
        """Forget the oldest records already on disk until memory is within its budget (``peek`` reads them)."""
        mem = self._mem
        while self._mem_bytes > self.memory_max_bytes and self._mem_start < self._written_seq:
            self._mem_bytes -= len(mem.popleft()) + HEADER_SIZE
            self._mem_start += 1

    def _advance_locked(self, new: int) -> None:
        """Move the acknowledged mark to ``new``: release the records before it from memory."""
        self._acked_seq = new
        mem = self._mem
        written = self._written_seq
        while self._mem_start < new:
            size = len(mem.popleft()) + HEADER_SIZE
            self._mem_bytes -= size
            if self._mem_start >= written:
                self._unwritten_bytes -= size
            self._mem_start += 1
        self._disk_pending = self._compute_disk_pending()

    def _take_memory_locked(self, out: list[bytes], used: int, max_records: int, max_bytes: int) -> int:
        """Append records from the front of memory to ``out`` within the limits; returns how many."""
        taken = 0
        for rec in self._mem:
            if len(out) >= max_records or (out and used + len(rec) > max_bytes):
                break
            out.append(rec)
            used += len(rec)
            taken += 1
        return taken

    # --- internals: the disk index --------------------------------------------------------------------------

    def _compute_disk_pending(self) -> int:
        a = self._acked_seq
        if a >= self._written_seq:
            return 0
        total = 0
        for seg in self._segments:
            n = len(seg.offsets)
            if n == 0 or seg.first_seq + n <= a:
                continue
            i = a - seg.first_seq
            total += seg.valid_end - seg.offsets[i if i > 0 else 0]
        return total

    def _cursor_locked(self) -> tuple[int, int]:
        """(segment number, offset) of the oldest unacknowledged record, or of where the next one will go."""
        a = self._acked_seq
        for seg in self._segments:
            n = len(seg.offsets)
            if n and seg.first_seq <= a < seg.first_seq + n:
                return seg.number, seg.offsets[a - seg.first_seq]
        if self._active is not None:
            return self._active.number, self._active.size
        return self._next_number, 0

    def _plan_read_locked(self, start: int, max_records: int, max_bytes: int) -> list[tuple[str, array[int], int]]:
        """Segment ranges holding records [start, ...) not in memory: (path, record offsets, end of the range)."""
        plan: list[tuple[str, array[int], int]] = []
        seq = start
        limit = self._mem_start
        budget_records = max_records
        budget_bytes = max_bytes
        for seg in self._segments:
            n = len(seg.offsets)
            if n == 0 or seg.first_seq + n <= seq:
                continue
            if seg.first_seq > seq or seq >= limit or budget_records <= 0 or budget_bytes < 0:
                break
            i = seq - seg.first_seq
            j = min(n, i + budget_records, limit - seg.first_seq)
            # What may fit max_bytes of payload: spans include the frames, so this bounds from above and the read
            # may be a little larger than needed (``_read_plan`` applies the exact limits).
            fits = bisect.bisect_right(seg.offsets, seg.offsets[i] + budget_bytes + HEADER_SIZE * (j - i), i)
            j = max(i + 1, min(j, fits))
            end = seg.offsets[j] if j < n else seg.valid_end
            plan.append((seg.path, seg.offsets[i:j], end))
            budget_records -= j - i
            budget_bytes -= end - seg.offsets[i] - HEADER_SIZE * (j - i)
            seq += j - i
        return plan

    def _read_plan(
        self, plan: list[tuple[str, array[int], int]], start: int, max_records: int, max_bytes: int
    ) -> tuple[list[bytes], list[int], list[int], int, list[str]]:
        """
        Read the planned records, without the lock. Returns the intact ones, their sequence numbers, those of the
        damaged or unreadable ones, the sequence number after the last record considered, and read errors.
        """
        records: list[bytes] = []
        seqs: list[int] = []
        bad: list[int] = []
        errors: list[str] = []
        used = 0
        seq = start
        for path, offsets, end in plan:
            base = offsets[0]
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    data = os.pread(fd, end - base, base)
                finally:
                    os.close(fd)
            except OSError as exc:  # treated as damaged: a segment that cannot be read must not wedge the shipper
                errors.append(f"reading spool segment: {exc}")
                data = b""
            for off in offsets:
                if len(records) >= max_records:
                    return records, seqs, bad, seq, errors
                rec = record_at(data, off - base)
                if rec is None:
                    bad.append(seq)
                elif records and used + len(rec) > max_bytes:
                    return records, seqs, bad, seq, errors
                else:
                    records.append(rec)
                    seqs.append(seq)
                    used += len(rec)
                seq += 1
        return records, seqs, bad, seq, errors

    # --- internals: writing ---------------------------------------------------------------------------------

    def _write_batch(self) -> None:
        with self._lock:
            records, prios, start = self._batch_records, self._batch_prios, self._batch_start
            if not records:
                return
            self._batch_records, self._batch_prios, self._batch_start = [], bytearray(), self._next_seq
            acked = self._acked_seq
        if acked > start:  # acknowledged straight from memory: never written
            skip = min(acked - start, len(records))
            records, prios, start = records[skip:], prios[skip:], start + skip
        i = 0
        n = len(records)
        try:
            while i < n:
                seg = self._active
                first = len(records[i]) + HEADER_SIZE
                if seg is None or seg.fd < 0 or (seg.size and seg.size + first > self.segment_bytes):
                    seg = self._new_segment()
                written, error = self._write_to(seg, records, prios, i, start + i)
                i += written
                if error is not None:
                    raise error
        except BaseException:
            with self._lock:  # what was not written goes back in front of what was appended meanwhile
                self._batch_records[:0] = records[i:]
                self._batch_prios[:0] = prios[i:]
                self._batch_start = start + i
            raise

    def _write_to(
        self, seg: _Segment, records: list[bytes], prios: bytearray, i: int, seq0: int
    ) -> tuple[int, OSError | None]:
        """
        Write records[i:] that fit ``seg`` (at least one), sync, index them. Returns how many are now on disk, and
        the error that stopped the write, if any.
        """
        base = seg.size
        room = self.segment_bytes - base
        parts: list[bytes] = []
        ends: list[int] = []  # end of each record, relative to base
        pos = 0
        pack = _HEADER.pack
        crc32 = zlib.crc32
        for k in range(i, len(records)):
            rec = records[k]
            size = len(rec) + HEADER_SIZE
            if ends and pos + size > room:
                break
            parts.append(pack(MAGIC, len(rec), crc32(rec), prios[k]))
            parts.append(rec)
            pos += size
            ends.append(pos)
        data = b"".join(parts)
        done = 0
        try:
            view = memoryview(data)
            while done < len(data):
                done += os.pwrite(seg.fd, view[done:], base + done)
            os.fdatasync(seg.fd)
            complete = len(ends)
            error: OSError | None = None
        except OSError as exc:
            # Keep the records that made it whole (disk full half-way through): cut the rest, sync, index them.
            error = exc
            complete = bisect.bisect_right(ends, done)
            keep = ends[complete - 1] if complete else 0
            try:
                os.ftruncate(seg.fd, base + keep)
                if complete:
                    os.fdatasync(seg.fd)
            except OSError:
                complete = 0  # later writes go to base again and overwrite whatever is left
        if complete:
            self._commit(seg, seq0, [base] + [base + e for e in ends[: complete - 1]], base + ends[complete - 1])
        return complete, error

    def _commit(self, seg: _Segment, seq0: int, offsets: list[int], new_size: int) -> None:
        """Index records [seq0, seq0 + len(offsets)) as synced at ``offsets`` in ``seg``."""
        with self._lock:
            if not seg.offsets or seq0 != seg.first_seq + len(seg.offsets):
                # Everything indexed before was acknowledged (records in between were acknowledged from memory and
                # never written): start the index afresh.
                seg.first_seq = seq0
                seg.offsets = array(seg.offsets.typecode, offsets)
            else:
                seg.offsets.extend(offsets)
            end_seq = seq0 + len(offsets)
            a = self._acked_seq
            if a < end_seq:
                self._unwritten_bytes -= new_size - offsets[max(0, a - seq0)]
            self.disk_bytes += new_size - seg.size
            seg.size = seg.valid_end = new_size
            self._written_seq = end_seq
            self._disk_pending = self._compute_disk_pending()
            if self._mem_bytes > self.memory_max_bytes:
                self._evict_locked()

    def _new_segment(self) -> _Segment:
        """Seal the active segment and create the next one (its directory entry synced)."""
        assert self.directory is not None
        old = self._active
        if old is not None and old.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(old.fd)
            old.fd = -1
        number = self._next_number
        path = os.path.join(self.directory, segment_name(number))
        # O_TRUNC: a file of this number can only be left over from a failed attempt of ours (numbers only grow).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self._sync_directory()
        except OSError:
            os.close(fd)
            raise
        seg = _Segment(number, path, self._typecode, 0)
        seg.fd = fd
        with self._lock:
            self._segments.append(seg)
            self._active = seg
            self._next_number = number + 1
        return seg

    def _sync_directory(self) -> None:
        assert self.directory is not None
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _persist_cursor(self) -> None:
        assert self.directory is not None
        with self._lock:
            cursor = self._cursor_locked()
            total = self._acked_before + self.acknowledged
        if cursor == self._persisted_cursor:
            return
        body = json.dumps({"segment": cursor[0], "offset": cursor[1], "acknowledged": total}).encode()
        tmp = os.path.join(self.directory, _CURSOR_TMP)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(body)
            done = 0
            while done < len(body):
                done += os.write(fd, view[done:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(self.directory, CURSOR_NAME))
        self._persisted_cursor = cursor

    def _read_cursor(self) -> tuple[int, int]:
        """The persisted cursor, or (0, 0) (deliver everything again) when it is missing or unreadable."""
        assert self.directory is not None
        try:
            with open(os.path.join(self.directory, CURSOR_NAME), "rb") as f:
                doc = json.loads(f.read())
            number, offset, total = doc["segment"], doc["offset"], doc.get("acknowledged", 0)
            if not all(isinstance(v, int) and v >= 0 for v in (number, offset, total)):
                raise ValueError(f"unexpected cursor {doc!r}")
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: deeply nested JSON
            self.last_error = f"spool cursor unreadable, delivering every record again: {exc}"
            return 0, 0
        self._acked_before = total
        return number, offset

    def _delete_acknowledged_segments(self) -> None:
        with self._lock:
            a = self._acked_seq
            doomed = [
                s
                for s in self._segments
                if s is not self._active and (not s.offsets or s.first_seq + len(s.offsets) <= a)
            ]
        for seg in doomed:
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._note_write_error(exc)
                continue
            with self._lock:
                self._segments.remove(seg)
                self.disk_bytes -= seg.size

    def _note_write_error(self, exc: OSError) -> None:
        with self._lock:
            self.write_errors += 1
            self.last_error = f"writing the spool: {exc}"
