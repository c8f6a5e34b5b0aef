"""The kustomize base and overlays in packaging/kubernetes/: they build, the objects validate, and the DaemonSet keeps
its security settings, probes, host mounts and resources."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.config import build_config
from tests.prereq import missing, require_binary

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "packaging" / "kubernetes"
OVERLAYS = ["base", "overlays/gpu", "overlays/prometheus-operator"]
# kubernetes-validate ships the core API schemas only; these kinds are prometheus-operator CRDs.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
K8S_VERSION = "1.30"
HOST_MOUNTS = {
    "/host/proc": "/proc",
    "/host/sys": "/sys",
    "/host/root": "/",
    "/host/root/run/containerd": "/run/containerd",
    "/host/root/run/crio": "/run/crio",
    "/host/root/var/lib/kubelet/pod-resources": "/var/lib/kubelet/pod-resources",
}

_rendered: dict[str, list[dict[str, Any]]] = {}


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` builds from an overlay (cached per test session)."""
    if overlay not in _rendered:
        kubectl = require_binary("kubectl", "kubectl")
        proc = subprocess.run(
            [kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
        _rendered[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _rendered[overlay]


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in render(overlay) if d["kind"] == kind]


# Every DaemonSet of every overlay, by (overlay, name): test_overlay_builds checks that this is all of them.
DAEMONSETS = [
    ("base", "nodeagent"),
    ("overlays/gpu", "nodeagent"),
    ("overlays/gpu", "nodeagent-gpu"),
    ("overlays/prometheus-operator", "nodeagent"),
]


def daemonset(overlay: str, name: str) -> dict[str, Any]:
    (ds,) = [d for d in objects(overlay, "DaemonSet") if d["metadata"]["name"] == name]
    return ds


def container(ds: dict[str, Any]) -> dict[str, Any]:
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds(overlay: str) -> None:
    kinds = sorted(d["kind"] for d in render(overlay))
    assert [n for o, n in DAEMONSETS if o == overlay] == sorted(
        d["metadata"]["name"] for d in objects(overlay, "DaemonSet")
    )
    expected = ["ConfigMap", "DaemonSet", "Namespace", "Service", "ServiceAccount"]
    if overlay == "overlays/gpu":
        expected = sorted([*expected, "DaemonSet"])
    if overlay == "overlays/prometheus-operator":
        expected = sorted([*expected, *["ConfigMap"] * 6, "PrometheusRule", "ServiceMonitor"])
    assert expected == kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_strict(overlay: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate (pip install -e '.[dev]')")
    checked = 0
    for doc in render(overlay):
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 5


def test_strict_validation_rejects_unknown_fields() -> None:
    """The validator is really strict: a misspelt field in the DaemonSet is an error."""
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate (pip install -e '.[dev]')")
    (ds,) = objects("base", "DaemonSet")
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_crds_are_well_formed() -> None:
    """kubernetes-validate has no schema for the prometheus-operator CRDs; check what the overlay relies on."""
    (sm,) = objects("overlays/prometheus-operator", "ServiceMonitor")
    (svc,) = objects("overlays/prometheus-operator", "Service")
    assert "monitoring.coreos.com/v1" == sm["apiVersion"]
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert [svc["metadata"]["namespace"]] == sm["spec"]["namespaceSelector"]["matchNames"]
    assert ["metrics"] == [p["name"] for p in svc["spec"]["ports"]]
    assert ["metrics"] == [e["port"] for e in sm["spec"]["endpoints"]]
    (rule,) = objects("overlays/prometheus-operator", "PrometheusRule")
    assert "monitoring.coreos.com/v1" == rule["apiVersion"]
    # The same alerts as the Prometheus rule file (29 when this was written).
    generated = yaml.safe_load((REPO / "alerts" / "nodeagent.rules.yml").read_text())["groups"]
    expected = [r["alert"] for g in generated for r in g["rules"] if "alert" in r]
    assert len(expected) >= 29
    assert expected == [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


@pytest.mark.parametrize(("overlay", "name"), DAEMONSETS)
def test_daemonset_security(overlay: str, name: str) -> None:
    ds = daemonset(overlay, name)
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is False
    assert pod.get("hostIPC", False) is False
    assert pod["hostNetwork"] is True
    assert "ClusterFirstWithHostNet" == pod["dnsPolicy"]
    assert pod["automountServiceAccountToken"] is False
    assert "system-node-critical" == pod["priorityClassName"]
    assert {"type": "RuntimeDefault"} == pod["securityContext"]["seccompProfile"]
    sc = container(ds)["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert {"drop": ["ALL"]} == sc["capabilities"]  # no capability added: README "Capabilities"
    assert {"type": "RuntimeDefault"} == sc["seccompProfile"]
    assert "RollingUpdate" == ds["spec"]["updateStrategy"]["type"]
    assert [{"operator": "Exists"}] == pod["tolerations"]


@pytest.mark.parametrize(("overlay", "name"), DAEMONSETS)
def test_daemonset_probes_env_and_resources(overlay: str, name: str) -> None:
    ds = daemonset(overlay, name)
    c = container(ds)
    assert ["metrics"] == [p["name"] for p in c["ports"]]
    assert 10142 == c["ports"][0]["containerPort"]
    assert {"path": "/healthz", "port": "metrics"} == c["livenessProbe"]["httpGet"]
    assert {"path": "/readyz", "port": "metrics"} == c["readinessProbe"]["httpGet"]
    assert {"fieldRef": {"fieldPath": "spec.nodeName"}} == env(c)["NODE_NAME"]
    assert "/tmp" == env(c)["TMPDIR"]
    r = c["resources"]
    assert {"cpu": "50m", "memory": "96Mi"} == r["requests"]
    gpu = ds["metadata"]["name"] == "nodeagent-gpu"
    assert {"cpu": "500m", "memory": "320Mi" if gpu else "256Mi"} == r["limits"]
    assert "ghcr.io/nodeagent/nodeagent:0.1.0" == c["image"]
    assert "nvidia.com/gpu" not in str(r)


@pytest.mark.parametrize(("overlay", "name"), DAEMONSETS)
def test_daemonset_mounts(overlay: str, name: str) -> None:
    ds = daemonset(overlay, name)
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(ds)["volumeMounts"]}
    host = {
        path: volumes[m["name"]]["hostPath"]["path"] for path, m in mounts.items() if "hostPath" in volumes[m["name"]]
    }
    assert {**HOST_MOUNTS, "/var/lib/nodeagent": "/var/lib/nodeagent"} == host
    for path in HOST_MOUNTS:
        assert mounts[path].get("readOnly") is True, path
    assert "HostToContainer" == mounts["/host/root"]["mountPropagation"]
    assert mounts["/var/lib/nodeagent"].get("readOnly") is not True  # the log spool
    assert "DirectoryOrCreate" == volumes[mounts["/var/lib/nodeagent"]["name"]]["hostPath"]["type"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/nodeagent"]["readOnly"] is True
    cm_name = volumes[mounts["/etc/nodeagent"]["name"]]["configMap"]["name"]
    overlay_cms = [d["metadata"]["name"] for d in objects(overlay, "ConfigMap")]
    assert cm_name in overlay_cms
    assert [mounts["/etc/nodeagent"]["mountPath"] + "/config.yaml"] == [
        a for a in container(ds)["command"] if a.startswith("/etc/nodeagent")
    ]


def test_agent_config_is_valid_and_points_at_the_mounts(tmp_path: Path) -> None:
    (cm,) = [d for d in objects("base", "ConfigMap") if d["metadata"]["name"].startswith("nodeagent-config")]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = build_config(str(path), environ={})
    assert ("/host/proc", "/host/sys", "/host/root") == (cfg.paths.procfs, cfg.paths.sysfs, cfg.paths.rootfs)
    assert "0.0.0.0:10142" == cfg.listen
    # No hostPID: host PIDs cannot be resolved, so what depends on them is off (README "No hostPID").
    assert cfg.collector("gpu").processes is False
    assert cfg.collector("network").workloads is False
    sockets = {cfg.runtimes.containerd.socket, cfg.runtimes.cri.socket, cfg.kubelet.podresources.socket}
    mounted = [p.removeprefix("/host/root") for p in HOST_MOUNTS if p.startswith("/host/root/")]
    for socket in sockets:
        assert any(socket.startswith(m + "/") for m in mounted), socket


def test_gpu_overlay_splits_nodes_and_adds_nvml() -> None:
    by_name = {ds["metadata"]["name"]: ds for ds in objects("overlays/gpu", "DaemonSet")}
    assert ["nodeagent", "nodeagent-gpu"] == sorted(by_name)
    plain, gpu = by_name["nodeagent"]["spec"], by_name["nodeagent-gpu"]["spec"]
    assert plain["selector"] != gpu["selector"]
    assert {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}.items() <= env(
        container(by_name["nodeagent-gpu"])
    ).items()
    assert "NVIDIA_VISIBLE_DEVICES" not in env(container(by_name["nodeagent"]))
    assert "nvidia" == gpu["template"]["spec"]["runtimeClassName"]
    assert "runtimeClassName" not in plain["template"]["spec"]
    assert "true" == gpu["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.present"]
    term = plain["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [{"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}] == term["nodeSelectorTerms"][0][
        "matchExpressions"
    ]
    # Both are behind the one headless Service.
    (svc,) = objects("overlays/gpu", "Service")
    for ds in by_name.values():
        labels = ds["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()


def test_namespace_allows_host_access() -> None:
    (ns,) = objects("base", "Namespace")
    assert "privileged" == ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    assert all(d["metadata"].get("namespace") == "nodeagent" for d in render("base") if d["kind"] != "Namespace")
