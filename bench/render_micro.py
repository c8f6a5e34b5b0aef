"""
Micro-benchmark of the exposition renderer: microseconds per series per cycle.

5,000 container-style series (6 labels, label tuples reused across cycles as the collectors' caches do),
half of the families with integer values, half with float seconds; 0 %, 50 % and 100 % of the values
changed between cycles. Run: ``python3 bench/render_micro.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from nodeagent.exposition import FamilyRenderer
from nodeagent.metrics import MetricFamily, counter

LABELS = ("id", "name", "image", "container", "pod", "namespace")
SERIES_LABELS = [
    (f"/kubepods/burstable/pod{i}/abc", f"name{i}", "docker.io/library/busybox:1.36", f"c{i}", f"pod-{i}", "default")
    for i in range(250)
]


def families(cycle: int, changed_percent: int) -> list[MetricFamily]:
    """20 families of 250 series; ``changed_percent`` of each family's values move by ``cycle``."""
    out = []
    for f in range(20):
        builder = counter(f"container_thing_{f}_total", "Help.", LABELS)
        for i, labels in enumerate(SERIES_LABELS):
            value: float = i * 1000003 + (cycle if (i % 100) < changed_percent else 0)
            if f % 2:
                value = value / 1e6  # seconds from microseconds, as cgroup CPU counters are
            builder.add(labels, value)
        out.append(builder.build())
    return out


class _ClientCollector(Collector):
    """The same families through prometheus-client's own custom-collector path, for comparison."""

    def __init__(self, families: list[MetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[CounterMetricFamily]:
        for fam in self.families:
            out = CounterMetricFamily(fam.name[: -len("_total")], fam.help, labels=fam.labelnames)
            for labels, value in fam.samples:
                out.add_metric(labels, value)
            yield out


def client_render_us(fams: list[MetricFamily]) -> float:
    """Microseconds per series of prometheus-client's generate_latest on the same data (best of 3)."""
    registry = CollectorRegistry()
    registry.register(_ClientCollector(fams))
    series = sum(len(f.samples) for f in fams)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        generate_latest(registry)
        best = min(best, time.perf_counter() - started)
    return best * 1e6 / series


def main() -> None:
    """Print the best of five cycles for each change rate, and prometheus-client's cost on the same data."""
    for changed in (0, 50, 100):
        renderer = FamilyRenderer()
        renderer.render(families(0, changed))
        best = float("inf")
        series = 0
        for cycle in range(1, 6):
            fams = families(cycle, changed)
            started = time.perf_counter()
            series = renderer.render(fams).series
            best = min(best, time.perf_counter() - started)
        print(f"{changed:3d}% of series changed: {best * 1e6 / series:.3f} us/series ({series} series)")
    print(f"prometheus-client generate_latest, same data: {client_render_us(families(9, 100)):.1f} us/series")


if __name__ == "__main__":
    main()
