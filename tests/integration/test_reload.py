"""SIGHUP reload of the configuration on a real agent process: a valid change is applied without a restart
(collectors switched, restart-only keys kept and named), a broken one is refused with the reason and the agent
keeps serving on the running configuration, then recovers on the next good one."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.agent_proc import free_port, http_get, started_process, wait_until

BASE = "collectors:\n  cgroups: {enabled: false}\n  runtimes: {enabled: false}\n"


def _samples(url: str) -> dict[str, float]:
    status, _, body = http_get(url + "/metrics")
    assert 200 == status
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _records(log_path: Path) -> list[dict[str, object]]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _events(log_path: Path, name: str) -> list[dict[str, object]]:
    return [r for r in _records(log_path) if r.get("message") == name]


@contextlib.contextmanager
def _agent(tmp_path: Path, config: str) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, str]]:
    """``nodeagent run --config FILE`` with ``config`` in FILE, ready; yields the process, FILE, the log and the URL."""
    port = free_port()
    cfg = tmp_path / "nodeagent.yaml"
    cfg.write_text(config)
    log_path = tmp_path / "agent.log"
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{port}", "--config", str(cfg)]
    with started_process(cmd, log_path, lambda: http_get(url + "/readyz")[0] == 200, "the agent to be ready") as proc:
        yield proc, cfg, log_path, url


def test_sighup_applies_a_good_config_and_keeps_running_on_a_broken_one(tmp_path: Path) -> None:
    with _agent(tmp_path, BASE + "  uname: {enabled: false}\n") as (proc, cfg, log_path, url):
        before = _samples(url)
        assert 1 == before["nodeagent_config_last_reload_successful"]
        assert not any(k.startswith("node_uname_info") for k in before)
        started_at = before["nodeagent_config_last_reload_success_timestamp_seconds"]

        # 1. A good change: uname on, loadavg off, a shipping setting (needs a restart: kept and named).
        cfg.write_text(BASE + "  uname: {enabled: true}\n  loadavg: {enabled: false}\nlogs: {ship: {batch_max: 77}}\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _events(log_path, "config.reloaded"), 30, "the reload")
        after = _samples(url)  # still served on the old port
        assert any(k.startswith("node_uname_info{") for k in after)
        assert "node_load1" not in after
        assert 'nodeagent_collector_success{collector="uname"}' in after
        assert 'nodeagent_collector_success{collector="loadavg"}' not in after
        assert 1 == after["nodeagent_config_last_reload_successful"]
        assert after["nodeagent_config_last_reload_success_timestamp_seconds"] > started_at
        assert [["logs.ship"]] == [e["nodeagent.keys"] for e in _events(log_path, "config.reload_needs_restart")]
        assert 200 == http_get(url + "/readyz")[0]

        # 2. Broken YAML, then an invalid value: refused with the reason; the running configuration stays.
        for broken, reason in (
            ("collectors: [\n", "invalid YAML at line 2"),
            (BASE + "  uname: {interval: -5s}\n", "collectors.uname.interval"),
        ):
            failed_before = len(_events(log_path, "config.reload_failed"))
            cfg.write_text(broken)
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda n=failed_before: len(_events(log_path, "config.reload_failed")) > n, 30, "the refusal")
            message = _events(log_path, "config.reload_failed")[-1]["error.message"]
            assert reason in str(message) and str(cfg) in str(message), message
            during = _samples(url)
            assert 0 == during["nodeagent_config_last_reload_successful"]
            assert any(k.startswith("node_uname_info{") for k in during)
            assert "node_load1" not in during
            assert proc.poll() is None

        # 3. Fixed: applied, and the reload gauge is back to 1.
        reloaded = len(_events(log_path, "config.reloaded"))
        cfg.write_text(BASE)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(_events(log_path, "config.reloaded")) > reloaded, 30, "the recovery")
        recovery = time.monotonic() - t0
        print(f"reload applied {recovery:.2f} s after SIGHUP")
        final = _samples(url)
        assert 1 == final["nodeagent_config_last_reload_successful"]
        assert "node_load1" in final
        assert recovery < 15, recovery
        assert proc.poll() is None
    assert 0 == proc.returncode
    assert not [
        r for r in _records(log_path) if r.get("log.level") == "error" and r["message"] != "config.reload_failed"
    ]


def test_sighup_reloads_the_log_level(tmp_path: Path) -> None:
    with _agent(tmp_path, BASE + "log: {level: info}\n") as (proc, cfg, log_path, _):
        assert not [r for r in _records(log_path) if r.get("log.level") == "debug"]
        cfg.write_text(BASE + "log: {level: debug}\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: [r for r in _records(log_path) if r.get("log.level") == "debug"], 30, "debug records")
