"""nodeagent's alerting rules: one configuration (``CONFIG``) and the functions that build the rule groups from it.

``python3 -m alerts.rules [--config overrides.yaml]`` writes ``alerts/nodeagent.rules.yml`` (a Prometheus rule
file) and ``packaging/kubernetes/overlays/prometheus-operator/prometheusrule.yaml`` (the same groups as a
prometheus-operator PrometheusRule).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = REPO_ROOT / "alerts" / "nodeagent.rules.yml"
PROMETHEUS_RULE_FILE = (
    REPO_ROOT / "packaging" / "kubernetes" / "overlays" / "prometheus-operator" / "prometheusrule.yaml"
)
SEVERITIES = ("critical", "warning", "info")

# Everything a user may change. An overrides file (--config) is merged into this key by key; a key that is not
# here is an error. Durations are Prometheus durations; ratios are 0..1.
CONFIG: dict[str, Any] = {
    # Selects the agent's own series. nodeagent keeps node_exporter's names, so it is often scraped as
    # job="node-exporter" (node-mixin's default); both are matched.
    "selector": 'job=~"nodeagent|node-exporter"',
    "runbook_url_base": "https://github.com/nodeagent/nodeagent/blob/main/docs/runbooks",
    # Severity of the alerts node-mixin gives nodeCriticalSeverity (a single node's filesystem filling up).
    "critical_severity": "critical",
    # Per-alert overrides: {AlertName: {severity: ..., for: ..., disabled: true}}.
    "alerts": {},
    "prometheus_rule": {
        "name": "nodeagent",
        "namespace": "monitoring",
        # kube-prometheus-stack selects rules by its release label; add it here.
        "labels": {"app.kubernetes.io/name": "nodeagent", "app.kubernetes.io/component": "alerting-rules"},
    },
    "gpu": {
        "down_for": "5m",
        "missing_lookback": "6h",
        "missing_for": "5m",
        # Hardware, driver, ECC and NVLink Xids: critical. Any other Xid (13, 31, 43, 45: application faults) is info.
        "xid_critical_codes": [48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120],
        "xid_window": "10m",
        "ecc_window": "10m",
        "row_remap_failure_for": "5m",
        "row_remap_pending_for": "15m",
        "throttle_window": "5m",
        "throttle_ratio": 0.5,
        "throttle_for": "15m",
        "thermal_reasons": ["sw_thermal_slowdown", "hw_thermal_slowdown"],
        # sw_power_cap is left out on purpose: a GPU at full load normally runs at its power cap.
        "power_reasons": ["hw_slowdown", "hw_power_brake_slowdown"],
        "idle_window": "30m",
        "idle_ratio": 0.05,
        "idle_for": "1h",
    },
    "containers": {
        # kubernetes-mixin's default: container rows only (pod-level rows would repeat their containers).
        "selector": 'container!=""',
        "oom_window": "10m",
        "cpu_throttling_window": "5m",
        "cpu_throttling_ratio": 0.25,
        "cpu_throttling_for": "15m",
        "memory_limit_ratio": 0.9,
        "memory_limit_for": "15m",
    },
    "node": {
        "fs_selector": 'fstype!="", mountpoint!=""',
        "fs_prediction_window": "6h",
        "fs_warning_percent": 40,
        "fs_warning_hours": 24,
        "fs_critical_percent": 20,
        "fs_critical_hours": 4,
        "fs_filling_for": "1h",
        "fs_device_error_for": "15m",
        "net_device_selector": 'device!~"lo|veth.+"',
        # Link state alerts only for these kinds of node_network_info ("" is a physical device). A bridge without
        # ports (docker0) has no carrier, so bridges are left out.
        "link_kind_selector": 'kind=~"|bond"',
        "net_error_window": "2m",
        "net_error_ratio": 0.01,
        "net_error_for": "1h",
        "net_drop_ratio": 0.01,
        "net_drop_for": "30m",
        "link_down_for": "5m",
        "link_flap_window": "10m",
        "link_flap_changes": 4,
        "listen_overflow_window": "5m",
        "listen_overflows_per_second": 0.1,
        "listen_overflow_for": "15m",
        "pressure_window": "5m",
        "pressure_for": "15m",
        # PSI ratios: cpu is "some" (a task waited), memory and io are "full" (every task stalled).
        "pressure_cpu_some_ratio": 0.8,
        "pressure_memory_full_ratio": 0.1,
        "pressure_io_full_ratio": 0.3,
    },
    "agent": {
        "down_for": "15m",
        "absent_for": "15m",
        "collector_failing_for": "15m",
        "config_reload_failed_for": "10m",
        "log_stalled_seconds": 300,
        "log_stalled_for": "5m",
        "log_dropped_window": "15m",
        # Records refused after shutdown began are expected on every restart.
        "log_dropped_selector": 'reason!="closed"',
    },
}


def merge_config(base: dict[str, Any], overrides: dict[str, Any], path: str = "") -> dict[str, Any]:
    """``base`` with ``overrides`` merged in key by key; a key ``base`` lacks raises ``ValueError`` naming it."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        where = f"{path}{key}"
        if key not in out:
            raise ValueError(f"unknown configuration key {where!r}; valid keys here: {sorted(out)}")
        if key in ("alerts", "labels"):
            if not isinstance(value, dict):
                raise ValueError(f"{where} must be a mapping, got {value!r}")
            out[key] = {**out[key], **copy.deepcopy(value)}
        elif isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where} must be a mapping, got {value!r}")
            out[key] = merge_config(out[key], value, f"{where}.")
        else:
            out[key] = value
    return out


def _selector(*matchers: str) -> str:
    return "{" + ", ".join(m for m in matchers if m) + "}"


def _regex(values: Sequence[object]) -> str:
    return "|".join(str(v) for v in values)


def _new_or_increased(series: str, window: str) -> str:
    """A counter that rose within ``window``, including a series born there with its first event.

    ``increase()`` needs two samples, so it misses the event that creates a series; the ``unless ... offset``
    half catches a series that did not exist ``window`` ago.
    """
    return f"(\n  increase({series}[{window}]) > 0\n)\nor\n(\n  {series}\n    unless\n  {series} offset {window}\n)"


def _alert(
    name: str,
    expr: str,
    severity: str,
    summary: str,
    description: str,
    for_: str = "",
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def gpu_rules(c: dict[str, Any]) -> list[dict[str, Any]]:
    """GPU health, errors, throttling and waste."""
    g, s = c["gpu"], c["selector"]
    gpu_id = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }}"
    critical_xids = _regex(g["xid_critical_codes"])
    seen = f"last_over_time(nodeagent_gpu_up{_selector(s)}[{g['missing_lookback']}])"
    rules = [
        _alert(
            "GPUDown",
            f"nodeagent_gpu_up{_selector(s)} == 0",
            "critical",
            "GPU does not answer NVML.",
            f"{gpu_id} has not answered NVML for {g['down_for']} (GPU lost or driver gone); its other metrics are "
            "missing.",
            g["down_for"],
        ),
        _alert(
            "GPUMissing",
            "(\n"
            f"  count by (job, instance) (count by (job, instance, uuid) ({seen}))\n"
            "-\n"
            "  (\n"
            f"    count by (job, instance) (nodeagent_gpu_up{_selector(s)})\n"
            "  or\n"
            f"    count by (job, instance) ({seen}) * 0\n"
            "  )\n"
            ") > 0\n"
            f"and on (job, instance)\n  up{_selector(s)} == 1",
            "critical",
            "A GPU is no longer listed by NVML.",
            f"{{{{ $value }}}} GPU(s) that nodeagent saw on {{{{ $labels.instance }}}} in the last "
            f"{g['missing_lookback']} are no longer listed by NVML (fallen off the bus, or lost by the driver).",
            g["missing_for"],
        ),
        _alert(
            "GPUXidCriticalError",
            _new_or_increased(
                f"nodeagent_gpu_xid_errors_total{_selector(s, f'xid=~{_quote(critical_xids)}')}", g["xid_window"]
            ),
            "critical",
            "GPU reported a hardware, driver or NVLink Xid error.",
            f"{gpu_id} reported Xid {{{{ $labels.xid }}}} in the last {g['xid_window']}.",
        ),
        _alert(
            "GPUXidError",
            _new_or_increased(
                f"nodeagent_gpu_xid_errors_total{_selector(s, f'xid!~{_quote(critical_xids)}')}", g["xid_window"]
            ),
            "info",
            "GPU reported an Xid error.",
            f"{gpu_id} reported Xid {{{{ $labels.xid }}}} in the last {g['xid_window']}; this class is usually an "
            "application fault.",
        ),
        _alert(
            "GPUUncorrectableECCError",
            f"increase(nodeagent_gpu_ecc_errors_total"
            f"{_selector(s, 'type=' + _quote('uncorrected'), 'counter=' + _quote('volatile'))}[{g['ecc_window']}]) > 0",
            "critical",
            "GPU memory had an uncorrectable ECC error.",
            f'{gpu_id} had {{{{ $value | printf "%.0f" }}}} uncorrectable ECC error(s) in the last {g["ecc_window"]}.',
        ),
        _alert(
            "GPURowRemapFailure",
            f"nodeagent_gpu_remapped_rows_failure{_selector(s)} == 1",
            "critical",
            "GPU failed to remap a memory row and needs service.",
            f"{gpu_id} reports a failed memory row remapping; the GPU needs to be drained and serviced.",
            g["row_remap_failure_for"],
        ),
        _alert(
            "GPURowRemapPending",
            f"nodeagent_gpu_remapped_rows_pending{_selector(s)} == 1\n"
            f"or\nnodeagent_gpu_retired_pages_pending{_selector(s)} == 1",
            "warning",
            "GPU memory repair waits for a GPU reset.",
            f"{gpu_id} has a memory row remapping or page retirement pending for {g['row_remap_pending_for']}; it "
            "takes effect at the next GPU reset.",
            g["row_remap_pending_for"],
        ),
    ]
    for name, kind, reasons in (
        ("GPUThermalThrottling", "thermal", g["thermal_reasons"]),
        ("GPUPowerThrottling", "power", g["power_reasons"]),
    ):
        rules.append(
            _alert(
                name,
                f"avg_over_time(nodeagent_gpu_clocks_event_reason"
                f"{_selector(s, f'reason=~{_quote(_regex(reasons))}')}[{g['throttle_window']}])"
                f" > {g['throttle_ratio']}",
                "warning",
                f"GPU clocks are held down by {kind} throttling.",
                f"{gpu_id} had its clocks held down by {{{{ $labels.reason }}}} "
                f"{{{{ $value | humanizePercentage }}}} of the last {g['throttle_window']}.",
                g["throttle_for"],
            )
        )
    rules.append(
        _alert(
            "GPUAllocatedIdle",
            f"nodeagent_gpu_allocation_info{_selector(s, 'gpu_instance=' + _quote(''))}\n"
            "  * on (job, instance, gpu, uuid) group_left ()\n"
            f"    (avg_over_time(nodeagent_gpu_utilization_ratio{_selector(s, 'engine=' + _quote('gpu'))}"
            f"[{g['idle_window']}]) < {g['idle_ratio']})",
            "info",
            "An allocated GPU is idle.",
            f"{gpu_id}, allocated to container {{{{ $labels.container }}}} of pod {{{{ $labels.namespace }}}}/"
            f"{{{{ $labels.pod }}}}, was busy {{{{ $value | humanizePercentage }}}} of the last {g['idle_window']}.",
            g["idle_for"],
        )
    )
    return rules


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def container_rules(c: dict[str, Any]) -> list[dict[str, Any]]:
    """OOM kills, CPU throttling and memory near the limit, per workload cgroup."""
    k, s = c["containers"], c["selector"]
    rows = _selector(s, k["selector"])
    oom = k["oom_window"]
    who = "container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} on {{ $labels.instance }}"
    return [
        _alert(
            "ContainerOOMKilled",
            # v2 pod rows count their containers' kills across restarts (hierarchical), so the pod's maximum covers
            # a container whose cgroup vanished before a cycle saw its kill; non-pod workloads go by cgroup.
            f"max by (job, instance, namespace, pod) "
            f"(increase(container_oom_events_total{_selector(s, 'pod!=' + _quote(''))}[{oom}])) > 0\n"
            "or\n"
            f"max by (job, instance, id, name) "
            f"(increase(container_oom_events_total{_selector(s, 'pod=' + _quote(''))}[{oom}])) > 0",
            "warning",
            "A workload was OOM-killed.",
            "{{ if $labels.pod }}Pod {{ $labels.namespace }}/{{ $labels.pod }}{{ else }}Workload {{ $labels.id }}"
            '{{ end }} on {{ $labels.instance }} had {{ $value | printf "%.0f" }} OOM kill(s) in the last '
            f"{oom}.",
        ),
        _alert(
            "ContainerCPUThrottlingHigh",
            f"increase(container_cpu_cfs_throttled_periods_total{rows}[{k['cpu_throttling_window']}])\n"
            "/\n"
            f"increase(container_cpu_cfs_periods_total{rows}[{k['cpu_throttling_window']}])\n"
            f"> {k['cpu_throttling_ratio']}",
            "info",
            "Processes experience elevated CPU throttling.",
            f"{{{{ $value | humanizePercentage }}}} of the CPU periods of {who} were throttled over the last "
            f"{k['cpu_throttling_window']}.",
            k["cpu_throttling_for"],
        ),
        _alert(
            "ContainerMemoryNearLimit",
            f"container_memory_working_set_bytes{rows}\n/\n(container_spec_memory_limit_bytes{rows} > 0)\n"
            f"> {k['memory_limit_ratio']}",
            "warning",
            "A container's memory is close to its limit.",
            f"The working set of {who} is {{{{ $value | humanizePercentage }}}} of its memory limit.",
            k["memory_limit_for"],
        ),
    ]


def node_rules(c: dict[str, Any]) -> list[dict[str, Any]]:
    """Filesystems, network devices, TCP listen queues and PSI pressure."""
    n, s = c["node"], c["selector"]
    fs = _selector(s, n["fs_selector"])
    dev = _selector(s, n["net_device_selector"])
    link_kinds = f"node_network_info{_selector(s, n['link_kind_selector'])}"
    rules = []
    for severity, percent, hours in (
        ("warning", n["fs_warning_percent"], n["fs_warning_hours"]),
        (c["critical_severity"], n["fs_critical_percent"], n["fs_critical_hours"]),
    ):
        rules.append(
            _alert(
                "NodeFilesystemSpaceFillingUp",
                "(\n"
                f"  node_filesystem_avail_bytes{fs} / node_filesystem_size_bytes{fs} * 100 < {percent}\n"
                "and\n"
                f"  predict_linear(node_filesystem_avail_bytes{fs}[{n['fs_prediction_window']}], "
                f"{hours}*60*60) < 0\n"
                "and\n"
                f"  node_filesystem_readonly{fs} == 0\n"
                ")",
                severity,
                f"Filesystem is predicted to run out of space within the next {hours} hours.",
                "Filesystem on {{ $labels.device }}, mounted on {{ $labels.mountpoint }}, at {{ $labels.instance }} "
                'has only {{ printf "%.2f" $value }}% available space left and is filling up.',
                n["fs_filling_for"],
            )
        )
    rules.append(
        _alert(
            "NodeFilesystemDeviceError",
            f"node_filesystem_device_error{fs} == 1",
            "warning",
            "Filesystem statistics cannot be read.",
            "statfs on {{ $labels.mountpoint }} ({{ $labels.device }}, {{ $labels.fstype }}) at "
            f"{{{{ $labels.instance }}}} has failed or hung for {n['fs_device_error_for']}.",
            n["fs_device_error_for"],
        )
    )
    w = n["net_error_window"]
    for name, counter, packets, summary, what, ratio, for_ in (
        (
            "NodeNetworkReceiveErrs",
            "receive_errs",
            "receive",
            "Network interface is reporting many receive errors.",
            "of the packets it received had errors",
            "net_error_ratio",
            "net_error_for",
        ),
        (
            "NodeNetworkTransmitErrs",
            "transmit_errs",
            "transmit",
            "Network interface is reporting many transmit errors.",
            "of the packets it transmitted had errors",
            "net_error_ratio",
            "net_error_for",
        ),
        (
            "NodeNetworkReceiveDrops",
            "receive_drop",
            "receive",
            "Network interface is dropping received packets.",
            "dropped packets, relative to the packets it received",
            "net_drop_ratio",
            "net_drop_for",
        ),
    ):
        rules.append(
            _alert(
                name,
                f"rate(node_network_{counter}_total{dev}[{w}])\n/\n"
                f"rate(node_network_{packets}_packets_total{dev}[{w}])\n> {n[ratio]}",
                "warning",
                summary,
                f"Interface {{{{ $labels.device }}}} on {{{{ $labels.instance }}}}: "
                f"{{{{ $value | humanizePercentage }}}} {what} over the last {w}.",
                n[for_],
            )
        )
    rules += [
        _alert(
            "NodeNetworkInterfaceDown",
            f"node_network_carrier{dev} == 0\nand on (job, instance, device)\n  {link_kinds}",
            "warning",
            "Network interface is administratively up but has no link.",
            f"Interface {{{{ $labels.device }}}} on {{{{ $labels.instance }}}} has had no carrier for "
            f"{n['link_down_for']} while administratively up.",
            n["link_down_for"],
        ),
        _alert(
            "NodeNetworkInterfaceFlapping",
            f"increase(node_network_carrier_changes_total{dev}[{n['link_flap_window']}]) > {n['link_flap_changes']}\n"
            f"and on (job, instance, device)\n  {link_kinds}",
            "warning",
            "Network interface is flapping.",
            f"Interface {{{{ $labels.device }}}} on {{{{ $labels.instance }}}} changed carrier state "
            f'{{{{ $value | printf "%.0f" }}}} times in the last {n["link_flap_window"]}.',
        ),
        _alert(
            "NodeTCPListenOverflows",
            f"rate(node_netstat_TcpExt_ListenOverflows{_selector(s)}[{n['listen_overflow_window']}]) "
            f"> {n['listen_overflows_per_second']}",
            "warning",
            "TCP listen queues are overflowing.",
            f'{{{{ $labels.instance }}}} dropped {{{{ $value | printf "%.2f" }}}} connection attempts per second '
            f"over the last {n['listen_overflow_window']} because a listening socket's accept queue was full.",
            n["listen_overflow_for"],
        ),
    ]
    pw = n["pressure_window"]
    branches = []
    for resource, psi, counter, ratio in (
        ("cpu", "some", "cpu_waiting", n["pressure_cpu_some_ratio"]),
        ("memory", "full", "memory_stalled", n["pressure_memory_full_ratio"]),
        ("io", "full", "io_stalled", n["pressure_io_full_ratio"]),
    ):
        branches.append(
            f"label_replace(label_replace(\n"
            f"  rate(node_pressure_{counter}_seconds_total{_selector(s)}[{pw}]) > {ratio},\n"
            f'  "resource", "{resource}", "", ""), "psi", "{psi}", "", "")'
        )
    rules.append(
        _alert(
            "NodeResourcePressureHigh",
            "\nor\n".join(branches),
            "warning",
            "Tasks on the node are stalled waiting for a resource.",
            "PSI {{ $labels.resource }} pressure ({{ $labels.psi }}) on {{ $labels.instance }} was "
            f"{{{{ $value | humanizePercentage }}}} of the time over the last {pw}.",
            n["pressure_for"],
        )
    )
    return rules


def agent_rules(c: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent itself: scraped, collectors working, logs shipped."""
    a, s = c["agent"], c["selector"]
    return [
        _alert(
            "NodeAgentDown",
            f"up{_selector(s)} == 0",
            "warning",
            "nodeagent cannot be scraped.",
            "Prometheus has failed to scrape nodeagent at {{ $labels.instance }} (job {{ $labels.job }}) for "
            f"{a['down_for']}; no host, container or GPU alert can fire for this node.",
            a["down_for"],
        ),
        _alert(
            "NodeAgentAbsent",
            f"absent(up{_selector(s)})",
            "critical",
            "nodeagent has disappeared from Prometheus target discovery.",
            f"No target matching {_selector(s)} has been discovered for {a['absent_for']}; no node alert can fire.",
            a["absent_for"],
        ),
        _alert(
            "NodeAgentCollectorFailing",
            f"nodeagent_collector_success{_selector(s)} == 0",
            "warning",
            "A nodeagent collector keeps failing.",
            "Collector {{ $labels.collector }} of nodeagent on {{ $labels.instance }} has failed every cycle for "
            f"{a['collector_failing_for']}; its metrics are missing.",
            a["collector_failing_for"],
        ),
        _alert(
            "NodeAgentConfigReloadFailed",
            f"nodeagent_config_last_reload_successful{_selector(s)} == 0",
            "warning",
            "nodeagent refused its new configuration.",
            "The last configuration reload (SIGHUP) of nodeagent on {{ $labels.instance }} was refused "
            f"{a['config_reload_failed_for']} ago or more; it runs on its previous configuration and will not start "
            "again with the file on disk.",
            a["config_reload_failed_for"],
        ),
        _alert(
            "NodeAgentLogShippingStalled",
            f"nodeagent_log_records_unacknowledged{_selector(s)} > 0\n"
            "and on (job, instance)\n"
            f"  (time() - nodeagent_log_last_ack_timestamp_seconds{_selector(s)}) > {a['log_stalled_seconds']}",
            "warning",
            "nodeagent's log shipping is stalled.",
            '{{ $value | printf "%.0f" }} records wait in the spool of nodeagent on {{ $labels.instance }} and no '
            f"acknowledgement has arrived for over {a['log_stalled_seconds']} seconds.",
            a["log_stalled_for"],
        ),
        _alert(
            "NodeAgentLogRecordsDropped",
            _new_or_increased(
                f"nodeagent_log_records_dropped_total{_selector(s, a['log_dropped_selector'])}",
                a["log_dropped_window"],
            ),
            "warning",
            "nodeagent is dropping log records.",
            "nodeagent on {{ $labels.instance }} dropped {{ $labels.priority }} records (reason "
            f"{{{{ $labels.reason }}}}) in the last {a['log_dropped_window']}.",
        ),
    ]


GROUPS: tuple[tuple[str, Callable[[dict[str, Any]], list[dict[str, Any]]]], ...] = (
    ("nodeagent-gpu", gpu_rules),
    ("nodeagent-containers", container_rules),
    ("nodeagent-node", node_rules),
    ("nodeagent-agent", agent_rules),
)


def build_groups(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule groups for ``config``, with per-alert overrides and runbook links applied."""
    groups = [{"name": name, "rules": build(config)} for name, build in GROUPS]
    names = {rule["alert"] for group in groups for rule in group["rules"]}
    unknown = sorted(set(config["alerts"]) - names)
    if unknown:
        raise ValueError(f"alerts: no alert named {unknown}; alerts are {sorted(names)}")
    for group in groups:
        kept = []
        for rule in group["rules"]:
            override = config["alerts"].get(rule["alert"], {})
            bad = sorted(set(override) - {"severity", "for", "disabled"})
            if bad:
                raise ValueError(f"alerts.{rule['alert']}: unknown keys {bad}; valid: disabled, for, severity")
            if override.get("disabled", False):
                continue
            if "for" in override:
                rule["for"] = override["for"]
            if "severity" in override:
                rule["labels"]["severity"] = override["severity"]
            if rule["labels"]["severity"] not in SEVERITIES:
                raise ValueError(f"{rule['alert']}: severity {rule['labels']['severity']!r} is not one of {SEVERITIES}")
            rule["annotations"]["runbook_url"] = f"{config['runbook_url_base'].rstrip('/')}/{rule['alert']}.md"
            if "for" in rule and rule["for"] in ("", "0", "0s", "0m"):
                del rule["for"]
            kept.append(_ordered(rule))
        group["rules"] = kept
    return groups


def _ordered(rule: dict[str, Any]) -> dict[str, Any]:
    keys = ("alert", "expr", "for", "labels", "annotations")
    return {k: rule[k] for k in keys if k in rule}


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (readable expressions), never wrapped lines."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = "# Generated by `python3 -m alerts.rules` from alerts/rules.py; do not edit. See alerts/README.md.\n"


def _dump(doc: Any) -> str:
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


def render_rules(config: dict[str, Any]) -> str:
    """The Prometheus rule file."""
    return _dump({"groups": build_groups(config)})


def render_prometheus_rule(config: dict[str, Any]) -> str:
    """The same groups as a prometheus-operator ``PrometheusRule``."""
    meta = config["prometheus_rule"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(meta["labels"])},
        "spec": {"groups": build_groups(config)},
    }
    return _dump(doc)


def load_config(path: Path | None) -> dict[str, Any]:
    """``CONFIG`` with the overrides in ``path`` (YAML) merged in."""
    if path is None:
        return copy.deepcopy(CONFIG)
    overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: the overrides must be a mapping")
    return merge_config(CONFIG, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the rule file and the PrometheusRule."""
    parser = argparse.ArgumentParser(prog="python3 -m alerts.rules", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML file of overrides merged into CONFIG")
    parser.add_argument("--rules-out", type=Path, default=RULES_FILE)
    parser.add_argument("--prometheus-rule-out", type=Path, default=PROMETHEUS_RULE_FILE)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        rules, prometheus_rule = render_rules(config), render_prometheus_rule(config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, text in ((args.rules_out, rules), (args.prometheus_rule_out, prometheus_rule)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
