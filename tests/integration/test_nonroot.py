"""
The agent without root, and credentials never in its output.

Least privilege: the real agent runs as uid/gid 65534 with exactly the capabilities that nodeagent.privileges lists
for this host and configuration, as ambient capabilities (what systemd's ``AmbientCapabilities=`` gives), next to the
same agent run as root, against a real containerd holding a pod with a network namespace of its own and a socket
open to the agent's group (containerd's ``[grpc] gid``). Both must report the same collector successes and the same
families, including the pod's ``container_network_*`` rows and its names. Then each listed capability is taken away
in turn: ``nodeagent doctor`` names it under its collector with the metrics lost, and ``nodeagent once`` shows those
metrics really gone while every collector still succeeds; the same for the socket's group.

Credentials: an agent serving TLS with basic auth and bearer tokens, shipping to a Logstash http input whose URL
carries a user and password (refused, then rejected with 401, then accepted), with its web-config and token file
broken and reloaded, writes none of the passwords, tokens, private key or Authorization values anywhere in its
output, nor in what it ships; ``config check`` and start-up errors print none of them either.

The interpreter may live below a directory uid 65534 cannot search (pyenv under /root): the unprivileged process
then starts in a private mount namespace where that directory is a world-searchable tmpfs holding only the needed
subdirectory, bound back; the namespace, and so the mount, ends with the process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import shlex
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import nodeagent
from nodeagent.config import build_config
from nodeagent.hostfs import HostPaths
from nodeagent.privileges import CAPABILITY_NAMES, needs_here
from tests.doubles.logstash_http import LogstashHttpInputDouble
from tests.doubles.tls import make_tls_files
from tests.integration.agent_proc import free_port, http_get, started_process, stop_process, wait_until
from tests.integration.containerd_harness import PAUSE_REF, Containerd, prerequisites_and_image
from tests.prereq import missing, require_binary

pytestmark = [pytest.mark.integration, pytest.mark.root]

NOBODY = 65534
MOUNT_POINTS_EXCLUDE = r"^/(dev|proc|run/credentials/.+|sys|tmp|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
REPO = Path(nodeagent.__file__).resolve().parents[1]


# --- running a command as an unprivileged user ----------------------------------------------------------------------


def _searchable_by_others(path: str) -> bool:
    return bool(os.stat(path).st_mode & stat.S_IXOTH)


def _blocked_directories(paths: Iterable[str]) -> dict[str, set[str]]:
    """
    For each directory that others may not search on the way to one of ``paths``: the names below it that lead to
    them. Fails if the path below such a directory is blocked again (one level is all this test bridges).
    """
    out: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for i in range(1, len(parts)):
            directory = os.path.join(*parts[:i])
            if _searchable_by_others(directory):
                continue
            out.setdefault(directory, set()).add(parts[i])
            below = [os.path.join(*parts[:j]) for j in range(i + 1, len(parts))]
            if not all(_searchable_by_others(d) for d in below):
                pytest.fail(f"{path}: more than one directory on the way is closed to other users")
            break
    return out


@dataclass
class Unprivileged:
    """Starts commands as uid/gid 65534, no supplementary groups, with exactly the ambient capabilities asked for."""

    workdir: Path
    unshare: str
    setpriv: str
    blocked: dict[str, set[str]]

    def command(self, capabilities: Iterable[str], argv: Sequence[str], mounts: Sequence[str] = ()) -> list[str]:
        """The command line: a private mount namespace, the ``mounts`` commands in it, then setpriv, then ``argv``."""
        caps = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(capabilities))])
        steps = list(mounts)
        for n, (directory, children) in enumerate(sorted(self.blocked.items())):
            stash = self.workdir / f"stash-{n}"
            for child in sorted(children):
                (stash / child).mkdir(parents=True, exist_ok=True)
                steps.append(
                    f"mount --bind {shlex.quote(os.path.join(directory, child))} {shlex.quote(str(stash / child))}"
                )
            steps.append(f"mount -t tmpfs -o mode=0755,size=1m natest-reach {shlex.quote(directory)}")
            for child in sorted(children):
                target = os.path.join(directory, child)
                steps.append(f"mkdir {shlex.quote(target)}")
                steps.append(f"mount --move {shlex.quote(str(stash / child))} {shlex.quote(target)}")
        drop = (
            f'exec {shlex.quote(self.setpriv)} --reuid={NOBODY} --regid={NOBODY} --clear-groups --inh-caps="$0" '
            '--ambient-caps="$0" --bounding-set="$0" --no-new-privs -- "$@"'
        )
        script = " && ".join([*steps, drop])
        return [self.unshare, "--mount", "--propagation", "private", "--", "sh", "-c", script, caps, *argv]

    def env(self) -> dict[str, str]:
        """The environment: the test's, without NODEAGENT_* keys, with a home the user can enter."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODEAGENT_")}
        return env | {"HOME": str(self.workdir), "PYTHONDONTWRITEBYTECODE": "1"}

    def run(
        self, capabilities: Iterable[str], args: Sequence[str], mounts: Sequence[str] = (), timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``python -m nodeagent ARGS`` as the user, to completion."""
        cmd = self.command(capabilities, [sys.executable, "-m", "nodeagent", *args], mounts)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env(), cwd=self.workdir)


def _workdir(prefix: str) -> Path:
    """A test-only directory every user may search (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[Unprivileged]:
    if os.geteuid() != 0:
        missing("root (to start the agent as uid 65534 with chosen capabilities)")
    workdir = _workdir("natest-nonroot-")
    try:
        needed = [
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable)),
            str(REPO),
        ]
        yield Unprivileged(
            workdir,
            require_binary("unshare", "util-linux"),
            require_binary("setpriv", "util-linux"),
            _blocked_directories(needed),
        )
        assert [] == _processes_of(workdir), "processes started as uid 65534 are still running"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _processes_of(workdir: Path) -> list[int]:
    """Processes of uid 65534 whose command line names ``workdir``: every one this module started, none else."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if (
                entry.isdigit()
                and os.stat(f"/proc/{entry}").st_uid == NOBODY
                and str(workdir).encode() in Path(f"/proc/{entry}/cmdline").read_bytes()
            ):
                found.append(int(entry))
    return found


# --- the scene: a containerd pod with its own network namespace ------------------------------------------------------


@dataclass
class Scene:
    """What the least-privilege tests run against."""

    ctrd: Containerd
    pod_id: str  # the pod's cgroup path (the id label)
    container_id: str  # the sandbox container's id
    interface: str  # the veth end inside the pod's network namespace
    config: Path


def _pod_exclude(pod_cgroup: str) -> str:
    """A cgroups ``exclude`` regex that keeps only the pod and the directories on the way to it (other tests make
    cgroups on this machine at the same time)."""
    first, *rest = pod_cgroup.strip("/").split("/")
    pattern = "(?:$|/)"
    for part in reversed(rest):
        pattern = f"(?:$|/{re.escape(part)}{pattern})"
    return f"^/(?!{re.escape(first)}{pattern})"


@pytest.fixture(scope="module")
def scene(unprivileged: Unprivileged) -> Iterator[Scene]:
    image = prerequisites_and_image()
    ip = require_binary("ip", "iproute2")
    veth = f"natest{secrets.token_hex(2)}"
    try:
        with Containerd(unprivileged.workdir) as ctrd:
            # containerd's socket directory is 0711 and its socket root:<agent's group> 0660, as with
            # `[grpc] gid = <gid of nodeagent>` in its config.toml.
            for d in {ctrd.base, ctrd.sock_dir}:
                d.chmod(0o711)
            os.chown(ctrd.address, 0, NOBODY)
            os.chmod(ctrd.address, 0o660)
            ctrd.import_image(image, "k8s.io")
            pod_uid = str(uuid.uuid4())
            parent = f"/kubepods/besteffort/pod{pod_uid}"
            sandbox = secrets.token_hex(32)
            labels = {
                "io.kubernetes.pod.name": "web-0",
                "io.kubernetes.pod.namespace": "shop",
                "io.kubernetes.pod.uid": pod_uid,
                "io.cri-containerd.kind": "sandbox",
            }
            pid = ctrd.run_container("k8s.io", sandbox, PAUSE_REF, parent, labels, ())
            # The pod's namespace gets a veth end (lo alone is not reported); the root-owned pause process holds it.
            subprocess.run(
                [ip, "link", "add", f"{veth}h", "type", "veth", "peer", "name", f"{veth}c", "netns", str(pid)],
                check=True,
            )
            subprocess.run(["nsenter", "-t", str(pid), "-n", ip, "link", "set", f"{veth}c", "up"], check=True)
            subprocess.run([ip, "link", "set", f"{veth}h", "up"], check=True)
            config = unprivileged.workdir / "nodeagent.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "interval": "1s",
                        "runtimes": {
                            "containerd": {"socket": ctrd.address},
                            **{name: {"enabled": False} for name in ("docker", "podman", "cri")},
                        },
                        "kubelet": {"podresources": {"enabled": False}},
                        "collectors": {
                            "cgroups": {"exclude": _pod_exclude(parent)},
                            # node_exporter's default plus /tmp: other tests mount file systems below their private
                            # pytest directories, which uid 65534 may not search (the filesystem row of the table).
                            "filesystem": {"mount_points_exclude": MOUNT_POINTS_EXCLUDE},
                        },
                    }
                )
            )
            config.chmod(0o644)
            yield Scene(ctrd, parent, sandbox, f"{veth}c", config)
    finally:
        with contextlib.suppress(OSError):
            if os.path.exists(f"/sys/class/net/{veth}h"):
                subprocess.run([ip, "link", "del", f"{veth}h"], check=False)


def _listed_capabilities(config: Path) -> frozenset[str]:
    """The capabilities the table says this configuration uses on this host."""
    cfg = build_config(str(config), {}, {})
    paths = HostPaths(cfg.paths.procfs, cfg.paths.sysfs, cfg.paths.rootfs, cfg.paths.cgroupfs)
    return frozenset(f.need.capability for f in needs_here(cfg, paths) if f.need.capability)


Metrics = dict[str, list[tuple[dict[str, str], float]]]


def _parse(text: str) -> tuple[set[str], Metrics]:
    families: set[str] = set()
    samples: Metrics = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return families, samples


def _by_collector(samples: Metrics, name: str) -> dict[str, float]:
    return {labels["collector"]: value for labels, value in samples.get(name, [])}


def _rows(samples: Metrics, name: str, **labels: str) -> list[dict[str, str]]:
    return [lab for lab, _ in samples.get(name, []) if all(lab.get(k) == v for k, v in labels.items())]


def _scrape(port: int) -> tuple[set[str], Metrics]:
    status, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert 200 == status
    return _parse(body.decode())


def _privileged_rows(scene: Scene, samples: Metrics) -> dict[str, int]:
    """How many rows of what needs privileges the scrape holds: the pod's network counters and its names."""
    return {
        "container_network": len(
            _rows(samples, "container_network_receive_packets_total", id=scene.pod_id, interface=scene.interface)
        ),
        "names": len(
            _rows(
                samples,
                "nodeagent_container_info",
                id=f"{scene.pod_id}/{scene.container_id}",
                pod="web-0",
                namespace="shop",
                image=PAUSE_REF,
            )
        ),
        "runtime_up": len(
            [1 for lab, v in samples.get("nodeagent_runtime_up", []) if lab.get("runtime") == "containerd" and v == 1]
        ),
    }


def _status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _mask(capabilities: Iterable[str]) -> int:
    return sum(1 << CAPABILITY_NAMES.index(c) for c in capabilities)


def test_unprivileged_agent_with_the_listed_capabilities_matches_root(unprivileged: Unprivileged, scene: Scene) -> None:
    listed = _listed_capabilities(scene.config)
    # On this host and configuration the table lists the two capabilities of per-workload network counters.
    assert frozenset({"CAP_SYS_PTRACE", "CAP_SYS_ADMIN"}) == listed

    ports = {"root": free_port(), "nonroot": free_port()}
    args = {who: ["run", "--config", str(scene.config), "--listen", f"127.0.0.1:{port}"] for who, port in ports.items()}
    cmds = {
        "root": [sys.executable, "-m", "nodeagent", *args["root"]],
        "nonroot": unprivileged.command(listed, [sys.executable, "-m", "nodeagent", *args["nonroot"]]),
    }
    logs = {who: unprivileged.workdir / f"agent-{who}.log" for who in cmds}

    def ready(port: int) -> bool:
        return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200

    with (
        started_process(
            cmds["root"], logs["root"], lambda: ready(ports["root"]), "the root agent", env=unprivileged.env()
        ),
        started_process(
            cmds["nonroot"],
            logs["nonroot"],
            lambda: ready(ports["nonroot"]),
            "the unprivileged agent",
            env=unprivileged.env(),
        ) as nonroot,
    ):
        # The process is uid 65534 with exactly the listed capabilities, ambient, and nothing it could gain more from.
        assert f"{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}" == _status_field(nonroot.pid, "Uid")
        for key in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
            assert _mask(listed) == int(_status_field(nonroot.pid, key), 16), key
        assert "1" == _status_field(nonroot.pid, "NoNewPrivs")

        def both_complete() -> bool:
            return all(all(_privileged_rows(scene, _scrape(p)[1]).values()) for p in ports.values())

        with contextlib.suppress(AssertionError):
            wait_until(both_complete, 30, "the pod's network rows and names in both agents")
        root_families, root = _scrape(ports["root"])
        nonroot_families, unpriv = _scrape(ports["nonroot"])

    assert {"container_network": 1, "names": 1, "runtime_up": 1} == _privileged_rows(scene, root)
    assert _privileged_rows(scene, root) == _privileged_rows(scene, unpriv), logs["nonroot"].read_text()[-3000:]
    assert _by_collector(root, "nodeagent_collector_success") == _by_collector(unpriv, "nodeagent_collector_success")
    assert _by_collector(root, "nodeagent_collector_has_data") == _by_collector(unpriv, "nodeagent_collector_has_data")
    assert 1.0 == min(_by_collector(unpriv, "nodeagent_collector_success").values())
    assert root_families == nonroot_families


def test_each_listed_capability_is_named_by_doctor_and_its_metrics_are_lost_without_it(
    unprivileged: Unprivileged, scene: Scene
) -> None:
    listed = _listed_capabilities(scene.config)
    config = ["--config", str(scene.config)]

    full = unprivileged.run(listed, ["doctor", *config])
    assert 0 == full.returncode, full.stdout + full.stderr
    assert "  nothing missing: every collector has the privileges it uses here\n" in full.stdout
    assert "  capabilities this configuration uses here: CAP_SYS_ADMIN, CAP_SYS_PTRACE\n" in full.stdout
    reference = _parse(unprivileged.run(listed, ["once", *config]).stdout)[1]
    assert {"container_network": 1, "names": 1, "runtime_up": 1} == _privileged_rows(scene, reference)

    for removed in sorted(listed):
        kept = listed - {removed}
        doctor = unprivileged.run(kept, ["doctor", *config])
        lines = doctor.stdout.splitlines()
        at = lines.index(next(line for line in lines if line.startswith("  OK      network: ")))
        assert 0 == doctor.returncode, doctor.stdout  # a missing privilege loses metrics, no collector fails
        assert f"          missing {removed}" == lines[at + 1], doctor.stdout
        assert lines[at + 3].startswith("            lost without it: container_network_{receive,transmit}_"), (
            doctor.stdout
        )
        assert "  1 missing (under each collector above); how to grant them: docs/security.md" in lines

        once = unprivileged.run(kept, ["once", *config])
        samples = _parse(once.stdout)[1]
        assert {"container_network": 0, "names": 1, "runtime_up": 1} == _privileged_rows(scene, samples), removed
        assert _by_collector(reference, "nodeagent_collector_success") == _by_collector(
            samples, "nodeagent_collector_success"
        )
        assert _rows(samples, "node_network_up", device="lo")  # host interfaces are unaffected


def test_the_runtime_socket_group_is_named_by_doctor_and_names_are_lost_without_it(
    unprivileged: Unprivileged, scene: Scene
) -> None:
    listed = _listed_capabilities(scene.config)
    config = ["--config", str(scene.config)]
    os.chown(scene.ctrd.address, 0, 0)  # the socket back to root:root 0660, containerd's default
    try:
        doctor = unprivileged.run(listed, ["doctor", *config])
        once = unprivileged.run(listed, ["once", *config])
    finally:
        os.chown(scene.ctrd.address, 0, NOBODY)
    lines = doctor.stdout.splitlines()
    status = [i for i, line in enumerate(lines) if re.match(r"  (OK|NODATA|FAIL) +\w+", line)]
    runtimes = next(i for i in status if " runtimes" in lines[i])
    gpu = next(i for i in status if i > runtimes)
    denied = f"          missing containerd {scene.ctrd.address}: connect: Permission denied"
    samples = _parse(once.stdout)[1]

    assert 0 == doctor.returncode, doctor.stdout
    assert denied in lines[runtimes:gpu], doctor.stdout  # under the runtimes collector
    assert "nodeagent_container_info" in lines[lines.index(denied) + 2]
    assert {"container_network": 1, "names": 0, "runtime_up": 0} == _privileged_rows(scene, samples)
    # The pod is still measured from its cgroup: only its names are gone.
    assert _rows(samples, "container_memory_usage_bytes", id=f"{scene.pod_id}/{scene.container_id}", image="")


def test_under_hidepid_doctor_names_cap_sys_ptrace_for_each_collector_that_reads_other_processes(
    unprivileged: Unprivileged, scene: Scene
) -> None:
    """With /proc mounted hidepid=invisible, CAP_SYS_PTRACE is what shows other users' processes: doctor lists it
    under network, filesystem and gpu when it is missing, and nothing when it is held."""
    proc = unprivileged.workdir / "hidepid-proc"
    proc.mkdir(exist_ok=True)
    mount = [f"mount -t proc -o hidepid=invisible natest-proc {shlex.quote(str(proc))}"]
    args = ["doctor", "--config", str(scene.config), "--path.procfs", str(proc)]
    listed = _listed_capabilities(scene.config)

    held = unprivileged.run(listed, args, mount)
    lacking = unprivileged.run(listed - {"CAP_SYS_PTRACE"}, args, mount)
    lines = lacking.stdout.splitlines()
    status = {
        line.split(":")[0].split()[-1]: i for i, line in enumerate(lines) if re.match(r"  (OK|NODATA|FAIL) ", line)
    }
    under = {
        name: lines[i + 1 : min([j for j in status.values() if j > i] + [len(lines)])] for name, i in status.items()
    }

    assert "  nothing missing: every collector has the privileges it uses here" in held.stdout.splitlines(), held.stdout
    for collector in ("network", "filesystem", "gpu"):
        assert "          missing CAP_SYS_PTRACE" in under[collector], lacking.stdout
    grants = [line for line in lines if line.startswith("            needed to ") and "hidepid=" in line]
    assert 2 == len(grants), lacking.stdout  # filesystem's and gpu's hidepid rows; network needs it anyway
    assert "  3 missing (under each collector above); how to grant them: docs/security.md" in lines


# --- credentials never in the output --------------------------------------------------------------------------------

PASSWORD = "natest-Basic-Pa55-" + secrets.token_hex(4)
WRONG_PASSWORD = "natest-Wrong-Pa55-" + secrets.token_hex(4)
TOKEN = "natest-bearer-" + secrets.token_hex(16)
WRONG_TOKEN = "natest-wrong-bearer-" + secrets.token_hex(16)
SHIP_USER = "natest-shipper"
SHIP_PASSWORD = "natest-Ship-Pa55-" + secrets.token_hex(4)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _key_material(path: Path) -> list[str]:
    """The base64 lines of a PEM private key (what a leak of its content would show)."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


def _secrets(key_file: Path, bcrypt_hash: str) -> dict[str, str]:
    out = {
        "basic password": PASSWORD,
        "wrong basic password": WRONG_PASSWORD,
        "basic header": _b64(f"prometheus:{PASSWORD}"),
        "wrong basic header": _b64(f"prometheus:{WRONG_PASSWORD}"),
        "bearer token": TOKEN,
        "wrong bearer token": WRONG_TOKEN,
        "shipping password": SHIP_PASSWORD,
        "shipping Authorization": _b64(f"{SHIP_USER}:{SHIP_PASSWORD}"),
        "bcrypt hash": bcrypt_hash,
    }
    out |= {f"private key line {i}": line for i, line in enumerate(_key_material(key_file))}
    return out


def _leaks(text: str, secrets_: dict[str, str]) -> list[str]:
    return [f"{what} in line: {line[:300]}" for line in text.splitlines() for what, s in secrets_.items() if s in line]


def _get(url: str, context: ssl.SSLContext, authorization: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _start(cmd: list[str], log_path: Path, unprivileged: Unprivileged) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its stdout and stderr in ``log_path``."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=unprivileged.env(), cwd=unprivileged.workdir
        )


@pytest.fixture
def secret_dir(unprivileged: Unprivileged) -> Iterator[Path]:
    """The agent's secrets, owned by uid 65534 and readable by it alone (as a deployment would keep them)."""
    path = unprivileged.workdir / f"secrets-{secrets.token_hex(3)}"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _own(*paths: Path) -> None:
    for p in paths:
        os.chown(p, NOBODY, NOBODY)
        p.chmod(0o600)


async def test_no_credential_reaches_the_logs_or_the_shipped_records(
    unprivileged: Unprivileged, secret_dir: Path
) -> None:
    tls = make_tls_files(secret_dir / "tls")
    os.chown(secret_dir / "tls", NOBODY, NOBODY)
    bcrypt_hash = "$2y$" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()[4:]
    web = secret_dir / "web.yml"
    good_web = (
        f"tls_server_config:\n  cert_file: {tls.server_cert}\n  key_file: {tls.server_key}\n"
        f"basic_auth_users:\n  prometheus: '{bcrypt_hash}'\n"
    )
    web.write_text(good_web)
    tokens = secret_dir / "tokens"
    tokens.write_text(f"# scrapers\n{TOKEN}\n")
    _own(web, tokens, tls.server_cert, tls.server_key, tls.ca_cert, tls.client_cert, tls.client_key)
    secret_values = _secrets(tls.server_key, bcrypt_hash)

    ship_port = free_port()
    port = free_port()
    log_path = unprivileged.workdir / f"agent-credentials-{port}.log"
    cmd = unprivileged.command(
        (),
        [
            sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{port}", "--log-level", "debug",
            "--web.config.file", str(web),
            "--set", f"web.bearer_token_file={tokens}",
            "--set", "interval=1s",
            "--set", "logs.ship.protocol=http",
            "--set", f"logs.ship.hosts=[http://{SHIP_USER}:{SHIP_PASSWORD}@127.0.0.1:{ship_port}/]",
            "--set", "logs.ship.spool_dir=",
            "--set", "logs.ship.backoff_initial=100ms",
            "--set", "logs.ship.backoff_max=500ms",
            "--set", "logs.ship.timeout=5s",
        ],
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}/metrics"
    client = tls.client_context()

    def log() -> str:
        return log_path.read_text(errors="replace")

    async def until(predicate: Any, what: str, within: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}:\n{log()[-3000:]}"
            await asyncio.sleep(0.1)

    async def get(authorization: str | None) -> int:
        return await asyncio.to_thread(_get, url, client, authorization)

    proc = _start(cmd, log_path, unprivileged)
    double = LogstashHttpInputDouble(port=ship_port, user=SHIP_USER, password=WRONG_PASSWORD)
    try:
        await until(lambda: "agent.started" in log() or proc.poll() is not None, "the agent to start")
        assert proc.poll() is None, log()
        # Logstash down: connection refused.
        await until(lambda: "ship.failed" in log(), "a refused shipment to be logged")
        # Scrapers, right and wrong, each way.
        statuses = [
            await get(None),
            await get("Basic " + _b64(f"prometheus:{WRONG_PASSWORD}")),
            await get("Basic " + _b64(f"prometheus:{PASSWORD}")),
            await get(f"Bearer {WRONG_TOKEN}"),
            await get(f"Bearer {TOKEN}"),
            await get(f"Bearer {PASSWORD}"),
            await get("Basic " + _b64(f"prometheus:{TOKEN}")),
        ]
        assert [401, 401, 200, 401, 200, 401, 401] == statuses
        # Logstash up, but it expects another password: 401.
        await double.serve()
        await until(lambda: any(r.status == 401 for r in double.requests), "a shipment rejected with 401")
        await until(lambda: "authentication failed" in log(), "the 401 to be logged")
        # Broken files: each reload fails and says so; the last good configuration stays.
        tokens.write_text("# every token commented out\n")
        web.write_text(good_web.replace(f"'{bcrypt_hash}'", f"'{bcrypt_hash}"))  # an unterminated quote
        _own(web, tokens)
        await until(lambda: "web.bearer_tokens_reload_failed" in log(), "the token file's reload failure")
        await get(f"Bearer {TOKEN}")  # a request makes the agent look at the web-config too
        await until(lambda: "web.config_reload_failed" in log(), "the web-config's reload failure")
        assert 200 == await get("Basic " + _b64(f"prometheus:{PASSWORD}"))
        # Logstash accepts: the backlog, including every failure above, is delivered.
        double.password = SHIP_PASSWORD
        await until(lambda: "ship.connected" in log() and double.events, "records accepted by Logstash")
        await until(lambda: any("web.config_reload_failed" in str(e) for e in double.events), "the failures shipped")
    finally:
        stop_process(proc)
        await double.shutdown()

    sent = {r.headers.get("Authorization") for r in double.requests}
    assert "Basic " + _b64(f"{SHIP_USER}:{SHIP_PASSWORD}") in sent  # the secret was in play, on the wire only
    output = log()
    assert 0 == proc.returncode, output[-3000:]
    assert [] == _leaks(output, secret_values)
    assert [] == _leaks("\n".join(str(e) for e in double.events), secret_values)


def test_config_check_prints_no_credential(unprivileged: Unprivileged, secret_dir: Path) -> None:
    """The effective configuration that `config check` prints names the files and hosts, never a password."""
    tls = make_tls_files(secret_dir / "tls")
    tokens = secret_dir / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    config = secret_dir / "nodeagent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "web": {"bearer_token_file": str(tokens)},
                "logs": {
                    "ship": {
                        "protocol": "http",
                        "hosts": [f"https://{SHIP_USER}:{SHIP_PASSWORD}@127.0.0.1:8443/"],
                        "tls": {
                            "enabled": True,
                            "ca_file": str(tls.ca_cert),
                            "cert_file": str(tls.client_cert),
                            "key_file": str(tls.client_key),
                        },
                    }
                },
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "nodeagent", "config", "check", str(config)], capture_output=True, text=True, timeout=60
    )

    assert 0 == proc.returncode, proc.stderr
    assert "127.0.0.1:8443" in proc.stdout and str(tokens) in proc.stdout
    assert [] == _leaks(proc.stdout + proc.stderr, _secrets(tls.client_key, "$2y$not-used"))


@pytest.mark.parametrize(
    ("flags", "exit_code"),
    [
        # An invalid host: the message names the key and the bad value, not the password.
        ([f"logs.ship.hosts=[ftp://{SHIP_USER}:{SHIP_PASSWORD}@127.0.0.1:21/]"], 2),
        # TLS to a plain http URL: refused at start-up with exit 2.
        ([f"logs.ship.hosts=[http://{SHIP_USER}:{SHIP_PASSWORD}@127.0.0.1:9/]", "logs.ship.tls.enabled=true"], 2),
    ],
)
def test_start_up_errors_print_no_credential(flags: list[str], exit_code: int) -> None:
    args = ["--set", "logs.ship.protocol=http", "--set", "logs.ship.spool_dir="]
    for flag in flags:
        args += ["--set", flag]
    proc = subprocess.run(
        [sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{free_port()}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode == 0:
        pytest.fail("the agent started with an invalid shipping configuration")

    assert exit_code == proc.returncode, proc.stderr[-2000:]
    assert "logs.ship" in proc.stderr
    assert SHIP_PASSWORD not in proc.stdout + proc.stderr
    assert _b64(f"{SHIP_USER}:{SHIP_PASSWORD}") not in proc.stdout + proc.stderr
