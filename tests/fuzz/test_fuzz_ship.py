"""
Decoders of untrusted bytes in the log shipper (``nodeagent.ship``):

* the Lumberjack ACK reader: a real ``BeatsTransport`` on loopback against a server that reads the window and answers
  with arbitrary bytes, cut into pieces at arbitrary points. Documented error: ``TransportError``. An oracle computes
  from the bytes alone what a correct reader does (which ACKs move progress, where the protocol breaks), so chunking
  can neither change the outcome nor make a bad reply pass;
* ``decode_ack`` on frames of any length (``TransportError`` for anything but an ACK frame);
* the HTTP transport's response handling: a real ``HttpTransport`` against a server that answers with damaged HTTP
  responses. Documented errors: ``TransportError`` and its ``HttpStatusError``;
* the spool's recovery from disk: ``scan_records`` on damaged segments (never raises; counts damaged stretches),
  and ``Spool.open`` on a damaged cursor file (never raises; falls back to delivering everything again).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.ship import TransportError
from nodeagent.ship.http import HttpStatusError, HttpTransport
from nodeagent.ship.lumberjack import ACK_SIZE, BeatsTransport, decode_ack, encode_json_frames, encode_window
from nodeagent.ship.spool import HEADER_SIZE, MAGIC, Spool, frame, record_at, scan_records, segment_name
from tests.fuzz.strategies import chunked, hostile_bytes
from tests.fuzz.support import Cases, budget

ACK = struct.Struct(">BBI")


def ack_frames(*seqs: int) -> bytes:
    return b"".join(ACK.pack(0x32, 0x41, s) for s in seqs)


@dataclass
class PeerScript:
    """What the loopback server does on the next connection: bytes to expect, then pieces to send, then close."""

    expect: int = 0
    pieces: list[bytes] = field(default_factory=list)


class LoopbackPeer:
    """A TCP server on 127.0.0.1 that plays one ``PeerScript`` per connection, on its own event loop."""

    def __init__(self, read_request: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.script = PeerScript()
        self._read_request = read_request
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.script
        try:
            if self._read_request:  # an HTTP request: headers, then Content-Length bytes
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
            else:
                await reader.readexactly(script.expect)
            for piece in script.pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)  # let the client read this piece alone
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client gave up first (a protocol error it found): that is its business
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()


@pytest.fixture(scope="module")
def beats_peer() -> Iterator[LoopbackPeer]:
    peer = LoopbackPeer(read_request=False)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def http_peer() -> Iterator[LoopbackPeer]:
    peer = LoopbackPeer(read_request=True)
    yield peer
    peer.close()


# --- Lumberjack ACKs ------------------------------------------------------------------------------------------------


def ack_oracle(reply: bytes, count: int) -> tuple[list[int], bool]:
    """
    What a correct reader makes of ``reply`` for a window of ``count``: the progress it reports and whether the window
    completes. Frames are 6 bytes (version 2, type A, sequence); ``ACK 0`` is a keepalive; a sequence above the window
    or below one already acknowledged is a protocol error; anything after the final ACK is not read.
    """
    progress: list[int] = []
    acked = 0
    for offset in range(0, len(reply) - ACK_SIZE + 1, ACK_SIZE):
        version, kind, seq = ACK.unpack_from(reply, offset)
        if version != 0x32 or kind != 0x41 or seq > count or (seq and seq < acked):
            return progress, False
        if seq > acked:
            acked = seq
            progress.append(seq)
            if acked == count:
                return progress, True
    return progress, False


RECORDS = tuple(json.dumps({"message": f"line {n}", "n": n}).encode() for n in range(1, 6))
ACK_SEEDS = (
    ack_frames(5),
    ack_frames(0, 0, 5),
    ack_frames(2, 4, 5),
    ack_frames(1, 1, 3, 5),
    ack_frames(0, 3, 0, 5) + b"trailing bytes after the final ACK",
    ack_frames(3, 2),
    ack_frames(6),
    b"HTTP/1.1 400 Bad Request\r\n\r\n",
)


@st.composite
def ack_replies(draw: st.DrawFn) -> bytes:
    """Structured ACK sequences (valid or not) or damaged seeds."""
    if draw(st.booleans()):
        return ack_frames(*draw(st.lists(st.integers(0, 7), max_size=8)))
    return draw(hostile_bytes(ACK_SEEDS))


@budget(200)
@given(st.integers(1, 5), st.data())
def test_beats_ack_reader(cases: Cases, beats_peer: LoopbackPeer, count: int, data: st.DataObject) -> None:
    """The transport reports exactly the oracle's progress, succeeds only if the oracle does, else TransportError."""
    reply = data.draw(ack_replies(), label="reply")
    records = RECORDS[:count]
    beats_peer.script = PeerScript(
        expect=len(encode_window(count)) + len(b"".join(encode_json_frames(records))),
        pieces=data.draw(chunked(reply), label="pieces"),
    )
    progress: list[int] = []

    async def exchange() -> None:
        transport = BeatsTransport("127.0.0.1", beats_peer.port, timeout=10.0, compression_level=0)
        try:
            await transport.send(records, progress.append)
        finally:
            await transport.aclose()

    outcome = cases.call(
        "lumberjack_ack_reader", beats_peer.loop.run_until_complete, exchange(), allowed=(TransportError,)
    )
    expected_progress, complete = ack_oracle(reply, count)
    assert expected_progress == progress
    assert complete == (outcome.error is None), outcome.error


@budget(200)
@given(
    st.binary(max_size=12)
    | st.builds(ACK.pack, st.sampled_from((0x32, 0x31, 0)), st.sampled_from((0x41, 0x57, 0)), st.integers(0, 2**32 - 1))
)
def test_decode_ack_any_frame(cases: Cases, frame_bytes: bytes) -> None:
    """A 6-byte ACK frame gives its sequence; any other bytes (length, version, type) raise TransportError."""
    outcome = cases.call("lumberjack_decode_ack", decode_ack, frame_bytes, allowed=(TransportError,))
    valid = len(frame_bytes) == ACK_SIZE and frame_bytes[:2] == b"2A"
    assert valid == (outcome.error is None)
    if valid:
        assert ACK.unpack(frame_bytes)[2] == outcome.value


# --- HTTP responses -------------------------------------------------------------------------------------------------

HTTP_SEEDS = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 5\r\n\r\nbusy\n",
    b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 404 Not Found\r\nConnection: close\r\n\r\nno such path",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
    b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 300\r\n\r\n" + b"x" * 300,
)
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[ \r]")


@budget(150)
@given(st.data())
def test_http_response_handling(cases: Cases, http_peer: LoopbackPeer, data: st.DataObject) -> None:
    """A damaged response: success only on a 2xx status line, else HttpStatusError with its status or TransportError."""
    reply = data.draw(st.sampled_from(HTTP_SEEDS) | hostile_bytes(HTTP_SEEDS), label="reply")
    http_peer.script = PeerScript(pieces=data.draw(chunked(reply), label="pieces"))
    progress: list[int] = []

    async def exchange() -> None:
        transport = HttpTransport(f"http://127.0.0.1:{http_peer.port}/", timeout=10.0)
        try:
            await transport.send(RECORDS[:2], progress.append)
        finally:
            await transport.aclose()

    outcome = cases.call("http_response", http_peer.loop.run_until_complete, exchange(), allowed=(TransportError,))
    status = STATUS_LINE.match(reply.lstrip(b"\r\n"))  # empty lines before the status line are skipped (RFC 9112)
    if outcome.error is None:
        assert status is not None and status.group(1).startswith(b"2"), reply[:40]
        assert [2] == progress
    else:
        assert [] == progress
        if isinstance(outcome.error, HttpStatusError):
            assert status is not None and int(status.group(1)) == outcome.error.status


# --- spool segments and cursor ---------------------------------------------------------------------------------------

PAYLOAD = st.binary(max_size=40).filter(lambda b: 0xFE not in b)  # JSON text never holds 0xFE (nor MAGIC)
GARBAGE = st.binary(min_size=1, max_size=30).filter(lambda b: 0xFE not in b)


@st.composite
def segments(draw: st.DrawFn) -> tuple[bytes, list[bytes], int]:
    """
    A segment as a crash and bit rot leave it: intact records, records whose payload was damaged (length intact),
    garbage between them, and maybe a record cut short at the end. Returns the bytes, the intact payloads and the
    number of damaged stretches ``scan_records`` must count: a damaged record or a run of garbage each count once,
    except that garbage right after a damaged record, or a damaged record (or the cut tail) right after garbage, is
    the same stretch.
    """
    out, intact, corrupt, previous = [], [], 0, "ok"
    for _ in range(draw(st.integers(0, 6))):
        what = draw(st.sampled_from(("ok", "ok", "damaged", "garbage")))
        if what == "garbage" and previous == "garbage":
            what = "ok"
        if what == "garbage":
            out.append(draw(GARBAGE))
            corrupt += previous != "damaged"
        else:
            payload = draw(PAYLOAD)
            framed = bytearray(frame(payload, draw(st.integers(0, 2))))
            if what == "damaged":
                framed[9] ^= 0x01  # the CRC: the payload no longer matches it
                corrupt += previous != "garbage"
            else:
                intact.append(payload)
            out.append(bytes(framed))
        previous = what
    if draw(st.booleans()):
        cut = frame(draw(PAYLOAD.filter(bool)), 0)
        out.append(cut[: draw(st.integers(HEADER_SIZE, len(cut) - 1))])
        corrupt += previous != "garbage"
    return b"".join(out), intact, corrupt


@budget(200)
@given(segments())
def test_scan_records_recovers_intact_records(cases: Cases, segment: tuple[bytes, list[bytes], int]) -> None:
    """Every intact record is found, in order, and each damaged stretch is counted once."""
    data, intact, corrupt = segment
    found = cases.call("spool_scan", scan_records, data).value
    assert intact == [record_at(data, offset) for offset in found.offsets]
    assert corrupt == found.corrupt


SEGMENT_SEEDS = (
    b"".join(frame(r, 2) for r in RECORDS),
    frame(RECORDS[0], 0) + b"garbage" + frame(RECORDS[1], 1),
)


@budget(200)
@given(hostile_bytes(SEGMENT_SEEDS), st.integers(0, 400))
def test_scan_records_hostile(cases: Cases, data: bytes, start: int) -> None:
    """Any bytes from any start offset: no exception; every offset found holds an intact record, in order."""
    found = cases.call("spool_scan", scan_records, data, min(start, len(data))).value
    assert found.offsets == sorted(set(found.offsets))
    assert all(record_at(data, offset) is not None for offset in found.offsets)
    assert found.corrupt >= 0 and found.valid_end <= len(data)


def _cursor(segment: int, offset: int, acknowledged: int) -> bytes:
    return json.dumps({"segment": segment, "offset": offset, "acknowledged": acknowledged}).encode()


CURSOR_SEEDS = (_cursor(1, 0, 0), _cursor(1, len(frame(RECORDS[0], 2)), 1), _cursor(2, 0, 5))


@pytest.fixture(scope="module")
def spool_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spools")


@budget(100)
@given(hostile_bytes(CURSOR_SEEDS) | st.just(b"[" * 5_000), st.integers(0, 10**9))
def test_spool_open_with_damaged_cursor(cases: Cases, spool_root: Path, cursor: bytes, n: int) -> None:
    """
    A damaged cursor file never stops recovery: ``open`` succeeds and delivers a run of the records on disk in order
    (all of them when the cursor is unreadable, which ``last_error`` then says).
    """
    directory = spool_root / f"s{n}"
    directory.mkdir()
    try:
        (directory / segment_name(1)).write_bytes(b"".join(frame(r, 2) for r in RECORDS))
        (directory / "cursor").write_bytes(cursor)
        spool = Spool(str(directory))
        cases.call("spool_open_cursor", spool.open)
        try:
            delivered = spool.peek(100, 1 << 20)
        finally:
            spool.close()
        assert list(RECORDS[len(RECORDS) - len(delivered) :]) == delivered  # a suffix: the unacknowledged ones
        try:
            doc = json.loads(cursor)
            readable = isinstance(doc, dict) and all(
                isinstance(doc.get(k), int) and doc[k] >= 0 for k in ("segment", "offset")
            )
        except (ValueError, RecursionError):
            readable = False
        if not readable:
            assert list(RECORDS) == delivered
            assert "cursor" in spool.last_error
    finally:
        shutil.rmtree(directory)


def test_segment_seed_is_intact() -> None:
    """The segment seed scans clean, so the hostile test damages something that was whole."""
    found = scan_records(SEGMENT_SEEDS[0])
    assert (len(RECORDS), 0, len(SEGMENT_SEEDS[0])) == (len(found.offsets), found.corrupt, found.valid_end)
    assert zlib.crc32(RECORDS[0]) == struct.unpack_from("<I", SEGMENT_SEEDS[0], 8)[0]
    assert SEGMENT_SEEDS[0].startswith(MAGIC)
