"""
The bare-metal packaging in ``packaging/systemd``: the unit passes ``systemd-analyze verify`` and scores at most
4.0 ("OK") in ``systemd-analyze security --offline=true``; the example ``/etc/nodeagent/config.yaml`` is valid;
the unit, the example and the README agree (spool in the StateDirectory, every capability explained).

``docs/slurm.md``: the cgroups collector on the Slurm fixture trees (cgroup v1 ``slurm/uid_<u>/job_<j>/step_<s>``
and the cgroup/v2 plugin's ``system.slice/slurmstepd.scope/job_<j>/step_<s>``) exports the ids and labels the
document shows, and a process in a step's task cgroup (what NVML lists for a GPU) resolves to that step.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodeagent.collectors import cgroups
from nodeagent.collectors.cgroups import CgroupsCollector
from nodeagent.hostfs import HostPaths
from nodeagent.metrics import MetricFamily
from nodeagent.workloads import WorkloadResolver
from tests.prereq import require_binary

from .collectors.conftest import FIXTURES, by_name, make_ctx

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "packaging" / "systemd"
UNIT = SYSTEMD / "nodeagent.service"
CONFIG = SYSTEMD / "config.yaml"
README = SYSTEMD / "README.md"
SLURM_DOC = ROOT / "docs" / "slurm.md"
EXEC = "/opt/nodeagent/bin/nodeagent"
MAX_EXPOSURE = 4.0

# The hardening the issue asks for, as the unit must spell it.
REQUIRED = {
    "ProtectSystem": "strict",
    "ProtectHome": "read-only",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "StateDirectory": "nodeagent",
    "Restart": "on-failure",
    "User": "nodeagent",
    "ExecStart": f"{EXEC} run --config /etc/nodeagent/config.yaml",
}


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key`` -> every value assigned to it (systemd allows repeats), across sections; comments skipped."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def runnable_unit(tmp_path: Path, text: str) -> Path:
    """
    The unit written to ``tmp_path`` with ExecStart's ``/opt/nodeagent/bin/nodeagent`` replaced by an executable
    that exists here: ``systemd-analyze verify`` reports a missing ExecStart binary as an error. The installed
    ``nodeagent`` entry point is used where there is one, otherwise a ``/bin/sh`` stub; verify only checks that
    the file is executable, so either stands for the venv's entry point.
    """
    exe = shutil.which("nodeagent")
    if exe is None:
        stub = tmp_path / "nodeagent"
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        exe = str(stub)
    assert EXEC in text
    path = tmp_path / "nodeagent.service"
    path.write_text(text.replace(EXEC, exe))
    return path


def verify(analyze: str, unit: Path) -> list[str]:
    """Lines ``systemd-analyze verify`` prints about ``unit`` (it exits 0 on unknown keys and bad values)."""
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit.name in ln]
    if proc.returncode != 0:
        lines.append(f"exit status {proc.returncode}: {proc.stderr.strip()}")
    return lines


def exposure(analyze: str, unit: Path) -> tuple[float, str, int]:
    """Overall exposure, its verdict word and the exit status of ``systemd-analyze security --offline=true``."""
    proc = subprocess.run(
        [analyze, "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d) (\w+)", proc.stdout)
    assert m is not None, f"no exposure line in:\n{proc.stdout}\n{proc.stderr}"
    return float(m.group(1)), m.group(2), proc.returncode


@pytest.fixture
def analyze() -> str:
    return require_binary("systemd-analyze", "systemd")


@pytest.fixture
def unit_text() -> str:
    return UNIT.read_text()


# --- the unit -------------------------------------------------------------------------------------------------


def test_systemd_analyze_verify_passes(analyze: str, unit_text: str, tmp_path: Path) -> None:
    assert verify(analyze, runnable_unit(tmp_path, unit_text)) == []


def test_verify_catches_a_typo(analyze: str, unit_text: str, tmp_path: Path) -> None:
    """The check above can fail: an unknown key or a bad value is reported although verify exits 0."""
    bad = unit_text.replace("LockPersonality=yes", "LockPersonalty=yes").replace(
        "RestrictNamespaces=net", "RestrictNamespaces=nett"
    )
    problems = verify(analyze, runnable_unit(tmp_path, bad))
    assert any("LockPersonalty" in p for p in problems), problems
    assert any("nett" in p for p in problems), problems


def test_verify_reports_the_missing_venv_binary(analyze: str, unit_text: str, tmp_path: Path) -> None:
    """Why the test substitutes ExecStart: without /opt/nodeagent the shipped unit does not verify."""
    if Path(EXEC).exists():
        pytest.skip(f"{EXEC} exists on this machine")
    unit = tmp_path / "nodeagent.service"
    unit.write_text(unit_text)
    assert any(EXEC in p for p in verify(analyze, unit))


def test_security_exposure_is_ok(analyze: str) -> None:
    score, verdict, status = exposure(analyze, UNIT)
    assert score <= MAX_EXPOSURE, f"exposure {score} {verdict}"
    assert verdict in ("OK", "SAFE")
    assert status == 0  # --threshold=40 is the CI gate systemd itself applies


def test_security_gate_rejects_an_unhardened_unit(analyze: str, tmp_path: Path) -> None:
    """The same parsing and threshold fail a unit without hardening (Debian's node-exporter unit scores 9.2)."""
    unit = tmp_path / "nodeagent.service"
    unit.write_text(
        "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\nRestart=on-failure\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    score, verdict, status = exposure(analyze, unit)
    assert score > MAX_EXPOSURE
    assert verdict == "UNSAFE"
    assert status != 0


def test_unit_has_the_required_hardening(unit_text: str) -> None:
    settings = unit_settings(unit_text)
    assert {k: settings.get(k, [""])[-1] for k in REQUIRED} == REQUIRED
    families = set(settings["RestrictAddressFamilies"][-1].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # setns(CLONE_NEWNET) into workload network namespaces is the one namespace operation allowed.
    assert settings["RestrictNamespaces"] == ["net"]
    assert "RestartPreventExitStatus" in settings and settings["RestartPreventExitStatus"] == ["2"]


def test_capabilities_are_bounded_and_explained(unit_text: str) -> None:
    settings = unit_settings(unit_text)
    ambient = set(settings["AmbientCapabilities"][-1].split())
    bounding = set(settings["CapabilityBoundingSet"][-1].split())
    assert ambient == bounding == {"CAP_SYS_PTRACE", "CAP_SYS_ADMIN"}
    readme = README.read_text()
    for cap in sorted(bounding):
        assert cap in readme, f"{cap} is not explained in {README.relative_to(ROOT)}"
        assert re.search(rf"#.*{cap}", unit_text), f"{cap} has no comment in the unit"


def test_spool_is_in_the_state_directory(unit_text: str) -> None:
    """ProtectSystem=strict leaves only the StateDirectory writable: the spool must be inside it."""
    state = unit_settings(unit_text)["StateDirectory"][-1]
    spool = yaml.safe_load(CONFIG.read_text())["logs"]["ship"]["spool_dir"]
    assert Path(spool).is_relative_to(Path("/var/lib") / state)
    # The agent's own default is there too, for a config file that leaves the key out.
    effective = check_config(CONFIG)
    assert effective["logs"]["ship"]["spool_dir"] == "/var/lib/nodeagent/spool"


# --- the example configuration --------------------------------------------------------------------------------


def check_config(path: Path) -> dict[str, object]:
    """``nodeagent config check`` on ``path``: the effective configuration it prints."""
    proc = subprocess.run(
        [sys.executable, "-m", "nodeagent", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    first, _, rest = proc.stdout.partition("\n")
    assert first == f"{path}: valid"
    effective = yaml.safe_load(rest)
    assert isinstance(effective, dict)
    return effective


def test_example_config_is_valid() -> None:
    effective = check_config(CONFIG)
    assert effective["listen"] == "0.0.0.0:10142"
    collectors = effective["collectors"]
    assert isinstance(collectors, dict)
    assert "slurm_job" in collectors["cgroups"]["kinds"]


def test_config_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text(CONFIG.read_text().replace("listen:", "listn:"))
    proc = subprocess.run(
        [sys.executable, "-m", "nodeagent", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "listn" in proc.stderr


# --- Slurm (docs/slurm.md) --------------------------------------------------------------------------------------

CGROUP = FIXTURES / "cgroup"
V1 = CGROUP / "v1"
V2 = CGROUP / "v2-systemd"
V1_JOB = "/slurm/uid_1000/job_77"
V2_JOB = "/system.slice/slurmstepd.scope/job_1234"
INFO_KEYS = ("kind", "slurm_job", "slurm_step", "slurm_uid")


def slurm_cycle(tree: Path, procfs: Path | None = None) -> dict[str, MetricFamily]:
    paths = HostPaths(procfs=str(procfs or FIXTURES / "proc"), sysfs=str(CGROUP / "sys"), cgroupfs=str(tree))
    collector = cgroups.SPEC.factory(make_ctx("cgroups", paths), cgroups.CgroupsConfig(kinds=["slurm_job"]))
    assert isinstance(collector, CgroupsCollector)
    return by_name(collector.collect_sync())


def slurm_info(families: dict[str, MetricFamily]) -> dict[str, tuple[str, ...]]:
    info = families["nodeagent_workload_info"]
    out = {}
    for labels, value in info.samples:
        row = dict(zip(info.labelnames, labels, strict=True))
        assert value == 1
        out[row["id"]] = tuple(row[k] for k in INFO_KEYS)
    return out


def test_slurm_v1_job_and_step_rows() -> None:
    families = slurm_cycle(V1)
    assert slurm_info(families) == {
        V1_JOB: ("slurm_job", "77", "", "1000"),
        f"{V1_JOB}/step_0": ("slurm_job", "77", "0", "1000"),
    }
    usage = families["container_cpu_usage_seconds_total"]
    ids = {dict(zip(usage.labelnames, labels, strict=True))["id"]: v for labels, v in usage.samples}
    # The job row includes its step (cpuacct.usage is hierarchical): sum over slurm_step="" only.
    assert ids == {V1_JOB: pytest.approx(450.912338871), f"{V1_JOB}/step_0": pytest.approx(450.110229087)}
    labels = dict(zip(usage.labelnames, usage.samples[0][0], strict=True))
    assert {k: labels[k] for k in ("name", "image", "container", "pod", "namespace")} == dict.fromkeys(
        ("name", "image", "container", "pod", "namespace"), ""
    )


def test_slurm_v2_job_and_step_rows() -> None:
    info = slurm_info(slurm_cycle(V2))
    # The cgroup/v2 plugin's slurmstepd.scope/system (the stepds) and the steps' slurm/ and user/task_<n>
    # sub-cgroups are not workloads; the uid is not in v2 paths.
    assert info == {
        V2_JOB: ("slurm_job", "1234", "", ""),
        f"{V2_JOB}/step_0": ("slurm_job", "1234", "0", ""),
        f"{V2_JOB}/step_batch": ("slurm_job", "1234", "batch", ""),
    }


@pytest.mark.parametrize(
    ("tree", "line", "step"),
    [
        (V1, f"4:cpu,cpuacct:{V1_JOB}/step_0/task_0\n3:memory:{V1_JOB}/step_0/task_0\n", f"{V1_JOB}/step_0"),
        (V2, f"0::{V2_JOB}/step_0/user/task_1\n", f"{V2_JOB}/step_0"),
        (V2, f"0::{V2_JOB}/step_batch/slurm\n", f"{V2_JOB}/step_batch"),
    ],
)
def test_a_task_process_resolves_to_its_step(tree: Path, line: str, step: str, tmp_path: Path) -> None:
    """What the gpu collector does with each PID NVML lists: /proc/<pid>/cgroup -> the enclosing step."""
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(line)
    resolver = WorkloadResolver(HostPaths(procfs=str(tmp_path), cgroupfs=str(tree)))
    w = resolver.resolve(4242)
    assert w is not None
    assert (w.id, w.kind, w.parent) == (step, "slurm_job", step.rsplit("/", 1)[0])
    assert w.slurm_job == step.split("job_")[1].split("/")[0]


def test_slurm_doc_shows_the_tested_ids() -> None:
    doc = SLURM_DOC.read_text()
    for text in (V1_JOB, f"{V1_JOB}/step_0", V2_JOB, f"{V2_JOB}/step_batch", 'slurm_step=""', "slurm_uid"):
        assert text in doc, f"docs/slurm.md does not show {text}"
