"""
The shipper end to end in one process: records logged through the real structlog chain go through the real spool
(on disk) and a real transport to the Logstash test doubles (Lumberjack v2 server, http input emulator), with
receivers failing, slowing down and coming back. Every test checks that no record was lost: each ``event.id``
logged arrives at least once, and every record received validates against the ECS schema.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from nodeagent.events import EventCounter, emit
from nodeagent.logs import configure
from nodeagent.ship import PRIORITY_EVENT, Transport
from nodeagent.ship.http import HttpTransport
from nodeagent.ship.lumberjack import BeatsTransport
from nodeagent.ship.shipper import Shipper
from nodeagent.ship.spool import Spool
from nodeagent.ship.tcp import TcpTransport
from tests.doubles.logstash_http import LogstashHttpInputDouble
from tests.doubles.lumberjack import LumberjackServer, Mode
from tests.ecs_schema import problems


def beats(port: int, timeout: float = 2.0) -> BeatsTransport:
    return BeatsTransport("127.0.0.1", port, timeout=timeout)


class Harness:
    """A shipper over a spool in ``directory``, with the logging chain feeding it; ``logged`` lists what was logged."""

    def __init__(self, directory: Path | None, transports: Sequence[Transport], **kw: Any) -> None:
        self.spool = Spool(str(directory) if directory else None, **kw.pop("spool", {}))
        self.spool.open()
        kw.setdefault("backoff_initial", 0.05)
        kw.setdefault("backoff_max", 0.2)
        kw.setdefault("sync_interval", 0.05)
        self.shipper = Shipper(self.spool, transports, structlog.get_logger(), **kw)
        self.stdout = io.StringIO()
        configure("debug", "json", self.stdout, hostname="node-1", sink=self.shipper.submit)

    def logged(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.getvalue().splitlines()]

    def produce(self, n: int, start: int = 0) -> None:
        log = structlog.get_logger()
        for i in range(start, start + n):
            if i % 10 == 0:
                emit(log, "link_down", f"link veth{i} down", {"interface.name": f"veth{i}"}, counter=EventCounter())
            else:
                log.info("test.record", message=f"record {i}", **{"nodeagent.test.n": i})

    async def close(self) -> None:
        await self.shipper.aclose(drain_timeout=0)
        structlog.reset_defaults()


async def until(predicate: Callable[[], bool], limit: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.02)


def check_delivered(logged: list[dict[str, Any]], received: list[dict[str, Any]]) -> int:
    """Every logged record arrived (at least once) and validates; returns the number of duplicates."""
    want = {r["event.id"] for r in logged}
    got = [r["event.id"] for r in received]
    missing = want - set(got)
    assert not missing, f"{len(missing)} of {len(want)} records lost"
    for doc in received:
        assert problems(doc) == [], doc
    return len(got) - len(set(got))


async def test_records_reach_logstash_with_their_event_id_as_document_id(tmp_path: Path) -> None:
    async with LumberjackServer() as server:
        h = Harness(tmp_path / "spool", [beats(server.port)])
        h.shipper.start()
        try:
            h.produce(300)
            await until(lambda: h.spool.pending_records == 0, 10, "the spool to drain")
            families = {f.name: f for f in h.shipper.families()}
        finally:
            await h.close()
        docs = server.documents()
    logged = h.logged()
    assert check_delivered(logged, docs) == 0
    assert all(d["@metadata"] == {"_id": d["event.id"]} for d in docs)
    assert [d["event.id"] for d in docs] == [r["event.id"] for r in logged]  # in order
    events = [d for d in docs if d.get("event.kind") == "event"]
    assert len(events) == 30 and all(d["event.action"] == "link_down" and len(d["trace.id"]) == 32 for d in events)
    shipped = families["nodeagent_log_records_shipped_total"].samples
    assert shipped == ((("127.0.0.1:" + str(server.port),), 300.0),)
    assert families["nodeagent_log_records_unacknowledged"].samples == (((), 0.0),)
    assert families["nodeagent_log_last_ack_timestamp_seconds"].samples[0][1] > 0
    assert h.shipper.window > 64  # grew after acknowledged batches


async def test_receiver_down_then_back_loses_nothing(tmp_path: Path) -> None:
    server = LumberjackServer()
    await server.start()
    port = server.port
    await server.stop()  # Logstash is down
    h = Harness(tmp_path / "spool", [beats(port, timeout=0.5)])
    h.shipper.start()
    try:
        h.produce(200)
        await until(lambda: h.shipper.failures.get(f"127.0.0.1:{port}", 0) >= 2, 10, "failed attempts")
        h.produce(200, start=200)  # events keep coming during the outage
        assert h.spool.pending_records >= 400  # and the shipper's own warning about the outage
        families = {f.name: f for f in h.shipper.families()}
        assert families["nodeagent_log_ship_up"].samples == (((f"127.0.0.1:{port}",), 0.0),)
        server.port = port
        await server.start()  # back, on the same port
        await until(lambda: h.spool.pending_records == 0, 15, "the backlog to drain")
    finally:
        await h.close()
        await server.stop()
    assert check_delivered(h.logged(), server.documents()) == 0
    warnings = [r for r in h.logged() if r.get("nodeagent.log.event") == "ship.failed"]
    assert 1 <= len(warnings) <= 2  # logged when the reason changes, not once per retry


async def test_failover_to_the_next_host(tmp_path: Path) -> None:
    async with LumberjackServer() as good:
        dead = LumberjackServer()
        await dead.start()
        dead_port = dead.port
        await dead.stop()
        h = Harness(tmp_path / "spool", [beats(dead_port, timeout=0.5), beats(good.port)])
        h.shipper.start()
        try:
            h.produce(100)
            await until(lambda: h.spool.pending_records == 0, 10, "delivery through the second host")
        finally:
            await h.close()
        assert check_delivered(h.logged(), good.documents()) == 0
        assert h.shipper.failures == {f"127.0.0.1:{dead_port}": 1}


async def test_slow_and_partial_acknowledgements(tmp_path: Path) -> None:
    async with LumberjackServer(mode=Mode.DELAYED_ACK, delay_s=0.6, keepalive_s=0.1) as server:
        h = Harness(tmp_path / "spool", [beats(server.port, timeout=0.3)])  # each wait < timeout thanks to ACK 0
        h.shipper.start()
        try:
            h.produce(150)
            await until(lambda: h.spool.pending_records == 0, 15, "slow delivery")
            server.mode = Mode.PARTIAL_ACK
            h.produce(150, start=150)
            await until(lambda: h.spool.pending_records == 0, 10, "partial delivery")
        finally:
            await h.close()
        assert server.keepalives > 0
        assert check_delivered(h.logged(), server.documents()) == 0


async def test_close_before_ack_resends_and_the_event_id_marks_duplicates(tmp_path: Path) -> None:
    async with LumberjackServer(mode=Mode.CLOSE_BEFORE_ACK) as server:
        server.set_mode(Mode.CLOSE_BEFORE_ACK, times=3)
        h = Harness(tmp_path / "spool", [beats(server.port, timeout=0.5)])
        h.shipper.start()
        try:
            h.produce(100)
            await until(lambda: h.spool.pending_records == 0, 15, "delivery after the closes")
        finally:
            await h.close()
        assert check_delivered(h.logged(), server.documents()) == 0
        assert server.unacked_events  # Logstash may have queued those: same event ids, so no duplicate documents


async def test_restart_resends_what_was_not_acknowledged(tmp_path: Path) -> None:
    async with LumberjackServer(mode=Mode.SILENT) as server:
        h = Harness(tmp_path / "spool", [beats(server.port, timeout=0.3)])
        h.shipper.start()
        h.produce(120)
        await asyncio.sleep(0.5)
        assert h.spool.pending_records >= 120
        logged = h.logged()
        await h.close()  # stop with everything unacknowledged (flushed to disk by aclose)
        server.mode = Mode.NORMAL
        again = Harness(tmp_path / "spool", [beats(server.port)])
        again.shipper.start()
        try:
            await until(lambda: again.spool.pending_records == 0, 10, "the replay after restart")
        finally:
            await again.close()
        assert check_delivered(logged, server.documents()) == 0


async def test_http_input_429_and_500_then_delivery(tmp_path: Path) -> None:
    async with LogstashHttpInputDouble() as logstash:
        logstash.script(429, 500, 429)
        h = Harness(tmp_path / "spool", [HttpTransport(logstash.url, timeout=2.0)])
        h.shipper.start()
        try:
            h.produce(100)
            await until(lambda: h.spool.pending_records == 0, 10, "delivery after 429/500")
        finally:
            await h.close()
        docs = [{k: v for k, v in e.items() if k not in ("host.ip", "@version")} for e in logstash.documents]
        assert check_delivered(h.logged(), docs) >= 0


async def test_tcp_json_lines_is_written_but_unacknowledged(tmp_path: Path) -> None:
    received: list[bytes] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            received.append(line)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    h = Harness(tmp_path / "spool", [TcpTransport("127.0.0.1", port)])
    h.shipper.start()
    try:
        h.produce(50)
        await until(lambda: len(received) == 50, 10, "50 lines")
    finally:
        await h.close()
        server.close()
        await server.wait_closed()
    assert check_delivered(h.logged(), [json.loads(line) for line in received]) == 0


async def test_a_full_spool_refuses_agent_logs_before_node_events(tmp_path: Path) -> None:
    big = b'{"message":"' + b"x" * 4000 + b'"}'
    spool = Spool(str(tmp_path / "spool"), max_bytes=1 << 20, memory_max_bytes=1 << 20)
    spool.open()
    shipper = Shipper(spool, [beats(1)], structlog.get_logger())
    refused: dict[int, int] = {}
    for i in range(600):
        for priority in (0, 1, PRIORITY_EVENT):
            if not shipper.submit(big[:-2] + str(i).encode() + b'"}', priority):
                refused[priority] = refused.get(priority, 0) + 1
    families = {f.name: f for f in shipper.families()}
    spool.close()
    assert refused[0] > refused[1] > refused.get(PRIORITY_EVENT, 0)
    dropped = dict(families["nodeagent_log_records_dropped_total"].samples)
    assert dropped[("spool_full", "log")] == refused[0] and dropped[("spool_full", "log_problem")] == refused[1]
