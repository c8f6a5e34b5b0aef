"""
Peers for agent-process tests of log shipping: the Lumberjack v2 test double (Logstash's beats input) served from
its own event loop in a thread, an agent started from a generated config whose stdout holds every record it
logged, and the check that every logged record arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from nodeagent.collectors import COLLECTORS
from tests.doubles.lumberjack import LumberjackServer, Mode
from tests.ecs_schema import problems
from tests.integration.agent_proc import free_port, http_get, started_process


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


def agent_config(
    tmp_path: Path,
    port: int,
    spool_dir: Path,
    enable: dict[str, dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    level: str = "debug",
    **ship: Any,
) -> Path:
    """
    Only the collectors in ``enable`` (default: loadavg every 0.1 s, which at debug level gives a steady stream of the
    agent's own records to ship), shipping to 127.0.0.1:``port``; ``extra`` adds top-level keys.
    """
    collectors: dict[str, Any] = {name: {"enabled": False} for name in COLLECTORS}
    for name, options in (enable or {"loadavg": {"interval": "0.1s", "timeout": "0.1s"}}).items():
        collectors[name] = {"enabled": True, **options}
    cfg = {
        **(extra or {}),
        "jitter": "1ms",
        "log": {"level": level},
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


class ShippingAgent:
    """``nodeagent run`` with a config file; its stdout (every record it logged) in a file."""

    def __init__(self, config: Path, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = env
        self.tmp_path = tmp_path
        self.port = free_port()
        self.log_path = tmp_path / f"agent-{self.port}.log"

    def __enter__(self) -> ShippingAgent:
        cmd = [sys.executable, "-m", "nodeagent", "run", "--config", str(self.config)]
        cmd += ["--listen", f"127.0.0.1:{self.port}"]
        url = f"http://127.0.0.1:{self.port}/readyz"
        ready = lambda: http_get(url)[0] == 200  # noqa: E731
        self._cm = started_process(cmd, self.log_path, ready, "the agent to become ready", env=self.env)
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
