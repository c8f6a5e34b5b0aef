"""
What a fault test reads from a running agent: scrapes (timed, parsed with prometheus_client's own parser), the
per-collector self-metrics, and the agent's ECS JSON log records.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.agent_proc import http_get

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scrape:
    """One /metrics response: every sample by (name, sorted labels), and how long the request took."""

    samples: dict[tuple[str, Labels], float]
    seconds: float

    def series(self, name: str, **match: str) -> dict[Labels, float]:
        """The samples of ``name`` whose labels include ``match``."""
        return {
            labels: v
            for (n, labels), v in self.samples.items()
            if n == name and all(dict(labels).get(k) == want for k, want in match.items())
        }

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """``label`` value -> value for the samples of ``name`` matching ``match``."""
        return {dict(labels)[label]: v for labels, v in self.series(name, **match).items()}

    def one(self, name: str, **match: str) -> float | None:
        """The single sample of ``name`` matching ``match``, or None; more than one is an error."""
        found = list(self.series(name, **match).values())
        assert len(found) <= 1, f"{len(found)} samples of {name} match {match}"
        return found[0] if found else None

    def success(self) -> dict[str, float]:
        """``nodeagent_collector_success`` by collector."""
        return self.by("nodeagent_collector_success", "collector")

    def failures(self, collector: str) -> dict[str, float]:
        """``nodeagent_collector_failures_total`` of one collector, by reason."""
        return self.by("nodeagent_collector_failures_total", "reason", collector=collector)

    def all_failures(self) -> dict[tuple[str, str], float]:
        """Every collector's failure counters: (collector, reason) -> count."""
        return {
            (dict(labels)["collector"], dict(labels)["reason"]): v
            for labels, v in self.series("nodeagent_collector_failures_total").items()
        }


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    """GET ``url``/metrics (must answer 200) and parse it."""
    started = time.monotonic()
    status, _headers, body = http_get(url + "/metrics", timeout=timeout)
    seconds = time.monotonic() - started
    assert status == 200, f"/metrics answered {status}"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    return Scrape(samples, seconds)


def healthz_seconds(url: str) -> float:
    """GET ``url``/healthz (must answer 200); returns how long it took."""
    started = time.monotonic()
    status, _headers, _body = http_get(url + "/healthz")
    assert status == 200, f"/healthz answered {status}"
    return time.monotonic() - started


def records(log_text: str) -> list[dict[str, Any]]:
    """The agent's JSON log documents (any other line, such as a test double's stderr, is left out)."""
    out = []
    for line in log_text.splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                out.append(doc)
    return out


def problems(docs: list[dict[str, Any]], collector: str) -> list[str]:
    """``message`` of every record a collector (or the scheduler for it) logged at warning or above."""
    return [
        str(d.get("message"))
        for d in docs
        if d.get("log.level") in ("warning", "error", "critical") and d.get("nodeagent.collector") == collector
    ]


def of_collector(docs: list[dict[str, Any]], collector: str, message: str) -> list[dict[str, Any]]:
    """The records named ``message`` that a collector logged."""
    return [d for d in docs if d.get("message") == message and d.get("nodeagent.collector") == collector]
