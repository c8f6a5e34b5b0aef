"""
The real agent against a real containerd (private root, state and socket; containers run by ``ctr`` with runc)
holding a pod labelled the way the kubelet labels one: every container metric carries the pod, namespace,
container and image; a stopped container's series go; start and stop are logged; a containerd restart empties
the names and they come back; and kubernetes-mixin's ``image!=""`` / ``container!=""`` queries find the pod
through a real Prometheus.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.agent_proc import AgentProcess, http_get, run_agent, wait_until
from tests.integration.containerd_harness import (
    BUSYBOX_REF,
    MEMORY_V1,
    PAUSE_REF,
    Containerd,
    prerequisites_and_image,
)
from tests.integration.peers import run_prometheus, scrape_config, wait_for_scrapes

pytestmark = [pytest.mark.integration, pytest.mark.root]

MEMORY = MEMORY_V1
BASE = ("id", "name", "image", "container", "pod", "namespace")


@pytest.fixture
def image() -> Path:
    return prerequisites_and_image()


@pytest.fixture
def ctrd(image: Path, tmp_path: Path) -> Iterator[Containerd]:
    with Containerd(tmp_path) as c:
        c.import_image(image, "k8s.io")
        yield c


def kubelet_labels(pod_uid: str, container: str = "") -> dict[str, str]:
    """The CRI labels the kubelet gives a container (or, without ``container``, a sandbox) of shop/web-0."""
    labels = {
        "io.kubernetes.pod.name": "web-0",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": pod_uid,
    }
    if container:
        labels["io.kubernetes.container.name"] = container
    else:  # the sandbox carries the pod's own labels and containerd's CRI kind marker
        labels |= {"io.cri-containerd.kind": "sandbox", "app": "web"}
    return labels


def scrape(agent: AgentProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, _, body = http_get(agent.url + "/metrics")
    assert status == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def rows_for(metrics: dict[str, list[tuple[dict[str, str], float]]], cgroup_id: str) -> dict[str, dict[str, str]]:
    """Every container_* sample of one cgroup, by family name and its non-base labels."""
    out = {}
    for name, samples in metrics.items():
        for labels, _ in samples:
            if name.startswith("container_") and labels.get("id") == cgroup_id:
                extra = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in BASE)
                out[f"{name}{{{extra}}}"] = {k: labels[k] for k in BASE}
    return out


def events(agent: AgentProcess, action: str) -> list[dict[str, Any]]:
    found = []
    for line in agent.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event.action") == action:
            found.append(record)
    return found


def config(tmp_path: Path, ctrd: Containerd, **extra: Any) -> Path:
    path = tmp_path / "nodeagent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "interval": "1s",
                "runtimes": {"containerd": {"socket": ctrd.address}, "labels": ["app"], **extra},
                # Nothing else on this machine may answer: the test's containerd is the only runtime.
                "kubelet": {"podresources": {"enabled": False}},
            }
        )
    )
    return path


def test_kubernetes_pod_on_containerd_gets_its_names_and_events(ctrd: Containerd, tmp_path: Path) -> None:
    pod_uid = str(uuid.uuid4())
    parent = f"/kubepods/burstable/pod{pod_uid}"
    sandbox, app, late = (secrets.token_hex(32) for _ in range(3))
    ctrd.run_container("k8s.io", sandbox, PAUSE_REF, parent, kubelet_labels(pod_uid), ())
    ctrd.run_container("k8s.io", app, BUSYBOX_REF, parent, kubelet_labels(pod_uid, "nginx"))
    app_id, pod_id, sandbox_id = f"{parent}/{app}", parent, f"{parent}/{sandbox}"

    with run_agent(["--config", str(config(tmp_path, ctrd))], tmp_dir=str(tmp_path)) as agent:
        wait_until(
            lambda: any(v["pod"] == "web-0" for v in rows_for(scrape(agent), app_id).values()),
            20,
            "the container's metrics to carry its pod name",
        )
        metrics = scrape(agent)
        app_rows = rows_for(metrics, app_id)
        expected = {
            "id": app_id,
            "name": app,
            "image": BUSYBOX_REF,
            "container": "nginx",
            "pod": "web-0",
            "namespace": "shop",
        }
        # Every container family this cgroup has (CPU, memory, IO, pids, spec) carries the kubelet label set.
        assert {
            "container_cpu_usage_seconds_total{cpu=total}",
            "container_memory_working_set_bytes{}",
            "container_spec_memory_limit_bytes{}",
            "container_threads{}",
        } <= set(app_rows)
        assert {k: v for k, v in app_rows.items() if v != expected} == {}
        pod_rows = rows_for(metrics, pod_id)
        assert pod_rows and all(
            v == {"id": pod_id, "name": "", "image": "", "container": "", "pod": "web-0", "namespace": "shop"}
            for v in pod_rows.values()
        )
        assert all(
            v["container"] == "" and v["image"] == PAUSE_REF and v["pod"] == "web-0"
            for v in rows_for(metrics, sandbox_id).values()
        )
        info = [labels for labels, _ in metrics["nodeagent_container_info"] if labels["id"] == app_id]
        assert len(info) == 1
        image_id = info[0].pop("image_id")
        assert image_id.startswith("sha256:") and len(image_id) == 71
        assert info[0] == {
            **expected,
            "runtime": "containerd",
            "container_id": app,
            "container_label_app": "web",
        }  # the pod's label, from its sandbox
        assert ({"runtime": "containerd", "socket": ctrd.address}, 1.0) in metrics["nodeagent_runtime_up"]

        # A container started and stopped while the agent runs: its start and stop are logged as ECS events.
        ctrd.run_container("k8s.io", late, BUSYBOX_REF, parent, kubelet_labels(pod_uid, "sidecar"))
        wait_until(lambda: rows_for(scrape(agent), f"{parent}/{late}"), 10, "the new container's series")
        ctrd.stop_container("k8s.io", late)
        wait_until(lambda: not rows_for(scrape(agent), f"{parent}/{late}"), 10, "the stopped container's series to go")
        wait_until(lambda: events(agent, "container_stop"), 10, "the stop event")
        start = next(e for e in events(agent, "container_start") if e["container.id"] == late)
        stop = next(e for e in events(agent, "container_stop") if e["container.id"] == late)
        for e in (start, stop):
            assert {
                k: e[k]
                for k in (
                    "kubernetes.pod.name",
                    "kubernetes.namespace",
                    "kubernetes.container.name",
                    "kubernetes.pod.uid",
                    "container.image.name",
                    "container.runtime",
                    "orchestrator.type",
                    "event.dataset",
                )
            } == {
                "kubernetes.pod.name": "web-0",
                "kubernetes.namespace": "shop",
                "kubernetes.container.name": "sidecar",
                "kubernetes.pod.uid": pod_uid,
                "container.image.name": "docker.io/nodeagent-test/busybox",
                "container.runtime": "containerd",
                "orchestrator.type": "kubernetes",
                "event.dataset": "nodeagent.container",
            }
            assert len(e["trace.id"]) == 32
        assert start["process.pid"] > 0 and start["event.type"] == ["start"]
        assert stop["process.exit_code"] == 137 and stop["event.type"] == ["end"]  # SIGKILL

        # containerd goes away: names empty (never stale), runtime_up 0; it comes back: names and up return.
        ctrd.stop()
        wait_until(
            lambda: (
                ({"runtime": "containerd", "socket": ctrd.address}, 0.0)
                in scrape(agent).get("nodeagent_runtime_up", [])
            ),
            15,
            "runtime_up to drop to 0",
        )
        wait_until(
            lambda: all(v["pod"] == "" for v in rows_for(scrape(agent), app_id).values()),
            10,
            "the names to empty while containerd is down",
        )
        assert rows_for(scrape(agent), app_id)  # the cgroup metrics themselves keep flowing
        ctrd.start()
        wait_until(
            lambda: all(v == expected for v in rows_for(scrape(agent), app_id).values()),
            40,
            "the names to come back after containerd restarted",
        )
        after = scrape(agent)
        assert ({"runtime": "containerd", "socket": ctrd.address}, 1.0) in after["nodeagent_runtime_up"]
        assert ({"runtime": "containerd"}, 1.0) in after["nodeagent_runtime_reconnects_total"]
        assert "runtime.disconnected" in agent.log() and agent.proc.poll() is None


MIXIN_RULES = """
groups:
- name: kubernetes-mixin-k8s.rules.container
  rules:
  - record: node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate
    expr: sum by (namespace, pod, container) (irate(container_cpu_usage_seconds_total{job="cadvisor", image!=""}[5m]))
  - record: node_namespace_pod_container:container_memory_working_set_bytes
    expr: container_memory_working_set_bytes{job="cadvisor", image!=""}
  - record: namespace_workload_pod:container_memory_rss:by_container
    expr: max by (namespace, pod, container) (container_memory_rss{job="cadvisor", container!="", image!=""})
"""


def test_kubernetes_mixin_container_filters_find_the_pod(ctrd: Containerd, tmp_path: Path) -> None:
    """kubernetes-mixin's recording rules, with their own ``image!=""`` and ``container!=""`` filters, through a
    real Prometheus scraping the agent under job="cadvisor": the app container is found, the sandbox and the
    pod-level cgroup are filtered out, as with the kubelet's cAdvisor."""
    pod_uid = str(uuid.uuid4())
    parent = f"/kubepods/burstable/pod{pod_uid}"
    sandbox, app = secrets.token_hex(32), secrets.token_hex(32)
    ctrd.run_container("k8s.io", sandbox, PAUSE_REF, parent, kubelet_labels(pod_uid), ())
    ctrd.run_container(
        "k8s.io", app, BUSYBOX_REF, parent, kubelet_labels(pod_uid, "nginx"), ["sh", "-c", "while :; do :; done"]
    )
    rules = tmp_path / "mixin.rules.yaml"
    rules.write_text(MIXIN_RULES)
    with run_agent(["--config", str(config(tmp_path, ctrd))], tmp_dir=str(tmp_path)) as agent:
        wait_until(
            lambda: any(v["pod"] == "web-0" for v in rows_for(scrape(agent), f"{parent}/{app}").values()),
            20,
            "names on the container's metrics",
        )
        instance = f"127.0.0.1:{agent.port}"
        with run_prometheus(scrape_config("cadvisor", {instance: {}}), [rules], tmp_path) as prom:
            wait_for_scrapes(prom, [instance], 4)

            def series(record: str) -> list[dict[str, str]]:
                return [r["metric"] for r in prom.query(record + '{namespace="shop"}')]

            wait_until(
                lambda: series("node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate"),
                30,
                "the CPU recording rule",
            )
            cpu = prom.query(
                'node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate{namespace="shop"}'
            )
            # Prometheus drops empty labels: the sandbox's row (image = the pause image) has no container label.
            by_container = {r["metric"].get("container", ""): float(r["value"][1]) for r in cpu}
            assert {r["metric"]["pod"] for r in cpu} == {"web-0"} and sorted(by_container) == ["", "nginx"]
            assert by_container["nginx"] > 0.2  # the busy loop burns most of a core
            assert by_container[""] < 0.05  # the sandbox sleeps
            ws = series("node_namespace_pod_container:container_memory_working_set_bytes")
            assert {(m["pod"], m.get("container", ""), m["image"]) for m in ws} == {
                ("web-0", "nginx", BUSYBOX_REF),
                ("web-0", "", PAUSE_REF),
            }
            rss = series("namespace_workload_pod:container_memory_rss:by_container")
            assert [(m["pod"], m["container"]) for m in rss] == [("web-0", "nginx")]
    assert os.path.isdir(f"{MEMORY}{parent}")


def test_doctor_names_each_socket_state(ctrd: Containerd, tmp_path: Path) -> None:
    """`nodeagent doctor` lists containerd as up with its containers, and says why a missing socket has no data."""
    pod_uid = str(uuid.uuid4())
    ctrd.run_container(
        "k8s.io",
        secrets.token_hex(32),
        BUSYBOX_REF,
        f"/kubepods/besteffort/pod{pod_uid}",
        kubelet_labels(pod_uid, "nginx"),
    )
    cfg = config(tmp_path, ctrd)
    up = subprocess.run(
        [sys.executable, "-m", "nodeagent", "doctor", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert "  containerd            up, 1 containers\n" in up.stdout, up.stdout
    assert "  OK      runtimes:" in up.stdout
    gone = str(tmp_path / "absent.sock")
    down = subprocess.run(
        [
            sys.executable,
            "-m",
            "nodeagent",
            "doctor",
            "--config",
            str(cfg),
            "--set",
            f"runtimes.containerd.socket={gone}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"  containerd            missing: socket {gone} does not exist\n" in down.stdout, down.stdout
    assert "NODATA  runtimes: no container runtime or kubelet socket answers (" in down.stdout
