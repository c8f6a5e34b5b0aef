"""Start the real ``nodeagent run`` process on a free loopback port, and stop it, for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """GET a URL; returns status, headers and body (also for 4xx/5xx)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def run_nodeagent(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nodeagent ARGS`` to its end (a command that exits, e.g. on invalid configuration)."""
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` is truthy or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if predicate():
                return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class AgentProcess:
    """A running agent."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: str

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the agent wrote so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def started_process(
    cmd: Sequence[str],
    log_path: str | os.PathLike[str],
    ready: Callable[[], bool] | None,
    what: str,
    timeout: float = 30.0,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` with its output in ``log_path``, wait until ``ready()`` (if given), stop it afterwards."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        if ready is not None:
            wait_until(lambda: proc.poll() is not None or ready(), timeout, what)
            if proc.poll() is not None:
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    raise AssertionError(f"{what}: process exited early ({proc.returncode}):\n{f.read()}")
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def run_agent(
    args: Sequence[str] = (), *, tmp_dir: str, ready: bool = True, env: dict[str, str] | None = None
) -> Iterator[AgentProcess]:
    """Run ``nodeagent run --listen 127.0.0.1:<free>`` and stop it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    log_path = os.path.join(tmp_dir, f"nodeagent-{port}.log")
    cmd = [sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{port}", *args]
    url = f"http://127.0.0.1:{port}"
    is_ready = (lambda: http_get(url + "/readyz")[0] == 200) if ready else None
    with started_process(
        cmd, log_path, is_ready, "the agent to become ready", env={**os.environ, **(env or {})}
    ) as proc:
        yield AgentProcess(proc, port, log_path)
