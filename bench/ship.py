#!/usr/bin/env python3
"""Log shipping throughput with acknowledgement: records rendered, spooled on disk, shipped over Lumberjack v2, ACKed.

The agent side is one process pinned to one CPU: the real structlog chain (``nodeagent.logs.configure`` with the
shipper's ``submit`` as its sink, output to /dev/null) renders ECS records of about 900 bytes (collector cycles under
their trace ids, 1 in ``--event-every`` a node event through ``nodeagent.events.emit``), and a ``Shipper`` with the
agent's ``logs.ship`` defaults (``ShipConfig``) moves them from an on-disk ``Spool`` (a temporary directory under
``--dir``, the real disk) through a ``BeatsTransport`` (zlib level 3, or what ``--compression`` says). The receiver
runs in a second process pinned to another CPU: ``LeanBeatsSink`` (a minimal Lumberjack v2 server that ACKs a window
only after parsing every frame of it) or, with ``--receiver double``, the test double ``tests/doubles/lumberjack.py``
(which also decodes every JSON document, at about 20 µs per event). Variants, each in a fresh agent process:

* ``live``: producer and shipper together, the producer as fast as it can (it waits while the spool's unwritten
  bytes exceed a quarter of ``memory_max_bytes``, so nothing is refused);
* ``paced``: the same at ``--rate`` records/s (default: the target, 20,000/s): the share of the core it takes;
* ``replay``: the spool filled beforehand by another process (``fill``), then shipped by a fresh one, as after a
  restart with a backlog: shipping alone, the records read back from the segment files.

Each figure is from first submit (or shipper start) to the last record acknowledged; CPU is ``time.process_time()``
of the agent process (every thread), the producer's own share ``time.thread_time()`` around its bursts. Every run is
checked against the receiver: each event id must arrive at least once (duplicates are counted), or the bench fails.

Run: ``python3 bench/ship.py --compression 3,0 --profile --output docs/performance-ship.md`` (the published run,
a few minutes), ``python3 bench/ship.py --quick`` (a few seconds); JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import json
import logging
import os
import platform
import pstats
import random
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import structlog  # noqa: E402

from bench.run import _cpu_model, _die_with_parent, memory_bytes  # noqa: E402
from bench.spool import filesystem_of  # noqa: E402
from nodeagent import __version__, logs  # noqa: E402
from nodeagent.config import ShipConfig  # noqa: E402
from nodeagent.events import EventCounter, emit  # noqa: E402
from nodeagent.scheduler import new_trace_ids  # noqa: E402
from nodeagent.ship.lumberjack import (  # noqa: E402
    FRAME_ACK,
    FRAME_COMPRESSED,
    FRAME_JSON,
    FRAME_WINDOW,
    VERSION,
    encode_compressed,
    encode_json_frames,
)
from nodeagent.ship.shipper import BATCH_BYTES, Shipper, build_transports  # noqa: E402
from nodeagent.ship.spool import HEADER_SIZE, Spool  # noqa: E402

TARGET_EVENTS_PER_S = 20_000
HOSTNAME = "gpu-node-0042"  # fixed, so record sizes do not depend on the bench host's name
SHIPPED_PREFIX = b'{"@metadata":{"_id":"'  # nodeagent.logs.shipped_copy: the event id comes next
COLLECTORS = ("host", "cgroups", "network", "tcpstat", "gpu", "runtimes")
RECORDS_PER_CYCLE = 8  # records logged under one trace id (one collection cycle)
CHUNK = 200  # records per producer burst (the loop runs other tasks between bursts)
_U32 = struct.Struct(">I")
_J_HEADER = struct.Struct(">II")  # a J frame after version and type: sequence, payload length
_ACK = struct.Struct(">BBI")
_ID_KEY = b'"event.id":"'


class BenchFailure(Exception):
    """The bench could not measure, or a record was lost."""


def pin(cpu: int) -> list[int]:
    """Pin this process (its main thread, and so every thread it starts later) to ``cpu``."""
    os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------------------------------
# The receiver (its own process)


@dataclass
class ReceiverCounts:
    """What the receiver got since the last dump."""

    ids: list[bytes] = field(default_factory=list)  # event ids in arrival order, repeats kept
    windows: int = 0  # windows acknowledged
    max_window: int = 0
    connections: int = 0
    protocol_errors: list[str] = field(default_factory=list)


class LeanBeatsSink(asyncio.Protocol):
    """
    A Lumberjack v2 acking sink, leaner than the test double (whose coroutine per frame and JSON decode per event
    cost about 20 µs per event, as much as the agent's whole shipping side): frames are parsed straight from the
    receive buffer, each J frame's event id is found by a byte search instead of a JSON decode, and a window's
    highest sequence is ACKed only once every frame of the window has been parsed, as logstash-input-beats ACKs a
    window once its last event is queued. W, C (zlib, holding J frames) and J frames of protocol version 2; anything
    else is a protocol error that closes the connection.
    """

    def __init__(self, counts: ReceiverCounts) -> None:
        self.counts = counts
        self.buf = bytearray()
        self.window = 0  # records announced by the last W frame; 0 between windows
        self.seen = 0
        self.highest = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counts.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            used = self._frames(self.buf)
        except (ValueError, zlib.error) as exc:
            self.counts.protocol_errors.append(str(exc))
            assert self.transport is not None
            self.transport.abort()
            return
        del self.buf[:used]

    def _frames(self, data: bytes | bytearray) -> int:
        """Parse the complete frames at the start of ``data``; returns how many bytes they took."""
        pos, n = 0, len(data)
        while n - pos >= 2:
            version, kind = data[pos], data[pos + 1]
            if version != VERSION:
                raise ValueError(f"version byte {version:#04x}, not 0x32")
            if kind == FRAME_JSON:
                if n - pos < 10:
                    break
                seq, length = _J_HEADER.unpack_from(data, pos + 2)
                end = pos + 10 + length
                if end > n:
                    break
                self._event(seq, data, pos + 10, end)
                pos = end
            elif kind in (FRAME_COMPRESSED, FRAME_WINDOW):
                if n - pos < 6:
                    break
                value = _U32.unpack_from(data, pos + 2)[0]
                if kind == FRAME_WINDOW:
                    self.window, self.seen, self.highest = value, 0, 0
                    pos += 6
                    if value == 0:
                        self._ack(0)
                    continue
                end = pos + 6 + value
                if end > n:
                    break
                plain = zlib.decompress(memoryview(data)[pos + 6 : end])
                if self._frames(plain) != len(plain):
                    raise ValueError("C frame ends inside a frame")
                pos = end
            else:
                raise ValueError(f"unknown frame type {kind:#04x}")
        return pos

    def _event(self, seq: int, data: bytes | bytearray, start: int, end: int) -> None:
        if not self.window:
            raise ValueError(f"J frame {seq} outside a window")
        at = data.find(_ID_KEY, start, end)
        if data[start] != 0x7B or data[end - 1] != 0x7D or at < 0:  # a JSON object with an event id
            raise ValueError(f"J frame {seq} is not a nodeagent record: {bytes(data[start : start + 60])!r}")
        at += len(_ID_KEY)
        self.counts.ids.append(bytes(data[at : at + 36]))
        self.seen += 1
        self.highest = max(self.highest, seq)
        if self.seen == self.window:
            self._ack(self.highest)
            self.counts.windows += 1
            self.counts.max_window = max(self.counts.max_window, self.window)
            self.window = 0

    def _ack(self, seq: int) -> None:
        assert self.transport is not None
        self.transport.write(_ACK.pack(VERSION, FRAME_ACK, seq))


async def serve_receiver(cpu: int, kind: str) -> None:
    """
    The receiver (``lean``: ``LeanBeatsSink``; ``double``: ``tests/doubles/lumberjack.py``) on loopback. On stdin,
    ``dump PATH`` writes the event ids received since the last dump to PATH (arrival order, repeats kept) and answers
    one JSON line of counters; ``quit`` or EOF stops it.
    """
    from tests.doubles.lumberjack import LumberjackServer

    cpus = pin(cpu)
    loop = asyncio.get_running_loop()
    counts = ReceiverCounts()
    double: LumberjackServer | None = None
    server: asyncio.Server | None = None
    if kind == "double":
        double = await LumberjackServer().start()
        port = double.port
    else:
        server = await loop.create_server(lambda: LeanBeatsSink(counts), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

    def take() -> None:  # the double keeps every decoded event: keep only the ids (a few MB for 200k)
        if double is not None:
            events, double.events = double.events, []
            counts.ids.extend(str(e.event.get("event.id", "")).encode() for e in events)

    async def trim() -> None:
        while True:
            await asyncio.sleep(0.1)
            take()

    trimmer = asyncio.create_task(trim())
    print(json.dumps({"port": port, "cpus": cpus}), flush=True)
    cpu0 = time.process_time()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.startswith("dump "):
            break
        take()
        if double is not None:
            counts.windows, counts.max_window = double.batches, max(double.windows, default=0)
            counts.connections, counts.protocol_errors = double.connections, double.protocol_errors
        Path(line[5:].strip()).write_bytes(b"\n".join(counts.ids))  # noqa: ASYNC240 - between runs
        reply = {
            "events": len(counts.ids),
            "cpu_s": time.process_time() - cpu0,
            "windows": counts.windows,
            "max_window": counts.max_window,
            "connections": counts.connections,
            "protocol_errors": counts.protocol_errors[-3:],
        }
        counts.ids.clear()
        counts.windows = counts.max_window = counts.connections = 0
        counts.protocol_errors.clear()
        if double is not None:
            double.batches, double.connections, double.events, double.unacked_events = 0, 0, [], []
            double.windows.clear()
            double.acks.clear()
        cpu0 = time.process_time()
        print(json.dumps(reply), flush=True)
    trimmer.cancel()
    if double is not None:
        await double.stop()
    if server is not None:
        server.close()


# ---------------------------------------------------------------------------------------------------
# The agent side (its own process, one CPU)


class AckWatchSpool(Spool):
    """A ``Spool`` that notes the moment its acknowledged count reaches ``target`` (wall, process and thread CPU)."""

    target = 0
    done: asyncio.Event | None = None
    marks: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def ack(self, n: int) -> None:
        super().ack(n)  # called by the shipper on the event loop thread
        if self.done is not None and self.acknowledged >= self.target and not self.done.is_set():
            self.marks = (time.perf_counter(), time.process_time(), time.thread_time())
            self.done.set()


class Producer:
    """Collector-cycle records and node events through the real structlog chain, in bursts on the event loop."""

    def __init__(self, event_every: int, seed: int = 7) -> None:
        self.event_every = event_every
        self.rng = random.Random(seed)
        self.counter = EventCounter()
        self.ids: list[bytes] = []
        self.cpu_s = 0.0  # the loop thread's CPU inside the bursts: logging chain + submit
        self.waits = 0
        self.wait_s = 0.0
        self.workloads = [self._workload(i) for i in range(16)]

    def _workload(self, i: int) -> dict[str, Any]:
        rng = self.rng
        pod_uid = f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-8{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}"  # noqa: E501
        container_id = f"{rng.getrandbits(256):064x}"
        return {
            "nodeagent.workload.kind": "container",
            "nodeagent.workload.id": container_id,
            "container.id": container_id,
            "container.name": f"trainer-{i}",
            "container.image.name": "registry.example.internal/ml/trainer:2024.06.1",
            "container.runtime": "containerd",
            "orchestrator.type": "kubernetes",
            "orchestrator.namespace": "ml-batch",
            "orchestrator.resource.type": "pod",
            "orchestrator.resource.name": f"trainer-{i}-7f9c6d",
            "orchestrator.resource.id": pod_uid,
            "kubernetes.pod.uid": pod_uid,
            "kubernetes.pod.name": f"trainer-{i}-7f9c6d",
            "kubernetes.namespace": "ml-batch",
            "kubernetes.container.name": f"trainer-{i}",
        }

    def sink(self, submit: Callable[[bytes, int], bool]) -> Callable[[bytes, int], bool]:
        """``submit`` that also keeps each record's event id (a slice of the shipped copy; about 0.4 µs)."""
        ids = self.ids
        start = len(SHIPPED_PREFIX)

        def record_and_submit(record: bytes, priority: int) -> bool:
            if not record.startswith(SHIPPED_PREFIX):
                raise BenchFailure(f"unexpected shipped record: {record[:80]!r}")
            ids.append(record[start : start + 36])
            return submit(record, priority)

        return record_and_submit

    def burst(self, log: Any, first: int, end: int) -> None:
        rng = self.rng
        every = self.event_every
        c0 = time.thread_time()
        for j in range(first, end):
            if j % RECORDS_PER_CYCLE == 0:  # a new collection cycle: what the scheduler binds
                trace_id, span_id = new_trace_ids()
                structlog.contextvars.bind_contextvars(
                    **{
                        "trace.id": trace_id,
                        "span.id": span_id,
                        "nodeagent.collector": COLLECTORS[j // RECORDS_PER_CYCLE % len(COLLECTORS)],
                    }
                )
            if every and j % every == every - 1:
                w = self.workloads[j % len(self.workloads)]
                action = "container_start" if j % 2 else "container_stop"
                verb = "started" if j % 2 else "stopped"
                emit(
                    log,
                    action,
                    f"container {w['container.name']} of pod {w['orchestrator.namespace']}/"
                    f"{w['orchestrator.resource.name']} {verb}",
                    w,
                    counter=self.counter,
                )
            else:
                log.info(
                    "collector.cycle",
                    outcome="ok",
                    duration_seconds=round(rng.uniform(0.0005, 0.2), 6),
                    series=rng.randrange(40, 6000),
                )
        self.cpu_s += time.thread_time() - c0

    async def run(self, log: Any, spool: Spool, n: int, rate: float, backpressure: bool) -> None:
        """Log ``n`` records in bursts of ``CHUNK``; at ``rate`` records/s when set, else as fast as possible."""
        limit = spool.memory_max_bytes // 4
        start = time.perf_counter()
        for first in range(0, n, CHUNK):
            delay = start + first / rate - time.perf_counter() if rate else 0.0
            await asyncio.sleep(max(0.0, delay))  # at least one turn of the loop for the shipper's tasks
            while backpressure and spool.memory_bytes > limit:
                w0 = time.perf_counter()
                await asyncio.sleep(0.005)
                self.waits += 1
                self.wait_s += time.perf_counter() - w0
            self.burst(log, first, min(n, first + CHUNK))
        structlog.contextvars.clear_contextvars()


def summarize_profile(profiles: list[cProfile.Profile], n: int, top: int = 25) -> dict[str, Any]:
    """The profiles' own time by owner and their top functions, per record (microseconds)."""
    stats = pstats.Stats(profiles[0], stream=StringIO())
    for more in profiles[1:]:
        stats.add(more)
    entries = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, ncalls, tottime, cumtime, callers)}
    total = sum(tt for _cc, _nc, tt, _ct, _callers in entries.values()) or 1.0
    from bench.gpu import _short  # a path relative to the repository or the standard library

    rows = [
        {
            "function": name if file == "~" else f"{_short(file)}:{line} {name}",
            "calls_per_record": nc / n,
            "own_us": tt / n * 1e6,
            "own_pct": tt / total * 100,
            "cum_us": ct / n * 1e6,
        }
        for (file, line, name), (_cc, nc, tt, ct, _callers) in sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]
    ]
    groups: dict[str, float] = {}
    for (file, _line, name), (_cc, _nc, tt, _ct, _callers) in entries.items():
        g = profile_group(file, name)
        groups[g] = groups.get(g, 0.0) + tt
    return {
        "records": n,
        "own_us_per_record": total / n * 1e6,
        "top": rows,
        "groups": {g: v / n * 1e6 for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
    }


class WorkerProfiles:
    """
    An executor for ``asyncio.to_thread`` whose threads each run a cProfile of their own (a profile hooks only the
    thread that enables it): the spool's flushes, disk reads and zlib of large windows happen there.
    """

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self.executor = ThreadPoolExecutor(initializer=self._start)

    def _start(self) -> None:
        profile = cProfile.Profile(time.thread_time)
        self.profiles.append(profile)  # list.append is atomic
        profile.enable()

    def stop(self) -> list[cProfile.Profile]:
        """Let the threads end (their profiles with them); the profiles, to read."""
        self.executor.shutdown(wait=True)
        return self.profiles


def profile_group(file: str, name: str) -> str:
    """Who owns a function's own time."""
    if file == "~":
        if "zlib" in name:
            return "zlib (compress, crc32)"
        if any(k in name for k in ("pread", "pwrite", "fdatasync", "fsync", "posix.open", "posix.close", "replace")):
            return "file I/O (pread, pwrite, fdatasync, cursor)"
        if "json" in name.lower() or "encode" in name:
            return "json encoder (C)"
        if any(k in name for k in ("urandom", "token_hex", "randbits", "time_ns")):
            return "random ids and clocks (os.urandom, secrets, time)"
        if any(k in name for k in ("send", "recv", "write", "select", "epoll", "poll", "sock")):
            return "sockets, self-pipe, epoll (syscalls)"
        return "builtins (str, dict, list, format, ...)"
    for part, label in (
        ("structlog", "structlog (processors, bound logger, contextvars)"),
        ("nodeagent/logs.py", "nodeagent/logs.py (ECS chain, render, shipped copy)"),
        ("nodeagent/events.py", "nodeagent/events.py (emit, event ids)"),
        ("nodeagent/scheduler.py", "nodeagent/scheduler.py (trace ids)"),
        ("nodeagent/ship/spool.py", "nodeagent/ship/spool.py (append, peek, ack)"),
        ("nodeagent/ship/shipper.py", "nodeagent/ship/shipper.py (submit, send loop)"),
        ("nodeagent/ship/lumberjack.py", "nodeagent/ship/lumberjack.py (frames, ACKs)"),
        ("json", "json (Python side)"),
        ("bench/ship.py", "the bench's producer (field values)"),
        ("random.py", "the bench's producer (field values)"),
        ("asyncio", "asyncio (tasks, streams, call_soon_threadsafe, to_thread)"),
        ("selectors", "asyncio (tasks, streams, call_soon_threadsafe, to_thread)"),
        ("threading", "threads (locks, to_thread hand-off)"),
        ("concurrent", "threads (locks, to_thread hand-off)"),
    ):
        if part in file:
            return label
    return "other"


async def agent(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process: ``live`` (produce and ship), ``fill`` (produce only), ``replay`` (ship only)."""
    cpus = pin(args.cpu)
    rss_start = memory_bytes(os.getpid())[0]
    cfg = ShipConfig(
        hosts=(f"127.0.0.1:{args.port}",),
        spool_dir=args.spool_dir,
        spool_max_bytes=args.spool_max_bytes,
        compression_level=args.compression,
    )
    spool = AckWatchSpool(cfg.spool_dir, cfg.spool_max_bytes, cfg.memory_max_bytes)
    t0 = time.perf_counter()
    await asyncio.to_thread(spool.open)
    open_s = time.perf_counter() - t0
    shipper = Shipper(
        spool,
        build_transports(cfg),
        structlog.get_logger().bind(**{"event.dataset": "nodeagent.ship"}),
        batch_max=cfg.batch_max,
        backoff_initial=cfg.backoff_initial,
        backoff_max=cfg.backoff_max,
        sync_interval=cfg.sync_interval,
    )
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - the agent's stdout; closed at the end
    producer = Producer(args.event_every)
    logs.configure("info", "json", stream=devnull, hostname=HOSTNAME, sink=producer.sink(shipper.submit))
    log = structlog.get_logger()
    out: dict[str, Any] = {
        "mode": args.mode,
        "cpus": cpus,
        "compression": args.compression,
        "batch_max": cfg.batch_max,
        "sync_interval_s": cfg.sync_interval,
        "memory_max_bytes": cfg.memory_max_bytes,
        "rss_start_bytes": rss_start,
    }
    n = args.records

    if args.mode == "fill":  # produce only: the shipper is not started, so submit only appends
        # The caller's side alone: the same bursts into a logger that filters every record out.
        quiet = structlog.wrap_logger(
            structlog.PrintLogger(devnull), wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL)
        )
        caller = Producer(args.event_every)
        caller.burst(quiet, 0, min(n, 20_000))
        out["caller_us_per_record"] = caller.cpu_s / min(n, 20_000) * 1e6
        flush_s = 0.0
        for first in range(0, n, CHUNK):
            producer.burst(log, first, min(n, first + CHUNK))
            if spool.memory_bytes > spool.memory_max_bytes // 4:
                f0 = time.perf_counter()
                spool.flush()
                flush_s += time.perf_counter() - f0
        spool.flush()
        out["record_bytes_mean"] = spool.pending_bytes / n - HEADER_SIZE
        sample = spool.peek(cfg.batch_max, BATCH_BYTES)
        plain = sum(map(len, encode_json_frames(sample)))
        out["compression_ratio"] = {
            str(level): plain / len(encode_compressed(sample, level)[1]) for level in range(1, 10, 2)
        }
        spool.close()
        out["producer_us_per_record"] = producer.cpu_s / n * 1e6
        out["flush_s"] = flush_s
    else:
        if args.mode == "replay":
            n = spool.pending_records
            if n != args.records or not spool.backlog_on_disk:
                raise BenchFailure(f"replay: the spool recovered {n} records (expected {args.records}) ")
            out["open_s"] = open_s
            out["spool_bytes"] = spool.pending_bytes
        spool.target = n
        spool.done = asyncio.Event()
        profiler = cProfile.Profile(time.thread_time) if args.profile_out else None
        workers = WorkerProfiles() if profiler is not None else None
        if workers is not None:
            asyncio.get_running_loop().set_default_executor(workers.executor)
        w0, c0, tc0 = time.perf_counter(), time.process_time(), time.thread_time()
        if profiler is not None:
            profiler.enable()
        shipper.start()
        if args.mode == "live":
            await producer.run(log, spool, n, args.rate, backpressure=True)
            out["produced_s"] = time.perf_counter() - w0
        try:
            await asyncio.wait_for(spool.done.wait(), max(60.0, n / 1000))
        except TimeoutError:
            raise BenchFailure(
                f"{args.mode}: only {spool.acknowledged} of {n} records acknowledged; failures {shipper.failures}"
            ) from None
        if profiler is not None:
            profiler.disable()
        w1, c1, tc1 = spool.marks
        out["latency_mean_ms"] = shipper.ack_seconds / max(shipper.batches, 1) * 1e3
        await shipper.aclose()
        if profiler is not None and workers is not None:
            out["profile"] = summarize_profile([profiler, *workers.stop()], n)
        wall, cpu, loop_cpu = w1 - w0, c1 - c0, tc1 - tc0
        out.update(
            {
                "records": n,
                "wall_s": wall,
                "events_per_s": n / wall,
                "cpu_s": cpu,
                "cpu_us_per_event": cpu / n * 1e6,
                "core_share": cpu / wall,
                "loop_thread_cpu_s": loop_cpu,
                "worker_threads_cpu_s": cpu - loop_cpu,
                "producer_us_per_record": producer.cpu_s / n * 1e6 if args.mode == "live" else 0.0,
                "shipping_us_per_event": (cpu - producer.cpu_s) / n * 1e6,
                "producer_waits": producer.waits,
                "producer_wait_s": producer.wait_s,
                "batches": shipper.batches,
                "window_final": shipper.window,
                "records_per_batch": n / max(shipper.batches, 1),
                "failures": sum(shipper.failures.values()),
                "connects": sum(getattr(t, "connects", 0) for t in shipper.transports),
                "dropped": sum(spool.dropped.values()),
                "write_errors": spool.write_errors,
            }
        )
    out["rss_peak_bytes"] = memory_bytes(os.getpid())[1]
    if producer.ids:
        Path(args.ids).write_bytes(b"\n".join(producer.ids))  # noqa: ASYNC240 - after the measurement
    devnull.close()
    if out.get("dropped"):
        raise BenchFailure(f"the spool refused {out['dropped']} records: {spool.dropped}")
    return out


# ---------------------------------------------------------------------------------------------------
# The harness


class Receiver:
    """The receiver process: started pinned to ``cpu``, asked for the ids it got after each variant."""

    def __init__(self, cpu: int, kind: str) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "receiver", "--cpu", str(cpu)]
        self.proc = subprocess.Popen(
            [*cmd, "--receiver", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,  # the harness has no threads
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        hello = json.loads(self.stdout.readline() or "null")
        if not hello:
            raise BenchFailure("the receiver did not start")
        self.port: int = hello["port"]
        self.cpus: list[int] = hello["cpus"]

    def collect(self, path: Path) -> dict[str, Any]:
        self.stdin.write(f"dump {path}\n")
        self.stdin.flush()
        reply = self.stdout.readline()
        if not reply:
            raise BenchFailure("the receiver died")
        result: dict[str, Any] = json.loads(reply)
        return result

    def close(self) -> None:
        try:
            self.stdin.write("quit\n")
            self.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def check_delivery(expected_path: Path, received_path: Path) -> dict[str, int]:
    """Every id sent arrived at least once: raises ``BenchFailure`` naming the missing ones otherwise."""
    expected = expected_path.read_bytes().split(b"\n")
    received = Counter(received_path.read_bytes().split(b"\n"))
    wanted = set(expected)
    if len(wanted) != len(expected):
        raise BenchFailure(f"the producer drew {len(expected) - len(wanted)} duplicate event ids")
    missing = [i for i in expected if i not in received]
    if missing:
        raise BenchFailure(
            f"{len(missing)} of {len(expected)} records never reached the receiver (first: {missing[:3]!r})"
        )
    return {
        "delivered": len(wanted),
        "duplicates": sum(c - 1 for i, c in received.items() if i in wanted),
        "unexpected": sum(c for i, c in received.items() if i not in wanted),
    }


class Harness:
    def __init__(self, args: argparse.Namespace, base: Path, receiver: Receiver) -> None:
        self.args = args
        self.base = base
        self.receiver = receiver
        self.serial = 0

    def agent(self, mode: str, level: int, spool: Path, rate: float = 0.0, profile: bool = False) -> dict[str, Any]:
        a = self.args
        self.serial += 1
        ids = self.base / f"ids-{self.serial}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "agent", "--mode", mode]
        cmd += ["--cpu", str(a.agent_cpu), "--port", str(self.receiver.port), "--spool-dir", str(spool)]
        cmd += ["--records", str(a.records), "--compression", str(level), "--rate", str(rate)]
        cmd += ["--event-every", str(a.event_every), "--spool-max-bytes", str(a.spool_max_bytes), "--ids", str(ids)]
        if profile:
            cmd += ["--profile-out", "yes"]
        timeout = 120 + a.records / 500
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=_die_with_parent, check=False
        )
        if proc.returncode != 0:
            raise BenchFailure(f"agent process ({mode}, level {level}) failed:\n{proc.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        if ids.exists():
            result["ids_path"] = str(ids)
        return result

    def variant(self, name: str, level: int, profile: bool = False) -> dict[str, Any]:
        spool = self.base / f"spool-{name}-{level}-{self.serial}"
        received = self.base / f"received-{self.serial}"
        fill: dict[str, Any] | None = None
        if name == "replay":
            fill = self.agent("fill", level, spool)
            got = self.receiver.collect(received)  # nothing is shipped while filling
            if got["events"]:
                raise BenchFailure(f"the receiver got {got['events']} events while the spool was being filled")
            expected = Path(fill["ids_path"])
            run = self.agent("replay", level, spool, profile=profile)
        else:
            rate = self.args.rate if name == "paced" else 0.0
            run = self.agent("live", level, spool, rate=rate, profile=profile)
            expected = Path(run["ids_path"])
        got = self.receiver.collect(received)
        run["delivery"] = check_delivery(expected, received)
        run["receiver"] = got
        run["receiver_cpu_us_per_event"] = got["cpu_s"] / run["records"] * 1e6
        run["variant"] = name
        run["target_ratio"] = run["events_per_s"] / TARGET_EVENTS_PER_S
        if fill is not None:
            keys = ("producer_us_per_record", "caller_us_per_record", "record_bytes_mean", "compression_ratio")
            run["fill"] = {k: fill[k] for k in keys}
        for path in (spool, received, expected):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return run


def json_dumps_us() -> float:
    """A calibration of this machine's speed: microseconds per ``json.dumps`` of one record-sized dict (best of 5)."""
    doc = {f"field.number.{i}": f"value-{i:04d}-" + "x" * 12 for i in range(25)} | {"n": 12345, "f": 0.125}
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(2000):
            json.dumps(doc, separators=(",", ":"))
        best = min(best, (time.perf_counter() - t0) / 2000)
    return best * 1e6


def machine_facts(base: Path) -> dict[str, Any]:
    uname = platform.uname()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": f"{uname.system} {uname.release} ({uname.machine})",
        "python": f"{platform.python_version()} ({sys.executable})",
        "structlog": structlog.__version__ if hasattr(structlog, "__version__") else "unknown",
        "nodeagent": __version__,
        "spool_filesystem": filesystem_of(str(base)),
        "spool_parent": str(base.parent),
        "json_dumps_us": json_dumps_us(),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="na-bench-ship-", dir=args.dir))
    receiver: Receiver | None = None
    try:
        receiver = Receiver(args.receiver_cpu, args.receiver)
        harness = Harness(args, base, receiver)
        runs = []
        for level in args.compression:
            for name in ("live", "paced", "replay"):
                if name == "paced" and not args.rate:
                    continue
                runs.append(harness.variant(name, level))
        profiles = {}
        if args.profile:
            level = args.compression[0]
            for name in ("live", "replay"):
                profiles[name] = harness.variant(name, level, profile=True)["profile"]
        facts = machine_facts(base)
        receiver_cpus = receiver.cpus
    finally:
        if receiver is not None:
            receiver.close()
        shutil.rmtree(base, ignore_errors=True)
    live = next(x for x in runs if x["variant"] == "live")
    replay = next(x for x in runs if x["variant"] == "replay")
    return {
        "quick": args.quick,
        "records": args.records,
        "event_every": args.event_every,
        "rate": args.rate,
        "agent_cpu": args.agent_cpu,
        "receiver_cpus": receiver_cpus,
        "machine": facts,
        "receiver": args.receiver,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        # Shipping alone (a backlog on disk) and end to end (rendering too, on the same core), first zlib level.
        "shipping_events_per_s": replay["events_per_s"],
        "end_to_end_events_per_s": live["events_per_s"],
        "target_met_shipping": replay["events_per_s"] >= TARGET_EVENTS_PER_S,
        "target_met_end_to_end": live["events_per_s"] >= TARGET_EVENTS_PER_S,
        "runs": runs,
        "profiles": profiles,
    }


# ---------------------------------------------------------------------------------------------------
# The report


def _verdict(value: float) -> str:
    met = "met" if value >= TARGET_EVENTS_PER_S else "**not met**"
    return f"{value / TARGET_EVENTS_PER_S:.2f} x the target: {met}"


def report(r: dict[str, Any], command: str) -> str:
    m = r["machine"]
    runs = r["runs"]
    first = runs[0]
    live = next(x for x in runs if x["variant"] == "live")
    fill = next((x["fill"] for x in runs if "fill" in x), None)
    mib = 1 << 20
    receiver = "`LeanBeatsSink`" if r["receiver"] == "lean" else "the test double `tests/doubles/lumberjack.py`"
    lines = [
        "# Log shipping: events per second with acknowledgement, on one core",
        "",
        f"Generated by `{command}`. Compare reports from the same machine only. For scale: CPython's `json.dumps` "
        f"of a 27-key dict took {m['json_dumps_us']:.1f} µs on this machine during the run.",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPUs (`nproc`): {m['nproc']}; CPU model: {m['cpu_model']}",
        f"- kernel: {m['kernel']}",
        f"- Python: {m['python']}; structlog {m['structlog']}; nodeagent {m['nodeagent']}",
        f"- agent process pinned to CPU {r['agent_cpu']} (`os.sched_setaffinity`, every thread of it); receiver "
        f"{receiver} pinned to CPU {', '.join(map(str, r['receiver_cpus']))}",
        f"- spool: a temporary directory under `{m['spool_parent']}` ({m['spool_filesystem']}); `logs.ship` "
        f"defaults: `batch_max` {first['batch_max']}, `sync_interval` {first['sync_interval_s']:g} s, "
        f"`memory_max_bytes` {first['memory_max_bytes'] // mib} MiB",
        f"- records per run: {r['records']:,}; 1 in {r['event_every']} a node event",
        "",
        f"**Target** (the issue): >= {r['target_events_per_s']:,} events/s shipped with acknowledgement on one core.",
        "",
        f"- Shipping alone (`replay`, zlib {first['compression']}): **{r['shipping_events_per_s']:,.0f} events/s**, "
        f"{_verdict(r['shipping_events_per_s'])}.",
        f"- End to end (`live`, zlib {first['compression']}: the same core also renders every record through the "
        f"logging chain): **{r['end_to_end_events_per_s']:,.0f} events/s**, {_verdict(r['end_to_end_events_per_s'])}."
        f" Rendering costs {live['producer_us_per_record']:.1f} µs of the {live['cpu_us_per_event']:.1f} µs CPU per "
        f"event; shipping {live['shipping_us_per_event']:.1f} µs.",
        "",
        "| variant | zlib | events/s | x target | CPU µs / event | of which producer | shipping | "
        "core used | final window | records / batch | peak RSS | duplicates |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in runs:
        producer = f"{x['producer_us_per_record']:.1f}" if x["variant"] != "replay" else "-"
        lines.append(
            f"| {x['variant']} | {x['compression']} | {x['events_per_s']:,.0f} | {x['target_ratio']:.2f} | "
            f"{x['cpu_us_per_event']:.1f} | {producer} | {x['shipping_us_per_event']:.1f} | "
            f"{x['core_share'] * 100:.0f} % | {x['window_final']} | {x['records_per_batch']:.0f} | "
            f"{x['rss_peak_bytes'] / mib:.0f} MiB | {x['delivery']['duplicates']} |"
        )
    lines += ["", "Per variant:", ""]
    for x in runs:
        desc = f"- **{x['variant']}, zlib {x['compression']}**: {x['records']:,} records in {x['wall_s']:.2f} s"
        if x["variant"] == "replay":
            desc += (
                f"; opening (recovering) the spool, {x['spool_bytes'] / mib:.0f} MiB of segment files, took "
                f"{x['open_s'] * 1e3:.0f} ms before that"
            )
        else:
            desc += (
                f"; the producer was done after {x['produced_s']:.2f} s (the last acknowledgement came "
                f"{(x['wall_s'] - x['produced_s']) * 1e3:.0f} ms later) and waited {x['producer_wait_s']:.2f} s "
                f"({x['producer_waits']} times) for the spool's unwritten bytes to drop under a quarter of "
                "`memory_max_bytes`"
            )
        desc += (
            f". CPU: loop thread {x['loop_thread_cpu_s']:.2f} s, worker threads (spool flush, disk reads, zlib of "
            f"windows >= 64 KiB) {x['worker_threads_cpu_s']:.2f} s. {x['batches']} batches, mean time from send to "
            f"ACK {x['latency_mean_ms']:.1f} ms; {x['connects']} connection(s), {x['failures']} failed batches. "
            f"RSS {x['rss_start_bytes'] / mib:.0f} MiB after imports, peak {x['rss_peak_bytes'] / mib:.0f} MiB. "
            f"Receiver: {x['receiver_cpu_us_per_event']:.1f} µs CPU per event "
            f"({x['receiver_cpu_us_per_event'] * x['events_per_s'] / 1e4:.0f} % of its core at this rate); "
            f"{x['delivery']['delivered']:,} ids, every one received, {x['delivery']['duplicates']} duplicates."
        )
        lines.append(desc)
    if fill is not None:
        ratios = ", ".join(f"level {k}: {v:.1f}" for k, v in fill["compression_ratio"].items())
        lines += [
            "",
            f"Records: {fill['record_bytes_mean']:.0f} bytes on average as shipped (ECS JSON with `@metadata._id`; "
            "a record with no fields of its own is about 670 of them). The producer alone (the `fill` "
            "process: logging chain + `submit` into the spool, nothing shipping) costs "
            f"{fill['producer_us_per_record']:.1f} µs CPU per record, of which {fill['caller_us_per_record']:.1f} µs "
            "is the caller's side (the bench's loop and field values, binding a cycle's trace ids, `emit` building "
            "its record: the same bursts into a logger that filters every record out): the logging chain itself "
            f"costs {fill['producer_us_per_record'] - fill['caller_us_per_record']:.1f} µs. zlib ratio of one "
            f"{first['batch_max']}-record window: {ratios}.",
        ]
    lines += [
        "",
        "## What each figure means",
        "",
        "- **events/s**: records / wall time from the first `submit` (for `replay`: from `Shipper.start()` on a "
        "recovered spool) to the acknowledgement that brought `Spool.acknowledged` to the record count. "
        f"**x target**: that / {TARGET_EVENTS_PER_S:,}.",
        "- **CPU µs / event**: `time.process_time()` of the agent process over the same interval (every thread: the "
        "event loop, the spool's flush thread, disk reads of a backlog and zlib of windows of 64 KiB and more in "
        "worker threads) / records. **of which producer**: `time.thread_time()` of the loop thread inside the "
        "producer's bursts: drawing the field values, structlog's processors, the ECS JSON, the shipped copy, "
        "`Shipper.submit` (through a wrapper that keeps the record's event id, about 0.4 µs) and the write to "
        "/dev/null standing in for stdout. **shipping**: the rest (peek, frames, zlib, socket, ACKs, ack, flush "
        "with fdatasync, cursor). **core used**: CPU seconds / wall seconds of the agent process.",
        f"- **live**: producer and shipper in one process on one core, the producer as fast as it can in bursts of "
        f"{CHUNK} records with a turn of the event loop between bursts (as between collector cycles), "
        f"{RECORDS_PER_CYCLE} records per trace id. **paced**: the same at {r['rate']:,.0f} records/s; when it keeps "
        "up, its `core used` is the share of one core the agent needs at that rate. **replay**: another process "
        "filled the spool (not timed), then a fresh process opened it (the recovery time is given apart) and "
        "shipped it: shipping alone, read back from the segment files (page cache warm).",
        "- **final window / records per batch**: the shipper's window after the last batch (it grows by half after "
        "each acknowledged batch, up to `batch_max`) and the mean batch size. One window is in flight at a time, so "
        "the receiver's time per window adds to the agent's.",
        "- **peak RSS**: the agent process's `VmHWM` at the end (the spool holds up to `memory_max_bytes` of "
        "records in memory).",
        "- **duplicates**: ids the receiver got more than once (delivery is at least once; none are expected "
        "without failures). Every run checks that each id the producer sent was received; a missing one fails "
        "the bench.",
        "",
        "The receiver runs in its own process on its own CPU. `LeanBeatsSink` parses W, C (zlib) and J frames "
        "straight from its receive buffer, takes each record's `event.id` by a byte search, and ACKs a window's "
        "highest sequence only after parsing its last frame, as Logstash's beats input ACKs a window once its last "
        "event is queued; it does not decode the JSON, queue or index. The project's test double "
        "(`--receiver double`) also decodes every document and runs a coroutine per frame, 4 to 6 times the lean "
        "sink's CPU per event when this bench was written (about 20 µs), enough to make the replay variant measure "
        "the double. Its CPU per event is shown for every run so that a receiver-bound "
        "run can be told apart.",
        "",
        "Nothing of node_exporter is comparable: it ships no logs or events. Filebeat, the reference Lumberjack "
        "client, is not installable here (not packaged in Debian, and Elastic's own package repository cannot be "
        "reached), so no side-by-side figure is given.",
    ]
    for name, prof in (r.get("profiles") or {}).items():
        lines += [
            "",
            f"## Profile: {name}, zlib {first['compression']}, under cProfile (event loop and worker threads)",
            "",
            f"Not part of any figure above: cProfile inflates call-heavy code ({prof['own_us_per_record']:.1f} µs "
            "of own time per record under the profiler, the event loop thread and the `to_thread` workers (spool "
            "flushes, disk reads, zlib of large windows) together). Own time by owner:",
            "",
            "| where | own µs / record | share |",
            "|---|---:|---:|",
        ]
        total = prof["own_us_per_record"] or 1.0
        lines += [f"| {g} | {v:.2f} | {v / total * 100:.0f} % |" for g, v in prof["groups"].items()]
        lines += [
            "",
            "| function | calls / record | own µs / record | own % | cumulative µs / record |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| `{t['function']}` | {t['calls_per_record']:.2f} | {t['own_us']:.2f} | {t['own_pct']:.1f} | "
            f"{t['cum_us']:.2f} |"
            for t in prof["top"]
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, help="records per variant (default 200,000; --quick 5,000)")
    parser.add_argument("--quick", action="store_true", help="5,000 records per variant (a smoke test)")
    parser.add_argument("--compression", default="3", help="zlib levels to run, comma-separated (0: none)")
    parser.add_argument("--rate", type=float, default=TARGET_EVENTS_PER_S, help="records/s of paced (0: skip it)")
    parser.add_argument("--event-every", type=int, default=100, help="1 in N records is a node event (0: none)")
    parser.add_argument("--dir", default="/var/tmp", help="where the spool directories go (on the real disk)")
    parser.add_argument("--spool-max-bytes", type=int, default=1 << 30, help="the spool's bound (big: no refusal)")
    parser.add_argument("--agent-cpu", type=int, help="CPU of the agent process (default: the last one allowed)")
    parser.add_argument("--receiver-cpu", type=int, help="CPU of the receiver (default: the first one allowed)")
    parser.add_argument(
        "--receiver",
        choices=("lean", "double"),
        default="lean",
        help="lean: a minimal acking sink (default); double: tests/doubles/lumberjack.py (decodes every JSON)",
    )
    parser.add_argument("--profile", action="store_true", help="append cProfiles of a live and a replay run")
    parser.add_argument("--output", type=Path, help="also write the markdown report there")
    # Internal: the two child processes.
    parser.add_argument("--role", choices=("bench", "agent", "receiver"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("live", "fill", "replay"), help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spool-dir", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "receiver":
        asyncio.run(serve_receiver(args.cpu, args.receiver))
        return 0
    if args.role == "agent":
        args.compression = int(args.compression)
        try:
            print(json.dumps(asyncio.run(agent(args))))
        except BenchFailure as exc:
            print(f"bench/ship.py: {exc}", file=sys.stderr)
            return 1
        return 0

    args.records = args.records or (5_000 if args.quick else 200_000)
    args.compression = [int(v) for v in args.compression.split(",")]
    allowed = sorted(os.sched_getaffinity(0))
    args.agent_cpu = allowed[-1] if args.agent_cpu is None else args.agent_cpu
    if args.receiver_cpu is None:
        others = [c for c in allowed if c != args.agent_cpu]
        args.receiver_cpu = others[0] if others else args.agent_cpu
    if args.receiver_cpu == args.agent_cpu:
        print("bench/ship.py: warning: one CPU only; the receiver shares the agent's core", file=sys.stderr)
    try:
        result = bench(args)
    except BenchFailure as exc:
        print(f"bench/ship.py: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if args.output:
        command = "python3 bench/ship.py " + shlex.join(sys.argv[1:])
        args.output.write_text(report(result, command))
        print(f"bench/ship.py: report written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
