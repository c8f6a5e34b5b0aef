"""
The real ``nodeagent run`` in a private mount and PID namespace that holds test mounts: a FUSE file system
(``tests.faults.fuse``) whose daemon the test can stop, so that statfs on it blocks in the kernel, and a tmpfs of
a known size. The agent is PID 1 there, so the filesystem collector's ``/proc/1/mountinfo`` lists exactly this
namespace's mounts, and nothing outside it (other tests, the host's ``df``) ever sees or statfs-es the mount.

Host side: ``agent_with_mounts`` starts ``unshare --mount --propagation private --pid --fork --mount-proc
--kill-child`` running this module, which mounts, starts the FUSE daemon, and then becomes the agent (exec).
Cleanup, also on failure: SIGCONT the daemon, ``umount -l`` both mounts inside the namespace (nsenter), stop the
agent (SIGTERM, then SIGKILL) and kill the daemon, each by its pid; the namespace dies with its last process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.faults.fuse import detach
from tests.integration.agent_proc import AgentProcess, free_port, http_get, wait_until

REPO = Path(__file__).resolve().parents[2]
# statfs(2) and its number per architecture: a thread blocked in it shows this in /proc/<pid>/task/<tid>/syscall.
STATFS_SYSCALL = {"x86_64": 137, "aarch64": 43}.get(os.uname().machine)
TMPFS_BYTES = 16 << 20


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class NamespacedAgent(AgentProcess):
    """The agent: ``proc`` is the ``unshare`` process that holds the namespaces, ``pid`` the agent (in the host's PID
    namespace); its FUSE daemon, the mounts and the log."""

    pid: int
    daemon_pid: int
    fuse_mount: str
    tmpfs_mount: str

    def hang(self) -> None:
        """Stop the FUSE daemon: from now on statfs on the mount blocks in the kernel."""
        os.kill(self.daemon_pid, signal.SIGSTOP)

    def release(self) -> None:
        """Continue the daemon: blocked statfs calls are answered."""
        os.kill(self.daemon_pid, signal.SIGCONT)

    def threads_in_statfs(self) -> int:
        """The agent's threads blocked in statfs(2) now (from /proc/<pid>/task/<tid>/syscall)."""
        count = 0
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{self.pid}/task/{tid}/syscall") as f:
                    count += f.read().split(" ", 1)[0] == str(STATFS_SYSCALL)
        return count


@contextlib.contextmanager
def agent_with_mounts(args: Sequence[str], tmp_dir: Path, timeout: float = 30.0) -> Iterator[NamespacedAgent]:
    """
    ``nodeagent run --listen 127.0.0.1:<free> ARGS`` in a private mount and PID namespace with a FUSE mount at
    ``<tmp_dir>/natest-fuse`` and a 16 MiB tmpfs at ``<tmp_dir>/natest-tmpfs``; ready when /readyz answers 200.
    """
    fuse_mount, tmpfs_mount = tmp_dir / "natest-fuse", tmp_dir / "natest-tmpfs"
    fuse_mount.mkdir()
    tmpfs_mount.mkdir()
    port = free_port()
    log_path = str(tmp_dir / f"nodeagent-{port}.log")
    agent_cmd = [sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{port}", *args]
    cmd = [
        *("unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "--kill-child"),
        *(sys.executable, "-m", "tests.faults.mountns", str(fuse_mount), str(tmpfs_mount), "--", *agent_cmd),
    ]
    with open(log_path, "wb") as log:
        unshare = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=_die_with_parent)
    pid = daemon = 0
    try:
        wait_until(lambda: unshare.poll() is not None or _children(unshare.pid), 10, "unshare to fork")
        pid = next(iter(_children(unshare.pid)), 0)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: unshare.poll() is not None or http_get(url + "/readyz")[0] == 200, timeout, "the agent")
        if unshare.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                raise AssertionError(f"the namespaced agent exited ({unshare.returncode}):\n{f.read()}")
        daemon = next(c for c in _children(pid) if "tests.faults.fuse" in _cmdline(c))
        yield NamespacedAgent(unshare, port, log_path, pid, daemon, str(fuse_mount), str(tmpfs_mount))
    finally:
        _stop(unshare, pid, daemon, (str(fuse_mount), str(tmpfs_mount)))
        for d in (fuse_mount, tmpfs_mount):
            with contextlib.suppress(OSError):
                d.rmdir()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, so a killed run leaves no namespace behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(unshare: subprocess.Popen[bytes], pid: int, daemon: int, mounts: Sequence[str]) -> None:
    """Release and unmount (inside the namespace), then stop the agent and the daemon; all by pid."""
    if daemon:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGCONT)
    if pid and unshare.poll() is None:
        for mount in mounts:
            subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", "-l", mount], capture_output=True, check=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        unshare.wait(10)
    except subprocess.TimeoutExpired:
        for victim in (pid, daemon, unshare.pid):
            if victim:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
        unshare.wait(10)
    if daemon:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGKILL)


def _mount_tmpfs(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"natest-tmpfs", path.encode(), b"tmpfs", 0, f"size={TMPFS_BYTES}".encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def main(argv: list[str]) -> int:
    """In the namespace: mount the tmpfs, start the FUSE daemon, wait for it, then exec the agent command."""
    fuse_mount, tmpfs_mount, dashdash, *cmd = argv
    assert dashdash == "--" and cmd, "usage: mountns FUSE_MOUNT TMPFS_MOUNT -- COMMAND..."
    _mount_tmpfs(tmpfs_mount)
    daemon = subprocess.Popen([sys.executable, "-m", "tests.faults.fuse", fuse_mount], stdout=subprocess.PIPE)
    assert daemon.stdout is not None
    line = daemon.stdout.readline()  # "ready", or nothing if the daemon failed (its error went to stderr)
    if line != b"ready\n":
        detach(tmpfs_mount)
        print(f"mountns: the FUSE daemon did not get ready: {line!r} (exit {daemon.poll()})", file=sys.stderr)
        return 1
    daemon.stdout.close()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
