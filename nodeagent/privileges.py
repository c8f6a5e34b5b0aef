"""
What each collector, and the agent itself, needs beyond a plain unprivileged user: Linux capabilities and file
accesses, and which metrics are lost without each (``NEEDS``); and checks of the running process against that table
for ``nodeagent doctor`` (``needs_here``, ``missing``).

The table was measured by running every collector as uid 65534 with one capability at a time and comparing with root
(docs/security.md has the commands); tests/integration/test_nonroot.py keeps it true. A need is reported only where
it costs something on this host: a capability where the feature that uses it is on, a path only where it exists.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import yaml

from nodeagent.collectors.filesystem import FilesystemConfig, parse_mountinfo
from nodeagent.collectors.network import NetworkConfig
from nodeagent.collectors.textfile import TextfileConfig
from nodeagent.config import AgentConfig, RuntimeSocketConfig
from nodeagent.hostfs import HostPaths, ParseError, read_text

# capabilities(7), by bit number (include/uapi/linux/capability.h, Linux 5.9+).
CAPABILITY_NAMES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# The agent's own: they describe this process, not the host, so they are not read under paths.procfs (as the self
# collector reads /proc/self through psutil).
SELF_STATUS = "/proc/self/status"
SELF_MOUNTINFO = "/proc/self/mountinfo"


def capability_names(mask: int) -> frozenset[str]:
    """The capability names of a bit mask (``CapEff`` of /proc/<pid>/status); unknown bits as ``CAP_<bit>``."""
    return frozenset(
        CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"CAP_{bit}"
        for bit in range(mask.bit_length())
        if mask >> bit & 1
    )


def parse_effective_capabilities(status: str, source: str = SELF_STATUS) -> frozenset[str]:
    """
    The effective capabilities from the text of /proc/<pid>/status (its ``CapEff:`` line, 16 hex digits).

    Raises:
        ParseError: no ``CapEff:`` line, or one that is not hexadecimal.
    """
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                return capability_names(int(value.strip(), 16))
            except ValueError:
                raise ParseError(f"{source}: CapEff: {value.strip()!r} is not a hexadecimal mask") from None
    raise ParseError(f"{source}: no CapEff line (the kernel writes one since Linux 2.6.26)")


def effective_capabilities(status_path: str = SELF_STATUS) -> frozenset[str]:
    """The effective capabilities of this process."""
    return parse_effective_capabilities(read_text(status_path), status_path)


@dataclass(frozen=True, slots=True)
class HostView:
    """What the checks look at: the configuration and the host roots."""

    cfg: AgentConfig
    paths: HostPaths


@dataclass(frozen=True, slots=True)
class Need:
    """
    One privilege: ``grant`` is what to give the agent (a capability, or an access to named paths), ``purpose`` what
    it is used for, ``lost`` the metrics (or behaviour) missing without it. ``capability`` names the capability that
    grants it where one is the way to grant it; empty for a file access, which ownership, group or mode grant.
    ``applies(view)`` returns one line per use of it on this host with this configuration: for a capability, its
    name when the feature that needs it is on; for a file access, each path this process cannot access (checked with
    its effective ids and capabilities). ``measured`` says how far the need was tried where the table was measured
    (docs/security.md): ``yes``, or what could not be tried there and why.
    """

    grant: str
    purpose: str
    lost: str
    applies: Callable[[HostView], list[str]]
    capability: str = ""
    measured: str = "yes"


@dataclass(frozen=True, slots=True)
class Finding:
    """A need that applies here: its scope (a collector, or ``agent``), the need, and what exactly (a capability's
    name, or the path and why this process cannot use it)."""

    scope: str
    need: Need
    detail: str


# --- checks ---------------------------------------------------------------------------------------------------------


def _capability(name: str, when: Callable[[HostView], bool]) -> Callable[[HostView], list[str]]:
    def applies(view: HostView) -> list[str]:
        return [name] if when(view) else []

    return applies


def _enabled(name: str) -> Callable[[HostView], bool]:
    return lambda view: view.cfg.collector(name).enabled


def _network_workloads(view: HostView) -> bool:
    cfg = view.cfg.collector("network")
    return cfg.enabled and isinstance(cfg, NetworkConfig) and cfg.workloads


def _hidepid(view: HostView) -> bool:
    """
    Whether ``paths.procfs`` is a proc mount with ``hidepid=`` whose ``gid=`` group this process is not in: then
    the /proc/<pid> directories of other users' processes are hidden from it unless it has CAP_SYS_PTRACE.
    """
    try:
        options = procfs_options(view.paths.procfs, read_text(SELF_MOUNTINFO))
    except OSError:
        return False
    if options.get("hidepid", "0") in ("0", "off"):
        return False
    gid = options.get("gid")
    return not (gid is not None and gid.isdigit() and int(gid) in {os.getegid(), *os.getgroups()})


def procfs_options(procfs: str, mountinfo: str) -> dict[str, str]:
    """
    The superblock options (``hidepid``, ``gid`` ...) of the proc mount at ``procfs`` in ``mountinfo`` (the text of
    /proc/self/mountinfo); empty if no proc file system is mounted there (a fixture tree). The last mount there wins.
    """
    target = os.path.realpath(procfs)
    found: dict[str, str] = {}
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        with contextlib.suppress(ValueError, IndexError):
            sep = fields.index("-", 6)
            if fields[4] == target and fields[sep + 1] == "proc":
                found = {key: value for key, _, value in (opt.partition("=") for opt in fields[sep + 3].split(","))}
    return found


def _access(path: str, mode: int) -> str | None:
    """
    ``None`` if this process may access ``path`` in ``mode`` (effective ids and capabilities, as the open or
    statfs itself will be checked), ``"absent"`` if it does not exist, else the reason.
    """
    try:
        os.stat(path)  # reaching it needs search permission on every directory above it
    except FileNotFoundError:
        return "absent"
    except PermissionError:
        return "permission denied on a directory above it"
    except OSError as exc:
        return exc.strerror or str(exc)
    if os.access(path, mode, effective_ids=True):
        return None
    wanted = "/".join(n for bit, n in ((os.R_OK, "read"), (os.W_OK, "write"), (os.X_OK, "search")) if mode & bit)
    return f"no {wanted} permission"


def _mount_points(view: HostView) -> list[str]:
    """The mount points the filesystem collector statfs()es (its mountinfo and excludes), under ``paths.rootfs``."""
    cfg = view.cfg.collector("filesystem")
    assert isinstance(cfg, FilesystemConfig)
    exclude_mp, exclude_fs = re.compile(cfg.mount_points_exclude), re.compile(cfg.fs_types_exclude)
    for source in (view.paths.proc("1", "mountinfo"), view.paths.proc("self", "mountinfo")):
        try:
            mounts = parse_mountinfo(read_text(source), source)
        except (OSError, ParseError):
            continue
        points = {m.mountpoint for m in mounts if not exclude_fs.match(m.fstype) and not exclude_mp.match(m.mountpoint)}
        return [view.paths.root(p) for p in sorted(points)]
    return []


def _unreachable_mounts(view: HostView) -> list[str]:
    if not view.cfg.collector("filesystem").enabled:
        return []
    out = []
    for point in _mount_points(view):
        reason = _access(os.path.dirname(point) or "/", os.X_OK)
        if reason is not None and reason != "absent":
            out.append(f"{point}: {reason}")
    return out


def _textfile_unreadable(view: HostView) -> list[str]:
    cfg = view.cfg.collector("textfile")
    if not cfg.enabled:
        return []
    assert isinstance(cfg, TextfileConfig)
    directory = view.paths.root(cfg.directory)
    reason = _access(directory, os.R_OK | os.X_OK)
    if reason == "absent":
        return []
    if reason is not None:
        return [f"{directory}: {reason}"]
    files = sorted(glob.glob(os.path.join(glob.escape(directory), "*.prom")))
    return [f"{path}: {why}" for path in files if (why := _access(path, os.R_OK)) not in (None, "absent")]


def connect_error(path: str, timeout: float = 1.0) -> int | None:
    """
    Try to connect to the unix socket at ``path`` and close at once: ``None`` if it accepts, else the errno
    (EACCES: no write permission on the socket or no search permission above it; ENOENT: no such socket;
    ECONNREFUSED: nothing listens).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except TimeoutError:
            return errno.ETIMEDOUT
        except OSError as exc:
            return exc.errno if exc.errno is not None else errno.EIO
    return None


def _sockets(view: HostView, configs: Mapping[str, RuntimeSocketConfig]) -> list[str]:
    out = []
    for name, cfg in configs.items():
        if not cfg.enabled:
            continue
        path = view.paths.root(cfg.socket)
        code = connect_error(path)
        if code in (errno.EACCES, errno.EPERM):
            out.append(f"{name} {path}: connect: {os.strerror(code)}")
    return out


def _runtime_sockets(view: HostView) -> list[str]:
    r = view.cfg.runtimes
    return _sockets(view, {"docker": r.docker, "podman": r.podman, "cri": r.cri, "containerd": r.containerd})


def _kubelet_socket(view: HostView) -> list[str]:
    return _sockets(view, {"kubelet-podresources": view.cfg.kubelet.podresources})


# NVML opens the device nodes in the agent's own /dev (a container gets them from the NVIDIA runtime), so these are
# not host paths under paths.rootfs.
NVIDIA_DEVICES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*")


def _nvidia_devices(view: HostView) -> list[str]:
    if not view.cfg.collector("gpu").enabled:
        return []
    nodes = sorted(p for pattern in NVIDIA_DEVICES for p in glob.glob(pattern))
    return [f"{p}: {why}" for p in nodes if (why := _access(p, os.R_OK | os.W_OK)) not in (None, "absent")]


def _listen_port(view: HostView) -> list[str]:
    port = int(view.cfg.listen.rpartition(":")[2])
    try:
        first = int(read_text(view.paths.proc("sys", "net", "ipv4", "ip_unprivileged_port_start")))
    except (OSError, ValueError):
        first = 1024  # the kernel's default
    if port < first:
        return [f"listen {view.cfg.listen}: port {port} is below net.ipv4.ip_unprivileged_port_start={first}"]
    return []


def _spool_dir(view: HostView) -> list[str]:
    ship = view.cfg.logs.ship
    if not ship.hosts or not ship.spool_dir:
        return []
    # The spool directory, or the nearest existing directory above it, in which it will be created.
    path = ship.spool_dir
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    reason = _access(path, os.W_OK | os.X_OK)
    return [] if reason is None else [f"logs.ship.spool_dir {ship.spool_dir}: {path}: {reason}"]


def _web_tls_files(web_config: str) -> dict[str, str]:
    """The TLS files a web-config file names (relative to its directory), by key; none if it cannot be read (the
    agent then refuses to start with a message naming the file, or keeps its last good configuration)."""
    try:
        tree = yaml.safe_load(read_text(web_config))
    except (OSError, yaml.YAMLError):
        return {}
    tls = tree.get("tls_server_config") if isinstance(tree, dict) else None
    if not isinstance(tls, dict):
        return {}
    base = os.path.dirname(web_config)
    return {
        f"tls_server_config.{key}": os.path.join(base, tls[key])
        for key in ("cert_file", "key_file", "client_ca_file")
        if isinstance(tls.get(key), str) and tls[key]
    }


def _secret_files(view: HostView) -> list[str]:
    """The files the agent reads at start-up and on every reload: the web-config and the TLS files it names, the
    bearer token file and the shipper's TLS files."""
    web, ship_tls = view.cfg.web, view.cfg.logs.ship.tls
    keys = {"web.config_file": web.config_file}
    if web.config_file:
        keys |= {f"{web.config_file}: {key}": path for key, path in _web_tls_files(web.config_file).items()}
    keys |= {
        "web.bearer_token_file": web.bearer_token_file,
        "logs.ship.tls.ca_file": ship_tls.ca_file,
        "logs.ship.tls.cert_file": ship_tls.cert_file,
        "logs.ship.tls.key_file": ship_tls.key_file,
    }
    out = []
    for key, path in keys.items():
        if path and (reason := _access(path, os.R_OK)) not in (None, "absent"):
            out.append(f"{key} {path}: {reason}")
    return out


# --- the table ------------------------------------------------------------------------------------------------------

_CONTAINER_NETWORK = "container_network_{receive,transmit}_{bytes,packets,errors,packets_dropped}_total"
_FILESYSTEM_VALUES = "node_filesystem_{size,free,avail}_bytes and node_filesystem_files{,_free}"
_RUNTIME_NAMES = (
    "the name, image, container, pod and namespace labels on the cgroups collector's container_* families, "
    "nodeagent_container_info, container start/stop events, and nodeagent_runtime_* for that runtime"
)

NEEDS: dict[str, tuple[Need, ...]] = {
    "network": (
        Need(
            "CAP_SYS_PTRACE",
            "stat and open /proc/<pid>/ns/net of another user's process (ptrace read access)",
            f"{_CONTAINER_NETWORK} of workloads whose processes belong to another user",
            _capability("CAP_SYS_PTRACE", _network_workloads),
            "CAP_SYS_PTRACE",
        ),
        Need(
            "CAP_SYS_ADMIN",
            "setns(2) into a workload's network namespace to open a netlink socket there",
            f"{_CONTAINER_NETWORK} of every workload with a network namespace of its own",
            _capability("CAP_SYS_ADMIN", _network_workloads),
            "CAP_SYS_ADMIN",
        ),
    ),
    "filesystem": (
        Need(
            "search permission on every directory above each mount point (or CAP_DAC_READ_SEARCH)",
            "statfs(2) a mount point below a directory the agent's user may not search",
            f"{_FILESYSTEM_VALUES} of that mount, which reports node_filesystem_device_error 1",
            _unreachable_mounts,
        ),
        Need(
            "CAP_SYS_PTRACE where paths.procfs is mounted with hidepid= (or the gid= group of that mount)",
            "read /proc/1/mountinfo, the host's mount table, which hidepid= hides from other users",
            "the host's mount table: the agent's own is used instead, so mounts outside its mount namespace are "
            "missing and its own private ones appear",
            _capability("CAP_SYS_PTRACE", lambda view: _enabled("filesystem")(view) and _hidepid(view)),
            "CAP_SYS_PTRACE",
            "the fallback, yes (hidepid=invisible); not that CAP_SYS_PTRACE restores /proc/1 (that host's pid 1 is "
            "closed even to root)",
        ),
    ),
    "textfile": (
        Need(
            "read and search permission on collectors.textfile.directory and read on its *.prom files "
            "(or CAP_DAC_READ_SEARCH)",
            "list and read the textfile directory",
            "every metric of an unreadable file, and node_textfile_mtime_seconds (node_textfile_scrape_error is "
            "set to 1)",
            _textfile_unreadable,
        ),
    ),
    "runtimes": (
        Need(
            "write permission on each enabled runtime socket and search permission on the directories above it: "
            "the socket's owner or group (containerd's [grpc] gid, Docker's docker group, podman.socket's "
            "SocketGroup=)",
            "connect(2) to the container runtime's API",
            _RUNTIME_NAMES,
            _runtime_sockets,
        ),
        Need(
            "write permission on kubelet.podresources.socket and search permission on the directories above it",
            "connect(2) to the kubelet's PodResources API",
            "nodeagent_pod_device_info and the pod labels of GPUs held by pods on the gpu collector's families",
            _kubelet_socket,
            measured="the rule, on containerd's socket (no kubelet there)",
        ),
    ),
    "gpu": (
        Need(
            "read and write permission on /dev/nvidiactl and /dev/nvidia<N> (0666 by the driver's default; "
            "else their group, often video)",
            "NVML opens the device nodes for every query",
            "every family of the gpu collector (nodeagent_gpu_*): NVML cannot open the GPUs",
            _nvidia_devices,
            measured="no (no GPU there)",
        ),
        Need(
            "CAP_SYS_PTRACE where paths.procfs is mounted with hidepid= (or the gid= group of that mount)",
            "read /proc/<pid>/cgroup of GPU processes of other users",
            "nodeagent_gpu_workload_{memory_used_bytes,processes,utilization_ratio} of those processes "
            "(they still count in nodeagent_gpu_processes)",
            _capability("CAP_SYS_PTRACE", lambda view: _enabled("gpu")(view) and _hidepid(view)),
            "CAP_SYS_PTRACE",
            "the hiding of other users' /proc/<pid> and CAP_SYS_PTRACE lifting it, yes (hidepid=invisible); no GPU "
            "there",
        ),
    ),
    "agent": (
        Need(
            "CAP_NET_BIND_SERVICE where listen's port is below net.ipv4.ip_unprivileged_port_start (1024)",
            "bind(2) the HTTP port",
            "everything: the agent exits with code 2 at start-up",
            _listen_port,
            "CAP_NET_BIND_SERVICE",
        ),
        Need(
            "write and search permission on logs.ship.spool_dir, or on the directory in which it is created",
            "create and write the log spool",
            "log shipping: the agent exits with code 2 at start-up",
            _spool_dir,
        ),
        Need(
            "read permission on web.config_file, the TLS files it names, web.bearer_token_file and logs.ship.tls.*",
            "read the web-config, TLS keys and tokens at start-up and on every reload",
            "the agent exits with code 2 at start-up; on a reload the last good configuration stays in force",
            _secret_files,
        ),
    ),
}


def needs_here(cfg: AgentConfig, paths: HostPaths) -> list[Finding]:
    """
    Every need of ``NEEDS`` that applies here, in table order: the capabilities this configuration uses on this
    host, and each file access this process lacks. Runs file checks and a connect() per enabled runtime socket.
    """
    view = HostView(cfg, paths)
    found = []
    for scope, needs in NEEDS.items():
        found += [Finding(scope, need, detail) for need in needs for detail in need.applies(view)]
    return found


def missing(findings: Sequence[Finding], capabilities: frozenset[str]) -> list[Finding]:
    """The needs of ``findings`` (from ``needs_here``) that a process with ``capabilities`` lacks."""
    return [f for f in findings if not f.need.capability or f.need.capability not in capabilities]


def table_rows() -> list[tuple[str, str, str, str, str]]:
    """The table as (scope, grant, purpose, lost, measured) rows: docs/security.md shows these, a test keeps them
    equal."""
    return [(scope, n.grant, n.purpose, n.lost, n.measured) for scope, needs in NEEDS.items() for n in needs]


def describe(findings: Sequence[Finding]) -> dict[str, list[str]]:
    """
    Doctor's lines per scope, three per finding: ``missing <what>``, what it is needed for (and how to grant it,
    where that is not the name itself), and ``lost without it: <metrics>``.
    """
    out: dict[str, list[str]] = {}
    for f in findings:
        grant = "" if f.detail == f.need.grant else f"; grant: {f.need.grant}"
        out.setdefault(f.scope, []).extend(
            (f"missing {f.detail}", f"  needed to {f.need.purpose}{grant}", f"  lost without it: {f.need.lost}")
        )
    return out
