"""
The HTTP server under load and abuse, on a real ``nodeagent run`` over loopback (limits: nodeagent/httpserver.py,
docs/web-limits.md): 500 concurrent scrapers and wrk all answered completely; slowloris cut by the header-read
timeout while scrapes go on; oversized requests refused with the right 4xx; a client that never reads cut by the
write timeout; the connection cap; stalled TLS handshakes dropped; memory bounded; and, in process, a large body
sent in slices that a slow reader cannot pin, shutdown dropping every connection, the open-file limit raised. The
clients are bench/load.py's.

The agents here run with 2 s timeouts instead of the defaults so that the file stays short; the figures are printed
(``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bench.load import (
    HOST,
    OPENMETRICS_ACCEPT,
    SLOWLORIS_BYTES,
    ProcessSampler,
    exposition_problems,
    get_request,
    hold_connections,
    never_reading_client,
    paced_scrapes,
    raw_exchange,
    read_response,
    rss_bytes,
    run_wrk,
    scrape_burst,
)
from nodeagent.config import WebConfig
from nodeagent.httpserver import LimitedSite, make_runner
from tests.doubles.tls import make_tls_files
from tests.integration.agent_proc import AgentProcess, free_port, http_get, run_agent, started_process, wait_until
from tests.prereq import require_binary

pytestmark = pytest.mark.integration

TIMEOUT = 2.0  # web.header_read_timeout, web.write_timeout and web.tls_handshake_timeout of these agents
SHORT_TIMEOUTS = [
    "--set",
    f"web.header_read_timeout={TIMEOUT}s",
    "--set",
    f"web.write_timeout={TIMEOUT}s",
    "--set",
    f"web.tls_handshake_timeout={TIMEOUT}s",
]
SCRAPERS = 500
MiB = 1 << 20
# A timer fires at TIMEOUT after the server accepted; the client's clock starts when its connect returns, a little
# later or (on a loaded machine) a little earlier than that, and the close takes a loop iteration to arrive.
EARLY = 0.5
LATE = 3.0


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with run_agent(SHORT_TIMEOUTS, tmp_dir=str(tmp_path_factory.mktemp("load"))) as proc:
        yield proc


def _still_serves(agent: AgentProcess) -> None:
    status, _, body = http_get(agent.url + "/metrics")
    assert 200 == status
    assert not exposition_problems("text/plain", body)


def test_500_concurrent_scrapers_all_get_complete_correct_responses(agent: AgentProcess) -> None:
    async def burst():  # type: ignore[no-untyped-def]
        async with asyncio.timeout(60):
            return await scrape_burst(HOST, agent.port, SCRAPERS, rounds=2)

    with ProcessSampler(agent.proc.pid) as sampler:
        report = asyncio.run(burst())
    print("\nburst:", report.figures(), "agent fds peak:", sampler.peak_fds)

    assert [] == report.errors
    assert SCRAPERS == report.held
    assert {200: 2 * SCRAPERS} == dict(report.statuses)
    # The agent held every connection at once (one descriptor each), not a few at a time through the backlog.
    assert sampler.peak_fds >= SCRAPERS
    # Every distinct body (one per collection cycle and format) parses and has the expected families.
    content_types = {ctype.split(";")[0] for ctype, _ in report.bodies.values()}
    assert {"text/plain", "application/openmetrics-text"} == content_types
    for ctype, body in report.bodies.values():
        assert [] == exposition_problems(ctype, body), ctype


def test_wrk_500_connections_no_errors(agent: AgentProcess) -> None:
    wrk = require_binary("wrk", "wrk")
    _, _, body = http_get(agent.url + "/metrics", headers={"Accept": OPENMETRICS_ACCEPT, "Accept-Encoding": "gzip"})
    report = run_wrk(
        agent.url + "/metrics",
        SCRAPERS,
        3,
        headers=[f"Accept: {OPENMETRICS_ACCEPT}", "Accept-Encoding: gzip"],
        wrk=wrk,
    )
    print(
        f"\nwrk: {report.requests} requests in {report.seconds:.1f} s = {report.requests_per_second:.0f}/s, "
        f"p50 {report.p50_ms:.1f} ms, p90 {report.p90_ms:.1f} ms, p99 {report.p99_ms:.1f} ms, "
        f"max {report.max_ms:.1f} ms, errors {report.errors}"
    )

    assert {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0} == report.errors
    assert report.requests >= SCRAPERS
    # Complete responses: on average at least the gzip body (headers add ~200 bytes; bodies differ a little per cycle).
    assert report.bytes / report.requests >= 0.9 * len(body)
    assert report.p99_ms < 2000


def test_slowloris_is_cut_by_the_header_timeout_and_does_not_starve_scrapes(agent: AgentProcess) -> None:
    connections = 300

    async def attack():  # type: ignore[no-untyped-def]
        return await asyncio.gather(
            hold_connections(
                HOST, agent.port, connections, payload=SLOWLORIS_BYTES, interval=0.5, give_up=TIMEOUT + 10
            ),
            paced_scrapes(HOST, agent.port, count=20, pace=0.1),
        )

    held, scrapes = asyncio.run(attack())
    cut = [h.closed_after for h in held if h.closed_after is not None]
    latencies = sorted(seconds for _, seconds in scrapes)
    answered = sum(h.reply.startswith(b"HTTP/1.1 408 Request Timeout") for h in held)
    print(
        f"\nslowloris: {len(cut)}/{connections} cut after {min(cut, default=0):.2f}-{max(cut, default=0):.2f} s "
        f"({answered} answered 408); scrapes meanwhile: {[s for s, _ in scrapes].count(200)}/{len(scrapes)} OK, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )

    assert connections == len(cut), "every slowloris connection is closed"
    assert TIMEOUT - EARLY <= min(cut)
    assert max(cut) <= TIMEOUT + LATE
    assert answered >= 0.9 * connections  # a client that started a request is told why
    assert [200] * len(scrapes) == [status for status, _ in scrapes]
    assert latencies[-1] < 1.0, "scrapes are not starved while the slow connections are held"
    _still_serves(agent)


@pytest.mark.parametrize(
    ("request_bytes", "status", "key"),
    [
        (b"GET /metrics?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: natest\r\n\r\n", 414, b"web.max_request_line_bytes"),
        (b"GET /metrics HTTP/1.1\r\nHost: natest\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, b"max_header_field"),
        (
            b"GET /metrics HTTP/1.1\r\nHost: natest\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n",
            431,
            b"web.max_headers",
        ),
        (b"GET /metrics HTTP/1.1\r\nHost: natest\r\nContent-Length: 5000\r\n\r\n", 413, b"max_request_body_bytes"),
        (b"GET /metrics HTTP/1.1\r\nHost: natest\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 411, b""),
        (b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03 not http\r\n\r\n", 400, b"malformed"),
    ],
    ids=["request-line", "header-field", "too-many-headers", "body", "chunked-body", "not-http"],
)
def test_oversized_and_malformed_requests_are_refused_quickly(
    agent: AgentProcess, request_bytes: bytes, status: int, key: bytes
) -> None:
    reply = raw_exchange(HOST, agent.port, request_bytes, timeout=10)

    assert status == reply.status, reply.data[:200]
    assert key in reply.data
    assert b"aaaaaaaa" not in reply.data, "the request is not echoed"
    assert reply.closed_after is not None and reply.closed_after < 3.0, "refused and closed at once"
    _still_serves(agent)


def test_a_large_body_is_refused_without_being_buffered(agent: AgentProcess) -> None:
    sent = 256 * MiB
    with ProcessSampler(agent.proc.pid, interval=0.02) as sampler:
        before = rss_bytes(agent.proc.pid)
        reply = raw_exchange(
            HOST,
            agent.port,
            b"POST /metrics HTTP/1.1\r\nHost: natest\r\nContent-Length: %d\r\n\r\n" % (4 * sent),
            body_bytes=sent,
            timeout=10,
        )
    growth = sampler.peak_rss - before
    print(f"\nlarge body: {reply.status}, closed after {reply.closed_after} s, RSS growth {growth / MiB:.1f} MiB")

    assert 413 == reply.status
    assert reply.closed_after is not None and reply.closed_after < 5.0
    assert growth < 16 * MiB, "the body is read and dropped, never held"
    _still_serves(agent)


def test_a_client_that_never_reads_is_cut_by_the_write_timeout(agent: AgentProcess) -> None:
    requests = 400  # ~25 MB of responses, far beyond the socket buffers
    _, _, body = http_get(agent.url + "/metrics")
    reply = never_reading_client(HOST, agent.port, requests, give_up=TIMEOUT + 10)
    print(f"\nnever-reading client: closed after {reply.closed_after} s, {len(reply.data)} bytes had arrived")

    assert reply.closed_after is not None, "the connection is closed, not kept writing"
    assert TIMEOUT - EARLY <= reply.closed_after <= TIMEOUT + LATE
    assert len(reply.data) < requests * len(body) / 2
    _still_serves(agent)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response with a Content-Length from a blocking socket: status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


def _open_and_quiet(sock: socket.socket) -> bool:
    """Whether the server has neither closed the connection nor sent anything unasked."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b"x"  # nothing arrived: BlockingIOError; closed: b""; 408: b"H"
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def test_the_header_timer_leaves_kept_alive_connections_and_bodies_alone(agent: AgentProcess) -> None:
    """Idle between requests is the keep-alive timeout's business; a body that follows its header in a later packet
    is not a new request's slow header."""
    request = get_request(HOST, agent.port, "text/plain")
    with (
        socket.create_connection((HOST, agent.port), timeout=10) as kept,
        socket.create_connection((HOST, agent.port), timeout=10) as with_body,
    ):
        kept.sendall(request)
        assert 200 == _read_response(kept)[0]
        with_body.sendall(b"GET /metrics HTTP/1.1\r\nHost: natest\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.3)
        with_body.sendall(b"hello")
        assert 200 == _read_response(with_body)[0]

        time.sleep(TIMEOUT + 1.0)
        assert _open_and_quiet(kept)
        assert _open_and_quiet(with_body)
        for sock in (kept, with_body):
            sock.sendall(request)
            assert 200 == _read_response(sock)[0]


def test_connections_beyond_the_cap_wait_in_the_backlog(tmp_path: Path) -> None:
    cap = 16
    with run_agent(["--set", f"web.max_connections={cap}"], tmp_dir=str(tmp_path)) as capped:
        held = []
        try:
            for _ in range(cap):  # each kept-alive connection holds a slot (run_agent's readiness checks closed)
                sock = socket.create_connection((HOST, capped.port), timeout=5)
                held.append(sock)
                sock.sendall(get_request(HOST, capped.port, "text/plain"))
                assert sock.recv(12) == b"HTTP/1.1 200"

            # The kernel completes the next connection, but the agent does not take it while at the cap.
            waiting = socket.create_connection((HOST, capped.port), timeout=1.5)
            waiting.sendall(get_request(HOST, capped.port, "text/plain"))
            with pytest.raises(TimeoutError):
                waiting.recv(12)
            # One closes: the waiting one is served.
            held.pop(0).close()
            waiting.settimeout(5)
            started = time.monotonic()
            assert waiting.recv(12) == b"HTTP/1.1 200"
            assert time.monotonic() - started < 2.0
            held.append(waiting)
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: "web.connection_limit_reached" in capped.log(), 5, "the cap warning in the log")


def test_memory_stays_bounded_under_load(tmp_path: Path) -> None:
    """RSS before, during and after every kind of load at once, twice: the peak is bounded, and the second round
    adds next to nothing (nothing is kept per connection or per request)."""
    wrk = require_binary("wrk", "wrk")
    with run_agent(SHORT_TIMEOUTS, tmp_dir=str(tmp_path)) as fresh:
        pid = fresh.proc.pid

        async def load() -> None:
            async with asyncio.timeout(60):
                burst = await scrape_burst(HOST, fresh.port, SCRAPERS, rounds=3)
                assert [] == burst.errors
                await asyncio.to_thread(run_wrk, fresh.url + "/metrics", SCRAPERS, 3, wrk=wrk)
                await asyncio.gather(
                    hold_connections(
                        HOST, fresh.port, 300, payload=SLOWLORIS_BYTES, interval=0.5, give_up=TIMEOUT + 10
                    ),
                    scrape_burst(HOST, fresh.port, SCRAPERS, rounds=1),
                    asyncio.to_thread(never_reading_client, HOST, fresh.port, 400, give_up=TIMEOUT + 10),
                    asyncio.to_thread(
                        raw_exchange,
                        HOST,
                        fresh.port,
                        b"POST / HTTP/1.1\r\nHost: natest\r\nContent-Length: %d\r\n\r\n" % (1 << 30),
                        body_bytes=64 * MiB,
                    ),
                )

        time.sleep(1.0)
        before = rss_bytes(pid)
        rounds = []
        for _ in range(2):
            with ProcessSampler(pid) as sampler:
                asyncio.run(load())
            time.sleep(1.0)
            rounds.append((sampler.peak_rss, rss_bytes(pid), sampler.peak_fds))
    (peak1, after1, fds), (peak2, after2, _) = rounds
    print(
        f"\nagent RSS: before {before / MiB:.1f} MiB; round 1 peak {peak1 / MiB:.1f}, after {after1 / MiB:.1f}; "
        f"round 2 peak {peak2 / MiB:.1f}, after {after2 / MiB:.1f} MiB; peak descriptors {fds}"
    )

    assert fds >= SCRAPERS, "the load did hold its connections at once"
    assert max(peak1, peak2) - before < 32 * MiB
    assert after2 - after1 < 8 * MiB


def test_tls_handshakes_that_never_finish_are_dropped(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {tls.server_cert}\n  key_file: {tls.server_key}\n")
    port = free_port()
    log_path = tmp_path / "agent.log"
    cmd = [
        sys.executable,
        "-m",
        "nodeagent",
        "run",
        "--listen",
        f"{HOST}:{port}",
        "--web.config.file",
        str(web),
        *SHORT_TIMEOUTS,
    ]
    client = tls.client_context()

    async def attack():  # type: ignore[no-untyped-def]
        partial_hello = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03"
        return await asyncio.gather(
            hold_connections(HOST, port, 50, payload=b"", interval=None, give_up=TIMEOUT + 10),
            hold_connections(HOST, port, 50, payload=partial_hello, interval=None, give_up=TIMEOUT + 10),
            # Handshake done, then not a byte: the header-read timeout, over TLS.
            hold_connections(HOST, port, 20, payload=b"", interval=None, give_up=TIMEOUT + 10, tls=client),
            paced_scrapes(HOST, port, count=20, pace=0.1, tls=client),
        )

    with started_process(
        cmd, log_path, lambda: "agent.started" in log_path.read_text(errors="replace"), "the TLS agent to start"
    ):
        silent, partial, idle, scrapes = asyncio.run(attack())
    for name, held in (("silent", silent), ("partial ClientHello", partial), ("idle after handshake", idle)):
        cut = [h.closed_after for h in held if h.closed_after is not None]
        print(
            f"\nTLS {name}: {len(cut)}/{len(held)} dropped after {min(cut, default=0):.2f}-{max(cut, default=0):.2f} s"
        )
        assert len(held) == len(cut), name
        assert TIMEOUT - EARLY <= min(cut), name
        assert max(cut) <= TIMEOUT + LATE, name
        assert all(h.reply == b"" for h in held), "nothing was asked, nothing is answered"
    assert [200] * len(scrapes) == [status for status, _ in scrapes]
    assert max(seconds for _, seconds in scrapes) < 1.0


async def test_cleanup_stops_listening_and_drops_every_connection_promptly(tmp_path: Path) -> None:
    """What SIGTERM does (``runner.cleanup()``), in process: the listener closes, and a kept-alive connection, a
    half-sent request and a TLS handshake in progress are all dropped well before their timeouts."""
    tls = make_tls_files(tmp_path)
    limits = WebConfig(header_read_timeout=60, tls_handshake_timeout=60)

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello\n")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = make_runner(app, limits, shutdown_timeout=5.0)
    await runner.setup()
    port = free_port()
    site = LimitedSite(runner, HOST, port, limits, ssl_context=tls.server_context())
    await site.start()
    try:
        client = tls.client_context()
        kept_reader, kept_writer = await asyncio.open_connection(HOST, port, ssl=client)
        kept_writer.write(b"GET / HTTP/1.1\r\nHost: natest\r\n\r\n")
        assert (200, b"hello\n") == (await read_response(kept_reader))[::2]
        half_reader, half_writer = await asyncio.open_connection(HOST, port, ssl=client)
        half_writer.write(b"GET / HTTP/1.1\r\nHost: nat")
        stalled_reader, stalled_writer = await asyncio.open_connection(HOST, port)
        await asyncio.sleep(0.2)
    finally:
        started = time.monotonic()
        async with asyncio.timeout(10):
            await runner.cleanup()
        elapsed = time.monotonic() - started

    assert elapsed < 2.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=2).close()
    async with asyncio.timeout(5):
        for reader in (kept_reader, half_reader, stalled_reader):
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                assert b"" == await reader.read()
    for writer in (kept_writer, half_writer, stalled_writer):
        writer.transport.abort()


@pytest.mark.parametrize(("hard", "expected_soft", "warns"), [(4096, 4096, False), (1000, 1000, True)])
def test_the_open_file_limit_is_raised_to_fit_max_connections(hard: int, expected_soft: int, warns: bool) -> None:
    code = (
        "import resource, structlog\n"
        "from nodeagent.httpserver import ensure_file_limit\n"
        "ensure_file_limit(1024, structlog.get_logger())\n"
        "print('soft', resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard)),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"soft {expected_soft}" == proc.stdout.splitlines()[-1]
    assert warns == ("web.file_limit_low" in proc.stdout)


async def test_a_large_body_goes_out_in_slices_and_a_slow_reader_holds_little() -> None:
    """A body of several MiB (a node with many containers) is sent intact; clients that do not read hold about two
    slices each in the agent, not a copy of the body."""
    body = os.urandom(4 * MiB)
    readers = 50

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain", headers={"X-Natest": "kept"})

    app = web.Application()
    app.router.add_get("/big", big)
    runner = make_runner(app, WebConfig())
    await runner.setup()
    port = free_port()
    await LimitedSite(runner, HOST, port, WebConfig()).start()
    request = b"GET /big HTTP/1.1\r\nHost: natest\r\n\r\n"
    slow: list[socket.socket] = []
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        for _ in range(2):  # intact, twice on one kept-alive connection
            writer.write(request)
            status, headers, got = await read_response(reader)
            assert (200, str(len(body)), "kept") == (status, headers["content-length"], headers["x-natest"])
            assert body == got
        writer.write(b"HEAD /big HTTP/1.1\r\nHost: natest\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % len(body) in head
        writer.close()

        before = rss_bytes(os.getpid())
        for _ in range(readers):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((HOST, port))
            sock.sendall(request)
            slow.append(sock)
        await asyncio.sleep(1.5)
        growth = rss_bytes(os.getpid()) - before
        print(f"\n{readers} clients not reading a {len(body) // MiB} MiB body: RSS +{growth / MiB:.1f} MiB")
        assert growth < readers * len(body) / 8
    finally:
        for sock in slow:
            sock.close()
        async with asyncio.timeout(10):
            await runner.cleanup()
