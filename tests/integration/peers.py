"""Real peers for integration tests: Prometheus and node_exporter (Debian packages) on loopback.

Each runs in a test-only temporary directory and is always stopped (SIGTERM, then SIGKILL), also when
the test fails. A missing binary fails the test under ``CI=true`` and skips it elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.integration.agent_proc import free_port, http_get, started_process, wait_until
from tests.prereq import missing

PROMETHEUS_BIN = "/usr/bin/prometheus"
PROMTOOL_BIN = "/usr/bin/promtool"
NODE_EXPORTER_BIN = "/usr/bin/prometheus-node-exporter"


def require_peer(path: str, apt_package: str) -> str:
    """``path`` if it is an executable file; else fail (CI) or skip, naming the Debian package."""
    if not os.access(path, os.X_OK):
        missing(f"{path} (apt-get install {apt_package})")
    return path


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8", errors="replace")
    return ""


class PromQueryError(AssertionError):
    """Prometheus answered a query with an error (bad expression, timeout)."""


@dataclass
class PrometheusPeer:
    """A running Prometheus server and its HTTP API."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    config_path: Path

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything Prometheus logged so far."""
        return _read(self.log_path)

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` or raises ``PromQueryError`` with Prometheus's message."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, _, body = http_get(f"{self.url}/api/v1/{path}{query}", timeout=30)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise PromQueryError(f"GET {path} -> HTTP {status}, not JSON: {body[:200]!r}") from exc
        if doc.get("status") != "success":
            raise PromQueryError(f"GET {path} {params} -> HTTP {status}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; a vector as its result dicts, a scalar or string as one dict with no labels."""
        data = self.api("query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets."""
        active: list[dict[str, Any]] = self.api("targets", {"state": "active"})["activeTargets"]
        return active


@contextlib.contextmanager
def run_prometheus(
    config_yaml: str, rule_files: Sequence[str | os.PathLike[str]], tmp_path: Path | str
) -> Iterator[PrometheusPeer]:
    """Run ``prometheus`` with ``config_yaml`` plus ``rule_files`` (absolute paths) until ready; stop it after."""
    binary = require_peer(PROMETHEUS_BIN, "prometheus")
    work = Path(tmp_path) / f"prometheus-{free_port()}"
    (work / "data").mkdir(parents=True)
    config: dict[str, Any] = yaml.safe_load(config_yaml) or {}
    if rule_files:
        config["rule_files"] = [*config.get("rule_files", []), *(str(Path(p).resolve()) for p in rule_files)]
    config_path = work / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    port = free_port()
    log_path = work / "prometheus.log"
    cmd = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with started_process(
        cmd, log_path, lambda: http_get(url + "/-/ready", timeout=2)[0] == 200, "Prometheus to become ready", 60, work
    ) as proc:
        yield PrometheusPeer(proc, port, log_path, config_path)


def successful_scrapes(prom: PrometheusPeer, instance: str) -> int:
    """How many successful scrapes of ``instance`` Prometheus recorded in the last 5 minutes.

    ``up`` is 1 for a successful scrape and 0 for a failed one, so its sum over the window counts the
    successes (``count_over_time`` would count failures too).
    """
    result = prom.query(f'sum_over_time(up{{instance="{instance}"}}[5m])')
    return int(float(result[0]["value"][1])) if result else 0


def wait_for_scrapes(prom: PrometheusPeer, instances: Sequence[str], n: int, timeout: float = 60.0) -> None:
    """Wait until every instance has at least ``n`` successful scrapes; on timeout name the targets' errors."""
    try:
        wait_until(
            lambda: all(successful_scrapes(prom, i) >= n for i in instances),
            timeout,
            f"{n} successful scrapes of {list(instances)}",
            interval=0.5,
        )
    except AssertionError as exc:
        states = [(t["labels"].get("instance"), t["health"], t.get("lastError")) for t in prom.targets()]
        raise AssertionError(f"{exc}; targets: {states}\n{prom.log()[-2000:]}") from None


@dataclass
class NodeExporterPeer:
    """A running node_exporter."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance(self) -> str:
        """The ``instance`` label Prometheus gives it when scraped by address."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything node_exporter logged so far."""
        return _read(self.log_path)


@contextlib.contextmanager
def run_node_exporter(tmp_path: Path | str, args: Sequence[str] = ()) -> Iterator[NodeExporterPeer]:
    """Run ``prometheus-node-exporter`` (default collectors) on a free loopback port; stop it after."""
    binary = require_peer(NODE_EXPORTER_BIN, "prometheus-node-exporter")
    port = free_port()
    log_path = Path(tmp_path) / f"node-exporter-{port}.log"
    cmd = [binary, f"--web.listen-address=127.0.0.1:{port}", *args]
    url = f"http://127.0.0.1:{port}"
    with started_process(
        cmd,
        log_path,
        lambda: http_get(url + "/metrics", timeout=5)[0] == 200,
        "node_exporter to serve /metrics",
        30,
        tmp_path,
    ) as proc:
        yield NodeExporterPeer(proc, port, log_path, list(args))


def promtool_check_metrics(exposition: bytes) -> tuple[int, list[str]]:
    """``promtool check metrics`` on an exposition: exit code and the problem lines it printed."""
    binary = require_peer(PROMTOOL_BIN, "prometheus")
    proc = subprocess.run([binary, "check", "metrics"], input=exposition, capture_output=True, timeout=60, check=False)
    lines = (proc.stdout + proc.stderr).decode(errors="replace").splitlines()
    return proc.returncode, [line for line in lines if line.strip()]


def scrape_config(job: str, targets: dict[str, dict[str, str]], interval: str = "1s") -> str:
    """A Prometheus config scraping ``targets`` (address -> extra labels) under ``job`` every ``interval``."""
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [address], "labels": labels} for address, labels in targets.items()],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)
