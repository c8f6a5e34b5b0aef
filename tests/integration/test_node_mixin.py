"""node-mixin compatibility: every dashboard and rule query that has data for node_exporter has it for nodeagent.

One real Prometheus scrapes node_exporter and nodeagent on this host, both as ``job="node-exporter"``
(``cluster="test"``), with kube-prometheus's node-exporter recording and alerting rules loaded. Every query
of the node-mixin dashboards (panel targets, nested panels and rows, templating variables) and every
rule ``expr`` runs once per exporter; so does every vector selector inside them, which catches a
metric or label that an alert needs even while the alert itself is (rightly) empty. The compat data
lives outside the repository (``../shared/compat/node-mixin`` from the repo root) and is read in place.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.agent_proc import run_agent, wait_until
from tests.integration.peers import (
    PrometheusPeer,
    run_node_exporter,
    run_prometheus,
    scrape_config,
    wait_for_scrapes,
)
from tests.prereq import missing

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MIXIN_DIR = REPO_ROOT.parent / "shared" / "compat" / "node-mixin"
RULES_FILE = "node-exporter-rules.yaml"
DASHBOARDS = ("nodes.json", "node-rsrc-use.json", "node-cluster-rsrc-use.json")
JOB = "node-exporter"
CLUSTER = "test"

# Grafana variables and what they become here ($instance is filled per exporter).
GRAFANA_VARS = {"cluster": CLUSTER, "__rate_interval": "1m", "__interval": "15s", "datasource": "prometheus"}

# Queries that are allowed to have no data for nodeagent while node_exporter has some. Key: a substring
# of the query (usually a metric-name prefix) or a query id from the summary table. Each entry must
# still be a real gap: once nodeagent answers every query it covers, the test fails and asks for the
# entry to be removed. An entry whose reason starts with "BUG:" is a defect to fix, not a missing feature.
KNOWN_GAPS: dict[str, str] = {
    "node_md_": "mdadm collector not built (node_exporter 'mdadm'); needs md RAID to be exercised",
    "node_bonding_": "bonding collector not built (node_exporter 'bonding'); needs a bond to be exercised",
    "node_systemd_": "systemd collector not built (off by default in node_exporter too)",
}

# How long to keep re-asking a query that has data for node_exporter only (rule evaluation lag).
SETTLE_S = 8.0
RECORDING_WAIT_S = 90.0


# ---------------------------------------------------------------------------------------------------
# Extracting queries


@dataclass(frozen=True)
class Probe:
    """One query to run against both exporters; ``expr`` may still contain ``$instance``."""

    id: str
    expr: str

    @property
    def per_instance(self) -> bool:
        """Whether the query selects one instance itself (else results are split by their label)."""
        return "$instance" in self.expr


def substitute(expr: str, instance: str | None = None) -> str:
    """Fill Grafana variables (``$x``, ``${x}``, ``[[x]]``); ``$instance`` only when ``instance`` is given."""
    values = dict(GRAFANA_VARS)
    if instance is not None:
        values["instance"] = instance

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return values.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


def _walk_panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in [*node.get("panels", []), *node.get("rows", [])]:
        yield child
        yield from _walk_panels(child)


def _variable_query(var: dict[str, Any]) -> str | None:
    if var.get("type") != "query":
        return None
    query = var.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    if not isinstance(query, str) or not query.strip():
        return None
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    if query.strip().startswith(("label_values(", "label_names(", "metrics(")):
        return None  # no series selector to query
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    return m.group(1) if m else query


def dashboard_probes(path: Path) -> list[Probe]:
    """Panel target expressions (also nested) and templating variable queries of one dashboard."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    probes = []
    for p, panel in enumerate(_walk_panels(doc)):
        for i, target in enumerate(panel.get("targets", [])):
            if target.get("expr", "").strip():
                probes.append(Probe(f"{path.stem}/{panel.get('title', '?')}[{p}]#{i}", target["expr"].strip()))
    for var in doc.get("templating", {}).get("list", []):
        query = _variable_query(var)
        if query:
            probes.append(Probe(f"{path.stem}/var:{var['name']}", query.strip()))
    return probes


def rule_probes(path: Path) -> list[Probe]:
    """Every alerting and recording rule ``expr``."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    probes: list[Probe] = []
    seen: dict[str, int] = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            seen[name] = seen.get(name, 0) + 1
            probes.append(Probe(f"rules/{name}#{seen[name]}", rule["expr"].strip()))
    return probes


_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LIST_KEYWORDS | {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
}


def _skip_string(expr: str, i: int) -> int:
    quote = expr[i]
    i += 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" else 1
    return i + 1


def _skip_to(expr: str, i: int, close: str) -> int:
    """Index after the ``close`` that ends the bracket at ``i``, skipping strings."""
    while i < len(expr) and expr[i] != close:
        i = _skip_string(expr, i) if expr[i] in "\"'`" else i + 1
    return i + 1


def vector_selectors(expr: str) -> list[str]:
    """The vector selectors (``name{matchers}`` or a bare name) in a PromQL expression, in order."""
    out: list[str] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "[":
            i = _skip_to(expr, i, "]")
        elif c.isdigit() or c == ".":
            m = re.compile(r"[0-9a-zA-Z_.]+").match(expr, i)
            assert m is not None
            i = m.end()
        elif c == "{":
            end = _skip_to(expr, i, "}")
            out.append(expr[i:end])
            i = end
        elif m := _IDENT.match(expr, i):
            name, j = m.group(), m.end()
            k = j
            while k < n and expr[k].isspace():
                k += 1
            following = expr[k] if k < n else ""
            if name.lower() in _LABEL_LIST_KEYWORDS and following == "(":
                i = _skip_to(expr, k, ")")
            elif name.lower() in _KEYWORDS or following == "(":
                i = j
            elif following == "{":
                end = _skip_to(expr, k, "}")
                out.append(name + expr[k:end])
                i = end
            else:
                out.append(name)
                i = j
        else:
            i += 1
    return out


def all_probes() -> list[Probe]:
    """Dashboard and rule queries, then each distinct vector selector found in them."""
    probes = [p for name in DASHBOARDS for p in dashboard_probes(MIXIN_DIR / name)]
    probes += rule_probes(MIXIN_DIR / RULES_FILE)
    selectors = dict.fromkeys(s for p in probes for s in vector_selectors(p.expr))
    probes += [Probe(f"selector/{s}", s) for s in selectors]
    return probes


# ---------------------------------------------------------------------------------------------------
# Running them


@dataclass
class Outcome:
    """Series counts of one probe per exporter, and the label sets (without ``instance``) behind them."""

    probe: Probe
    counts: dict[str, int] = field(default_factory=dict)
    labels: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def failed(self) -> bool:
        """node_exporter has data, nodeagent has none."""
        return self.counts["node_exporter"] > 0 and self.counts["nodeagent"] == 0


def _strip(metric: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metric.items() if k != "instance"}


def run_probe(prom: PrometheusPeer, probe: Probe, instances: dict[str, str]) -> Outcome:
    """Series per exporter: ``$instance`` filled per exporter, or one query split by ``instance``."""
    outcome = Outcome(probe)
    if probe.per_instance:
        for exporter, instance in instances.items():
            result = prom.query(substitute(probe.expr, instance))
            outcome.counts[exporter] = len(result)
            outcome.labels[exporter] = [_strip(r["metric"]) for r in result]
        return outcome
    result = prom.query(substitute(probe.expr))
    labelled = any("instance" in r["metric"] for r in result)
    for exporter, instance in instances.items():
        mine = [r for r in result if r["metric"].get("instance") == instance] if labelled else result
        outcome.counts[exporter] = len(mine)
        outcome.labels[exporter] = [_strip(r["metric"]) for r in mine]
    return outcome


def gap_keys(probe: Probe) -> list[str]:
    """The KNOWN_GAPS entries that cover a probe."""
    return [key for key in KNOWN_GAPS if key == probe.id or key in probe.expr]


def _label_differences(outcomes: list[Outcome]) -> list[str]:
    """Series (labels without ``instance``) that only one exporter has, per selector; for reading, not asserting."""
    lines = []
    for o in outcomes:
        if not o.probe.id.startswith("selector/") or o.failed() or o.counts["node_exporter"] == o.counts["nodeagent"]:
            continue
        sets = {k: {tuple(sorted(m.items())) for m in v} for k, v in o.labels.items()}
        only_ne = sorted(sets["node_exporter"] - sets["nodeagent"])
        only_na = sorted(sets["nodeagent"] - sets["node_exporter"])
        lines.append(
            f"{o.probe.id}\n    only node_exporter: {[dict(x) for x in only_ne][:5]}"
            f"\n    only nodeagent: {[dict(x) for x in only_na][:5]}"
        )
    return lines


def _summary(outcomes: list[Outcome]) -> str:
    width = min(90, max(len(o.probe.id) for o in outcomes))
    lines = [f"{'query id':<{width}}  {'node_exporter':>13}  {'nodeagent':>9}  note", "-" * (width + 40)]
    for o in outcomes:
        note = ""
        if o.failed():
            note = "KNOWN GAP" if gap_keys(o.probe) else "FAIL"
        elif o.counts["node_exporter"] != o.counts["nodeagent"]:
            note = "count differs"
        short = o.probe.id if len(o.probe.id) <= width else o.probe.id[: width - 3] + "..."
        lines.append(f"{short:<{width}}  {o.counts['node_exporter']:>13}  {o.counts['nodeagent']:>9}  {note}")
    return "\n".join(lines)


@dataclass
class MixinRun:
    """Everything the assertions need."""

    outcomes: list[Outcome]
    instances: dict[str, str]


@pytest.fixture(scope="module")
def mixin_run(tmp_path_factory: pytest.TempPathFactory) -> MixinRun:
    """Scrape both exporters with the rules loaded, wait for the 5m recording rules, run every probe."""
    if not (MIXIN_DIR / RULES_FILE).is_file() or not all((MIXIN_DIR / d).is_file() for d in DASHBOARDS):
        missing(f"node-mixin compat data in {MIXIN_DIR} ({RULES_FILE}, {', '.join(DASHBOARDS)})")
    probes = all_probes()
    tmp = tmp_path_factory.mktemp("node-mixin")
    with (
        run_node_exporter(tmp) as node_exporter,
        run_agent(["--set", "interval=1s"], tmp_dir=str(tmp)) as agent,
    ):
        instances = {"node_exporter": node_exporter.instance, "nodeagent": f"127.0.0.1:{agent.port}"}
        config = scrape_config(JOB, {i: {"cluster": CLUSTER} for i in instances.values()})
        with run_prometheus(config, [MIXIN_DIR / RULES_FILE], tmp) as prom:
            wait_for_scrapes(prom, list(instances.values()), 3)

            def recorded() -> bool:
                result = prom.query(f'instance:node_cpu_utilisation:rate5m{{job="{JOB}"}}')
                return {r["metric"].get("instance") for r in result} >= set(instances.values())

            wait_until(
                recorded, RECORDING_WAIT_S, "instance:node_cpu_utilisation:rate5m for both exporters", interval=0.5
            )
            outcomes = [run_probe(prom, p, instances) for p in probes]
            # Rules evaluate once a second and a freshly started counter needs two samples: re-ask the
            # queries that only node_exporter answered until they settle.
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline and any(o.failed() and not gap_keys(o.probe) for o in outcomes):
                time.sleep(1.0)
                outcomes = [run_probe(prom, o.probe, instances) if o.failed() else o for o in outcomes]
    print(f"\nnode-mixin queries: node_exporter {instances['node_exporter']}, nodeagent {instances['nodeagent']}")
    print(_summary(outcomes))
    print("\nseries that only one exporter has (informational):", *_label_differences(outcomes), sep="\n")
    return MixinRun(outcomes, instances)


def _describe(o: Outcome) -> str:
    return (
        f"{o.probe.id}\n  query: {' '.join(o.probe.expr.split())}\n"
        f"  node_exporter series: {o.labels['node_exporter'][:5]}\n"
        f"  nodeagent series: {o.labels['nodeagent'][:5]}"
    )


def test_extracts_every_query() -> None:
    """The extractor sees every panel target, variable and rule (counted independently) and splits selectors."""
    if not (MIXIN_DIR / RULES_FILE).is_file():
        missing(f"node-mixin compat data in {MIXIN_DIR}")
    raw = "".join((MIXIN_DIR / d).read_text(encoding="utf-8") for d in DASHBOARDS)
    panel_exprs = len(re.findall(r'"expr"\s*:\s*"[^"]', raw))
    variables = len(re.findall(r'"query"\s*:\s*"label_values\(', raw))
    rules = len(re.findall(r"^[\s-]*expr:", (MIXIN_DIR / RULES_FILE).read_text(encoding="utf-8"), re.M))
    probes = all_probes()

    assert panel_exprs + variables + rules == len([p for p in probes if not p.id.startswith("selector/")])
    assert ['node_load1{job="node-exporter"}', 'instance:node_num_cpu:sum{job="node-exporter"}'] == vector_selectors(
        '(\n  node_load1{job="node-exporter"}\n/\n  instance:node_num_cpu:sum{job="node-exporter"}\n)'
    )
    assert ['node_nf_conntrack_entries{job="node-exporter"}', "node_nf_conntrack_entries_limit"] == vector_selectors(
        '(node_nf_conntrack_entries{job="node-exporter"} / node_nf_conntrack_entries_limit) > 0.75'
    )
    assert ['node_cpu_seconds_total{mode="idle",l="a}b"}'] == vector_selectors(
        'sum without (mode) (avg by (cpu) (rate(node_cpu_seconds_total{mode="idle",l="a}b"}[5m] offset 1h))) * 100'
    )
    assert 'x{instance="i", cluster=~"test"}[1m]' == substitute(
        'x{instance="$instance", cluster=~"$cluster"}[$__rate_interval]', "i"
    )


def test_every_query_with_node_exporter_data_has_nodeagent_data(mixin_run: MixinRun) -> None:
    """No query answered for node_exporter is empty for nodeagent, except the listed known gaps."""
    unexpected = [o for o in mixin_run.outcomes if o.failed() and not gap_keys(o.probe)]
    exercised = [o for o in mixin_run.outcomes if o.counts["node_exporter"] > 0]

    assert [] == [o.probe.id for o in unexpected], (
        "queries with data for node_exporter but none for nodeagent (a missing metric, or a name or label "
        "mismatch); fix the collector, or list it in KNOWN_GAPS with a reason:\n"
        + "\n".join(_describe(o) for o in unexpected)
    )
    assert len(exercised) >= 40, "too few queries had node_exporter data to compare anything"


def test_known_gaps_are_still_gaps(mixin_run: MixinRun) -> None:
    """Every KNOWN_GAPS entry covers some query, and none of them now works for nodeagent."""
    stale, closed, idle = [], [], []
    for key, reason in KNOWN_GAPS.items():
        covered = [o for o in mixin_run.outcomes if key in gap_keys(o.probe)]
        if not covered:
            stale.append(f"{key!r} matches no node-mixin query")
        elif not any(o.failed() for o in covered):
            if any(o.counts["nodeagent"] > 0 for o in covered):
                closed.append(f"{key!r} ({reason}): nodeagent now answers {[o.probe.id for o in covered]}")
            else:
                idle.append(key)
    if idle:
        print(f"\nknown gaps not exercised on this host (node_exporter has no data either): {idle}")

    assert [] == stale, "KNOWN_GAPS entries that match nothing; remove them:\n" + "\n".join(stale)
    assert [] == closed, (
        "KNOWN_GAPS entries that nodeagent now satisfies; remove them from KNOWN_GAPS in "
        + __file__
        + ":\n"
        + "\n".join(closed)
    )
