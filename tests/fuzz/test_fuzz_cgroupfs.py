"""
The cgroup filesystem parsers (``nodeagent.sources.cgroupfs``) and the cgroup path classifier
(``nodeagent.workloads.classify``) under hostile and generated valid input.

The parsers' documented error is ``ParseError`` (the cgroups collector catches only that, per file, and counts the
file as reason="parse"); every integer they return fits a kernel counter (s64 to u64), which is what lets the
collector turn it into a float sample. ``classify`` documents no error: any path gives a workload or None.
Seeds are the files of the committed cgroup v1 and v2 fixture trees.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.hostfs import KERNEL_INT_MAX, KERNEL_INT_MIN, ParseError
from nodeagent.sources.cgroupfs import (
    flat_values,
    parse_blkio,
    parse_cpu_max,
    parse_int,
    parse_io_stat,
    parse_limit,
    parse_psi_totals,
)
from nodeagent.workloads import classify
from tests.fuzz.strategies import FIXTURES, hostile_bytes
from tests.fuzz.support import Cases, budget

CGROUP_FIXTURES = FIXTURES / "cgroup"
U64 = st.integers(0, KERNEL_INT_MAX)


def _seeds(*names: str) -> tuple[bytes, ...]:
    """Every distinct content of the fixture files with these names (v1 and v2 trees)."""
    found = {p.read_bytes() for name in names for p in CGROUP_FIXTURES.rglob(name) if p.is_file()}
    assert found, f"no fixture named {names}"
    return tuple(sorted(found))


def _ints(value: Any) -> list[int]:
    """Every int inside a parser's result (nested tuples, lists, dicts)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    if isinstance(value, list | tuple):
        return [i for v in value for i in _ints(v)]
    return []


CPU_KEYS = (b"usage_usec", b"user_usec", b"system_usec", b"nr_periods", b"nr_throttled", b"throttled_usec")
MEM_KEYS = (b"anon", b"file", b"file_mapped", b"inactive_file", b"total_rss", b"total_cache")

PARSERS: dict[str, tuple[Callable[[bytes], Any], tuple[bytes, ...]]] = {
    "cgroup_flat_keyed": (
        lambda d: flat_values(d, CPU_KEYS + MEM_KEYS + (b"oom_kill", b"user", b"system"), "/fuzz/cgroup_flat_keyed"),
        _seeds("cpu.stat", "memory.stat", "memory.events", "memory.oom_control", "cpuacct.stat"),
    ),
    "cgroup_int": (
        lambda d: parse_int(d, "/fuzz/cgroup_int"),
        _seeds("memory.current", "pids.current", "cpuacct.usage", "memory.failcnt", "memory.swap.current"),
    ),
    "cgroup_limit": (
        lambda d: parse_limit(d, "/fuzz/cgroup_limit"),
        _seeds("memory.max", "memory.limit_in_bytes", "cpu.cfs_quota_us"),
    ),
    "cgroup_cpu_max": (lambda d: parse_cpu_max(d, "/fuzz/cgroup_cpu_max"), _seeds("cpu.max")),
    "cgroup_psi": (
        lambda d: parse_psi_totals(d, "/fuzz/cgroup_psi"),
        _seeds("cpu.pressure", "memory.pressure", "io.pressure"),
    ),
    "cgroup_io_stat": (lambda d: parse_io_stat(d, "/fuzz/cgroup_io_stat"), _seeds("io.stat")),
    "cgroup_blkio": (
        lambda d: (parse_blkio(d, "/fuzz/cgroup_blkio", False), parse_blkio(d, "/fuzz/cgroup_blkio", True)),
        _seeds("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive"),
    ),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
@budget(200)
@given(data=st.data())
def test_hostile_cgroup_file_gives_value_or_parse_error(cases: Cases, name: str, data: st.DataObject) -> None:
    """Damaged fixture content: a value whose integers fit a kernel counter, or a ParseError naming the file."""
    parse, seeds = PARSERS[name]
    content = data.draw(hostile_bytes(seeds), label="content")
    outcome = cases.call(name, parse, content, allowed=(ParseError,), names=f"/fuzz/{name}")
    assert all(KERNEL_INT_MIN <= i <= KERNEL_INT_MAX for i in _ints(outcome.value))


# --- valid files ----------------------------------------------------------------------------------------------------


@budget(100)
@given(st.dictionaries(st.sampled_from(CPU_KEYS + MEM_KEYS + (b"nr_bursts", b"total_rss_huge")), U64), st.randoms())
def test_flat_keyed_roundtrip(cases: Cases, values: dict[bytes, int], rnd: Any) -> None:
    """Any order of keys, prefixes of other keys among them: each wanted key's value, None where absent."""
    items = list(values.items())
    rnd.shuffle(items)
    data = b"".join(k + b" " + str(v).encode() + b"\n" for k, v in items)
    wanted = CPU_KEYS + MEM_KEYS
    expected = [values.get(k) for k in wanted]
    assert expected == cases.call("cgroup_flat_keyed", flat_values, data, wanted, "cpu.stat").value


@budget(100)
@given(st.integers(KERNEL_INT_MIN, KERNEL_INT_MAX), st.sampled_from(("", "\n", " \n")), st.integers(1, 2**31))
def test_single_values_roundtrip(cases: Cases, value: int, end: str, period: int) -> None:
    """One integer; a limit of ``max`` or negative is None; ``cpu.max`` is quota and period."""
    assert value == cases.call("cgroup_int", parse_int, f"{value}{end}".encode(), "memory.current").value
    limit = None if value < 0 else value
    assert limit == cases.call("cgroup_limit", parse_limit, f"{value}{end}".encode(), "memory.max").value
    assert cases.call("cgroup_limit", parse_limit, b"max\n", "memory.max").value is None
    quota = "max" if value < 0 else str(value)
    got = cases.call("cgroup_cpu_max", parse_cpu_max, f"{quota} {period}\n".encode(), "cpu.max").value
    assert (limit, period) == got


@budget(100)
@given(U64, st.none() | U64)
def test_psi_roundtrip(cases: Cases, some: int, full: int | None) -> None:
    """The ``total=`` values of a cgroup's pressure file, with and without its full line."""
    text = f"some avg10=0.12 avg60=0.05 avg300=0.00 total={some}\n"
    if full is not None:
        text += f"full avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n"
    assert (some, full) == cases.call("cgroup_psi", parse_psi_totals, text.encode(), "cpu.pressure").value


DEVICES = st.tuples(st.integers(0, 4095), st.integers(0, 2**20 - 1)).map(lambda d: f"{d[0]}:{d[1]}")


@budget(100)
@given(st.dictionaries(DEVICES, st.tuples(U64, U64, U64, U64, U64, U64), max_size=4))
def test_io_stat_and_blkio_roundtrip(cases: Cases, devices: dict[str, tuple[int, ...]]) -> None:
    """v2 io.stat and the v1 blkio pair of files give the same rows for the same numbers."""
    io_stat = b"".join(
        f"{dev} rbytes={r} wbytes={w} rios={ri} wios={wi} dbytes={db} dios={di}\n".encode()
        for dev, (r, w, ri, wi, db, di) in devices.items()
    )
    expected = {dev: [r, w, ri, wi] for dev, (r, w, ri, wi, _, _) in devices.items()}
    assert expected == cases.call("cgroup_io_stat", parse_io_stat, io_stat, "io.stat").value

    def blkio(read: int, write: int) -> str:
        return f"Read {read}\n{{dev}} Write {write}\n{{dev}} Sync 0\n{{dev}} Async 0\n{{dev}} Discard 0\n"

    service_bytes = "".join(
        f"{dev} " + blkio(r, w).format(dev=dev) + f"{dev} Total {r + w}\n" for dev, (r, w, *_) in devices.items()
    )
    serviced = "".join(
        f"{dev} " + blkio(ri, wi).format(dev=dev) + f"{dev} Total 0\n" for dev, (_, _, ri, wi, _, _) in devices.items()
    )
    got_bytes = cases.call("cgroup_blkio", parse_blkio, (service_bytes + "Total 0\n").encode(), "blkio", False).value
    got_ios = cases.call("cgroup_blkio", parse_blkio, (serviced + "Total 0\n").encode(), "blkio", True).value
    assert {dev: [r, w, 0, 0] for dev, (r, w, *_) in devices.items()} == got_bytes
    assert {dev: [0, 0, ri, wi] for dev, (_, _, ri, wi, _, _) in devices.items()} == got_ios


# --- cgroup paths -----------------------------------------------------------------------------------------------------


def _fixture_cgroup_paths() -> list[str]:
    """Every directory of the fixture trees, as a cgroup path relative to its hierarchy root."""
    paths = []
    for tree in ("v1/cpu,cpuacct", "v1/systemd", "v2-cgroupfs", "v2-systemd"):
        root = CGROUP_FIXTURES / tree
        paths += ["/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()]
    return sorted(paths)


CGROUP_PATHS = tuple(p.encode() for p in _fixture_cgroup_paths())
HEX = "0123456789abcdef"
IDS = st.text(HEX, min_size=64, max_size=64)
UIDS = st.uuids().map(str)


@budget(200)
@given(hostile_bytes(CGROUP_PATHS))
def test_hostile_cgroup_path_classifies_without_error(cases: Cases, damaged: bytes) -> None:
    """Any path (as the walk and /proc/<pid>/cgroup give it, decoded with replacement) gives a workload or None."""
    path = damaged.decode("utf-8", "replace")
    workload = cases.call("classify", classify, path).value
    if workload is not None:
        assert workload.kind in ("pod", "container", "service", "slurm_job", "vm")


@budget(150)
@given(UIDS, IDS, st.sampled_from(("", "besteffort", "burstable")), st.sampled_from(("cri-containerd", "crio", "")))
def test_kubernetes_paths_roundtrip(cases: Cases, uid: str, cid: str, qos: str, runtime: str) -> None:
    """Pods and containers of both kubelet cgroup drivers: the uid, QoS class and container id come back."""
    expected_runtime = {"cri-containerd": "containerd", "crio": "cri-o", "": ""}[runtime]
    container = f"{runtime}-{cid}.scope" if runtime else cid
    systemd_pod = f"kubepods{'-' + qos if qos else ''}-pod{uid.replace('-', '_')}.slice"
    layouts = (
        ("/kubepods.slice" + (f"/kubepods-{qos}.slice" if qos else ""), systemd_pod),
        ("/kubepods" + (f"/{qos}" if qos else ""), f"pod{uid}"),
    )
    for parent, pod_dir in layouts:
        pod_path = f"{parent}/{pod_dir}"
        pod = cases.call("classify", classify, pod_path).value
        assert (pod.kind, pod.id, pod.pod_uid, pod.qos_class) == ("pod", pod_path, uid, qos or "guaranteed")
        c = cases.call("classify", classify, f"{pod_path}/{container}").value
        assert (c.kind, c.container_id, c.pod_uid, c.parent, c.runtime) == (
            "container",
            cid,
            uid,
            pod_path,
            expected_runtime,
        )


@budget(100)
@given(st.integers(0, 2**31), st.integers(0, 10**7), st.sampled_from(("0", "batch", "extern", "12")), IDS)
def test_slurm_docker_paths_roundtrip(cases: Cases, uid: int, job: int, step: str, cid: str) -> None:
    """Slurm jobs and steps (v1 and v2 layouts) and Docker containers outside Kubernetes."""
    for job_path, slurm_uid in (
        (f"/slurm/uid_{uid}/job_{job}", str(uid)),
        (f"/system.slice/slurmstepd.scope/job_{job}", ""),
    ):
        w = cases.call("classify", classify, job_path).value
        assert (w.kind, w.slurm_job, w.slurm_uid, w.slurm_step) == ("slurm_job", str(job), slurm_uid, "")
        s = cases.call("classify", classify, f"{job_path}/step_{step}").value
        assert (s.kind, s.slurm_job, s.slurm_step, s.parent) == ("slurm_job", str(job), step, job_path)
    for path in (f"/system.slice/docker-{cid}.scope", f"/docker/{cid}"):
        d = cases.call("classify", classify, path).value
        assert (d.kind, d.runtime, d.container_id) == ("container", "docker", cid)


def test_fixture_paths_classify(cases: Cases) -> None:
    """The seeds: every fixture directory classifies without error, and the fixture trees hold each kind."""
    kinds = {w.kind for p in CGROUP_PATHS if (w := cases.call("classify", classify, p.decode()).value) is not None}
    assert {"pod", "container", "service", "slurm_job"} <= kinds, Path(CGROUP_FIXTURES)
