"""
The Beats transport: Lumberjack protocol v2 to Logstash's ``beats`` input (or anything speaking it).

One ``send`` is one window: ``W n``, then the records as J frames numbered 1..n (inside one zlib ``C`` frame
unless compression is off), then ACK frames until the ACK of ``n``. The framing and the ACK rules are those of
elastic/go-lumber ``client/v2`` (what Filebeat uses) and logstash-input-beats ``PROTOCOL.md``. Choosing the
window size, backoff and retries are the shipper's job.
"""

from __future__ import annotations

import asyncio
import os
import ssl as ssl_module
import struct
import zlib
from collections.abc import Callable, Sequence

from nodeagent.ship import TransportError

VERSION = 0x32  # b"2"
FRAME_WINDOW = 0x57  # b"W"
FRAME_JSON = 0x4A  # b"J"
FRAME_COMPRESSED = 0x43  # b"C"
FRAME_ACK = 0x41  # b"A"

_WINDOW = struct.Struct(">BBI")  # version, type, window size
_JSON_HEADER = struct.Struct(">BBII")  # version, type, sequence, length (the JSON follows)
_COMPRESSED_HEADER = struct.Struct(">BBI")  # version, type, length (the zlib stream follows)
_ACK = struct.Struct(">BBI")  # version, type, sequence
ACK_SIZE = _ACK.size

# zlib level 3 runs at about 75 MB/s on log-like JSON and 35 MB/s on random text, so compressing a 5 MB window on
# the event loop stalls every other task for 70 to 140 ms; in a worker thread (zlib releases the GIL) the loop
# stalls under 5 ms. Below this size the thread hop is not worth it: at most about 2 ms on the loop.
COMPRESS_IN_THREAD_BYTES = 64 * 1024
# Bytes handed to the socket between drain()s: the transport's buffer stays near this size whatever the window.
WRITE_CHUNK_BYTES = 64 * 1024
# An orderly TLS close waits for the peer's close_notify; do not let aclose() hang on a dead peer.
CLOSE_TIMEOUT_S = 5.0
MAX_UINT32 = 0xFFFFFFFF


def encode_window(count: int) -> bytes:
    """The ``W`` frame announcing ``count`` data frames."""
    return _WINDOW.pack(VERSION, FRAME_WINDOW, count)


def encode_json_frames(records: Sequence[bytes]) -> list[bytes]:
    """J frames for ``records`` numbered 1..n, as header and record pieces to join or write in turn."""
    parts: list[bytes] = []
    for seq, record in enumerate(records, 1):
        parts.append(_JSON_HEADER.pack(VERSION, FRAME_JSON, seq, len(record)))
        parts.append(record)
    return parts


def encode_compressed(records: Sequence[bytes], level: int) -> tuple[bytes, bytes]:
    """One ``C`` frame holding the J frames of ``records`` (numbered 1..n), as (header, zlib stream)."""
    body = zlib.compress(b"".join(encode_json_frames(records)), level)
    if len(body) > MAX_UINT32:
        raise ValueError(f"compressed window of {len(body)} bytes does not fit a Lumberjack frame")
    return _COMPRESSED_HEADER.pack(VERSION, FRAME_COMPRESSED, len(body)), body


def decode_ack(frame: bytes) -> int:
    """The sequence of a 6-byte ACK frame; ``TransportError`` for anything else."""
    if len(frame) != ACK_SIZE:
        raise TransportError(f"protocol error: expected a {ACK_SIZE}-byte ACK frame, got {len(frame)} bytes")
    version, kind, seq = _ACK.unpack(frame)
    if version != VERSION or kind != FRAME_ACK:
        raise TransportError(f"protocol error: expected an ACK frame, got bytes {frame.hex()}")
    return int(seq)


class _StaleConnection(Exception):
    """A kept connection turned out closed before anything of the batch was acknowledged (not even ACK 0)."""


class BeatsTransport:
    """
    Lumberjack v2 client to one Logstash ``beats`` input.

    The connection is opened by the first ``send`` and kept; one that the server closed while idle (Logstash's
    ``client_inactivity_timeout``, a restart) is replaced once, transparently, by resending the whole window,
    which is safe because nothing of it was acknowledged. Every other failure closes the connection and raises
    ``TransportError``; the next ``send`` reconnects.

    ``timeout`` bounds connecting, the TLS handshake, each write and the wait for each ACK frame; an ``ACK 0``
    keepalive (Logstash sends one every 5 s while its queue blocks) restarts the wait, so a busy Logstash is
    waited for as long as it keeps sending them, as Filebeat does. ``progress_timeout``, when set, also gives up
    after that long without an ACK that moves forward, keepalives or not (a stuck pipeline, elastic/logstash#16657).
    """

    name = "beats"
    acknowledged = True

    def __init__(
        self,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 30.0,
        compression_level: int = 3,
        server_hostname: str | None = None,
        *,
        progress_timeout: float | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"beats port {port!r} is not a TCP port (1..65535)")
        if not timeout > 0:
            raise ValueError(f"beats timeout {timeout!r} must be a positive number of seconds")
        if not 0 <= compression_level <= 9:
            raise ValueError(f"beats compression_level {compression_level!r} must be 0 (off) to 9")
        if progress_timeout is not None and not progress_timeout > 0:
            raise ValueError(f"beats progress_timeout {progress_timeout!r} must be positive seconds or None")
        if server_hostname is not None and ssl is None:
            raise ValueError("beats server_hostname is only used with TLS (ssl)")
        self.host = host
        self.port = port
        self.endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._ssl = ssl
        self._timeout = timeout
        self._compression_level = compression_level
        self._server_hostname = server_hostname
        self._progress_timeout = progress_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()  # one window in flight per connection
        self.connects = 0  # connections opened
        self.resends = 0  # windows sent again on a new connection because the kept one turned out closed
        self._acloses = 0  # tells a send that its connection went away through aclose()

    # --- Transport -----------------------------------------------------------------------------------------

    async def send(self, records: Sequence[bytes], on_progress: Callable[[int], None]) -> None:
        if not records:
            return  # nothing to acknowledge; Logstash would answer W 0 with ACK 0
        if len(records) > MAX_UINT32:
            raise ValueError(f"a window of {len(records)} records does not fit a Lumberjack frame")
        compressed: tuple[bytes, bytes] | None = None
        if self._compression_level > 0:
            if sum(len(r) for r in records) >= COMPRESS_IN_THREAD_BYTES:
                compressed = await asyncio.to_thread(encode_compressed, records, self._compression_level)
            else:
                compressed = encode_compressed(records, self._compression_level)
        async with self._lock:
            acloses = self._acloses
            try:
                reused = self._is_open()
                if not reused:
                    self._drop()
                    await self._connect()
                try:
                    await self._exchange(records, compressed, on_progress, reused=reused)
                except _StaleConnection:
                    if self._acloses != acloses:
                        raise TransportError("closed under the send") from None
                    self._drop()
                    await self._connect()
                    self.resends += 1
                    await self._exchange(records, compressed, on_progress, reused=False)
            except TransportError as exc:
                self._drop()
                if self._acloses != acloses:
                    raise TransportError(f"connection to {self.endpoint} closed by aclose()") from exc
                raise
            except BaseException:
                # Cancellation, an exception from on_progress: the connection is somewhere in the middle of a
                # window and cannot carry another one.
                self._drop()
                raise

    async def aclose(self) -> None:
        # Not behind the lock: closing under a send that waits for ACKs makes that send fail now, not after it.
        self._acloses += 1
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(min(self._timeout, CLOSE_TIMEOUT_S)):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()

    # --- connection ----------------------------------------------------------------------------------------

    def _is_open(self) -> bool:
        """Whether the kept connection looks usable: no EOF from the server seen while idle, not closing."""
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            return False
        return not (writer.is_closing() or reader.at_eof() or reader.exception() is not None)

    def _drop(self) -> None:
        """Forget the connection at once (no TLS close_notify, nothing awaited)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                if self._ssl is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                else:
                    reader, writer = await asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=self._ssl,
                        server_hostname=self._server_hostname,
                        ssl_handshake_timeout=self._timeout,
                    )
        except TimeoutError:
            raise TransportError(f"connect to {self.endpoint}: no connection in {self._timeout:g}s") from None
        except OSError as exc:  # refused, unreachable, ssl.SSLError (certificate not trusted, ...)
            # asyncio words a refused connect "Connect call failed (addr)"; the errno's own text says what happened.
            plain = exc.errno is not None and not isinstance(exc, ssl_module.SSLError)
            reason = os.strerror(exc.errno) if plain and exc.errno is not None else str(exc)
            raise TransportError(f"connect to {self.endpoint}: {reason}") from exc
        self._reader, self._writer = reader, writer
        self.connects += 1

    # --- one window ----------------------------------------------------------------------------------------

    async def _exchange(
        self,
        records: Sequence[bytes],
        compressed: tuple[bytes, bytes] | None,
        on_progress: Callable[[int], None],
        *,
        reused: bool,
    ) -> None:
        assert self._reader is not None and self._writer is not None
        try:
            await self._write_window(self._writer, records, compressed)
        except (ConnectionError, OSError) as exc:
            if reused:
                raise _StaleConnection from exc
            raise TransportError(f"send to {self.endpoint}: {str(exc) or type(exc).__name__}") from exc
        await self._await_acks(self._reader, len(records), on_progress, reused=reused)

    async def _write_window(
        self, writer: asyncio.StreamWriter, records: Sequence[bytes], compressed: tuple[bytes, bytes] | None
    ) -> None:
        window = encode_window(len(records))
        if compressed is None:
            chunk = [window]
            size = len(window)
            for seq, record in enumerate(records, 1):
                chunk.append(_JSON_HEADER.pack(VERSION, FRAME_JSON, seq, len(record)))
                chunk.append(record)
                size += _JSON_HEADER.size + len(record)
                if size >= WRITE_CHUNK_BYTES:
                    await self._write(writer, b"".join(chunk))
                    chunk.clear()
                    size = 0
            if chunk:
                await self._write(writer, b"".join(chunk))
            return
        header, body = compressed
        view = memoryview(body)
        first = min(len(body), WRITE_CHUNK_BYTES)
        await self._write(writer, window + header + view[:first])
        for start in range(first, len(body), WRITE_CHUNK_BYTES):
            await self._write(writer, view[start : start + WRITE_CHUNK_BYTES])

    async def _write(self, writer: asyncio.StreamWriter, data: bytes | memoryview) -> None:
        writer.write(data)
        try:
            async with asyncio.timeout(self._timeout):
                await writer.drain()
        except TimeoutError:
            raise TransportError(f"send to {self.endpoint}: the server read nothing for {self._timeout:g}s") from None

    async def _await_acks(
        self, reader: asyncio.StreamReader, count: int, on_progress: Callable[[int], None], *, reused: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        acked = 0
        keepalives = 0
        first = True
        progress_timeout = self._progress_timeout
        progress_deadline = None if progress_timeout is None else loop.time() + progress_timeout
        while acked < count:
            wait = self._timeout
            if progress_deadline is not None:
                wait = min(wait, progress_deadline - loop.time())
            try:
                async with asyncio.timeout(wait):
                    frame = await reader.readexactly(ACK_SIZE)
            except TimeoutError:
                if progress_deadline is not None and loop.time() >= progress_deadline:
                    raise TransportError(
                        f"no ACK progress from {self.endpoint} in {progress_timeout:g}s "
                        f"({acked}/{count} acknowledged, {keepalives} keepalives)"
                    ) from None
                raise TransportError(
                    f"no ACK from {self.endpoint} in {self._timeout:g}s ({acked}/{count} acknowledged)"
                ) from None
            except asyncio.IncompleteReadError as exc:
                if first and reused and not exc.partial:
                    raise _StaleConnection from exc
                raise TransportError(
                    f"connection closed by {self.endpoint} before the ACK ({acked}/{count} acknowledged)"
                ) from exc
            except (ConnectionError, OSError) as exc:
                if first and reused:
                    raise _StaleConnection from exc
                raise TransportError(
                    f"receive from {self.endpoint}: {str(exc) or type(exc).__name__} ({acked}/{count} acknowledged)"
                ) from exc
            first = False
            seq = decode_ack(frame)
            if seq == 0:
                keepalives += 1
                continue  # keepalive: the server is still working on the window; the wait starts over
            if seq > count:
                raise TransportError(f"protocol error: ACK {seq} from {self.endpoint} for a window of {count}")
            if seq < acked:
                raise TransportError(f"protocol error: ACK {seq} from {self.endpoint} after ACK {acked}")
            if seq > acked:
                acked = seq
                on_progress(acked)
                if progress_timeout is not None:
                    progress_deadline = loop.time() + progress_timeout
