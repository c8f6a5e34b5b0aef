"""The real `nodeagent run` process over HTTP: endpoints, formats, shutdown, and values against the kernel."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from nodeagent.agent import Agent, build_app
from nodeagent.config import build_config
from nodeagent.metrics import MetricFamily
from tests.integration.agent_proc import free_port, http_get, run_agent

pytestmark = pytest.mark.integration

PROM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_parse(text) for s in f.samples}


def test_endpoints_formats_and_compression(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """/metrics serves text, OpenMetrics and gzip; /healthz and /readyz answer 200; / lists the collectors."""
    with run_agent(tmp_dir=str(tmp_path)) as agent:
        status, headers, body = http_get(agent.url + "/metrics")
        om_status, om_headers, om_body = http_get(agent.url + "/metrics", {"Accept": PROM_ACCEPT})
        gz_status, gz_headers, gz_body = http_get(agent.url + "/metrics", {"Accept-Encoding": "gzip"})
        health = http_get(agent.url + "/healthz")
        ready = http_get(agent.url + "/readyz")
        index = http_get(agent.url + "/")

    assert (200, "text/plain; version=0.0.4; charset=utf-8") == (status, headers["Content-Type"])
    assert "node_load1" in {f.name for f in text_parse(body.decode())}
    assert (200, "application/openmetrics-text; version=1.0.0; charset=utf-8") == (
        om_status,
        om_headers["Content-Type"],
    )
    assert "node_load1" in {f.name for f in om_parse(om_body.decode())}
    assert (200, "gzip") == (gz_status, gz_headers["Content-Encoding"])
    assert "node_load1" in gzip.decompress(gz_body).decode()
    assert (200, b"ok\n") == (health[0], health[2])
    assert (200, b"ready\n") == (ready[0], ready[2])
    assert b"<td>loadavg</td><td>ok</td>" in index[2]


def test_sigterm_stops_gracefully(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM ends the agent within a few seconds with exit 0 and a logged stop."""
    with run_agent(tmp_dir=str(tmp_path)) as agent:
        agent.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = agent.proc.wait(10)
        took = time.monotonic() - started

    assert 0 == code
    assert took < 5
    assert '"message":"agent.stopped"' in agent.log()


def test_port_in_use_exits_2_with_a_clear_message() -> None:
    """A listen address that is taken is reported once, naming the key, and the process exits 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert 2 == proc.returncode
    assert f"listen 127.0.0.1:{port}: cannot serve: address already in use" in proc.stderr


def test_logs_are_ecs_json_with_trace_ids(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every line the daemon prints is one JSON object with ECS fields; cycle lines carry a trace id."""
    import json

    with run_agent(["--log-level", "debug", "--set", "interval=1s"], tmp_dir=str(tmp_path)) as agent:
        time.sleep(1.5)
    records = [json.loads(line) for line in agent.log().splitlines() if line.strip()]
    cycles = [r for r in records if r["message"] == "collector.cycle"]

    assert records
    assert all(
        {"@timestamp", "log.level", "message", "service.name", "host.name", "ecs.version"} <= r.keys()
        for r in records
    )
    assert all(r["@timestamp"].endswith("Z") for r in records)
    assert cycles
    assert all(len(r["trace.id"]) == 32 and len(r["span.id"]) == 16 for r in cycles)


def _read_proc_stat_seconds() -> dict[tuple[str, str], float]:
    modes = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and not line.startswith("cpu "):
                fields = line.split()
                for mode, ticks in zip(modes, fields[1:9], strict=True):
                    out[(fields[0][3:], mode)] = int(ticks) / hz
    return out


def _meminfo_bytes() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    return out


def test_values_match_the_kernel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """node_cpu_seconds_total and node_memory_* equal /proc/stat and /proc/meminfo read at the same moment,
    within the drift since the agent's last sample."""
    with run_agent(["--set", "interval=1s"], tmp_dir=str(tmp_path)) as agent:
        time.sleep(1.2)
        body = http_get(agent.url + "/metrics")[2].decode()
        now = time.time()
        kernel_cpu = _read_proc_stat_seconds()
        kernel_mem = _meminfo_bytes()
    samples = _samples(body)
    sampled_at = samples[("nodeagent_collector_last_success_timestamp_seconds", (("collector", "cpu"),))]
    drift = now - sampled_at + 0.05  # a CPU mode can advance at most 1 s per second of drift

    agent_cpu = {
        (dict(k[1])["cpu"], dict(k[1])["mode"]): v
        for k, v in samples.items()
        if k[0] == "node_cpu_seconds_total"
    }
    assert set(kernel_cpu) == set(agent_cpu)
    for key, kernel_value in kernel_cpu.items():
        assert 0 <= kernel_value - agent_cpu[key] <= drift, (key, kernel_value, agent_cpu[key], drift)
    assert kernel_mem["MemTotal"] == samples[("node_memory_MemTotal_bytes", ())]
    available = samples[("node_memory_MemAvailable_bytes", ())]
    assert abs(kernel_mem["MemAvailable"] - available) <= 0.02 * kernel_mem["MemTotal"]


class _Slow:
    """A collector that takes a while for its first cycle."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def collect(self) -> Sequence[MetricFamily]:
        await self.release.wait()
        return []

    async def aclose(self) -> None:
        return None


async def test_readyz_waits_for_every_collector() -> None:
    """/readyz is 503 naming the collectors without a finished cycle, then 200 once they finish."""
    cfg = build_config(environ={}, flag_overrides={"listen": f"127.0.0.1:{free_port()}"})
    agent = Agent(cfg, names=["loadavg"])
    slow = _Slow()
    agent.scheduler.runners[0].collector = slow
    async with TestClient(TestServer(build_app(agent))) as client:
        first = await client.get("/readyz")
        first_text = await first.text()
        slow.release.set()
        for _ in range(100):
            if not agent.not_ready():
                break
            await asyncio.sleep(0.02)
        second = await client.get("/readyz")

    assert (503, "not ready: no finished cycle yet for loadavg\n") == (first.status, first_text)
    assert 200 == second.status
