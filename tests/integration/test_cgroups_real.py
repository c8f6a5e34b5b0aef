"""
The cgroups collector and the workload resolver on real cgroups: test-only pods, containers and Slurm jobs made
below ``/nodeagent-test-<pid>-<hex>.slice`` in every hierarchy, real processes (CPU burners under a quota,
memory hogs that the kernel OOM-kills), and every value checked against the kernel's own file.

These tests read cgroup v1 files (``cpuacct.usage``, ``memory.usage_in_bytes``, ``memory.oom_control``): they
need a v1 or hybrid host; the PSI checks also need the hybrid ``unified`` tree.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import time
import uuid
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.collectors.cgroups import CgroupsCollector, CgroupsConfig
from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily
from nodeagent.workloads import WalkResult, WorkloadResolver, walk
from tests.collectors.conftest import make_ctx
from tests.integration.agent_proc import http_get, run_agent, wait_until
from tests.integration.cgroups_helpers import TestCgroups, cgroup_tree, ids, rows, value
from tests.integration.peers import run_prometheus, scrape_config, wait_for_scrapes
from tests.prereq import missing

pytestmark = [pytest.mark.root, pytest.mark.integration]

V1_NEEDED = ("cpu", "cpuacct", "memory", "pids")
CLK_TCK = os.sysconf("SC_CLK_TCK")

BURN = "print('ready', flush=True)\nwhile True:\n    pass\n"
SLEEP = "import time\nprint('ready', flush=True)\ntime.sleep(120)\n"
# Allocates and touches (the multiplication writes every byte) far more than the 32 MiB limit.
HOG = "b = b'x' * (200 << 20)\nprint('survived', flush=True)\n"


@pytest.fixture
def tree() -> Iterator[TestCgroups]:
    """A test-only cgroup tree on a v1 or hybrid host, removed afterwards (tests/integration/cgroups_helpers.py)."""
    with cgroup_tree(V1_NEEDED) as t:
        yield t


@dataclass(frozen=True)
class Container:
    """A cgroupfs-driver Kubernetes container: ``kubepods/burstable/pod<uid>/<64 hex>``, relative to the parent."""

    pod_rel: str
    rel: str
    pod_uid: str
    container_id: str


def make_container(tree: TestCgroups, pod_uid: str | None = None, container_id: str | None = None) -> Container:
    """Create one container cgroup (and its pod) in every hierarchy."""
    uid = pod_uid or str(uuid.uuid4())
    cid = container_id or secrets.token_hex(32)
    pod = f"kubepods/burstable/pod{uid}"
    c = Container(pod, f"{pod}/{cid}", uid, cid)
    tree.mkdir(c.rel)
    return c


def make_collector(tree: TestCgroups, **options: Any) -> CgroupsCollector:
    """The collector on the real roots, seeing nothing outside the test parent."""
    return CgroupsCollector(
        make_ctx("cgroups", HostPaths()), CgroupsConfig(include=None, exclude=tree.exclude, **options)
    )


def errors(families: list[MetricFamily]) -> tuple[float | None, float | None]:
    """``nodeagent_cgroups_read_errors_total`` for io and parse."""
    name = "nodeagent_cgroups_read_errors_total"
    return value(families, name, reason="io"), value(families, name, reason="parse")


def series_with_id(families: list[MetricFamily], id: str) -> list[str]:
    """Names of the families that have any sample for ``id``."""
    return sorted({f.name for f in families for v, _ in f.samples if "id" in f.labelnames and v[0] == id})


# --- 1. CPU ------------------------------------------------------------------------------------------------


def test_cpu_quota_throttling_usage_and_pressure_match_the_kernel(tree: TestCgroups) -> None:
    """A burner under a 20% quota: throttling rises while it burns; frozen counters equal the kernel's exactly."""
    if tree.layout.unified is None:
        missing("the cgroup v2 (unified) hierarchy for PSI")
    c = make_container(tree)
    cid = tree.id(c.rel)
    tree.write("cpu", c.rel, "cpu.cfs_period_us", "100000")
    tree.write("cpu", c.rel, "cpu.cfs_quota_us", "20000")
    collector = make_collector(tree)
    started = time.monotonic()
    burner = tree.spawn_ready(c.rel, BURN)  # in the same path in every hierarchy, unified included
    assert f"0::{cid}\n" in Path(f"/proc/{burner.pid}/cgroup").read_text()

    time.sleep(0.3)
    t0 = time.monotonic()
    first = collector.collect_sync()
    t1 = time.monotonic()
    time.sleep(0.5)
    t2 = time.monotonic()
    second = collector.collect_sync()
    t3 = time.monotonic()

    throttled = "container_cpu_cfs_throttled_periods_total"
    periods = "container_cpu_cfs_periods_total"
    d_periods = value(second, periods, id=cid) - value(first, periods, id=cid)  # type: ignore[operator]
    d_throttled = value(second, throttled, id=cid) - value(first, throttled, id=cid)  # type: ignore[operator]
    # One period per 100 ms of wall time between the two reads, and a 100% demand is throttled in each of them.
    assert int((t2 - t1) / 0.1) - 1 <= d_periods <= int((t3 - t0) / 0.1) + 1
    assert d_periods - 1 <= d_throttled <= d_periods
    assert d_throttled >= 3
    assert 20000.0 == value(second, "container_spec_cpu_quota", id=cid)
    assert 100000.0 == value(second, "container_spec_cpu_period", id=cid)
    # The pod has no quota of its own: no quota series, and no CFS counters (cAdvisor's rule).
    pod = tree.id(c.pod_rel)
    assert (None, None) == (value(second, "container_spec_cpu_quota", id=pod), value(second, periods, id=pod))

    tree.stop(burner)  # the counters freeze
    burnt_for = time.monotonic() - started
    usage = tree.read_int("cpuacct", c.rel, "cpuacct.usage")
    acct = tree.read_keyed("cpuacct", c.rel, "cpuacct.stat")
    stat = tree.read_keyed("cpu", c.rel, "cpu.stat")
    psi = tree.read_psi_total(c.rel, "cpu")
    last = collector.collect_sync()
    after = (
        tree.read_int("cpuacct", c.rel, "cpuacct.usage"),
        tree.read_keyed("cpuacct", c.rel, "cpuacct.stat"),
        tree.read_keyed("cpu", c.rel, "cpu.stat"),
        tree.read_psi_total(c.rel, "cpu"),
    )

    assert (usage, acct, stat, psi) == after  # nothing moved during the cycle: equality below is exact
    assert usage / 1e9 == value(last, "container_cpu_usage_seconds_total", id=cid, cpu="total")
    assert 0 < usage / 1e9 <= 0.2 * burnt_for + 0.05  # the quota held: 20% of the time it ran (+ a period's slack)
    assert acct["user"] / CLK_TCK == value(last, "container_cpu_user_seconds_total", id=cid)
    assert acct["system"] / CLK_TCK == value(last, "container_cpu_system_seconds_total", id=cid)
    assert stat["nr_throttled"] == value(last, throttled, id=cid)
    assert stat["nr_periods"] == value(last, periods, id=cid)
    assert stat["throttled_time"] / 1e9 == value(last, "container_cpu_cfs_throttled_seconds_total", id=cid)
    assert psi / 1e6 == value(last, "container_pressure_cpu_waiting_seconds_total", id=cid)
    assert psi > 0  # a throttled runnable task is a task waiting for CPU
    assert (0.0, 0.0) == errors(last)


# --- 2. OOM kills ------------------------------------------------------------------------------------------


def _oom_kills(tree: TestCgroups, rel: str) -> int:
    return tree.read_keyed("memory", rel, "memory.oom_control")["oom_kill"]


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return out


def _oom_events(records: list[dict[str, Any]], id: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event.action") == "oom_kill" and r.get("nodeagent.workload.id") == id]


def _limit_memory(tree: TestCgroups, rel: str, limit: int) -> None:
    tree.write("memory", rel, "memory.limit_in_bytes", str(limit))
    if os.path.exists(tree.path("memory", rel, "memory.memsw.limit_in_bytes")):  # or swap could save the hogs
        tree.write("memory", rel, "memory.memsw.limit_in_bytes", str(limit))


def _oom_kill(tree: TestCgroups, rel: str, times: int) -> None:
    for _ in range(times):
        hog = tree.spawn(rel, HOG)
        out, _ = hog.communicate(timeout=30)
        assert (-signal.SIGKILL, b"") == (hog.returncode, out)


def test_oom_kills_are_counted_and_logged_as_events(tree: TestCgroups, tmp_path: Path) -> None:
    """Two OOM kills under a 32 MiB limit: the counter equals memory.oom_control, and the agent logs ECS events."""
    c = make_container(tree)
    cid, pod = tree.id(c.rel), tree.id(c.pod_rel)
    limit = 32 << 20
    _limit_memory(tree, c.rel, limit)
    collector = make_collector(tree)
    baseline = collector.collect_sync()
    assert 0.0 == value(baseline, "container_oom_events_total", id=cid) == _oom_kills(tree, c.rel)
    assert float(limit) == value(baseline, "container_spec_memory_limit_bytes", id=cid)

    config = tmp_path / "nodeagent.yaml"
    config.write_text(yaml.safe_dump({"collectors": {"cgroups": {"interval": "0.5s", "exclude": tree.exclude}}}))
    with run_agent(["--config", str(config), "--collector.cgroups"], tmp_dir=str(tmp_path)) as agent:
        # Ready: the agent's first cgroups cycle has seen the container with no kills (history, not news).
        _oom_kill(tree, c.rel, 2)
        assert 2 == _oom_kills(tree, c.rel)

        with structlog.testing.capture_logs() as logged:
            after = collector.collect_sync()
        assert 2.0 == value(after, "container_oom_events_total", id=cid)
        assert _oom_kills(tree, c.pod_rel) == value(after, "container_oom_events_total", id=pod)
        (event,) = [e for e in logged if e.get("event.action") == "oom_kill" and e["nodeagent.workload.id"] == cid]
        assert (2, 2, "warning") == (
            event["nodeagent.oom_kill.count"],
            event["nodeagent.oom_kill.new"],
            event["log_level"],
        )

        def logged_both() -> bool:
            return sum(int(r["nodeagent.oom_kill.new"]) for r in _oom_events(_json_lines(agent.log()), cid)) >= 2

        wait_until(logged_both, 10, "the agent to log 2 OOM kills")
        _, _, body = http_get(agent.url + "/metrics")
    scraped = {
        (s.name, s.labels["id"]): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name == "container_oom_events_total"
    }
    records = _json_lines(agent.log())
    events = _oom_events(records, cid)

    assert 2.0 == scraped[("container_oom_events_total", cid)]
    # One event with both kills, or one per cycle if the kills fell into different cycles.
    assert 2 == sum(e["nodeagent.oom_kill.new"] for e in events)
    assert [2] == [e["nodeagent.oom_kill.count"] for e in events][-1:]
    assert [e["nodeagent.oom_kill.count"] for e in events] == sorted({e["nodeagent.oom_kill.count"] for e in events})
    for e in events:
        assert {
            "log.level": "warning",
            "event.kind": "event",
            "event.category": ["process"],
            "event.type": ["end"],
            "event.action": "oom_kill",
            "event.module": "nodeagent",
            "event.dataset": "nodeagent.workload",
            "nodeagent.collector": "cgroups",
            "nodeagent.workload.kind": "container",
            "nodeagent.workload.id": cid,
            "kubernetes.pod.uid": c.pod_uid,
            "container.id": c.container_id,
            "orchestrator.type": "kubernetes",
        }.items() <= e.items()
        assert re.fullmatch(r"[0-9a-f]{32}", e["trace.id"]), e
        n = e["nodeagent.oom_kill.new"]
        assert (
            f"{n} OOM {'kill' if n == 1 else 'kills'} in container {cid} (total {e['nodeagent.oom_kill.count']})"
            == e["message"]
        )
    assert len({e["trace.id"] for e in events}) == len(events)  # one event per cycle at most
    # The pod's events match the pod's own kernel counter (v1 counts a kill in the memcg that hit its limit).
    assert _oom_kills(tree, c.pod_rel) == sum(e["nodeagent.oom_kill.new"] for e in _oom_events(records, pod))
    assert [] == [r for r in records if r.get("log.level") == "error" and r.get("nodeagent.collector") == "cgroups"]


def test_oom_kill_in_a_cgroup_made_again_under_the_same_path_is_logged(tree: TestCgroups) -> None:
    """
    A cgroup removed and made again under the same path between two cycles (a restarted systemd service) starts
    a new counter: its kills are news even when its count is below the old cgroup's.
    """
    c = make_container(tree)
    cid = tree.id(c.rel)
    _limit_memory(tree, c.rel, 32 << 20)
    collector = make_collector(tree)
    collector.collect_sync()
    _oom_kill(tree, c.rel, 2)
    with structlog.testing.capture_logs() as before_restart:
        collector.collect_sync()
    tree.rmdir(c.rel)
    tree.mkdir(c.rel)
    _limit_memory(tree, c.rel, 32 << 20)
    _oom_kill(tree, c.rel, 1)
    with structlog.testing.capture_logs() as after_restart:
        families = collector.collect_sync()

    def oom_events(logged: list[MutableMapping[str, Any]]) -> list[tuple[int, int]]:
        return [
            (e["nodeagent.oom_kill.count"], e["nodeagent.oom_kill.new"])
            for e in logged
            if e.get("event.action") == "oom_kill" and e["nodeagent.workload.id"] == cid
        ]

    assert [(2, 2)] == oom_events(before_restart)
    assert 1 == _oom_kills(tree, c.rel) == value(families, "container_oom_events_total", id=cid)
    assert [(1, 1)] == oom_events(after_restart)


# --- 3. memory ---------------------------------------------------------------------------------------------

MEMORY_FILES = ("memory.usage_in_bytes", "memory.stat", "memory.max_usage_in_bytes", "memory.failcnt")


def _stable_cycle(
    tree: TestCgroups, rel: str, collector: CgroupsCollector
) -> tuple[dict[str, str], list[MetricFamily]]:
    """A cycle during which none of the memory files of ``rel`` changed, with their content (bounded retries)."""
    for _ in range(50):
        before = {name: tree.read("memory", rel, name) for name in MEMORY_FILES}
        families = collector.collect_sync()
        if before == {name: tree.read("memory", rel, name) for name in MEMORY_FILES}:
            return before, families
        time.sleep(0.02)
    raise AssertionError(f"the memory files of {rel} kept changing")


def test_memory_usage_working_set_and_rss_match_the_kernel(tree: TestCgroups, tmp_path: Path) -> None:
    """A process holding 50 MiB it touched and 8 MiB of page cache: usage, working set, RSS, cache equal memory.*."""
    c = make_container(tree)
    cid = tree.id(c.rel)
    limit = 256 << 20
    tree.write("memory", c.rel, "memory.limit_in_bytes", str(limit))
    # Moved into the cgroup before exec, so all it allocates is charged there.
    # It also writes a file (page cache, on the inactive file list at first) so working set and usage differ.
    cached = tmp_path / "cached"
    code = f"import time\nb = b'x' * (50 << 20)\nopen({str(cached)!r}, 'wb').write(bytes(8 << 20))\n" + SLEEP
    tree.spawn_ready(c.rel, code)
    collector = make_collector(tree)

    files, families = _stable_cycle(tree, c.rel, collector)
    usage = int(files["memory.usage_in_bytes"])
    fields = files["memory.stat"].split()
    stat = {k: int(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}

    assert usage >= 50 << 20
    assert stat["total_rss"] >= 50 << 20
    assert stat["total_inactive_file"] > 0
    assert usage == value(families, "container_memory_usage_bytes", id=cid)
    assert usage - stat["total_inactive_file"] == value(families, "container_memory_working_set_bytes", id=cid)
    assert stat["total_rss"] == value(families, "container_memory_rss", id=cid)
    assert stat["total_cache"] == value(families, "container_memory_cache", id=cid)
    assert stat["total_mapped_file"] == value(families, "container_memory_mapped_file", id=cid)
    assert stat.get("total_swap") == value(families, "container_memory_swap", id=cid)
    assert int(files["memory.max_usage_in_bytes"]) == value(families, "container_memory_max_usage_bytes", id=cid)
    assert int(files["memory.failcnt"]) == value(families, "container_memory_failcnt", id=cid)
    assert float(limit) == value(families, "container_spec_memory_limit_bytes", id=cid)
    # The pod has no limit (the kernel's "unlimited", about 2^63): exported as 0, as cAdvisor does.
    assert tree.read_int("memory", c.pod_rel, "memory.limit_in_bytes") >= 1 << 62
    assert 0.0 == value(families, "container_spec_memory_limit_bytes", id=tree.id(c.pod_rel))
    assert (0.0, 0.0) == errors(families)


# --- 4. a cgroup removed during a cycle --------------------------------------------------------------------


def test_cgroup_removed_between_listing_and_reading_is_skipped(
    tree: TestCgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listed, then removed before its files are read (new, then known): skipped without an error."""
    uid = str(uuid.uuid4())
    a, b, c = (make_container(tree, pod_uid=uid) for _ in range(3))
    victims = [a, b]

    def walk_then_remove(*args: Any, **kwargs: Any) -> WalkResult:
        result = walk(*args, **kwargs)
        if victims:
            victim = victims.pop(0)
            assert tree.id(victim.rel) in [w.id for w in result.workloads]
            tree.rmdir(victim.rel)
        return result

    monkeypatch.setattr("nodeagent.collectors.cgroups.walk", walk_then_remove)
    collector = make_collector(tree)

    first = collector.collect_sync()  # a: new, gone before its limits are read
    second = collector.collect_sync()  # b: known, gone before its statistics are read

    assert [] == victims
    assert not os.path.exists(tree.path("cpuacct", a.rel))
    assert not os.path.exists(tree.path("cpuacct", b.rel))
    assert [] == series_with_id(first, tree.id(a.rel))
    assert [] == series_with_id(second, tree.id(b.rel))
    assert sorted([tree.id(a.pod_rel), tree.id(b.rel), tree.id(c.rel)]) == sorted(ids(first))
    assert sorted([tree.id(a.pod_rel), tree.id(c.rel)]) == sorted(ids(second))
    usage = tree.read_int("cpuacct", c.rel, "cpuacct.usage")
    assert usage / 1e9 == value(second, "container_cpu_usage_seconds_total", id=tree.id(c.rel), cpu="total")
    assert 0.0 == value(second, "container_processes", id=tree.id(a.pod_rel))  # its removed sub-cgroups: no error
    # Discovery counts what was listed: the pod and 3 containers, then the pod and 2 (a was gone by then).
    assert (4.0, 3.0) == (value(first, "nodeagent_cgroups_discovered"), value(second, "nodeagent_cgroups_discovered"))
    assert (0.0, 0.0) == errors(first) == errors(second)


# --- 5. Slurm (v1 layout) ----------------------------------------------------------------------------------

JOB = "slurm/uid_0/job_42"
STEP = f"{JOB}/step_0"
# Three tasks (threads) in one process, so threads and processes differ.
THREADS = (
    "import threading, time\n"
    "for _ in range(2):\n"
    "    threading.Thread(target=time.sleep, args=(120,), daemon=True).start()\n"
) + SLEEP


def _info_rows(families: list[MetricFamily], id: str) -> list[dict[str, str]]:
    return [r for r in rows(families, "nodeagent_workload_info") if r["id"] == id]


def test_slurm_job_and_step_info_processes_and_threads(tree: TestCgroups) -> None:
    """slurm/uid_0/job_42/step_0 with a 3-thread process: info rows, processes (with descendants), threads."""
    job, step = tree.mkdir(JOB), tree.mkdir(STEP)
    tree.spawn_ready(STEP, THREADS)
    families = make_collector(tree).collect_sync()

    common = {"kind": "slurm_job", "runtime": "", "pod_uid": "", "container_id": "", "service": "", "vm": ""}
    assert [
        {"id": job, "slurm_job": "42", "slurm_step": "", "slurm_uid": "0", "qos_class": "", **common}
    ] == _info_rows(families, job)
    assert [{"id": step, "slurm_job": "42", "slurm_step": "0", "slurm_uid": "0", "qos_class": "", **common}] == (
        _info_rows(families, step)
    )
    assert sorted([job, step]) == sorted(ids(families))  # slurm/ and uid_0/ are structure, not workloads
    assert (1.0, 1.0) == (
        value(families, "container_processes", id=job),
        value(families, "container_processes", id=step),
    )
    threads = tree.read_int("pids", STEP, "pids.current")
    assert 3 == threads
    assert threads == value(families, "container_threads", id=step)
    assert tree.read_int("pids", JOB, "pids.current") == value(families, "container_threads", id=job)
    assert (0.0, 0.0) == errors(families)


def test_a_step_started_after_its_job_was_seen_counts_in_the_job(tree: TestCgroups) -> None:
    """
    The job's container_processes counts its descendants: a step (sub-cgroup) created after the job was first
    seen must count on the next cycle, not only after spec_interval (60 s by default).
    """
    job = tree.mkdir(JOB)
    collector = make_collector(tree)
    first = collector.collect_sync()
    step = tree.mkdir(STEP)
    tree.spawn_ready(STEP, SLEEP)
    second = collector.collect_sync()

    assert 0.0 == value(first, "container_processes", id=job)
    assert 1.0 == value(second, "container_processes", id=step)
    assert tree.read_int("pids", JOB, "pids.current") == value(second, "container_threads", id=job) == 1
    assert 1.0 == value(second, "container_processes", id=job)


# --- 6. the workload resolver ------------------------------------------------------------------------------


def test_resolver_maps_real_pids_to_their_workloads(tree: TestCgroups) -> None:
    """A pid in a container resolves to it; a pid in a step's task sub-cgroup resolves to the step."""
    c = make_container(tree)
    task = f"{STEP}/task_0"
    tree.mkdir(task)
    in_container = tree.spawn_ready(c.rel, SLEEP)
    in_task = tree.spawn_ready(task, SLEEP)
    gone = tree.spawn_ready(c.rel, SLEEP)
    tree.stop(gone)
    resolver = WorkloadResolver(HostPaths())

    container = resolver.resolve(in_container.pid)
    step = resolver.resolve(in_task.pid)

    assert container is not None and step is not None
    assert (tree.id(c.rel), "container", c.pod_uid, c.container_id, "burstable", tree.id(c.pod_rel)) == (
        container.id,
        container.kind,
        container.pod_uid,
        container.container_id,
        container.qos_class,
        container.parent,
    )
    assert (tree.id(STEP), "slurm_job", "42", "0", "0", tree.id(JOB)) == (
        step.id,
        step.kind,
        step.slurm_job,
        step.slurm_step,
        step.slurm_uid,
        step.parent,
    )
    assert tree.id(task) == resolver.cgroup_of(in_task.pid)
    assert resolver.resolve(gone.pid) is None
    # The collector agrees: task_0 is not a workload, its process counts in the step and the job.
    families = make_collector(tree).collect_sync()
    assert tree.id(task) not in ids(families)
    assert (1.0, 1.0) == (
        value(families, "container_processes", id=tree.id(STEP)),
        value(families, "container_processes", id=tree.id(JOB)),
    )


# --- 7. max_cgroups ----------------------------------------------------------------------------------------


def test_max_cgroups_exports_the_first_and_counts_the_dropped(tree: TestCgroups) -> None:
    """3 containers over max_cgroups=2: 2 exported, 1 dropped; a newcomer never displaces an exported one."""
    uid = str(uuid.uuid4())
    containers = sorted((make_container(tree, pod_uid=uid) for _ in range(3)), key=lambda c: c.container_id)
    pod = tree.id(containers[0].pod_rel)
    only_containers = make_collector(tree, max_cgroups=2, kinds=["container"])
    with_pods = make_collector(tree, max_cgroups=2)

    with structlog.testing.capture_logs() as logged:
        first = only_containers.collect_sync()
    newcomer = make_container(tree, pod_uid=uid, container_id="0" * 64)  # sorts before all the others
    second = only_containers.collect_sync()
    pods_too = with_pods.collect_sync()

    exported = [tree.id(c.rel) for c in containers[:2]]
    assert exported == ids(first)
    assert (3.0, 1.0) == (value(first, "nodeagent_cgroups_discovered"), value(first, "nodeagent_cgroups_dropped"))
    assert [] == series_with_id(first, tree.id(containers[2].rel))
    assert [(2, 3, "warning")] == [
        (e["max_cgroups"], e["discovered"], e["log_level"]) for e in logged if e["event"] == "cgroups.over_limit"
    ]
    # Already exported cgroups keep their place; the new one, first in walk order, is the one dropped.
    assert exported == ids(second)
    assert (4.0, 2.0) == (value(second, "nodeagent_cgroups_discovered"), value(second, "nodeagent_cgroups_dropped"))
    assert [] == series_with_id(second, tree.id(newcomer.rel))
    # Pods count as workloads too: the pod and 4 containers found, the pod and the first container exported.
    assert [pod, tree.id(newcomer.rel)] == ids(pods_too)
    assert (5.0, 3.0) == (value(pods_too, "nodeagent_cgroups_discovered"), value(pods_too, "nodeagent_cgroups_dropped"))


# --- 8. kubernetes-mixin queries through a real Prometheus -------------------------------------------------

# kubernetes-mixin's container expressions with its cadvisorSelector (job="cadvisor"). Two adaptations, both
# for sources outside this collector: the join on kube_pod_info (kube-state-metrics) is left out, and the
# `image!=""` / `container!=""` matchers, which need the names that container-runtime metadata fills in,
# are replaced by the workload's `id`.
MIXIN_RULES = """
groups:
- name: kubernetes-mixin-container
  rules:
  - record: node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate
    expr: sum by (namespace, pod, container, id) (irate(container_cpu_usage_seconds_total{job="cadvisor"}[5m]))
  - record: node_namespace_pod_container:container_memory_working_set_bytes
    expr: container_memory_working_set_bytes{job="cadvisor"}
  - alert: CPUThrottlingHigh
    expr: |
      sum(increase(container_cpu_cfs_throttled_periods_total{job="cadvisor"}[5m])) by (id, container, pod, namespace)
        /
      sum(increase(container_cpu_cfs_periods_total{job="cadvisor"}[5m])) by (id, container, pod, namespace)
        > ( 25 / 100 )
    labels: {severity: info}
  - alert: ContainerOOMKilled
    expr: increase(container_oom_events_total{job="cadvisor"}[5m]) > 0
    labels: {severity: warning}
"""


def test_kubernetes_mixin_queries_get_data_from_a_real_prometheus(tree: TestCgroups, tmp_path: Path) -> None:
    """
    A real Prometheus scrapes the real agent under job="cadvisor" with kubernetes-mixin's container rules loaded:
    CPU usage (near the 20 % quota of a burner), working set, CPUThrottlingHigh and an OOM-kill alert all
    return data for the test containers.
    """
    burner, hog = make_container(tree), make_container(tree)
    burner_id, hog_id = tree.id(burner.rel), tree.id(hog.rel)
    tree.write("cpu", burner.rel, "cpu.cfs_quota_us", "20000")
    tree.write("cpu", burner.rel, "cpu.cfs_period_us", "100000")
    _limit_memory(tree, hog.rel, 32 << 20)
    tree.spawn_ready(burner.rel, BURN)
    rules = tmp_path / "mixin.rules.yaml"
    rules.write_text(MIXIN_RULES)
    config = tmp_path / "nodeagent.yaml"
    config.write_text(yaml.safe_dump({"interval": "1s", "collectors": {"cgroups": {"exclude": tree.exclude}}}))
    with run_agent(["--config", str(config)], tmp_dir=str(tmp_path)) as agent:
        instance = f"127.0.0.1:{agent.port}"
        with run_prometheus(scrape_config("cadvisor", {instance: {}}), [rules], tmp_path) as prom:
            wait_for_scrapes(prom, [instance], 3)
            _oom_kill(tree, hog.rel, 1)
            wait_for_scrapes(prom, [instance], 8)

            def sample(expr: str) -> dict[str, float]:
                return {r["metric"].get("id", ""): float(r["value"][1]) for r in prom.query(expr)}

            def firing(alert: str) -> set[str]:
                alerts = prom.api("alerts")["alerts"]
                return {a["labels"].get("id", "") for a in alerts if a["labels"]["alertname"] == alert}

            wait_until(lambda: hog_id in firing("ContainerOOMKilled"), 15, "ContainerOOMKilled to fire")
            wait_until(lambda: burner_id in firing("CPUThrottlingHigh"), 15, "CPUThrottlingHigh to fire")
            cpu = sample("node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate")
            working_set = sample("node_namespace_pod_container:container_memory_working_set_bytes")
            throttled = sample(
                f'increase(container_cpu_cfs_throttled_periods_total{{id="{burner_id}"}}[5m])'
                f' / increase(container_cpu_cfs_periods_total{{id="{burner_id}"}}[5m])'
            )
            oom = sample(f'container_oom_events_total{{id="{hog_id}"}}')

    assert 0.1 < cpu[burner_id] < 0.3, cpu  # the quota is 20 % of a CPU
    assert cpu[hog_id] >= 0.0
    assert 1 << 20 < working_set[burner_id] < 256 << 20, working_set
    assert throttled[burner_id] > 0.5, throttled
    assert {hog_id: 1.0} == oom
