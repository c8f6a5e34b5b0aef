"""The renderer and exposition cache: format rules, caching, negotiation, compression."""

from __future__ import annotations

import gzip
import math
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from nodeagent.exposition import Exposition, FamilyRenderer, accepts_gzip, format_value, negotiate
from nodeagent.metrics import MetricFamily, counter, gauge, info, single, untyped
from tests.prereq import require_binary


def _families() -> list[MetricFamily]:
    c = counter("node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", ("cpu", "mode"))
    c.add(("0", "idle"), 123.25)
    c.add(("0", "user"), 7)
    g = gauge("node_filesystem_avail_bytes", "Available bytes.", ("device", "mountpoint", "fstype"))
    g.add(('/dev/"odd"', "/mnt/with space\\and\nnewline", "ext4"), 1024.0)
    i = info("nodeagent_build_info", "Build.", ("version",))
    i.add(("1.0",), 1)
    u = untyped("node_vmstat_pgfault", "vmstat pgfault.")
    u.add((), 5)
    return [c.build(), g.build(), i.build(), u.build(), single("node_load1", "gauge", "1m load.", 0.5)]


def _samples(families) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    out = {}
    for fam in families:
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_text_round_trip() -> None:
    """Text 0.0.4 output parses back, through prometheus-client, to the same names, labels and values."""
    chunk = FamilyRenderer().render(_families())
    parsed = _samples(text_parse(chunk.text))

    assert {
        ("node_cpu_seconds_total", (("cpu", "0"), ("mode", "idle"))): 123.25,
        ("node_cpu_seconds_total", (("cpu", "0"), ("mode", "user"))): 7.0,
        (
            "node_filesystem_avail_bytes",
            (("device", '/dev/"odd"'), ("fstype", "ext4"), ("mountpoint", "/mnt/with space\\and\nnewline")),
        ): 1024.0,
        ("nodeagent_build_info", (("version", "1.0"),)): 1.0,
        ("node_vmstat_pgfault", ()): 5.0,
        ("node_load1", ()): 0.5,
    } == parsed


def test_openmetrics_round_trip() -> None:
    """OpenMetrics output parses with the strict OpenMetrics parser; counters and info keep their types."""
    exposition = Exposition(["a"], lambda: [])
    exposition.publish("a", _families())
    body = exposition.body(openmetrics=True, compress=False).decode()
    families = {f.name: f for f in om_parse(body)}

    assert body.endswith("# EOF\n")
    assert "counter" == families["node_cpu_seconds"].type
    assert "info" == families["nodeagent_build"].type
    assert "unknown" == families["node_vmstat_pgfault"].type
    assert 123.25 == families["node_cpu_seconds"].samples[0].value


def test_special_values() -> None:
    """NaN and infinities use the spelling Prometheus parsers accept; integral floats print as integers."""
    assert ["NaN", "+Inf", "-Inf", "1", "0.1", "12345678901234567890"] == [
        format_value(math.nan),
        format_value(math.inf),
        format_value(-math.inf),
        format_value(True),
        format_value(0.1),
        format_value(12345678901234567890),
    ]
    g = gauge("x", "X.", ("k",))
    g.add(("a",), math.inf)
    g.add(("b",), 2.0)
    text = FamilyRenderer().render([g.build()]).text

    assert 'x{k="a"} +Inf\nx{k="b"} 2\n' in text


def test_cache_follows_changes() -> None:
    """A second render shows changed values, keeps unchanged ones, and forgets vanished series."""
    r = FamilyRenderer()
    g = gauge("x", "X.", ("k",))
    g.add(("a",), 1)
    g.add(("b",), 2)
    r.render([g.build()])
    g2 = gauge("x", "X.", ("k",))
    g2.add(("a",), 1)
    g2.add(("c",), 3.5)
    text = r.render([g2.build()]).text

    assert '# HELP x X.\n# TYPE x gauge\nx{k="a"} 1\nx{k="c"} 3.5\n' == text


def test_label_count_mismatch_is_an_error() -> None:
    """A sample with the wrong number of label values fails loudly, naming the family."""
    g = gauge("x", "X.", ("a", "b"))
    g.add(("only-one",), 1)
    with pytest.raises(ValueError, match="x: 1 label values"):
        FamilyRenderer().render([g.build()])


label_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.tuples(label_text, st.floats(allow_nan=False)), min_size=1, max_size=5, unique_by=lambda t: t[0]
    )
)
def test_any_label_value_round_trips(values: list[tuple[str, float]]) -> None:
    """Arbitrary label values and floats survive escaping in both formats."""
    g = gauge("prop_test", "Property test.", ("v",))
    for label, value in values:
        g.add((label,), value)
    exposition = Exposition(["p"], lambda: [])
    exposition.publish("p", [g.build()])
    expected = {(("v", label),): value for label, value in values}
    for om in (False, True):
        body = exposition.body(openmetrics=om, compress=False).decode()
        parsed = (om_parse if om else text_parse)(body)
        got = {tuple(sorted(s.labels.items())): s.value for f in parsed for s in f.samples}

        assert expected == got


def test_body_is_built_once_per_change() -> None:
    """The same bytes object is served until a collector publishes again; gzip decompresses to it."""
    calls = []
    exposition = Exposition(["a"], lambda: calls.append(1) or [])
    exposition.publish("a", _families())
    first = exposition.body(False, False)
    again = exposition.body(False, False)
    zipped = exposition.body(False, True)

    assert first is again
    assert first == gzip.decompress(zipped)
    assert 1 == len(calls)
    exposition.publish("a", _families()[:1])
    assert first != exposition.body(False, False)


def test_failed_collector_families_are_dropped() -> None:
    """Publishing nothing removes a collector's families and keeps the others'."""
    exposition = Exposition(["a", "b"], lambda: [])
    exposition.publish("a", [single("a_metric", "gauge", "A.", 1)])
    exposition.publish("b", [single("b_metric", "gauge", "B.", 2)])
    exposition.publish("a", [])
    body = exposition.body(False, False).decode()

    assert "a_metric" not in body
    assert "b_metric 2\n" in body


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("text/plain; version=0.0.4", False),
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("application/openmetrics-text", True),
    ],
)
def test_negotiation(accept: str | None, openmetrics: bool) -> None:
    """The Accept header picks the format the way prometheus-client does (Prometheus 2.x's header picks OpenMetrics)."""
    assert openmetrics == negotiate(accept)


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, False), ("gzip", True), ("deflate, gzip;q=0.5", True), ("gzip;q=0", False), ("identity", False)],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    """gzip is used only when offered with a non-zero quality."""
    assert expected == accepts_gzip(header)


def test_promtool_accepts_output() -> None:
    """promtool check metrics finds nothing to complain about in a rendered exposition."""
    promtool = require_binary("promtool", "prometheus")
    exposition = Exposition(["a"], lambda: [])
    exposition.publish("a", _families())
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=exposition.body(False, False), capture_output=True, check=False
    )

    assert (0, b"", b"") == (proc.returncode, proc.stdout, proc.stderr)
