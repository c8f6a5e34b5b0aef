"""
What container runtimes say about their containers, in one shape for every runtime client (containerd, CRI,
Docker Engine API): ``ContainerRecord``, ``ContainerEvent``, the ``RuntimeClient`` protocol, and the CRI labels
that name a Kubernetes pod and container.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict

# Labels the kubelet puts on every container it creates, through CRI (containerd, CRI-O) or cri-dockerd.
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
# containerd's CRI plugin marks pod sandboxes (the pause container) with this label.
CRI_KIND = "io.cri-containerd.kind"
# cri-dockerd and the old dockershim mark sandboxes with this one.
DOCKER_TYPE = "io.kubernetes.docker.type"


# What kind of failure a ``RuntimeUnavailable`` is: the reasons of ``nodeagent_collector_failures_total`` that a
# runtime API can fail with.
UnavailableKind = Literal["timeout", "permission_denied", "not_found", "parse_error", "unavailable", "error"]

_ERRNO_KINDS: dict[int, UnavailableKind] = {
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.ENOENT: "not_found",
    errno.ETIMEDOUT: "timeout",
}


class RuntimeUnavailable(Exception):
    """
    A runtime's socket is missing, refuses us, or does not answer; ``reason`` says which, for logs and
    ``nodeagent doctor``, and ``kind`` classifies it (``not_found``, ``permission_denied``, ``timeout``,
    ``unavailable`` for a runtime that is down or closed the connection, ``parse_error``, ``error``).
    """

    def __init__(self, reason: str, kind: UnavailableKind = "unavailable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: UnavailableKind = kind


def kind_of_oserror(exc: OSError) -> UnavailableKind:
    """The ``RuntimeUnavailable.kind`` of a failed connect or call: from its errno, else ``unavailable``."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return _ERRNO_KINDS.get(exc.errno or 0, "unavailable")


def check_socket(path: str) -> None:
    """
    Raise ``RuntimeUnavailable`` naming the problem if ``path`` is not a unix socket this process may use.

    Raises:
        RuntimeUnavailable: missing, not a socket, or no permission.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RuntimeUnavailable(f"socket {path} does not exist", "not_found") from None
    except PermissionError:
        raise RuntimeUnavailable(
            f"permission denied on {path} (or a directory above it)", "permission_denied"
        ) from None
    except OSError as exc:
        raise RuntimeUnavailable(f"cannot stat {path}: {exc.strerror or exc}", kind_of_oserror(exc)) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeUnavailable(f"{path} is not a unix socket", "error")
    # connect(2) needs write permission only; effective ids and capabilities decide, as they do for connect.
    if not os.access(path, os.W_OK, effective_ids=True):
        raise RuntimeUnavailable(
            f"permission denied on {path}: run as root or add this user to the socket's group", "permission_denied"
        )


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """
    One container as its runtime describes it. ``name`` is cAdvisor's ``name`` label: the Docker or Podman
    container name, else the container id (what cAdvisor shows for containerd and CRI-O). The pod fields come
    from the kubelet's CRI labels and are empty for containers outside Kubernetes.
    """

    id: str
    runtime: str
    name: str
    image: str
    image_id: str = ""
    runtime_namespace: str = ""
    runtime_handler: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    pod_uid: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    container_name: str = ""
    sandbox: bool = False
    running: bool = False
    pid: int = 0


class K8sFields(TypedDict):
    """The Kubernetes fields of a ``ContainerRecord``."""

    pod_uid: str
    pod_name: str
    pod_namespace: str
    container_name: str


def k8s_fields(labels: Mapping[str, str]) -> K8sFields:
    """The pod and container fields of ``ContainerRecord`` from a container's CRI labels."""
    return {
        "pod_uid": labels.get(POD_UID, ""),
        "pod_name": labels.get(POD_NAME, ""),
        "pod_namespace": labels.get(POD_NAMESPACE, ""),
        "container_name": labels.get(CONTAINER_NAME, ""),
    }


def is_sandbox(labels: Mapping[str, str]) -> bool:
    """Whether the labels mark a pod sandbox (pause container) rather than an application container."""
    return labels.get(CRI_KIND) == "sandbox" or labels.get(DOCKER_TYPE) == "podsandbox"


ContainerAction = Literal["create", "start", "stop", "delete"]


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """
    A change one runtime reported. ``record`` is the container's record after the change (``None`` for a
    delete or when the runtime could not describe it); ``time`` is the runtime's Unix time of the change.
    """

    action: ContainerAction
    container_id: str
    record: ContainerRecord | None
    time: float
    pid: int = 0
    exit_code: int | None = None


class RuntimeClient(Protocol):
    """A connection to one container runtime's API over its unix socket."""

    runtime: str
    socket: str

    async def list(self) -> list[ContainerRecord]:
        """
        Every container the runtime knows now.

        Raises:
            RuntimeUnavailable: the socket is missing, refuses us, or the call failed or timed out.
        """
        ...

    def events(self) -> AsyncIterator[ContainerEvent] | None:
        """
        The runtime's change stream, or ``None`` if it has none (then the store polls ``list``). The iterator
        ends or raises ``RuntimeUnavailable`` when the connection is lost.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection."""
        ...
