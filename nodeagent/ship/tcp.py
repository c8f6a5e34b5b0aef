"""
``json_lines`` over TCP (optionally TLS): one JSON document per line, for Logstash's ``tcp`` input with
``codec => json_lines`` and rsyslog's ``imtcp``. Owns the framing (``encode_json_lines``) and one kept connection.

**Not acknowledged.** Neither receiver answers anything, so "sent" here only means the bytes were handed to the
kernel: written is not stored. Bytes the kernel accepted are lost if the receiver goes away before reading them,
and Logstash's ``tcp`` input loses data that way on a pipeline reload (logstash-plugins/logstash-input-tcp#234,
#237). Use the ``beats`` or ``http`` transport where nothing may be lost; this one is for development, tests and
receivers that only speak syslog-style TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
from collections.abc import Callable, Sequence

from nodeagent.ship import TransportError


def encode_json_lines(records: Sequence[bytes]) -> bytes:
    """
    ``records`` as one ``json_lines`` / ndjson body: each record followed by ``b"\\n"``.

    A record must not contain a raw newline: the receiver would cut it into two broken events. The JSON encoder
    the agent uses (``json.dumps``) escapes newlines inside strings, so one here is a bug upstream, not a
    delivery failure, and retrying cannot fix it.

    Raises:
        ValueError: a record contains ``b"\\n"`` (checked before anything is sent).
    """
    for index, record in enumerate(records):
        if b"\n" in record:
            raise ValueError(
                f"record {index} contains a raw newline; json_lines needs one JSON document per line "
                f"(encode with json.dumps, which escapes newlines): {record[:80]!r}"
            )
    return b"".join(record + b"\n" for record in records)


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpTransport:
    """
    ``json_lines`` to one ``host:port``; implements ``nodeagent.ship.Transport`` with ``acknowledged = False``.

    ``send`` writes each record plus ``\\n`` and returns once every byte is in the kernel's socket buffer
    (``drain`` with no user-space buffer left), bounded by ``timeout``: a receiver that stops reading fills the
    socket buffers, ``drain`` waits, and the timeout turns that into a ``TransportError``. The connection is
    opened on the first ``send`` and kept; any error aborts it (a half-written batch is not resumed: the whole
    batch is sent again on a new connection, so the receiver may see a truncated line and then duplicates).
    """

    name = "tcp"
    acknowledged = False

    def __init__(
        self,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 30.0,
        server_hostname: str | None = None,
    ) -> None:
        if not host:
            raise ValueError("tcp transport: host must not be empty")
        if not 0 < port < 65536:
            raise ValueError(f"tcp transport: port {port} is not in 1..65535")
        if timeout <= 0:
            raise ValueError(f"tcp transport: timeout {timeout} must be > 0 seconds")
        if server_hostname is not None and ssl is None:
            raise ValueError("tcp transport: server_hostname is only used with TLS (ssl)")
        self.host = host
        self.port = port
        self.endpoint = format_endpoint(host, port)
        self._ssl = ssl
        self._timeout = timeout
        self._server_hostname = server_hostname
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connection(self) -> asyncio.StreamWriter:
        writer = self._writer
        if writer is not None and self._reader is not None:
            # The receivers never send anything, so end-of-stream means the peer closed (a Logstash pipeline reload,
            # an rsyslog restart). Writing into that half-closed socket would "succeed" and lose the batch; open a
            # new connection instead. This narrows the window; it cannot close it (see the module docstring).
            if not writer.is_closing() and not self._reader.at_eof():
                return writer
            await self._abort()
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=(self._server_hostname or self.host) if self._ssl is not None else None,
                    ssl_handshake_timeout=self._timeout if self._ssl is not None else None,
                )
        except TimeoutError:
            raise TransportError(f"tcp {self.endpoint}: connect timed out after {self._timeout:g}s") from None
        except OSError as exc:  # ssl.SSLError (a failed handshake, a bad certificate) is an OSError
            raise TransportError(f"tcp {self.endpoint}: connect failed: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Without keepalive a peer that vanished (host down, no RST) is only noticed once the send buffer fills.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # drain() returns only when user space holds nothing more: "written" means "in the kernel".
        writer.transport.set_write_buffer_limits(high=0)
        self._reader, self._writer = reader, writer
        return writer

    async def send(self, records: Sequence[bytes], on_progress: Callable[[int], None]) -> None:
        """
        Write ``records`` as ``json_lines``; ``on_progress(len(records))`` once all are in the kernel.

        Raises:
            ValueError: a record contains a raw newline (nothing is sent).
            TransportError: connect failed, the connection broke, or the receiver did not take the bytes within
                ``timeout`` (the connection is aborted; the next ``send`` opens a new one).
        """
        if not records:
            return
        data = encode_json_lines(records)
        writer = await self._connection()
        try:
            writer.write(data)
            async with asyncio.timeout(self._timeout):
                await writer.drain()
        except TimeoutError:
            await self._abort()
            raise TransportError(
                f"tcp {self.endpoint}: receiver did not take {len(data)} bytes within {self._timeout:g}s (not reading)"
            ) from None
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, ssl.SSLError
            await self._abort()
            raise TransportError(f"tcp {self.endpoint}: write failed: {exc or type(exc).__name__}") from exc
        on_progress(len(records))

    async def _abort(self) -> None:
        """Drop the connection and whatever user space still holds for it."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.transport.abort()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def aclose(self) -> None:
        """Close the connection after flushing what is buffered (bounded by ``timeout``); the next ``send`` reopens."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(self._timeout):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()
