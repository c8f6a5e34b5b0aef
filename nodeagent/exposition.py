"""
Exposition: renders published snapshots once per change, serves bytes per scrape.

Each collector's families are rendered when its cycle publishes, reusing the escaped
``name{labels} `` prefix of every series seen in the previous cycle, so a cycle costs one dict lookup
and one float format per series. The whole body (Prometheus text 0.0.4 or OpenMetrics 1.0, optionally
gzip) is assembled lazily, at most once per change and format, and never by a collector's I/O.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.exposition import choose_encoder

from nodeagent.metrics import LabelValues, MetricFamily

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
GZIP_LEVEL = 6

_OM_TYPES = {"counter": "counter", "gauge": "gauge", "info": "info", "untyped": "unknown"}
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "info": "gauge", "untyped": "untyped"}


def escape_label_value(value: str) -> str:
    """Escape a label value for both text formats (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_text_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Format a sample value as Prometheus parsers expect (``+Inf``, ``-Inf``, ``NaN``)."""
    r = repr(value)
    if r[-1].isdigit():
        return r
    if value.__class__ is bool:
        return "1" if value else "0"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _series_prefix(name: str, labelnames: LabelValues, labelvalues: LabelValues) -> str:
    if len(labelnames) != len(labelvalues):
        raise ValueError(f"{name}: {len(labelvalues)} label values for labels {labelnames}: {labelvalues!r}")
    if not labelnames:
        return name + " "
    body = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in zip(labelnames, labelvalues, strict=True))
    return f"{name}{{{body}}} "


@dataclass(frozen=True, slots=True)
class RenderedChunk:
    """One collector's families in both formats (OpenMetrics without the final ``# EOF``)."""

    text: str
    openmetrics: str
    series: int


_EMPTY = RenderedChunk("", "", 0)
_NO_SERIES: dict[LabelValues, tuple[str, float, str]] = {}
# Integral floats below 2**53 are exact as integers and format several times faster that way.
_EXACT = float(2**53)


class FamilyRenderer:
    """
    Renders one collector's families, caching each series' line between cycles.

    Per family, label values map to ``(prefix, value, line)``: a series whose value did not change reuses
    its line; one whose value changed formats only the value. Series absent from a render are forgotten.
    """

    __slots__ = ("_families", "_headers")

    def __init__(self) -> None:
        self._families: dict[str, dict[LabelValues, tuple[str, float, str]]] = {}
        self._headers: dict[tuple[str, str, str], tuple[str, str]] = {}

    def _header(self, family: MetricFamily) -> tuple[str, str]:
        key = (family.name, family.type, family.help)
        cached = self._headers.get(key)
        if cached is None:
            name, kind = family.name, family.type
            text = f"# HELP {name} {_escape_text_help(family.help)}\n# TYPE {name} {_TEXT_TYPES[kind]}\n"
            om_name = name
            if kind == "counter":
                om_name = name[: -len("_total")]
            elif kind == "info":
                om_name = name[: -len("_info")]
            om = f"# TYPE {om_name} {_OM_TYPES[kind]}\n# HELP {om_name} {escape_label_value(family.help)}\n"
            cached = self._headers[key] = (text, om)
        return cached

    def render(self, families: Iterable[MetricFamily]) -> RenderedChunk:
        """Render families; an unchanged series costs a lookup and a comparison."""
        old_families = self._families
        new_families: dict[str, dict[LabelValues, tuple[str, float, str]]] = {}
        headers: dict[tuple[str, str, str], tuple[str, str]] = {}
        text_parts: list[str] = []
        om_parts: list[str] = []
        series = 0
        for family in families:
            text_header, om_header = self._header(family)
            headers[(family.name, family.type, family.help)] = (text_header, om_header)
            name, labelnames = family.name, family.labelnames
            old = old_families.get(name, _NO_SERIES)
            new = new_families.setdefault(name, {})
            lines: list[str] = []
            append = lines.append
            for labelvalues, value in family.samples:
                entry = old.get(labelvalues)
                if entry is None:
                    prefix = _series_prefix(name, labelnames, labelvalues)
                elif entry[1] == value:  # equal values render alike: integral floats print as ints
                    new[labelvalues] = entry
                    append(entry[2])
                    continue
                else:
                    prefix = entry[0]
                if value.__class__ is int:
                    line = f"{prefix}{value}\n"
                elif value.__class__ is float and value.is_integer() and -_EXACT < value < _EXACT:
                    line = f"{prefix}{int(value)}\n"
                else:
                    line = f"{prefix}{format_value(value)}\n"
                new[labelvalues] = (prefix, value, line)
                append(line)
            body = "".join(lines)
            series += len(lines)
            text_parts.append(text_header)
            text_parts.append(body)
            om_parts.append(om_header)
            om_parts.append(_with_exemplars(family, lines) if family.exemplars else body)
        self._families = new_families
        self._headers = headers
        return RenderedChunk("".join(text_parts), "".join(om_parts), series)


def _with_exemplars(family: MetricFamily, lines: list[str]) -> str:
    """The OpenMetrics body of a family whose samples carry exemplars (``value # {trace_id="..."} v ts``)."""
    exemplars = family.exemplars or {}
    out = []
    for (labelvalues, _value), line in zip(family.samples, lines, strict=True):
        ex = exemplars.get(labelvalues)
        if ex is None:
            out.append(line)
            continue
        ts = "" if ex.timestamp is None else f" {ex.timestamp:.3f}"
        out.append(f'{line[:-1]} # {{trace_id="{escape_label_value(ex.trace_id)}"}} {format_value(ex.value)}{ts}\n')
    return "".join(out)


def negotiate(accept: str | None) -> bool:
    """True when the ``Accept`` header asks for OpenMetrics (prometheus-client's negotiation rules)."""
    _, content_type = choose_encoder(accept or "")
    return content_type.startswith("application/openmetrics-text")


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when ``Accept-Encoding`` lists gzip with a non-zero quality."""
    for item in (accept_encoding or "").split(","):
        token, _, params = item.strip().partition(";")
        if token.strip().lower() in ("gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


class Exposition:
    """
    The scrape-facing cache: one rendered chunk per collector plus the agent's self-metrics.

    ``publish`` (called at the end of a collector's cycle) renders that collector's chunk and
    invalidates the assembled bodies; ``body`` assembles and compresses at most once per change.
    """

    def __init__(self, order: Sequence[str], self_families: Callable[[], Sequence[MetricFamily]]) -> None:
        self._order = list(order)
        self._renderers = {name: FamilyRenderer() for name in self._order}
        self._chunks: dict[str, RenderedChunk] = dict.fromkeys(self._order, _EMPTY)
        self._self_families = self_families
        self._self_renderer = FamilyRenderer()
        self._bodies: dict[tuple[bool, bool], bytes] = {}
        self.generation = 0

    def publish(self, collector: str, families: Sequence[MetricFamily]) -> int:
        """Render and store a collector's families (empty to drop them); returns the series count."""
        chunk = self._renderers[collector].render(families) if families else _EMPTY
        if not families:
            self._renderers[collector] = FamilyRenderer()
        self._chunks[collector] = chunk
        self.invalidate()
        return chunk.series

    def invalidate(self) -> None:
        """Forget the assembled bodies (the self-metrics changed)."""
        self._bodies.clear()
        self.generation += 1

    def series(self, collector: str) -> int:
        """Series the collector published last."""
        return self._chunks[collector].series

    def body(self, openmetrics: bool, compress: bool) -> bytes:
        """The full exposition in the asked format, built once per change."""
        key = (openmetrics, compress)
        cached = self._bodies.get(key)
        if cached is not None:
            return cached
        if compress:
            data = gzip.compress(self.body(openmetrics, False), compresslevel=GZIP_LEVEL, mtime=0)
        else:
            self_chunk = self._self_renderer.render(self._self_families())
            if openmetrics:
                parts = [self._chunks[n].openmetrics for n in self._order]
                parts.append(self_chunk.openmetrics)
                parts.append("# EOF\n")
            else:
                parts = [self._chunks[n].text for n in self._order]
                parts.append(self_chunk.text)
            data = "".join(parts).encode()
        self._bodies[key] = data
        return data
