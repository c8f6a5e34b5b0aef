"""docs/metrics.md against the live exposition, both ways: names, types and label sets."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.collectors import COLLECTORS

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(?P<name>[^`]+)`(?P<dagger> †)? \| (?P<type>\w+) \| (?P<unit>[^|]+) \| (?P<labels>[^|]+) \|")
_TEXT_TYPE = {"info": "gauge"}


@dataclass(frozen=True)
class Row:
    """One catalogue row."""

    section: str
    name: str
    type: str
    labels: frozenset[str]
    optional: bool

    @property
    def pattern(self) -> re.Pattern[str]:
        """The family name as a regex (``<Field>`` matches one name part)."""
        return re.compile("^" + re.sub(r"<[^>]+>", "[A-Za-z0-9_]+", re.escape(self.name).replace(r"\<", "<")
                                       .replace(r"\>", ">")) + "$")

    @property
    def templated(self) -> bool:
        """Whether the name stands for several families."""
        return "<" in self.name


def load_catalogue() -> list[Row]:
    """Parse every table row of docs/metrics.md."""
    rows, section = [], ""
    for line in CATALOGUE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split()[0]
        m = _ROW.match(line)
        if m:
            labels = m["labels"].strip()
            rows.append(Row(section, m["name"], m["type"], frozenset() if labels == "-" else
                            frozenset(x.strip() for x in labels.split(",")), bool(m["dagger"])))
    return rows


@pytest.fixture(scope="module")
def exposition() -> str:
    """One cycle of every default collector on this machine, from the real command."""
    proc = subprocess.run([sys.executable, "-m", "nodeagent", "once"], capture_output=True, text=True, timeout=60,
                          check=True)
    return proc.stdout


def _exposed(text: str) -> dict[str, tuple[str, set[frozenset[str]]]]:
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    labelsets: dict[str, set[frozenset[str]]] = {name: set() for name in types}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            owner = s.name if s.name in types else family.name
            labelsets.setdefault(owner, set()).add(frozenset(s.labels))
    return {name: (kind, labelsets.get(name, set())) for name, kind in types.items()}


def _match(rows: list[Row], name: str) -> list[Row]:
    exact = [r for r in rows if r.name == name]
    return exact or [r for r in rows if r.templated and r.pattern.match(name)]


def test_every_collector_has_a_section() -> None:
    """Each registered collector has its own section in the catalogue."""
    sections = {r.section for r in load_catalogue()}

    assert set(COLLECTORS) - sections == set()


def test_every_exposed_family_is_catalogued(exposition: str) -> None:
    """Every family in the exposition has one catalogue row with the same type and label names."""
    rows = load_catalogue()
    problems = []
    for name, (kind, labelsets) in _exposed(exposition).items():
        found = _match(rows, name)
        if len(found) != 1:
            problems.append(f"{name}: {len(found)} catalogue rows")
            continue
        row = found[0]
        if _TEXT_TYPE.get(row.type, row.type) != kind:
            problems.append(f"{name}: exposed as {kind}, catalogued as {row.type}")
        for labels in labelsets:
            if labels != row.labels:
                problems.append(f"{name}: exposed labels {sorted(labels)}, catalogued {sorted(row.labels)}")

    assert [] == problems


def test_every_catalogued_family_is_exposed(exposition: str) -> None:
    """Every catalogued family (but those marked † for optional sources) appears in the exposition."""
    exposed = _exposed(exposition)
    missing = []
    for row in load_catalogue():
        if row.optional:
            continue
        if row.templated:
            if not any(row.pattern.match(name) for name in exposed):
                missing.append(row.name)
        elif row.name not in exposed:
            missing.append(row.name)

    assert [] == missing
