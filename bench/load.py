#!/usr/bin/env python3
"""
Load on nodeagent's HTTP server over loopback, and what it costs the agent: concurrent scrapers, wrk, slowloris,
oversized requests, a client that never reads, and the agent's RSS meanwhile. The limits under test are the
``web.*`` keys (nodeagent/httpserver.py, docs/web-limits.md); tests/integration/test_load.py asserts on the same
clients.

Run: ``python3 bench/load.py`` (starts ``nodeagent run`` with its defaults on a free loopback port, about 40 s;
``--markdown`` prints the table of docs/web-limits.md; JSON otherwise). Needs ``wrk`` (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families as parse_text  # noqa: E402

from tests.integration.agent_proc import run_agent  # noqa: E402

HOST = "127.0.0.1"
# What Prometheus 2.x sends: OpenMetrics preferred.
OPENMETRICS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TEXT_ACCEPT = "text/plain;version=0.0.4"
# Samples every scrape of an agent with its default collectors has on Linux.
EXPECTED_SAMPLES = frozenset(
    {
        "node_cpu_seconds_total",
        "node_load1",
        "node_memory_MemTotal_bytes",
        "node_boot_time_seconds",
        "process_resident_memory_bytes",
        "nodeagent_collector_success",
    }
)

WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format(
    "NATEST-WRK requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d "
    .. "p50_us=%d p90_us=%d p99_us=%d max_us=%d\\n",
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# --- concurrent scrapers ----------------------------------------------------------------------------------------


def get_request(host: str, port: int, accept: str, path: str = "/metrics") -> bytes:
    """A scrape's request bytes."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: {accept}\r\nUser-Agent: natest-load\r\n\r\n"
    ).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers (lower-case names) and exactly that many body
    bytes (``asyncio.IncompleteReadError`` if the connection ends before)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


@dataclass
class BurstReport:
    """What ``scrape_burst`` saw."""

    connections: int
    rounds: int
    held: int = 0  # connections open at the same time when the first request went out
    responses: int = 0  # complete responses (status line, headers, Content-Length bytes of body)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # request written -> whole body read, seconds
    bodies: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # sha256 -> (content type, body)
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        """The summary as plain numbers."""
        return {
            "connections": self.connections,
            "held": self.held,
            "rounds": self.rounds,
            "responses": self.responses,
            "statuses": dict(self.statuses),
            "errors": len(self.errors),
            "p50_ms": round(quantile(self.latencies, 0.5) * 1000, 1),
            "p99_ms": round(quantile(self.latencies, 0.99) * 1000, 1),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 1),
            "seconds": round(self.seconds, 2),
            "distinct_bodies": len(self.bodies),
        }


async def scrape_burst(
    host: str,
    port: int,
    connections: int,
    rounds: int,
    *,
    tls: ssl.SSLContext | None = None,
) -> BurstReport:
    """Open ``connections`` connections, wait until every one is open (or has failed), then have each do
    ``rounds`` GET /metrics on its kept-alive connection, all at once; every other connection asks for OpenMetrics,
    the others for the text format (bound it with ``asyncio.timeout``)."""
    report = BurstReport(connections, rounds)
    barrier = asyncio.Barrier(connections)

    async def scraper(index: int) -> None:
        accept = OPENMETRICS_ACCEPT if index % 2 else TEXT_ACCEPT
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        except OSError as exc:
            report.errors.append(f"connect: {exc!r}")
            await barrier.wait()
            return
        try:
            report.held += 1
            await barrier.wait()
            for _ in range(rounds):
                started = time.monotonic()
                writer.write(get_request(host, port, accept))
                status, headers, body = await read_response(reader)
                report.latencies.append(time.monotonic() - started)
                report.responses += 1
                report.statuses[status] += 1
                report.bodies.setdefault(hashlib.sha256(body).hexdigest(), (headers.get("content-type", ""), body))
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
            report.errors.append(f"scrape: {exc!r}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    started = time.monotonic()
    await asyncio.gather(*(scraper(i) for i in range(connections)))
    report.seconds = time.monotonic() - started
    return report


def exposition_problems(content_type: str, body: bytes, expected: frozenset[str] = EXPECTED_SAMPLES) -> list[str]:
    """What is wrong with one /metrics body: it must parse in the format its Content-Type names (OpenMetrics must
    end with ``# EOF``) and have every sample name in ``expected``."""
    text = body.decode("utf-8")
    try:
        if content_type.startswith("application/openmetrics-text"):
            if not text.endswith("# EOF\n"):
                return ["OpenMetrics body does not end with '# EOF'"]
            names = {s.name for family in parse_openmetrics(text) for s in family.samples}
        elif content_type.startswith("text/plain"):
            names = {s.name for family in parse_text(text) for s in family.samples}
        else:
            return [f"unexpected Content-Type {content_type!r}"]
    except ValueError as exc:
        return [f"does not parse as {content_type}: {exc}"]
    missing = expected - names
    return [f"missing samples: {sorted(missing)}"] if missing else []


# --- paced scrapes (latency while something else goes on) -----------------------------------------------------


async def paced_scrapes(
    host: str, port: int, count: int, pace: float, *, tls: ssl.SSLContext | None = None, limit: float = 10.0
) -> list[tuple[int, float]]:
    """``count`` scrapes, one every ``pace`` seconds, each on a new connection: (status, seconds from connect to
    whole body); status 0 for a failure or a scrape slower than ``limit`` seconds."""
    results: list[tuple[int, float]] = []
    for _ in range(count):
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(host, port, ssl=tls)
                try:
                    writer.write(get_request(host, port, TEXT_ACCEPT))
                    status, _, _ = await read_response(reader)
                finally:
                    writer.close()
            results.append((status, time.monotonic() - started))
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            results.append((0, time.monotonic() - started))
        await asyncio.sleep(pace)
    return results


# --- connections that are held open: slowloris, stalled TLS handshakes ---------------------------------------


@dataclass
class Held:
    """One held connection: how long until the server closed it (None: still open at ``give_up``), and the
    first bytes it answered before closing."""

    closed_after: float | None
    reply: bytes


SLOWLORIS_BYTES = b"GET /metrics HTTP/1.1\r\nHost: natest\r\nUser-Agent: natest-slowloris\r\nX-Natest-Padding: "


async def hold_connections(
    host: str,
    port: int,
    connections: int,
    *,
    payload: bytes,
    interval: float | None,
    give_up: float,
    tls: ssl.SSLContext | None = None,
) -> list[Held]:
    """Open ``connections`` connections at once and on each send ``payload`` one byte every ``interval`` seconds
    (then ``a`` bytes forever: a header that never ends), or all of it at once when ``interval`` is None; wait up to
    ``give_up`` seconds from its opening for the server to close each. A client that connected with ``tls`` has
    finished its handshake before its clock starts; without, a plain TCP ``payload`` can be a stalled handshake."""

    async def one() -> Held:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        opened = time.monotonic()
        reply = b""

        async def dribble() -> None:
            if interval is None:
                writer.write(payload)
                return
            position = 0
            while True:
                writer.write(payload[position : position + 1] if position < len(payload) else b"a")
                position += 1
                await writer.drain()
                await asyncio.sleep(interval)

        sender = asyncio.create_task(dribble())
        try:
            async with asyncio.timeout(give_up):
                while chunk := await reader.read(4096):
                    reply += chunk
            return Held(time.monotonic() - opened, reply)
        except (ConnectionError, ssl.SSLError):
            return Held(time.monotonic() - opened, reply)
        except TimeoutError:
            return Held(None, reply)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            writer.transport.abort()

    return list(await asyncio.gather(*(one() for _ in range(connections))))


# --- blocking single-connection clients -------------------------------------------------------------------------


@dataclass
class RawReply:
    """One exchange on a raw socket: the status (None if none came), the bytes read, seconds until the server
    closed the connection (None: still open at the timeout)."""

    status: int | None
    data: bytes
    closed_after: float | None


def raw_exchange(host: str, port: int, request: bytes, *, body_bytes: int = 0, timeout: float = 5.0) -> RawReply:
    """Send ``request`` (then ``body_bytes`` bytes of body from a second thread, as fast as the server takes them)
    and read until the server closes or ``timeout`` passes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(request)

        def send_body() -> None:
            chunk = b"x" * 65536
            left = body_bytes
            with contextlib.suppress(OSError):
                while left > 0:
                    left -= sock.send(chunk[: min(left, len(chunk))])

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        data = b""
        closed_after: float | None = None
        try:
            while chunk := sock.recv(65536):
                data += chunk
            closed_after = time.monotonic() - started
        except ConnectionError:
            closed_after = time.monotonic() - started
        except TimeoutError:
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # ends the sender thread's send()
        sender.join(timeout)
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return RawReply(int(match.group(1)) if match else None, data, closed_after)


TCP_ESTABLISHED = 1  # tcpi_state, the first byte of Linux's struct tcp_info


def never_reading_client(
    host: str, port: int, requests: int, *, give_up: float, receive_buffer: int = 4096
) -> RawReply:
    """Pipeline ``requests`` scrapes on a connection with a small receive buffer and never read; watch the socket's
    TCP state (no reading) until the server closes or resets it, for up to ``give_up`` seconds. ``data`` is what
    had arrived by then."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect((host, port))
        started = time.monotonic()
        sock.sendall(get_request(host, port, TEXT_ACCEPT) * requests)
        closed_after: float | None = None
        while time.monotonic() - started < give_up:
            if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED:
                closed_after = time.monotonic() - started
                break
            time.sleep(0.02)
        sock.setblocking(False)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    return RawReply(200 if data.startswith(b"HTTP/1.1 200") else None, data, closed_after)


# --- wrk -----------------------------------------------------------------------------------------------------------


@dataclass
class WrkReport:
    """wrk's summary (from a Lua ``done()``): requests, errors by kind (``status``: non-2xx/3xx), latency."""

    requests: int
    seconds: float
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def requests_per_second(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    url: str,
    connections: int,
    seconds: int,
    *,
    threads: int = 2,
    headers: Sequence[str] = (),
    request_timeout: int = 5,
    wrk: str = "wrk",
) -> WrkReport:
    """Run wrk against ``url`` and return its summary; ``RuntimeError`` with wrk's output if it gives none."""
    with tempfile.NamedTemporaryFile("w", prefix="natest-wrk-", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={request_timeout}s"]
        for header in headers:
            cmd += ["-H", header]
        proc = subprocess.run(
            [*cmd, "-s", script.name, url], capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    match = re.search(r"^NATEST-WRK (.*)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    v = {key: int(value) for key, value in (item.split("=") for item in match.group(1).split())}
    return WrkReport(
        requests=v["requests"],
        seconds=v["duration_us"] / 1e6,
        bytes=v["bytes"],
        errors={kind: v[kind] for kind in ("connect", "read", "write", "status", "timeout")},
        p50_ms=v["p50_us"] / 1000,
        p90_ms=v["p90_us"] / 1000,
        p99_ms=v["p99_us"] / 1000,
        max_ms=v["max_us"] / 1000,
    )


# --- memory --------------------------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The process's resident set (``VmRSS`` of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    """How many file descriptors the process has open (each client connection is one)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class ProcessSampler:
    """Samples a process's RSS and open descriptors every ``interval`` seconds on a thread while used as a context
    manager."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.rss: list[int] = []
        self.fds: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.rss.append(rss_bytes(self.pid))
                self.fds.append(open_fds(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_rss(self) -> int:
        """The largest RSS sample (0 before any)."""
        return max(self.rss, default=0)

    @property
    def peak_fds(self) -> int:
        """The most descriptors open at a sample (0 before any)."""
        return max(self.fds, default=0)


# --- the whole run ---------------------------------------------------------------------------------------------------

MiB = 1 << 20


@contextlib.contextmanager
def agent(args: Sequence[str]) -> Iterator[Any]:
    """A ``nodeagent run`` on a free loopback port (tests/integration/agent_proc.py), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="natest-load-") as tmp, run_agent(list(args), tmp_dir=tmp) as proc:
        yield proc


async def measure(port: int, pid: int, opts: argparse.Namespace) -> dict[str, Any]:
    """Every load in turn against the agent on ``port`` (pid ``pid``), with its RSS sampled throughout."""
    out: dict[str, Any] = {}
    await asyncio.sleep(opts.settle)
    out["rss_before_mib"] = rss_bytes(pid) / MiB
    out["fds_before"] = open_fds(pid)
    with ProcessSampler(pid) as sampler:
        burst = await scrape_burst(HOST, port, opts.connections, opts.rounds)
        out["burst"] = burst.figures()
        out["burst"]["body_problems"] = sorted(
            {p for ctype, body in burst.bodies.values() for p in exposition_problems(ctype, body)}
        )
        # Through the rest: a client that never reads its responses, until the agent's write timeout resets it.
        never_reading = asyncio.create_task(
            asyncio.to_thread(never_reading_client, HOST, port, 400, give_up=opts.write_timeout + 30)
        )
        for name, headers in (
            ("wrk_text", []),
            ("wrk_prometheus", [f"Accept: {OPENMETRICS_ACCEPT}", "Accept-Encoding: gzip"]),
        ):
            report = await asyncio.to_thread(
                run_wrk, f"http://{HOST}:{port}/metrics", opts.connections, opts.wrk_seconds, headers=headers
            )
            out[name] = {**asdict(report), "requests_per_second": round(report.requests_per_second)}
        timeout = opts.header_read_timeout
        held, during = await asyncio.gather(
            hold_connections(HOST, port, opts.slowloris, payload=SLOWLORIS_BYTES, interval=0.5, give_up=timeout + 10),
            paced_scrapes(HOST, port, count=int(timeout / 0.1), pace=0.1),
        )
        cut = [h.closed_after for h in held if h.closed_after is not None]
        out["slowloris"] = {
            "connections": opts.slowloris,
            "cut": len(cut),
            "answered_408": sum(h.reply.startswith(b"HTTP/1.1 408") for h in held),
            "cut_min_s": round(min(cut, default=0.0), 2),
            "cut_max_s": round(max(cut, default=0.0), 2),
            "scrapes_meanwhile": len(during),
            "scrapes_meanwhile_ok": sum(status == 200 for status, _ in during),
            "scrape_p50_ms": round(quantile([s for _, s in during], 0.5) * 1000, 1),
            "scrape_p99_ms": round(quantile([s for _, s in during], 0.99) * 1000, 1),
        }
        big = await asyncio.to_thread(
            raw_exchange,
            HOST,
            port,
            b"GET /metrics HTTP/1.1\r\nHost: natest\r\nContent-Length: %d\r\n\r\n" % opts.body_bytes,
            body_bytes=opts.body_bytes,
        )
        out["large_body"] = {"bytes": opts.body_bytes, "status": big.status, "closed_after_s": big.closed_after}
        out["never_reading_reset_after_s"] = (await never_reading).closed_after
    await asyncio.sleep(opts.settle)
    out["rss_peak_mib"] = sampler.peak_rss / MiB
    out["fds_peak"] = sampler.peak_fds
    out["rss_after_mib"] = rss_bytes(pid) / MiB
    for key in ("rss_before_mib", "rss_peak_mib", "rss_after_mib"):
        out[key] = round(out[key], 1)
    return out


def markdown(r: dict[str, Any]) -> str:
    """The figures as the table of docs/web-limits.md."""
    b, s, w, g = r["burst"], r["slowloris"], r["wrk_text"], r["wrk_prometheus"]
    rows = [
        (
            "concurrent scrapers held, all answered completely",
            f"{b['held']} x {b['rounds']} rounds: "
            f"{b['statuses'].get(200, 0)} x 200, {b['errors']} errors, p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms",
        ),
        (
            f"wrk, {w['requests']} requests, text",
            f"{w['requests_per_second']} req/s, p50 {w['p50_ms']:.1f} ms, "
            f"p99 {w['p99_ms']:.1f} ms, errors {sum(w['errors'].values())}",
        ),
        (
            "wrk, OpenMetrics + gzip (Prometheus' headers)",
            f"{g['requests_per_second']} req/s, p50 {g['p50_ms']:.1f} "
            f"ms, p99 {g['p99_ms']:.1f} ms, errors {sum(g['errors'].values())}",
        ),
        (
            f"slowloris, {s['connections']} connections",
            f"all cut after {s['cut_min_s']}-{s['cut_max_s']} s ({s['cut']} cut, {s['answered_408']} answered 408)",
        ),
        (
            "scrapes while slowloris held",
            f"{s['scrapes_meanwhile_ok']}/{s['scrapes_meanwhile']} OK, "
            f"p50 {s['scrape_p50_ms']} ms, p99 {s['scrape_p99_ms']} ms",
        ),
        (f"{r['large_body']['bytes'] // MiB} MiB request body", f"{r['large_body']['status']}"),
        ("client that never reads (400 pipelined scrapes)", f"reset after {r['never_reading_reset_after_s']:.2f} s"),
        ("agent's open descriptors before / peak", f"{r['fds_before']} / {r['fds_peak']}"),
        ("agent RSS before / peak / after", f"{r['rss_before_mib']} / {r['rss_peak_mib']} / {r['rss_after_mib']} MiB"),
    ]
    return "| load | result |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Start an agent, load it, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=500, help="concurrent scrapers and wrk connections")
    parser.add_argument("--rounds", type=int, default=3, help="scrapes per connection in the burst")
    parser.add_argument("--wrk-seconds", type=int, default=10)
    parser.add_argument("--slowloris", type=int, default=300, help="slowloris connections")
    parser.add_argument("--header-read-timeout", type=float, default=10.0, help="the agent's web.header_read_timeout")
    parser.add_argument("--write-timeout", type=float, default=30.0, help="the agent's web.write_timeout")
    parser.add_argument("--body-bytes", type=int, default=256 * MiB, help="size of the refused request body")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of quiet before and after the load")
    parser.add_argument("--markdown", action="store_true", help="print the markdown table, not JSON")
    opts = parser.parse_args(argv)
    args = [
        "--set",
        f"web.header_read_timeout={opts.header_read_timeout}s",
        "--set",
        f"web.write_timeout={opts.write_timeout}s",
    ]
    with agent(args) as proc:
        figures = asyncio.run(measure(proc.port, proc.proc.pid, opts))
    figures["host"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    print(markdown(figures) if opts.markdown else json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
