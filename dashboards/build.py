"""Grafana dashboards for nodeagent, as code, and the files that provision them.

``python3 -m dashboards.build`` writes ``dashboards/*.json`` (Grafana's classic JSON model) and
``packaging/grafana/{dashboards,configmaps}.yaml``; ``--check`` only compares. Plain dicts, no dependency.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Grafana 10.0's own schema version: every release from 10.0 to 13 loads it without a version it does not
# know, and the newer ones migrate it forward on load (the classic model, as file provisioning reads it).
SCHEMA_VERSION = 38
TAGS = ["nodeagent"]
DS = {"type": "prometheus", "uid": "${datasource}"}
JI = 'job=~"$job", instance=~"$instance"'
GRID_WIDTH = 24
# Workload panels show the busiest few at each step; a node can have hundreds of cgroups.
TOP = 15

Panel = dict[str, Any]


# ---------------------------------------------------------------------------------------------- PromQL helpers


def sel(metric: str, *matchers: str, base: str = JI) -> str:
    """``metric{job=~"$job", instance=~"$instance", <matchers>}``."""
    return metric + "{" + ", ".join((base, *matchers)) + "}"


def rate(metric: str, *matchers: str, base: str = JI, fn: str = "rate") -> str:
    """``rate(metric{...}[$__rate_interval])`` (or irate/increase with ``fn``)."""
    return f"{fn}({sel(metric, *matchers, base=base)}[$__rate_interval])"


def eq(label: str, value: str, op: str = "=") -> str:
    """A label matcher, ``label="value"`` (usable inside f-strings, unlike a nested quote on Python 3.11)."""
    return f'{label}{op}"{value}"'


def increase(metric: str, *matchers: str, base: str = JI) -> str:
    return rate(metric, *matchers, base=base, fn="increase")


# ---------------------------------------------------------------------------------------------- panel builders


def target(expr: str, legend: str = "", *, table: bool = False) -> dict[str, Any]:
    """One Prometheus query; ``table`` makes it an instant query in table format."""
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if table:
        t.update(format="table", instant=True, range=False)
    else:
        t.update(range=True, instant=False)
    return t


def _targets(queries: Iterable[dict[str, Any] | str]) -> list[dict[str, Any]]:
    out = []
    for ref, q in zip(string.ascii_uppercase, queries, strict=False):
        t = q if isinstance(q, dict) else target(q)
        out.append({**t, "refId": ref})
    return out


def _thresholds(steps: Iterable[tuple[str, float | None]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


GREEN = (("green", None),)


def _panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    queries: Iterable[dict[str, Any] | str],
    *,
    w: int,
    h: int,
    defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    **extra: Any,
) -> Panel:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "_size": (w, h),
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": []},
        "options": options or {},
        "targets": _targets(queries),
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    unit: str,
    *queries: dict[str, Any] | str,
    w: int = 12,
    h: int = 8,
    min: float | None = None,
    max: float | None = None,
    stack: bool = False,
    bars: bool = False,
) -> Panel:
    """A time series panel; ``bars`` for counts per interval (increase), ``stack`` for parts of a whole."""
    custom = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 80 if bars else (30 if stack else 10),
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
    }
    defaults: dict[str, Any] = {
        "custom": custom,
        "color": {"mode": "palette-classic"},
        "thresholds": _thresholds(GREEN),
    }
    if min is not None:
        defaults["min"] = min
    if max is not None:
        defaults["max"] = max
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel("timeseries", title, description, unit, queries, w=w, h=h, defaults=defaults, options=options)


def stat(
    title: str,
    description: str,
    unit: str,
    *queries: dict[str, Any] | str,
    w: int = 4,
    h: int = 4,
    thresholds: Iterable[tuple[str, float | None]] = GREEN,
) -> Panel:
    """A single-value panel (last value of each series)."""
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": "auto",
    }
    return _panel(
        "stat",
        title,
        description,
        unit,
        queries,
        w=w,
        h=h,
        defaults={"color": {"mode": "thresholds"}, "thresholds": _thresholds(thresholds)},
        options=options,
    )


def bargauge(
    title: str,
    description: str,
    unit: str,
    *queries: dict[str, Any] | str,
    w: int = 12,
    h: int = 8,
    min: float = 0,
    max: float | None = None,
    thresholds: Iterable[tuple[str, float | None]] = GREEN,
) -> Panel:
    """Horizontal bars of each series' last value (instant queries)."""
    defaults: dict[str, Any] = {"min": min, "color": {"mode": "thresholds"}, "thresholds": _thresholds(thresholds)}
    if max is not None:
        defaults["max"] = max
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "sizing": "auto",
        "minVizHeight": 10,
        "minVizWidth": 0,
        "maxVizHeight": 300,
    }
    qs = [q if isinstance(q, dict) else {**target(q), "instant": True, "range": False} for q in queries]
    return _panel("bargauge", title, description, unit, qs, w=w, h=h, defaults=defaults, options=options)


def table(
    title: str,
    description: str,
    unit: str,
    *exprs: str,
    w: int = 24,
    h: int = 8,
    hide: Iterable[str] = (),
    mappings: dict[str, str] | None = None,
) -> Panel:
    """Instant queries as a table; ``hide`` drops columns (Time, __name__ and job always)."""
    excluded = dict.fromkeys(sorted({"Time", "__name__", "job", *hide}), True)
    defaults: dict[str, Any] = {
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
        "color": {"mode": "thresholds"},
        "thresholds": _thresholds(GREEN),
    }
    if mappings:
        defaults["mappings"] = [
            {"type": "value", "options": {k: {"index": i, "text": v} for i, (k, v) in enumerate(mappings.items())}}
        ]
    return _panel(
        "table",
        title,
        description,
        unit,
        [target(e, table=True) for e in exprs],
        w=w,
        h=h,
        defaults=defaults,
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": excluded, "indexByName": {}, "renameByName": {}}},
        ],
    )


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (GRID_WIDTH, 1)}


# ---------------------------------------------------------------------------------------------- variables


def datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_variable(name: str, query: str, *, label: str | None = None, all_value: str = ".+") -> dict[str, Any]:
    """A multi-select label_values() variable whose "All" is the regex ``all_value``."""
    return {
        "name": name,
        "label": label or name,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "regex": "",
        "hide": 0,
        "skipUrlSync": False,
    }


def job_instance_variables() -> list[dict[str, Any]]:
    return [
        datasource_variable(),
        query_variable("job", "label_values(nodeagent_build_info, job)"),
        query_variable("instance", 'label_values(nodeagent_build_info{job=~"$job"}, instance)'),
    ]


# ---------------------------------------------------------------------------------------------- dashboard


def _layout(panels: list[Panel]) -> list[Panel]:
    """Place panels left to right, wrapping at the grid width; a row starts a new line."""
    out, x, y, line = [], 0, 0, 0
    for pid, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if p["type"] == "row" or x + w > GRID_WIDTH:
            x, y, line = 0, y + line, 0
        p = {"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p}
        x, line = x + w, max(line, h)
        if p["type"] == "row":
            x, y, line = 0, y + h, 0
        out.append(p)
    return out


def dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[Panel]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [
            {
                "title": "nodeagent",
                "type": "dashboards",
                "tags": TAGS,
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": variables},
        "panels": _layout(panels),
    }


# ---------------------------------------------------------------------------------------------- node overview

IDLE, NOT_IDLE, OOM_KILL, NOT_LO = 'mode="idle"', 'mode!="idle"', 'action="oom_kill"', 'device!="lo"'
CPUS = f"count by (instance) ({rate('node_cpu_seconds_total', IDLE)})"
FS = 'fstype!~"tmpfs|ramfs|overlay|squashfs|nsfs|autofs|fuse.lxcfs"'


def node_overview() -> dict[str, Any]:
    node = "{{instance}}"
    panels = [
        row("Overview"),
        stat(
            "Uptime",
            "Time since the node booted (node_boot_time_seconds).",
            "dtdurations",
            target(f"time() - {sel('node_boot_time_seconds')}", node),
        ),
        stat("CPUs", "Logical CPUs the kernel reports in /proc/stat.", "short", target(CPUS, node)),
        stat("Memory", "Total usable memory (MemTotal).", "bytes", target(sel("node_memory_MemTotal_bytes"), node)),
        stat(
            "CPU busy",
            "Share of CPU time not idle, averaged over all CPUs.",
            "percentunit",
            target(f"1 - avg by (instance) ({rate('node_cpu_seconds_total', IDLE)})", node),
            thresholds=(("green", None), ("orange", 0.8), ("red", 0.95)),
        ),
        stat(
            "Memory used",
            "1 - MemAvailable / MemTotal: memory that cannot be reclaimed without swapping.",
            "percentunit",
            target(f"1 - {sel('node_memory_MemAvailable_bytes')} / {sel('node_memory_MemTotal_bytes')}", node),
            thresholds=(("green", None), ("orange", 0.8), ("red", 0.95)),
        ),
        stat(
            "Failing collectors",
            "nodeagent collectors whose last cycle failed or timed out (their series are "
            "missing until the next good cycle; see the nodeagent self-health dashboard).",
            "short",
            target(f"sum by (instance) (1 - {sel('nodeagent_collector_success')})", node),
            thresholds=(("green", None), ("red", 1)),
        ),
        row("CPU"),
        timeseries(
            "CPU usage by mode",
            "Share of CPU time per mode, averaged over the node's CPUs (idle left out), stacked.",
            "percentunit",
            target(f"avg by (instance, mode) ({rate('node_cpu_seconds_total', NOT_IDLE)})", "{{instance}} {{mode}}"),
            min=0,
            stack=True,
        ),
        timeseries(
            "Load average per CPU",
            "1- and 15-minute load average divided by the number of CPUs; above 1 "
            "means runnable or uninterruptible tasks wait.",
            "short",
            target(f"{sel('node_load1')} / on (instance) group_left () {CPUS}", "{{instance}} 1m"),
            target(f"{sel('node_load15')} / on (instance) group_left () {CPUS}", "{{instance}} 15m"),
            min=0,
        ),
        timeseries(
            "Pressure stall (some)",
            "Share of time some task waited for CPU, memory or IO (/proc/pressure, PSI 'some').",
            "percentunit",
            target(rate("node_pressure_cpu_waiting_seconds_total"), "{{instance}} cpu"),
            target(rate("node_pressure_memory_waiting_seconds_total"), "{{instance}} memory"),
            target(rate("node_pressure_io_waiting_seconds_total"), "{{instance}} io"),
            min=0,
        ),
        timeseries(
            "Processes",
            "Runnable and IO-blocked processes (/proc/stat procs_running, procs_blocked).",
            "short",
            target(sel("node_procs_running"), "{{instance}} running"),
            target(sel("node_procs_blocked"), "{{instance}} blocked"),
            min=0,
        ),
        row("Memory"),
        timeseries(
            "Memory used",
            "1 - MemAvailable / MemTotal.",
            "percentunit",
            target(f"1 - {sel('node_memory_MemAvailable_bytes')} / {sel('node_memory_MemTotal_bytes')}", node),
            min=0,
            max=1,
        ),
        timeseries(
            "Memory breakdown",
            "Used (MemTotal - MemAvailable), page cache, buffers and free memory.",
            "bytes",
            target(
                f"{sel('node_memory_MemTotal_bytes')} - {sel('node_memory_MemAvailable_bytes')}", "{{instance}} used"
            ),
            target(sel("node_memory_Cached_bytes"), "{{instance}} cached"),
            target(sel("node_memory_Buffers_bytes"), "{{instance}} buffers"),
            target(sel("node_memory_MemFree_bytes"), "{{instance}} free"),
            min=0,
        ),
        timeseries(
            "OOM kills",
            "OOM kills on the node per interval, from nodeagent's oom_kill node events (one event log record each).",
            "short",
            target(f"sum by (instance) ({increase('nodeagent_events_total', OOM_KILL)})", node),
            min=0,
            bars=True,
        ),
        timeseries(
            "Major page faults",
            "Page faults that needed IO (/proc/vmstat pgmajfault), per second.",
            "ops",
            target(rate("node_vmstat_pgmajfault"), node),
            min=0,
        ),
        row("Disk"),
        timeseries(
            "Disk throughput",
            "Bytes read and written per second, per block device.",
            "Bps",
            target(rate("node_disk_read_bytes_total"), "{{instance}} {{device}} read"),
            target(rate("node_disk_written_bytes_total"), "{{instance}} {{device}} write"),
            min=0,
        ),
        timeseries(
            "Disk IOPS",
            "Reads and writes completed per second, per block device.",
            "iops",
            target(rate("node_disk_reads_completed_total"), "{{instance}} {{device}} read"),
            target(rate("node_disk_writes_completed_total"), "{{instance}} {{device}} write"),
            min=0,
        ),
        timeseries(
            "Disk busy",
            "Share of time the device had IO in flight (io_time); near 100% means saturated "
            "for rotating disks, not necessarily for NVMe.",
            "percentunit",
            target(rate("node_disk_io_time_seconds_total"), "{{instance}} {{device}}"),
            min=0,
        ),
        bargauge(
            "Filesystem used",
            "Space used on each real filesystem, as df counts it for non-root users "
            "(1 - avail / size); tmpfs, overlay and squashfs left out.",
            "percentunit",
            target(
                f"1 - {sel('node_filesystem_avail_bytes', FS)} / {sel('node_filesystem_size_bytes', FS)}",
                "{{instance}} {{mountpoint}}",
            ),
            max=1,
            thresholds=(("green", None), ("orange", 0.8), ("red", 0.9)),
        ),
        row("Network and system"),
        timeseries(
            "Network traffic",
            "Bytes received and transmitted per second on every interface but lo "
            "(details on the nodeagent network dashboard).",
            "Bps",
            target(f"sum by (instance) ({rate('node_network_receive_bytes_total', NOT_LO)})", "{{instance}} receive"),
            target(f"sum by (instance) ({rate('node_network_transmit_bytes_total', NOT_LO)})", "{{instance}} transmit"),
            min=0,
        ),
        timeseries(
            "Network errors and drops",
            "Receive and transmit errors and drops per second, all interfaces.",
            "pps",
            target(f"sum by (instance) ({rate('node_network_receive_errs_total')})", "{{instance}} rx errors"),
            target(f"sum by (instance) ({rate('node_network_transmit_errs_total')})", "{{instance}} tx errors"),
            target(f"sum by (instance) ({rate('node_network_receive_drop_total')})", "{{instance}} rx drops"),
            target(f"sum by (instance) ({rate('node_network_transmit_drop_total')})", "{{instance}} tx drops"),
            min=0,
        ),
        timeseries(
            "Clock offset",
            "Offset between the system clock and its reference (adjtimex); node-mixin alerts above 0.05 s.",
            "s",
            target(sel("node_timex_offset_seconds"), node),
        ),
        timeseries(
            "Node events",
            "Node events nodeagent logged per interval, by action (OOM kills, GPU Xid "
            "errors, link up/down, container start/stop).",
            "short",
            target(f"sum by (instance, action) ({increase('nodeagent_events_total')}) > 0", "{{instance}} {{action}}"),
            min=0,
            bars=True,
        ),
    ]
    return dashboard(
        "nodeagent-node",
        "nodeagent / Node overview",
        "Host CPU, memory, disk, network and node events from nodeagent (node_exporter names).",
        job_instance_variables(),
        panels,
    )


# ---------------------------------------------------------------------------------------------- GPU fleet

GPU_LEGEND = "{{instance}} GPU {{gpu}}"
ENGINE_GPU, SENSOR_GPU, SENSOR_MEM = 'engine="gpu"', 'sensor="gpu"', 'sensor="memory"'
WHOLE_GPU = 'gpu_instance=""'
# Clock-event reasons that are not a slowdown (idle, an application clock setting, a display clock).
NOT_SLOWDOWN = 'reason!~"gpu_idle|applications_clocks_setting|display_clock_setting"'
IDLE_RATIO, IDLE_WINDOW = "0.05", "30m"


def gpu_fleet() -> dict[str, Any]:
    util = sel("nodeagent_gpu_utilization_ratio", ENGINE_GPU)
    alloc = sel("nodeagent_gpu_allocation_info")
    ecc = increase("nodeagent_gpu_ecc_errors_total", eq("counter", "volatile"))
    needs_service = " or ".join(
        f'label_replace({sel(metric)} {cond}, "problem", "{text}", "", "")'
        for metric, cond, text in (
            ("nodeagent_gpu_up", "== 0", "not answering NVML"),
            ("nodeagent_gpu_remapped_rows_failure", "== 1", "row remapping failed: service the GPU"),
            ("nodeagent_gpu_remapped_rows_pending", "== 1", "row remapping pending: reset the GPU"),
            ("nodeagent_gpu_retired_pages_pending", "== 1", "page retirement pending: reload the driver"),
        )
    )
    idle = (
        f"{sel('nodeagent_gpu_allocation_info', WHOLE_GPU)} * on (job, instance, gpu, uuid) group_left () "
        f"(avg_over_time({util}[{IDLE_WINDOW}]) < {IDLE_RATIO})"
    )
    panels = [
        row("Fleet"),
        stat(
            "GPUs answering",
            "GPUs whose NVML calls succeed (nodeagent_gpu_up), all selected nodes.",
            "short",
            target(f"sum({sel('nodeagent_gpu_up')})", "GPUs"),
        ),
        stat(
            "GPUs not answering",
            "GPUs that stopped answering NVML (GPU lost, driver gone). A GPU NVML no longer "
            "lists at all has no series: compare the count with the hardware.",
            "short",
            target(f"count({sel('nodeagent_gpu_up')} == 0) or vector(0)", "GPUs"),
            thresholds=(("green", None), ("red", 1)),
        ),
        stat(
            "Mean GPU utilization",
            "Mean of NVML's GPU busy fraction over all GPUs (MIG-enabled GPUs have none).",
            "percentunit",
            target(f"avg({util})", "mean"),
        ),
        stat(
            "GPU memory used",
            "Framebuffer memory in use over framebuffer memory in total, all GPUs.",
            "percentunit",
            target(
                f"sum({sel('nodeagent_gpu_memory_used_bytes')}) / sum({sel('nodeagent_gpu_memory_total_bytes')})",
                "used",
            ),
        ),
        stat(
            "Power draw",
            "Sum of the GPUs' power draw.",
            "watt",
            target(f"sum({sel('nodeagent_gpu_power_watts')})", "power"),
        ),
        stat(
            "GPUs allocated",
            "GPUs with at least one kubelet assignment (whole, MIG device or time-sliced "
            "replica), from the PodResources API.",
            "short",
            target(f"count(count by (job, instance, uuid) ({alloc})) or vector(0)", "GPUs"),
        ),
        row("Utilization and memory"),
        timeseries(
            "GPU utilization",
            "NVML's GPU busy fraction over its last sample period (1/6 s to 1 s), so "
            "short bursts between scrapes are missed. Absent on MIG-enabled GPUs.",
            "percentunit",
            target(util, GPU_LEGEND),
            min=0,
            max=1,
        ),
        timeseries(
            "GPU memory used",
            "Framebuffer memory in use (reserved memory not counted) over the total.",
            "percentunit",
            target(f"{sel('nodeagent_gpu_memory_used_bytes')} / {sel('nodeagent_gpu_memory_total_bytes')}", GPU_LEGEND),
            min=0,
            max=1,
        ),
        bargauge(
            "Mean GPU utilization by node",
            "Mean GPU busy fraction of each node's GPUs now.",
            "percentunit",
            target(f"avg by (instance) ({util})", "{{instance}}"),
            max=1,
        ),
        bargauge(
            "GPU memory used by node",
            "Framebuffer memory in use over the total, per node.",
            "percentunit",
            target(
                f"sum by (instance) ({sel('nodeagent_gpu_memory_used_bytes')}) / sum by (instance) "
                f"({sel('nodeagent_gpu_memory_total_bytes')})",
                "{{instance}}",
            ),
            max=1,
        ),
        row("Power and temperature"),
        timeseries(
            "Power draw", "Power draw per GPU.", "watt", target(sel("nodeagent_gpu_power_watts"), GPU_LEGEND), min=0
        ),
        timeseries(
            "Power draw vs. limit",
            "Power draw over the enforced power limit; near 100% the sw_power_cap throttle engages.",
            "percentunit",
            target(f"{sel('nodeagent_gpu_power_watts')} / {sel('nodeagent_gpu_power_limit_watts')}", GPU_LEGEND),
            min=0,
        ),
        timeseries(
            "GPU temperature",
            "GPU die temperature.",
            "celsius",
            target(sel("nodeagent_gpu_temperature_celsius", SENSOR_GPU), GPU_LEGEND),
        ),
        timeseries(
            "Headroom to slowdown temperature",
            "Slowdown threshold minus GPU temperature: at 0 the GPU slows its clocks (hw_thermal_slowdown).",
            "celsius",
            target(
                f"{sel('nodeagent_gpu_temperature_threshold_celsius', eq('threshold', 'slowdown'))} "
                f"- on (job, instance, gpu, uuid) "
                f"{sel('nodeagent_gpu_temperature_celsius', SENSOR_GPU)}",
                GPU_LEGEND,
            ),
        ),
        timeseries(
            "Memory temperature",
            "HBM temperature where the board reports it (NVML field 82).",
            "celsius",
            target(sel("nodeagent_gpu_temperature_celsius", SENSOR_MEM), GPU_LEGEND),
        ),
        timeseries(
            "SM clock vs. maximum",
            "Current SM clock over its maximum; low while busy means throttling.",
            "percentunit",
            target(
                f"{sel('nodeagent_gpu_clock_hertz', eq('clock', 'sm'))} / "
                f"{sel('nodeagent_gpu_clock_max_hertz', eq('clock', 'sm'))}",
                GPU_LEGEND,
            ),
            min=0,
        ),
        row("Throttling"),
        timeseries(
            "GPUs held down, by reason",
            "GPUs whose clocks a slowdown reason holds down now (idle, "
            "application and display clock settings left out).",
            "short",
            target(f"sum by (reason) ({sel('nodeagent_gpu_clocks_event_reason', NOT_SLOWDOWN)}) > 0", "{{reason}}"),
            min=0,
        ),
        timeseries(
            "Time throttled",
            "Share of time the clocks were held down, per GPU and reason, from the "
            "driver's cumulative counters (nothing missed between scrapes).",
            "percentunit",
            target(f"{rate('nodeagent_gpu_clocks_event_seconds_total')} > 0", GPU_LEGEND + " {{reason}}"),
            min=0,
        ),
        row("Errors"),
        timeseries(
            "Xid events per node",
            "Critical Xid errors per interval, from nodeagent's gpu_xid node events "
            "(present from the start, so the first Xid is counted too).",
            "short",
            target(
                f"sum by (instance) ({increase('nodeagent_events_total', eq('action', 'gpu_xid'))}) > 0", "{{instance}}"
            ),
            min=0,
            bars=True,
        ),
        timeseries(
            "Xid errors by GPU and code",
            "Critical Xid errors per interval by GPU and Xid code. A series "
            "appears with its first event, so increase() misses the first Xid of each code on a GPU: see "
            "'Xid events per node'. 48, 62, 64, 74, 79, 95, 119, 120 need attention.",
            "short",
            target(
                f"sum by (instance, gpu, xid) ({increase('nodeagent_gpu_xid_errors_total')}) > 0",
                GPU_LEGEND + " Xid {{xid}}",
            ),
            min=0,
            bars=True,
        ),
        timeseries(
            "ECC errors",
            "Volatile ECC errors per interval (since the driver loaded), corrected and uncorrected.",
            "short",
            target(f"sum by (instance, gpu, type) ({ecc}) > 0", GPU_LEGEND + " {{type}}"),
            min=0,
            bars=True,
        ),
        timeseries(
            "Remapped rows and retired pages",
            "Memory rows remapped (Ampere and later) and pages retired (earlier boards) per interval.",
            "short",
            target(
                f"sum by (instance, gpu, type) ({increase('nodeagent_gpu_remapped_rows_total')}) > 0",
                GPU_LEGEND + " remapped {{type}}",
            ),
            target(
                f"sum by (instance, gpu, cause) ({increase('nodeagent_gpu_retired_pages_total')}) > 0",
                GPU_LEGEND + " retired {{cause}}",
            ),
            min=0,
            bars=True,
        ),
        timeseries(
            "PCIe replays and NVLink errors",
            "PCIe link-level retransmits and NVLink data-link errors per "
            "second; a steady rate points at a bad link or riser.",
            "ops",
            target(
                f"rate({sel('nodeagent_gpu_pcie_replay_total')}[$__rate_interval]) > 0", GPU_LEGEND + " PCIe replay"
            ),
            target(
                f"sum by (instance, gpu, type) ({rate('nodeagent_gpu_nvlink_errors_total')}) > 0",
                GPU_LEGEND + " NVLink {{type}}",
            ),
            min=0,
        ),
        table(
            "GPUs needing service",
            "GPUs not answering NVML, with a failed or pending row remapping, or pages awaiting retirement, now.",
            "none",
            needs_service,
            w=12,
            hide=("Value",),
        ),
        row("Allocation"),
        table(
            "Allocated GPUs that are idle",
            f"GPUs the kubelet assigned to a container whose mean utilization "
            f"over the last {IDLE_WINDOW} is below {float(IDLE_RATIO):.0%}. Time-sliced GPUs show one row per "
            f"replica, each with the whole GPU's value; MIG devices have no utilization and are not listed.",
            "percentunit",
            idle,
            hide=("resource",),
        ),
        timeseries(
            "Allocated and busy GPUs per node",
            f"GPUs with a kubelet assignment, and GPUs busier than {float(IDLE_RATIO):.0%}, per node.",
            "short",
            target(f"count by (instance) (count by (job, instance, uuid) ({alloc}))", "{{instance}} allocated"),
            target(f"count by (instance) ({util} > {IDLE_RATIO})", "{{instance}} busy"),
            min=0,
        ),
        timeseries(
            "GPU utilization of allocated GPUs, by pod",
            "GPU busy fraction of whole GPUs joined to the pod "
            "the kubelet assigned them to (time-sliced and MIG rows left out: see the GPU node dashboard "
            "for per-workload use).",
            "percentunit",
            target(
                f"{util} * on (job, instance, gpu, uuid) group_left (namespace, pod, container) "
                f"{sel('nodeagent_gpu_allocation_info', WHOLE_GPU, eq('replica', ''))}",
                "{{namespace}}/{{pod}} " + GPU_LEGEND,
            ),
            min=0,
            max=1,
        ),
    ]
    return dashboard(
        "nodeagent-gpu-fleet",
        "nodeagent / GPU fleet",
        "Every NVIDIA GPU across the selected nodes: utilization, memory, power, temperature, "
        "throttling, Xid and memory errors, and GPUs allocated but idle.",
        job_instance_variables(),
        panels,
    )


# ---------------------------------------------------------------------------------------------- GPU node detail

G = JI + ', gpu=~"$gpu"'
MIG_LEGEND = GPU_LEGEND + " GI {{gpu_instance}} CI {{compute_instance}} {{profile}}"
WORKLOAD_GPU_LEGEND = GPU_LEGEND + "{{gpu_instance}} {{namespace}}/{{pod}}/{{container}} {{id}}"


def gpu_node() -> dict[str, Any]:
    def g(metric: str, *matchers: str) -> str:
        return sel(metric, *matchers, base=G)

    def g_rate(metric: str, *matchers: str) -> str:
        return rate(metric, *matchers, base=G)

    variables = [
        *job_instance_variables(),
        query_variable("gpu", 'label_values(nodeagent_gpu_info{job=~"$job", instance=~"$instance"}, gpu)', label="GPU"),
    ]
    panels = [
        row("GPUs"),
        table(
            "GPUs",
            "Identity, driver and modes of each GPU (nodeagent_gpu_info).",
            "none",
            g("nodeagent_gpu_info"),
            hide=("Value",),
            h=6,
        ),
        timeseries(
            "Utilization by engine",
            "Busy fraction of the GPU, memory controller, encoder and decoder over "
            "NVML's last sample period. gpu and memory are absent on MIG-enabled GPUs.",
            "percentunit",
            target(g("nodeagent_gpu_utilization_ratio"), GPU_LEGEND + " {{engine}}"),
            min=0,
            max=1,
        ),
        timeseries(
            "Framebuffer memory",
            "Memory in use and reserved by the driver, and the total.",
            "bytes",
            target(g("nodeagent_gpu_memory_used_bytes"), GPU_LEGEND + " used"),
            target(g("nodeagent_gpu_memory_reserved_bytes"), GPU_LEGEND + " reserved"),
            target(g("nodeagent_gpu_memory_total_bytes"), GPU_LEGEND + " total"),
            min=0,
        ),
        timeseries(
            "Power",
            "Power draw (sampled), mean power from the energy counter (exact over the interval) "
            "and the enforced limit.",
            "watt",
            target(g("nodeagent_gpu_power_watts"), GPU_LEGEND + " draw"),
            target(g_rate("nodeagent_gpu_energy_joules_total"), GPU_LEGEND + " mean (energy)"),
            target(g("nodeagent_gpu_power_limit_watts"), GPU_LEGEND + " limit"),
            min=0,
        ),
        timeseries(
            "Temperatures and thresholds",
            "GPU and memory temperature, with the slowdown and maximum operating thresholds.",
            "celsius",
            target(g("nodeagent_gpu_temperature_celsius"), GPU_LEGEND + " {{sensor}}"),
            target(
                g("nodeagent_gpu_temperature_threshold_celsius", eq("threshold", "slowdown|gpu_max|memory_max", "=~")),
                GPU_LEGEND + " {{threshold}} threshold",
            ),
        ),
        timeseries(
            "Clocks",
            "Current SM and memory clocks.",
            "hertz",
            target(g("nodeagent_gpu_clock_hertz", eq("clock", "sm|memory", "=~")), GPU_LEGEND + " {{clock}}"),
            min=0,
        ),
        timeseries(
            "Clock event reasons",
            "Reasons holding the clocks down now (1 while active; idle left out).",
            "short",
            target(
                f"{g('nodeagent_gpu_clocks_event_reason', eq('reason', 'gpu_idle', '!='))} > 0",
                GPU_LEGEND + " {{reason}}",
            ),
            min=0,
        ),
        timeseries(
            "PCIe throughput",
            "Bytes per second the GPU sent and received over PCIe.",
            "Bps",
            target(g_rate("nodeagent_gpu_pcie_transmit_bytes_total"), GPU_LEGEND + " tx"),
            target(g_rate("nodeagent_gpu_pcie_receive_bytes_total"), GPU_LEGEND + " rx"),
            min=0,
        ),
        timeseries(
            "NVLink throughput",
            "Data bytes per second over all NVLinks of each GPU.",
            "Bps",
            target(
                f"sum by (instance, gpu) ({g_rate('nodeagent_gpu_nvlink_transmit_bytes_total')})", GPU_LEGEND + " tx"
            ),
            target(
                f"sum by (instance, gpu) ({g_rate('nodeagent_gpu_nvlink_receive_bytes_total')})", GPU_LEGEND + " rx"
            ),
            min=0,
        ),
        timeseries(
            "Fan speed",
            "Intended fan speed per fan (boards with fans only).",
            "percentunit",
            target(g("nodeagent_gpu_fan_speed_ratio"), GPU_LEGEND + " fan {{fan}}"),
            min=0,
            max=1,
        ),
        timeseries(
            "Performance state",
            "P-state: 0 is the fastest, 15 the slowest.",
            "short",
            target(g("nodeagent_gpu_performance_state"), GPU_LEGEND),
            min=0,
        ),
        row("MIG"),
        table(
            "MIG devices",
            "MIG devices on MIG-enabled GPUs, with their profile and UUID.",
            "none",
            g("nodeagent_gpu_mig_info"),
            hide=("Value",),
            h=6,
        ),
        timeseries(
            "MIG memory used",
            "Framebuffer memory in use per MIG device.",
            "bytes",
            target(g("nodeagent_gpu_mig_memory_used_bytes"), MIG_LEGEND),
            min=0,
        ),
        timeseries(
            "MIG memory used vs. size",
            "Memory in use over the MIG device's memory.",
            "percentunit",
            target(
                f"{g('nodeagent_gpu_mig_memory_used_bytes')} / {g('nodeagent_gpu_mig_memory_total_bytes')}", MIG_LEGEND
            ),
            min=0,
            max=1,
        ),
        table(
            "MIG devices by pod",
            "Memory in use per MIG device, joined to the container the kubelet assigned it to.",
            "bytes",
            f"{g('nodeagent_gpu_mig_memory_used_bytes')} * on (job, instance, gpu, uuid, gpu_instance, "
            f"compute_instance) group_left (namespace, pod, container) "
            f"{g('nodeagent_gpu_allocation_info', eq('gpu_instance', '', '!='))}",
            h=6,
        ),
        row("Workloads"),
        timeseries(
            "GPU memory by workload",
            "GPU memory used by each workload's processes (pod, container, "
            "Slurm job, service or VM, by cgroup id), per GPU or MIG device. Needs host PIDs.",
            "bytes",
            target(g("nodeagent_gpu_workload_memory_used_bytes"), WORKLOAD_GPU_LEGEND),
            min=0,
        ),
        timeseries(
            "SM use by workload",
            "Peak SM use of each workload's processes since the previous cycle (not under MIG).",
            "percentunit",
            target(g("nodeagent_gpu_workload_utilization_ratio", eq("engine", "sm")), WORKLOAD_GPU_LEGEND),
            min=0,
            max=1,
        ),
        timeseries(
            "Processes",
            "Processes per GPU or MIG device, and per workload.",
            "short",
            target(g("nodeagent_gpu_processes"), GPU_LEGEND + " {{gpu_instance}} all"),
            target(g("nodeagent_gpu_workload_processes"), WORKLOAD_GPU_LEGEND),
            min=0,
        ),
        table(
            "Workloads on GPUs",
            "GPU memory used per workload and GPU now, with the workload's names.",
            "bytes",
            g("nodeagent_gpu_workload_memory_used_bytes"),
            w=12,
        ),
        table(
            "Kubelet GPU assignments",
            "GPUs, MIG devices and time-sliced replicas the kubelet assigned to "
            "containers (PodResources). Time-sliced GPUs have one row per replica.",
            "none",
            g("nodeagent_gpu_allocation_info"),
            hide=("Value",),
        ),
    ]
    return dashboard(
        "nodeagent-gpu-node",
        "nodeagent / GPU node detail",
        "Each GPU of the selected nodes, its MIG devices, and the workloads that use it.",
        variables,
        panels,
    )


# ---------------------------------------------------------------------------------------------- workloads

W = JI + ', namespace=~"$namespace"'
WORKLOAD_INFO = sel("nodeagent_workload_info", eq("kind", "$kind", "=~"), eq("slurm_step", ""))
WORKLOAD_LEGEND = "{{instance}} {{kind}} {{namespace}}/{{pod}}/{{container}} {{service}}{{slurm_job}}{{vm}}"


def workload_join(expr: str) -> str:
    """Add kind and the Slurm/service/VM names from nodeagent_workload_info (one row per cgroup id per node)."""
    return f"({expr}) * on (job, instance, id) group_left (kind, service, slurm_job, vm) {WORKLOAD_INFO}"


def top(expr: str) -> str:
    return f"topk({TOP}, {workload_join(expr)})"


def workloads() -> dict[str, Any]:
    def w(metric: str, *matchers: str) -> str:
        return sel(metric, *matchers, base=W)

    def w_rate(metric: str, *matchers: str) -> str:
        return rate(metric, *matchers, base=W)

    cpu = f"sum without (cpu) ({w_rate('container_cpu_usage_seconds_total')})"
    not_pod = sel("nodeagent_workload_info", eq("kind", "$kind", "=~"), eq("kind", "pod", "!="), eq("slurm_step", ""))
    variables = [
        *job_instance_variables(),
        query_variable("kind", 'label_values(nodeagent_workload_info{job=~"$job", instance=~"$instance"}, kind)'),
        # Slurm jobs, services and VMs have namespace="": "All" must match the empty value too.
        query_variable(
            "namespace",
            'label_values(container_cpu_usage_seconds_total{job=~"$job", instance=~"$instance"}, namespace)',
            all_value=".*",
        ),
    ]
    top_note = (
        f" The {TOP} highest at each step; Slurm job steps are folded into their job row, and a pod row "
        "includes its containers (pick a kind to avoid reading both)."
    )
    panels = [
        row("Workloads"),
        stat(
            "Workloads",
            "Workload cgroups of the selected kinds (pods, containers, services, Slurm jobs, VMs).",
            "short",
            target(f"count({WORKLOAD_INFO})", "workloads"),
        ),
        stat(
            "CPU used by workloads",
            "CPU cores used by containers (Kubernetes, Docker, Podman), Slurm jobs, "
            "services and VMs, without double-counting pods and Slurm steps.",
            "short",
            target(f"sum({cpu} * on (job, instance, id) group_left () {not_pod})", "cores"),
        ),
        stat(
            "Throttled workloads",
            "Workloads whose CPU quota throttled them in more than 25% of periods.",
            "short",
            target(
                f"count(({w_rate('container_cpu_cfs_throttled_periods_total')} / "
                f"{w_rate('container_cpu_cfs_periods_total')}) > 0.25) or vector(0)",
                "workloads",
            ),
            thresholds=(("green", None), ("orange", 1)),
        ),
        stat(
            "Workloads near memory limit",
            "Workloads whose working set is above 90% of their memory limit.",
            "short",
            target(
                f"count(({w('container_memory_working_set_bytes')} / "
                f"({w('container_spec_memory_limit_bytes')} > 0)) > 0.9) or vector(0)",
                "workloads",
            ),
            thresholds=(("green", None), ("orange", 1)),
        ),
        stat(
            "OOM kills",
            "OOM kills on the selected nodes in the last interval (node events).",
            "short",
            target(f"sum({increase('nodeagent_events_total', eq('action', 'oom_kill'))}) or vector(0)", "kills"),
            thresholds=(("green", None), ("red", 1)),
        ),
        stat(
            "GPU memory used by workloads",
            "GPU memory used by workload processes on all GPUs.",
            "bytes",
            target(f"sum({w('nodeagent_gpu_workload_memory_used_bytes')}) or vector(0)", "GPU memory"),
        ),
        table(
            "Workloads",
            "Every workload cgroup of the selected kinds with its names and working set now.",
            "bytes",
            workload_join(w("container_memory_working_set_bytes")),
            hide=("name",),
        ),
        row("CPU"),
        timeseries("CPU usage", "CPU cores used." + top_note, "short", target(top(cpu), WORKLOAD_LEGEND), min=0),
        timeseries(
            "CPU usage vs. limit",
            "CPU used over the CPU quota (limit), for workloads with a quota." + top_note,
            "percentunit",
            target(
                top(f"{cpu} / ({w('container_spec_cpu_quota')} / {w('container_spec_cpu_period')})"), WORKLOAD_LEGEND
            ),
            min=0,
        ),
        timeseries(
            "CPU throttling",
            "Share of CFS periods in which the quota throttled the workload." + top_note,
            "percentunit",
            target(
                top(
                    f"{w_rate('container_cpu_cfs_throttled_periods_total')} / "
                    f"{w_rate('container_cpu_cfs_periods_total')}"
                ),
                WORKLOAD_LEGEND,
            ),
            min=0,
            max=1,
        ),
        timeseries(
            "CPU pressure",
            "Share of time some task of the workload waited for CPU (cpu.pressure some)." + top_note,
            "percentunit",
            target(top(w_rate("container_pressure_cpu_waiting_seconds_total")), WORKLOAD_LEGEND),
            min=0,
        ),
        row("Memory"),
        timeseries(
            "Working set",
            "Memory usage minus inactive file cache (what the kubelet evicts and the OOM killer counts)." + top_note,
            "bytes",
            target(top(w("container_memory_working_set_bytes")), WORKLOAD_LEGEND),
            min=0,
        ),
        timeseries(
            "Working set vs. limit",
            "Working set over the memory limit, for workloads with a limit; near "
            "100% the kernel reclaims and then OOM-kills." + top_note,
            "percentunit",
            target(
                top(f"{w('container_memory_working_set_bytes')} / ({w('container_spec_memory_limit_bytes')} > 0)"),
                WORKLOAD_LEGEND,
            ),
            min=0,
        ),
        timeseries(
            "OOM kills",
            "OOM kills per interval per workload (cgroup v2 counts a pod's containers on the "
            "pod row too), and all OOM kills on the node from nodeagent's oom_kill events.",
            "short",
            target(workload_join(f"{increase('container_oom_events_total', base=W)} > 0"), WORKLOAD_LEGEND),
            target(
                f"sum by (instance) ({increase('nodeagent_events_total', eq('action', 'oom_kill'))}) > 0",
                "{{instance}} node (all processes)",
            ),
            min=0,
            bars=True,
        ),
        timeseries(
            "Memory pressure",
            "Share of time all tasks of the workload stalled on memory (memory.pressure full)." + top_note,
            "percentunit",
            target(top(w_rate("container_pressure_memory_stalled_seconds_total")), WORKLOAD_LEGEND),
            min=0,
        ),
        row("IO and network"),
        timeseries(
            "Disk read and write",
            "Bytes per second read and written to block devices (all devices)." + top_note,
            "Bps",
            target(
                top(f"sum without (device) ({w_rate('container_fs_reads_bytes_total')})"), WORKLOAD_LEGEND + " read"
            ),
            target(
                top(f"sum without (device) ({w_rate('container_fs_writes_bytes_total')})"), WORKLOAD_LEGEND + " write"
            ),
            min=0,
        ),
        timeseries(
            "IO pressure",
            "Share of time some task of the workload waited for IO (io.pressure some)." + top_note,
            "percentunit",
            target(top(w_rate("container_pressure_io_waiting_seconds_total")), WORKLOAD_LEGEND),
            min=0,
        ),
        timeseries(
            "Network traffic",
            "Bytes per second on the interfaces of the workload's own network "
            "namespace (pods on their pod row; host-network workloads have none)." + top_note,
            "Bps",
            target(
                top(f"sum without (interface) ({w_rate('container_network_receive_bytes_total')})"),
                WORKLOAD_LEGEND + " rx",
            ),
            target(
                top(f"sum without (interface) ({w_rate('container_network_transmit_bytes_total')})"),
                WORKLOAD_LEGEND + " tx",
            ),
            min=0,
        ),
        timeseries(
            "Network drops",
            "Packets dropped per second in the workload's network namespace.",
            "pps",
            target(
                workload_join(
                    f"sum without (interface) ({w_rate('container_network_receive_packets_dropped_total')}) > 0"
                ),
                WORKLOAD_LEGEND + " rx",
            ),
            target(
                workload_join(
                    f"sum without (interface) ({w_rate('container_network_transmit_packets_dropped_total')}) > 0"
                ),
                WORKLOAD_LEGEND + " tx",
            ),
            min=0,
        ),
        row("GPU"),
        timeseries(
            "GPU memory",
            "GPU memory used by each workload's processes, all its GPUs. Not filtered by "
            "kind: GPU processes outside a known workload are shown under their own cgroup.",
            "bytes",
            target(
                f"sum without (gpu, uuid, gpu_instance, compute_instance) "
                f"({w('nodeagent_gpu_workload_memory_used_bytes')})",
                "{{instance}} {{namespace}}/{{pod}}/{{container}} {{id}}",
            ),
            min=0,
        ),
        timeseries(
            "GPU memory share",
            "Each workload's share of the framebuffer of the GPUs it uses (for MIG "
            "devices, of the whole parent GPU), summed over its GPUs.",
            "percentunit",
            target(
                f"sum by (instance, id, namespace, pod, container) "
                f"({w('nodeagent_gpu_workload_memory_used_bytes')} / on (job, instance, gpu, uuid) "
                f"group_left () {sel('nodeagent_gpu_memory_total_bytes')})",
                "{{instance}} {{namespace}}/{{pod}}/{{container}} {{id}}",
            ),
            min=0,
        ),
        timeseries(
            "GPU SM use",
            "Peak SM use of each workload's processes since the previous cycle, per GPU (absent under MIG).",
            "percentunit",
            target(w("nodeagent_gpu_workload_utilization_ratio", eq("engine", "sm")), WORKLOAD_GPU_LEGEND),
            min=0,
            max=1,
        ),
    ]
    return dashboard(
        "nodeagent-workloads",
        "nodeagent / Workloads",
        "Pods, containers, Slurm jobs, systemd services and VMs on the selected nodes: CPU, memory "
        "against limits, throttling, OOM kills, IO, network and GPU share.",
        variables,
        panels,
    )


# ---------------------------------------------------------------------------------------------- network

D = JI + ', device=~"$device"'
DEV_LEGEND = "{{instance}} {{device}}"
IB_LEGEND = "{{instance}} {{device}}:{{port}}"


def network() -> dict[str, Any]:
    def d(metric: str, *matchers: str) -> str:
        return sel(metric, *matchers, base=D)

    def d_rate(metric: str, *matchers: str) -> str:
        return rate(metric, *matchers, base=D)

    def nonzero_rates(legend: str, *pairs: tuple[str, str], base: str = D) -> list[dict[str, Any]]:
        return [target(f"{rate(metric, base=base)} > 0", f"{legend} {name}") for metric, name in pairs]

    def by_pod(metric: str) -> str:
        return f"topk({TOP}, sum by (instance, namespace, pod, name) ({rate(metric)}))"

    variables = [
        *job_instance_variables(),
        query_variable(
            "device", 'label_values(node_network_info{job=~"$job", instance=~"$instance"}, device)', label="Interface"
        ),
    ]
    ib_states = {"1": "down", "2": "init", "3": "armed", "4": "active", "5": "active defer"}
    panels = [
        row("Interfaces"),
        table(
            "Interfaces",
            "Each interface's state, kind (veth, bridge, bond, ...; empty for physical devices), address and MTU.",
            "none",
            d("node_network_info"),
            hide=("Value", "broadcast"),
            h=7,
        ),
        timeseries(
            "Traffic",
            "Bytes per second received and transmitted.",
            "Bps",
            target(d_rate("node_network_receive_bytes_total"), DEV_LEGEND + " rx"),
            target(d_rate("node_network_transmit_bytes_total"), DEV_LEGEND + " tx"),
            min=0,
        ),
        timeseries(
            "Link utilization",
            "Traffic over the link speed, where the driver reports a speed.",
            "percentunit",
            target(
                f"{d_rate('node_network_receive_bytes_total')} / {d('node_network_speed_bytes')}", DEV_LEGEND + " rx"
            ),
            target(
                f"{d_rate('node_network_transmit_bytes_total')} / {d('node_network_speed_bytes')}", DEV_LEGEND + " tx"
            ),
            min=0,
        ),
        timeseries(
            "Packets",
            "Packets per second received and transmitted.",
            "pps",
            target(d_rate("node_network_receive_packets_total"), DEV_LEGEND + " rx"),
            target(d_rate("node_network_transmit_packets_total"), DEV_LEGEND + " tx"),
            min=0,
        ),
        timeseries(
            "Errors",
            "Receive and transmit errors per second (frame: length, overrun and CRC errors; "
            "carrier: carrier, aborted, heartbeat and window errors). Only non-zero series.",
            "pps",
            *nonzero_rates(
                DEV_LEGEND,
                ("node_network_receive_errs_total", "rx errors"),
                ("node_network_receive_frame_total", "rx frame"),
                ("node_network_transmit_errs_total", "tx errors"),
                ("node_network_transmit_carrier_total", "tx carrier"),
            ),
            min=0,
        ),
        timeseries(
            "Drops",
            "Packets dropped per second (rx includes missed: the NIC's ring was full). Only non-zero series.",
            "pps",
            *nonzero_rates(
                DEV_LEGEND,
                ("node_network_receive_drop_total", "rx drop"),
                ("node_network_receive_fifo_total", "rx fifo"),
                ("node_network_transmit_drop_total", "tx drop"),
            ),
            min=0,
        ),
        timeseries(
            "Link state",
            "1 while the interface's operstate is up; carrier 1 while a link is detected.",
            "short",
            target(d("node_network_up"), DEV_LEGEND + " up"),
            target(d("node_network_carrier"), DEV_LEGEND + " carrier"),
            min=0,
            max=1,
        ),
        timeseries(
            "Link events and carrier changes",
            "Link up/down events nodeagent logged (netlink, as they "
            "happen) and carrier changes per interval; a steady series means a flapping link.",
            "short",
            target(
                f"sum by (instance, action) "
                f"({increase('nodeagent_events_total', eq('action', 'link_up|link_down', '=~'))}) > 0",
                "{{instance}} {{action}}",
            ),
            target(f"{increase('node_network_carrier_changes_total', base=D)} > 0", DEV_LEGEND + " carrier changes"),
            min=0,
            bars=True,
        ),
        row("TCP and sockets"),
        timeseries(
            "TCP connections by state",
            "IPv4 and IPv6 TCP sockets per state (sock_diag).",
            "short",
            target(
                sel(
                    "node_tcp_connection_states", eq("state", "established|time_wait|close_wait|syn_recv|listen", "=~")
                ),
                "{{instance}} {{state}}",
            ),
            min=0,
        ),
        timeseries(
            "TCP retransmits",
            "Retransmitted segments over segments sent.",
            "percentunit",
            target(f"{rate('node_netstat_Tcp_RetransSegs')} / {rate('node_netstat_Tcp_OutSegs')}", "{{instance}}"),
            min=0,
        ),
        timeseries(
            "TCP problems",
            "Listen queue overflows and drops, timeouts, SYN retransmits, receive errors and resets sent, per second.",
            "ops",
            *nonzero_rates(
                "{{instance}}",
                ("node_netstat_TcpExt_ListenOverflows", "listen overflows"),
                ("node_netstat_TcpExt_ListenDrops", "listen drops"),
                ("node_netstat_TcpExt_TCPTimeouts", "timeouts"),
                ("node_netstat_TcpExt_TCPSynRetrans", "SYN retransmits"),
                ("node_netstat_Tcp_InErrs", "in errors"),
                ("node_netstat_Tcp_OutRsts", "resets sent"),
                base=JI,
            ),
            min=0,
        ),
        timeseries(
            "Sockets and conntrack",
            "TCP sockets in use and in TIME_WAIT, UDP sockets in use, and connection-tracking entries.",
            "short",
            target(sel("node_sockstat_TCP_inuse"), "{{instance}} TCP in use"),
            target(sel("node_sockstat_TCP_tw"), "{{instance}} TCP time_wait"),
            target(sel("node_sockstat_UDP_inuse"), "{{instance}} UDP in use"),
            target(sel("node_nf_conntrack_entries"), "{{instance}} conntrack entries"),
            min=0,
        ),
        timeseries(
            "Conntrack table used",
            "Connection-tracking entries over the table's limit; at 100% new connections are dropped.",
            "percentunit",
            target(f"{sel('node_nf_conntrack_entries')} / {sel('node_nf_conntrack_entries_limit')}", "{{instance}}"),
            min=0,
            max=1,
        ),
        timeseries(
            "UDP errors",
            "UDP receive and send buffer errors and datagrams to closed ports per second.",
            "ops",
            *nonzero_rates(
                "{{instance}}",
                ("node_netstat_Udp_RcvbufErrors", "receive buffer errors"),
                ("node_netstat_Udp_SndbufErrors", "send buffer errors"),
                ("node_netstat_Udp_NoPorts", "no port"),
                base=JI,
            ),
            min=0,
        ),
        row("Pods and containers"),
        timeseries(
            "Received by pod",
            f"Bytes per second received in each pod's (or container's own) network namespace, the {TOP} highest.",
            "Bps",
            target(by_pod("container_network_receive_bytes_total"), "{{instance}} {{namespace}}/{{pod}}{{name}}"),
            min=0,
        ),
        timeseries(
            "Transmitted by pod",
            f"Bytes per second transmitted from each pod's network namespace, the {TOP} highest.",
            "Bps",
            target(by_pod("container_network_transmit_bytes_total"), "{{instance}} {{namespace}}/{{pod}}{{name}}"),
            min=0,
        ),
        timeseries(
            "Pod drops and errors",
            "Packets dropped and errors per second in pod network namespaces (non-zero only).",
            "pps",
            *(
                target(
                    f"sum by (instance, namespace, pod, name) ({rate(metric)}) > 0",
                    "{{instance}} {{namespace}}/{{pod}}{{name}} " + name,
                )
                for metric, name in (
                    ("container_network_receive_packets_dropped_total", "rx drop"),
                    ("container_network_transmit_packets_dropped_total", "tx drop"),
                    ("container_network_receive_errors_total", "rx errors"),
                    ("container_network_transmit_errors_total", "tx errors"),
                )
            ),
            min=0,
        ),
        row("InfiniBand"),
        table(
            "InfiniBand ports",
            "State of each InfiniBand/RDMA port (4 = active).",
            "none",
            sel("node_infiniband_state_id"),
            w=8,
            mappings=ib_states,
        ),
        timeseries(
            "InfiniBand throughput",
            "Data bytes per second received and transmitted per port.",
            "Bps",
            target(rate("node_infiniband_port_data_received_bytes_total"), IB_LEGEND + " rx"),
            target(rate("node_infiniband_port_data_transmitted_bytes_total"), IB_LEGEND + " tx"),
            w=8,
            min=0,
        ),
        timeseries(
            "InfiniBand utilization",
            "Data rate over the port's signalling rate.",
            "percentunit",
            target(
                f"{rate('node_infiniband_port_data_received_bytes_total')} / "
                f"{sel('node_infiniband_rate_bytes_per_second')}",
                IB_LEGEND + " rx",
            ),
            target(
                f"{rate('node_infiniband_port_data_transmitted_bytes_total')} / "
                f"{sel('node_infiniband_rate_bytes_per_second')}",
                IB_LEGEND + " tx",
            ),
            w=8,
            min=0,
        ),
        timeseries(
            "InfiniBand errors",
            "Port error counters per second (non-zero only): symbol errors, receive "
            "errors, discards, link integrity and buffer overruns.",
            "ops",
            *nonzero_rates(
                IB_LEGEND,
                ("node_infiniband_symbol_error_total", "symbol errors"),
                ("node_infiniband_port_errors_received_total", "rx errors"),
                ("node_infiniband_port_discards_received_total", "rx discards"),
                ("node_infiniband_port_discards_transmitted_total", "tx discards"),
                ("node_infiniband_local_link_integrity_errors_total", "link integrity"),
                ("node_infiniband_excessive_buffer_overrun_errors_total", "buffer overruns"),
                base=JI,
            ),
            min=0,
        ),
        timeseries(
            "InfiniBand link downs and recoveries",
            "Times per interval the link went down or recovered from an error state.",
            "short",
            target(f"{increase('node_infiniband_link_downed_total')} > 0", IB_LEGEND + " downed"),
            target(f"{increase('node_infiniband_link_error_recovery_total')} > 0", IB_LEGEND + " recovered"),
            w=6,
            min=0,
            bars=True,
        ),
        timeseries(
            "InfiniBand transmit wait",
            "Ticks per second in which the port had data to send but could not (congestion or credit starvation).",
            "ops",
            target(rate("node_infiniband_port_transmit_wait_total"), IB_LEGEND),
            w=6,
            min=0,
        ),
    ]
    return dashboard(
        "nodeagent-network",
        "nodeagent / Network",
        "Interfaces, errors and drops, link events, TCP, sockets, conntrack, per-pod traffic and "
        "InfiniBand on the selected nodes.",
        variables,
        panels,
    )


# ---------------------------------------------------------------------------------------------- self-health


def self_health() -> dict[str, Any]:
    ack_age = f"time() - ({sel('nodeagent_log_last_ack_timestamp_seconds')} > 0)"
    panels = [
        row("Agents"),
        stat(
            "Agents reporting",
            "nodeagent processes whose metrics the data source has now.",
            "short",
            target(f"count({sel('nodeagent_build_info')})", "agents"),
        ),
        stat(
            "Failing collectors",
            "Collectors whose last cycle failed or timed out, all agents.",
            "short",
            target(f"count({sel('nodeagent_collector_success')} == 0) or vector(0)", "collectors"),
            thresholds=(("green", None), ("red", 1)),
        ),
        stat(
            "Collectors without data",
            "Collectors that found no source on their host (no GPU, no runtime): "
            "not an error; 'nodeagent doctor' says why.",
            "short",
            target(f"count({sel('nodeagent_collector_has_data')} == 0) or vector(0)", "collectors"),
        ),
        stat(
            "Log endpoints down",
            "Log shipping endpoints whose last batch failed (shipping configured only).",
            "short",
            target(f"count({sel('nodeagent_log_ship_up')} == 0) or vector(0)", "endpoints"),
            thresholds=(("green", None), ("red", 1)),
        ),
        stat(
            "Log backlog",
            "Records in the spools not yet acknowledged, all agents.",
            "short",
            target(f"sum({sel('nodeagent_log_records_unacknowledged')}) or vector(0)", "records"),
        ),
        stat(
            "Oldest ACK age",
            "Longest time since an agent's last log acknowledgement (agents that never had one left out).",
            "s",
            target(f"max({ack_age})", "age"),
            thresholds=(("green", None), ("orange", 60), ("red", 300)),
        ),
        table(
            "Agents",
            "Version and Python of each agent.",
            "none",
            sel("nodeagent_build_info"),
            hide=("Value",),
            w=12,
            h=7,
        ),
        timeseries(
            "Agent CPU",
            "CPU cores the agent process uses.",
            "short",
            target(rate("process_cpu_seconds_total"), "{{instance}}"),
            min=0,
            h=7,
        ),
        timeseries(
            "Agent memory",
            "Resident memory of the agent process.",
            "bytes",
            target(sel("process_resident_memory_bytes"), "{{instance}}"),
            min=0,
        ),
        timeseries(
            "File descriptors",
            "Open file descriptors of the agent over its limit (RLIMIT_NOFILE).",
            "percentunit",
            target(f"{sel('process_open_fds')} / {sel('process_max_fds')}", "{{instance}}"),
            min=0,
            max=1,
        ),
        row("Collectors"),
        timeseries(
            "Failing collectors",
            "Collectors whose last cycle failed or timed out (0 while failing; "
            "their series are dropped for that cycle).",
            "short",
            target(f"{sel('nodeagent_collector_success')} == 0", "{{instance}} {{collector}}"),
            min=0,
            max=1,
        ),
        timeseries(
            "Cycle duration",
            "Duration of each collector's last cycle, the slowest agent.",
            "s",
            target(f"max by (collector) ({sel('nodeagent_collector_duration_seconds')})", "{{collector}}"),
            min=0,
        ),
        timeseries(
            "Failures and skipped cycles",
            "Failed cycles by reason (error, timeout) and cycles skipped "
            "because the previous one overran, per interval.",
            "short",
            target(
                f"sum by (instance, collector, reason) ({increase('nodeagent_collector_failures_total')}) > 0",
                "{{instance}} {{collector}} {{reason}}",
            ),
            target(
                f"sum by (instance, collector) ({increase('nodeagent_collector_skipped_total')}) > 0",
                "{{instance}} {{collector}} skipped",
            ),
            min=0,
            bars=True,
        ),
        timeseries(
            "Time since last success",
            "Seconds since each collector's last successful cycle, the worst agent.",
            "s",
            target(
                f"max by (collector) (time() - ({sel('nodeagent_collector_last_success_timestamp_seconds')} > 0))",
                "{{collector}}",
            ),
            min=0,
        ),
        timeseries(
            "Series per collector",
            "Series each collector published in its last cycle, summed over agents.",
            "short",
            target(f"sum by (collector) ({sel('nodeagent_collector_series')})", "{{collector}}"),
            min=0,
        ),
        timeseries(
            "Node events",
            "Node events logged per interval, by action.",
            "short",
            target(f"sum by (action) ({increase('nodeagent_events_total')}) > 0", "{{action}}"),
            min=0,
            bars=True,
        ),
        row("Sources"),
        timeseries(
            "Runtime APIs",
            "Whether each container runtime API answers (1) or not (0).",
            "short",
            target(sel("nodeagent_runtime_up"), "{{instance}} {{runtime}}"),
            min=0,
            max=1,
        ),
        timeseries(
            "PodResources requests",
            "Calls to the kubelet's PodResources API per second, by result.",
            "ops",
            target(
                f"sum by (instance, result) ({rate('nodeagent_kubelet_podresources_requests_total')})",
                "{{instance}} {{result}}",
            ),
            min=0,
        ),
        timeseries(
            "Workload cgroups",
            "Workload cgroups found, and those dropped because max_cgroups was reached.",
            "short",
            target(sel("nodeagent_cgroups_discovered"), "{{instance}} discovered"),
            target(sel("nodeagent_cgroups_dropped"), "{{instance}} dropped"),
            min=0,
        ),
        timeseries(
            "Cgroup read errors",
            "cgroup files that could not be read or parsed, per second.",
            "ops",
            target(
                f"sum by (instance, reason) ({rate('nodeagent_cgroups_read_errors_total')}) > 0",
                "{{instance}} {{reason}}",
            ),
            min=0,
        ),
        timeseries(
            "GPU Xid watch",
            "GPUs whose critical Xid events the agent is subscribed to (0 while the watch is down).",
            "short",
            target(sel("nodeagent_gpu_xid_watch_gpus"), "{{instance}}"),
            min=0,
        ),
        timeseries(
            "Runtime reconnects",
            "Times a runtime API answered again after failing, per interval.",
            "short",
            target(f"{increase('nodeagent_runtime_reconnects_total')} > 0", "{{instance}} {{runtime}}"),
            min=0,
            bars=True,
        ),
        row("Log shipping"),
        timeseries(
            "Backlog",
            "Records in the spool not yet acknowledged by the receiver.",
            "short",
            target(sel("nodeagent_log_records_unacknowledged"), "{{instance}}"),
            min=0,
        ),
        timeseries(
            "ACK age",
            "Seconds since the last acknowledgement; growing while the backlog grows is a stalled receiver.",
            "s",
            target(ack_age, "{{instance}}"),
            min=0,
        ),
        timeseries(
            "ACK latency",
            "Mean seconds from sending a batch to its acknowledgement over the interval, and the last batch's.",
            "s",
            target(
                f"{rate('nodeagent_log_ack_seconds_total')} / {rate('nodeagent_log_batches_total')}",
                "{{instance}} mean",
            ),
            target(sel("nodeagent_log_last_ack_latency_seconds"), "{{instance}} last"),
            min=0,
        ),
        timeseries(
            "Spool size",
            "Bytes the spool holds on disk and in memory only.",
            "bytes",
            target(sel("nodeagent_log_spool_bytes"), "{{instance}} {{where}}"),
            min=0,
        ),
        timeseries(
            "Record flow",
            "Records per second put into the spool, delivered and acknowledged.",
            "ops",
            target(rate("nodeagent_log_records_queued_total"), "{{instance}} queued"),
            target(f"sum by (instance) ({rate('nodeagent_log_records_shipped_total')})", "{{instance}} shipped"),
            target(rate("nodeagent_log_records_acknowledged_total"), "{{instance}} acknowledged"),
            min=0,
        ),
        timeseries(
            "Endpoints",
            "1 while the last batch to the endpoint was delivered.",
            "short",
            target(sel("nodeagent_log_ship_up"), "{{instance}} {{endpoint}}"),
            min=0,
            max=1,
        ),
        timeseries(
            "Ship failures",
            "Failed batches per second (refused, timed out, closed, 429/5xx); they are sent again.",
            "ops",
            target(f"{rate('nodeagent_log_ship_failures_total')} > 0", "{{instance}} {{endpoint}}"),
            min=0,
        ),
        timeseries(
            "Dropped records and spool errors",
            "Records dropped per interval, by reason and priority, and "
            "spool errors (corrupt records, read and write errors).",
            "short",
            target(
                f"sum by (instance, reason, priority) ({increase('nodeagent_log_records_dropped_total')}) > 0",
                "{{instance}} dropped {{reason}} {{priority}}",
            ),
            *(
                target(f"{increase(metric)} > 0", "{{instance}} " + name)
                for metric, name in (
                    ("nodeagent_log_spool_corrupt_records_total", "corrupt records"),
                    ("nodeagent_log_spool_read_errors_total", "read errors"),
                    ("nodeagent_log_spool_write_errors_total", "write errors"),
                )
            ),
            min=0,
            bars=True,
        ),
    ]
    return dashboard(
        "nodeagent-self",
        "nodeagent / Self-health",
        "nodeagent itself: collector success and duration, sources, node events, and log shipping "
        "backlog and acknowledgements.",
        job_instance_variables(),
        panels,
    )


# ---------------------------------------------------------------------------------------------- output

DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "node": node_overview,
    "gpu-fleet": gpu_fleet,
    "gpu-node": gpu_node,
    "workloads": workloads,
    "network": network,
    "self": self_health,
}
PROVIDER_PATH = "/var/lib/grafana/dashboards/nodeagent"
# What each template variable in a query stands for when a test runs the queries without Grafana: "All" of
# every variable, and a rate window of four 15 s scrapes (Grafana's $__rate_interval for that scrape interval).
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$job": ".+",
    "$instance": ".+",
    "$gpu": ".+",
    "$kind": ".+",
    "$namespace": ".*",
    "$device": ".+",
}


def substitute(expr: str) -> str:
    """A panel query with its template variables replaced by SUBSTITUTIONS (longest name first)."""
    for name in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, SUBSTITUTIONS[name])
    return expr


def dashboard_json(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def provider_yaml() -> str:
    return f"""\
# Grafana dashboard provisioning (generated by python3 -m dashboards.build; do not edit).
# Copy dashboards/*.json to {PROVIDER_PATH} and this file to /etc/grafana/provisioning/dashboards/.
apiVersion: 1
providers:
  - name: nodeagent
    orgId: 1
    folder: nodeagent
    folderUid: nodeagent
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: {PROVIDER_PATH}
      foldersFromFilesStructure: false
"""


def configmaps_yaml(files: dict[str, str]) -> str:
    """One ConfigMap per dashboard, labelled for the Grafana sidecar (kube-prometheus-stack)."""
    docs = []
    for name, text in files.items():
        body = "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())
        docs.append(f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: nodeagent-dashboard-{name}
  labels:
    grafana_dashboard: "1"
    app.kubernetes.io/name: nodeagent
    app.kubernetes.io/component: dashboards
  annotations:
    grafana_folder: nodeagent
data:
  nodeagent-{name}.json: |
{body}""")
    header = (
        '# Grafana dashboards as ConfigMaps for the Grafana sidecar (label grafana_dashboard: "1").\n'
        "# Generated by python3 -m dashboards.build; do not edit. kubectl apply -n <grafana namespace> -f .\n"
    )
    return header + "---\n".join(docs)


def render() -> dict[str, str]:
    """Every generated file, by path relative to the repository root."""
    dashboards = {f"nodeagent-{name}.json": dashboard_json(build()) for name, build in DASHBOARDS.items()}
    out = {f"dashboards/{file}": text for file, text in dashboards.items()}
    out["packaging/grafana/dashboards.yaml"] = provider_yaml()
    out["packaging/grafana/configmaps.yaml"] = configmaps_yaml(
        {name: dashboards[f"nodeagent-{name}.json"] for name in DASHBOARDS}
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dashboards.build", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="write under this directory (default: the repo)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in render().items():
        path = args.root / rel
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print("out of date (run python3 -m dashboards.build):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
