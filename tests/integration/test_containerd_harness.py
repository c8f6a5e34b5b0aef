"""
Smoke test of the private containerd of ``containerd_harness``: image built with umoci, containerd with the CRI
plugin, a kubepods-style container run with ``ctr``, stopped, containerd restarted, and nothing left after close.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import pytest

from tests.integration.agent_proc import wait_until
from tests.integration.containerd_harness import (
    BUSYBOX_REF,
    CRI_PLUGIN,
    IMAGE_REFS,
    MEMORY_V1,
    PAUSE_REF,
    Containerd,
    alive,
    mounts_under,
    prerequisites_and_image,
    proc_cgroup,
)

pytestmark = [pytest.mark.integration, pytest.mark.root]

MEMORY = MEMORY_V1


@pytest.fixture
def image() -> Path:
    """The busybox/pause OCI archive (built once per test process); root, tools and a v1 memory tree required."""
    return prerequisites_and_image()


def pod_labels(pod_uid: str, container: str = "nginx") -> dict[str, str]:
    """The labels a kubelet gives a container of pod ``shop/web-0``."""
    return {
        "io.kubernetes.pod.name": "web-0",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": pod_uid,
        "io.kubernetes.container.name": container,
    }


def test_harness_lifecycle(image: Path, tmp_path: Path) -> None:
    """Start, import, run in a pod cgroup, stop, restart, and close with a container still running."""
    pod_uid = str(uuid.uuid4())
    parent = f"/kubepods/burstable/pod{pod_uid}"
    cid = secrets.token_hex(32)
    kept = secrets.token_hex(32)
    kubepods_existed = os.path.isdir(f"{MEMORY}/kubepods")
    with Containerd(tmp_path) as ctrd:  # closes on the way out, also when an assertion fails
        assert ctrd.plugins()[CRI_PLUGIN] == "ok", ctrd.log(40)
        for ns in ("k8s.io", "default"):
            names = ctrd.import_image(image, ns)
            assert set(IMAGE_REFS) <= set(names)

        labels = pod_labels(pod_uid)
        args = ["sh", "-c", "echo up; exec sleep 3600"]
        pid = ctrd.run_container("k8s.io", cid, BUSYBOX_REF, parent, labels, args)
        memory_dir = Path(f"{MEMORY}{parent}/{cid}")
        assert memory_dir.is_dir()
        assert pid in [int(p) for p in (memory_dir / "cgroup.procs").read_text().split()]
        assert proc_cgroup(pid)["memory"] == f"{parent}/{cid}"
        assert labels.items() <= ctrd.container_info("k8s.io", cid)["Labels"].items()
        wait_until(lambda: ctrd.container_output(cid) == "up\n", 10, "the container's output in its log file")

        ctrd.stop_container("k8s.io", cid)
        assert not memory_dir.exists()
        assert not alive(pid)
        assert cid not in ctrd.container_ids("k8s.io")

        # The pause image runs its own entrypoint; it stays running across a restart and until close().
        kept_pid = ctrd.run_container("default", kept, PAUSE_REF, parent, pod_labels(pod_uid, "pause"), args=())
        with open(f"/proc/{kept_pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[:2] == [b"/bin/sleep", b"2147483647"]

        ctrd.restart()
        assert "Server:" in ctrd.ctr("version", namespace=None).stdout
        assert ctrd.tasks("default")[kept] == (kept_pid, "RUNNING")
    assert ctrd.closed and ctrd.leftovers() == []
    assert not alive(kept_pid)
    assert not Path(f"{MEMORY}{parent}").exists()
    if not kubepods_existed:
        assert not Path(f"{MEMORY}/kubepods").exists()
    assert mounts_under([str(tmp_path)]) == []
    assert not ctrd.base.exists()


def test_close_after_containerd_died(image: Path, tmp_path: Path) -> None:
    """close() cleans up through runc and by pid when containerd is gone with a container still running."""
    pod_uid = str(uuid.uuid4())
    parent = f"/kubepods/besteffort/pod{pod_uid}"
    ctrd = Containerd(tmp_path)
    try:
        ctrd.start()
        ctrd.import_image(image, "k8s.io")
        pid = ctrd.run_container("k8s.io", secrets.token_hex(32), BUSYBOX_REF, parent, pod_labels(pod_uid))
        ctrd.kill()
        assert alive(pid)
    finally:
        problems = ctrd.close()
    assert problems == []
    assert not alive(pid)
    assert not Path(f"{MEMORY}{parent}").exists()
