"""A test double of Logstash's ``http`` input (logstash-plugins/logstash-input-http), served by aiohttp on 127.0.0.1.

No Logstash runs here (it is not packaged for Debian nor on PyPI). The double follows the input's public behaviour
as its source and documentation describe it (``lib/logstash/inputs/http.rb``, ``src/main/java/org/logstash/plugins/
inputs/http/{MessageProcessor,HttpServerHandler,HttpInitializer}.java``, ``.../util/RejectWhenBlockedInboundHandler
.java``, ``docs/index.asciidoc``), configured as nodeagent asks: ``ecs_compatibility => v8`` and ``additional_codecs
=> {"application/json" => "json", "application/x-ndjson" => "json_lines"}``:

* Any method, any path. The codec is chosen by the media type of ``Content-Type`` (parameters dropped, as
  ``HttpUtil.getMimeType``): ``application/json`` -> ``json`` (an object is one event, an array one event per
  element); ``application/x-ndjson`` -> ``json_lines`` (one event per line, blank lines skipped, a missing final
  newline still decoded by ``flush``); anything else -> ``plain`` (one event, the body in ``message``). JSON that
  does not parse, or is neither an object nor an array of objects, becomes an event ``{"message": <text>, "tags":
  ["_jsonparsefailure"]}``, as the json codecs do; that is still a 200.
* The body is decoded with the ``charset`` of ``Content-Type`` (default UTF-8), bad bytes replaced.
* ``Content-Encoding: gzip`` / ``deflate`` bodies are inflated (``HttpContentDecompressor``); a body that does not
  inflate gets 400 with the error as text. A body over ``max_content_length`` gets 413.
* With ``user``/``password``: no ``Authorization`` header -> 401 with ``WWW-Authenticate: Basic realm="Logstash HTTP
  Input"``; a wrong one -> 401 without it.
* Each decoded event gets the ECS fields ``push_decoded_event`` adds (``[http][version]``, ``[user_agent][original]``,
  ``[url][domain]``, ``[url][port]``, ``[http][method]``, ``[url][path]``, ``[http][request][body][bytes]``,
  ``[http][request][mime_type]``, the headers under ``[@metadata][input][http][request][headers]``, the peer
  address in ``[host][ip]``), then is queued. Setting a nested field under a value that is not an object (a
  document with ``"host": "node1"``) fails like Logstash's ``event.set``: the request gets 500 and the events of
  the body decoded before it stay queued.
* All events queued -> ``response_code`` (200) with body ``ok``, ``Content-Type: text/plain``.

What it fakes, to script failures a test needs:

* ``statuses``: a queue of statuses consumed one per request. 429 answers at once with an empty body, queues
  nothing and closes the connection (``RejectWhenBlockedInboundHandler`` closes unless the request said
  ``Expect: 100-continue``). 500 decodes the body and, if ``queue_before_500``, queues the first half of its events
  before answering 500 (the partial queueing of a mid-body decode error). Any other status (a proxy's 404, 502, 503)
  answers with that status and queues nothing.
* ``delay_s``: every request that gets past the script waits that long before its events are queued and answered,
  like a request blocked on a full Logstash queue. The wait is not cancelled when the client gives up: "Sent events
  will still be processed in this case" (``docs/index.asciidoc``), so a client timeout can still queue the batch.

TLS is served when an ``ssl_context`` is given (``ssl_enabled``, no client authentication). Not emulated: the
``threads``/``max_pending_requests`` executor (429 only comes from ``statuses``), ECS ``disabled`` mode, ``decorate``
(``type``, ``tags``, ``add_field``), ``@timestamp`` parsing. ``@timestamp`` (now) and ``@version`` (``"1"``) are only
added when absent.

``events`` holds the queued events as Logstash would build them; ``documents`` holds, in the same order, what the
codec decoded before any field was added (what the client sent); ``requests`` records every request.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import socket
import ssl
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web

JSON_CODECS = {"application/json": "json", "application/x-ndjson": "json_lines"}
DEFAULT_MAX_CONTENT_LENGTH = 100 * 1024 * 1024


class _FieldSetError(Exception):
    """``event.set`` on a path through a value that is not an object."""


@dataclass
class ReceivedRequest:
    """One request as the double saw it."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes  # as it came over the wire (compressed, if it was)
    body: bytes  # inflated
    status: int  # what the double answered
    queued: int  # events queued for it (also when the answer was not 2xx)
    peer: tuple[str, int]  # the client's address and port: one port per connection


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_failure(text: str) -> dict[str, Any]:
    return {"message": text, "tags": ["_jsonparsefailure"]}


def _events_from_json(text: str) -> list[dict[str, Any]]:
    """``LogStash::Event.from_json`` as the json codecs call it: blank -> none, object -> one, array -> each."""
    if not text.strip():
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        return [_parse_failure(text)]
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list) and all(isinstance(item, dict) for item in doc):
        return list(doc)
    return [_parse_failure(text)]


def decode(mime_type: str, text: str) -> list[dict[str, Any]]:
    """The events the codec for ``mime_type`` makes of ``text`` (json, json_lines or plain)."""
    codec = JSON_CODECS.get(mime_type, "plain")
    if codec == "json":
        return _events_from_json(text)
    if codec == "json_lines":
        events: list[dict[str, Any]] = []
        for line in text.split("\n"):  # the last piece, without a newline, is what flush decodes
            events.extend(_events_from_json(line))
        return events
    return [{"message": text}]


def _set(event: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = event
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise _FieldSetError(
                f"Could not set field '{path[-1]}' on object '{child}' to value '{value}'. This is probably due to "
                f"trying to set a field like [foo][bar] = someValue when [foo] is not either a map or a string"
            )
        node = child
    node[path[-1]] = value


def _domain_port(http_host: str) -> tuple[str, int | None]:
    """``get_domain_port``: ``host:port`` or ``[v6]:port``."""
    if http_host.startswith("[") and "]:" in http_host:
        domain, _, port = http_host[1:].partition("]:")
        if port.isdigit():
            return domain, int(port)
    domain, sep, port = http_host.rpartition(":")
    if sep and ":" not in domain and port.isdigit():
        return domain, int(port)
    return http_host, None


class LogstashHttpInputDouble:
    """The ``http`` input on ``127.0.0.1:<port>`` (a free port unless one is given); an async context manager."""

    def __init__(
        self,
        *,
        port: int = 0,
        user: str | None = None,
        password: str | None = None,
        response_code: int = 200,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.ssl_context = ssl_context
        self.user = user
        self.password = password
        self.response_code = response_code
        self.max_content_length = max_content_length
        self.statuses: deque[int] = deque()
        self.delay_s = 0.0
        self.queue_before_500 = True
        self.events: list[dict[str, Any]] = []
        self.documents: list[dict[str, Any]] = []
        self.requests: list[ReceivedRequest] = []
        self._runner: web.AppRunner | None = None
        self._processing: set[asyncio.Task[web.Response]] = set()

    @property
    def url(self) -> str:
        """Base URL (any path is accepted)."""
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def script(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, in order (then normally)."""
        self.statuses.extend(statuses)

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def serve(self) -> LogstashHttpInputDouble:
        """Listen on 127.0.0.1."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application(client_max_size=self.max_content_length)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress off: the double inflates (and rejects bad compression) itself, as HttpContentDecompressor.
        runner = web.AppRunner(
            app, shutdown_timeout=1.0, access_log=None, handler_cancellation=True, auto_decompress=False
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(runner, sock, ssl_context=self.ssl_context).start()
        self._runner = runner
        return self

    async def shutdown(self) -> None:
        """Let requests still being processed finish (they were accepted), then stop listening."""
        if self._processing:
            await asyncio.wait(self._processing, timeout=self.delay_s + 5.0)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> LogstashHttpInputDouble:
        return await self.serve()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def wait_idle(self) -> None:
        """Wait until no accepted request is still being processed (a slow request the client gave up on)."""
        if self._processing:
            await asyncio.wait(self._processing)

    # --- the input ----------------------------------------------------------------------------------------

    def _auth_failure(self, request: web.Request) -> web.Response | None:
        if self.user is None or self.password is None:
            return None
        token = request.headers.get("Authorization")
        if token is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="Logstash HTTP Input"'})
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return None if token == expected else web.Response(status=401)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = (str(peername[0]), int(peername[1])) if peername else ("", 0)
        record = ReceivedRequest(request.method, request.path_qs, dict(request.headers), raw, b"", 0, 0, peer)
        self.requests.append(record)
        response = await self._respond(request, raw, record)
        record.status = response.status
        return response

    async def _respond(self, request: web.Request, raw: bytes, record: ReceivedRequest) -> web.Response:
        scripted = self.statuses.popleft() if self.statuses else None
        if scripted == 429:
            response = web.Response(status=429)
            if request.headers.get("Expect", "").lower() != "100-continue":
                response.force_close()
            return response
        if scripted is not None and scripted != 500:
            return web.Response(status=scripted)
        if len(raw) > self.max_content_length:
            return web.Response(status=413)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        try:
            if encoding in ("gzip", "x-gzip"):
                body = zlib.decompress(raw, 16 + zlib.MAX_WBITS)
            elif encoding in ("deflate", "x-deflate"):
                body = zlib.decompress(raw)
            else:
                body = raw
        except zlib.error as exc:
            return web.Response(status=400, text=str(exc), content_type="text/plain")
        record.body = body
        denied = self._auth_failure(request)
        if denied is not None:
            return denied
        # Accepted: from here on the request is processed even if the client goes away.
        task = asyncio.get_running_loop().create_task(self._process(request, body, record, scripted == 500))
        self._processing.add(task)
        task.add_done_callback(self._processing.discard)
        return await asyncio.shield(task)

    async def _process(self, request: web.Request, body: bytes, record: ReceivedRequest, fail: bool) -> web.Response:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        mime_type = request.content_type  # the media type without parameters, lower case
        text = body.decode(request.charset or "utf-8", "replace")
        documents = decode(mime_type, text)
        limit = len(documents)
        if fail:
            limit = len(documents) // 2 if self.queue_before_500 else 0
        for document in documents[:limit]:
            try:
                self._queue(request, document)
            except _FieldSetError:
                return web.Response(status=500)
            record.queued += 1
        if fail:
            return web.Response(status=500)
        if self.response_code == 204:
            return web.Response(status=204)
        return web.Response(status=self.response_code, text="ok", content_type="text/plain")

    def _queue(self, request: web.Request, document: dict[str, Any]) -> None:
        """``push_decoded_event`` with ECS on: add the request's fields, then queue."""
        original = copy.deepcopy(document)
        event = document
        headers: dict[str, str | None] = {k.lower().replace("-", "_"): v for k, v in request.headers.items()}
        headers["http_accept"] = headers.pop("accept", None)
        headers["http_host"] = headers.pop("host", None)
        headers["http_user_agent"] = headers.pop("user_agent", None)
        headers["request_method"] = request.method
        headers["request_path"] = request.path_qs
        headers["http_version"] = f"HTTP/{request.version.major}.{request.version.minor}"
        headers.pop("authorization", None)  # MessageProcessor removes it before the message is handled
        _set(event, ("http", "version"), headers["http_version"])
        if headers["http_user_agent"]:
            _set(event, ("user_agent", "original"), headers["http_user_agent"])
        http_host = headers["http_host"]
        if http_host:
            domain, port = _domain_port(http_host)
            _set(event, ("url", "domain"), domain)
            if port is not None:
                _set(event, ("url", "port"), port)
        _set(event, ("http", "method"), request.method)
        _set(event, ("url", "path"), request.path_qs)
        if headers.get("content_length"):
            _set(event, ("http", "request", "body", "bytes"), headers["content_length"])
        if headers.get("content_type"):
            _set(event, ("http", "request", "mime_type"), headers["content_type"])
        _set(event, ("@metadata", "input", "http", "request", "headers"), headers)
        peer = request.remote or ""
        _set(event, ("host", "ip"), peer)
        event.setdefault("@timestamp", _now())
        event.setdefault("@version", "1")
        self.events.append(event)
        self.documents.append(original)
