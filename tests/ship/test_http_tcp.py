"""The http transport against the Logstash http-input double, the tcp transport against a json_lines sink."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.ship import TransportError
from nodeagent.ship.http import HttpStatusError, HttpTransport
from nodeagent.ship.tcp import TcpTransport, encode_json_lines
from tests.doubles.logstash_http import LogstashHttpInputDouble
from tests.doubles.tls import make_tls_files


def encode(doc: dict[str, Any]) -> bytes:
    """The agent's framing rule for one record."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def make_docs(n: int, prefix: str = "e") -> list[dict[str, Any]]:
    """ECS-shaped node events with stable ids."""
    return [
        {
            "@timestamp": f"2026-01-01T00:00:{i:02d}.000Z",
            "event": {"id": f"{prefix}{i}", "kind": "event", "category": ["host"]},
            "host": {"name": "node1"},
            "message": f"event {i}",
        }
        for i in range(n)
    ]


def tricky_docs() -> list[dict[str, Any]]:
    """Unicode, a newline and a quote inside strings, nesting, and one record of about 20 KiB."""
    return [
        {"event": {"id": "u"}, "message": "GPU 0 température 85 °C — Xid 79 ✓ 日本語 😀"},
        {"event": {"id": "nl"}, "message": 'line one\nline two\r\n\ttabbed "quoted" \\ back'},
        {"event": {"id": "big"}, "message": "x" * (20 * 1024), "labels": {"k": [1, 2.5, None, True]}},
    ]


class Progress:
    """An ``on_progress`` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        self.calls.append(n)


@pytest.fixture
async def logstash() -> AsyncIterator[LogstashHttpInputDouble]:
    async with LogstashHttpInputDouble() as double:
        yield double


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a throwaway certificate for localhost, client context trusting only its CA)."""
    files = make_tls_files(tmp_path / "pki")
    return files.server_context(), files.client_context()


# --- http ----------------------------------------------------------------------------------------------------


async def test_http_2xx_acknowledges_every_record(logstash: LogstashHttpInputDouble) -> None:
    docs = make_docs(5) + tricky_docs()
    transport = HttpTransport(logstash.url + "/nodeagent", headers={"X-Tenant": "gpu-a", "content-type": "text/plain"})
    progress = Progress()
    try:
        await transport.send([encode(d) for d in docs], progress)
    finally:
        await transport.aclose()
    assert progress.calls == [len(docs)]
    assert logstash.documents == docs
    [request] = logstash.requests
    assert (request.method, request.path, request.status) == ("POST", "/nodeagent", 200)
    assert request.headers["X-Tenant"] == "gpu-a"
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert request.body == b"".join(encode(d) + b"\n" for d in docs)
    # What Logstash adds in ECS mode lands beside the agent's fields, not over them.
    first = logstash.events[0]
    assert first["host"] == {"name": "node1", "ip": "127.0.0.1"}
    assert first["user_agent"]["original"].startswith("nodeagent/")
    assert first["event"] == docs[0]["event"]


async def test_http_reuses_one_connection(logstash: LogstashHttpInputDouble) -> None:
    transport = HttpTransport(logstash.url)
    try:
        for i in range(3):
            await transport.send([encode(d) for d in make_docs(2, prefix=f"b{i}-")], Progress())
    finally:
        await transport.aclose()
    assert len(logstash.documents) == 6
    assert len({r.peer for r in logstash.requests}) == 1


async def test_http_429_raises_and_the_retry_delivers(logstash: LogstashHttpInputDouble) -> None:
    docs = make_docs(3)
    logstash.script(429)
    transport = HttpTransport(logstash.url)
    progress = Progress()
    try:
        with pytest.raises(HttpStatusError) as caught:
            await transport.send([encode(d) for d in docs], progress)
        assert (caught.value.status, caught.value.retryable) == (429, True)
        assert "429" in caught.value.reason and "busy" in caught.value.reason
        assert progress.calls == []
        assert logstash.documents == []
        # Logstash closes the connection after a 429; the retry opens a new one.
        await transport.send([encode(d) for d in docs], progress)
    finally:
        await transport.aclose()
    assert progress.calls == [3]
    assert logstash.documents == docs
    assert [r.status for r in logstash.requests] == [429, 200]


@pytest.mark.parametrize("queue_before_500", [True, False])
async def test_http_500_raises_and_the_retry_may_duplicate(
    logstash: LogstashHttpInputDouble, queue_before_500: bool
) -> None:
    docs = make_docs(4)
    logstash.script(500)
    logstash.queue_before_500 = queue_before_500
    transport = HttpTransport(logstash.url)
    progress = Progress()
    try:
        with pytest.raises(HttpStatusError) as caught:
            await transport.send([encode(d) for d in docs], progress)
        assert (caught.value.status, caught.value.retryable) == (500, True)
        assert "may already be queued" in caught.value.reason
        await transport.send([encode(d) for d in docs], progress)
    finally:
        await transport.aclose()
    assert progress.calls == [4]
    partial = docs[:2] if queue_before_500 else []
    assert logstash.documents == partial + docs
    # The event id is what makes the duplicates harmless: deduplicated by id, every event is there once.
    assert sorted({d["event"]["id"] for d in logstash.documents}) == sorted(d["event"]["id"] for d in docs)


async def test_http_document_logstash_cannot_take_is_a_500_every_time(logstash: LogstashHttpInputDouble) -> None:
    # In ECS mode Logstash sets [host][ip]; a document whose "host" is a string makes that fail with a 500 after
    # the events before it were queued. Retrying the same batch fails the same way: a poison batch.
    docs = make_docs(3)
    docs[1]["host"] = "node1"
    transport = HttpTransport(logstash.url)
    try:
        for attempt in (1, 2):
            with pytest.raises(HttpStatusError) as caught:
                await transport.send([encode(d) for d in docs], Progress())
            assert caught.value.status == 500
            assert logstash.documents == [docs[0]] * attempt
    finally:
        await transport.aclose()


async def test_http_slow_answer_times_out_but_logstash_still_queues(logstash: LogstashHttpInputDouble) -> None:
    docs = make_docs(2)
    logstash.delay_s = 1.0
    transport = HttpTransport(logstash.url, timeout=0.2)
    progress = Progress()
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as caught:
            await transport.send([encode(d) for d in docs], progress)
    finally:
        await transport.aclose()
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.9
    assert "no answer within 0.2s" in caught.value.reason
    assert not isinstance(caught.value, HttpStatusError)
    assert progress.calls == []
    # The request was accepted: Logstash finishes it after the client gave up, so the retry will duplicate it.
    await asyncio.wait_for(logstash.wait_idle(), 10)
    assert logstash.documents == docs


async def test_http_gzip_body(logstash: LogstashHttpInputDouble) -> None:
    docs = make_docs(50) + tricky_docs()
    transport = HttpTransport(logstash.url, gzip=True)
    try:
        await transport.send([encode(d) for d in docs], Progress())
    finally:
        await transport.aclose()
    [request] = logstash.requests
    assert request.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(request.raw_body) == encode_json_lines([encode(d) for d in docs])
    assert len(request.raw_body) < len(request.body) / 4
    assert logstash.documents == docs


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with urllib: a client independent of aiohttp, to cross-check the double."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_http_json_array_body_gives_the_same_events(logstash: LogstashHttpInputDouble) -> None:
    docs = make_docs(3) + tricky_docs()
    transport = HttpTransport(logstash.url)
    try:
        await transport.send([encode(d) for d in docs], Progress())
    finally:
        await transport.aclose()
    as_ndjson = list(logstash.documents)
    array = json.dumps(docs, ensure_ascii=False).encode()
    answer = await asyncio.to_thread(post, logstash.url, array, {"Content-Type": "application/json; charset=utf-8"})
    assert answer == (200, b"ok")
    assert logstash.documents[len(as_ndjson) :] == as_ndjson == docs


async def test_double_decodes_like_the_codecs(logstash: LogstashHttpInputDouble) -> None:
    """The double's codec rules, seen from urllib: what a 200 does and does not mean."""
    ndjson = {"Content-Type": "application/x-ndjson"}
    # A line that is not JSON is still a 200: it becomes a _jsonparsefailure event. The last line needs no newline.
    assert await asyncio.to_thread(post, logstash.url, b'{"a":1}\n\nnot json\n{"b":2}', ndjson) == (200, b"ok")
    assert logstash.documents == [{"a": 1}, {"message": "not json", "tags": ["_jsonparsefailure"]}, {"b": 2}]
    # Another content type goes to the plain codec: one event, the body as message.
    plain = {"Content-Type": "text/plain"}
    assert (await asyncio.to_thread(post, logstash.url, b'{"a":1}\n{"b":2}\n', plain))[0] == 200
    assert logstash.documents[-1] == {"message": '{"a":1}\n{"b":2}\n'}
    # A body that does not inflate is a 400, nothing queued.
    before = len(logstash.documents)
    bad_gzip = {**ndjson, "Content-Encoding": "gzip"}
    assert (await asyncio.to_thread(post, logstash.url, b"not gzip", bad_gzip))[0] == 400
    assert len(logstash.documents) == before


async def test_http_404_is_a_rejected_request(logstash: LogstashHttpInputDouble) -> None:
    logstash.script(404)
    transport = HttpTransport(logstash.url + "/wrong")
    try:
        with pytest.raises(HttpStatusError) as caught:
            await transport.send([encode(d) for d in make_docs(1)], Progress())
    finally:
        await transport.aclose()
    assert (caught.value.status, caught.value.retryable) == (404, False)
    assert "HTTP 404 Not Found" in caught.value.reason
    assert "request rejected" in caught.value.reason
    assert logstash.documents == []


async def test_http_basic_auth() -> None:
    docs = make_docs(1)
    async with LogstashHttpInputDouble(user="agent", password="s3cret") as logstash:
        anonymous = HttpTransport(logstash.url)
        wrong = HttpTransport(logstash.url, user="agent", password="nope")
        right = HttpTransport(logstash.url, user="agent", password="s3cret")
        in_url = HttpTransport(f"http://agent:s3cret@127.0.0.1:{logstash.port}/")
        try:
            for transport in (anonymous, wrong):
                with pytest.raises(HttpStatusError) as caught:
                    await transport.send([encode(d) for d in docs], Progress())
                assert (caught.value.status, caught.value.retryable) == (401, False)
                assert "check user and password" in caught.value.reason
            progress = Progress()
            await right.send([encode(d) for d in docs], progress)
            await in_url.send([encode(d) for d in docs], progress)
        finally:
            for transport in (anonymous, wrong, right, in_url):
                await transport.aclose()
        assert progress.calls == [1, 1]
        assert logstash.documents == docs * 2
        assert in_url.endpoint == logstash.url + "/"
        headers = logstash.events[0]["@metadata"]["input"]["http"]["request"]["headers"]
        assert "authorization" not in headers


async def test_https(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    docs = make_docs(2)
    async with LogstashHttpInputDouble(ssl_context=server_ctx) as logstash:
        assert logstash.url.startswith("https://")
        untrusting = HttpTransport(logstash.url)  # the system CAs do not know the test certificate
        trusting = HttpTransport(logstash.url, ssl=client_ctx)
        try:
            with pytest.raises(TransportError) as caught:
                await untrusting.send([encode(d) for d in docs], Progress())
            assert "certificate" in caught.value.reason.lower()
            await trusting.send([encode(d) for d in docs], Progress())
        finally:
            await untrusting.aclose()
            await trusting.aclose()
        assert logstash.documents == docs


async def test_http_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        transport = HttpTransport(f"http://127.0.0.1:{port}/")
        try:
            with pytest.raises(TransportError) as caught:
                await transport.send([b"{}"], Progress())
        finally:
            await transport.aclose()
    assert not isinstance(caught.value, HttpStatusError)
    assert f"127.0.0.1:{port}" in caught.value.reason


def test_http_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="must be http"):
        HttpTransport("ftp://logstash:8080/")
    with pytest.raises(ValueError, match="both user and password"):
        HttpTransport("http://logstash:8080/", user="agent")
    with pytest.raises(ValueError, match="not https"):
        HttpTransport("http://logstash:8080/", ssl=ssl.create_default_context())
    # The endpoint goes into logs and metric labels: never with the password.
    assert HttpTransport("https://agent:s3cret@logstash:8443/in").endpoint == "https://logstash:8443/in"
    assert HttpTransport("http://logstash:8080/in").endpoint == "http://logstash:8080/in"


async def test_raw_newline_in_a_record_is_refused_before_sending(logstash: LogstashHttpInputDouble) -> None:
    transport = HttpTransport(logstash.url)
    try:
        with pytest.raises(ValueError, match="record 1 contains a raw newline"):
            await transport.send([b'{"a":1}', b'{"a":\n2}'], Progress())
    finally:
        await transport.aclose()
    assert logstash.requests == []


# --- tcp -----------------------------------------------------------------------------------------------------


class JsonLinesSink:
    """A json_lines receiver on 127.0.0.1 that records the lines of each connection and, like Logstash, never answers.

    ``close_after`` closes each connection once it has read that many lines. ``reading=False`` accepts connections
    (plain sockets, a small receive buffer) and never reads from them, so the sender's socket buffers fill up.
    """

    def __init__(
        self, *, close_after: int | None = None, reading: bool = True, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.close_after = close_after
        self.reading = reading
        self.ssl_context = ssl_context
        self.connections: list[list[bytes]] = []
        self.closed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._listener: socket.socket | None = None
        self._accepted: list[socket.socket] = []
        self._acceptor: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JsonLinesSink:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        if self.reading:
            self._server = await asyncio.start_server(self._handle, sock=sock, limit=1 << 24, ssl=self.ssl_context)
        else:
            # asyncio's streams would read into their buffer on their own: a plain socket that nobody reads.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted sockets
            sock.listen()
            sock.setblocking(False)
            self._listener = sock
            self._acceptor = asyncio.create_task(self._accept_and_ignore(sock))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_listening()
        for writer in self._writers:
            writer.transport.abort()
        for conn in self._accepted:
            conn.close()

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _accept_and_ignore(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            self._accepted.append(conn)
            self.connections.append([])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[bytes] = []
        self.connections.append(lines)
        self._writers.append(writer)
        while line := await reader.readline():
            lines.append(line)
            if self.close_after is not None and len(lines) >= self.close_after:
                break
        writer.close()
        self.closed.set()

    def lines(self) -> list[bytes]:
        return [line for lines in self.connections for line in lines]


async def test_tcp_records_arrive_whole() -> None:
    docs = tricky_docs() + make_docs(10)
    async with JsonLinesSink() as sink:
        transport = TcpTransport("127.0.0.1", sink.port)
        progress = Progress()
        try:
            await transport.send([encode(d) for d in docs[:3]], progress)
            await transport.send([encode(d) for d in docs[3:]], progress)
        finally:
            await transport.aclose()
        await asyncio.wait_for(sink.closed.wait(), 5)
    assert progress.calls == [3, 10]
    assert len(sink.connections) == 1  # the connection is kept between sends
    lines = sink.lines()
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    assert [json.loads(line) for line in lines] == docs


async def test_tcp_peer_closing_fails_a_later_send() -> None:
    async with JsonLinesSink(close_after=2) as sink:
        transport = TcpTransport("127.0.0.1", sink.port, timeout=2.0)
        try:
            await transport.send([encode(d) for d in make_docs(2)], Progress())
            await asyncio.wait_for(sink.closed.wait(), 5)
            await sink.stop_listening()  # the receiver is gone (a Logstash pipeline reload, an rsyslog restart)
            await asyncio.sleep(0.1)  # let the FIN arrive
            progress = Progress()
            with pytest.raises(TransportError) as caught:
                await transport.send([encode(d) for d in make_docs(2, prefix="late")], progress)
        finally:
            await transport.aclose()
    assert progress.calls == []
    assert "connect failed" in caught.value.reason
    assert [json.loads(line)["event"]["id"] for line in sink.lines()] == ["e0", "e1"]


async def test_tcp_reconnects_when_the_peer_closed_cleanly() -> None:
    # The end of the stream is noticed before the next write, so the batch goes to a new connection instead of
    # into a half-closed socket, where the kernel would accept it and the peer would throw it away.
    async with JsonLinesSink(close_after=2) as sink:
        transport = TcpTransport("127.0.0.1", sink.port)
        try:
            await transport.send([encode(d) for d in make_docs(2)], Progress())
            await asyncio.wait_for(sink.closed.wait(), 5)
            await asyncio.sleep(0.1)
            await transport.send([encode(d) for d in make_docs(2, prefix="late")], Progress())
            for _ in range(100):
                if len(sink.lines()) == 4:
                    break
                await asyncio.sleep(0.02)
        finally:
            await transport.aclose()
    assert [len(lines) for lines in sink.connections] == [2, 2]
    assert [json.loads(line)["event"]["id"] for line in sink.lines()] == ["e0", "e1", "late0", "late1"]


async def test_tcp_receiver_not_reading_makes_the_send_time_out() -> None:
    big = [encode({"event": {"id": f"b{i}"}, "message": "y" * 65536}) for i in range(256)]  # 16 MiB
    async with JsonLinesSink(reading=False) as sink:
        transport = TcpTransport("127.0.0.1", sink.port, timeout=0.5)
        progress = Progress()
        started = time.monotonic()
        try:
            with pytest.raises(TransportError) as caught:
                await transport.send(big, progress)
        finally:
            await transport.aclose()
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3.0
    assert "did not take" in caught.value.reason
    assert progress.calls == []


async def test_tcp_over_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    docs = tricky_docs()
    async with JsonLinesSink(ssl_context=server_ctx) as sink:
        wrong_name = TcpTransport("127.0.0.1", sink.port, ssl=client_ctx, server_hostname="logstash.example")
        transport = TcpTransport("127.0.0.1", sink.port, ssl=client_ctx, server_hostname="localhost")
        try:
            with pytest.raises(TransportError, match=r"connect failed.*certificate"):
                await wrong_name.send([encode(d) for d in docs], Progress())
            await transport.send([encode(d) for d in docs], Progress())
        finally:
            await wrong_name.aclose()
            await transport.aclose()
        await asyncio.wait_for(sink.closed.wait(), 5)
    assert [json.loads(line) for line in sink.lines()] == docs


async def test_tcp_connection_refused_and_bad_records() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        transport = TcpTransport("127.0.0.1", s.getsockname()[1])
        with pytest.raises(TransportError, match="connect failed"):
            await transport.send([b"{}"], Progress())
        with pytest.raises(ValueError, match="raw newline"):
            await transport.send([b'{"a":"\n"}'], Progress())
        await transport.aclose()
    assert TcpTransport("::1", 5000).endpoint == "[::1]:5000"
    with pytest.raises(ValueError, match="server_hostname"):
        TcpTransport("127.0.0.1", 5000, server_hostname="logstash")
