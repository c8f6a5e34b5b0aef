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
    check_socket,
    is_sandbox,
    k8s_fields,
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
                    raise RuntimeUnavailable(f"GET {path} on {self.socket}: HTTP {resp.status}: {_message(body)}")
                return json.loads(body)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise RuntimeUnavailable(f"GET {path} on {self.socket} failed: {type(exc).__name__}: {exc}") from exc

    async def list(self) -> list[ContainerRecord]:
        """Every container, running or not (``/containers/json?all=1``)."""
        items = await self._get("/containers/json", all="1")
        if not isinstance(items, list):
            raise RuntimeUnavailable(f"GET /containers/json on {self.socket}: expected a JSON array")
        return [self._from_list(c) for c in items if isinstance(c, dict)]

    async def inspect(self, container_id: str) -> ContainerRecord | None:
        """One container (``/containers/{id}/json``), or ``None`` if it is gone."""
        c = await self._get(f"/containers/{container_id}/json")
        if not isinstance(c, dict):
            return None
        config = c.get("Config") or {}
        state = c.get("State") or {}
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
            pid=int(state.get("Pid") or 0),
            **k8s_fields(labels),
        )

    def _from_list(self, c: dict[str, Any]) -> ContainerRecord:
        labels = _labels(c.get("Labels"))
        names = c.get("Names") or []
        return ContainerRecord(
            id=str(c.get("Id", "")),
            runtime=self.runtime,
            name=str(names[0]).lstrip("/") if names else "",
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
                    raise RuntimeUnavailable(f"GET /events on {self.socket}: HTTP {resp.status}: {_message(body)}")
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
            raise RuntimeUnavailable(f"GET /events on {self.socket} failed: {type(exc).__name__}: {exc}") from exc

    async def _event(self, line: bytes) -> ContainerEvent | None:
        try:
            ev = json.loads(line)
        except ValueError:
            return None
        if not isinstance(ev, dict) or ev.get("Type", "container") != "container":
            return None
        action = _ACTIONS.get(str(ev.get("Action") or ev.get("status") or ""))
        actor = ev.get("Actor") or {}
        cid = str(actor.get("ID") or ev.get("id") or "")
        if action is None or not cid:
            return None
        when = int(ev.get("timeNano") or 0) / 1e9 or float(ev.get("time") or 0)
        record = await self.inspect(cid) if action in ("create", "start") else None
        exit_code = None
        if action == "stop":
            try:
                exit_code = int((actor.get("Attributes") or {}).get("exitCode", ""))
            except ValueError:
                exit_code = None
        return ContainerEvent(action, cid, record, when, pid=record.pid if record else 0, exit_code=exit_code)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Close the HTTP session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    return str(data.get("message", data)) if isinstance(data, dict) else str(data)[:200]
