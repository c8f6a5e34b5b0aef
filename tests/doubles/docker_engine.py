"""A test double of the Docker Engine HTTP API (version 1.43) on a unix socket, served by aiohttp.

No Docker Engine runs here: the double replays the responses the Engine API documentation describes
(https://docs.docker.com/engine/api/v1.43/) for the endpoints nodeagent reads, from containers the test adds.

Endpoints, each also under a ``/v<major>.<minor>`` prefix (``/v1.43/...``, ``/v1.41/...``):

* ``GET|HEAD /_ping``: ``OK``, headers ``Api-Version``, ``Docker-Experimental``, ``Ostype``, ``Server`` ...
* ``GET /version``: Docker's, or Podman's compat answer with ``flavor="podman"`` (a ``Podman Engine`` component).
* ``GET /containers/json``: running containers, all with ``all=1|true``; ``filters`` (JSON) ``status``, ``id``,
  ``name``, ``label``; ``limit``. Newest first.
* ``GET /containers/{id}/json``: inspect, by full id, unique id prefix or name; 404 ``No such container: <id>``.
* ``GET /events``: a chunked stream of one JSON object per line; ``filters`` ``type``, ``event``, ``container``,
  ``image``, ``label``; ``since`` replays the daemon's last 256 events from then on; ``until`` ends the stream.

As the daemon does, every response carries ``Api-Version``, ``Docker-Experimental``, ``Ostype`` and ``Server``; a
request for a newer API version than the double's maximum gets 400 ``client version X is too new ...``; an
unknown path gets 404 ``page not found``; errors are JSON ``{"message": ...}``.

The test drives it with ``add_container``, ``start``, ``die``, ``stop``, ``remove`` (each emits the events a real
daemon emits, to every open ``/events`` stream), ``set_error`` (answer an endpoint with an HTTP error) and
``close_event_streams`` (end or cut every open stream, as a daemon restart does). Call these from the thread
that runs the double's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

Flavor = Literal["docker", "podman"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DOCKER_VERSION = "24.0.7"
DOCKER_API_VERSION = "1.43"
DOCKER_MIN_API_VERSION = "1.12"
PODMAN_VERSION = "4.3.1"
PODMAN_COMPAT_API_VERSION = "1.41"
PODMAN_MIN_API_VERSION = "1.24"
EVENTS_KEPT = 256  # the daemon's in-memory event log that "since" replays from
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as the daemon prints a time never set

_VERSION_PREFIX = r"{api_version:v[0-9]+\.[0-9]+}"
_CONTAINER_STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def _rfc3339(ts: float) -> str:
    """A unix time as the daemon prints ``time.Time`` (RFC 3339, nanoseconds, UTC)."""
    whole = int(ts)
    nanos = round((ts - whole) * 1e9)
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _human_duration(seconds: float) -> str:
    """go-units ``HumanDuration``, which ``Status`` uses ("Up 5 minutes")."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _version_tuple(v: str) -> tuple[int, int]:
    major, _, minor = v.partition(".")
    return int(major), int(minor or 0)


def fake_image_id(image: str) -> str:
    """A stable ``sha256:<64 hex>`` image id for an image reference."""
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def fake_container_id(name: str) -> str:
    """A stable 64-hex container id for a name."""
    return hashlib.sha256(f"container/{name}".encode()).hexdigest()


@dataclass
class FakeContainer:
    """One container's state, from which the list, inspect and event answers are made."""

    id: str
    name: str
    image: str  # the reference it was created from, e.g. "nvcr.io/nvidia/pytorch:24.01-py3"
    image_id: str  # "sha256:..."
    labels: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ("sleep", "infinity")
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    created: float = field(default_factory=time.time)
    status: str = "created"  # one of _CONTAINER_STATES
    pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    restart_count: int = 0
    cgroup_parent: str = ""
    hostname: str = ""
    host_config: dict[str, Any] = field(default_factory=dict)  # extra HostConfig keys (DeviceRequests ...)
    ip_address: str = "172.17.0.2"

    @property
    def running(self) -> bool:
        """Whether the container runs now."""
        return self.status == "running"

    def status_text(self, now: float) -> str:
        """The list's human ``Status``: ``Up 5 minutes``, ``Exited (0) 2 seconds ago``, ``Created``."""
        if self.status == "running" and self.started_at is not None:
            return f"Up {_human_duration(now - self.started_at)}"
        if self.status in ("exited", "dead") and self.finished_at is not None:
            return f"Exited ({self.exit_code}) {_human_duration(now - self.finished_at)} ago"
        return self.status.capitalize()

    def _network_settings(self) -> dict[str, Any]:
        ip = self.ip_address if self.running else ""
        return {
            "Networks": {
                "bridge": {
                    "IPAMConfig": None,
                    "Links": None,
                    "Aliases": None,
                    "NetworkID": "9c0f4a7bd6c1" + "0" * 52,
                    "EndpointID": ("5e2a1d" + "0" * 58) if self.running else "",
                    "Gateway": "172.17.0.1" if self.running else "",
                    "IPAddress": ip,
                    "IPPrefixLen": 16 if self.running else 0,
                    "IPv6Gateway": "",
                    "GlobalIPv6Address": "",
                    "GlobalIPv6PrefixLen": 0,
                    "MacAddress": "02:42:ac:11:00:02" if self.running else "",
                    "DriverOpts": None,
                }
            }
        }

    def summary(self, now: float) -> dict[str, Any]:
        """An item of ``GET /containers/json`` (``ContainerSummary``)."""
        return {
            "Id": self.id,
            "Names": [f"/{self.name}"],
            "Image": self.image,
            "ImageID": self.image_id,
            "Command": " ".join(self.command),
            "Created": int(self.created),
            "Ports": [],
            "Labels": dict(self.labels),
            "State": self.status,
            "Status": self.status_text(now),
            "HostConfig": {"NetworkMode": "default"},
            "NetworkSettings": self._network_settings(),
            "Mounts": [],
        }

    def inspect(self) -> dict[str, Any]:
        """The body of ``GET /containers/{id}/json`` (``ContainerInspectResponse``)."""
        host_config: dict[str, Any] = {
            "Binds": None,
            "ContainerIDFile": "",
            "LogConfig": {"Type": "json-file", "Config": {}},
            "NetworkMode": "default",
            "PortBindings": {},
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "AutoRemove": False,
            "CgroupnsMode": "private",
            "IpcMode": "private",
            "PidMode": "",
            "Privileged": False,
            "Runtime": "runc",
            "CgroupParent": self.cgroup_parent,
            "CpuShares": 0,
            "Memory": 0,
            "NanoCpus": 0,
            "CpuPeriod": 0,
            "CpuQuota": 0,
            "CpusetCpus": "",
            "CpusetMems": "",
            "Devices": [],
            "DeviceRequests": None,
            "MemoryReservation": 0,
            "MemorySwap": 0,
            "OomKillDisable": None,
            "PidsLimit": None,
        }
        host_config.update(self.host_config)
        path, *args = self.command or ("",)
        return {
            "Id": self.id,
            "Created": _rfc3339(self.created),
            "Path": path,
            "Args": list(args),
            "State": {
                "Status": self.status,
                "Running": self.status == "running",
                "Paused": self.status == "paused",
                "Restarting": self.status == "restarting",
                "OOMKilled": self.oom_killed,
                "Dead": self.status == "dead",
                "Pid": self.pid,
                "ExitCode": self.exit_code,
                "Error": "",
                "StartedAt": _rfc3339(self.started_at) if self.started_at is not None else ZERO_TIME,
                "FinishedAt": _rfc3339(self.finished_at) if self.finished_at is not None else ZERO_TIME,
            },
            "Image": self.image_id,
            "ResolvConfPath": f"/var/lib/docker/containers/{self.id}/resolv.conf",
            "HostnamePath": f"/var/lib/docker/containers/{self.id}/hostname",
            "HostsPath": f"/var/lib/docker/containers/{self.id}/hosts",
            "LogPath": f"/var/lib/docker/containers/{self.id}/{self.id}-json.log",
            "Name": f"/{self.name}",
            "RestartCount": self.restart_count,
            "Driver": "overlay2",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "docker-default",
            "ExecIDs": None,
            "HostConfig": host_config,
            "GraphDriver": {"Data": None, "Name": "overlay2"},
            "Mounts": [],
            "Config": {
                "Hostname": self.hostname or self.id[:12],
                "Domainname": "",
                "User": "",
                "AttachStdin": False,
                "AttachStdout": False,
                "AttachStderr": False,
                "Tty": False,
                "OpenStdin": False,
                "StdinOnce": False,
                "Env": list(self.env),
                "Cmd": list(self.command),
                "Image": self.image,
                "Volumes": None,
                "WorkingDir": "",
                "Entrypoint": None,
                "OnBuild": None,
                "Labels": dict(self.labels),
            },
            "NetworkSettings": {
                "Bridge": "",
                "SandboxID": "",
                "HairpinMode": False,
                "Ports": {},
                "SandboxKey": f"/var/run/docker/netns/{self.id[:12]}" if self.running else "",
                "IPAddress": self.ip_address if self.running else "",
                **self._network_settings(),
            },
        }


@dataclass(eq=False)
class _Stream:
    """One open ``/events`` stream."""

    queue: asyncio.Queue[dict[str, Any] | None]
    filters: dict[str, list[str]]
    transport: asyncio.BaseTransport | None
    abrupt: bool = False


def _parse_filters(raw: str | None) -> dict[str, list[str]]:
    """``filters`` as the daemon takes it: ``{"k": ["v"]}`` or the legacy ``{"k": {"v": true}}``."""
    if not raw:
        return {}
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("filters must be a JSON object")
    out: dict[str, list[str]] = {}
    for key, value in doc.items():
        if isinstance(value, list):
            out[str(key)] = [str(v) for v in value]
        elif isinstance(value, dict):
            out[str(key)] = [str(v) for v, on in value.items() if on]
        else:
            raise ValueError(f"invalid filter value for {key!r}")
    return out


def _parse_time(raw: str | None) -> float | None:
    """``since``/``until``: unix seconds (``1700000000`` or ``1700000000.5``) or RFC 3339."""
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def _labels_match(labels: Mapping[str, str], wanted: Iterable[str]) -> bool:
    for item in wanted:
        key, eq, value = item.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


class DockerEngineDouble:
    """Test double replaying documented Docker Engine API responses (no Docker Engine runs here).

    ``async with DockerEngineDouble(sock) as engine: engine.add_container(...)``, or ``await serve()`` /
    ``await shutdown()`` (so named because ``start``/``stop`` act on containers). ``requests`` logs each request
    as ``(method, path_qs)``.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        flavor: Flavor = "docker",
        api_version: str | None = None,
        experimental: bool = False,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.flavor: Flavor = flavor
        if api_version is None:
            api_version = DOCKER_API_VERSION if flavor == "docker" else PODMAN_COMPAT_API_VERSION
        self.api_version = api_version
        self.min_api_version = DOCKER_MIN_API_VERSION if flavor == "docker" else PODMAN_MIN_API_VERSION
        self.experimental = experimental
        self.containers: dict[str, FakeContainer] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.requests: list[tuple[str, str]] = []
        self._errors: dict[str, tuple[int, str, int | None]] = {}
        self._streams: set[_Stream] = set()
        self._runner: web.AppRunner | None = None
        self._next_pid = 4200

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def serve(self) -> DockerEngineDouble:
        """Listen on the socket (a stale socket file is removed first, as dockerd does)."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application(middlewares=[self._middleware])
        routes: list[tuple[str, Handler]] = [
            ("/_ping", self._ping),
            ("/version", self._version),
            ("/containers/json", self._list),
            ("/containers/{id}/json", self._inspect),
            ("/events", self._events),
        ]
        for path, handler in routes:
            head = path == "/_ping"
            app.router.add_get(path, handler, allow_head=head)
            app.router.add_get(f"/{_VERSION_PREFIX}{path}", handler, allow_head=head)
        # handler_cancellation: an /events handler ends when its client hangs up, as the daemon's does.
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None, handler_cancellation=True)
        await runner.setup()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        await web.UnixSite(runner, str(self.socket_path)).start()
        self._runner = runner
        return self

    async def shutdown(self) -> None:
        """Close all event streams, stop listening and remove the socket file. ``serve`` may follow again,
        with the containers kept: a daemon restart."""
        self.close_event_streams()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.socket_path.unlink(missing_ok=True)

    async def __aenter__(self) -> DockerEngineDouble:
        return await self.serve()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    @property
    def base_url(self) -> str:
        """The ``docker`` SDK's ``base_url`` for the socket."""
        return f"unix://{self.socket_path}"

    # --- driving it ---------------------------------------------------------------------------------------

    def add_container(
        self,
        id: str | None,
        name: str,
        image: str,
        image_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        running: bool = True,
        pid: int | None = None,
        *,
        command: Iterable[str] = ("sleep", "infinity"),
        cgroup_parent: str = "",
        host_config: Mapping[str, Any] | None = None,
        created: float | None = None,
    ) -> FakeContainer:
        """Create a container (event ``create``) and, when ``running``, start it (event ``start``).

        ``id`` None derives one from ``name``; ``image_id`` None derives one from ``image``.
        """
        cid = id or fake_container_id(name)
        if cid in self.containers:
            raise ValueError(f"container {cid} exists")
        if any(c.name == name for c in self.containers.values()):
            raise ValueError(f'Conflict. The container name "/{name}" is already in use')
        ctr = FakeContainer(
            id=cid,
            name=name,
            image=image,
            image_id=image_id or fake_image_id(image),
            labels=dict(labels or {}),
            command=tuple(command),
            cgroup_parent=cgroup_parent,
            host_config=dict(host_config or {}),
            created=time.time() if created is None else created,
        )
        self.containers[cid] = ctr
        self._emit(ctr, "create")
        if running:
            self.start(cid, pid=pid)
        return ctr

    def start(self, id: str, *, pid: int | None = None) -> FakeContainer:
        """Start a created or exited container (event ``start``)."""
        ctr = self._get(id)
        if ctr.running:
            return ctr
        if pid is None:
            self._next_pid += 1
            pid = self._next_pid
        ctr.status, ctr.pid, ctr.exit_code, ctr.oom_killed = "running", pid, 0, False
        ctr.started_at, ctr.finished_at = time.time(), None
        self._emit(ctr, "start")
        return ctr

    def die(self, id: str, exit_code: int = 0, *, oom: bool = False) -> FakeContainer:
        """The main process exited (event ``oom`` first when ``oom``, then ``die`` with ``exitCode``)."""
        ctr = self._get(id)
        if not ctr.running:
            raise ValueError(f"container {id} is not running")
        started = ctr.started_at or time.time()
        ctr.status, ctr.pid, ctr.exit_code, ctr.oom_killed = "exited", 0, exit_code, oom
        ctr.finished_at = time.time()
        if oom:
            self._emit(ctr, "oom")
        self._emit(ctr, "die", {"exitCode": str(exit_code), "execDuration": str(int(ctr.finished_at - started))})
        return ctr

    def stop(self, id: str, exit_code: int = 0) -> FakeContainer:
        """``docker stop``: events ``kill`` (signal 15), ``die``, ``stop``."""
        ctr = self._get(id)
        if ctr.running:
            self._emit(ctr, "kill", {"signal": "15"})
            self.die(id, exit_code)
        self._emit(ctr, "stop")
        return ctr

    def remove(self, id: str) -> None:
        """``docker rm -f``: a running container is killed first (``kill`` 9, ``die`` 137); then ``destroy``."""
        ctr = self._get(id)
        if ctr.running:
            self._emit(ctr, "kill", {"signal": "9"})
            self.die(id, 137)
        del self.containers[ctr.id]
        self._emit(ctr, "destroy")

    def set_error(self, endpoint: str, status: int = 500, message: str | None = None, times: int | None = None) -> None:
        """Answer ``endpoint`` (``ping``, ``version``, ``containers``, ``inspect``, ``events``) with HTTP ``status``
        and ``{"message": message}``, ``times`` times or until ``clear_errors``."""
        if endpoint not in ("ping", "version", "containers", "inspect", "events"):
            raise ValueError(f"unknown endpoint {endpoint!r}")
        text = message or "Internal Server Error: the test double was told to fail"
        self._errors[endpoint] = (status, text, times)

    def clear_errors(self) -> None:
        """Answer normally again."""
        self._errors.clear()

    def close_event_streams(self, *, abrupt: bool = False) -> int:
        """End every open ``/events`` stream; returns how many. ``abrupt`` drops the connection without the
        closing chunk (a crashed daemon); otherwise the response ends cleanly (a daemon shutting down)."""
        streams = list(self._streams)
        for stream in streams:
            stream.abrupt = abrupt
            stream.queue.put_nowait(None)
        return len(streams)

    @property
    def open_event_streams(self) -> int:
        """How many ``/events`` streams are open."""
        return len(self._streams)

    # --- internals ----------------------------------------------------------------------------------------

    def _get(self, id: str) -> FakeContainer:
        ctr = self._find(id)
        if ctr is None:
            raise KeyError(f"No such container: {id}")
        return ctr

    def _find(self, ref: str) -> FakeContainer | None:
        """By full id, name (with or without the leading slash), or unique id prefix, as the daemon resolves."""
        if ref in self.containers:
            return self.containers[ref]
        name = ref.removeprefix("/")
        for ctr in self.containers.values():
            if ctr.name == name:
                return ctr
        matches = [c for c in self.containers.values() if c.id.startswith(ref)] if ref else []
        return matches[0] if len(matches) == 1 else None

    def _emit(self, ctr: FakeContainer, action: str, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
        now_ns = time.time_ns()
        attributes: dict[str, str] = dict(ctr.labels)
        attributes.update({"image": ctr.image, "name": ctr.name})
        attributes.update(extra or {})
        event: dict[str, Any] = {
            "status": action,
            "id": ctr.id,
            "from": ctr.image,
            "Type": "container",
            "Action": action,
            "Actor": {"ID": ctr.id, "Attributes": attributes},
            "scope": "local",
            "time": now_ns // 1_000_000_000,
            "timeNano": now_ns,
        }
        self.events.append(event)
        for stream in self._streams:
            if self._event_matches(event, stream.filters):
                stream.queue.put_nowait(event)
        return event

    @staticmethod
    def _event_matches(event: Mapping[str, Any], filters: Mapping[str, list[str]]) -> bool:
        attrs: Mapping[str, str] = event["Actor"]["Attributes"]
        checks: dict[str, Callable[[list[str]], bool]] = {
            "type": lambda v: event["Type"] in v,
            "event": lambda v: event["Action"] in v,
            "container": lambda v: event["Actor"]["ID"] in v or attrs.get("name") in v,
            "image": lambda v: attrs.get("image") in v,
            "label": lambda v: _labels_match(attrs, v),
            "scope": lambda v: event["scope"] in v,
        }
        return all(checks[key](values) for key, values in filters.items() if values)

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"message": message}, status=status)

    def _injected(self, endpoint: str) -> web.Response | None:
        entry = self._errors.get(endpoint)
        if entry is None:
            return None
        status, message, times = entry
        if times is not None:
            if times <= 1:
                del self._errors[endpoint]
            else:
                self._errors[endpoint] = (status, message, times - 1)
        return self._error(status, message)

    def _server_header(self) -> str:
        if self.flavor == "podman":
            return f"Libpod/{PODMAN_VERSION} (linux)"
        return f"Docker/{DOCKER_VERSION} (linux)"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        headers = {
            "Api-Version": self.api_version,
            "Docker-Experimental": "true" if self.experimental else "false",
            "Ostype": "linux",
            "Server": self._server_header(),
        }
        response: web.StreamResponse
        requested = request.match_info.get("api_version", "").removeprefix("v")
        if requested and self.flavor == "docker" and _version_tuple(requested) > _version_tuple(self.api_version):
            response = self._error(
                400, f"client version {requested} is too new. Maximum supported API version is {self.api_version}"
            )
        elif requested and _version_tuple(requested) < _version_tuple(self.min_api_version):
            response = self._error(
                400,
                f"client version {requested} is too old. Minimum supported API version is "
                f"{self.min_api_version}, please upgrade your client to a newer version",
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = self._error(404, "page not found")
            except web.HTTPMethodNotAllowed:
                response = self._error(405, "method not allowed")
        if not response.prepared:
            response.headers.update(headers)
        return response

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        injected = self._injected("ping")
        if injected is not None:
            return injected
        headers = {
            "Cache-Control": "no-cache, no-store, must-revalidate",
            "Pragma": "no-cache",
            "Content-Type": "text/plain; charset=utf-8",
        }
        if self.flavor == "docker":
            headers.update({"Builder-Version": "2", "Swarm": "inactive"})
        else:
            headers.update({"Libpod-Api-Version": PODMAN_VERSION, "Libpod-Buildah-Version": "1.28.2"})
        body = b"" if request.method == "HEAD" else b"OK"
        return web.Response(body=body, headers=headers)

    async def _version(self, request: web.Request) -> web.StreamResponse:
        injected = self._injected("version")
        if injected is not None:
            return injected
        kernel = os.uname().release
        if self.flavor == "podman":
            doc: dict[str, Any] = {
                "Platform": {"Name": "linux/amd64/debian-12"},
                "Components": [
                    {
                        "Name": "Podman Engine",
                        "Version": PODMAN_VERSION,
                        "Details": {
                            "APIVersion": PODMAN_VERSION,
                            "Arch": "amd64",
                            "BuildTime": "2023-04-12T08:00:00Z",
                            "Experimental": "false",
                            "GitCommit": "",
                            "GoVersion": "go1.19.8",
                            "KernelVersion": kernel,
                            "MinAPIVersion": "4.0.0",
                            "Os": "linux",
                        },
                    },
                    {"Name": "Conmon", "Version": "conmon version 2.1.6, commit: unknown", "Details": {}},
                    {"Name": "OCI Runtime (crun)", "Version": "crun version 1.8.1", "Details": {}},
                ],
                "Version": PODMAN_VERSION,
                "ApiVersion": self.api_version,
                "MinAPIVersion": self.min_api_version,
                "GitCommit": "",
                "GoVersion": "go1.19.8",
                "Os": "linux",
                "Arch": "amd64",
                "KernelVersion": kernel,
                "BuildTime": "2023-04-12T08:00:00Z",
            }
        else:
            doc = {
                "Platform": {"Name": "Docker Engine - Community"},
                "Components": [
                    {
                        "Name": "Engine",
                        "Version": DOCKER_VERSION,
                        "Details": {
                            "ApiVersion": self.api_version,
                            "Arch": "amd64",
                            "BuildTime": "2023-10-26T09:08:02.000000000+00:00",
                            "Experimental": "true" if self.experimental else "false",
                            "GitCommit": "311b9ff",
                            "GoVersion": "go1.20.10",
                            "KernelVersion": kernel,
                            "MinAPIVersion": self.min_api_version,
                            "Os": "linux",
                        },
                    },
                    {"Name": "containerd", "Version": "1.6.24", "Details": {"GitCommit": "61f9fd88f79f"}},
                    {"Name": "runc", "Version": "1.1.9", "Details": {"GitCommit": "v1.1.9-0-gccaecfc"}},
                    {"Name": "docker-init", "Version": "0.19.0", "Details": {"GitCommit": "de40ad0"}},
                ],
                "Version": DOCKER_VERSION,
                "ApiVersion": self.api_version,
                "MinAPIVersion": self.min_api_version,
                "GitCommit": "311b9ff",
                "GoVersion": "go1.20.10",
                "Os": "linux",
                "Arch": "amd64",
                "KernelVersion": kernel,
                "BuildTime": "2023-10-26T09:08:02.000000000+00:00",
            }
        return web.json_response(doc)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        injected = self._injected("containers")
        if injected is not None:
            return injected
        try:
            filters = _parse_filters(request.query.get("filters"))
        except ValueError as exc:
            return self._error(400, str(exc))
        for key in filters:
            if key not in ("status", "id", "name", "label"):
                return self._error(400, f"invalid filter '{key}'")
        for state in filters.get("status", []):
            if state not in _CONTAINER_STATES:
                return self._error(400, f"invalid filter 'status={state}'")
        show_all = request.query.get("all", "").lower() in ("1", "true") or "status" in filters
        now = time.time()
        items = []
        for ctr in sorted(self.containers.values(), key=lambda c: c.created, reverse=True):
            if not show_all and not ctr.running:
                continue
            if "status" in filters and ctr.status not in filters["status"]:
                continue
            if "id" in filters and not any(ctr.id.startswith(v) for v in filters["id"]):
                continue
            if "name" in filters and not any(re.search(v, ctr.name) for v in filters["name"]):
                continue
            if "label" in filters and not _labels_match(ctr.labels, filters["label"]):
                continue
            items.append(ctr.summary(now))
        limit = int(request.query.get("limit", "-1") or "-1")
        if limit > 0:
            items = items[:limit]
        return web.json_response(items)

    async def _inspect(self, request: web.Request) -> web.StreamResponse:
        injected = self._injected("inspect")
        if injected is not None:
            return injected
        ref = request.match_info["id"]
        ctr = self._find(ref)
        if ctr is None:
            return self._error(404, f"No such container: {ref}")
        return web.json_response(ctr.inspect())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        injected = self._injected("events")
        if injected is not None:
            return injected
        try:
            filters = _parse_filters(request.query.get("filters"))
            since = _parse_time(request.query.get("since"))
            until = _parse_time(request.query.get("until"))
        except ValueError as exc:
            return self._error(400, str(exc))
        for key in filters:
            if key not in ("type", "event", "container", "image", "label", "scope"):
                return self._error(400, f"invalid filter '{key}'")
        stream = _Stream(asyncio.Queue(), filters, request.transport)
        if since is not None:
            for event in self.events:
                if event["timeNano"] >= since * 1e9 and self._event_matches(event, filters):
                    stream.queue.put_nowait(event)
        self._streams.add(stream)
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "application/json",
                "Api-Version": self.api_version,
                "Docker-Experimental": "true" if self.experimental else "false",
                "Ostype": "linux",
                "Server": self._server_header(),
            },
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)  # the daemon sends its headers at once
            while True:
                timeout = None if until is None else max(0.0, until - time.time())
                try:
                    async with asyncio.timeout(timeout):
                        item = await stream.queue.get()
                except TimeoutError:
                    break
                if item is None:
                    if stream.abrupt and stream.transport is not None:
                        stream.transport.close()
                        return response
                    break
                if until is not None and item["timeNano"] > until * 1e9:
                    break
                await response.write(json.dumps(item).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self._streams.discard(stream)
        return response
