"""A real Prometheus scrapes the real agent; promtool lints the agent's exposition.

Prometheus 2.42 asks for OpenMetrics first in its scrape ``Accept`` header, so the scrape test also
proves the OpenMetrics path end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.agent_proc import http_get, run_agent
from tests.integration.peers import (
    PrometheusPeer,
    promtool_check_metrics,
    run_node_exporter,
    run_prometheus,
    scrape_config,
    wait_for_scrapes,
)

pytestmark = pytest.mark.integration

JOB = "node-exporter"


def _values(prom: PrometheusPeer, expr: str) -> list[float]:
    result = prom.query(expr)
    assert result, f"no series for {expr!r}"
    return [float(r["value"][1]) for r in result]


def test_prometheus_scrapes_agent(tmp_path: Path) -> None:
    """Prometheus scrapes the agent every second (OpenMetrics); node-mixin-style queries give sane values."""
    with run_agent(["--set", "interval=1s"], tmp_dir=str(tmp_path)) as agent:
        instance = f"127.0.0.1:{agent.port}"
        config = scrape_config(JOB, {instance: {}})
        with run_prometheus(config, [], tmp_path) as prom:
            wait_for_scrapes(prom, [instance], 5)
            sel = f'job="{JOB}",instance="{instance}"'

            up = _values(prom, f"up{{{sel}}}")
            cpu_usage = _values(prom, f'1 - avg(rate(node_cpu_seconds_total{{{sel},mode="idle"}}[30s]))')
            mem_available = _values(prom, f"node_memory_MemAvailable_bytes{{{sel}}}")
            mem_total = _values(prom, f"node_memory_MemTotal_bytes{{{sel}}}")
            fs_avail = _values(prom, f'node_filesystem_avail_bytes{{{sel},fstype!=""}}')
            load1 = _values(prom, f"node_load1{{{sel}}}")
            target = next(t for t in prom.targets() if t["labels"]["instance"] == instance)

    assert [1.0] == up
    assert ("up", "") == (target["health"], target["lastError"])
    assert 1 == len(cpu_usage)
    assert 0.0 <= cpu_usage[0] <= 1.0, cpu_usage
    assert 1 == len(mem_available) == len(mem_total)
    assert 0 < mem_available[0] <= mem_total[0], (mem_available, mem_total)
    assert all(v > 0 for v in fs_avail), fs_avail
    assert 1 == len(load1)
    assert load1[0] >= 0


def _node_exporter_problems(tmp_path: Path) -> set[str]:
    """What promtool says about node_exporter's own exposition on this host."""
    with run_node_exporter(tmp_path) as node_exporter:
        status, _, body = http_get(node_exporter.url + "/metrics")
    assert 200 == status
    rc, problems = promtool_check_metrics(body)
    assert rc in (0, 3), problems  # 3: lint problems; anything else: it could not parse the input
    return set(problems)


def _assert_lint_clean(rc: int, problems: list[str], inherited: set[str]) -> None:
    """No promtool problem except the ones node_exporter's own names produce on this host.

    node_exporter keeps /proc/meminfo's field names (``node_memory_MemAvailable_bytes``), which promtool
    flags as camelCase; the node-mixin queries exactly those names, so the agent must keep them. Any
    other problem, or any parse error, fails.
    """
    own = [p for p in problems if p not in inherited]
    assert [] == own, "promtool problems not shared with node_exporter:\n" + "\n".join(own)
    assert rc == (3 if problems else 0), problems


def test_promtool_check_metrics(tmp_path: Path) -> None:
    """`promtool check metrics` finds nothing in /metrics (text) or `nodeagent once` beyond node_exporter's names."""
    with run_agent(tmp_dir=str(tmp_path)) as agent:
        status, headers, body = http_get(agent.url + "/metrics")
    once = subprocess.run([sys.executable, "-m", "nodeagent", "once"], capture_output=True, timeout=60, check=False)
    inherited = _node_exporter_problems(tmp_path)

    assert (200, "text/plain") == (status, headers["Content-Type"].split(";")[0])
    assert 0 == once.returncode, once.stderr.decode(errors="replace")
    for exposition in (body, once.stdout):
        assert b"node_load1 " in exposition
        rc, problems = promtool_check_metrics(exposition)
        _assert_lint_clean(rc, problems, inherited)
