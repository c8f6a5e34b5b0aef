"""
Fault tests of log shipping with the real agent process and the Lumberjack v2 test double (Logstash's beats input):
the receiver down for 60 s while records keep coming, ``kill -9`` with unacknowledged records in the spool, a slow
receiver, and a full spool directory. Each asserts that nothing was lost: every ``event.id`` the agent logged (its
stdout has every record) arrives at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.collectors import COLLECTORS
from tests.doubles.lumberjack import LumberjackServer, Mode
from tests.ecs_schema import problems
from tests.integration.agent_proc import free_port, http_get, started_process, wait_until
from tests.prereq import missing

pytestmark = pytest.mark.integration


class BackgroundLumberjack:
    """The Lumberjack test double on its own event loop in a thread, for tests that drive a separate process."""

    def __init__(self, mode: Mode = Mode.NORMAL, **kw: Any) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = LumberjackServer(port=self.port, mode=mode, **kw)
        self.running = False

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        self.server.port = self.port
        self._call(self.server.start())
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._call(self.server.stop())
            self.running = False

    def set_mode(self, mode: Mode) -> None:
        self.loop.call_soon_threadsafe(setattr, self.server, "mode", mode)

    def documents(self) -> list[dict[str, Any]]:
        async def docs() -> list[dict[str, Any]]:
            return self.server.documents()

        result: list[dict[str, Any]] = self._call(docs())
        return result

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def receiver() -> Iterator[BackgroundLumberjack]:
    r = BackgroundLumberjack()
    try:
        yield r
    finally:
        r.close()


def agent_config(tmp_path: Path, port: int, spool_dir: Path, **ship: Any) -> Path:
    """Only loadavg, every 0.1 s, at debug level: a steady stream of the agent's own records to ship."""
    collectors: dict[str, Any] = {name: {"enabled": False} for name in COLLECTORS}
    collectors["loadavg"] = {"enabled": True, "interval": "0.1s", "timeout": "0.1s"}
    cfg = {
        "jitter": "1ms",
        "log": {"level": "debug"},
        "collectors": collectors,
        "logs": {
            "ship": {
                "protocol": "beats",
                "hosts": [f"127.0.0.1:{port}"],
                "spool_dir": str(spool_dir),
                "timeout": "1s",
                "backoff_initial": "0.2s",
                "backoff_max": "1s",
                **ship,
            }
        },
    }
    path = tmp_path / f"nodeagent-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Agent:
    """``nodeagent run`` with a config file; its stdout (every record it logged) in a file."""

    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.config = config
        self.tmp_path = tmp_path
        self.port = free_port()
        self.log_path = tmp_path / f"agent-{self.port}.log"

    def __enter__(self) -> Agent:
        cmd = [sys.executable, "-m", "nodeagent", "run", "--config", str(self.config)]
        cmd += ["--listen", f"127.0.0.1:{self.port}"]
        url = f"http://127.0.0.1:{self.port}/readyz"
        self._cm = started_process(cmd, self.log_path, lambda: http_get(url)[0] == 200, "the agent to become ready")
        self.proc: subprocess.Popen[bytes] = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(None, None, None)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):  # the last line may be half written at the moment of reading
                    out.append(json.loads(line))
        return out

    def ids(self) -> set[str]:
        return {r["event.id"] for r in self.records()}

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def metric(self, name: str) -> float:
        status, _, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def assert_all_arrived(wanted: set[str], receiver: BackgroundLumberjack, limit: float = 30.0) -> list[dict[str, Any]]:
    """Wait until every id in ``wanted`` was received; every received document validates against the ECS schema."""
    deadline = time.monotonic() + limit
    while True:
        docs = receiver.documents()
        missing_ids = wanted - {d.get("event.id") for d in docs}
        if not missing_ids:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing_ids)} of {len(wanted)} records never arrived")
        time.sleep(0.2)
    for d in docs:
        assert problems(d) == [], d
        assert d["@metadata"] == {"_id": d["event.id"]}
    return docs


def test_receiver_down_for_60_seconds_loses_nothing_and_memory_stays_bounded(
    tmp_path: Path, receiver: BackgroundLumberjack
) -> None:
    receiver.start()
    with Agent(agent_config(tmp_path, receiver.port, tmp_path / "spool"), tmp_path) as agent:
        wait_until(lambda: len(receiver.documents()) > 20, 10, "records flowing")
        receiver.stop()  # Logstash goes away for a minute while the agent keeps logging
        down_at = time.monotonic()
        base = agent.rss_kib()
        rss = [base]
        while time.monotonic() - down_at < 60:
            time.sleep(5)
            rss.append(agent.rss_kib())
        during = agent.ids()
        unacked = agent.metric("nodeagent_log_records_unacknowledged")
        receiver.start()
        assert_all_arrived(during, receiver)
        assert agent.metric("nodeagent_log_records_dropped_total") == 0
    assert unacked >= 300  # at ~10 records/s, the minute's records waited in the spool
    growth_mib = (max(rss) - base) / 1024
    print(
        f"\nRSS during the 60 s outage: {base / 1024:.1f} MiB at the start, max {max(rss) / 1024:.1f} MiB "
        f"(+{growth_mib:.1f} MiB) with {unacked:.0f} records waiting; {len(during)} records checked"
    )
    assert growth_mib < 16, rss  # the spool is on disk; memory holds at most memory_max_bytes of unwritten records


def test_kill_9_with_unacknowledged_records_then_restart_delivers_them(
    tmp_path: Path, receiver: BackgroundLumberjack
) -> None:
    receiver.server.mode = Mode.SILENT  # reads batches, never acknowledges: everything stays in the spool
    receiver.start()
    spool = tmp_path / "spool"
    config = agent_config(tmp_path, receiver.port, spool)
    with Agent(config, tmp_path) as first:
        wait_until(lambda: first.metric("nodeagent_log_records_unacknowledged") > 50, 15, "unacknowledged records")
        before = first.ids()
        time.sleep(0.7)  # > sync_interval: what was logged up to `before` is on disk
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    assert receiver.documents() == []  # nothing was acknowledged
    receiver.set_mode(Mode.NORMAL)
    with Agent(config, tmp_path):
        assert_all_arrived(before, receiver)


def test_slow_receiver_with_keepalives_loses_nothing(tmp_path: Path) -> None:
    receiver = BackgroundLumberjack(mode=Mode.DELAYED_ACK, delay_s=2.5, keepalive_s=0.4)
    try:
        receiver.start()
        with Agent(agent_config(tmp_path, receiver.port, tmp_path / "spool"), tmp_path) as agent:
            time.sleep(6)
            wanted = agent.ids()
            assert_all_arrived(wanted, receiver, limit=30)
            assert receiver.server.keepalives > 0
            assert agent.metric("nodeagent_log_ship_failures_total") == 0  # each wait < timeout thanks to ACK 0
    finally:
        receiver.close()


def test_spool_directory_full_keeps_records_in_memory_and_delivers_them(
    tmp_path: Path, receiver: BackgroundLumberjack
) -> None:
    if os.geteuid() != 0:
        missing("root (mounting a small tmpfs as a full spool directory)")
    spool = tmp_path / "tiny"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(spool)], check=True)
    try:
        port = receiver.port  # not started: Logstash is down, the spool fills the 64 KiB disk
        with Agent(agent_config(tmp_path, port, spool), tmp_path) as agent:
            wait_until(lambda: agent.metric("nodeagent_log_spool_write_errors_total") > 0, 30, "the disk to fill")
            time.sleep(1)
            wanted = agent.ids()
            assert agent.proc.poll() is None  # still running
            receiver.start()
            assert_all_arrived(wanted, receiver)
            assert agent.metric("nodeagent_log_records_dropped_total") == 0
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)
