"""
The least-privilege table (nodeagent.privileges): capability masks decoded as the kernel numbers them (checked
against capsh), the needs that apply for a configuration, the file and socket checks run by a real unprivileged
process (a child of the test that dropped to uid 65534), doctor's wording, and docs/security.md showing the same
table as the code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import privileges
from nodeagent.config import build_config
from nodeagent.hostfs import HostPaths, ParseError
from nodeagent.privileges import (
    CAPABILITY_NAMES,
    NEEDS,
    Finding,
    capability_names,
    describe,
    missing,
    needs_here,
    parse_effective_capabilities,
    procfs_options,
    table_rows,
)
from tests.prereq import missing as prerequisite_missing
from tests.prereq import require_binary

NOBODY = 65534
DOCS = Path(__file__).resolve().parents[1] / "docs" / "security.md"

STATUS = (
    "Name:\tnodeagent\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t65534\t65534\t65534\t65534\n"
    "CapInh:\t0000000000280000\nCapPrm:\t0000000000280000\nCapEff:\t0000000000280000\n"
    "CapBnd:\t0000000000280000\nCapAmb:\t0000000000280000\nNoNewPrivs:\t1\n"
)


# --- capability masks -----------------------------------------------------------------------------------------------


def test_capability_numbers_are_the_kernels() -> None:
    """Bit n of a mask is the n-th name, exactly as libcap's capsh decodes the same mask (every known bit)."""
    capsh = require_binary("capsh", "libcap2-bin")
    full = (1 << len(CAPABILITY_NAMES)) - 1
    out = subprocess.run([capsh, f"--decode={full:#x}"], capture_output=True, text=True, check=True).stdout
    decoded = out.strip().split("=", 1)[1].split(",")

    assert [name.lower() for name in CAPABILITY_NAMES] == decoded
    assert frozenset({"CAP_SYS_PTRACE", "CAP_SYS_ADMIN"}) == capability_names(0x280000)
    assert frozenset({"CAP_CHOWN", "CAP_41"}) == capability_names(1 | 1 << 41)  # a bit newer than the table


def test_effective_capabilities_from_status() -> None:
    """CapEff is what counts (not CapPrm/CapBnd); a missing or garbled line is a ParseError naming the file."""
    text = STATUS.replace("CapEff:\t0000000000280000", "CapEff:\t0000000000000400")

    assert frozenset({"CAP_NET_BIND_SERVICE"}) == parse_effective_capabilities(text)
    assert frozenset() == parse_effective_capabilities(STATUS.replace("0000000000280000\nCapBnd", "0\nCapBnd"))
    with pytest.raises(ParseError, match=r"/proc/7/status: no CapEff line"):
        parse_effective_capabilities("Name:\tx\n", "/proc/7/status")
    with pytest.raises(ParseError, match=r"CapEff: 'zz' is not a hexadecimal mask"):
        parse_effective_capabilities("CapEff:\tzz\n")


def test_a_real_process_reports_the_capabilities_it_was_given() -> None:
    """A process started with a bounding set of exactly two capabilities reads exactly those from its own status."""
    if os.geteuid() != 0:
        prerequisite_missing("root (to start a process with a chosen capability set)")
    setpriv = require_binary("setpriv", "util-linux")
    code = "from nodeagent.privileges import effective_capabilities as e; print(','.join(sorted(e())))"
    out = subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-all,+sys_ptrace,+net_bind_service", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert "CAP_NET_BIND_SERVICE,CAP_SYS_PTRACE" == out.strip()


# --- which needs apply ------------------------------------------------------------------------------------------------


def _needs(tmp_path: Path, **flags: Any) -> list[Finding]:
    # A procfs without hidepid and with the default unprivileged port start, so only the configuration decides.
    proc = tmp_path / "proc"
    (proc / "sys" / "net" / "ipv4").mkdir(parents=True, exist_ok=True)
    port_start = proc / "sys" / "net" / "ipv4" / "ip_unprivileged_port_start"
    if not port_start.exists():
        port_start.write_text("1024\n")
    defaults = {
        "paths.procfs": str(proc),
        "collectors.textfile.directory": str(tmp_path / "no-textfile"),
        "runtimes.docker.enabled": False,
        "runtimes.podman.enabled": False,
        "runtimes.cri.enabled": False,
        "runtimes.containerd.enabled": False,
        "kubelet.podresources.enabled": False,
    }
    cfg = build_config(None, {}, {**defaults, **flags})
    return needs_here(cfg, HostPaths(cfg.paths.procfs, cfg.paths.sysfs, cfg.paths.rootfs, cfg.paths.cgroupfs))


def _capabilities(findings: list[Finding]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in findings:
        if f.need.capability:
            out.setdefault(f.scope, set()).add(f.need.capability)
    return out


def test_capabilities_follow_the_configuration(tmp_path: Path) -> None:
    """Per-workload network counters use CAP_SYS_PTRACE and CAP_SYS_ADMIN; a low port CAP_NET_BIND_SERVICE; a
    configuration that turns those features off uses none."""
    assert {"network": {"CAP_SYS_PTRACE", "CAP_SYS_ADMIN"}} == _capabilities(_needs(tmp_path))
    assert {} == _capabilities(_needs(tmp_path, **{"collectors.network.workloads": False}))
    assert {} == _capabilities(_needs(tmp_path, **{"collectors.network.enabled": False}))
    low = _needs(tmp_path, **{"collectors.network.workloads": False, "listen": "127.0.0.1:443"})
    assert {"agent": {"CAP_NET_BIND_SERVICE"}} == _capabilities(low)
    assert ["listen 127.0.0.1:443: port 443 is below net.ipv4.ip_unprivileged_port_start=1024"] == [
        f.detail for f in low
    ]
    (tmp_path / "proc" / "sys" / "net" / "ipv4" / "ip_unprivileged_port_start").write_text("80\n")
    assert [] == _needs(tmp_path, **{"collectors.network.workloads": False, "listen": "127.0.0.1:443"})


def test_missing_keeps_file_needs_and_capabilities_not_held(tmp_path: Path) -> None:
    found = _needs(tmp_path, listen="127.0.0.1:80")
    file_need = Finding("textfile", NEEDS["textfile"][0], "/x: no read/search permission")

    assert ["CAP_SYS_ADMIN"] == [
        f.detail for f in missing(found, frozenset({"CAP_SYS_PTRACE", "CAP_NET_BIND_SERVICE"}))
    ]
    assert [] == missing(found, frozenset(CAPABILITY_NAMES))
    assert [file_need] == missing([file_need], frozenset(CAPABILITY_NAMES))  # no capability is the grant of a file


MOUNTINFO = (
    "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "98 22 0:51 / /host/proc rw,relatime - proc proc rw,hidepid=invisible,gid=4321\n"
    "99 22 0:52 / /other rw,relatime - tmpfs tmpfs rw,size=1024k\n"
)


def test_procfs_options_of_the_configured_proc_mount() -> None:
    """The superblock options of the proc mount at paths.procfs; nothing for a directory that is not one."""
    assert {"rw": "", "hidepid": "invisible", "gid": "4321"} == procfs_options("/host/proc", MOUNTINFO)
    assert {"rw": ""} == procfs_options("/proc", MOUNTINFO)
    assert {} == procfs_options("/other", MOUNTINFO)  # a tmpfs, not proc
    assert {} == procfs_options("/nowhere", MOUNTINFO)


# --- file and socket checks as a real unprivileged process ------------------------------------------------------------


def _as_nobody(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a child process that dropped to uid/gid 65534 without supplementary groups (so without any
    capability), its JSON result returned here."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            with os.fdopen(write_fd, "w") as out:
                json.dump(fn(), out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status), "the unprivileged child failed"
    return json.loads(text)


@pytest.fixture
def lab() -> Iterator[Path]:
    """A test-only directory every user may search (pytest's own tmp_path is private to root)."""
    if os.geteuid() != 0:
        prerequisite_missing("root (to drop to uid 65534 in a child)")
    path = Path(tempfile.mkdtemp(prefix="natest-priv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _unix_listener(path: Path, mode: int, gid: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    os.chown(path, 0, gid)
    path.chmod(mode)
    return sock


def test_file_and_socket_needs_as_uid_65534(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Run by a process of uid 65534 without capabilities, each check names exactly what that process cannot reach,
    and nothing that is absent or that it can reach; run as root (DAC capabilities), nothing is missing.
    """
    proc = lab / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "sys" / "net" / "ipv4").mkdir(parents=True)
    (proc / "sys" / "net" / "ipv4" / "ip_unprivileged_port_start").write_text("1024\n")
    private, public = lab / "private", lab / "public"
    for d, mode in ((private, 0o700), (public, 0o755)):
        d.mkdir(mode=mode)
        (d / "mnt").mkdir()
    # The collector's mount table (a fixture: no real mount is needed to check the path to a mount point).
    (proc / "1" / "mountinfo").write_text(
        f"22 1 259:1 / / rw - ext4 /dev/vda1 rw\n"
        f"40 22 0:40 / {private}/mnt rw - tmpfs natest rw\n"
        f"41 22 0:41 / {public}/mnt rw - tmpfs natest rw\n"
        f"42 22 0:42 / /sys rw - sysfs sysfs rw\n"
    )
    textfile = lab / "textfile"
    textfile.mkdir(mode=0o700)
    (textfile / "a.prom").write_text("natest 1\n")
    rootonly = lab / "rootonly"
    rootonly.mkdir(mode=0o755)
    token = lab / "tokens"
    token.write_text("natest-token\n")
    token.chmod(0o600)
    webcfg = lab / "web.yml"
    webcfg.write_text("tls_server_config: {cert_file: server.pem, key_file: server-key.pem}\n")
    (lab / "server.pem").write_text("")
    (lab / "server-key.pem").write_text("")
    (lab / "server-key.pem").chmod(0o600)
    gpu_node = lab / "nvidia0"
    gpu_node.write_text("")
    gpu_node.chmod(0o600)
    monkeypatch.setattr(privileges, "NVIDIA_DEVICES", (str(lab / "nvidia[0-9]*"),))
    stale = lab / "stale.sock"
    with contextlib.closing(_unix_listener(stale, 0o666)):
        pass  # bound and closed: the file stays, nothing listens (ECONNREFUSED is not a privilege problem)
    with (
        contextlib.closing(_unix_listener(lab / "root.sock", 0o660)),
        contextlib.closing(_unix_listener(lab / "group.sock", 0o660, gid=NOBODY)),
    ):
        cfg = build_config(
            None,
            {},
            {
                "paths.procfs": str(proc),
                "collectors.textfile.directory": str(textfile),
                "collectors.network.workloads": False,
                "logs.ship.hosts": ["127.0.0.1:5044"],
                "logs.ship.spool_dir": str(rootonly / "spool"),
                "web.config_file": str(webcfg),
                "web.bearer_token_file": str(token),
                "runtimes.containerd.socket": str(lab / "root.sock"),
                "runtimes.docker.socket": str(lab / "group.sock"),
                "runtimes.podman.socket": str(stale),
                "runtimes.cri.socket": str(lab / "absent.sock"),
                "kubelet.podresources.enabled": False,
            },
        )
        paths = HostPaths(cfg.paths.procfs, cfg.paths.sysfs, cfg.paths.rootfs, cfg.paths.cgroupfs)

        def check() -> list[list[str]]:
            return [[f.scope, f.detail] for f in needs_here(cfg, paths)]

        as_nobody = _as_nobody(check)
        as_root = check()

    assert [
        ["filesystem", f"{private}/mnt: no search permission"],
        ["textfile", f"{textfile}: no read/search permission"],
        ["runtimes", f"containerd {lab}/root.sock: connect: Permission denied"],
        ["gpu", f"{gpu_node}: no read/write permission"],
        ["agent", f"logs.ship.spool_dir {rootonly}/spool: {rootonly}: no write/search permission"],
        ["agent", f"{webcfg}: tls_server_config.key_file {lab}/server-key.pem: no read permission"],
        ["agent", f"web.bearer_token_file {token}: no read permission"],
    ] == as_nobody
    assert [] == as_root


def test_a_file_below_a_private_directory_is_named_with_the_reason(lab: Path) -> None:
    """A path whose directory above cannot be searched is reported as such (the stat fails before any mode check)."""
    private = lab / "private"
    private.mkdir(mode=0o700)
    textfile = private / "textfile"
    textfile.mkdir()
    cfg = build_config(
        None,
        {},
        {
            "collectors.textfile.directory": str(textfile),
            "collectors.network.workloads": False,
            "collectors.filesystem.enabled": False,
            "collectors.gpu.enabled": False,
            "runtimes.docker.enabled": False,
            "runtimes.podman.enabled": False,
            "runtimes.cri.enabled": False,
            "runtimes.containerd.enabled": False,
            "kubelet.podresources.enabled": False,
        },
    )

    found = _as_nobody(lambda: [f.detail for f in needs_here(cfg, HostPaths())])

    assert [f"{textfile}: permission denied on a directory above it"] == found


# --- what doctor prints, and the documented table -------------------------------------------------------------------


def test_describe_says_what_is_missing_what_for_and_what_is_lost() -> None:
    cap = Finding("network", NEEDS["network"][1], "CAP_SYS_ADMIN")
    denied = "containerd /run/containerd/containerd.sock: connect: Permission denied"
    sock = Finding("runtimes", NEEDS["runtimes"][0], denied)

    lines = describe([cap, sock])

    assert [
        "missing CAP_SYS_ADMIN",
        "  needed to setns(2) into a workload's network namespace to open a netlink socket there",
        "  lost without it: container_network_{receive,transmit}_{bytes,packets,errors,packets_dropped}_total of "
        "every workload with a network namespace of its own",
    ] == lines["network"]
    assert f"missing {denied}" == lines["runtimes"][0]
    assert lines["runtimes"][1].startswith("  needed to connect(2) to the container runtime's API; grant: write ")
    assert "nodeagent_container_info" in lines["runtimes"][2]


def _markdown_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def test_docs_show_the_table_of_the_code() -> None:
    """Every row of the code's table is a row of docs/security.md's table, and the docs have no other row there."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("<!-- privileges-table -->")
    end = text.index("<!-- /privileges-table -->")
    documented = [line for line in text[start:end].splitlines() if line.startswith("| ") and "---" not in line][1:]
    expected = [
        _markdown_row((f"`{scope}`", grant, purpose, lost, measured))
        for scope, grant, purpose, lost, measured in table_rows()
    ]

    assert expected == documented
