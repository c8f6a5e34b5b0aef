"""
The one workload resolver: pid -> cgroup path -> workload (Kubernetes pod or container, container of
Docker, Podman or containerd, systemd service, Slurm job or step, libvirt/QEMU VM).

The cgroup, network and GPU collectors all classify through ``WorkloadResolver``; none parses cgroup
paths itself. Names and images (``name``, ``image``, ``container``, ``pod``, ``namespace``) come from the
container runtimes' metadata (``nodeagent.runtimes``) through ``WorkloadResolver.describe``.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from nodeagent.hostfs import HostPaths, SourceReadError, read_text
from nodeagent.sources.cgroupfs import CgroupLayout, NoCgroupsError, discover_layout, parse_proc_cgroup

if TYPE_CHECKING:
    from nodeagent.runtimes import RuntimeMetadata

WorkloadKind = Literal["pod", "container", "service", "slurm_job", "vm", "other"]


@dataclass(frozen=True, slots=True)
class Workload:
    """
    What a cgroup is. ``id`` is the cgroup path (cAdvisor's ``id`` label); ``parent`` is the id of the
    enclosing workload (a container's pod, a Slurm step's job). Fields that do not apply are ``""``.
    """

    id: str
    kind: WorkloadKind
    runtime: str = ""
    pod_uid: str = ""
    qos_class: str = ""
    container_id: str = ""
    service: str = ""
    slurm_job: str = ""
    slurm_step: str = ""
    slurm_uid: str = ""
    vm: str = ""
    parent: str = ""
    # Filled from runtime metadata (containerd, CRI, Docker, Podman) by ``WorkloadResolver.describe``;
    # empty while no runtime knows the container.
    name: str = ""
    image: str = ""
    container: str = ""
    pod: str = ""
    namespace: str = ""
    image_id: str = ""
    # Values of the allowlisted runtime/pod labels, in ``runtimes.labels`` order ("" where absent).
    labels: tuple[str, ...] = ()


# --- classification of one path segment in context -------------------------------------------------------

_HEX64 = r"[0-9a-f]{64}"
# cgroupfs driver: pod<uid>; systemd driver: kubepods[-qos]-pod<uid with _>.slice (any prefix, as in kind).
_POD_RE = re.compile(
    r"^(?:pod(?P<uid>[0-9a-f-]{36})"
    r"|(?:[\w.-]*-)?kubepods(?:-(?:besteffort|burstable))?-pod(?P<suid>[0-9a-f_]{36})\.slice)$"
)
# A container below a pod: cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope, or a bare id.
_POD_CONTAINER_RE = re.compile(rf"^(?:(?P<rt>cri-containerd|crio|docker)-)?(?P<id>{_HEX64})(?:\.scope)?$")
_QOS_RE = re.compile(r"(?:^|-)(besteffort|burstable)(?:\.slice)?$")
# Containers outside Kubernetes.
_DOCKER_SCOPE_RE = re.compile(rf"^docker-(?P<id>{_HEX64})\.scope$")
_LIBPOD_RE = re.compile(rf"^libpod-(?P<id>{_HEX64})(?:\.scope)?$")
_NERDCTL_RE = re.compile(rf"^nerdctl-(?P<id>{_HEX64})\.scope$")
_BARE_ID_RE = re.compile(rf"^{_HEX64}$")
# Slurm: slurm[_<node>]/uid_<uid>/job_<id>/step_<n> (v1), system.slice/slurmstepd.scope/job_<id>/step_<n> (v2).
_SLURM_ROOT_RE = re.compile(r"^slurm(?:_[\w.-]+)?$")
_SLURM_UID_RE = re.compile(r"^uid_(\d+)$")
_SLURM_JOB_RE = re.compile(r"^job_(\d+)$")
_SLURM_STEP_RE = re.compile(r"^step_(\w+)$")
# libvirt: machine.slice/machine-qemu\x2d1\x2dname.scope (systemd), machine/qemu-1-name.libvirt-qemu (cgroupfs).
_QEMU_SCOPE_RE = re.compile(r"^machine-qemu-(?:\d+-)?(?P<name>.+)\.scope$")
_QEMU_V1_RE = re.compile(r"^qemu-(?:\d+-)?(?P<name>.+)\.libvirt-qemu$")
_SERVICE_RE = re.compile(r"^(?P<unit>.+\.service)$")


def _unescape_systemd(name: str) -> str:
    r"""Undo systemd unit-name escaping (``\x2d`` for ``-`` and so on)."""
    if "\\x" not in name:
        return name
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def classify(path: str) -> Workload | None:
    """
    The workload whose cgroup is exactly ``path`` (``/kubepods/burstable/pod<uid>/<id>``), or ``None``
    for a structural cgroup (slice, QoS class, ``/docker``) or one nodeagent does not recognise.
    """
    segs = [s for s in path.split("/") if s]
    if not segs:
        return None
    last = segs[-1]

    # Kubernetes pod and container: find the pod segment anywhere below a kubepods ancestor.
    for i, seg in enumerate(segs):
        m = _POD_RE.match(seg)
        if m is None or not any("kubepods" in s for s in segs[: i + 1]):
            continue
        uid = m.group("uid") or (m.group("suid") or "").replace("_", "-")
        qos = "guaranteed"
        for s in segs[:i]:  # the QoS class is a parent: burstable, kubepods-besteffort.slice, ...
            q = _QOS_RE.search(s)
            if q:
                qos = q.group(1)
        pod_id = "/" + "/".join(segs[: i + 1])
        if i == len(segs) - 1:
            return Workload(id=pod_id, kind="pod", pod_uid=uid, qos_class=qos)
        if i == len(segs) - 2:
            c = _POD_CONTAINER_RE.match(last)
            if c is None:
                return None
            runtime = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}.get(c.group("rt") or "", "")
            return Workload(
                id=path,
                kind="container",
                runtime=runtime,
                pod_uid=uid,
                qos_class=qos,
                container_id=c.group("id"),
                parent=pod_id,
            )
        return None

    # Slurm jobs and steps.
    for i, seg in enumerate(segs):
        jm = _SLURM_JOB_RE.match(seg)
        if jm is None or i == 0:
            continue
        before = segs[:i]
        uid = ""
        if um := _SLURM_UID_RE.match(before[-1]):
            if len(before) < 2 or not _SLURM_ROOT_RE.match(before[-2]):
                continue
            uid = um.group(1)
        elif before[-1] != "slurmstepd.scope":
            continue
        job_id = "/" + "/".join(segs[: i + 1])
        if i == len(segs) - 1:
            return Workload(id=job_id, kind="slurm_job", slurm_job=jm.group(1), slurm_uid=uid)
        if i == len(segs) - 2 and (sm := _SLURM_STEP_RE.match(last)):
            return Workload(
                id=path,
                kind="slurm_job",
                slurm_job=jm.group(1),
                slurm_step=sm.group(1),
                slurm_uid=uid,
                parent=job_id,
            )
        return None

    # Containers outside Kubernetes.
    if m := _DOCKER_SCOPE_RE.match(last):
        return Workload(id=path, kind="container", runtime="docker", container_id=m.group("id"))
    if m := _LIBPOD_RE.match(last):
        return Workload(id=path, kind="container", runtime="podman", container_id=m.group("id"))
    if m := _NERDCTL_RE.match(last):
        return Workload(id=path, kind="container", runtime="containerd", container_id=m.group("id"))
    if _BARE_ID_RE.match(last) and len(segs) == 2 and segs[0] in ("docker", "libpod_parent"):
        runtime = "docker" if segs[0] == "docker" else "podman"
        return Workload(id=path, kind="container", runtime=runtime, container_id=last)

    # Virtual machines.
    if len(segs) == 2 and segs[0] == "machine.slice" and (m := _QEMU_SCOPE_RE.match(_unescape_systemd(last))):
        return Workload(id=path, kind="vm", runtime="libvirt-qemu", vm=m.group("name"))
    if len(segs) == 2 and segs[0] == "machine" and (m := _QEMU_V1_RE.match(last)):
        return Workload(id=path, kind="vm", runtime="libvirt-qemu", vm=m.group("name"))

    # systemd services: <name>.service directly below a chain of slices (system.slice, system-x.slice).
    if (m := _SERVICE_RE.match(last)) and all(s.endswith(".slice") for s in segs[:-1]) and len(segs) > 1:
        return Workload(id=path, kind="service", runtime="systemd", service=_unescape_systemd(m.group("unit")))
    return None


def _descend(name: str, workload: Workload | None) -> bool:
    """Whether workloads can lie below the cgroup ``name`` (so the walk lists its children)."""
    if workload is not None:
        # Pods hold containers and jobs hold steps, and a user's systemd manager (user@<uid>.service) holds
        # rootless Podman containers; below any other workload are only its own sub-cgroups.
        return (
            workload.kind == "pod"
            or (workload.kind == "slurm_job" and not workload.slurm_step)
            or workload.service.startswith("user@")
        )
    return (
        name.endswith(".slice")
        or name in ("kubepods", "besteffort", "burstable", "docker", "machine", "libpod_parent", "slurmstepd.scope")
        or bool(_SLURM_ROOT_RE.match(name))
        or bool(_SLURM_UID_RE.match(name))
    )


@dataclass(frozen=True, slots=True)
class WalkResult:
    """One listing of the cgroup tree: the workloads found, in a stable order."""

    workloads: list[Workload]
    included_other: int


def walk(
    root: str,
    include: re.Pattern[str] | None = None,
    exclude: re.Pattern[str] | None = None,
    max_depth: int = 10,
    classify: Callable[[str], Workload | None] = classify,
) -> WalkResult:
    """
    List the workload cgroups below ``root`` (a hierarchy directory), parents before children.

    Only directories that can hold workloads are listed (slices, QoS classes, pods, Slurm uid and job
    directories), so the cost is one directory listing per such cgroup. A path matching ``exclude`` is
    neither reported nor descended; with ``include`` set, every directory down to ``max_depth`` is listed
    and an unrecognised one whose path matches is reported as kind ``other``. A directory that vanishes
    during the walk is skipped.
    """
    found: list[Workload] = []
    others = 0

    def visit(dirpath: str, cgpath: str, depth: int) -> None:
        nonlocal others
        try:
            with os.scandir(dirpath) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return
        # Depth-first, children in name order: parents before children, the same order every cycle.
        for name in names:
            child = f"{cgpath}/{name}"
            if exclude is not None and exclude.search(child):
                continue
            w = classify(child)
            if w is None and include is not None and include.search(child):
                w = Workload(id=child, kind="other")
                others += 1
            if w is not None:
                found.append(w)
            if depth < max_depth and (include is not None or _descend(name, w)):
                visit(f"{dirpath}/{name}", child, depth + 1)

    visit(root, "", 1)
    return WalkResult(found, others)


class WorkloadResolver:
    """
    Maps a pid (or a cgroup path) to its workload. One instance per agent, shared by collectors.

    The hierarchy layout is discovered on first use and again after a failure, so an agent that starts
    before the cgroup tree is mounted recovers. Classifications are cached per path (bounded).
    """

    _CACHE_MAX = 16384

    def __init__(self, paths: HostPaths, metadata: RuntimeMetadata | None = None) -> None:
        self.paths = paths
        self.metadata = metadata
        self._layout: CgroupLayout | None = None
        self._cache: dict[str, Workload | None] = {}
        # cgroup id -> (metadata generation, the classified workload, the described one)
        self._described: dict[str, tuple[int, Workload, Workload]] = {}

    def layout(self) -> CgroupLayout:
        """
        The cgroup layout under the configured root.

        Raises:
            NoCgroupsError: no hierarchy is mounted there.
        """
        if self._layout is None:
            self._layout = discover_layout(self.paths.cgroup_root)
        return self._layout

    def classify(self, path: str) -> Workload | None:
        """``classify(path)`` with a bounded cache (collectors call this for every cgroup every cycle)."""
        try:
            return self._cache[path]
        except KeyError:
            pass
        if len(self._cache) >= self._CACHE_MAX:
            self._cache.clear()
        w = self._cache[path] = classify(path)
        return w

    def describe(self, w: Workload) -> Workload:
        """
        ``w`` with the names its container runtime gives it: ``name``, ``image``, ``container``, ``pod``,
        ``namespace`` (kubelet's labels), ``image_id`` and the allowlisted labels. A pod's own cgroup gets
        ``pod`` and ``namespace``. Cached until the runtime metadata changes; unchanged if no runtime knows it.
        """
        meta = self.metadata
        if meta is None or not (w.container_id or w.pod_uid):
            return w
        generation = meta.index.generation
        cached = self._described.get(w.id)
        if cached is not None and cached[0] == generation and cached[1] is w:
            return cached[2]
        described = self._describe(meta, w)
        if len(self._described) >= self._CACHE_MAX:
            self._described.clear()
        self._described[w.id] = (generation, w, described)
        return described

    @staticmethod
    def _describe(meta: RuntimeMetadata, w: Workload) -> Workload:
        record = meta.container(w.container_id) if w.container_id else None
        if record is not None:
            pod_name, pod_namespace = record.pod_name, record.pod_namespace
            if not pod_name and w.pod_uid and (pod := meta.pod(w.pod_uid)) is not None:
                pod_name, pod_namespace = pod.name, pod.namespace
            return replace(
                w,
                runtime=w.runtime or record.runtime,
                name=record.name,
                image=record.image,
                container=record.container_name,
                pod=pod_name,
                namespace=pod_namespace,
                image_id=record.image_id,
                labels=meta.label_values(record),
            )
        if w.pod_uid and (pod := meta.pod(w.pod_uid)) is not None:
            return replace(w, pod=pod.name, namespace=pod.namespace)
        return w

    def enclosing(self, path: str) -> Workload:
        """
        The innermost workload that contains ``path``: a Slurm task's cgroup (``.../step_0/user/task_0``)
        resolves to its step, a process in a container's sub-cgroup to the container. A path inside no
        known workload is its own workload of kind ``other``.
        """
        probe = path.rstrip("/") or "/"
        while probe not in ("", "/"):
            w = self.classify(probe)
            if w is not None:
                return w
            probe = probe.rsplit("/", 1)[0]
        return Workload(id=path or "/", kind="other")

    def cgroup_of(self, pid: int) -> str | None:
        """
        The cgroup path of ``pid`` in the walked hierarchy, or ``None`` if the process is gone.

        Raises:
            NoCgroupsError: no hierarchy is mounted under the cgroup root.
        """
        layout = self.layout()
        try:
            text = read_text(self.paths.proc(str(pid), "cgroup"))
        except FileNotFoundError:
            return None
        except SourceReadError as exc:
            if exc.errno == errno.ESRCH:  # exited between the open and the read
                return None
            raise
        path = parse_proc_cgroup(text, layout.walk_controller)
        if path == "/" and self._exited(pid):
            # cgroup v1 moves a process that exited (a zombie not yet reaped) to the root: it is in no workload now.
            return None
        return path

    def _exited(self, pid: int) -> bool:
        """Whether ``pid`` has exited (a zombie, or gone): the state letter after the command in /proc/<pid>/stat."""
        try:
            stat = read_text(self.paths.proc(str(pid), "stat"))
        except FileNotFoundError:
            return not os.path.isdir(self.paths.proc(str(pid)))  # reaped since; a procfs without stat: not known
        except SourceReadError as exc:
            return exc.errno == errno.ESRCH
        return stat.rpartition(")")[2][1:2] in ("Z", "X")  # "pid (comm) S ...": the comm may hold ")"

    def resolve(self, pid: int) -> Workload | None:
        """The workload ``pid`` runs in, with its runtime names, or ``None`` if the process is gone."""
        path = self.cgroup_of(pid)
        return None if path is None else self.describe(self.enclosing(path))


__all__ = ["NoCgroupsError", "Workload", "WorkloadKind", "WorkloadResolver", "classify", "walk"]
