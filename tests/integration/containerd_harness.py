"""
A real, private containerd for integration tests (Debian packages ``containerd runc umoci busybox-static``).

* ``build_busybox_image(workdir)`` builds, with ``umoci`` and no registry, one OCI archive holding two images made
  of the static ``/bin/busybox``: ``BUSYBOX_REF`` (``Cmd ["/bin/sh"]``) and ``PAUSE_REF``, a Kubernetes
  "pause"-like sandbox image (``Entrypoint ["/bin/sleep", "2147483647"]``). ``session_image()`` builds it once
  per test process.
* ``Containerd(tmpdir)`` writes its own ``config.toml`` (own root, state, sockets, CRI plugin enabled with the
  local pause image, empty CNI directories, runc v2 with cgroupfs) and runs ``containerd`` as a child process.
  Containers are run with ``ctr`` in kubepods-style cgroups (``run_container``), and ``close()`` removes
  everything it made, also after a failed test: tasks, containers, shims, mounts, cgroups and directories.

Only processes this instance started (containerd, and the shims and container processes that reference its
socket, state or cgroups) are ever killed, by pid; only cgroups it created and directories it made are removed.

What containerd 1.6 does outside the configured root/state: a v2 shim listens on
``/run/containerd/s/<sha256(address/namespace/id)>`` whatever ``state`` is (``close()`` removes the ones of this
instance). The runc state (normally ``/run/containerd/runc``) is moved to ``<state>/runc`` with ``--runc-root``
for ``ctr run`` and the runtime option ``Root`` for the CRI plugin.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.prereq import missing

BUSYBOX_REF = "docker.io/nodeagent-test/busybox:1"
PAUSE_REF = "docker.io/nodeagent-test/pause:1"
IMAGE_REFS = (BUSYBOX_REF, PAUSE_REF)
RUNTIME = "io.containerd.runc.v2"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
IMAGE_TARBALL_NAME = "nodeagent-test-images.oci.tar"

BUSYBOX = "/bin/busybox"
# Binary -> Debian package that provides it.
TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
    "umoci": "umoci",
}
# Where the shim sockets of every containerd 1.6 live, whatever its configured state directory.
SHIM_SOCKET_DIR = "/run/containerd/s"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes with the NUL; keep a margin
START_TIMEOUT = 20.0
STOP_GRACE = 10.0
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MNT_DETACH = 2

_instances = 0


class ContainerdError(RuntimeError):
    """containerd, ctr, runc or umoci failed; the message carries their output."""


# ---------------------------------------------------------------------------------------------------------------
# Prerequisites


def _is_static_elf(path: str) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter (statically linked)."""
    pt_interp = 3
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF":
                return False
            e = "<" if head[5] == 1 else ">"
            if head[4] == 2:  # ELFCLASS64
                (phoff,) = struct.unpack_from(e + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
            else:
                (phoff,) = struct.unpack_from(e + "I", head, 28)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return False
    if len(table) < phentsize * phnum:
        return False
    return all(struct.unpack_from(e + "I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def _search_path() -> str:
    """``$PATH`` plus the sbin directories (runc is ``/usr/sbin/runc``), for lookups and for containerd's shims."""
    return os.pathsep.join(p for p in [os.environ.get("PATH", ""), PATH_ENV] if p)


def tool_paths() -> dict[str, str]:
    """The absolute path of each binary of ``TOOLS`` that is installed (a missing one is not in the dict)."""
    found = {name: shutil.which(name, path=_search_path()) for name in TOOLS}
    return {name: path for name, path in found.items() if path is not None}


def require_tools() -> dict[str, str]:
    """
    Root, every binary (``containerd``, ``ctr``, the runc v2 shim, ``runc``, ``umoci``) and a static
    ``/bin/busybox``; a missing one fails the test under ``CI=true`` and skips it elsewhere. Returns the paths.
    """
    if os.geteuid() != 0:
        missing("root (containerd, runc and cgroups)")
    paths = tool_paths()
    for name, package in TOOLS.items():
        if name not in paths:
            missing(f"{name} (apt-get install {package})")
    if not _is_static_elf(BUSYBOX):
        missing(f"a statically linked {BUSYBOX} (apt-get install busybox-static)")
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Image


def _run(cmd: Sequence[str], timeout: float = 120.0, what: str = "") -> subprocess.CompletedProcess[str]:
    """Run a command; raise ``ContainerdError`` with its output when it fails or hangs."""
    try:
        res = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, env={**os.environ, "PATH": PATH_ENV}
        )
    except subprocess.TimeoutExpired as exc:
        raise ContainerdError(f"{what or cmd[0]}: timed out after {timeout}s: {' '.join(cmd)}") from exc
    if res.returncode != 0:
        raise ContainerdError(
            f"{what or cmd[0]} failed ({res.returncode}): {' '.join(cmd)}\nstdout: {res.stdout}\nstderr: {res.stderr}"
        )
    return res


def _busybox_applets() -> list[str]:
    out = _run([BUSYBOX, "--list"], what="busybox --list").stdout.split()
    return sorted({a for a in out if a and "/" not in a and a != "busybox"})


def build_busybox_image(workdir: str | os.PathLike[str]) -> Path:
    """
    Build ``workdir/nodeagent-test-images.oci.tar`` (once: an existing one is returned as is): an OCI image
    archive, importable with ``ctr images import``, holding ``BUSYBOX_REF`` and ``PAUSE_REF``. Both share one
    layer: ``/bin/busybox`` (static) with a symlink per applet (``sh``, ``sleep``, ``cat``, ``dd``, ``head`` ...)
    in ``/bin``. The containerd image name is the ``io.containerd.image.name`` annotation of each manifest in
    ``index.json``, so the import needs no ``--base-name``.
    """
    work = Path(workdir)
    tarball = work / IMAGE_TARBALL_NAME
    if tarball.is_file():
        return tarball
    paths = require_tools()
    umoci = paths["umoci"]
    build = Path(tempfile.mkdtemp(prefix="umoci-", dir=work))
    try:
        layout = build / "layout"
        bundle = build / "bundle"
        _run([umoci, "init", "--layout", str(layout)], what="umoci init")
        _run([umoci, "new", "--image", f"{layout}:base"], what="umoci new")
        _run([umoci, "unpack", "--image", f"{layout}:base", str(bundle)], what="umoci unpack")
        rootfs = bundle / "rootfs"
        for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "root"):
            (rootfs / d).mkdir(mode=0o755, exist_ok=True)
        (rootfs / "tmp").chmod(0o1777)
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in _busybox_applets():
            link = rootfs / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        _run([umoci, "repack", "--image", f"{layout}:base", str(bundle)], what="umoci repack")
        common = ["--config.env", f"PATH={PATH_ENV}", "--config.workingdir", "/"]
        _run(
            [umoci, "config", "--image", f"{layout}:base", *common, "--config.cmd", "/bin/sh", "--tag", "busybox"],
            what="umoci config busybox",
        )
        pause_entry = ["--config.entrypoint", "/bin/sleep", "--config.entrypoint", "2147483647"]
        _run(
            [umoci, "config", "--image", f"{layout}:base", *common, *pause_entry, "--tag", "pause"],
            what="umoci config pause",
        )
        _run([umoci, "rm", "--image", f"{layout}:base"], what="umoci rm")
        _run([umoci, "gc", "--layout", str(layout)], what="umoci gc")
        index_path = layout / "index.json"
        index = json.loads(index_path.read_text())
        names = {"busybox": BUSYBOX_REF, "pause": PAUSE_REF}
        for manifest in index["manifests"]:
            annotations = manifest.setdefault("annotations", {})
            annotations["io.containerd.image.name"] = names[annotations["org.opencontainers.image.ref.name"]]
        index_path.write_text(json.dumps(index))
        partial = work / (IMAGE_TARBALL_NAME + ".part")
        with tarfile.open(partial, "w") as tar:
            for name in ("oci-layout", "index.json", "blobs"):
                tar.add(layout / name, arcname=name)
        partial.rename(tarball)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return tarball


MEMORY_V1 = "/sys/fs/cgroup/memory"


def prerequisites_and_image() -> Path:
    """
    The busybox/pause archive of ``session_image``, after checking what the containerd tests need: root, the
    tools of ``require_tools`` and the v1 memory hierarchy their cgroup assertions read (fails under CI).
    """
    require_tools()
    if MEMORY_V1 not in cgroup_mounts():
        missing(f"the cgroup v1 memory hierarchy at {MEMORY_V1} (a v1 or hybrid host)")
    return session_image()


@functools.cache
def session_image() -> Path:
    """The image archive of ``build_busybox_image``, built once per test process in a temporary directory."""
    workdir = tempfile.mkdtemp(prefix="na-images-")
    atexit.register(shutil.rmtree, workdir, True)
    return build_busybox_image(workdir)


# ---------------------------------------------------------------------------------------------------------------
# /proc, mounts and cgroups


def _unescape_mount(path: str) -> str:
    """Undo the octal escapes (``\\040`` ...) of a /proc/self/mountinfo path."""
    if "\\" not in path:
        return path
    return path.encode().decode("unicode_escape").encode("latin-1").decode()


def mounts_under(dirs: Iterable[str]) -> list[str]:
    """Mount points of this mount namespace at or below any of ``dirs``, deepest first."""
    prefixes = [os.path.realpath(d).rstrip("/") for d in dirs]
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mount(line.split()[4])
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), len(p)), reverse=True)


def cgroup_mounts() -> list[str]:
    """The mount point of every cgroup hierarchy (each v1 hierarchy once, and the cgroup2 tree)."""
    points: list[str] = []
    seen: set[str] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split()[0] if right else ""
            if fstype not in ("cgroup", "cgroup2"):
                continue
            point = _unescape_mount(left.split()[4])
            key = right.split()[2] if fstype == "cgroup" else "cgroup2"  # v1: super options name the controllers
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def proc_cgroup(pid: int) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as controller -> path (``""`` is the cgroup2 line, ``name=systemd`` a named one)."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _pid_state(pid: int) -> str | None:
    """The state letter of a process (``Z`` for a zombie), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    state = _pid_state(pid)
    return state is not None and state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def processes_matching(needles: Iterable[str], program: str = "") -> list[int]:
    """Live pids with one of ``needles`` as an argument (and whose argv[0]'s name starts with ``program``)."""
    wanted = {n for n in needles if n}
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        argv = _cmdline(int(entry))
        if not argv or (program and not os.path.basename(argv[0]).startswith(program)):
            continue
        if wanted.intersection(argv) and alive(int(entry)):
            pids.append(int(entry))
    return pids


def _kill_and_wait(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL each pid, wait until it is gone or a zombie; returns the pids still alive."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def _rmdir_cgroup(path: str, attempts: int = 100) -> bool:
    """rmdir one (empty) cgroup, retrying on EBUSY; True when it is gone."""
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return False
        time.sleep(0.02)
    return not os.path.exists(path)


def _walk(top: str) -> list[str]:
    """``top`` and every directory below it (none when it does not exist)."""
    return [dirpath for dirpath, _, _ in os.walk(top)]


def _cgroup_procs(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


# ---------------------------------------------------------------------------------------------------------------
# containerd


class Containerd:
    """
    A private containerd: ``with Containerd(tmp_path) as c:`` starts it; ``close()`` (also on exceptions)
    removes everything. All state lives in a ``na-ctrd-*`` directory made in ``tmpdir`` (sockets in a short
    ``/tmp/na-ctrd-<pid>-*`` directory when that path is too long for a unix socket).
    """

    def __init__(self, tmpdir: str | os.PathLike[str], snapshotter: str | None = None) -> None:
        global _instances
        _instances += 1
        self.tools = require_tools()
        self.base = Path(tempfile.mkdtemp(prefix="na-ctrd-", dir=tmpdir))
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.cni_bin_dir = self.base / "cni" / "bin"
        self.cni_conf_dir = self.base / "cni" / "net.d"
        self.log_path = self.base / "containerd.log"
        self.config_path = self.base / "config.toml"
        self.runc_root = self.state / "runc"
        self.container_logs = self.base / "container-logs"
        for d in (self.root, self.state, self.cni_bin_dir, self.cni_conf_dir, self.base / "opt", self.base / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.container_logs.mkdir()
        self.sock_dir: Path = self.base
        if len(str(self.base / "containerd.sock")) > SOCKET_PATH_MAX:
            self.sock_dir = Path(tempfile.mkdtemp(prefix=f"na-ctrd-{os.getpid()}-{_instances}-", dir="/tmp"))
        self.address = str(self.sock_dir / "containerd.sock")
        self.ttrpc_address = str(self.sock_dir / "containerd.sock.ttrpc")
        self._run_containerd_existed = os.path.isdir("/run/containerd")
        self._run_containerd_s_existed = os.path.isdir(SHIM_SOCKET_DIR)
        self.snapshotter = snapshotter or self._probe_snapshotter()
        self.proc: subprocess.Popen[bytes] | None = None
        self.containers: dict[tuple[str, str], int] = {}  # (namespace, id) -> init pid, of running containers
        self.seen_containers: set[tuple[str, str]] = set()  # every (namespace, id) ever seen, for shim sockets
        self.container_cgroups: set[str] = set()  # cgroup paths <parent>/<id> of run_container
        self.created_cgroup_dirs: set[str] = set()  # parent directories (absolute, per hierarchy) runc created
        self.closed = False
        self.write_config()

    # -- configuration ------------------------------------------------------------------------------------------

    def _probe_snapshotter(self) -> str:
        """``overlayfs`` when an overlay mount works below ``root`` (where the snapshots live), else ``native``."""
        probe = self.root / "overlay-probe"
        dirs = {n: probe / n for n in ("lower", "upper", "work", "merged")}
        for d in dirs.values():
            d.mkdir(parents=True)
        opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.mount(b"overlay", str(dirs["merged"]).encode(), b"overlay", 0, opts.encode()) == 0
        if ok:
            libc.umount2(str(dirs["merged"]).encode(), MNT_DETACH)
        shutil.rmtree(probe, ignore_errors=True)
        return "overlayfs" if ok else "native"

    def config_toml(self) -> str:
        """The ``config.toml`` (version 2) of this instance."""

        def q(value: str | os.PathLike[str]) -> str:
            return json.dumps(str(value))  # a JSON string of a path is a valid TOML basic string

        cri = f'plugins."{CRI_PLUGIN}"'
        return f"""\
version = 2
root = {q(self.root)}
state = {q(self.state)}
temp = {q(self.base / "tmp")}
oom_score = 0
# aufs would modprobe a kernel module; the others only probe filesystems that are not there.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = {q(self.address)}
  uid = 0
  gid = 0
  tcp_address = ""

[ttrpc]
  address = {q(self.ttrpc_address)}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[cgroup]
  path = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {q(self.base / "opt")}

  [{cri}]
    sandbox_image = {q(PAUSE_REF)}
    disable_cgroup = false
    disable_apparmor = true
    # The CRI plugin gives a sandbox oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE, which a containerised
    # runner (root with Docker's default capabilities) lacks, and runc's init then dies. Keep the adj >= ours.
    restrict_oom_score_adj = true
    enable_selinux = false
    systemd_cgroup = false
    netns_mounts_under_state_dir = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

    [{cri}.cni]
      bin_dir = {q(self.cni_bin_dir)}
      conf_dir = {q(self.cni_conf_dir)}

    [{cri}.containerd]
      snapshotter = {q(self.snapshotter)}
      default_runtime_name = "runc"

      [{cri}.containerd.runtimes.runc]
        runtime_type = {q(RUNTIME)}

        [{cri}.containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = {q(self.tools["runc"])}
          Root = {q(self.runc_root)}
"""

    def write_config(self) -> Path:
        """(Re)write ``config.toml``."""
        self.config_path.write_text(self.config_toml())
        return self.config_path

    # -- process ------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the containerd process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int | None = None) -> str:
        """What containerd logged (the last ``tail`` lines)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    def _socket_accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(self.address)
            except OSError:
                return False
        return True

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start containerd and wait until its socket accepts and ``ctr version`` answers."""
        if self.closed:
            raise ContainerdError("this Containerd is closed")
        if self.running:
            return
        for stale in (self.address, self.ttrpc_address):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        # PR_SET_PDEATHSIG: containerd gets SIGTERM when the test process dies (killed by a CI timeout). The
        # signal follows the thread that forked, so only from the main thread, never from a worker thread.
        pdeathsig = 1 if threading.current_thread() is threading.main_thread() else 0

        def preexec() -> None:
            if pdeathsig:
                ctypes.CDLL(None, use_errno=True).prctl(pdeathsig, signal.SIGTERM)

        with open(self.log_path, "ab") as log:
            log.write(f"---- starting containerd at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [self.tools["containerd"], "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PATH": _search_path()},
                start_new_session=True,  # a Ctrl-C of the test run must not kill it before close() runs
                preexec_fn=preexec,
            )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerdError(f"containerd exited early ({self.proc.returncode}); log tail:\n{self.log(40)}")
            if os.path.exists(self.address) and self._socket_accepts():
                res = self._ctr_raw(["version"], namespace=None, timeout=5)
                if res is not None and res.returncode == 0:
                    return
                last = res.stderr if res is not None else "ctr version timed out"
            time.sleep(0.05)
        self.stop()
        raise ContainerdError(
            f"containerd did not become ready within {timeout}s ({last.strip()}); log tail:\n{self.log(40)}"
        )

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM containerd, SIGKILL after ``grace`` seconds, reap it. Shims and containers keep running."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL containerd (a crash), reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stop and start again with the same root and state; running containers are reconnected."""
        self.stop()
        self.start()

    def __enter__(self) -> Containerd:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        problems = self.close()
        if problems and exc is None:
            raise ContainerdError("containerd harness left things behind:\n" + "\n".join(problems))

    # -- ctr ----------------------------------------------------------------------------------------------------

    def ctr_cmd(self, args: Sequence[str], namespace: str | None = "default") -> list[str]:
        """The ``ctr`` command line for ``args`` against this instance."""
        ns = ["--namespace", namespace] if namespace else []
        return [self.tools["ctr"], "--address", self.address, *ns, *args]

    def _ctr_raw(
        self, args: Sequence[str], namespace: str | None = "default", timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str] | None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        try:
            return subprocess.run(
                self.ctr_cmd(args, namespace), capture_output=True, text=True, timeout=timeout, env=env
            )
        except subprocess.TimeoutExpired:
            return None

    def ctr(
        self, *args: str, namespace: str | None = "default", timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address <sock> --namespace <namespace> args...``; raises ``ContainerdError`` on failure."""
        res = self._ctr_raw(args, namespace, timeout)
        cmd = " ".join(self.ctr_cmd(args, namespace))
        if res is None:
            raise ContainerdError(f"timed out after {timeout}s: {cmd}\ncontainerd log tail:\n{self.log(20)}")
        if check and res.returncode != 0:
            raise ContainerdError(
                f"ctr failed ({res.returncode}): {cmd}\nstdout: {res.stdout}\nstderr: {res.stderr}"
                f"\ncontainerd log tail:\n{self.log(20)}"
            )
        return res

    def plugins(self) -> dict[str, str]:
        """``ctr plugins ls``: ``<type>.<id>`` (``io.containerd.grpc.v1.cri``) -> status (``ok``, ``skip``...)."""
        out: dict[str, str] = {}
        for line in self.ctr("plugins", "ls", namespace=None).stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 4:
                out[f"{fields[0]}.{fields[1]}"] = fields[-1]
        return out

    def namespaces(self) -> list[str]:
        """``ctr namespaces ls -q``."""
        return self.ctr("namespaces", "ls", "-q", namespace=None).stdout.split()

    def images(self, namespace: str = "k8s.io") -> list[str]:
        """Image names in ``namespace`` (``ctr images ls -q``)."""
        return self.ctr("images", "ls", "-q", namespace=namespace).stdout.split()

    def import_image(self, tarball: str | os.PathLike[str], namespace: str = "k8s.io") -> list[str]:
        """
        ``ctr -n <namespace> images import --snapshotter <s> <tarball>`` (unpacked into this instance's
        snapshotter, the one the CRI plugin uses); checks both ``IMAGE_REFS`` are there; returns the names.
        """
        self.ctr("images", "import", "--snapshotter", self.snapshotter, str(tarball), namespace=namespace)
        names = self.images(namespace)
        absent = [r for r in IMAGE_REFS if r not in names]
        if absent:
            raise ContainerdError(f"after importing {tarball} into {namespace}, {absent} missing from {names}")
        return names

    def import_images(self, tarball: str | os.PathLike[str], namespaces: Sequence[str] = ("k8s.io", "default")) -> None:
        """``import_image`` into each of ``namespaces``."""
        for ns in namespaces:
            self.import_image(tarball, ns)

    def tasks(self, namespace: str) -> dict[str, tuple[int, str]]:
        """``ctr tasks ls``: id -> (pid, status such as ``RUNNING`` or ``STOPPED``)."""
        out: dict[str, tuple[int, str]] = {}
        for line in self.ctr("tasks", "ls", namespace=namespace).stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[1].isdigit():
                out[fields[0]] = (int(fields[1]), fields[2])
        return out

    def container_ids(self, namespace: str) -> list[str]:
        """``ctr containers ls -q``."""
        return self.ctr("containers", "ls", "-q", namespace=namespace).stdout.split()

    def container_info(self, namespace: str, container_id: str) -> dict[str, Any]:
        """``ctr containers info <id>`` as a dict (``Labels``, ``Spec``, ``Snapshotter`` ...)."""
        info: dict[str, Any] = json.loads(self.ctr("containers", "info", container_id, namespace=namespace).stdout)
        return info

    # -- containers ---------------------------------------------------------------------------------------------

    def track_cgroup_parent(self, cgroup_parent: str) -> None:
        """
        Remember which directories of ``cgroup_parent`` (e.g. ``/kubepods/burstable/pod<uid>``) do not exist yet
        in each hierarchy: runc is about to create them, and ``close()`` removes them (leaf first).
        """
        parts = [p for p in cgroup_parent.split("/") if p]
        for mount in cgroup_mounts():
            for i in range(1, len(parts) + 1):
                d = mount + "/" + "/".join(parts[:i])
                if not os.path.isdir(d):
                    self.created_cgroup_dirs.add(d)

    def run_container(
        self,
        namespace: str,
        container_id: str,
        image: str = BUSYBOX_REF,
        cgroup_parent: str = "/kubepods/besteffort/pod00000000-0000-0000-0000-000000000000",
        labels: Mapping[str, str] | None = None,
        args: Sequence[str] = ("sleep", "3600"),
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> int:
        """
        ``ctr run --detach`` ``image`` as ``container_id`` in cgroup ``<cgroup_parent>/<container_id>``
        (cgroupfs layout, e.g. ``/kubepods/burstable/pod<uid>``) with ``labels``; empty ``args`` runs the image's
        own entrypoint/cmd. Its output goes to ``container_log(id)``. Checks that the process is in that cgroup
        (memory controller; the cgroup2 line where there is no v1 memory) and returns its init pid.
        """
        if not cgroup_parent.startswith("/"):
            raise ValueError(f"cgroup_parent must be absolute: {cgroup_parent!r}")
        cgroup = f"{cgroup_parent.rstrip('/')}/{container_id}"
        self.track_cgroup_parent(cgroup_parent)
        self.container_cgroups.add(cgroup)
        self.seen_containers.add((namespace, container_id))
        flags = [
            "--detach",
            "--runtime",
            RUNTIME,
            "--runc-binary",
            self.tools["runc"],
            "--runc-root",
            str(self.runc_root),
            "--snapshotter",
            self.snapshotter,
            "--cgroup",
            cgroup,
            "--log-uri",
            f"file://{self.container_log(container_id)}",
        ]
        for k, v in (labels or {}).items():
            flags += ["--label", f"{k}={v}"]
        for k, v in (env or {}).items():
            flags += ["--env", f"{k}={v}"]
        self.ctr("run", *flags, image, container_id, *args, namespace=namespace, timeout=timeout)
        pid, status = self.tasks(namespace).get(container_id, (0, "absent"))
        if status != "RUNNING" or pid <= 0:
            raise ContainerdError(
                f"container {container_id} is {status} right after ctr run; its output:\n"
                f"{self.container_output(container_id)}"
            )
        self.containers[(namespace, container_id)] = pid
        groups = proc_cgroup(pid)
        actual = groups.get("memory", groups.get(""))
        if actual != cgroup:
            raise ContainerdError(f"container {container_id} (pid {pid}) is in cgroup {actual!r}, not {cgroup!r}")
        return pid

    def container_log(self, container_id: str) -> Path:
        """The file that a container's stdout and stderr go to."""
        return self.container_logs / f"{container_id}.log"

    def container_output(self, container_id: str) -> str:
        """What a container wrote so far."""
        try:
            return self.container_log(container_id).read_text(errors="replace")
        except OSError:
            return ""

    @staticmethod
    def cgroup_dirs(cgroup: str) -> list[str]:
        """The directory of cgroup path ``cgroup`` in every hierarchy where it exists."""
        return [m + cgroup for m in cgroup_mounts() if os.path.isdir(m + cgroup)]

    def _wait_stopped(self, namespace: str, container_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.tasks(namespace).get(container_id, (0, "absent"))[1]
            if status in ("STOPPED", "absent"):
                return
            time.sleep(0.05)
        raise ContainerdError(f"task {container_id} in {namespace} did not stop within {timeout}s")

    def stop_container(self, namespace: str, container_id: str, timeout: float = 20.0) -> None:
        """
        ``ctr tasks kill --signal SIGKILL``, wait until the task stopped, ``ctr tasks delete``, ``ctr containers
        delete`` (removes its snapshot too); then make sure its cgroup ``<parent>/<id>`` is gone in every
        hierarchy (runc removes it on delete; what is left is removed here).
        """
        pid = self.containers.pop((namespace, container_id), None)
        if container_id in self.tasks(namespace):
            self.ctr("tasks", "kill", "--signal", "SIGKILL", container_id, namespace=namespace, check=False)
            self._wait_stopped(namespace, container_id, timeout)
            self.ctr("tasks", "delete", container_id, namespace=namespace)
        if container_id in self.container_ids(namespace):
            self.ctr("containers", "delete", container_id, namespace=namespace)
        if pid is not None and self._pid_is_ours(pid) and _kill_and_wait([pid], timeout):
            raise ContainerdError(f"process {pid} of container {container_id} is still alive")
        for cgroup in [c for c in self.container_cgroups if c.rsplit("/", 1)[-1] == container_id]:
            left = [d for d in self.cgroup_dirs(cgroup) if not _rmdir_cgroup(d)]
            if left:
                raise ContainerdError(f"cgroup of container {container_id} left behind: {left}")

    # -- cleanup ------------------------------------------------------------------------------------------------

    def _task_dirs(self) -> list[tuple[str, str]]:
        """(namespace, id) of every task bundle under the state directory (also of containers never listed)."""
        out = []
        task_root = self.state / "io.containerd.runtime.v2.task"
        with contextlib.suppress(OSError):
            for ns in os.listdir(task_root):
                with contextlib.suppress(OSError):
                    out += [(ns, cid) for cid in os.listdir(task_root / ns)]
        return out

    def shim_socket(self, namespace: str, container_id: str) -> str:
        """Where containerd 1.6 puts the shim socket of a task: a hash of address, namespace and id."""
        digest = hashlib.sha256(os.path.join(self.address, namespace, container_id).encode()).hexdigest()
        return os.path.join(SHIM_SOCKET_DIR, digest)

    def _ctr_cleanup(self, errors: list[str]) -> None:
        """Through containerd: SIGKILL, delete and remove every task and container of every namespace."""
        try:
            namespaces = self.namespaces()
        except ContainerdError as exc:
            errors.append(str(exc))
            return
        for ns in namespaces:
            try:
                tasks = self.tasks(ns)
                for cid, (_, status) in tasks.items():
                    self.seen_containers.add((ns, cid))
                    if status != "STOPPED":
                        self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, namespace=ns, check=False, timeout=20)
                for cid in tasks:
                    with contextlib.suppress(ContainerdError):
                        self._wait_stopped(ns, cid, 10)
                    self.ctr("tasks", "delete", "--force", cid, namespace=ns, check=False, timeout=20)
                for cid in self.container_ids(ns):
                    self.seen_containers.add((ns, cid))
                    self.ctr("containers", "delete", cid, namespace=ns, check=False, timeout=20)
            except ContainerdError as exc:
                errors.append(str(exc))

    def _runc_cleanup(self) -> None:
        """``runc delete --force`` whatever is left in this instance's runc root (what containerd did not remove)."""
        with contextlib.suppress(OSError):
            for ns in os.listdir(self.runc_root):
                root = self.runc_root / ns
                with contextlib.suppress(OSError):
                    for cid in os.listdir(root):
                        self.seen_containers.add((ns, cid))
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            subprocess.run(
                                [self.tools["runc"], "--root", str(root), "delete", "--force", cid],
                                capture_output=True,
                                timeout=20,
                            )

    def _own_processes(self) -> list[int]:
        """Live containerd and shim processes of this instance, by their command line (its socket or config)."""
        return processes_matching([self.address, str(self.config_path)], program="containerd")

    def _cgroups_made(self) -> list[str]:
        """Existing directories (every hierarchy) of the cgroups this instance created, deepest first."""
        tops = set(self.created_cgroup_dirs)
        tops.update(d for c in self.container_cgroups for d in self.cgroup_dirs(c))
        dirs = {d for top in tops for d in _walk(top)}
        return sorted(dirs, key=lambda d: (d.count("/"), d), reverse=True)

    def _pid_is_ours(self, pid: int) -> bool:
        """Whether a live process is in a cgroup of a container of this instance (guards against pid reuse)."""
        try:
            paths = set(proc_cgroup(pid).values())
        except OSError:
            return False
        return alive(pid) and any(p == c or p.startswith(c + "/") for p in paths for c in self.container_cgroups)

    def close(self) -> list[str]:
        """
        Remove everything, whatever state the test left: through containerd (if it is up) SIGKILL, delete and
        remove every task and container of every namespace; stop containerd; ``runc delete --force`` the rest;
        SIGKILL (by pid) leftover shims whose command line names this socket, and processes still in cgroups
        this instance created; remove its shim sockets; ``umount -l`` everything below its directories (deepest
        first); rmdir its cgroups leaf-first in every hierarchy; remove its directories. Idempotent.
        Returns the problems met and ``leftovers()``: empty when everything is gone.
        """
        if self.closed:
            return self.leftovers()
        self.closed = True
        errors: list[str] = []
        if self.running:
            self._ctr_cleanup(errors)
        self.stop()
        self._runc_cleanup()
        self.seen_containers.update(self._task_dirs())
        stuck = _kill_and_wait(self._own_processes())
        in_containers = {d for c in self.container_cgroups for top in self.cgroup_dirs(c) for d in _walk(top)}
        stuck += _kill_and_wait([pid for d in in_containers for pid in _cgroup_procs(d)])
        stuck += _kill_and_wait([p for p in self.containers.values() if self._pid_is_ours(p)])
        if stuck:
            errors.append(f"processes that would not die: {stuck}")
        for ns, cid in self.seen_containers:
            with contextlib.suppress(OSError):
                os.unlink(self.shim_socket(ns, cid))
        libc = ctypes.CDLL(None, use_errno=True)
        for point in mounts_under([str(self.base), str(self.sock_dir)]):
            if libc.umount2(point.encode(), MNT_DETACH) != 0:
                errors.append(f"umount -l {point}: {os.strerror(ctypes.get_errno())}")
        for d in self._cgroups_made():
            if not _rmdir_cgroup(d):
                errors.append(f"cannot remove cgroup {d} (procs {_cgroup_procs(d)})")
        for own_dir in {self.base, self.sock_dir}:
            shutil.rmtree(own_dir, ignore_errors=True)
        if not self._run_containerd_s_existed:
            with contextlib.suppress(OSError):
                os.rmdir(SHIM_SOCKET_DIR)  # only when empty, so no other containerd's shim uses it
        if not self._run_containerd_existed:
            with contextlib.suppress(OSError):
                os.rmdir("/run/containerd")
        return errors + self.leftovers()

    def leftovers(self) -> list[str]:
        """What of this instance still exists: processes, mounts, cgroups, shim sockets, directories."""
        left: list[str] = []
        if self.running:
            left.append(f"containerd pid {self.proc.pid if self.proc else '?'}")
        left += [f"process {p}: {' '.join(_cmdline(p))}" for p in self._own_processes()]
        left += [f"container process {p}" for p in self.containers.values() if self._pid_is_ours(p)]
        left += [f"mount {m}" for m in mounts_under([str(self.base), str(self.sock_dir)])]
        left += [f"cgroup {d}" for d in self._cgroups_made()]
        sockets = (self.shim_socket(ns, cid) for ns, cid in self.seen_containers)
        left += [f"shim socket {s}" for s in sockets if os.path.exists(s)]
        left += [f"directory {d}" for d in {self.base, self.sock_dir} if d.exists()]
        return left
