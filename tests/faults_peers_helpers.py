"""
Helpers of the peer fault tests (``tests/integration/test_faults_peers.py``): an agent process started from a
generated configuration (optionally as an unprivileged user), its /metrics parsed into samples, a background
scraper that proves /metrics kept answering through a fault, a stopwatch for recovery times, and the kubelet
PodResources test double served from its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.collectors import COLLECTORS
from tests.doubles.podresources import PodAlloc, PodResourcesDouble
from tests.integration.agent_proc import free_port, http_get, started_process

REPO_ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534  # uid and gid of nobody/nogroup on Debian

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    """GET ``url``/metrics (which must answer 200) as family sample name -> [(labels, value)]."""
    status, _, body = http_get(url + "/metrics")
    assert status == 200, f"/metrics answered {status}"
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``; None if there is none."""
    found = [v for lb, v in samples.get(name, []) if all(lb.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def total(samples: Samples, name: str) -> float:
    """The sum of every sample of ``name``."""
    return sum(v for _, v in samples.get(name, []))


def collector_state(samples: Samples, collector: str) -> tuple[float | None, float | None]:
    """``(success, has_data)`` of one collector."""
    return (
        value(samples, "nodeagent_collector_success", collector=collector),
        value(samples, "nodeagent_collector_has_data", collector=collector),
    )


def measure(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> float:
    """Seconds until ``predicate()`` is truthy; fails naming ``what`` after ``timeout`` seconds."""
    start = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except (OSError, AssertionError) as exc:  # the agent between two states, a socket not ready yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last problem: {last})")


def collectors_only(enable: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ``collectors`` section with only the collectors of ``enable`` (name -> options) turned on."""
    out: dict[str, dict[str, Any]] = {name: {"enabled": False} for name in COLLECTORS}
    for name, options in enable.items():
        out[name] = {"enabled": True, **options}
    return out


NO_RUNTIMES: dict[str, Any] = {
    "runtimes": {name: {"enabled": False} for name in ("containerd", "cri", "docker", "podman")},
    "kubelet": {"podresources": {"enabled": False}},
}


class FaultAgent:
    """
    ``nodeagent run`` with a generated config file, its output (JSON records) in a file. ``as_user`` runs it as
    that uid and gid through ``setpriv``, with only CAP_DAC_READ_SEARCH kept (ambient), so that an interpreter
    installed under a root-only home still loads; that capability bypasses read and search checks, never write,
    and connecting to a unix socket needs write permission on it.
    """

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
        as_user: int | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"nodeagent-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.config_path.chmod(0o644)
        self.log_path = workdir / f"nodeagent-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        self.as_user = as_user
        self.proc: subprocess.Popen[bytes] | None = None
        self._cm: contextlib.AbstractContextManager[subprocess.Popen[bytes]] | None = None

    def command(self, subcommand: str = "run") -> list[str]:
        """``nodeagent run`` (or another subcommand) with this config, as ``as_user`` when set."""
        cmd = [sys.executable, "-m", "nodeagent", subcommand, "--config", str(self.config_path)]
        if subcommand == "run":
            cmd += ["--listen", f"127.0.0.1:{self.port}"]
        if self.as_user is None:
            return cmd
        drop = [f"--reuid={self.as_user}", f"--regid={self.as_user}", "--clear-groups"]
        keep = "dac_read_search"
        caps = [f"--inh-caps=-all,+{keep}", f"--ambient-caps=+{keep}", f"--bounding-set=-all,+{keep}"]
        return ["setpriv", *drop, *caps, "--", *cmd]

    def doctor(self) -> str:
        """What ``nodeagent doctor`` prints with this config, as the same user."""
        res = subprocess.run(
            self.command("doctor"), capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=self.env
        )
        return res.stdout

    def __enter__(self) -> FaultAgent:
        ready = lambda: http_get(self.url + "/readyz")[0] == 200  # noqa: E731
        self._cm = started_process(
            self.command(), self.log_path, ready, "the agent to become ready", cwd=REPO_ROOT, env=self.env
        )
        self.proc = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)

    def scrape(self) -> Samples:
        return scrape(self.url)

    def records(self) -> list[dict[str, Any]]:
        """Every JSON record the agent wrote so far (a half-written last line is left out)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        """The records logged under event name ``name`` (``log.info(name, message=...)``)."""
        return [r for r in self.records() if r.get("nodeagent.log.event") == name or r.get("message") == name]


class ScrapeWatch:
    """Scrapes /metrics every ``period`` seconds in a thread while a fault is on; counts answers and failures."""

    def __init__(self, url: str, period: float = 0.2) -> None:
        self.url = url
        self.period = period
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, body = http_get(self.url + "/metrics", timeout=5)
                if status == 200 and b"nodeagent_collector_success" in body:
                    self.ok += 1
                else:
                    self.failures.append(f"status {status}")
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.period)

    def __enter__(self) -> ScrapeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class BackgroundPodResources:
    """The kubelet PodResources double on its own event loop in a thread, for tests that drive a separate process:
    ``start()`` creates the socket (the kubelet comes up), ``stop()`` removes it."""

    def __init__(self, socket_path: Path, pods: Sequence[PodAlloc]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.double = PodResourcesDouble(socket_path, pods)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        self._call(self.double.start())

    def stop(self) -> None:
        self._call(self.double.stop())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (made if absent), unmounted (lazily, so never left busy) after."""
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "natest-spool", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, chunk: int = 4096) -> Path:
    """Fill the file system of ``directory`` with one file until it is full (ENOSPC); returns the file."""
    filler = directory / "natest-filler"
    block = b"\0" * chunk
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError:
                if chunk == 1:
                    return filler
                chunk //= 2  # top up the last blocks so that not even a small record fits
                block = block[:chunk]
