"""
gRPC over a host unix socket, shared by the containerd, CRI and kubelet PodResources clients: channel creation
and one mapping of gRPC failures to ``RuntimeUnavailable``. grpcio is imported here, on first use, so hosts
without these sockets never pay for its memory (about 18 MiB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nodeagent.sources.runtime_model import RuntimeUnavailable, UnavailableKind, kind_of_oserror

if TYPE_CHECKING:
    import grpc.aio


def open_channel(path: str) -> grpc.aio.Channel:
    """An insecure gRPC channel to the unix socket ``path`` (on the running event loop)."""
    import grpc.aio

    return grpc.aio.insecure_channel(
        f"unix:{path}",
        options=[
            # Large container lists (thousands of containers with labels) exceed the 4 MiB default.
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # Reconnect quickly after a runtime restart; the watcher adds its own backoff on top.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ],
    )


def unavailable(exc: BaseException, what: str, path: str) -> RuntimeUnavailable:
    """``RuntimeUnavailable`` for a failed call: the gRPC status and details, or the exception's text, and its kind."""
    import grpc

    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").strip()
        code: Any = exc.code()
        name = getattr(code, "name", str(code))
        if "Permission denied" in details:
            return RuntimeUnavailable(f"{what} on {path}: permission denied", "permission_denied")
        return RuntimeUnavailable(f"{what} on {path} failed: {name}: {details}", _grpc_kind(name, details))
    if isinstance(exc, TimeoutError):
        return RuntimeUnavailable(f"{what} on {path}: no answer in time", "timeout")
    kind = kind_of_oserror(exc) if isinstance(exc, OSError) else "error"
    return RuntimeUnavailable(f"{what} on {path} failed: {type(exc).__name__}: {exc}", kind)


def _grpc_kind(code: str, details: str) -> UnavailableKind:
    """The kind of a failed call from its status code (and, for a failed connect, the errno text gRPC reports)."""
    if code == "DEADLINE_EXCEEDED":
        return "timeout"
    if code == "UNAVAILABLE":
        # A connect that failed names the errno's text: the socket vanished between stat and connect.
        return "not_found" if "No such file or directory" in details else "unavailable"
    if code in ("RESOURCE_EXHAUSTED", "CANCELLED", "ABORTED"):
        return "unavailable"
    if code == "PERMISSION_DENIED":
        return "permission_denied"
    return "error"


def rpc_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a gRPC call may raise that mean "the peer is unavailable" (for ``except``)."""
    import grpc

    return (grpc.aio.AioRpcError, grpc.RpcError, TimeoutError, OSError)
