"""
The workload resolver: ``classify`` on every cgroup layout nodeagent recognises (and on those it must not),
``walk`` on the fixture trees under ``tests/fixtures/cgroup``, ``WorkloadResolver`` with a fake procfs, and
``discover_layout`` on v2, v1, hybrid and missing hierarchies.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from nodeagent.hostfs import HostPaths
from nodeagent.sources.cgroupfs import NoCgroupsError, discover_layout
from nodeagent.workloads import Workload, WorkloadResolver, classify, walk

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cgroup"
V2_SYSTEMD = FIXTURES / "v2-systemd"
V2_CGROUPFS = FIXTURES / "v2-cgroupfs"
V1 = FIXTURES / "v1"

UID = "6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
SUID = UID.replace("-", "_")
HEX = "d4332469d7342f3df93955e433428aaf02bed46699b991f749b9e2c7d015a419"
CRIO_HEX = "7c1c97df17c066924822b0af09a65251554962c61e23329aed04cd19020dc3b8"
HEX2 = "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9"

# --- classify: what each layout is ------------------------------------------------------------------------

CLASSIFIED: list[tuple[str, dict[str, str]]] = [
    # Kubernetes, cgroupfs driver.
    (f"/kubepods/pod{UID}", {"kind": "pod", "pod_uid": UID, "qos_class": "guaranteed"}),
    (f"/kubepods/burstable/pod{UID}", {"kind": "pod", "pod_uid": UID, "qos_class": "burstable"}),
    (f"/kubepods/besteffort/pod{UID}", {"kind": "pod", "pod_uid": UID, "qos_class": "besteffort"}),
    (
        f"/kubepods/burstable/pod{UID}/{HEX}",
        {
            "kind": "container",
            "runtime": "",
            "pod_uid": UID,
            "qos_class": "burstable",
            "container_id": HEX,
            "parent": f"/kubepods/burstable/pod{UID}",
        },
    ),
    # Kubernetes, systemd driver.
    (f"/kubepods.slice/kubepods-pod{SUID}.slice", {"kind": "pod", "pod_uid": UID, "qos_class": "guaranteed"}),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice",
        {"kind": "pod", "pod_uid": UID, "qos_class": "burstable"},
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SUID}.slice",
        {"kind": "pod", "pod_uid": UID, "qos_class": "besteffort"},
    ),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice/cri-containerd-{HEX}.scope",
        {
            "kind": "container",
            "runtime": "containerd",
            "pod_uid": UID,
            "qos_class": "burstable",
            "container_id": HEX,
            "parent": f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice",
        },
    ),
    (
        f"/kubepods.slice/kubepods-pod{SUID}.slice/crio-{HEX}.scope",
        {"kind": "container", "runtime": "cri-o", "qos_class": "guaranteed", "container_id": HEX},
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SUID}.slice/docker-{HEX}.scope",
        {"kind": "container", "runtime": "docker", "qos_class": "besteffort", "container_id": HEX},
    ),
    # kind (Kubernetes in Docker) nests the kubelet's slices under its own prefix.
    (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{SUID}.slice",
        {"kind": "pod", "pod_uid": UID, "qos_class": "burstable"},
    ),
    (f"/kubelet/kubepods/besteffort/pod{UID}", {"kind": "pod", "pod_uid": UID, "qos_class": "besteffort"}),
    # Containers outside Kubernetes.
    (f"/system.slice/docker-{HEX}.scope", {"kind": "container", "runtime": "docker", "container_id": HEX}),
    (f"/docker/{HEX}", {"kind": "container", "runtime": "docker", "container_id": HEX}),
    (f"/machine.slice/libpod-{HEX2}.scope", {"kind": "container", "runtime": "podman", "container_id": HEX2}),
    (f"/libpod_parent/{HEX2}", {"kind": "container", "runtime": "podman", "container_id": HEX2}),
    (f"/libpod_parent/libpod-{HEX2}", {"kind": "container", "runtime": "podman", "container_id": HEX2}),
    (
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{HEX2}.scope",
        {"kind": "container", "runtime": "podman", "container_id": HEX2},
    ),
    (f"/system.slice/nerdctl-{HEX}.scope", {"kind": "container", "runtime": "containerd", "container_id": HEX}),
    # Slurm: v1 (slurm[_<node>]/uid_<uid>/job_<id>[/step_<n>]) and v2 (slurmstepd.scope).
    ("/slurm/uid_1000/job_77", {"kind": "slurm_job", "slurm_job": "77", "slurm_step": "", "slurm_uid": "1000"}),
    (
        "/slurm/uid_1000/job_77/step_0",
        {
            "kind": "slurm_job",
            "slurm_job": "77",
            "slurm_step": "0",
            "slurm_uid": "1000",
            "parent": "/slurm/uid_1000/job_77",
        },
    ),
    ("/slurm_node01/uid_0/job_5/step_batch", {"kind": "slurm_job", "slurm_job": "5", "slurm_step": "batch"}),
    ("/system.slice/slurmstepd.scope/job_1234", {"kind": "slurm_job", "slurm_job": "1234", "slurm_uid": ""}),
    (
        "/system.slice/slurmstepd.scope/job_1234/step_extern",
        {
            "kind": "slurm_job",
            "slurm_job": "1234",
            "slurm_step": "extern",
            "parent": "/system.slice/slurmstepd.scope/job_1234",
        },
    ),
    # libvirt/QEMU VMs, systemd (escaped scope name) and cgroupfs.
    ("/machine.slice/machine-qemu\\x2d1\\x2dvm01.scope", {"kind": "vm", "runtime": "libvirt-qemu", "vm": "vm01"}),
    ("/machine.slice/machine-qemu\\x2d12\\x2dweb\\x2dserver.scope", {"kind": "vm", "vm": "web-server"}),
    ("/machine/qemu-1-vm01.libvirt-qemu", {"kind": "vm", "runtime": "libvirt-qemu", "vm": "vm01"}),
    # systemd services directly below slices; the unit name is unescaped (docs/cgroups.md).
    ("/system.slice/containerd.service", {"kind": "service", "runtime": "systemd", "service": "containerd.service"}),
    ("/system.slice/system-getty.slice/getty@tty1.service", {"kind": "service", "service": "getty@tty1.service"}),
    ("/system.slice/system-foo.slice/foo@a\\x2db.service", {"kind": "service", "service": "foo@a-b.service"}),
    ("/user.slice/user-1000.slice/user@1000.service", {"kind": "service", "service": "user@1000.service"}),
]


@pytest.mark.parametrize(("path", "fields"), CLASSIFIED, ids=[p for p, _ in CLASSIFIED])
def test_classify(path: str, fields: dict[str, str]) -> None:
    """Each recognised layout gives its kind and ids; the id is the path itself."""
    w = classify(path)
    assert w is not None
    assert path == w.id
    assert fields == {k: getattr(w, k) for k in fields}
    # Names come from runtime metadata, never from the path.
    assert ("", "", "", "", "") == (w.name, w.image, w.container, w.pod, w.namespace)


NOT_WORKLOADS = [
    "",
    "/",
    "/kubepods",
    "/kubepods/burstable",
    "/kubepods.slice",
    "/kubepods.slice/kubepods-burstable.slice",
    f"/kubepods.slice/kubepods-pod{SUID}.slice/crio-conmon-{HEX}.scope",
    f"/kubepods/burstable/pod{UID}/{HEX}/sub",
    f"/kubepods/burstable/pod{UID}/pause",
    f"/pod{UID}",  # a pod segment with no kubepods ancestor
    f"/kubepods/burstable/pod{UID[:-1]}",  # uid too short
    "/docker",
    f"/docker/{HEX[:12]}",
    f"/docker/{HEX.upper()}",
    f"/elsewhere/{HEX}",
    f"/docker/{HEX}/sub",
    f"/system.slice/docker-{HEX[:12]}.scope",
    f"/machine.slice/libpod-conmon-{HEX2}.scope",
    "/system.slice",
    "/init.scope",
    "/user.slice/user-1000.slice/session-3.scope",
    "/system.slice/containerd.service/runtime",
    "/containerd.service",  # a service must sit below a slice
    "/system.slice/slurmstepd.scope",
    "/system.slice/slurmstepd.scope/system",
    "/system.slice/slurmstepd.scope/job_1234/step_0/user/task_0",
    "/system.slice/slurmstepd.scope/job_1234/step_0/slurm",
    "/system.slice/slurmstepd.scope/job_1234/other",
    "/job_5",
    "/batch/job_5",
    "/elsewhere/uid_1000/job_77",
    "/machine.slice/machine-qemu\\x2d1\\x2dvm01.scope/libvirt",
    "/machine.slice/machine-qemu\\x2d1\\x2dvm01.scope/libvirt/vcpu0",
    "/machine.slice/machine-lxc\\x2d5\\x2dct1.scope",
    "/other.slice/machine-qemu\\x2d1\\x2dvm01.scope",
]


@pytest.mark.parametrize("path", NOT_WORKLOADS)
def test_classify_structural_or_unknown_is_none(path: str) -> None:
    """Slices, QoS classes, conmon scopes, sessions and workloads' own sub-cgroups are not workloads."""
    assert None is classify(path)


# --- walk ---------------------------------------------------------------------------------------------------

SYSTEMD_IDS = [
    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b2c4d6e_8fa1_4b3c_9d5e_7f8a9b0c1d2e.slice",
    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b2c4d6e_8fa1_4b3c_9d5e_7f8a9b0c1d2e.slice"
    "/cri-containerd-9c0abe51c6e6655d81de2d044d4fb194931f058c0426c67c7285d8f5657ed64a.scope",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice"
    "/cri-containerd-45ba3058c10e3a5f918695ac94678469de0c8cb7d1c6546b4d2e737acc61a503.scope",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice/cri-containerd-{HEX}.scope",
    "/kubepods.slice/kubepods-pod9a8b7c6d_5e4f_4a3b_8c2d_1e0f9a8b7c6d.slice",
    "/kubepods.slice/kubepods-pod9a8b7c6d_5e4f_4a3b_8c2d_1e0f9a8b7c6d.slice"
    "/crio-7c1c97df17c066924822b0af09a65251554962c61e23329aed04cd19020dc3b8.scope",
    f"/machine.slice/libpod-{HEX2}.scope",
    "/machine.slice/machine-qemu\\x2d1\\x2dvm01.scope",
    "/system.slice/containerd.service",
    "/system.slice/docker-d548c5b83fa61d8e3bd86ad42a7ffea9b7c86e3f9d8095c1577d3e1270bb9420.scope",
    "/system.slice/slurmstepd.scope/job_1234",
    "/system.slice/slurmstepd.scope/job_1234/step_0",
    "/system.slice/slurmstepd.scope/job_1234/step_batch",
]


def test_walk_systemd_tree_order() -> None:
    """Every workload of the systemd-driver tree, parents before children, siblings in name order."""
    result = walk(str(V2_SYSTEMD))
    assert SYSTEMD_IDS == [w.id for w in result.workloads]
    assert 0 == result.included_other


def test_walk_cgroupfs_tree_order() -> None:
    """The cgroupfs-driver tree: three pods with one container each, and a Docker container."""
    expected = [
        "/docker/67bd8c7ac0c87e389ede0ab7ac578e9edb9535c8357bf25fc1fd74d21583dfec",
        "/kubepods/besteffort/pod5e6f7a8b-9c0d-4e1f-9a2b-3c4d5e6f7a8b",
        "/kubepods/besteffort/pod5e6f7a8b-9c0d-4e1f-9a2b-3c4d5e6f7a8b"
        "/bb2b440794a38444e58fa6eecd95c043f6705e2de74628225763dc0b183636a7",
        "/kubepods/burstable/pod3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f",
        "/kubepods/burstable/pod3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
        "/d648d30809d5f711e336c0774b8ecef62f5db3de8004092dcf5f605f844c0f22",
        "/kubepods/pod7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d",
        "/kubepods/pod7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
        "/b31a8330d5ea0dcc4ab39b3082c18606bc5bd459e810e5d0cfbf479f9b3552cb",
    ]
    assert expected == [w.id for w in walk(str(V2_CGROUPFS)).workloads]


def test_walk_v1_hierarchy() -> None:
    """The v1 cpu,cpuacct hierarchy: a Docker container and a Slurm job with its step (uid from the path)."""
    workloads = walk(str(V1 / "cpu,cpuacct")).workloads
    docker = "/docker/44b317d826b2d53c344ee49e3fe4686613870c72d811dfd8ec1645d4579f6a47"
    assert [docker, "/slurm/uid_1000/job_77", "/slurm/uid_1000/job_77/step_0"] == [w.id for w in workloads]
    assert [("container", ""), ("slurm_job", ""), ("slurm_job", "0")] == [(w.kind, w.slurm_step) for w in workloads]
    assert {"1000"} == {w.slurm_uid for w in workloads[1:]}


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories ``walk`` lists (os.scandir calls), as cgroup paths relative to the walked root."""
    calls: list[str] = []
    real = os.scandir

    def spy(path: Any) -> Any:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", spy)
    return calls


def _rel(root: Path, calls: list[str]) -> set[str]:
    return {"/" + os.path.relpath(c, root).removeprefix(".") for c in calls}


def test_walk_lists_only_dirs_that_can_hold_workloads(listed: list[str]) -> None:
    """Slices, pods, slurmstepd.scope and jobs are listed; containers, services, steps, VMs and scopes are not."""
    walk(str(V2_SYSTEMD))
    expected = {
        "/",
        "/kubepods.slice",
        "/kubepods.slice/kubepods-besteffort.slice",
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b2c4d6e_8fa1_4b3c_9d5e_7f8a9b0c1d2e.slice",
        "/kubepods.slice/kubepods-burstable.slice",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice",
        "/kubepods.slice/kubepods-pod9a8b7c6d_5e4f_4a3b_8c2d_1e0f9a8b7c6d.slice",
        "/machine.slice",
        "/system.slice",
        "/system.slice/slurmstepd.scope",
        "/system.slice/slurmstepd.scope/job_1234",
        "/user.slice",
        "/user.slice/user-1000.slice",
    }
    assert expected == _rel(V2_SYSTEMD, listed)


def test_walk_max_depth() -> None:
    """Directories at max_depth are reported but not listed: deeper workloads are not found."""
    ids = [w.id for w in walk(str(V2_SYSTEMD), max_depth=2).workloads]
    assert [
        "/kubepods.slice/kubepods-pod9a8b7c6d_5e4f_4a3b_8c2d_1e0f9a8b7c6d.slice",
        f"/machine.slice/libpod-{HEX2}.scope",
        "/machine.slice/machine-qemu\\x2d1\\x2dvm01.scope",
        "/system.slice/containerd.service",
        "/system.slice/docker-d548c5b83fa61d8e3bd86ad42a7ffea9b7c86e3f9d8095c1577d3e1270bb9420.scope",
    ] == ids


def test_walk_include_reports_others_and_descends_everything(listed: list[str]) -> None:
    """With include, every directory is listed and an unrecognised match is kind ``other``."""
    result = walk(str(V2_SYSTEMD), include=re.compile(r"/user/task_\d+$|^/init\.scope$"))
    others = [w.id for w in result.workloads if w.kind == "other"]
    assert [
        "/init.scope",
        "/system.slice/slurmstepd.scope/job_1234/step_0/user/task_0",
        "/system.slice/slurmstepd.scope/job_1234/step_0/user/task_1",
        "/system.slice/slurmstepd.scope/job_1234/step_batch/user/task_0",
    ] == others
    assert 4 == result.included_other
    assert len(SYSTEMD_IDS) + 4 == len(result.workloads)
    # The libvirt sub-cgroups of the VM were listed too.
    assert "/machine.slice/machine-qemu\\x2d1\\x2dvm01.scope/libvirt" in _rel(V2_SYSTEMD, listed)


def test_walk_include_does_not_relabel_recognised_workloads() -> None:
    """A recognised workload matching include keeps its own kind."""
    result = walk(str(V2_SYSTEMD), include=re.compile(r"containerd\.service"))
    kinds = {w.id: w.kind for w in result.workloads if "containerd.service" in w.id}
    assert {"/system.slice/containerd.service": "service", "/system.slice/containerd.service/runtime": "other"} == kinds
    assert 1 == result.included_other


def test_walk_exclude_drops_the_subtree(listed: list[str]) -> None:
    """An excluded path is neither reported nor listed, nor anything below it."""
    result = walk(
        str(V2_SYSTEMD), exclude=re.compile(r"^/kubepods\.slice/kubepods-burstable\.slice$|^/system\.slice/docker-")
    )
    ids = [w.id for w in result.workloads]
    assert [i for i in SYSTEMD_IDS if "kubepods-burstable" not in i and "docker-" not in i] == ids
    assert not any("kubepods-burstable" in p for p in _rel(V2_SYSTEMD, listed))


def test_walk_missing_root_and_symlinks(tmp_path: Path) -> None:
    """A missing root gives nothing; a symlinked directory is not followed."""
    assert [] == walk(str(tmp_path / "absent")).workloads
    (tmp_path / "system.slice" / "a.service").mkdir(parents=True)
    (tmp_path / "elsewhere.service").mkdir()
    os.symlink(tmp_path / "elsewhere.service", tmp_path / "system.slice" / "b.service")
    assert ["/system.slice/a.service"] == [w.id for w in walk(str(tmp_path)).workloads]


def test_walk_skips_directory_that_vanishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory removed between its parent's listing and its own is skipped."""
    for d in ("system.slice/a.service", "kubepods.slice/kubepods-besteffort.slice"):
        (tmp_path / d).mkdir(parents=True)
    real = os.scandir

    def vanishing(path: Any) -> Any:
        if str(path).endswith("kubepods.slice"):
            raise FileNotFoundError(path)
        return real(path)

    monkeypatch.setattr(os, "scandir", vanishing)
    assert ["/system.slice/a.service"] == [w.id for w in walk(str(tmp_path)).workloads]


# --- WorkloadResolver ----------------------------------------------------------------------------------------


def _procfs(root: Path, files: dict[int, str]) -> str:
    for pid, text in files.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
    return str(root)


def test_resolve_v2(tmp_path: Path) -> None:
    """Pids resolve through their ``0::`` line to the innermost enclosing workload."""
    step = "/system.slice/slurmstepd.scope/job_1234/step_batch"
    conmon_pod = "/kubepods.slice/kubepods-pod9a8b7c6d_5e4f_4a3b_8c2d_1e0f9a8b7c6d.slice"
    container = (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice/cri-containerd-{HEX}.scope"
    )
    procfs = _procfs(
        tmp_path,
        {
            4211: f"0::{container}\n",
            11008: f"0::{step}/user/task_0\n",
            11020: "0::/system.slice/slurmstepd.scope/job_1234/step_0/slurm\n",
            9001: "0::/machine.slice/machine-qemu\\x2d1\\x2dvm01.scope/libvirt/emulator\n",
            7001: f"0::{conmon_pod}/crio-conmon-{CRIO_HEX}.scope\n",
            1188: "0::/system.slice/containerd.service/runtime\n",
            2231: "0::/user.slice/user-1000.slice/session-3.scope\n",
            2: "0::/\n",
        },
    )
    resolver = WorkloadResolver(HostPaths(procfs=procfs, cgroupfs=str(V2_SYSTEMD)))
    assert "" == resolver.layout().walk_controller

    def resolve(pid: int) -> Workload:
        w = resolver.resolve(pid)
        assert w is not None
        return w

    w = resolve(4211)
    assert (container, "container", HEX, "containerd") == (w.id, w.kind, w.container_id, w.runtime)
    w = resolve(11008)
    assert (step, "slurm_job", "1234", "batch") == (w.id, w.kind, w.slurm_job, w.slurm_step)
    assert ("/system.slice/slurmstepd.scope/job_1234/step_0", "0") == (resolve(11020).id, resolve(11020).slurm_step)
    w = resolve(9001)
    assert ("vm", "vm01") == (w.kind, w.vm)
    # conmon's scope is no workload: its pid belongs to the pod.
    assert (conmon_pod, "pod") == (resolve(7001).id, resolve(7001).kind)
    assert ("/system.slice/containerd.service", "service") == (resolve(1188).id, resolve(1188).kind)
    # In no workload: a workload of kind other whose id is the pid's own cgroup.
    assert Workload(id="/user.slice/user-1000.slice/session-3.scope", kind="other") == resolve(2231)
    assert Workload(id="/", kind="other") == resolve(2)
    assert None is resolver.resolve(99999)


HYBRID_CGROUP = """\
12:pids:/docker/{hex}
11:memory:/docker/{hex}
10:blkio:/docker/{hex}
8:net_cls,net_prio:/docker/{hex}
7:cpu,cpuacct:{path}
3:freezer:/docker/{hex}
1:name=systemd:/system.slice/docker.service
0::/system.slice/docker.service
"""


def test_resolve_v1_uses_the_cpuacct_line(tmp_path: Path) -> None:
    """On v1 the walked controller's line (cpuacct, co-mounted with cpu) names the workload."""
    docker = "44b317d826b2d53c344ee49e3fe4686613870c72d811dfd8ec1645d4579f6a47"
    procfs = _procfs(
        tmp_path,
        {
            3301: HYBRID_CGROUP.format(hex=docker, path=f"/docker/{docker}"),
            20111: HYBRID_CGROUP.format(hex=docker, path="/slurm/uid_1000/job_77/step_0/task_0"),
            1: "7:cpu,cpuacct:/init.scope\n1:name=systemd:/init.scope\n",
        },
    )
    resolver = WorkloadResolver(HostPaths(procfs=procfs, cgroupfs=str(V1)))
    assert ("v1", "cpuacct") == (resolver.layout().mode, resolver.layout().walk_controller)
    assert f"/docker/{docker}" == resolver.cgroup_of(3301)
    w = resolver.resolve(3301)
    assert w is not None and ("container", "docker", docker) == (w.kind, w.runtime, w.container_id)
    w = resolver.resolve(20111)
    assert w is not None
    assert ("/slurm/uid_1000/job_77/step_0", "77", "0", "1000") == (w.id, w.slurm_job, w.slurm_step, w.slurm_uid)
    assert Workload(id="/init.scope", kind="other") == resolver.resolve(1)


def test_resolver_without_cgroups_raises_then_recovers(tmp_path: Path) -> None:
    """No hierarchy mounted: NoCgroupsError naming the root; once one appears the resolver uses it."""
    root = tmp_path / "cgroup"
    procfs = _procfs(tmp_path / "proc", {7: "0::/system.slice/a.service\n"})
    resolver = WorkloadResolver(HostPaths(procfs=procfs, cgroupfs=str(root)))
    with pytest.raises(NoCgroupsError, match=re.escape(str(root))):
        resolver.resolve(7)
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    w = resolver.resolve(7)
    assert w is not None and ("service", "a.service") == (w.kind, w.service)


def test_resolver_classify_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached classifications are returned as is; the cache is cleared when full."""
    monkeypatch.setattr(WorkloadResolver, "_CACHE_MAX", 2)
    resolver = WorkloadResolver(HostPaths())
    first = resolver.classify("/system.slice/a.service")
    assert first is resolver.classify("/system.slice/a.service")
    resolver.classify("/system.slice/b.service")
    resolver.classify("/system.slice/c.service")  # clears the cache
    again = resolver.classify("/system.slice/a.service")
    assert first == again and first is not again


# --- discover_layout ------------------------------------------------------------------------------------------


def _mkdirs(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


def test_layout_v2(tmp_path: Path) -> None:
    """cgroup.controllers in the root: v2, walked and read from the root."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    layout = discover_layout(str(tmp_path))
    assert ("v2", str(tmp_path), {}) == (layout.mode, layout.unified, dict(layout.v1))
    assert (str(tmp_path), "") == (layout.walk_root, layout.walk_controller)


def _v1_tree(root: Path) -> None:
    _mkdirs(root, "cpu,cpuacct", "memory", "blkio", "pids", "systemd", "freezer", "net_cls,net_prio", "cpuset")
    os.symlink("cpu,cpuacct", root / "cpu")
    os.symlink("cpu,cpuacct", root / "cpuacct")


def test_layout_v1(tmp_path: Path) -> None:
    """Controller-named directories; co-mounted cpu,cpuacct serves both; symlinks and others are skipped."""
    _v1_tree(tmp_path)
    layout = discover_layout(str(tmp_path))
    cc = str(tmp_path / "cpu,cpuacct")
    expected = {
        "cpu": cc,
        "cpuacct": cc,
        "memory": str(tmp_path / "memory"),
        "blkio": str(tmp_path / "blkio"),
        "pids": str(tmp_path / "pids"),
        "name=systemd": str(tmp_path / "systemd"),
    }
    assert ("v1", None, expected) == (layout.mode, layout.unified, dict(layout.v1))
    assert (cc, "cpuacct") == (layout.walk_root, layout.walk_controller)


def test_layout_hybrid(tmp_path: Path) -> None:
    """v1 directories plus systemd's unified v2 mount: hybrid, walked on v1."""
    _v1_tree(tmp_path)
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    layout = discover_layout(str(tmp_path))
    assert ("hybrid", str(tmp_path / "unified")) == (layout.mode, layout.unified)
    assert (str(tmp_path / "cpu,cpuacct"), "cpuacct") == (layout.walk_root, layout.walk_controller)


@pytest.mark.parametrize(
    ("dirs", "controller"),
    [(("memory", "pids"), "memory"), (("systemd",), "name=systemd"), (("cpu", "memory"), "cpu")],
)
def test_layout_v1_walk_controller_fallback(tmp_path: Path, dirs: tuple[str, ...], controller: str) -> None:
    """Without cpuacct the walk uses cpu, then memory, pids, name=systemd."""
    _mkdirs(tmp_path, *dirs)
    layout = discover_layout(str(tmp_path))
    assert ("v1", controller) == (layout.mode, layout.walk_controller)


def test_layout_only_unified_below_root(tmp_path: Path) -> None:
    """A lone v2 mount below the root (a container's view) is a v2 layout rooted there."""
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("memory pids\n")
    layout = discover_layout(str(tmp_path))
    assert ("v2", str(tmp_path / "unified")) == (layout.mode, layout.walk_root)


def test_layout_missing(tmp_path: Path) -> None:
    """No root, a file as root, an empty root or only unknown controllers: NoCgroupsError naming the root."""
    with pytest.raises(NoCgroupsError, match=r"absent does not exist"):
        discover_layout(str(tmp_path / "absent"))
    (tmp_path / "file").write_text("")
    with pytest.raises(NoCgroupsError, match=r"file is not a directory"):
        discover_layout(str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoCgroupsError, match=r"empty holds no cgroup hierarchy"):
        discover_layout(str(tmp_path / "empty"))
    _mkdirs(tmp_path / "odd", "freezer", "rdma", "blkio")
    os.symlink("freezer", tmp_path / "odd" / "cpuacct")
    with pytest.raises(NoCgroupsError, match=r"odd holds no cgroup hierarchy"):
        discover_layout(str(tmp_path / "odd"))


def test_layout_of_fixture_trees() -> None:
    """The committed fixture trees are detected as the layouts they model."""
    assert "v2" == discover_layout(str(V2_SYSTEMD)).mode
    assert "v2" == discover_layout(str(V2_CGROUPFS)).mode
    v1 = discover_layout(str(V1))
    assert "v1" == v1.mode
    assert {"cpu", "cpuacct", "memory", "blkio", "pids", "name=systemd"} == set(v1.v1)
    assert v1.v1["cpu"] == v1.v1["cpuacct"] == str(V1 / "cpu,cpuacct")
