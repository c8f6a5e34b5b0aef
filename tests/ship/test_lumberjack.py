"""The Beats transport (``nodeagent.ship.lumberjack``) against the Lumberjack v2 server double
(``tests.doubles.lumberjack``) in each of its modes, over TCP and TLS, and the double itself cross-checked with an
independent client, pylogbeat (PyPI; synchronous, so it runs in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import pytest

from nodeagent.ship import TransportError
from nodeagent.ship.lumberjack import (
    COMPRESS_IN_THREAD_BYTES,
    BeatsTransport,
    decode_ack,
    encode_compressed,
    encode_json_frames,
    encode_window,
)
from tests.doubles.lumberjack import LumberjackServer, Mode
from tests.prereq import missing

if TYPE_CHECKING:  # tests.doubles.tls needs the cryptography package: imported where a test uses it
    from tests.doubles.tls import TlsFiles


def records(count: int, start: int = 0, size: int = 0) -> list[bytes]:
    """``count`` ECS-like JSON documents numbered from ``start``; ``size`` pads each to about that many bytes."""
    out = []
    for i in range(start, start + count):
        doc: dict[str, Any] = {"@timestamp": "2026-01-01T00:00:00.000Z", "event": {"sequence": i}, "n": i}
        raw = json.dumps(doc, separators=(",", ":"))
        if size > len(raw):
            doc["pad"] = os.urandom(size).hex()[: size - len(raw) - 9]
            raw = json.dumps(doc, separators=(",", ":"))
        out.append(raw.encode())
    return out


def docs(raw: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(r) for r in raw]


class Progress(list[int]):
    """An ``on_progress`` that records what it was told."""

    def __call__(self, acked: int) -> None:
        self.append(acked)


@pytest.fixture
async def server() -> AsyncIterator[LumberjackServer]:
    async with LumberjackServer(keepalive_s=0.1) as srv:
        yield srv


@pytest.fixture
async def transport(server: LumberjackServer) -> AsyncIterator[BeatsTransport]:
    t = BeatsTransport("127.0.0.1", server.port, timeout=0.5)
    yield t
    await t.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- wire format --------------------------------------------------------------------------------------------


def test_frames_are_lumberjack_v2() -> None:
    assert b"2W\x00\x00\x00\x03" == encode_window(3)
    assert [b"2J\x00\x00\x00\x01\x00\x00\x00\x02", b"{}", b"2J\x00\x00\x00\x02\x00\x00\x00\x07", b'{"a":1}'] == (
        encode_json_frames([b"{}", b'{"a":1}'])
    )
    header, body = encode_compressed([b"{}", b'{"a":1}'], 3)
    assert b"2C" + len(body).to_bytes(4, "big") == header
    assert b'2J\x00\x00\x00\x01\x00\x00\x00\x02{}2J\x00\x00\x00\x02\x00\x00\x00\x07{"a":1}' == zlib.decompress(body)
    assert 7 == decode_ack(b"2A\x00\x00\x00\x07")
    assert 0 == decode_ack(b"2A\x00\x00\x00\x00")
    for bad in (b"1A\x00\x00\x00\x07", b"2J\x00\x00\x00\x07", b"HTTP/1"):
        with pytest.raises(TransportError, match="protocol error"):
            decode_ack(bad)


def test_invalid_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match="compression_level 10"):
        BeatsTransport("127.0.0.1", 5044, compression_level=10)
    with pytest.raises(ValueError, match="port 0"):
        BeatsTransport("127.0.0.1", 0)
    with pytest.raises(ValueError, match="timeout 0"):
        BeatsTransport("127.0.0.1", 5044, timeout=0)
    with pytest.raises(ValueError, match="server_hostname"):
        BeatsTransport("127.0.0.1", 5044, server_hostname="logstash")
    assert "[::1]:5044" == BeatsTransport("::1", 5044).endpoint


# --- normal operation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 3])
async def test_batches_arrive_once_in_order_on_one_connection(server: LumberjackServer, level: int) -> None:
    transport = BeatsTransport("127.0.0.1", server.port, timeout=2, compression_level=level)
    first, second = records(7), records(5, start=7)
    p1, p2 = Progress(), Progress()
    await transport.send(first, p1)
    await transport.send(second, p2)
    await transport.aclose()

    assert docs(first + second) == server.documents()
    assert [7] == p1 and [5] == p2
    assert 1 == server.connections == transport.connects
    assert [7, 5] == server.windows
    # Sequence numbers start over at 1 in every window; the ACK names the last one.
    assert [*range(1, 8), *range(1, 6)] == [e.sequence for e in server.events]
    assert [(1, 7), (1, 5)] == server.acks
    assert (2 if level else 0) == server.compressed_frames
    assert 12 == server.json_frames
    assert [] == server.unacked_events and [] == server.protocol_errors


async def test_empty_send_touches_nothing(server: LumberjackServer, transport: BeatsTransport) -> None:
    progress = Progress()
    await transport.send([], progress)
    assert [] == progress and 0 == server.connections


# --- ACK timing: keepalives, partial ACKs, silence -----------------------------------------------------------


async def test_keepalives_hold_the_batch_open_past_the_timeout(
    server: LumberjackServer, transport: BeatsTransport
) -> None:
    # Client timeout 0.5 s; the server holds the ACK 1.2 s but sends ACK 0 every 0.2 s, as Logstash does every 5 s.
    server.set_mode(Mode.DELAYED_ACK, delay_s=1.2, keepalive_s=0.2)
    progress = Progress()
    started = time.monotonic()
    await transport.send(records(4), progress)
    assert time.monotonic() - started >= 1.2
    assert [4] == progress
    assert server.keepalives >= 5
    assert [(1, 0)] * server.keepalives + [(1, 4)] == server.acks
    assert docs(records(4)) == server.documents()


async def test_no_ack_at_all_times_out_and_the_next_send_resends(
    server: LumberjackServer, transport: BeatsTransport
) -> None:
    server.set_mode(Mode.SILENT)
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"no ACK from 127\.0\.0\.1:\d+ in 0\.5s \(0/3 acknowledged\)"):
        await transport.send(records(3), Progress())
    assert 0.5 <= time.monotonic() - started < 1.0
    server.set_mode(Mode.NORMAL)
    await transport.send(records(3), Progress())
    assert docs(records(3)) == server.documents() == [e.event for e in server.unacked_events]
    assert 2 == server.connections


async def test_keepalives_without_progress_fail_after_progress_timeout(server: LumberjackServer) -> None:
    server.set_mode(Mode.KEEPALIVE_ONLY, keepalive_s=0.1)
    transport = BeatsTransport("127.0.0.1", server.port, timeout=0.5, progress_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"no ACK progress .* in 1s \(0/3 acknowledged, \d+ keepalives\)"):
        await transport.send(records(3), Progress())
    assert 1.0 <= time.monotonic() - started < 1.5
    assert server.keepalives >= 8

    server.set_mode(Mode.NORMAL)
    progress = Progress()
    await transport.send(records(3), progress)
    await transport.aclose()
    assert [3] == progress
    assert docs(records(3)) == server.documents()
    assert 3 == len(server.unacked_events)  # the first attempt reached the server; the resend is a duplicate
    assert 2 == server.connections == transport.connects


async def test_keepalives_alone_are_waited_for_like_filebeat(server: LumberjackServer) -> None:
    # Without progress_timeout each ACK 0 restarts the wait: still waiting at 2.4 timeouts; the caller's own
    # deadline cancels the send, which drops the connection so the next send starts clean.
    server.set_mode(Mode.KEEPALIVE_ONLY, keepalive_s=0.1)
    transport = BeatsTransport("127.0.0.1", server.port, timeout=0.5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.2):
            await transport.send(records(2), Progress())
    assert server.keepalives >= 8
    server.set_mode(Mode.NORMAL)
    await transport.send(records(2), Progress())
    await transport.aclose()
    assert docs(records(2)) == server.documents()
    assert 2 == transport.connects


async def test_aclose_under_a_waiting_send_fails_it_at_once(
    server: LumberjackServer, transport: BeatsTransport
) -> None:
    await transport.send(records(1), Progress())
    server.set_mode(Mode.KEEPALIVE_ONLY, keepalive_s=0.1)
    pending = asyncio.create_task(transport.send(records(2, start=1), Progress()))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await transport.aclose()
    with pytest.raises(TransportError, match="closed by aclose"):  # not resent on a new connection
        await pending
    assert time.monotonic() - started < 0.2
    assert 1 == server.connections == transport.connects


@pytest.mark.parametrize(("steps", "expected"), [(2, [5, 10]), (3, [4, 7, 10])])
async def test_partial_acks_report_progress(
    server: LumberjackServer, transport: BeatsTransport, steps: int, expected: list[int]
) -> None:
    server.set_mode(Mode.PARTIAL_ACK, partial_steps=steps)
    progress = Progress()
    await transport.send(records(10), progress)
    assert expected == progress
    assert [(1, n) for n in expected] == server.acks
    await transport.send(records(1), progress)  # the connection is still in step
    assert [*expected, 1] == progress


# --- lost connections ---------------------------------------------------------------------------------------


async def test_close_before_ack_fails_then_a_retry_delivers(
    server: LumberjackServer, transport: BeatsTransport
) -> None:
    server.set_mode(Mode.CLOSE_BEFORE_ACK, times=1)
    with pytest.raises(TransportError, match=r"connection closed by .* before the ACK \(0/6 acknowledged\)"):
        await transport.send(records(6), Progress())
    progress = Progress()
    await transport.send(records(6), progress)
    assert [6] == progress
    assert docs(records(6)) == server.documents()
    assert 6 == len(server.unacked_events)  # the duplicates Logstash may have queued
    assert 2 == server.connections


async def test_a_kept_connection_closed_under_a_batch_is_retried_once(
    server: LumberjackServer, transport: BeatsTransport
) -> None:
    await transport.send(records(2), Progress())
    # The server takes the window and hangs up without an ACK, as an idle close crossing the client's write
    # looks: the client resends the window once on a new connection, and that one succeeds.
    server.set_mode(Mode.CLOSE_BEFORE_ACK, times=1)
    progress = Progress()
    await transport.send(records(3, start=2), progress)
    assert [3] == progress
    assert docs(records(5)) == server.documents()
    assert docs(records(3, start=2)) == [e.event for e in server.unacked_events]
    assert 2 == server.connections == transport.connects
    assert 1 == transport.resends

    # Only once: a server that hangs up again fails the send (and saw the window twice).
    server.set_mode(Mode.CLOSE_BEFORE_ACK)
    with pytest.raises(TransportError, match="connection closed"):
        await transport.send(records(4, start=5), Progress())
    assert 3 + 2 * 4 == len(server.unacked_events)
    assert 3 == server.connections == transport.connects
    assert 2 == transport.resends


async def test_idle_close_by_the_server_is_noticed_before_sending() -> None:
    async with LumberjackServer(client_inactivity_timeout=0.2) as server:
        transport = BeatsTransport("127.0.0.1", server.port, timeout=1)
        await transport.send(records(2), Progress())
        await asyncio.sleep(0.4)
        assert 1 == server.idle_closes
        await transport.send(records(2, start=2), Progress())
        await transport.aclose()
    assert docs(records(4)) == server.documents()
    assert 0 == transport.resends  # the EOF was seen while idle: no window went to the dead connection
    assert 2 == server.connections == transport.connects


async def test_server_restart_between_batches_is_transparent(
    server: LumberjackServer, transport: BeatsTransport
) -> None:
    await transport.send(records(3), Progress())
    port = server.port
    await server.stop()
    await server.start()
    assert port == server.port
    progress = Progress()
    await transport.send(records(3, start=3), progress)
    assert [3] == progress
    assert docs(records(6)) == server.documents()
    assert 2 == server.connections
    assert 0 == transport.resends


async def test_connection_refused_fails_fast() -> None:
    transport = BeatsTransport("127.0.0.1", free_port(), timeout=5)
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"connect to 127\.0\.0\.1:\d+: .*refused"):
        await transport.send(records(1), Progress())
    assert time.monotonic() - started < 1.0


async def test_server_gone_after_a_batch_fails_the_next(server: LumberjackServer, transport: BeatsTransport) -> None:
    await transport.send(records(1), Progress())
    await server.stop()
    with pytest.raises(TransportError, match="refused"):  # reconnect attempted once, then refused
        await transport.send(records(1, start=1), Progress())


# --- protocol errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "message"),
    [(Mode.ACK_TOO_HIGH, r"protocol error: ACK 4 from .* for a window of 3"), (Mode.GARBAGE, "protocol error")],
)
async def test_protocol_errors_close_the_connection(
    server: LumberjackServer, transport: BeatsTransport, mode: Mode, message: str
) -> None:
    server.set_mode(mode, times=1)
    with pytest.raises(TransportError, match=message):
        await transport.send(records(3), Progress())
    await transport.send(records(3), Progress())
    assert docs(records(3)) == server.documents()
    assert 2 == server.connections == transport.connects


@contextlib.asynccontextmanager
async def scripted_server(reply: bytes, *, then_close: bool = False) -> AsyncIterator[int]:
    """A raw server that reads the window's first bytes and answers ``reply`` (for replies the double never makes)."""

    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readexactly(6)
        writer.write(reply)
        await writer.drain()
        if not then_close:
            await reader.read()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.mark.parametrize(
    ("reply", "then_close", "message", "progress"),
    [
        (b"2A\x00\x00\x00\x05" + b"2A\x00\x00\x00\x03", False, "protocol error: ACK 3 .* after ACK 5", [5]),
        (b"1A\x00\x00\x00\x0a", False, "protocol error: expected an ACK frame, got bytes 31410000000a", []),
        (b"2A\x00\x00\x00\x04" + b"2A\x00", True, r"connection closed .* \(4/10 acknowledged\)", [4]),
        (b"2A\x00\x00\x00\x00", True, r"connection closed .* \(0/10 acknowledged\)", []),
    ],
)
async def test_bad_ack_sequences(reply: bytes, then_close: bool, message: str, progress: list[int]) -> None:
    async with scripted_server(reply, then_close=then_close) as port:
        transport = BeatsTransport("127.0.0.1", port, timeout=1)
        seen = Progress()
        with pytest.raises(TransportError, match=message):
            await transport.send(records(10), seen)
        assert progress == seen
        assert 1 == transport.connects


async def test_on_progress_raising_drops_the_connection(server: LumberjackServer, transport: BeatsTransport) -> None:
    def boom(_: int) -> None:
        raise RuntimeError("spool gone")

    with pytest.raises(RuntimeError, match="spool gone"):
        await transport.send(records(1), boom)
    await transport.send(records(1), Progress())
    assert 2 == transport.connects


# --- the double on its own ----------------------------------------------------------------------------------


async def test_double_answers_window_zero_and_rejects_garbage(server: LumberjackServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"2W\x00\x00\x00\x00")
    assert b"2A\x00\x00\x00\x00" == await reader.readexactly(6)
    writer.write(b"2W\x00\x00\x00\x01" + b"2J\x00\x00\x00\x01\x00\x00\x00\x02[]")
    assert b"" == await reader.read()  # a JSON array is not an event: Logstash closes the connection
    writer.close()
    await writer.wait_closed()
    assert ["J frame 1 is not a JSON object"] == server.protocol_errors
    assert [] == server.events


async def test_double_completes_a_partial_window_on_a_new_window(server: LumberjackServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"2W\x00\x00\x00\x03" + b"".join(encode_json_frames([b'{"a":1}'])) + encode_window(1))
    writer.write(b"".join(encode_json_frames([b'{"b":2}'])))
    assert b"2A\x00\x00\x00\x012A\x00\x00\x00\x01" == await reader.readexactly(12)
    writer.close()
    await writer.wait_closed()
    assert [{"a": 1}, {"b": 2}] == server.documents()


# --- large windows ------------------------------------------------------------------------------------------


def _serve_in_child(pipe: Connection) -> None:
    """The double in a child process: sends its port, waits for any message, sends back what it received."""

    async def main() -> None:
        async with LumberjackServer() as server:
            pipe.send(server.port)
            await asyncio.to_thread(pipe.recv)
            pipe.send((server.connections, server.windows, server.documents()))

    asyncio.run(main())


@contextlib.asynccontextmanager
async def server_in_child() -> AsyncIterator[tuple[int, Callable[[], Awaitable[Any]]]]:
    """Port of a double in its own process (its decoding must not compete with the client for the GIL), and a
    coroutine function that stops it and returns ``(connections, windows, documents)``."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_in_child, args=(child,), name="lumberjack-double", daemon=True)
    proc.start()

    async def receive() -> Any:
        if not await asyncio.to_thread(parent.poll, 20):
            raise TimeoutError("the double's process did not answer")
        return parent.recv()

    async def finish() -> Any:
        parent.send("stop")
        return await receive()

    try:
        yield await receive(), finish
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


async def _max_loop_stall(done: asyncio.Event) -> float:
    loop = asyncio.get_running_loop()
    worst = 0.0
    last = loop.time()
    while not done.is_set():
        await asyncio.sleep(0.001)
        now = loop.time()
        worst = max(worst, now - last - 0.001)
        last = now
    return worst


@pytest.mark.parametrize("level", [0, 3])
async def test_large_window(level: int) -> None:
    # 1 KiB records of random hex: the slow end for zlib (about 35 MB/s at level 3), so compressing the window on
    # the event loop would stall it for over 100 ms.
    batch = records(5000, size=1024)
    assert sum(map(len, batch)) > COMPRESS_IN_THREAD_BYTES
    async with server_in_child() as (port, finish):
        transport = BeatsTransport("127.0.0.1", port, timeout=10, compression_level=level)
        await transport.send(records(1), Progress())  # connect outside the measurement
        done = asyncio.Event()
        stall = asyncio.create_task(_max_loop_stall(done))
        await asyncio.sleep(0.005)  # the monitor must be running before send() takes the loop
        progress = Progress()
        cpu, started = time.thread_time(), time.perf_counter()
        await transport.send(batch, progress)
        elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu
        done.set()
        worst = await stall
        await transport.aclose()
        connections, windows, documents = await finish()
    assert [5000] == progress
    assert 1 == connections and [1, 5000] == windows
    assert docs(batch) == documents[1:]
    print(
        f"\nlevel {level}: 5000 x 1 KiB in {elapsed * 1000:.0f} ms = {5000 / elapsed:,.0f} records/s; "
        f"client event loop thread CPU {cpu * 1000:.0f} ms; longest loop stall {worst * 1000:.1f} ms"
    )
    assert worst < 0.05  # compressing this window on the loop would take over 100 ms


# --- TLS ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    try:
        from tests.doubles.tls import make_tls_files
    except ImportError:
        missing("the cryptography package (pip install cryptography)")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_tls(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> TlsFiles:
    from tests.doubles.tls import make_tls_files

    return make_tls_files(tmp_path_factory.mktemp("other-tls"), ca_name="some other CA")


async def test_tls_with_server_verification(tls: TlsFiles, other_tls: TlsFiles) -> None:
    async with LumberjackServer(ssl_context=tls.server_context()) as server:
        good = BeatsTransport("127.0.0.1", server.port, ssl=tls.client_context(), timeout=2)
        await good.send(records(3), Progress())
        await good.send(records(3, start=3), Progress())
        await good.aclose()
        named = BeatsTransport("127.0.0.1", server.port, ssl=tls.client_context(), server_hostname="localhost")
        await named.send(records(1, start=6), Progress())
        await named.aclose()
        assert docs(records(7)) == server.documents()
        assert 2 == server.connections

        for ctx, hostname, why in [
            (other_tls.client_context(), None, "certificate verify failed"),
            (tls.client_context(trust_ca=False), None, "certificate verify failed"),
            (tls.client_context(), "logstash.example", "certificate verify failed: Hostname mismatch"),
        ]:
            bad = BeatsTransport("127.0.0.1", server.port, ssl=ctx, timeout=2, server_hostname=hostname)
            with pytest.raises(TransportError, match=re.escape(why)):
                await bad.send(records(1), Progress())
        assert 7 == len(server.events)


async def test_tls_with_required_client_certificate(tls: TlsFiles) -> None:
    from tests.doubles.tls import CLIENT_COMMON_NAME

    async with LumberjackServer(ssl_context=tls.server_context(require_client_cert=True)) as server:
        anonymous = BeatsTransport("127.0.0.1", server.port, ssl=tls.client_context(), timeout=2)
        # TLS 1.3: the client finishes its handshake before the server checks the certificate, so the refusal
        # shows on the first read (an alert or EOF) rather than in connect.
        with pytest.raises(TransportError, match=r"certificate required|connection closed"):
            await anonymous.send(records(1), Progress())
        assert [] == server.events

        client = BeatsTransport("127.0.0.1", server.port, ssl=tls.client_context(client_cert=True), timeout=2)
        await client.send(records(4), Progress())
        await client.aclose()
        assert docs(records(4)) == server.documents()
        assert [CLIENT_COMMON_NAME] == server.client_subjects


# --- cross-check of the double with pylogbeat ---------------------------------------------------------------


@pytest.fixture
def pylogbeat() -> Any:
    try:
        import pylogbeat  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        missing("pylogbeat (pip install pylogbeat)")
    return pylogbeat


def _pylogbeat_session(client: Any, batches: list[list[dict[str, Any]]]) -> None:
    with client:
        for batch in batches:
            client.send(batch)


async def _run(fn: Callable[..., None], *args: Any) -> None:
    await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout=10)


async def test_pylogbeat_batches_are_accepted_and_acknowledged(server: LumberjackServer, pylogbeat: Any) -> None:
    batches = [docs(records(3)), docs(records(2, start=3)), docs(records(4, start=5))]
    server.set_mode(Mode.PARTIAL_ACK, times=1)  # pylogbeat keeps reading ACKs until the last
    client = pylogbeat.PyLogBeatClient("127.0.0.1", server.port, timeout=5)
    await _run(_pylogbeat_session, client, batches)

    assert docs(records(9)) == server.documents()
    assert 1 == server.connections
    assert [3, 2, 4] == server.windows
    assert 3 == server.compressed_frames
    # pylogbeat numbers sequences for the client's lifetime; the double ACKs the highest of each window.
    assert [*range(1, 10)] == [e.sequence for e in server.events]
    assert [(1, 2), (1, 3), (1, 5), (1, 9)] == server.acks


async def test_pylogbeat_waits_through_keepalives(server: LumberjackServer, pylogbeat: Any) -> None:
    server.set_mode(Mode.DELAYED_ACK, delay_s=0.5, keepalive_s=0.1)
    client = pylogbeat.PyLogBeatClient("127.0.0.1", server.port, timeout=5)
    await _run(_pylogbeat_session, client, [docs(records(2))])
    assert docs(records(2)) == server.documents()
    assert server.keepalives >= 3
    assert (1, 2) == server.acks[-1]


async def test_pylogbeat_over_tls(tls: TlsFiles, pylogbeat: Any) -> None:
    async with LumberjackServer(ssl_context=tls.server_context(require_client_cert=True)) as server:
        client = pylogbeat.PyLogBeatClient(
            "127.0.0.1",
            server.port,
            timeout=5,
            ssl_enable=True,
            ssl_verify=True,
            ca_certs=str(tls.ca_cert),
            certfile=str(tls.client_cert),
            keyfile=str(tls.client_key),
        )
        await _run(_pylogbeat_session, client, [docs(records(2)), docs(records(2, start=2))])
    assert docs(records(4)) == server.documents()
    assert [(1, 2), (1, 4)] == server.acks
