"""node_exporter 1.5 and nodeagent on the same fixture trees: the netstat, sockstat, conntrack and infiniband
collectors must export the same families, types, label sets and values.

node_exporter (the Debian package's binary) runs with ``--path.procfs``/``--path.sysfs`` at ``tests/fixtures`` and only
these four collectors; nodeagent runs ``nodeagent once`` with the same roots and only the same four. Both expositions
are parsed the same way and compared both ways, so a family either side lacks fails the test.

Documented deviations: help texts end in a period (nodeagent's convention; node_exporter's infiniband helps have
none), and ``_HELP_DEVIATIONS`` lists the helps nodeagent words differently on purpose.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.collectors import COLLECTORS
from tests.integration.agent_proc import http_get
from tests.integration.peers import run_node_exporter

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKED = ("netstat", "sockstat", "conntrack", "infiniband")
PREFIXES = ("node_netstat_", "node_sockstat_", "node_nf_conntrack_", "node_infiniband_")

# family -> nodeagent's help, where it is not node_exporter's (plus a final period) on purpose.
_HELP_DEVIATIONS = {
    # node_exporter 1.5 says "received" for the transmitted counter.
    "node_infiniband_legacy_packets_transmitted_total": "Number of data packets transmitted on all links.",
}


@dataclass(frozen=True)
class Family:
    """One family as scraped: text-format type, help, and value per label set."""

    type: str
    help: str
    samples: dict[frozenset[tuple[str, str]], float]


def parse_families(text: str) -> dict[str, Family]:
    """The families of an exposition whose names start with ``PREFIXES``."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, flags=re.M))
    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(PREFIXES):
                labels = frozenset(s.labels.items())
                assert labels not in samples.setdefault(s.name, {}), f"duplicate series {s.name}{dict(labels)}"
                samples[s.name][labels] = s.value
    return {name: Family(types[name], helps[name], values) for name, values in samples.items()}


def node_exporter_families(tmp_path: Path, netstat_fields: str | None) -> dict[str, Family]:
    """node_exporter 1.5 with only the four collectors, on the fixture trees."""
    args = [
        f"--path.procfs={FIXTURES / 'proc'}",
        f"--path.sysfs={FIXTURES / 'sys'}",
        "--collector.disable-defaults",
        *(f"--collector.{name}" for name in CHECKED),
    ]
    if netstat_fields is not None:
        args.append(f"--collector.netstat.fields={netstat_fields}")
    with run_node_exporter(tmp_path, args) as node_exporter:
        status, _, body = http_get(node_exporter.url + "/metrics")
        log = node_exporter.log()
    assert 200 == status
    text = body.decode()
    failed = re.findall(r'^node_scrape_collector_success\{collector="(\w+)"\} 0$', text, flags=re.M)
    assert [] == failed, f"node_exporter collectors failed on the fixtures:\n{log}"
    return parse_families(text)


def nodeagent_families(netstat_fields: str | None) -> dict[str, Family]:
    """``nodeagent once`` with only the four collectors, on the fixture trees."""
    cmd = [
        sys.executable, "-m", "nodeagent", "once",
        "--path.procfs", str(FIXTURES / "proc"),
        "--path.sysfs", str(FIXTURES / "sys"),
        *(f"--no-collector.{name}" for name in COLLECTORS if name not in CHECKED),
    ]  # fmt: skip
    if netstat_fields is not None:
        cmd += ["--set", f"collectors.netstat.fields={netstat_fields}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert 0 == proc.returncode, proc.stderr
    for name in CHECKED:
        assert f'nodeagent_collector_has_data{{collector="{name}"}} 1' in proc.stdout, f"{name} found no data"
    return parse_families(proc.stdout)


def _differences(ours: dict[str, Family], theirs: dict[str, Family]) -> list[str]:
    problems = [f"only node_exporter exports {name}" for name in sorted(set(theirs) - set(ours))]
    problems += [f"only nodeagent exports {name}" for name in sorted(set(ours) - set(theirs))]
    for name in sorted(set(ours) & set(theirs)):
        a, b = ours[name], theirs[name]
        if a.type != b.type:
            problems.append(f"{name}: type {a.type}, node_exporter {b.type}")
        expected_help = _HELP_DEVIATIONS.get(name, b.help if b.help.endswith(".") else b.help + ".")
        if a.help != expected_help:
            problems.append(f"{name}: help {a.help!r}, expected {expected_help!r}")
        if a.samples != b.samples:
            only_a = {dict(k).__repr__(): v for k, v in a.samples.items() if b.samples.get(k) != v}
            only_b = {dict(k).__repr__(): v for k, v in b.samples.items() if a.samples.get(k) != v}
            problems.append(f"{name}: nodeagent {only_a}, node_exporter {only_b}")
    return problems


@pytest.mark.parametrize("netstat_fields", [None, ".*"], ids=["default-fields", "all-netstat-fields"])
def test_same_families_as_node_exporter(tmp_path: Path, netstat_fields: str | None) -> None:
    """Every family either exports on the fixtures, with the same type, label sets and values."""
    theirs = node_exporter_families(tmp_path, netstat_fields)
    ours = nodeagent_families(netstat_fields)

    assert [] == _differences(ours, theirs)
    # The comparison covered every collector and the cases the fixtures were written for.
    assert all(any(name.startswith(p) for name in ours) for p in PREFIXES)
    assert len(ours) >= (150 if netstat_fields else 90)
    relay = ours["node_infiniband_port_receive_switch_relay_errors_total"].samples
    assert frozenset({("device", "mlx5_0"), ("port", "1")}) not in relay  # "N/A (no PMA)": no sample on either side
    assert (
        4 * 387264188413
        == ours["node_infiniband_port_data_received_bytes_total"].samples[
            frozenset({("device", "mlx5_0"), ("port", "1")})
        ]
    )
