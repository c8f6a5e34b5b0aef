"""A test double of Logstash's ``beats`` input: a Lumberjack protocol v2 server on 127.0.0.1 (TCP or TLS).

It follows the public protocol (logstash-input-beats ``PROTOCOL.md``; elastic/go-lumber ``protocol/v2``,
``server/v2``) and answers as logstash-input-beats does (``BeatsParser``, ``BeatsHandler``, ``ConnectionHandler``):

* frames are read with ``readexactly``: ``W`` (window size), ``J`` (sequence, length, JSON object) and ``C`` (a
  zlib stream whose plaintext is a run of *complete* frames, parsed like the outer stream); a frame starting with
  another version byte or of another type, a truncated frame inside ``C``, a JSON text that is not an object, or a
  ``J`` outside a window is a protocol error: the double records it and closes the connection;
* a window is complete when it holds as many J frames as ``W`` announced; a new ``W`` before that completes the
  partial window (Logstash: "New window size received but the current batch was not complete");
* the ACK is cumulative and names the **highest sequence of the window** (``BeatsHandler.needAck``), so clients
  numbering 1..n per window (go-lumber, Filebeat) and clients numbering globally (pylogbeat) are both answered;
* ``W 0`` is answered with ``ACK 0`` (``processBatchAndSendAck`` on an empty batch);
* while a window is held back, ``ACK 0`` keepalives go out every ``keepalive_s`` (Logstash: 5 s write-idle,
  ``IDLESTATE_WRITER_IDLE_TIME_SECONDS``); with ``client_inactivity_timeout`` set, a connection idle between
  windows for that long is closed (Logstash's ``client_inactivity_timeout``, default 60 s; off by default here).

What it fakes: there is no queue, no pipeline and no codec. An event counts as "queued" when the double records
it in ``events`` just before the final ACK. The double does **not** apply the beats input's event transform (a
top-level ``message`` key run through the input's codec, tag ``beats_input_codec_plain_applied``, ``@timestamp``
coercion, ``[@metadata][beat]``): ``events`` hold the client's JSON objects exactly as decoded. Only protocol v2
is spoken (no v1 ``D`` frames).

Behaviour is chosen with ``mode`` (``Mode``), settable at any time, or ``set_mode(mode, times=...)``; the mode in
force when a window completes decides its fate. Events of windows that never got a proper final ACK are kept in
``unacked_events`` (Logstash may or may not have queued them), not in ``events``. Counters: ``connections``,
``batches`` (complete windows), ``windows`` (their sizes), ``json_frames`` and ``compressed_frames`` received,
``acks`` (every ACK written, as ``(connection, sequence)``), ``keepalives``, ``protocol_errors``, ``idle_closes``,
``client_subjects`` (the CN of each client certificate presented).
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import ssl
import struct
import zlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

VERSION = 0x32
FRAME_WINDOW = 0x57
FRAME_JSON = 0x4A
FRAME_COMPRESSED = 0x43
FRAME_ACK = 0x41
U32 = struct.Struct(">I")
LOGSTASH_KEEPALIVE_S = 5.0
GARBAGE_REPLY = b"HTTP/1.1 400 Bad Request\r\n\r\n"


class Mode(enum.Enum):
    NORMAL = "normal"  # ACK the highest sequence of each window at once
    DELAYED_ACK = "delayed_ack"  # hold the final ACK for delay_s, sending ACK 0 every keepalive_s meanwhile
    # ACK the window in partial_steps cumulative steps (half, then all, for 2). Logstash itself only ever ACKs the
    # highest sequence; partial ACKs are what go-lumber's client is written to accept ("Server might send partial ACK").
    PARTIAL_ACK = "partial_ack"
    KEEPALIVE_ONLY = "keepalive_only"  # only ACK 0 every keepalive_s, forever (a blocked Logstash queue)
    SILENT = "silent"  # read the window, never answer, keep the connection open
    CLOSE_BEFORE_ACK = "close_before_ack"  # read the window, then close the connection without an ACK
    ACK_TOO_HIGH = "ack_too_high"  # ACK highest sequence + 1 (a protocol error for the client)
    GARBAGE = "garbage"  # answer with bytes that are not an ACK frame


@dataclass(frozen=True)
class ReceivedEvent:
    """One J frame as the double decoded it."""

    connection: int  # 1 for the first connection the double accepted, and so on
    sequence: int
    event: dict[str, Any]


class _ProtocolError(Exception):
    pass


class _Hangup(Exception):
    """The double closes this connection on purpose (CLOSE_BEFORE_ACK)."""


@dataclass
class _Connection:
    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    window_size: int | None = None  # announced by the last W; None between windows
    pending: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


class LumberjackServer:
    """Lumberjack v2 server double. ``async with LumberjackServer() as server:`` then connect to ``server.port``;
    ``await stop()`` / ``await start()`` restart it on the same port (open connections are closed)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        mode: Mode = Mode.NORMAL,
        delay_s: float = 1.0,
        keepalive_s: float = LOGSTASH_KEEPALIVE_S,
        partial_steps: int = 2,
        client_inactivity_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.mode = mode
        self.delay_s = delay_s
        self.keepalive_s = keepalive_s
        self.partial_steps = partial_steps
        self.client_inactivity_timeout = client_inactivity_timeout
        self._mode_times: int | None = None
        self.events: list[ReceivedEvent] = []
        self.unacked_events: list[ReceivedEvent] = []
        self.connections = 0
        self.batches = 0
        self.windows: list[int] = []
        self.json_frames = 0
        self.compressed_frames = 0
        self.acks: list[tuple[int, int]] = []
        self.keepalives = 0
        self.protocol_errors: list[str] = []
        self.idle_closes = 0
        self.client_subjects: list[str] = []
        self._server: asyncio.Server | None = None
        self._open: dict[int, tuple[asyncio.StreamWriter, asyncio.Task[Any]]] = {}

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> LumberjackServer:
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
        return self

    async def stop(self) -> None:
        """Stop listening and close every open connection (a Logstash restart). Counters and events are kept."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        open_now = list(self._open.values())
        for writer, task in open_now:
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*(task for _, task in open_now), return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> LumberjackServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- driving it ----------------------------------------------------------------------------------------

    def set_mode(
        self,
        mode: Mode,
        *,
        times: int | None = None,
        delay_s: float | None = None,
        keepalive_s: float | None = None,
        partial_steps: int | None = None,
    ) -> None:
        """Treat the next windows so: ``times`` of them, then back to NORMAL; every one when None."""
        self.mode = mode
        self._mode_times = times
        if delay_s is not None:
            self.delay_s = delay_s
        if keepalive_s is not None:
            self.keepalive_s = keepalive_s
        if partial_steps is not None:
            self.partial_steps = partial_steps

    def close_connections(self) -> int:
        """Close every open connection as Logstash's inactivity timeout does (FIN, no RST); returns how many."""
        for writer, _ in self._open.values():
            writer.close()
        return len(self._open)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def documents(self) -> list[dict[str, Any]]:
        """The events received and acknowledged, in order, without connection and sequence."""
        return [e.event for e in self.events]

    # --- one connection ------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = _Connection(self.connections, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._open[conn.number] = (writer, task)
        peercert = writer.get_extra_info("peercert")
        if peercert:
            for rdn in peercert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        self.client_subjects.append(value)
        try:
            while True:
                try:
                    header = await self._read_header(conn)
                except asyncio.IncompleteReadError:
                    return  # the client closed (at a frame boundary or not)
                except TimeoutError:
                    self.idle_closes += 1
                    return
                await self._frame(conn, header[0], header[1], conn.reader)
        except _ProtocolError as exc:
            self.protocol_errors.append(str(exc))
        except (_Hangup, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # closed on purpose, or the client went away in the middle of a frame or a keepalive
        except asyncio.CancelledError:
            pass  # stop(): ending normally keeps asyncio's client_connected_cb bookkeeping from logging an error
        finally:
            del self._open[conn.number]
            writer.close()

    async def _read_header(self, conn: _Connection) -> bytes:
        if conn.window_size is None and self.client_inactivity_timeout is not None:
            async with asyncio.timeout(self.client_inactivity_timeout):
                return await conn.reader.readexactly(2)
        return await conn.reader.readexactly(2)

    async def _frame(self, conn: _Connection, version: int, kind: int, src: asyncio.StreamReader | _Bytes) -> None:
        if version != VERSION:
            raise _ProtocolError(f"version byte {version:#04x}, not 0x32")
        if kind == FRAME_WINDOW:
            size = U32.unpack(await src.readexactly(4))[0]
            if conn.pending:
                await self._complete(conn)  # as Logstash does with a partial window
            if size == 0:
                await self._ack(conn, 0)
                conn.window_size = None
            else:
                conn.window_size = size
        elif kind == FRAME_JSON:
            seq, length = struct.unpack(">II", await src.readexactly(8))
            payload = await src.readexactly(length)
            self.json_frames += 1
            if conn.window_size is None:
                raise _ProtocolError(f"J frame {seq} outside a window")
            try:
                event = json.loads(payload)
            except ValueError as exc:
                raise _ProtocolError(f"J frame {seq} is not JSON: {exc}") from None
            if not isinstance(event, dict):
                raise _ProtocolError(f"J frame {seq} is not a JSON object")
            conn.pending.append((seq, event))
            if len(conn.pending) == conn.window_size:
                await self._complete(conn)
        elif kind == FRAME_COMPRESSED:
            length = U32.unpack(await src.readexactly(4))[0]
            compressed = await src.readexactly(length)
            self.compressed_frames += 1
            try:
                plain = _Bytes(zlib.decompress(compressed))
            except zlib.error as exc:
                raise _ProtocolError(f"C frame: {exc}") from None
            while plain.remaining:
                try:
                    inner_version, inner_kind = await plain.readexactly(2)
                    await self._frame(conn, inner_version, inner_kind, plain)
                except asyncio.IncompleteReadError:
                    raise _ProtocolError("C frame ends inside a frame") from None
        else:
            raise _ProtocolError(f"unknown frame type {kind:#04x}")

    def _take_mode(self) -> Mode:
        mode = self.mode
        if self._mode_times is not None:
            self._mode_times -= 1
            if self._mode_times <= 0:
                self.mode, self._mode_times = Mode.NORMAL, None
        return mode

    async def _complete(self, conn: _Connection) -> None:
        window, conn.pending, conn.window_size = conn.pending, [], None
        received = [ReceivedEvent(conn.number, seq, event) for seq, event in window]
        highest = max(seq for seq, _ in window)
        self.batches += 1
        self.windows.append(len(window))
        mode = self._take_mode()
        if mode is Mode.NORMAL:
            self.events.extend(received)
            await self._ack(conn, highest)
        elif mode is Mode.DELAYED_ACK:
            await self._keepalives(conn, self.delay_s)
            self.events.extend(received)
            await self._ack(conn, highest)
        elif mode is Mode.PARTIAL_ACK:
            self.events.extend(received)
            steps = max(1, min(self.partial_steps, len(window)))
            seqs = sorted(seq for seq, _ in window)
            for step in range(1, steps + 1):
                await self._ack(conn, seqs[math.ceil(step * len(seqs) / steps) - 1])
        elif mode is Mode.KEEPALIVE_ONLY:
            self.unacked_events.extend(received)
            await self._keepalives(conn, math.inf)
        elif mode is Mode.SILENT:
            self.unacked_events.extend(received)
        elif mode is Mode.CLOSE_BEFORE_ACK:
            self.unacked_events.extend(received)
            raise _Hangup
        elif mode is Mode.ACK_TOO_HIGH:
            self.unacked_events.extend(received)
            await self._ack(conn, highest + 1)
        elif mode is Mode.GARBAGE:
            self.unacked_events.extend(received)
            conn.writer.write(GARBAGE_REPLY)
            await conn.writer.drain()

    async def _keepalives(self, conn: _Connection, duration: float) -> None:
        """Hold the window for ``duration`` seconds, writing ACK 0 whenever ``keepalive_s`` pass without a write."""
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        while (left := end - loop.time()) > 0:
            if left <= self.keepalive_s:
                await asyncio.sleep(left)
                return
            await asyncio.sleep(self.keepalive_s)
            if conn.writer.is_closing():
                raise ConnectionResetError("client gone")
            self.keepalives += 1
            await self._ack(conn, 0)

    async def _ack(self, conn: _Connection, seq: int) -> None:
        self.acks.append((conn.number, seq))
        conn.writer.write(struct.pack(">BBI", VERSION, FRAME_ACK, seq))
        await conn.writer.drain()


class _Bytes:
    """The plaintext of a C frame, read with the same ``readexactly`` as the socket."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    async def readexactly(self, n: int) -> bytes:
        if n > self.remaining:
            raise asyncio.IncompleteReadError(bytes(self._data[self._pos :]), n)
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return chunk
