#!/usr/bin/env python3
"""Side-by-side cost of nodeagent and node_exporter on this host: CPU, scrape latency, memory, series.

Starts ``nodeagent run`` and the Debian ``prometheus-node-exporter`` (default collectors) on loopback,
scrapes each the same number of times at the same pace as Prometheus would (its ``Accept`` header,
gzip, a kept-alive connection), reads each process's CPU and memory from ``/proc/<pid>``, and writes a
markdown report (stdout and ``docs/performance.md``). Run: ``python3 bench/run.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gzip
import http.client
import importlib.util
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
# What Prometheus 2.42 sends when it scrapes (scrape/scrape.go, acceptHeader).
PROM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_DURATION = re.compile(rb'^nodeagent_collector_duration_seconds\{collector="([^"]+)"\} (\S+)', re.M)


# ---------------------------------------------------------------------------------------------------
# Processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the harness dies, even by SIGKILL (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Target:
    """One exporter under test."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    def log_tail(self) -> str:
        """The end of what the process logged."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@contextlib.contextmanager
def start(name: str, cmd_for_port: Callable[[int], list[str]], ready_path: str, workdir: Path) -> Iterator[Target]:
    """Start a process on a free loopback port, wait for ``ready_path`` to answer 200, always stop it."""
    port = _free_port()
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd_for_port(port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir, preexec_fn=_die_with_parent
        )
    target = Target(name, proc, port, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{target.log_tail()}")
            with contextlib.suppress(OSError):
                if _get_status(port, ready_path) == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after 30 s:\n{target.log_tail()}")
            time.sleep(0.1)
        yield target
    finally:
        _stop(proc)


# ---------------------------------------------------------------------------------------------------
# Measuring


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (``/proc/<pid>/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_bytes(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) from ``/proc/<pid>/status`` (VmRSS, VmHWM)."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


@dataclass
class Scraper:
    """A kept-alive HTTP client that scrapes like Prometheus and times each full body read."""

    port: int
    conn: http.client.HTTPConnection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def scrape(self) -> tuple[float, bytes, str]:
        """(seconds to status + full body, decoded body, content type)."""
        t0 = time.perf_counter()
        try:
            self.conn.request("GET", "/metrics", headers={"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip"})
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnect once, like Prometheus on a dropped keep-alive connection
            self.conn.request("GET", "/metrics", headers={"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip"})
            resp = self.conn.getresponse()
            raw = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"GET /metrics on port {self.port}: HTTP {resp.status}")
        body = gzip.decompress(raw) if resp.getheader("Content-Encoding") == "gzip" else raw
        return elapsed, body, resp.getheader("Content-Type", "")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def count_series(body: bytes) -> int:
    """Sample lines in an exposition (text or OpenMetrics)."""
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (the 'inclusive' method: the sample minimum is q=0, the maximum q=1)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Result:
    """One exporter's figures from one run."""

    name: str
    cpu_s: float
    window_s: float
    scrapes: int
    intervals: float
    latencies: list[float]
    rss: list[int]
    peak_rss: int
    series: int
    wire_bytes: int
    content_type: str
    collector_durations: dict[str, list[float]] = field(default_factory=dict)

    @property
    def cpu_per_interval(self) -> float:
        """CPU seconds per collection interval (node_exporter: per scrape)."""
        return self.cpu_s / self.intervals

    @property
    def cpu_per_scrape(self) -> float:
        """CPU seconds per scrape served."""
        return self.cpu_s / self.scrapes

    @property
    def cpu_share(self) -> float:
        """Average share of one core over the measured window."""
        return self.cpu_s / self.window_s


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Result]:
    """One run: start both, warm up, scrape both ``--scrapes`` times at ``--pace``, stop both."""
    agent_cmd = [
        sys.executable,
        "-m",
        "nodeagent",
        "run",
        "--log-level",
        "warning",
        "--set",
        f"interval={args.interval:g}s",
        *args.agent_arg,
    ]
    ne_cmd = [args.node_exporter, *args.node_exporter_arg]
    with (
        start("nodeagent", lambda p: [*agent_cmd, "--listen", f"127.0.0.1:{p}"], "/readyz", workdir) as agent,
        start(
            "node_exporter", lambda p: [*ne_cmd, f"--web.listen-address=127.0.0.1:{p}"], "/metrics", workdir
        ) as node_exporter,
    ):
        targets = [agent, node_exporter]
        scrapers = {t.name: Scraper(t.port) for t in targets}
        lat: dict[str, list[float]] = {t.name: [] for t in targets}
        rss: dict[str, list[int]] = {t.name: [] for t in targets}
        last: dict[str, tuple[bytes, str]] = {}
        durations: dict[str, list[float]] = {}
        cpu0: dict[str, float] = {}
        t_start = 0.0
        next_at = time.monotonic()
        for i in range(args.warmup + args.scrapes):
            if i == args.warmup:  # the measured window starts here: CPU snapshot, then the tick's scrapes
                cpu0 = {t.name: cpu_seconds(t.pid) for t in targets}
                t_start = time.monotonic()
            # Alternate who goes first so neither always scrapes right after the other's burst.
            for t in targets if i % 2 == 0 else reversed(targets):
                elapsed, body, ctype = scrapers[t.name].scrape()
                if i >= args.warmup:
                    lat[t.name].append(elapsed)
                    rss[t.name].append(memory_bytes(t.pid)[0])
                    last[t.name] = (body, ctype)
                    if t is agent:
                        for m in _DURATION.finditer(body):
                            durations.setdefault(m.group(1).decode(), []).append(float(m.group(2)))
            next_at += args.pace
            time.sleep(max(0.0, next_at - time.monotonic()))
        # The window is scrapes x pace: it ends one pace after the last tick started.
        window = time.monotonic() - t_start
        cpu1 = {t.name: cpu_seconds(t.pid) for t in targets}
        peak = {t.name: memory_bytes(t.pid)[1] for t in targets}
        wire = {t.name: _wire_size(t.port) for t in targets}
        for s in scrapers.values():
            s.close()
        for t in targets:
            if t.proc.poll() is not None:
                raise RuntimeError(f"{t.name} died during the run:\n{t.log_tail()}")
    results = {}
    for t in targets:
        body, ctype = last[t.name]
        intervals = window / (args.interval if t is agent else args.pace)
        results[t.name] = Result(
            t.name,
            cpu1[t.name] - cpu0[t.name],
            window,
            args.scrapes,
            intervals,
            lat[t.name],
            rss[t.name],
            peak[t.name],
            count_series(body),
            wire[t.name],
            ctype.split(";")[0],
            durations if t is agent else {},
        )
    return results


def _wire_size(port: int) -> int:
    """Bytes on the wire for one gzip scrape."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip"})
        return len(conn.getresponse().read())
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------------
# Reporting


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(cmd: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "unknown"
    return "unknown"


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def report(args: argparse.Namespace, runs: list[dict[str, Result]], command: str) -> str:
    """The markdown report: machine, method, median table, targets, per-run figures, collector durations."""
    na = [r["nodeagent"] for r in runs]
    ne = [r["node_exporter"] for r in runs]
    mib = 1024 * 1024

    rows: list[tuple[str, float, float, str]] = [
        (
            "CPU per collection interval (ms) ¹",
            _med([r.cpu_per_interval for r in na]) * 1e3,
            _med([r.cpu_per_interval for r in ne]) * 1e3,
            "{:.2f}",
        ),
        (
            "CPU per scrape served (ms)",
            _med([r.cpu_per_scrape for r in na]) * 1e3,
            _med([r.cpu_per_scrape for r in ne]) * 1e3,
            "{:.2f}",
        ),
        ("CPU, % of one core", _med([r.cpu_share for r in na]) * 100, _med([r.cpu_share for r in ne]) * 100, "{:.2f}"),
        (
            "scrape latency p50 (ms)",
            _med([quantile(r.latencies, 0.5) for r in na]) * 1e3,
            _med([quantile(r.latencies, 0.5) for r in ne]) * 1e3,
            "{:.2f}",
        ),
        (
            "scrape latency p99 (ms)",
            _med([quantile(r.latencies, 0.99) for r in na]) * 1e3,
            _med([quantile(r.latencies, 0.99) for r in ne]) * 1e3,
            "{:.2f}",
        ),
        ("peak RSS (MiB)", _med([r.peak_rss for r in na]) / mib, _med([r.peak_rss for r in ne]) / mib, "{:.1f}"),
        ("steady RSS (MiB) ²", _med([_med(r.rss) for r in na]) / mib, _med([_med(r.rss) for r in ne]) / mib, "{:.1f}"),
        ("series per scrape", _med([r.series for r in na]), _med([r.series for r in ne]), "{:.0f}"),
        (
            "gzip response (KiB)",
            _med([r.wire_bytes for r in na]) / 1024,
            _med([r.wire_bytes for r in ne]) / 1024,
            "{:.1f}",
        ),
    ]
    table = [
        "| figure (median of runs) | nodeagent | node_exporter | nodeagent / node_exporter |",
        "|---|---:|---:|---:|",
    ]
    table += [f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {_ratio(a, b)} |" for name, a, b, fmt in rows]

    cpu_na, cpu_ne = rows[0][1], rows[0][2]
    p99_na, p99_ne = rows[4][1], rows[4][2]
    targets = [
        f"- nodeagent CPU per interval <= node_exporter CPU per scrape: "
        f"**{'met' if cpu_na <= cpu_ne else 'not met'}** ({cpu_na:.2f} ms vs {cpu_ne:.2f} ms)",
        f"- nodeagent scrape p99 <= 1/4 of node_exporter's: "
        f"**{'met' if p99_na <= p99_ne / 4 else 'not met'}** ({p99_na:.2f} ms vs {p99_ne / 4:.2f} ms = "
        f"{p99_ne:.2f} / 4)",
    ]

    per_run = [
        "| run | exporter | CPU (s) | window (s) | CPU/interval (ms) | p50 (ms) | p99 (ms) | peak RSS (MiB) | "
        "series | content type |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, run in enumerate(runs, 1):
        for r in run.values():
            per_run.append(
                f"| {i} | {r.name} | {r.cpu_s:.2f} | {r.window_s:.1f} | {r.cpu_per_interval * 1e3:.2f} | "
                f"{quantile(r.latencies, 0.5) * 1e3:.2f} | {quantile(r.latencies, 0.99) * 1e3:.2f} | "
                f"{r.peak_rss / mib:.1f} | {r.series} | {r.content_type} |"
            )

    collectors = sorted({c for r in na for c in r.collector_durations})
    coll = ["| collector | median duration (ms) | max over runs of the per-run p99 (ms) |", "|---|---:|---:|"]
    for c in collectors:
        samples = [v for r in na for v in r.collector_durations.get(c, [])]
        p99s = [quantile(r.collector_durations[c], 0.99) for r in na if r.collector_durations.get(c)]
        coll.append(f"| {c} | {_med(samples) * 1e3:.3f} | {max(p99s) * 1e3:.3f} |")

    uname = platform.uname()
    facts = [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- CPUs (`nproc`): {len(os.sched_getaffinity(0))}; CPU model: {_cpu_model()}",
        f"- kernel: {uname.system} {uname.release} ({uname.machine})",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- nodeagent: {_version([sys.executable, '-m', 'nodeagent', 'version'])}, "
        f"`--set interval={args.interval:g}s`, default collectors",
        f"- node_exporter: {_version([args.node_exporter, '--version'])}, default collectors",
    ]
    method = f"""\
Both exporters run on loopback with their default collectors. A single client scrapes each of them
{args.scrapes} times, one tick every {args.pace:g} s (after {args.warmup} warm-up ticks that are not measured), on a
kept-alive connection with Prometheus 2.42's `Accept` header and `Accept-Encoding: gzip`; within a tick
the two are scraped one after the other, alternating which goes first. nodeagent collects every
{args.interval:g} s on its own timer and serves the last snapshot; node_exporter collects on every scrape.

- CPU: utime + stime from `/proc/<pid>/stat`, the delta over the measured window (about scrapes x pace;
  10 ms clock-tick resolution), divided by the number of collection intervals in the window:
  window / {args.interval:g} s for nodeagent, window / {args.pace:g} s (= one per scrape) for node_exporter.
  ¹ With interval == pace (the default) this compares one nodeagent cycle plus one cached scrape with one
  node_exporter scrape.
- Latency: client wall time from sending the request to having read the whole (gzip) body; p50/p99 by
  linear interpolation over the {args.scrapes} measured scrapes of a run.
- Memory: peak RSS is the kernel's VmHWM at the end of the run; ² steady RSS is the median VmRSS sampled
  after each measured scrape.
- Series: sample lines in the last response. Collector durations: `nodeagent_collector_duration_seconds`
  (the last cycle of each collector) read from every measured scrape.
- Each figure in the main table is the median over {len(runs)} run(s), each with freshly started processes.
- Series counts differ because the collector sets differ (node_exporter also runs network, netstat,
  sockstat, conntrack and other collectors nodeagent does not have yet); compare CPU with that in mind.
"""
    return "\n".join(
        [
            "# Performance: nodeagent and node_exporter side by side",
            "",
            "Generated by `bench/run.py`; do not edit by hand (see bench/README.md). The cgroups collector's cost",
            "per workload cgroup is measured by `bench/cgroups.py`: [performance-cgroups.md](performance-cgroups.md);",
            "the cost of container runtime metadata by `bench/runtimes.py`: "
            "[performance-runtimes.md](performance-runtimes.md); the network collectors by `bench/network.py`: "
            "[performance-network.md](performance-network.md); the gpu collector over the NVML test double by "
            "`bench/gpu.py`: [performance-gpu.md](performance-gpu.md).",
            "",
            "## Result",
            "",
            *table,
            "",
            "Targets:",
            "",
            *targets,
            "",
            "## Machine",
            "",
            *facts,
            "",
            "## Method",
            "",
            method,
            "## Per run",
            "",
            *per_run,
            "",
            "## nodeagent collectors",
            "",
            *coll,
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run the measurement ``--runs`` times, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=40, help="measured scrapes of each exporter per run")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured scrapes at the start of each run")
    parser.add_argument("--pace", type=float, default=1.0, help="seconds between scrapes (default 1)")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="nodeagent's collection interval in seconds (default: the pace, so CPU per "
        "interval compares with node_exporter's CPU per scrape; nodeagent's own default is 15)",
    )
    parser.add_argument("--runs", type=int, default=3, help="repeat the whole measurement; report medians")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "docs" / "performance.md",
        help="markdown report path ('-' for stdout only)",
    )
    parser.add_argument("--node-exporter", default=NODE_EXPORTER, help="node_exporter binary")
    parser.add_argument("--agent-arg", action="append", default=[], help="extra `nodeagent run` argument")
    parser.add_argument("--node-exporter-arg", action="append", default=[], help="extra node_exporter argument")
    args = parser.parse_args(argv)
    if args.interval is None:
        args.interval = args.pace
    if args.scrapes < 2 or args.runs < 1 or args.pace <= 0 or args.interval <= 0:
        parser.error("--scrapes >= 2, --runs >= 1, and --pace, --interval > 0 are required")
    if not os.access(args.node_exporter, os.X_OK):
        parser.error(f"{args.node_exporter} not found (apt-get install prometheus-node-exporter)")
    if importlib.util.find_spec("nodeagent") is None:
        parser.error("nodeagent is not importable (pip install -e .)")

    # SIGTERM/SIGHUP unwind through the context managers like Ctrl-C does, so both exporters stop (and
    # SIGINT works even when a shell started us in the background with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    command = shlex.join(["python3", "bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    runs = []
    with tempfile.TemporaryDirectory(prefix="nodeagent-bench-") as tmp:
        for i in range(args.runs):
            print(
                f"run {i + 1}/{args.runs}: {args.warmup} + {args.scrapes} scrapes every {args.pace:g} s, "
                f"nodeagent interval {args.interval:g} s",
                file=sys.stderr,
                flush=True,
            )
            workdir = Path(tmp) / f"run{i + 1}"
            workdir.mkdir()
            runs.append(measure(args, workdir))
    text = report(args, runs, command)
    print(text)
    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
