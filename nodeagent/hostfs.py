"""
Host filesystem roots and file reads.

Every host path goes through ``HostPaths`` (``procfs``, ``sysfs``, ``rootfs``, ``cgroupfs``), the node_exporter
``--path.*`` convention, so the agent runs in a container with the host at ``/host`` and tests point it
at fixture trees. Read errors name the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class SourceReadError(OSError):
    """A host file could not be read; the message names the file and the reason."""


class ParseError(ValueError):
    """A host file did not have the expected format; the message names the file or field and the line."""


# Kernel counters and limits are u64, a few s64 (a v1 CFS quota of -1, vmstat's per-CPU drift): a number beyond that
# range is corrupt, and would overflow the float a sample holds (OverflowError far from the file that caused it).
KERNEL_INT_MIN = -(1 << 63)
KERNEL_INT_MAX = (1 << 64) - 1


def kernel_int(token: str, base: int = 10) -> int:
    """
    ``int(token, base)`` limited to the range of a kernel value (s64 to u64), for parsers of kernel text files.

    Raises:
        ValueError: not an integer, or one out of that range; parsers turn it into a ``ParseError`` naming the
            file and the line, as they do for any other malformed number.
    """
    value = int(token, base)
    if not KERNEL_INT_MIN <= value <= KERNEL_INT_MAX:
        raise ValueError(f"{token[:40]!r} is out of the range of a kernel counter")
    return value


@dataclass(frozen=True, slots=True)
class HostPaths:
    """The roots through which every host file is read."""

    procfs: str = "/proc"
    sysfs: str = "/sys"
    rootfs: str = "/"
    cgroupfs: str = ""

    @property
    def cgroup_root(self) -> str:
        """The cgroup filesystem root: ``cgroupfs`` when set, else ``<sysfs>/fs/cgroup``."""
        return self.cgroupfs or os.path.join(self.sysfs, "fs", "cgroup")

    def proc(self, *parts: str) -> str:
        """Path of a file under the proc root, e.g. ``proc("stat")``."""
        return os.path.join(self.procfs, *parts)

    def sys(self, *parts: str) -> str:
        """Path of a file under the sys root, e.g. ``sys("block", "sda", "queue")``."""
        return os.path.join(self.sysfs, *parts)

    def root(self, path: str) -> str:
        """Path of a host path (absolute on the host) under the root filesystem root."""
        return os.path.join(self.rootfs, path.lstrip("/"))

    def strip_root(self, path: str) -> str:
        """Turn a path under ``rootfs`` back into the host's own absolute path."""
        root = self.rootfs.rstrip("/")
        if root and (path == root or path.startswith(root + "/")):
            return path[len(root) :] or "/"
        return path


def read_text(path: str) -> str:
    """
    Read a whole (small) host file as text.

    Raises:
        FileNotFoundError: the file does not exist (callers decide whether that means "no data").
        SourceReadError: any other failure, with the path in the message.
    """
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SourceReadError(exc.errno, f"cannot read {path}: {exc.strerror or exc}") from exc
