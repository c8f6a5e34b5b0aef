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
