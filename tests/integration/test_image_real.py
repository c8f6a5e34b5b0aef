"""
The container image of ``packaging/docker/Dockerfile``, built for real by ``packaging/docker/build.sh`` (buildah
FROM a debootstrap-made Debian bookworm base, dependencies from a wheelhouse, RUN steps without a network), run
by the test containerd (runc) the way the DaemonSet runs it: read-only root filesystem, tmpfs /tmp and spool, the
host's /proc, /sys and / read-only at /host/proc, /host/sys and /host/root, the host's network namespace. Scraped
from the host: host, network and cgroup metrics of the host come out and match the kernel's own numbers.

The first build on a machine runs debootstrap (about 40 s) and pip; later builds reuse the base and the
wheelhouse cached in ``NODEAGENT_BUILD_CACHE`` (default ``/var/tmp/nodeagent-image-build``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.agent_proc import free_port, http_get, wait_until
from tests.integration.containerd_harness import RUNTIME, Containerd, require_tools
from tests.prereq import missing

pytestmark = [pytest.mark.integration, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "packaging" / "docker" / "build.sh"
DOCKERFILE = REPO / "packaging" / "docker" / "Dockerfile"
IMAGE_REF = "docker.io/nodeagent-test/nodeagent:build"
NAMESPACE = "k8s.io"
MEMORY_LIMIT = 512 << 20
SPOOL = "/var/lib/nodeagent/spool"

Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture(scope="module")
def image_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The OCI archive that build.sh writes (the image itself is removed from buildah's storage)."""
    require_tools()
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            missing(f"{tool} (apt-get install {tool})")
    archive = tmp_path_factory.mktemp("image") / "nodeagent.oci.tar"
    started = time.monotonic()
    res = subprocess.run(
        [str(BUILD_SH), "-t", IMAGE_REF, "-o", str(archive), "--rmi"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "SOURCE_DATE_EPOCH": "0"},
    )
    assert res.returncode == 0, f"build.sh failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-6000:]}"
    print(f"build.sh took {time.monotonic() - started:.0f}s:\n{res.stderr}{res.stdout}")
    assert archive.is_file()
    return archive


def oci_config(archive: Path) -> dict[str, Any]:
    """The image configuration (``config`` of the OCI image config blob) of the one image in an OCI archive."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> Any:
            member = tar.extractfile("blobs/" + digest.replace(":", "/"))
            assert member is not None
            return json.load(member)

        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [IMAGE_REF]
        manifest = blob(index["manifests"][0]["digest"])
        config: dict[str, Any] = blob(manifest["config"]["digest"])
        return config


def test_image_configuration(image_archive: Path) -> None:
    config = oci_config(image_archive)["config"]
    labels = config["Labels"]
    assert {
        k: labels[k]
        for k in labels
        if k.startswith("org.opencontainers.image.") and k != "org.opencontainers.image.base.name"
    } == {
        "org.opencontainers.image.title": "nodeagent",
        "org.opencontainers.image.description": (
            "Node-level observability agent: host, cgroup, network and NVML metrics for Prometheus, events for ELK."
        ),
        "org.opencontainers.image.version": "0.1.0",
        "org.opencontainers.image.revision": os.environ.get("NODEAGENT_REVISION", "unknown"),
        "org.opencontainers.image.created": "1970-01-01T00:00:00Z",
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    assert labels["org.opencontainers.image.base.name"].startswith("localhost/nodeagent-base:bookworm-")
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    assert "TMPDIR=/tmp" in config["Env"]
    assert config["Entrypoint"] == ["/opt/nodeagent/bin/nodeagent"]
    assert config["Cmd"] == ["run"]
    assert set(config["Volumes"]) == {"/tmp", SPOOL}
    assert "Healthcheck" not in config  # Kubernetes probes /healthz and /readyz
    instructions = [line.split()[0].upper() for line in DOCKERFILE.read_text().splitlines() if line[:1].isalpha()]
    assert "HEALTHCHECK" not in instructions and instructions.count("FROM") == 2


def parse(body: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def host_meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name == key:
                return int(rest.split()[0]) * 1024
    raise KeyError(key)


def host_interface() -> str:
    """The interface of the host's default route (else any non-loopback one, else lo)."""
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return fields[0]
    others = sorted(d for d in os.listdir("/sys/class/net") if d != "lo")
    return others[0] if others else "lo"


@pytest.fixture
def ctrd(image_archive: Path, tmp_path: Path) -> Iterator[Containerd]:
    with Containerd(tmp_path) as c:
        c.ctr("images", "import", "--snapshotter", c.snapshotter, str(image_archive), namespace=NAMESPACE, timeout=180)
        assert IMAGE_REF in c.images(NAMESPACE)
        yield c  # close() removes the containers, the image's content and snapshots with containerd's root


def run_image(ctrd: Containerd, container_id: str, cgroup: str, port: int) -> int:
    """``ctr run`` the image as the DaemonSet runs it; returns the init pid."""
    parent = cgroup.rsplit("/", 1)[0]
    ctrd.track_cgroup_parent(parent)
    ctrd.container_cgroups.add(cgroup)
    ctrd.seen_containers.add((NAMESPACE, container_id))
    env = {
        "NODEAGENT_PATHS__PROCFS": "/host/proc",
        "NODEAGENT_PATHS__SYSFS": "/host/sys",
        "NODEAGENT_PATHS__ROOTFS": "/host/root",
        "NODEAGENT_LISTEN": f"127.0.0.1:{port}",
        "NODEAGENT_INTERVAL": "1s",
        "NODEAGENT_KUBELET__PODRESOURCES__ENABLED": "false",
    }
    mounts = [
        "type=bind,src=/proc,dst=/host/proc,options=rbind:rro",
        "type=bind,src=/sys,dst=/host/sys,options=rbind:rro",
        "type=bind,src=/,dst=/host/root,options=rbind:rro:rslave",
        "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev:mode=1777:size=64m",
        f"type=tmpfs,src=tmpfs,dst={SPOOL},options=nosuid:nodev:mode=700:size=64m",
    ]
    flags = [
        "--detach",
        "--runtime",
        RUNTIME,
        "--runc-binary",
        ctrd.tools["runc"],
        "--runc-root",
        str(ctrd.runc_root),
        "--snapshotter",
        ctrd.snapshotter,
        "--cgroup",
        cgroup,
        "--log-uri",
        f"file://{ctrd.container_log(container_id)}",
        "--read-only",
        "--net-host",
        "--memory-limit",
        str(MEMORY_LIMIT),
    ]
    for m in mounts:
        flags += ["--mount", m]
    for k, v in env.items():
        flags += ["--env", f"{k}={v}"]
    ctrd.ctr("run", *flags, IMAGE_REF, container_id, namespace=NAMESPACE, timeout=60)
    pid, status = ctrd.tasks(NAMESPACE).get(container_id, (0, "absent"))
    assert status == "RUNNING", ctrd.container_output(container_id)
    ctrd.containers[(NAMESPACE, container_id)] = pid
    return pid


PROBE = r"""
import json, os, shutil
def writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(path, ".probe"))
        return "writable"
    except OSError as exc:
        return os.strerror(exc.errno)
compilers = [c for c in ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc", "make") if shutil.which(c)]
print(json.dumps({
    "/": writable("/"), "/opt/nodeagent": writable("/opt/nodeagent"), "/tmp": writable("/tmp"),
    "spool": writable("/var/lib/nodeagent/spool"), "/host/root/tmp": writable("/host/root/tmp"),
    "compilers": compilers, "pip": shutil.which("pip") or shutil.which("pip3"), "uid": os.getuid(),
}))
"""


def test_image_runs_as_daemonset_and_reports_the_host(ctrd: Containerd) -> None:
    container_id = secrets.token_hex(32)  # a container id as containerd makes them
    cgroup = f"/kubepods/burstable/pod{uuid.uuid4()}/{container_id}"  # a pod cgroup, as the kubelet names it
    port = free_port()
    run_image(ctrd, container_id, cgroup, port)
    url = f"http://127.0.0.1:{port}"

    try:
        wait_until(lambda: http_get(url + "/readyz")[0] == 200, 60, "/readyz to answer 200")
    except AssertionError:
        raise AssertionError(
            f"the agent in the container never got ready; its output:\n{ctrd.container_output(container_id)}"
        ) from None
    assert http_get(url + "/healthz")[0] == 200

    # Host memory, from the host's /proc through /host/proc.
    before_if = host_interface()
    wait_until(
        lambda: any(
            lab["id"] == cgroup
            for lab, _ in parse(http_get(url + "/metrics")[2]).get("container_spec_memory_limit_bytes", [])
        ),
        30,
        "the cgroup metrics",
    )
    status, _, body = http_get(url + "/metrics")
    assert status == 200
    metrics = parse(body)
    assert value(metrics, "node_memory_MemTotal_bytes") == host_meminfo("MemTotal")

    # The host's network namespace: every host interface, not a container's lone lo; the host's MTU.
    devices = {lab["device"] for lab, _ in metrics["node_network_receive_bytes_total"]}
    assert devices == set(os.listdir("/sys/class/net"))
    mtu = int(Path(f"/sys/class/net/{before_if}/mtu").read_text())
    assert value(metrics, "node_network_mtu_bytes", device=before_if) == mtu
    rx_after = int(Path(f"/sys/class/net/{before_if}/statistics/rx_bytes").read_text())
    assert 0 < value(metrics, "node_network_receive_bytes_total", device=before_if) <= rx_after

    # The host's root filesystem through /host/root, labelled with the host's mount point.
    st = os.statvfs("/")
    assert value(metrics, "node_filesystem_size_bytes", mountpoint="/") == st.f_blocks * st.f_frsize

    # cgroup metrics of a host cgroup: the container's own, as the host's /sys/fs/cgroup shows it.
    assert value(metrics, "container_spec_memory_limit_bytes", id=cgroup) == MEMORY_LIMIT
    usage = value(metrics, "container_memory_usage_bytes", id=cgroup)
    assert 10 << 20 < usage < MEMORY_LIMIT
    assert value(metrics, "container_cpu_usage_seconds_total", id=cgroup, cpu="total") > 0

    failing = {lab["collector"] for lab, v in metrics["nodeagent_collector_success"] if v != 1}
    assert failing <= {"gpu"}, f"collectors failing in the container: {failing}\n{ctrd.container_output(container_id)}"

    # Inside: read-only root, writable /tmp and spool only, read-only host mounts, no compilers, no pip.
    res = ctrd.ctr(
        "tasks",
        "exec",
        "--exec-id",
        "probe",
        container_id,
        "/opt/nodeagent/bin/python",
        "-c",
        PROBE,
        namespace=NAMESPACE,
    )
    probe = json.loads(res.stdout)
    assert probe == {
        "/": "Read-only file system",
        "/opt/nodeagent": "Read-only file system",
        "/tmp": "writable",
        "spool": "writable",
        "/host/root/tmp": "Read-only file system",
        "compilers": [],
        "pip": None,
        "uid": 0,
    }

    ctrd.stop_container(NAMESPACE, container_id)
