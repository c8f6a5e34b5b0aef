"""
The Docker Engine API over its unix socket (aiohttp), which Podman serves too through its Docker-compatible
socket: containers with names, images, image ids and labels, and the ``/events`` stream. Paths are
unversioned, so the daemon answers in its own current API version (Docker 29 refuses versions below 1.44).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from nodeagent.sources.runtime_model import (
    ContainerEvent,
    ContainerRecord,
    RuntimeUnavailable,
    UnavailableKind,
    check_socket,
    is_sandbox,
    k8s_fields,
    kind_of_oserror,
)

# Engine API actions that change what the store knows, mapped to nodeagent's container actions.
_ACTIONS = {"create": "create", "start": "start", "die": "stop", "destroy": "delete"}
# The longest event line accepted; a line is one small JSON object.
_MAX_LINE = 1 << 20


class DockerClient:
    """
    One Docker Engine API endpoint. ``runtime`` is ``docker`` or ``podman`` (the label and log value);
    every request but the event stream has ``timeout`` seconds.
    """

    def __init__(self, socket: str, runtime: str = "docker", timeout: float = 5.0) -> None:
        self.socket = socket
        self.runtime = runtime
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            check_socket(self.socket)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket), base_url="http://localhost"
            )
        return self._session

    async def _get(self, path: str, **params: str) -> Any:
        session = self._open()
        try:
            async with session.get(path, params=params, timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                body = await resp.read()
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise RuntimeUnavailable(
                        f"GET {path} on {self.socket}: HTTP {resp.status}: {_message(body)}", _status_kind(resp.status)
                    )
                return _loads(body)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise RuntimeUnavailable(
                f"GET {path} on {self.socket} failed: {type(exc).__name__}: {exc}", _error_kind(exc)
            ) from exc

    async def list(self) -> list[ContainerRecord]:
        """Every container, running or not (``/containers/json?all=1``)."""
        items = await self._get("/containers/json", all="1")
        if not isinstance(items, list):
            raise RuntimeUnavailable(f"GET /containers/json on {self.socket}: expected a JSON array", "parse_error")
        return [self._from_list(c) for c in items if isinstance(c, dict)]

    async def inspect(self, container_id: str) -> ContainerRecord | None:
        """One container (``/containers/{id}/json``), or ``None`` if it is gone."""
        c = await self._get(f"/containers/{container_id}/json")
        if not isinstance(c, dict):
            return None
        config = _object(c.get("Config"))
        state = _object(c.get("State"))
        labels = _labels(config.get("Labels"))
        return ContainerRecord(
            id=str(c.get("Id", container_id)),
            runtime=self.runtime,
            name=str(c.get("Name", "")).lstrip("/"),
            image=str(config.get("Image", "")),
            image_id=str(c.get("Image", "")),
            labels=labels,
            sandbox=is_sandbox(labels),
            running=bool(state.get("Running")),
            pid=max(0, _int(state.get("Pid")) or 0),
            **k8s_fields(labels),
        )

    def _from_list(self, c: dict[str, Any]) -> ContainerRecord:
        labels = _labels(c.get("Labels"))
        names = c.get("Names")
        return ContainerRecord(
            id=str(c.get("Id", "")),
            runtime=self.runtime,
            name=str(names[0]).lstrip("/") if isinstance(names, list) and names else "",
            image=str(c.get("Image", "")),
            image_id=str(c.get("ImageID", "")),
            labels=labels,
            sandbox=is_sandbox(labels),
            running=c.get("State") == "running",
            **k8s_fields(labels),
        )

    def events(self) -> AsyncIterator[ContainerEvent]:
        """``/events`` for containers, from the time of the call on (so nothing between a list and it is lost)."""
        return self._events(time.time())

    async def _events(self, since: float) -> AsyncIterator[ContainerEvent]:
        session = self._open()
        params = {"since": f"{since:.9f}", "filters": json.dumps({"type": ["container"]})}
        try:
            async with session.get(
                "/events", params=params, timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
            ) as resp:
                if resp.status != 200:
                    body = await resp.read()
                    raise RuntimeUnavailable(
                        f"GET /events on {self.socket}: HTTP {resp.status}: {_message(body)}", _status_kind(resp.status)
                    )
                while True:
                    line = await resp.content.readline()
                    if not line:
                        return  # the daemon closed the stream (a restart)
                    if len(line) > _MAX_LINE or not line.strip():
                        continue
                    event = await self._event(line)
                    if event is not None:
                        yield event
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable(
                f"GET /events on {self.socket} failed: {type(exc).__name__}: {exc}", _error_kind(exc)
            ) from exc

    async def _event(self, line: bytes) -> ContainerEvent | None:
        try:
            ev = _loads(line)
        except ValueError:
            return None
        if not isinstance(ev, dict) or ev.get("Type", "container") != "container":
            return None
        action = _ACTIONS.get(str(ev.get("Action") or ev.get("status") or ""))
        actor = _object(ev.get("Actor"))
        cid = str(actor.get("ID") or ev.get("id") or "")
        if action is None or not cid:
            return None
        when = _event_time(ev.get("timeNano"), 1e-9) or _event_time(ev.get("time"), 1.0)
        record = await self.inspect(cid) if action in ("create", "start") else None
        exit_code = _int(_object(actor.get("Attributes")).get("exitCode")) if action == "stop" else None
        return ContainerEvent(action, cid, record, when, pid=record.pid if record else 0, exit_code=exit_code)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Close the HTTP session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _error_kind(exc: BaseException) -> UnavailableKind:
    """The kind of a failed request: a timeout, an errno of the connect, a body that is not JSON, else the daemon
    went away (``aiohttp.ClientError``: disconnected, payload cut short)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return kind_of_oserror(exc)
    if isinstance(exc, ValueError):
        return "parse_error"
    return "unavailable"


def _status_kind(status: int) -> UnavailableKind:
    """The kind of an HTTP error answer: the daemon failing (5xx) is ``unavailable``, a refusal (4xx) an error."""
    if status in (401, 403):
        return "permission_denied"
    return "unavailable" if status >= 500 else "error"


# An answer that does not have the Engine API's shape (a daemon bug, a proxy in between) must not crash the reader:
# a field of the wrong type reads as absent, as a missing field does.
_MAX_EVENT_TIME = 253402300800.0  # 10000-01-01: a later time cannot be printed as an ISO 8601 date


def _loads(data: bytes) -> Any:
    """``json.loads``; a document nested too deeply for its recursion is a ``ValueError`` like other bad JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    """``value`` as an integer (a number or a numeric string), else None."""
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _event_time(value: Any, unit: float) -> float:
    """An event's time in seconds from ``value`` in ``unit``; 0 when absent, not a number, or not a plausible date."""
    number = _int(value)
    seconds = number * unit if number is not None and abs(number) < 1 << 63 else 0.0
    return seconds if 0 < seconds < _MAX_EVENT_TIME else 0.0


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _message(body: bytes) -> str:
    try:
        data = _loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    return str(data.get("message", data)) if isinstance(data, dict) else str(data)[:200]
