"""
Every dashboard panel query and every alert rule runs against a real Prometheus (Debian package ``prometheus``) that
has scraped the real agent for a few intervals on this machine. The agent runs with the NVML test double (8 GPU
series families have data), log shipping to the Lumberjack test double (the ``nodeagent_log_*`` families) and a
real test cgroup workload, so that most panels have something to show.

Each query must parse and evaluate; a query whose metrics all have series here, and that does not filter by value,
must return data. The alert rule file is loaded into Prometheus, whose rule manager must evaluate every rule
without an error.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards.build import substitute
from tests.integration.agent_proc import http_get, run_agent, wait_until
from tests.integration.peers import PrometheusPeer, run_prometheus, scrape_config, wait_for_scrapes
from tests.integration.ship_peers import BackgroundLumberjack
from tests.integration.test_node_mixin import vector_selectors
from tests.nvml_double import Field, Gpu, MigDevice, Process, ProcUtil, Scenario, build_or_missing, subprocess_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOB = "nodeagent"


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (its vector selectors' names)."""
    return {sel.split("{", 1)[0] for sel in vector_selectors(expr)} - {""}


def filters_by_value(expr: str) -> bool:
    """Whether the query can legitimately be empty: it compares values, subtracts sets, or asks for absence."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)
    return bool(re.search(r"[<>]|==|!=|\bunless\b|\babsent\b|\btopk\b|\bbottomk\b", stripped))


def dashboard_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every target of every panel, rows included."""
    for path in sorted(glob.glob(str(ROOT / "dashboards" / "*.json"))):
        doc = json.loads(Path(path).read_text())
        panels: list[dict[str, Any]] = []
        for p in doc.get("panels", []):
            panels.append(p)
            panels.extend(p.get("panels", []))
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    yield Path(path).name, p.get("title", ""), t["expr"]


def rule_exprs(rule_file: Path) -> Iterator[tuple[str, str]]:
    import yaml

    for group in yaml.safe_load(rule_file.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusPeer, set[str], str]]:
    """The agent (NVML double, shipping to the Lumberjack double) scraped by Prometheus with the alert rules loaded."""
    tmp = tmp_path_factory.mktemp("dashboards")
    rules = ROOT / "alerts" / "nodeagent.rules.yml"
    scenario = tmp / "nvml.scenario"
    Scenario(
        gpus=[
            Gpu(
                util_gpu=35,
                processes=[Process(os.getpid(), 2 << 30)],
                proc_util=[ProcUtil(os.getpid(), 2**62, 30, 10)],
                fans=[40],
                # The field-values batch: ECC, retired pages, clock-event time, memory temperature, PCIe, NVLink.
                fields=[Field(i, 1) for i in (3, 4, 5, 6, 29, 30, 31, 74, 76, 269, 270, 271, 94, 197, 198)]
                + [Field(82, 45), Field(91, 2)]
                + [Field(i, 1000) for i in (138, 139, 161, 162, 163)],
            ),
            Gpu(migs=[MigDevice(0), MigDevice(1)]),
        ]
    ).write(scenario)
    receiver = BackgroundLumberjack()
    receiver.start()
    env = subprocess_env(build_or_missing(), scenario)
    args = ["--set", "interval=1s", "--set", f"logs.ship.hosts=[127.0.0.1:{receiver.port}]"]
    args += ["--set", f"logs.ship.spool_dir={tmp / 'spool'}"]
    try:
        with run_agent(args, tmp_dir=str(tmp), env=env) as agent:
            instance = f"127.0.0.1:{agent.port}"
            with run_prometheus(scrape_config(JOB, {instance: {}}), [rules] if rules.exists() else [], tmp) as prom:
                wait_for_scrapes(prom, [instance], 20, timeout=90)  # enough samples for the rate windows
                # What the agent exposes now (a family that came and went, such as per-process utilization
                # samples of the double's one-off timestamps, is not expected to have data).
                _, _, body = http_get(agent.url + "/metrics")
                exposed = {
                    line.split("{")[0].split(" ")[0] for line in body.decode().splitlines() if line and line[0] != "#"
                }
                yield prom, exposed, instance
    finally:
        receiver.close()


def test_there_is_something_to_check() -> None:
    assert list(dashboard_queries()), "no dashboard queries found under dashboards/"
    assert (ROOT / "alerts" / "nodeagent.rules.yml").exists()


def test_every_dashboard_query_runs_and_returns_data_where_the_agent_has_it(
    stack: tuple[PrometheusPeer, set[str], str],
) -> None:
    prom, exposed, _instance = stack
    errors, empty = [], []
    checked = with_data = 0
    for dashboard, title, expr in dashboard_queries():
        query = substitute(expr)  # the values dashboards/README.md gives for running queries outside Grafana
        checked += 1
        try:
            result = prom.query(query)
        except AssertionError as exc:
            errors.append(f"{dashboard} / {title}: {query}: {exc}")
            continue
        names = metric_names(expr)
        if names and names <= exposed and not filters_by_value(expr):
            with_data += 1
            if not result:
                empty.append(f"{dashboard} / {title}: {query}")
    print(f"\n{checked} dashboard queries ran; {with_data} had to return data; {len(empty)} did not")
    assert errors == []
    assert empty == []


def test_every_alert_rule_parses_and_evaluates(stack: tuple[PrometheusPeer, set[str], str]) -> None:
    prom, _, _ = stack
    rules_file = ROOT / "alerts" / "nodeagent.rules.yml"
    errors = []
    for name, expr in rule_exprs(rules_file):
        try:
            prom.query(expr)
        except AssertionError as exc:  # Prometheus's message: the expression does not parse or evaluate
            errors.append(f"{name}: {exc}")
    assert errors == []

    def evaluated() -> bool:
        groups = prom.api("rules")["groups"]
        return bool(groups) and all(r.get("lastEvaluation", "").startswith("20") for g in groups for r in g["rules"])

    wait_until(evaluated, 30, "every rule evaluated once")
    bad = [
        f"{r['name']}: {r.get('lastError')}"
        for g in prom.api("rules")["groups"]
        for r in g["rules"]
        if r.get("health") != "ok"
    ]
    assert bad == []
