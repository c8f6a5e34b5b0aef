"""
The cgroups collector on the fixture trees under ``tests/fixtures/cgroup`` (v2 with the systemd and cgroupfs
drivers, v1, and a hybrid variant built from the v1 tree).

Golden expositions: ``tests/fixtures/cgroup/golden/<tree>.prom`` hold one cycle of each tree rendered by
nodeagent's own ``FamilyRenderer``. After an intended change of output, regenerate them and review the diff:

    NODEAGENT_UPDATE_GOLDEN=1 python3 -m pytest -q tests/collectors/test_cgroups.py

Besides the goldens, the formulas that matter (working set, CPU seconds, throttling, shares, limits) are
asserted with their numbers, as are the workload labels, the configuration, OOM-kill events and the
behaviour on removed cgroups, missing files and malformed content.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from nodeagent.collector import NoDataError
from nodeagent.collectors import cgroups
from nodeagent.collectors.cgroups import CgroupsCollector
from nodeagent.exposition import FamilyRenderer
from nodeagent.hostfs import HostPaths, ParseError
from nodeagent.metrics import MetricFamily
from nodeagent.sources.cgroupfs import (
    cpu_weight_to_shares,
    parse_blkio,
    parse_cpu_max,
    parse_flat_keyed,
    parse_int,
    parse_io_stat,
    parse_limit,
    parse_psi_totals,
)
from tests.hostile import mutated

from .conftest import FIXTURES, Collect, by_name, make_ctx

CGROUP = FIXTURES / "cgroup"
SYS = CGROUP / "sys"
GOLDEN = CGROUP / "golden"
V2_SYSTEMD = CGROUP / "v2-systemd"
V2_CGROUPFS = CGROUP / "v2-cgroupfs"
V1 = CGROUP / "v1"
TREES = {"v2-systemd": V2_SYSTEMD, "v2-cgroupfs": V2_CGROUPFS, "v1": V1}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The workloads of the systemd-driver tree.
KUBE = "/kubepods.slice"
P1 = f"{KUBE}/kubepods-burstable.slice/kubepods-burstable-pod6f1e2a3b_4c5d_4e6f_8a9b_0c1d2e3f4a5b.slice"
C1A_ID = "d4332469d7342f3df93955e433428aaf02bed46699b991f749b9e2c7d015a419"
C1B_ID = "45ba3058c10e3a5f918695ac94678469de0c8cb7d1c6546b4d2e737acc61a503"
C1A = f"{P1}/cri-containerd-{C1A_ID}.scope"  # CPU quota 50000/100000
C1B = f"{P1}/cri-containerd-{C1B_ID}.scope"  # 2 OOM kills; inactive_file > memory.current
P2 = f"{KUBE}/kubepods-besteffort.slice/kubepods-besteffort-pod0b2c4d6e_8fa1_4b3c_9d5e_7f8a9b0c1d2e.slice"
C2 = f"{P2}/cri-containerd-9c0abe51c6e6655d81de2d044d4fb194931f058c0426c67c7285d8f5657ed64a.scope"
P3 = f"{KUBE}/kubepods-pod9a8b7c6d_5e4f_4a3b_8c2d_1e0f9a8b7c6d.slice"
C3_ID = "7c1c97df17c066924822b0af09a65251554962c61e23329aed04cd19020dc3b8"
C3 = f"{P3}/crio-{C3_ID}.scope"
CONTAINERD = "/system.slice/containerd.service"
DOCKER_ID = "d548c5b83fa61d8e3bd86ad42a7ffea9b7c86e3f9d8095c1577d3e1270bb9420"
DOCKER = f"/system.slice/docker-{DOCKER_ID}.scope"
JOB = "/system.slice/slurmstepd.scope/job_1234"
STEP0 = f"{JOB}/step_0"
STEPB = f"{JOB}/step_batch"
VM = "/machine.slice/machine-qemu\\x2d1\\x2dvm01.scope"
PODMAN_ID = "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9"
PODMAN = f"/machine.slice/libpod-{PODMAN_ID}.scope"
SYSTEMD_IDS = {P1, C1A, C1B, P2, C2, P3, C3, CONTAINERD, DOCKER, JOB, STEP0, STEPB, VM, PODMAN}
PODS = (P1, P2, P3)

# The workloads of the v1 tree.
V1_DOCKER = "/docker/44b317d826b2d53c344ee49e3fe4686613870c72d811dfd8ec1645d4579f6a47"
V1_JOB = "/slurm/uid_1000/job_77"
V1_STEP = f"{V1_JOB}/step_0"

# Families every workload row of a complete v2 cgroup has (throttling, quota and fs are conditional).
V2_PER_WORKLOAD = (
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_cpu_system_seconds_total",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_memory_rss",
    "container_memory_cache",
    "container_memory_swap",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_oom_events_total",
    "container_spec_memory_limit_bytes",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total",
    "container_processes",
    "container_threads",
    "nodeagent_workload_info",
)


def host_paths(tree: Path) -> HostPaths:
    """Roots for a cgroup fixture tree; /sys/dev/block comes from tests/fixtures/cgroup/sys."""
    return HostPaths(procfs=str(FIXTURES / "proc"), sysfs=str(SYS), rootfs=str(FIXTURES / "rootfs"), cgroupfs=str(tree))


def make(tree: Path, **options: Any) -> CgroupsCollector:
    """A cgroups collector on ``tree``, built from its spec as the agent builds it."""
    collector = cgroups.SPEC.factory(make_ctx("cgroups", host_paths(tree)), cgroups.CgroupsConfig(**options))
    assert isinstance(collector, CgroupsCollector)
    return collector


def cycle(tree: Path, **options: Any) -> dict[str, MetricFamily]:
    """One cycle of a fresh collector, families by name."""
    return by_name(make(tree, **options).collect_sync())


def by_id(family: MetricFamily) -> dict[str, float]:
    """Values of a family with one series per workload, by id."""
    idx = family.labelnames.index("id")
    out: dict[str, float] = {}
    for labels, value in family.samples:
        assert labels[idx] not in out, f"{family.name}: two series for {labels[idx]}"
        out[labels[idx]] = value
    return out


def by_id_device(family: MetricFamily) -> dict[tuple[str, str], float]:
    """Values of a per-device family by (id, device)."""
    i, d = family.labelnames.index("id"), family.labelnames.index("device")
    return {(labels[i], labels[d]): value for labels, value in family.samples}


def info(families: dict[str, MetricFamily]) -> dict[str, dict[str, str]]:
    """``nodeagent_workload_info`` labels by id."""
    fam = families["nodeagent_workload_info"]
    return {labels[0]: dict(zip(fam.labelnames, labels, strict=True)) for labels, _ in fam.samples}


def exported_ids(families: dict[str, MetricFamily]) -> set[str]:
    """Every id any family has a series for."""
    return {
        labels[f.labelnames.index("id")] for f in families.values() if "id" in f.labelnames for labels, _ in f.samples
    }


def read_errors(families: dict[str, MetricFamily]) -> dict[str, float]:
    """``nodeagent_cgroups_read_errors_total`` by reason."""
    return {labels[0]: v for labels, v in families["nodeagent_cgroups_read_errors_total"].samples}


def fixture_file(tree: Path, cgroup: str, name: str) -> bytes:
    """A file of a cgroup in a fixture tree (v2: the tree itself)."""
    return (tree / cgroup.lstrip("/") / name).read_bytes()


@pytest.fixture
def systemd_copy(tmp_path: Path) -> Path:
    """A writable copy of the systemd-driver tree (symlinks kept as symlinks)."""
    dst = tmp_path / "cgroup"
    shutil.copytree(V2_SYSTEMD, dst, symlinks=True)
    return dst


@pytest.fixture
def v1_copy(tmp_path: Path) -> Path:
    """A writable copy of the v1 tree, its cpu/cpuacct symlinks kept."""
    dst = tmp_path / "cgroup"
    shutil.copytree(V1, dst, symlinks=True)
    return dst


# --- golden expositions ---------------------------------------------------------------------------------------


def render(families: list[MetricFamily]) -> str:
    """The Prometheus text exposition of the families, as the agent serves it."""
    return FamilyRenderer().render(families).text


@pytest.mark.parametrize("tree", sorted(TREES))
def test_golden_exposition(tree: str) -> None:
    """One cycle renders exactly the committed golden file (NODEAGENT_UPDATE_GOLDEN=1 rewrites it)."""
    text = render(make(TREES[tree]).collect_sync())
    golden = GOLDEN / f"{tree}.prom"
    if os.environ.get("NODEAGENT_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing; run with NODEAGENT_UPDATE_GOLDEN=1 to create it"
    assert golden.read_text() == text


def test_goldens_cover_every_family() -> None:
    """Together the fixture trees exercise every family the collector can export."""
    names = set()
    for tree in TREES.values():
        names |= set(cycle(tree))
    expected = {d.name for d in cgroups._DEFS} | {
        "nodeagent_workload_info",
        "nodeagent_cgroups_discovered",
        "nodeagent_cgroups_dropped",
        "nodeagent_cgroups_read_errors_total",
        "nodeagent_cgroups_hierarchy_info",
    }
    assert expected == names


async def test_async_collect_matches_sync(collect: Collect) -> None:
    """``collect()`` (a worker thread) returns what ``collect_sync()`` does."""
    families = await collect(cgroups.SPEC, host_paths(V2_SYSTEMD))
    assert render(list(families.values())) == render(make(V2_SYSTEMD).collect_sync())


# --- v2, systemd driver: the numbers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd() -> dict[str, MetricFamily]:
    """One cycle of the systemd-driver tree."""
    return cycle(V2_SYSTEMD)


def test_exports_exactly_the_workloads(systemd: dict[str, MetricFamily]) -> None:
    """Pods, containers, the service, the Slurm job and steps, the VM and the Podman container; nothing else."""
    assert SYSTEMD_IDS == exported_ids(systemd)
    for fragment in (
        "session-3",
        "init.scope",
        "conmon",
        "service/",
        "/user",
        "step_0/slurm",
        "scope/system",
        "libvirt",
    ):
        assert not [i for i in exported_ids(systemd) if fragment in i], fragment
    assert {"discovered": 14.0, "dropped": 0.0} == {
        k: systemd[f"nodeagent_cgroups_{k}"].samples[0][1] for k in ("discovered", "dropped")
    }
    assert {"parse": 0.0, "io": 0.0} == read_errors(systemd)
    assert ((("v2",), 1.0),) == systemd["nodeagent_cgroups_hierarchy_info"].samples


def test_every_workload_has_the_core_families(systemd: dict[str, MetricFamily]) -> None:
    """Each workload, pods included, has a row in every unconditional family."""
    for name in V2_PER_WORKLOAD:
        assert SYSTEMD_IDS == set(by_id(systemd[name])), name


def test_v2_cpu_seconds(systemd: dict[str, MetricFamily]) -> None:
    """usage_usec, user_usec and system_usec of cpu.stat, divided by 1e6; cpu="total" only."""
    assert 48.213977 == by_id(systemd["container_cpu_usage_seconds_total"])[C1A]
    assert 31.87721 == by_id(systemd["container_cpu_user_seconds_total"])[C1A]
    assert 16.336767 == by_id(systemd["container_cpu_system_seconds_total"])[C1A]
    assert 7712.890112 == by_id(systemd["container_cpu_usage_seconds_total"])[VM]
    fam = systemd["container_cpu_usage_seconds_total"]
    assert "cpu" == fam.labelnames[-1]
    assert {"total"} == {labels[-1] for labels, _ in fam.samples}
    for cg, value in by_id(fam).items():
        usage = parse_flat_keyed(fixture_file(V2_SYSTEMD, cg, "cpu.stat"), frozenset({b"usage_usec"}), "cpu.stat")
        assert usage[b"usage_usec"] / 1e6 == value, cg


def test_working_set_is_usage_minus_inactive_file_floored(systemd: dict[str, MetricFamily]) -> None:
    """memory.current - inactive_file, and 0 where inactive_file exceeds memory.current."""
    ws = by_id(systemd["container_memory_working_set_bytes"])
    assert 187297792 - 35459072 == ws[C1A] == 151838720
    # C1B: memory.current 8663040 < inactive_file 9011200.
    assert 0.0 == ws[C1B]
    for cg, value in ws.items():
        usage = int(fixture_file(V2_SYSTEMD, cg, "memory.current"))
        stat = parse_flat_keyed(fixture_file(V2_SYSTEMD, cg, "memory.stat"), frozenset({b"inactive_file"}), "x")
        assert max(usage - stat[b"inactive_file"], 0) == value, cg


def test_memory_families(systemd: dict[str, MetricFamily]) -> None:
    """usage, rss (anon), cache (file), mapped_file, swap and peak of C1A, from their v2 files."""
    got = {name: by_id(systemd[f"container_memory_{name}"])[C1A] for name in ("usage_bytes", "rss", "cache")}
    got |= {name: by_id(systemd[f"container_memory_{name}"])[C1A] for name in ("mapped_file", "swap")}
    got["max_usage_bytes"] = by_id(systemd["container_memory_max_usage_bytes"])[C1A]
    assert {
        "usage_bytes": 187297792,
        "rss": 121114624,
        "cache": 58327040,
        "mapped_file": 21491712,
        "swap": 2719744,
        "max_usage_bytes": 231206912,
    } == got
    assert "container_memory_failcnt" not in systemd  # v1 only


def test_throttling_only_with_a_quota(systemd: dict[str, MetricFamily]) -> None:
    """CFS period and throttling families, and the quota, exist only for cgroups with a CPU quota."""
    with_quota = {C1A, P3, C3}
    for name in (
        "container_cpu_cfs_periods_total",
        "container_cpu_cfs_throttled_periods_total",
        "container_cpu_cfs_throttled_seconds_total",
        "container_spec_cpu_quota",
    ):
        assert with_quota == set(by_id(systemd[name])), name
    assert 92817 == by_id(systemd["container_cpu_cfs_periods_total"])[C1A]
    assert 4213 == by_id(systemd["container_cpu_cfs_throttled_periods_total"])[C1A]
    assert 187.33902 == by_id(systemd["container_cpu_cfs_throttled_seconds_total"])[C1A]
    assert {C1A: 50000, P3: 200000, C3: 200000} == by_id(systemd["container_spec_cpu_quota"])
    assert {100000.0} == set(by_id(systemd["container_spec_cpu_period"]).values())


def test_cpu_shares_from_weight(systemd: dict[str, MetricFamily]) -> None:
    """cpu.weight converted with cpu_weight_to_shares (cAdvisor's formula)."""
    shares = by_id(systemd["container_spec_cpu_shares"])
    assert {C1A: 500, C1B: 237, C2: 2, P2: 2, C3: 2046, DOCKER: 998, CONTAINERD: 2597} == {
        k: shares[k] for k in (C1A, C1B, C2, P2, C3, DOCKER, CONTAINERD)
    }
    for cg, value in shares.items():
        assert cpu_weight_to_shares(int(fixture_file(V2_SYSTEMD, cg, "cpu.weight"))) == value, cg


def test_memory_limit_max_is_zero(systemd: dict[str, MetricFamily]) -> None:
    """memory.max ``max`` reads 0 (cAdvisor's unlimited); a number is that number."""
    limits = by_id(systemd["container_spec_memory_limit_bytes"])
    assert {C1A: 268435456, C1B: 134217728, P1: 402653184, P3: 536870912, JOB: 8589934592} == {
        k: limits[k] for k in (C1A, C1B, P1, P3, JOB)
    }
    assert {0.0} == {limits[k] for k in (C2, P2, CONTAINERD, VM, PODMAN, STEP0, STEPB)}


def test_names_are_empty_until_metadata(systemd: dict[str, MetricFamily]) -> None:
    """``container``, ``name``, ``image``, ``pod`` and ``namespace`` are "" on every series for now."""
    for fam in systemd.values():
        for label in ("name", "image", "container", "pod", "namespace"):
            if label in fam.labelnames:
                i = fam.labelnames.index(label)
                assert {""} == {labels[i] for labels, _ in fam.samples}, (fam.name, label)


def test_pod_rows_include_their_containers(systemd: dict[str, MetricFamily]) -> None:
    """Pod rows exist and hold their containers' processes (and conmon's, in the CRI-O pod)."""
    procs = by_id(systemd["container_processes"])
    assert {P1: 4, C1A: 3, C1B: 1, P2: 2, C2: 2, P3: 5, C3: 4} == {k: procs[k] for k in (P1, C1A, C1B, P2, C2, P3, C3)}
    # Slurm: a job counts its steps' slurmstepd and task processes; a VM its qemu process.
    assert {JOB: 6, STEP0: 3, STEPB: 3, VM: 1, CONTAINERD: 3} == {
        k: procs[k] for k in (JOB, STEP0, STEPB, VM, CONTAINERD)
    }
    assert {P1: 27, C1A: 23, C1B: 4} == {k: by_id(systemd["container_threads"])[k] for k in (P1, C1A, C1B)}
    assert 55.688113 == by_id(systemd["container_cpu_usage_seconds_total"])[P1]


def test_oom_and_pressure(systemd: dict[str, MetricFamily]) -> None:
    """memory.events oom_kill (hierarchical: the pod counts its container's kills) and PSI totals in seconds."""
    oom = by_id(systemd["container_oom_events_total"])
    assert {C1B: 2, P1: 2, C1A: 0, C3: 0} == {k: oom[k] for k in (C1B, P1, C1A, C3)}
    psi = {
        name: by_id(systemd[f"container_pressure_{name}_seconds_total"])[C1A]
        for name in ("cpu_waiting", "cpu_stalled", "memory_waiting", "memory_stalled", "io_waiting", "io_stalled")
    }
    assert {
        "cpu_waiting": 90.512377,
        "cpu_stalled": 88.120654,
        "memory_waiting": 0.001277,
        "memory_stalled": 0.001093,
        "io_waiting": 0.040915,
        "io_stalled": 0.03871,
    } == psi


def test_io_per_device(systemd: dict[str, MetricFamily]) -> None:
    """io.stat per device, labelled /dev/<name> through /sys/dev/block, MAJ:MIN when the link is missing."""
    rbytes = by_id_device(systemd["container_fs_reads_bytes_total"])
    assert {(C2, "/dev/sda"): 1314816, (C2, "253:1"): 65536} == {k: v for k, v in rbytes.items() if k[0] == C2}
    assert 88391680 == rbytes[(C3, "/dev/nvme0n1")]
    got = {
        name: by_id_device(systemd[f"container_fs_{name}"])[(C1A, "/dev/sda")]
        for name in ("reads_bytes_total", "writes_bytes_total", "reads_total", "writes_total")
    }
    assert {"reads_bytes_total": 7286784, "writes_bytes_total": 1196032, "reads_total": 431, "writes_total": 87} == got


def test_workload_info_for_each_kind(systemd: dict[str, MetricFamily]) -> None:
    """nodeagent_workload_info carries what each path says: pod QoS, runtime, unit, Slurm ids, VM name."""
    rows = info(systemd)
    empty = dict.fromkeys(cgroups.INFO_LABELS, "")

    def row(id: str, **fields: str) -> dict[str, str]:
        return empty | {"id": id} | fields

    uid1 = "6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
    uid3 = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    expected = {
        P1: row(P1, kind="pod", pod_uid=uid1, qos_class="burstable"),
        P2: row(P2, kind="pod", pod_uid="0b2c4d6e-8fa1-4b3c-9d5e-7f8a9b0c1d2e", qos_class="besteffort"),
        P3: row(P3, kind="pod", pod_uid=uid3, qos_class="guaranteed"),
        C1A: row(C1A, kind="container", runtime="containerd", pod_uid=uid1, qos_class="burstable", container_id=C1A_ID),
        C3: row(C3, kind="container", runtime="cri-o", pod_uid=uid3, qos_class="guaranteed", container_id=C3_ID),
        DOCKER: row(DOCKER, kind="container", runtime="docker", container_id=DOCKER_ID),
        PODMAN: row(PODMAN, kind="container", runtime="podman", container_id=PODMAN_ID),
        CONTAINERD: row(CONTAINERD, kind="service", runtime="systemd", service="containerd.service"),
        JOB: row(JOB, kind="slurm_job", slurm_job="1234"),
        STEP0: row(STEP0, kind="slurm_job", slurm_job="1234", slurm_step="0"),
        STEPB: row(STEPB, kind="slurm_job", slurm_job="1234", slurm_step="batch"),
        VM: row(VM, kind="vm", runtime="libvirt-qemu", vm="vm01"),
    }
    assert expected == {k: rows[k] for k in expected}
    assert {1.0} == {v for _, v in systemd["nodeagent_workload_info"].samples}


def test_vm_id_is_escaped_in_the_exposition(systemd: dict[str, MetricFamily]) -> None:
    r"""The literal backslash of ``machine-qemu\x2d1...`` is escaped as ``\\`` in label values."""
    text = render([systemd["nodeagent_workload_info"]])
    assert 'id="/machine.slice/machine-qemu\\\\x2d1\\\\x2dvm01.scope",kind="vm"' in text


# --- v2, cgroupfs driver ------------------------------------------------------------------------------------------


def test_cgroupfs_driver_tree() -> None:
    """Bare-id containers have no runtime in their path; quota, floor and pod rows as on the systemd tree."""
    families = cycle(V2_CGROUPFS)
    rows = info(families)
    burst = "/kubepods/burstable/pod3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
    burst_c = f"{burst}/d648d30809d5f711e336c0774b8ecef62f5db3de8004092dcf5f605f844c0f22"
    best_c = (
        "/kubepods/besteffort/pod5e6f7a8b-9c0d-4e1f-9a2b-3c4d5e6f7a8b"
        "/bb2b440794a38444e58fa6eecd95c043f6705e2de74628225763dc0b183636a7"
    )
    guar = "/kubepods/pod7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
    docker = "/docker/67bd8c7ac0c87e389ede0ab7ac578e9edb9535c8357bf25fc1fd74d21583dfec"
    assert 7 == len(rows)
    assert ("container", "", "burstable") == (
        rows[burst_c]["kind"],
        rows[burst_c]["runtime"],
        rows[burst_c]["qos_class"],
    )
    assert ("pod", "guaranteed") == (rows[guar]["kind"], rows[guar]["qos_class"])
    assert ("container", "docker") == (rows[docker]["kind"], rows[docker]["runtime"])
    assert 0.0 == by_id(families["container_memory_working_set_bytes"])[best_c]
    quota = by_id(families["container_spec_cpu_quota"])
    assert {
        burst_c: 150000,
        guar: 100000,
        f"{guar}/b31a8330d5ea0dcc4ab39b3082c18606bc5bd459e810e5d0cfbf479f9b3552cb": 100000,
    } == quota
    assert 1 == by_id(families["container_oom_events_total"])[guar]
    assert 13.377121 == by_id(families["container_cpu_usage_seconds_total"])[burst]


# --- v1 and hybrid ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v1() -> dict[str, MetricFamily]:
    """One cycle of the v1 tree."""
    return cycle(V1)


def test_v1_cpu(v1: dict[str, MetricFamily]) -> None:
    """cpuacct.usage in ns; cpuacct.stat in USER_HZ ticks; throttling from cpu.stat only with a quota."""
    assert 91.230344871 == by_id(v1["container_cpu_usage_seconds_total"])[V1_DOCKER]
    assert 6511 / CLK_TCK == by_id(v1["container_cpu_user_seconds_total"])[V1_DOCKER]
    assert 2433 / CLK_TCK == by_id(v1["container_cpu_system_seconds_total"])[V1_DOCKER]
    assert {V1_DOCKER: 18810} == by_id(v1["container_cpu_cfs_periods_total"])
    assert {V1_DOCKER: 1277} == by_id(v1["container_cpu_cfs_throttled_periods_total"])
    assert {V1_DOCKER: 98.123344571} == by_id(v1["container_cpu_cfs_throttled_seconds_total"])
    assert {V1_DOCKER: 150000} == by_id(v1["container_spec_cpu_quota"])
    assert {V1_DOCKER: 512, V1_JOB: 1024, V1_STEP: 1024} == by_id(v1["container_spec_cpu_shares"])


def test_v1_memory(v1: dict[str, MetricFamily]) -> None:
    """With use_hierarchy the total_* keys count; working set floors; unlimited reads 0; failcnt and OOM."""
    ws = by_id(v1["container_memory_working_set_bytes"])
    assert {V1_DOCKER: 301056000 - 81649664, V1_JOB: 2149019648 - 280338432} == {k: ws[k] for k in (V1_DOCKER, V1_JOB)}
    # The job's own (local) rss is 0; its total_rss is its step's.
    assert {V1_DOCKER: 170393600, V1_JOB: 1738539008, V1_STEP: 1738539008} == by_id(v1["container_memory_rss"])
    assert 2101248 == by_id(v1["container_memory_swap"])[V1_DOCKER]
    assert {V1_DOCKER: 1073741824, V1_JOB: 4294967296, V1_STEP: 0} == by_id(v1["container_spec_memory_limit_bytes"])
    assert {V1_DOCKER: 14, V1_JOB: 0, V1_STEP: 0} == by_id(v1["container_memory_failcnt"])
    assert "untyped" == v1["container_memory_failcnt"].type
    assert {V1_DOCKER: 3, V1_JOB: 0, V1_STEP: 0} == by_id(v1["container_oom_events_total"])
    assert 377249792 == by_id(v1["container_memory_max_usage_bytes"])[V1_DOCKER]


def test_v1_blkio_pids_and_absent_hierarchies(v1: dict[str, MetricFamily]) -> None:
    """blkio bytes and ops merge into one row per device; Slurm has no blkio/pids cgroups, so no rows."""
    got = {
        name: by_id_device(v1[f"container_fs_{name}"])
        for name in ("reads_bytes_total", "writes_bytes_total", "reads_total", "writes_total")
    }
    assert {
        "reads_bytes_total": {(V1_DOCKER, "/dev/sda"): 1507328},
        "writes_bytes_total": {(V1_DOCKER, "/dev/sda"): 40960},
        "reads_total": {(V1_DOCKER, "/dev/sda"): 97},
        "writes_total": {(V1_DOCKER, "/dev/sda"): 9},
    } == got
    assert {V1_DOCKER: 19} == by_id(v1["container_threads"])
    assert {V1_DOCKER: 2, V1_JOB: 3, V1_STEP: 3} == by_id(v1["container_processes"])
    assert not [n for n in v1 if "pressure" in n]
    assert ((("v1",), 1.0),) == v1["nodeagent_cgroups_hierarchy_info"].samples
    assert {"parse": 0.0, "io": 0.0} == read_errors(v1)
    rows = info(v1)
    assert ("slurm_job", "77", "", "1000") == tuple(
        rows[V1_JOB][k] for k in ("kind", "slurm_job", "slurm_step", "slurm_uid")
    )
    assert ("container", "docker") == (rows[V1_DOCKER]["kind"], rows[V1_DOCKER]["runtime"])


def test_v1_without_hierarchy_uses_local_keys(v1_copy: Path) -> None:
    """memory.use_hierarchy 0: rss, cache and the working set come from the cgroup's own keys."""
    (v1_copy / "memory" / V1_JOB.lstrip("/") / "memory.use_hierarchy").write_text("0\n")
    families = cycle(v1_copy)
    assert 0 == by_id(families["container_memory_rss"])[V1_JOB]
    assert 0 == by_id(families["container_memory_cache"])[V1_JOB]
    assert 2149019648 == by_id(families["container_memory_working_set_bytes"])[V1_JOB]


def test_hybrid_reads_pressure_from_unified(v1_copy: Path) -> None:
    """A hybrid host: v1 values as on v1, plus PSI from the unified tree at the same path."""
    unified = v1_copy / "unified"
    (unified / V1_DOCKER.lstrip("/")).mkdir(parents=True)
    (unified / "cgroup.controllers").write_text("")
    for resource, (some, full) in {"cpu": (771023, 730011), "memory": (12877, 11903), "io": (331204, 320117)}.items():
        (unified / V1_DOCKER.lstrip("/") / f"{resource}.pressure").write_text(
            f"some avg10=0.00 avg60=0.00 avg300=0.00 total={some}\n"
            f"full avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n"
        )
    families = cycle(v1_copy)
    assert ((("hybrid",), 1.0),) == families["nodeagent_cgroups_hierarchy_info"].samples
    assert {V1_DOCKER: 0.771023} == by_id(families["container_pressure_cpu_waiting_seconds_total"])
    assert {V1_DOCKER: 0.320117} == by_id(families["container_pressure_io_stalled_seconds_total"])
    assert 91.230344871 == by_id(families["container_cpu_usage_seconds_total"])[V1_DOCKER]
    assert {"parse": 0.0, "io": 0.0} == read_errors(families)


def test_no_cgroup_tree_is_no_data(tmp_path: Path) -> None:
    """A cgroup root that holds no hierarchy is NoDataError with a hint about mounting it."""
    with pytest.raises(NoDataError) as excinfo:
        make(tmp_path / "absent").collect_sync()
    assert "paths.cgroupfs" in excinfo.value.hint


# --- configuration ---------------------------------------------------------------------------------------------


def test_kinds_filter() -> None:
    """Only the configured kinds are exported and counted."""
    families = cycle(V2_SYSTEMD, kinds=["vm", "slurm_job"])
    assert {VM, JOB, STEP0, STEPB} == exported_ids(families)
    assert 4 == families["nodeagent_cgroups_discovered"].samples[0][1]
    assert set(PODS) == exported_ids(cycle(V2_SYSTEMD, kinds=["pod"]))


def test_include_exports_unrecognised_cgroups_as_other() -> None:
    """include adds matching unrecognised cgroups (kind other) to the usual workloads."""
    families = cycle(V2_SYSTEMD, include=r"^/init\.scope$|/user/task_0$")
    others = {"/init.scope", f"{STEP0}/user/task_0", f"{STEPB}/user/task_0"}
    assert SYSTEMD_IDS | others == exported_ids(families)
    rows = info(families)
    assert {"other"} == {rows[i]["kind"] for i in others}
    assert 0.106103 == by_id(families["container_cpu_usage_seconds_total"])["/init.scope"]  # usage_usec 106103
    # "other" is exported whatever kinds says.
    assert {"/init.scope"} == exported_ids(cycle(V2_SYSTEMD, include=r"^/init\.scope$", kinds=["vm"])) - {VM}


def test_exclude_drops_the_subtree() -> None:
    """exclude drops matching cgroups and everything below them."""
    families = cycle(V2_SYSTEMD, exclude=r"^/kubepods\.slice/kubepods-burstable\.slice$|^/machine\.slice/libpod-")
    assert SYSTEMD_IDS - {P1, C1A, C1B, PODMAN} == exported_ids(families)
    assert 10 == families["nodeagent_cgroups_discovered"].samples[0][1]


def test_max_cgroups_keeps_known_ones_and_logs_the_drop(systemd_copy: Path) -> None:
    """Over max_cgroups the first ones in walk order are kept, and kept across cycles; the drop is logged."""
    collector = make(systemd_copy, max_cgroups=3)
    with capture_logs() as logs:
        families = by_name(collector.collect_sync())
    assert {P2, C2, P1} == exported_ids(families)
    assert (14, 11) == tuple(families[f"nodeagent_cgroups_{k}"].samples[0][1] for k in ("discovered", "dropped"))
    warnings = [e for e in logs if e["event"] == "cgroups.over_limit"]
    assert [(14, 3, "warning")] == [(e["discovered"], e["max_cgroups"], e["log_level"]) for e in warnings]
    # A new pod (and its container) that sorts first does not displace the ones already exported.
    new_pod = systemd_copy / P2.lstrip("/").replace("pod0b2c4d6e", "pod0000aaaa")
    shutil.copytree(systemd_copy / P2.lstrip("/"), new_pod)
    with capture_logs() as logs:
        families = by_name(collector.collect_sync())
    assert {P2, C2, P1} == exported_ids(families)
    assert (16, 13) == tuple(families[f"nodeagent_cgroups_{k}"].samples[0][1] for k in ("discovered", "dropped"))
    assert 1 == len([e for e in logs if e["event"] == "cgroups.over_limit"])
    with capture_logs() as logs:
        collector.collect_sync()
    assert [] == [e for e in logs if e["event"] == "cgroups.over_limit"]


def test_spec_is_reread_after_spec_interval(systemd_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits are read when a cgroup is new and again once spec_interval has passed, not every cycle."""
    collector = make(systemd_copy, spec_interval="60s")
    assert 268435456 == by_id(by_name(collector.collect_sync())["container_spec_memory_limit_bytes"])[C1A]
    (systemd_copy / C1A.lstrip("/") / "memory.max").write_text("max\n")
    (systemd_copy / C1A.lstrip("/") / "cpu.max").write_text("70000 100000\n")
    families = by_name(collector.collect_sync())
    assert 268435456 == by_id(families["container_spec_memory_limit_bytes"])[C1A]
    assert 50000 == by_id(families["container_spec_cpu_quota"])[C1A]
    later = time.monotonic() + 61
    monkeypatch.setattr(cgroups.time, "monotonic", lambda: later)
    families = by_name(collector.collect_sync())
    assert 0 == by_id(families["container_spec_memory_limit_bytes"])[C1A]
    assert 70000 == by_id(families["container_spec_cpu_quota"])[C1A]


# --- OOM kill events ---------------------------------------------------------------------------------------------


def oom_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The OOM-kill events among captured log entries."""
    return [e for e in logs if e.get("event.action") == "oom_kill"]


def set_oom_kill(tree: Path, cgroup: str, count: int) -> None:
    """Rewrite a v2 cgroup's memory.events with a new oom_kill (and oom) count."""
    path = tree / cgroup.lstrip("/") / "memory.events"
    lines = []
    for line in path.read_text().splitlines():
        key = line.split()[0]
        lines.append(f"{key} {count}" if key in ("oom", "oom_kill") else line)
    path.write_text("\n".join(lines) + "\n")


def test_first_cycle_baselines_oom_counts_silently() -> None:
    """Kills counted before the agent started (C1B's and P1's 2) are history, not events."""
    with capture_logs() as logs:
        make(V2_SYSTEMD).collect_sync()
    assert [] == oom_events(logs)


def test_oom_kill_increase_logs_one_event(systemd_copy: Path) -> None:
    """oom_kill 2 -> 5 in one container: one event with new=3, count=5 and the container's ECS fields."""
    collector = make(systemd_copy)
    collector.collect_sync()
    set_oom_kill(systemd_copy, C1B, 5)
    with capture_logs() as logs:
        families = by_name(collector.collect_sync())
    events = oom_events(logs)
    assert 1 == len(events)
    event = events[0]
    # The event's own span in a trace (no cycle bound here, so a trace of its own).
    assert len(event.pop("trace.id")) == 32 and len(event.pop("span.id")) == 16
    assert {
        "event": f"3 OOM kills in container {C1B} (total 5)",
        "log_level": "warning",
        "event.kind": "event",
        "event.category": ["process"],
        "event.type": ["end"],
        "event.action": "oom_kill",
        "event.module": "nodeagent",
        "event.dataset": "nodeagent.workload",
        "nodeagent.workload.kind": "container",
        "nodeagent.workload.id": C1B,
        "nodeagent.oom_kill.count": 5,
        "nodeagent.oom_kill.new": 3,
        "container.id": C1B_ID,
        "container.runtime": "containerd",
        "kubernetes.pod.uid": "6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b",
        "orchestrator.type": "kubernetes",
        "orchestrator.resource.type": "pod",
        "orchestrator.resource.id": "6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b",
    } == event
    assert 5 == by_id(families["container_oom_events_total"])[C1B]
    # No further kill, no further event.
    with capture_logs() as logs:
        collector.collect_sync()
    assert [] == oom_events(logs)


def test_new_cgroup_with_kills_logs_them(systemd_copy: Path) -> None:
    """A cgroup that appears after the first cycle reports every kill it has counted (here 1)."""
    collector = make(systemd_copy)
    collector.collect_sync()
    new_id = "ab" * 32
    new = f"/system.slice/docker-{new_id}.scope"
    shutil.copytree(systemd_copy / DOCKER.lstrip("/"), systemd_copy / new.lstrip("/"))
    set_oom_kill(systemd_copy, new, 1)
    quiet = f"/system.slice/docker-{'cd' * 32}.scope"
    shutil.copytree(systemd_copy / DOCKER.lstrip("/"), systemd_copy / quiet.lstrip("/"))
    with capture_logs() as logs:
        families = by_name(collector.collect_sync())
    events = oom_events(logs)
    assert [(new, 1, 1, new_id, "docker")] == [
        (
            e["nodeagent.workload.id"],
            e["nodeagent.oom_kill.count"],
            e["nodeagent.oom_kill.new"],
            e["container.id"],
            e["container.runtime"],
        )
        for e in events
    ]
    assert "1 OOM kill in container" in events[0]["event"]
    assert {new: 1, quiet: 0} == {k: by_id(families["container_oom_events_total"])[k] for k in (new, quiet)}


# --- removed cgroups and files ------------------------------------------------------------------------------------


def test_cgroup_removed_between_cycles_disappears(systemd_copy: Path) -> None:
    """A container whose directory is gone is no longer exported; nothing is counted as an error."""
    collector = make(systemd_copy)
    assert C1A in exported_ids(by_name(collector.collect_sync()))
    shutil.rmtree(systemd_copy / C1A.lstrip("/"))
    with capture_logs() as logs:
        families = by_name(collector.collect_sync())
    assert SYSTEMD_IDS - {C1A} == exported_ids(families)
    assert {"parse": 0.0, "io": 0.0} == read_errors(families)
    assert [] == [e for e in logs if e["log_level"] != "debug"]


def test_cgroup_removed_between_listing_and_reading(systemd_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cgroup removed after the walk listed it is skipped for the cycle, without an error."""
    real_walk = cgroups.walk

    def walk_then_remove(*args: Any, **kwargs: Any) -> Any:
        result = real_walk(*args, **kwargs)
        shutil.rmtree(systemd_copy / C1A.lstrip("/"))
        return result

    monkeypatch.setattr(cgroups, "walk", walk_then_remove)
    families = by_name(make(systemd_copy).collect_sync())
    assert SYSTEMD_IDS - {C1A} == exported_ids(families)
    assert 14 == families["nodeagent_cgroups_discovered"].samples[0][1]
    assert {"parse": 0.0, "io": 0.0} == read_errors(families)


def test_missing_file_drops_only_its_family(systemd_copy: Path) -> None:
    """Without memory.peak a cgroup just has no container_memory_max_usage_bytes row."""
    (systemd_copy / C1A.lstrip("/") / "memory.peak").unlink()
    families = cycle(systemd_copy)
    assert SYSTEMD_IDS - {C1A} == set(by_id(families["container_memory_max_usage_bytes"]))
    assert SYSTEMD_IDS == exported_ids(families)
    assert 187297792 == by_id(families["container_memory_usage_bytes"])[C1A]
    assert {"parse": 0.0, "io": 0.0} == read_errors(families)


def test_file_removed_after_first_cycle(systemd_copy: Path) -> None:
    """A file that disappears later (io.stat) drops its rows from the next cycle on, without an error."""
    collector = make(systemd_copy)
    collector.collect_sync()
    (systemd_copy / C1A.lstrip("/") / "io.stat").unlink()
    families = by_name(collector.collect_sync())
    assert C1A not in {k[0] for k in by_id_device(families["container_fs_reads_bytes_total"])}
    assert {"parse": 0.0, "io": 0.0} == read_errors(families)


# --- malformed content ------------------------------------------------------------------------------------------


def test_malformed_file_counts_a_parse_error(systemd_copy: Path) -> None:
    """A malformed file drops its fields, counts reason="parse" and is logged; the rest of the cgroup stays."""
    (systemd_copy / C1A.lstrip("/") / "memory.current").write_text("lots\n")
    with capture_logs() as logs:
        families = cycle(systemd_copy)
    assert {"parse": 1.0, "io": 0.0} == read_errors(families)
    assert C1A not in by_id(families["container_memory_usage_bytes"])
    assert C1A not in by_id(families["container_memory_working_set_bytes"])
    assert 48.213977 == by_id(families["container_cpu_usage_seconds_total"])[C1A]
    errors = [e for e in logs if e["event"] == "cgroups.read_error"]
    path = systemd_copy / C1A.lstrip("/") / "memory.current"
    assert [f"{path}: expected one integer, got b'lots\\n'"] == [e["error"]["message"] for e in errors]


def test_huge_value_is_a_parse_error_not_a_failed_cycle(systemd_copy: Path) -> None:
    """
    A value beyond any kernel counter (here 10**400, past what a float holds) must not fail the whole cycle.
    (Fails against the current collector, which raises OverflowError: see the report of the bug.)
    """
    (systemd_copy / C1A.lstrip("/") / "memory.current").write_text("1" + "0" * 400 + "\n")
    families = cycle(systemd_copy)
    assert {"parse": 1.0, "io": 0.0} == read_errors(families)
    assert C1A not in by_id(families["container_memory_usage_bytes"])


# Each v2 file the collector parses, with its parser as the collector calls it.
V2_PARSED: dict[str, Callable[[bytes], Any]] = {
    "cpu.stat": lambda d: parse_flat_keyed(d, cgroups._V2_CPU_KEYS, "cpu.stat"),
    "cpu.max": lambda d: parse_cpu_max(d, "cpu.max"),
    "cpu.weight": lambda d: parse_int(d, "cpu.weight"),
    "memory.current": lambda d: parse_int(d, "memory.current"),
    "memory.stat": lambda d: parse_flat_keyed(d, cgroups._V2_MEM_KEYS, "memory.stat"),
    "memory.max": lambda d: parse_limit(d, "memory.max"),
    "memory.peak": lambda d: parse_int(d, "memory.peak"),
    "memory.swap.current": lambda d: parse_int(d, "memory.swap.current"),
    "memory.events": lambda d: parse_flat_keyed(d, cgroups._OOM_KEYS, "memory.events"),
    "io.stat": lambda d: parse_io_stat(d, "io.stat"),
    "cpu.pressure": lambda d: parse_psi_totals(d, "cpu.pressure"),
    "memory.pressure": lambda d: parse_psi_totals(d, "memory.pressure"),
    "io.pressure": lambda d: parse_psi_totals(d, "io.pressure"),
    "pids.current": lambda d: parse_int(d, "pids.current"),
}
# v1 (the Docker container of the v1 tree): hierarchy, file, parser. cpu.stat is read only with a quota.
V1_PARSED: dict[tuple[str, str], Callable[[bytes], Any]] = {
    ("cpu,cpuacct", "cpuacct.usage"): lambda d: parse_int(d, "x"),
    ("cpu,cpuacct", "cpuacct.stat"): lambda d: parse_flat_keyed(d, cgroups._V1_ACCT_KEYS, "x"),
    ("cpu,cpuacct", "cpu.cfs_quota_us"): lambda d: parse_limit(d, "x"),
    ("cpu,cpuacct", "cpu.cfs_period_us"): lambda d: parse_int(d, "x"),
    ("cpu,cpuacct", "cpu.shares"): lambda d: parse_int(d, "x"),
    ("cpu,cpuacct", "cpu.stat"): lambda d: parse_flat_keyed(d, cgroups._V1_CPU_KEYS, "x"),
    ("memory", "memory.usage_in_bytes"): lambda d: parse_int(d, "x"),
    ("memory", "memory.stat"): lambda d: parse_flat_keyed(d, cgroups._V1_MEM_KEYS_HIER, "x"),
    ("memory", "memory.max_usage_in_bytes"): lambda d: parse_int(d, "x"),
    ("memory", "memory.failcnt"): lambda d: parse_int(d, "x"),
    ("memory", "memory.limit_in_bytes"): lambda d: parse_limit(d, "x"),
    ("memory", "memory.oom_control"): lambda d: parse_flat_keyed(d, cgroups._OOM_KEYS, "x"),
    ("blkio", "blkio.throttle.io_service_bytes_recursive"): lambda d: parse_blkio(d, "x", False),
    ("blkio", "blkio.throttle.io_serviced_recursive"): lambda d: parse_blkio(d, "x", True),
    ("pids", "pids.current"): lambda d: parse_int(d, "x"),
}


@st.composite
def damaged(draw: st.DrawFn, valid: bytes) -> bytes:
    """The valid content (half the time, so single bad files show) or it damaged as ``tests.hostile.mutated``."""
    return valid if draw(st.booleans()) else draw(mutated(valid))


def _fails(parser: Callable[[bytes], Any], data: bytes) -> bool:
    try:
        parser(data)
    except ParseError:
        return True
    return False


def hostile_settings(max_examples: int) -> settings:
    """Settings of the collector-level property tests: no shrinking, as every example rewrites a cgroup and runs a
    cycle (the draws are labelled by file, so a failing example reads well unshrunk)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture(scope="module")
def hostile_trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Copies of the systemd and v1 trees whose one cgroup each the property test overwrites."""
    base = tmp_path_factory.mktemp("hostile")
    trees = {"v2": base / "v2", "v1": base / "v1"}
    shutil.copytree(V2_SYSTEMD, trees["v2"], symlinks=True)
    shutil.copytree(V1, trees["v1"], symlinks=True)
    yield trees


@hostile_settings(max_examples=100)
@given(data=st.data())
def test_hostile_v2_files_never_fail_the_cycle(hostile_trees: dict[str, Path], data: st.DataObject) -> None:
    """Damaged files in one v2 cgroup: the cycle completes and counts each unparsable file once as "parse"."""
    cg = hostile_trees["v2"] / C1A.lstrip("/")
    expected = 0
    for name in sorted(V2_PARSED.keys() | {"cgroup.procs"}):
        original = fixture_file(V2_SYSTEMD, C1A, name)
        content = data.draw(damaged(original), label=name)
        (cg / name).write_bytes(content)
        if name in V2_PARSED and _fails(V2_PARSED[name], content):
            expected += 1
    families = cycle(hostile_trees["v2"])
    assert {"parse": float(expected), "io": 0.0} == read_errors(families)
    assert SYSTEMD_IDS - {C1A} <= exported_ids(families)


@hostile_settings(max_examples=60)
@given(data=st.data())
def test_hostile_v1_files_never_fail_the_cycle(hostile_trees: dict[str, Path], data: st.DataObject) -> None:
    """The same on v1, where cpu.stat is only read (and so only counted) when the quota parses as set."""
    root = hostile_trees["v1"]
    expected = 0
    contents: dict[tuple[str, str], bytes] = {}
    for hier, name in sorted(V1_PARSED.keys() | {("cpu,cpuacct", "cgroup.procs"), ("memory", "memory.use_hierarchy")}):
        original = (V1 / hier / V1_DOCKER.lstrip("/") / name).read_bytes()
        content = contents[(hier, name)] = data.draw(damaged(original), label=f"{hier}/{name}")
        (root / hier / V1_DOCKER.lstrip("/") / name).write_bytes(content)
    for key, parser in V1_PARSED.items():
        if key == ("cpu,cpuacct", "cpu.stat"):
            quota_data = contents[("cpu,cpuacct", "cpu.cfs_quota_us")]
            if (
                _fails(V1_PARSED[("cpu,cpuacct", "cpu.cfs_quota_us")], quota_data)
                or parse_limit(quota_data, "x") is None
            ):
                continue
        if key == ("memory", "memory.stat"):
            # Only the keys the collector exports are parsed: total_* unless use_hierarchy reads exactly 0.
            local = contents[("memory", "memory.use_hierarchy")].strip() == b"0"
            keys = cgroups._V1_MEM_KEYS_LOCAL if local else cgroups._V1_MEM_KEYS_HIER
            parser = lambda d, keys=keys: parse_flat_keyed(d, keys, "x")  # noqa: E731
        if _fails(parser, contents[key]):
            expected += 1
    families = cycle(root)
    assert {"parse": float(expected), "io": 0.0} == read_errors(families)
    assert {V1_JOB, V1_STEP} <= exported_ids(families)
