"""
The HTTP server with limits: how the agent's aiohttp application is served so that no client can make it hold
unbounded connections, time or memory (keys ``web.*`` of nodeagent.config; values and why: docs/web-limits.md).

``make_runner`` builds the ``AppRunner`` with aiohttp's own limits (request line, header fields, keep-alive) and a
middleware that refuses request bodies; ``LimitedSite`` listens and serves at most ``web.max_connections``
connections at a time (the others wait in the kernel's listen backlog), bounds the TLS handshake, and runs each
connection with ``LimitedRequestHandler``, which adds what aiohttp lacks: a header-read timeout (slowloris), a
write timeout (a client that does not read its response), and 414/431 for oversized request lines and headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
import struct
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server
from yarl import URL

from nodeagent.config import WebConfig

# After a response, an unread request body (a small one that was let through, or the rest of a refused one) is
# read and thrown away for at most this long before the connection closes: closing a socket with unread data makes
# the kernel send a reset, which can destroy the response before the client has read it (RFC 9112, 9.6).
LINGER_SECONDS = 1.0

# A response body larger than SLICED_ABOVE_BYTES is written in slices of SLICE_BYTES, each once the transport's
# buffer (whose high-water mark SLICE_BYTES is too) has drained: that bounds what a client that does not read can
# make the agent hold (see SlicedBodyResponse). A smaller body goes out in one write, which is faster.
SLICE_BYTES = 16 * 1024
SLICED_ABOVE_BYTES = 64 * 1024

# File descriptors kept for everything but client connections (/proc and /sys reads, runtime sockets, the spool).
FD_RESERVE = 256

# How often at most the same warning about accepting is logged.
WARN_INTERVAL_SECONDS = 60.0

# Sent when a client that has started a request does not finish its header in time (RFC 9110 408).
_TIMEOUT_TEXT = b"408 Request Timeout: the request header took too long to arrive.\n"
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_TEXT), _TIMEOUT_TEXT)
)


def _reset(transport: asyncio.Transport) -> None:
    """Drop the connection with a TCP reset: a plain close would leave what the client has not taken queued in the
    kernel until it does (or for minutes), the socket unclosed for the client."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def handler_options(limits: WebConfig) -> dict[str, Any]:
    """aiohttp ``RequestHandler`` keyword arguments for ``limits`` (no access log: scrapes would flood it)."""
    return {
        "access_log": None,
        "keepalive_timeout": limits.keepalive_timeout,
        # aiohttp checks this against the request target (all of the request line but method and version).
        "max_line_size": limits.max_request_line_bytes,
        "max_field_size": limits.max_header_field_bytes,
        "max_headers": limits.max_headers,
        "lingering_time": LINGER_SECONDS,
    }


def _refusal(status: HTTPStatus, reason: str) -> web.Response:
    response = web.Response(status=status, text=f"{status.value} {status.phrase}: {reason}\n")
    response.force_close()
    return response


class SlicedBodyResponse(web.StreamResponse):
    """
    A response whose body (bytes that every scrape of a cycle shares) is written in slices of ``SLICE_BYTES``, each
    once the transport's buffer has drained below its low-water mark. aiohttp writes a ``Response`` body at once,
    and the transport copies what the socket does not take: a client that reads slowly would hold a copy of the
    whole body (several MiB on a node with many containers) for up to ``web.write_timeout``; this way it holds
    about two slices.
    """

    def __init__(self, body: bytes, *, status: int, reason: str, headers: Mapping[str, str]) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        self.content_length = len(body)
        self._sliced_body = body
        self._writer: AbstractStreamWriter | None = None

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        """Send the status and headers; keep the writer to wait on between slices."""
        self._writer = await super().prepare(request)
        return self._writer

    async def write_eof(self, data: bytes = b"") -> None:
        """Write the body slice by slice, each after the transport has drained, then end the response."""
        view = memoryview(self._sliced_body)
        for start in range(0, len(view), SLICE_BYTES):
            await self.write(view[start : start + SLICE_BYTES])
            if self._writer is not None:
                await self._writer.drain()
        await super().write_eof(data)


def request_limits(max_body_bytes: int) -> Middleware:
    """A middleware that refuses a request body larger than ``max_body_bytes`` (413) or of unknown length (411)
    from its header alone, before any of it is read (no endpoint reads a body), and sends a large response body
    through ``SlicedBodyResponse``."""

    @web.middleware
    async def limit_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            if request.content_length is None:
                return _refusal(HTTPStatus.LENGTH_REQUIRED, "a request body needs a Content-Length")
            if request.content_length > max_body_bytes:
                return _refusal(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the request body is larger than web.max_request_body_bytes ({max_body_bytes} bytes)",
                )
        response = await handler(request)
        body = response.body if isinstance(response, web.Response) else None
        if (
            isinstance(body, bytes)
            and len(body) > SLICED_ABOVE_BYTES
            and request.method != "HEAD"
            and not response.compression
            and not response.chunked
        ):
            return SlicedBodyResponse(body, status=response.status, reason=response.reason, headers=response.headers)
        return response

    return limit_requests


def make_runner(app: web.Application, limits: WebConfig, *, shutdown_timeout: float = 5.0) -> web.AppRunner:
    """The runner for ``app`` with the request limits of ``limits``; puts the ``request_limits`` middleware first in
    ``app`` (so nothing else runs for a refused body). Serve it with ``LimitedSite`` after ``setup()``."""
    app.middlewares.insert(0, request_limits(limits.max_request_body_bytes))
    return web.AppRunner(app, shutdown_timeout=shutdown_timeout, **handler_options(limits))


class LimitedRequestHandler(RequestHandler):
    """
    aiohttp's protocol for one connection, with limits aiohttp does not have:

    - header-read timeout: from the connection's start (after TLS), or from the first byte of a later request, its
      header must be complete within ``web.header_read_timeout``; otherwise 408 and close. (aiohttp's keep-alive
      timer also ends a connection whose header is incomplete, but only after ``keepalive_timeout``, which is long
      so that idle scrapers keep their connection);
    - write timeout: a response must be taken within ``web.write_timeout``, or the connection is reset (a client
      that stops reading would otherwise pin the unsent rest of the response in memory);
    - an oversized request line is answered 414 and an oversized or too many header fields 431 instead of a bare
      400, with a text naming the key, never echoing the request (which may carry credentials).

    ``on_close`` is called once the connection is gone (it frees the connection's slot). Two attributes of aiohttp's
    handler are read, ``_request_count`` (requests parsed) and ``_messages`` (parsed requests and their bodies, not
    yet handled); tests/integration/test_load.py pins the behaviour built on them.
    """

    __slots__ = (
        "_answered",
        "_body",
        "_header_timer",
        "_limits",
        "_line_bytes",
        "_line_done",
        "_log",
        "_long_line",
        "_on_close",
        "_request_started",
    )

    def __init__(
        self,
        manager: Server,
        *,
        loop: asyncio.AbstractEventLoop,
        limits: WebConfig,
        on_close: Callable[[], None],
        log: structlog.typing.FilteringBoundLogger,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._limits = limits
        self._on_close = on_close
        self._log = log
        self._header_timer: asyncio.TimerHandle | None = None
        # Responses finished; aiohttp's _request_count counts requests parsed. Equal: no response is being written.
        self._answered = 0
        self._request_started = False  # bytes of a request whose header is not complete yet have arrived
        # The body of the last request parsed (aiohttp's reader of it): bytes that continue it start no new request.
        self._body: StreamReader | None = None
        # The current request's first line: bytes seen so far, and whether its LF has come; and whether the last
        # request parsed (until its response is sent) had a line over the limit: 414, where a header is 431.
        self._line_bytes = 0
        self._line_done = False
        self._long_line = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start serving, and start the first request's header-read timer."""
        super().connection_made(transport)
        if isinstance(transport, asyncio.WriteTransport):
            transport.set_write_buffer_limits(high=SLICE_BYTES)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Stop the timer and free the connection's slot."""
        self._cancel_header_timer()
        super().connection_lost(exc)
        self._on_close()

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does; a complete request header stops the header-read timer, and the first bytes of the
        next one start it again (not those of a request body)."""
        in_body = self._body is not None and not self._body.is_eof()
        if not in_body:
            self._measure_request_line(data)
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._body = self._messages[-1][1]
            self._cancel_header_timer()
            self._long_line = self._line_bytes > self._limits.max_request_line_bytes
            self._request_started = False
            self._line_bytes = 0
            self._line_done = False
        elif data and not in_body:
            self._request_started = True
            if self._header_timer is None and self.transport is not None:
                self._arm_header_timer()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Send the response within ``web.write_timeout``, or close the connection."""
        try:
            async with asyncio.timeout(self._limits.write_timeout):
                result = await super().finish_response(request, resp, start_time)
        except TimeoutError:
            self._log.debug("web.write_timeout", peer=str(self.peername), timeout=self._limits.write_timeout)
            if self.transport is not None:
                _reset(self.transport)
            self.force_close()
            return resp, True
        self._answered += 1
        self._long_line = False
        return result

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A malformed or oversized request: the precise 4xx and a text naming the limit (not aiohttp's text, which
        quotes the request, nor its error log with a traceback per bad request)."""
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        limits = self._limits
        if isinstance(exc, LineTooLong) and self._long_line:
            response = _refusal(
                HTTPStatus.REQUEST_URI_TOO_LONG,
                f"the request line is longer than web.max_request_line_bytes ({limits.max_request_line_bytes} bytes)",
            )
        elif isinstance(exc, LineTooLong):
            response = _refusal(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"a header field is longer than web.max_header_field_bytes ({limits.max_header_field_bytes} bytes)",
            )
        elif "too many headers" in exc.message.lower():
            response = _refusal(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"more header fields than web.max_headers ({limits.max_headers})",
            )
        else:
            response = _refusal(HTTPStatus.BAD_REQUEST, "malformed HTTP request")
        self._log.debug("web.request_refused", peer=str(self.peername), status=response.status)
        return response

    def _measure_request_line(self, data: bytes) -> None:
        if not self._line_done:
            newline = data.find(b"\n")
            self._line_bytes += len(data) if newline < 0 else newline
            self._line_done = newline >= 0

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._limits.header_read_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport is None:
            return
        self._log.debug("web.header_read_timeout", peer=str(self.peername), timeout=self._limits.header_read_timeout)
        # Answer only between responses, never into the middle of one.
        if self._request_started and self._request_count == self._answered:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.force_close()


class _Slot:
    """One connection's place under ``web.max_connections``; released once, whichever way the connection ends."""

    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore

    def release(self) -> None:
        """Free the place (again: no effect)."""
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None


ProtocolFactory = Callable[[Callable[[], None]], asyncio.Protocol]


class ConnectionLimitedServer(asyncio.AbstractServer):
    """
    Accepts connections on ``listeners`` only while fewer than ``max_connections`` are open (TLS handshakes in
    progress included); at the cap it stops calling ``accept``, so new connections wait in the kernel's listen
    backlog and are served as others close, costing no memory here. ``protocol_factory(release)`` makes the
    protocol of one connection, which must call ``release`` when the connection is lost. With ``ssl_context``, the
    TLS opening and closing handshakes each get ``tls_timeout`` seconds.
    """

    def __init__(
        self,
        listeners: list[socket.socket],
        protocol_factory: ProtocolFactory,
        max_connections: int,
        ssl_context: ssl.SSLContext | None,
        tls_timeout: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._listeners = listeners
        self._factory = protocol_factory
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._ssl_context = ssl_context
        self._tls_timeout = tls_timeout
        self._log = log
        self._warned_at: dict[str, float] = {}
        self._opening: set[asyncio.Task[None]] = set()  # accepted connections being set up (TLS handshakes)
        self._accepting = [self._loop.create_task(self._accept(listener)) for listener in listeners]
        self._closed = False

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (none once closed)."""
        return () if self._closed else tuple(self._listeners)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """Whether it still accepts connections."""
        return not self._closed

    async def start_serving(self) -> None:
        """Nothing to do: it serves from its creation."""

    async def serve_forever(self) -> None:
        """Wait until closed."""
        await asyncio.gather(*self._accepting, return_exceptions=True)

    def close(self) -> None:
        """Stop accepting and abandon handshakes in progress; open connections stay (aiohttp's runner shuts them
        down)."""
        if self._closed:
            return
        self._closed = True
        for task in (*self._accepting, *self._opening):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the listening sockets are closed and no connection is being set up."""
        await asyncio.gather(*self._accepting, *self._opening, return_exceptions=True)

    def _warn(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(event, -WARN_INTERVAL_SECONDS) >= WARN_INTERVAL_SECONDS:
            self._warned_at[event] = now
            self._log.warning(event, **fields)

    async def _accept(self, listener: socket.socket) -> None:
        try:
            while True:
                if self._slots.locked():
                    self._warn(
                        "web.connection_limit_reached",
                        max_connections=self._max_connections,
                        detail="new connections wait in the listen backlog until one closes (key web.max_connections)",
                    )
                await self._slots.acquire()
                slot = _Slot(self._slots)
                try:
                    conn, _ = await self._loop.sock_accept(listener)
                except ConnectionError:  # the client gave up while queued
                    slot.release()
                    continue
                except OSError as exc:  # out of file descriptors or memory: let connections close, then retry
                    slot.release()
                    self._warn("web.accept_failed", error={"message": str(exc)}, retry_seconds=1.0)
                    await asyncio.sleep(1.0)
                    continue
                except BaseException:
                    slot.release()
                    raise
                task = self._loop.create_task(self._open(conn, slot))
                self._opening.add(task)
                task.add_done_callback(self._opening.discard)
        finally:
            listener.close()

    async def _open(self, conn: socket.socket, slot: _Slot) -> None:
        tls = self._ssl_context
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._factory(slot.release),
                conn,
                ssl=tls,
                ssl_handshake_timeout=self._tls_timeout if tls is not None else None,
                ssl_shutdown_timeout=self._tls_timeout if tls is not None else None,
            )
        except OSError as exc:  # a failed or timed-out TLS handshake (ssl.SSLError is an OSError), a reset
            slot.release()
            self._log.debug("web.connection_setup_failed", error={"message": str(exc)})
        except BaseException:
            slot.release()
            raise


async def bind_listeners(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (None: every address of both families, as ``loop.create_server``) and
    ``port``, with ``SO_REUSEADDR``, IPv6 sockets IPv6-only; an ``OSError`` (errno kept) if one cannot bind."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def ensure_file_limit(max_connections: int, log: structlog.typing.FilteringBoundLogger) -> None:
    """Raise the soft limit of open files to the hard one, as Go programs do at start, so that ``max_connections``
    connections fit beside the agent's other descriptors; warn, naming the key, if even the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < need:
        log.warning(
            "web.file_limit_low",
            limit=soft,
            needed=need,
            detail="the open-file limit (RLIMIT_NOFILE) is below web.max_connections plus a reserve; raise "
            "LimitNOFILE or lower web.max_connections",
        )


class LimitedSite(web.BaseSite):
    """
    Serves ``runner`` (from ``make_runner``, set up) on ``host``:``port`` with the connection limits of ``limits``:
    at most ``web.max_connections`` connections (a listen backlog as long), the TLS handshake bounded by
    ``web.tls_handshake_timeout``, each connection a ``LimitedRequestHandler``. Used like ``web.TCPSite``:
    ``await site.start()``; ``runner.cleanup()`` stops it.
    """

    __slots__ = ("_host", "_limits", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        limits: WebConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=limits.max_connections)
        self._host = host
        self._port = port
        self._limits = limits

    @property
    def name(self) -> str:
        """The site's URL."""
        scheme = "https" if self._ssl_context is not None else "http"
        return str(URL.build(scheme=scheme, host=self._host or "0.0.0.0", port=self._port))

    async def start(self) -> None:
        """Bind and start accepting; an ``OSError`` (e.g. ``EADDRINUSE``) if the address cannot be bound."""
        await super().start()
        manager = self._runner.server
        assert manager is not None, "runner.setup() comes first"
        limits = self._limits
        log = structlog.get_logger()
        ensure_file_limit(limits.max_connections, log)
        listeners = await bind_listeners(self._host, self._port, self._backlog)
        options = handler_options(limits)

        def protocol(release: Callable[[], None]) -> LimitedRequestHandler:
            return LimitedRequestHandler(
                manager, loop=asyncio.get_running_loop(), limits=limits, on_close=release, log=log, **options
            )

        self._server = ConnectionLimitedServer(
            listeners, protocol, limits.max_connections, self._ssl_context, limits.tls_handshake_timeout, log
        )
