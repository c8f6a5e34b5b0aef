"""
Metric families: the immutable values a collector publishes each cycle.

A family is built fresh every cycle (no long-lived gauges to clean up); the exposition renders it.
Names are the sample names as scraped: counters end in ``_total`` and info families in ``_info``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

MetricType = Literal["counter", "gauge", "info", "untyped"]
LabelValues = tuple[str, ...]
Sample = tuple[LabelValues, float]

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MetricDefinitionError(ValueError):
    """A family was declared with an invalid name, type or label set (a programming error)."""


@dataclass(frozen=True, slots=True)
class Exemplar:
    """
    An OpenMetrics exemplar on a counter sample: the trace id of the event that last moved it, so a dashboard
    can jump from the metric to that event's log records. Rendered only in the OpenMetrics format.
    """

    trace_id: str
    value: float = 1.0
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One metric family with its samples, immutable once built."""

    name: str
    type: MetricType
    help: str
    labelnames: LabelValues
    samples: tuple[Sample, ...]
    # Counter samples' exemplars, by label values (OpenMetrics only).
    exemplars: Mapping[LabelValues, Exemplar] | None = None


class FamilyBuilder:
    """
    Accumulates the samples of one family during a cycle.

    ``add`` is on the hot path, so it only appends; label counts are checked when the exposition
    first renders a series.
    """

    __slots__ = ("_samples", "help", "labelnames", "name", "type")

    def __init__(self, name: str, type: MetricType, help: str, labelnames: LabelValues = ()) -> None:
        if not _NAME_RE.match(name):
            raise MetricDefinitionError(f"invalid metric name {name!r}")
        if type == "counter" and not name.endswith("_total"):
            raise MetricDefinitionError(f"counter {name!r} must end in _total")
        if type == "info" and not name.endswith("_info"):
            raise MetricDefinitionError(f"info family {name!r} must end in _info")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise MetricDefinitionError(f"invalid label name {label!r} in {name}")
        if len(set(labelnames)) != len(labelnames):
            raise MetricDefinitionError(f"duplicate label names in {name}: {labelnames}")
        self.name = name
        self.type: MetricType = type
        self.help = help
        self.labelnames = labelnames
        self._samples: list[Sample] = []

    def add(self, labelvalues: LabelValues, value: float) -> None:
        """Add one sample; ``labelvalues`` are in the order of ``labelnames``."""
        self._samples.append((labelvalues, value))

    def build(self) -> MetricFamily:
        """Freeze the samples gathered so far into a family."""
        return MetricFamily(self.name, self.type, self.help, self.labelnames, tuple(self._samples))


def counter(name: str, help: str, labelnames: LabelValues = ()) -> FamilyBuilder:
    """Start a counter family (``name`` ends in ``_total``)."""
    return FamilyBuilder(name, "counter", help, labelnames)


def gauge(name: str, help: str, labelnames: LabelValues = ()) -> FamilyBuilder:
    """Start a gauge family."""
    return FamilyBuilder(name, "gauge", help, labelnames)


def info(name: str, help: str, labelnames: LabelValues = ()) -> FamilyBuilder:
    """Start an info family (``name`` ends in ``_info``; every sample has value 1)."""
    return FamilyBuilder(name, "info", help, labelnames)


def untyped(name: str, help: str, labelnames: LabelValues = ()) -> FamilyBuilder:
    """Start an untyped family (``unknown`` in OpenMetrics), as node_exporter uses for vmstat."""
    return FamilyBuilder(name, "untyped", help, labelnames)


def single(name: str, type: MetricType, help: str, value: float) -> MetricFamily:
    """A family with one unlabelled sample."""
    return MetricFamily(name, type, help, (), (((), value),))
