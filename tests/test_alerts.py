"""alerts/: the generated rule files are current, valid and unit-tested, and use only catalogued metrics.

promtool comes from the Debian package ``prometheus``; without it these tests fail under ``CI=true`` and skip
elsewhere.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import rules
from tests.integration.peers import PROMTOOL_BIN, require_peer
from tests.integration.test_node_mixin import vector_selectors
from tests.test_catalogue import load_catalogue

REPO = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO / "alerts" / "tests"
RUNBOOKS = REPO / "docs" / "runbooks"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = require_peer(PROMTOOL_BIN, "prometheus")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def _alerts(path: Path = rules.RULES_FILE) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _test_cases() -> list[dict[str, Any]]:
    cases = []
    for path in sorted(TESTS_DIR.glob("*.yml")):
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            cases += test.get("alert_rule_test", [])
    return cases


def test_generated_files_are_current(tmp_path: Path) -> None:
    """Regenerating from alerts/rules.py reproduces both committed files byte for byte."""
    out_rules, out_crd = tmp_path / "rules.yml", tmp_path / "prometheusrule.yaml"

    rc = rules.main(["--rules-out", str(out_rules), "--prometheus-rule-out", str(out_crd)])

    assert 0 == rc
    assert rules.RULES_FILE.read_bytes() == out_rules.read_bytes(), "run: python3 -m alerts.rules"
    assert rules.PROMETHEUS_RULE_FILE.read_bytes() == out_crd.read_bytes(), "run: python3 -m alerts.rules"


def test_prometheus_rule_has_the_same_groups() -> None:
    """The PrometheusRule's spec holds exactly the rule file's groups."""
    crd = yaml.safe_load(rules.PROMETHEUS_RULE_FILE.read_text(encoding="utf-8"))
    plain = yaml.safe_load(rules.RULES_FILE.read_text(encoding="utf-8"))

    assert ("monitoring.coreos.com/v1", "PrometheusRule") == (crd["apiVersion"], crd["kind"])
    assert plain["groups"] == crd["spec"]["groups"]


def test_promtool_check_rules(tmp_path: Path) -> None:
    """``promtool check rules`` passes on the rule file and on the PrometheusRule's spec."""
    spec = tmp_path / "prometheusrule-spec.yml"
    crd = yaml.safe_load(rules.PROMETHEUS_RULE_FILE.read_text(encoding="utf-8"))
    spec.write_text(yaml.safe_dump(crd["spec"], sort_keys=False), encoding="utf-8")
    expected = sum(len(g["rules"]) for g in crd["spec"]["groups"])

    for path in (rules.RULES_FILE, spec):
        proc = _promtool("check", "rules", path)
        assert 0 == proc.returncode, proc.stdout + proc.stderr
        assert f"SUCCESS: {expected} rules found" in proc.stdout


def test_promtool_unit_tests() -> None:
    """``promtool test rules alerts/tests/*.yml`` passes."""
    files = sorted(TESTS_DIR.glob("*.yml"))
    assert files

    proc = _promtool("test", "rules", *files)

    assert 0 == proc.returncode, proc.stdout + proc.stderr
    assert len(files) == proc.stdout.count("SUCCESS")


def test_every_alert_has_severity_annotations_and_runbook() -> None:
    """Severity, a static summary, a templated description and a runbook that exists with its four sections."""
    problems = []
    for rule in _alerts():
        name, labels, notes = rule["alert"], rule["labels"], rule["annotations"]
        if labels.get("severity") not in rules.SEVERITIES:
            problems.append(f"{name}: severity {labels.get('severity')!r}")
        summary = notes.get("summary", "")
        if not summary.endswith(".") or "{{" in summary:
            problems.append(f"{name}: summary must be a static sentence: {summary!r}")
        if "{{ $labels." not in notes.get("description", "") and name != "NodeAgentAbsent":
            problems.append(f"{name}: description names no label")
        url = notes.get("runbook_url", "")
        if not url.endswith(f"/docs/runbooks/{name}.md"):
            problems.append(f"{name}: runbook_url {url!r}")
        runbook = RUNBOOKS / f"{name}.md"
        if not runbook.is_file():
            problems.append(f"{name}: {runbook} missing")
            continue
        headings = re.findall(r"^## (\w+)", runbook.read_text(encoding="utf-8"), flags=re.M)
        if headings[:4] != ["Meaning", "Impact", "Diagnosis", "Mitigation"]:
            problems.append(f"{name}: runbook sections {headings}")

    assert [] == problems


def test_every_alert_has_firing_and_quiet_test_cases() -> None:
    """Each alert has a promtool case where it fires and one where it must stay quiet."""
    firing, quiet = set(), set()
    for case in _test_cases():
        (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alerts()}

    assert (set(), set()) == (names - firing, names - quiet)


def test_every_firing_case_checks_the_description() -> None:
    """Every expected alert gives its exact description, so the templating is tested."""
    missing = [
        case["alertname"]
        for case in _test_cases()
        for alert in case.get("exp_alerts", [])
        if "description" not in alert.get("exp_annotations", {})
    ]

    assert [] == missing


def test_rules_use_only_catalogued_metrics_and_labels() -> None:
    """Every metric an expression selects is in docs/metrics.md (or is ``up``), with labels it has."""
    catalogue = load_catalogue()
    problems = []
    for rule in _alerts():
        for selector in vector_selectors(rule["expr"]):
            name, _, matchers = selector.partition("{")
            if name == "up":
                continue
            rows = [r for r in catalogue if r.name == name] or [
                r for r in catalogue if r.templated and r.pattern.match(name)
            ]
            if len(rows) != 1:
                problems.append(f"{rule['alert']}: {name} has {len(rows)} catalogue rows")
                continue
            unknown = set(_MATCHER.findall(matchers)) - rows[0].labels - TARGET_LABELS
            if unknown:
                problems.append(f"{rule['alert']}: {name} has no label {sorted(unknown)}")

    assert [] == problems


def test_overrides_change_selectors_thresholds_and_alerts(tmp_path: Path) -> None:
    """An overrides file regenerates valid rules with the user's selector, thresholds and per-alert changes."""
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(
        "selector: 'job=\"gpu-nodes\"'\n"
        "runbook_url_base: https://runbooks.example.com/nodeagent/\n"
        "gpu: {xid_critical_codes: [79], idle_for: 2h}\n"
        "alerts:\n"
        "  ContainerCPUThrottlingHigh: {disabled: true}\n"
        "  GPUAllocatedIdle: {severity: warning}\n"
        "prometheus_rule: {labels: {release: kube-prometheus-stack}}\n",
        encoding="utf-8",
    )
    out_rules, out_crd = tmp_path / "rules.yml", tmp_path / "crd.yaml"

    rc = rules.main(["--config", str(overrides), "--rules-out", str(out_rules), "--prometheus-rule-out", str(out_crd)])

    assert 0 == rc
    by_name = {r["alert"]: r for r in _alerts(out_rules)}
    assert "ContainerCPUThrottlingHigh" not in by_name
    idle = by_name["GPUAllocatedIdle"]
    assert ("warning", "2h") == (idle["labels"]["severity"], idle["for"])
    assert "https://runbooks.example.com/nodeagent/GPUDown.md" == by_name["GPUDown"]["annotations"]["runbook_url"]
    assert 'xid=~"79"' in by_name["GPUXidCriticalError"]["expr"]
    assert all('job="gpu-nodes"' in r["expr"] and "nodeagent|node-exporter" not in r["expr"] for r in by_name.values())
    crd = yaml.safe_load(out_crd.read_text(encoding="utf-8"))
    assert "kube-prometheus-stack" == crd["metadata"]["labels"]["release"]
    assert "nodeagent" == crd["metadata"]["labels"]["app.kubernetes.io/name"]
    proc = _promtool("check", "rules", out_rules)
    assert 0 == proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu: {xid_codes: [79]}\n", "unknown configuration key 'gpu.xid_codes'"),
        ("alerts: {NoSuchAlert: {disabled: true}}\n", "no alert named ['NoSuchAlert']"),
        ("alerts: {GPUDown: {severity: page}}\n", "severity 'page' is not one of"),
        ("alerts: {GPUDown: {sevrity: info}}\n", "unknown keys ['sevrity']"),
    ],
)
def test_bad_overrides_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    """A mistyped key, alert or severity stops generation with a message naming it, and writes nothing."""
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(text, encoding="utf-8")
    out_rules = tmp_path / "rules.yml"

    rc = rules.main(["--config", str(overrides), "--rules-out", str(out_rules), "--prometheus-rule-out", "/dev/null"])

    assert 2 == rc
    assert message in capsys.readouterr().err
    assert not out_rules.exists()
