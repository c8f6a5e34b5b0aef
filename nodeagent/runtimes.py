"""
Container runtime metadata for the workload resolver: one watcher task per runtime (containerd, CRI, Docker,
Podman) keeps a cache of its containers from a list plus its event stream (or a bounded poll), reconnects with
backoff, and logs container start and stop events. Collectors read an immutable index of the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog

from nodeagent.events import emit
from nodeagent.scheduler import new_trace_ids
from nodeagent.sources.runtime_model import (
    ContainerEvent,
    ContainerRecord,
    RuntimeClient,
    RuntimeUnavailable,
    UnavailableKind,
)

if TYPE_CHECKING:
    from nodeagent.config import KubeletConfig, RuntimesConfig
    from nodeagent.hostfs import HostPaths
    from nodeagent.sources.podresources import DeviceAllocation, PodResourcesClient

# Reconnect backoff: doubles from the first to the last, with +-20 % jitter so agents do not reconnect in step. The
# last (12 s at most with jitter) stays under the default 15 s interval, so a runtime that is back after a long
# outage is named again within one collection cycle; an attempt costs a stat, or a connect to a local socket.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
# A container id the cgroup walk saw but no runtime knows triggers a re-list, at most this often per runtime.
MISS_RELIST_INTERVAL = 30.0

_LABEL_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def label_metric_name(key: str) -> str:
    """The metric label for runtime/pod label ``key`` (cAdvisor's scheme: ``container_label_`` + sanitised key)."""
    return "container_label_" + _LABEL_NAME_BAD.sub("_", key)


@dataclass(frozen=True, slots=True)
class PodRecord:
    """A pod as its containers' CRI labels name it; ``labels`` are the sandbox's (the pod's own labels)."""

    uid: str
    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MetadataIndex:
    """An immutable view of every runtime's containers, merged; ``generation`` grows with every change."""

    generation: int
    containers: Mapping[str, ContainerRecord]
    pods: Mapping[str, PodRecord]


EMPTY_INDEX = MetadataIndex(0, {}, {})


@dataclass(slots=True)
class RuntimeStatus:
    """How the watcher of one runtime is doing: ``state`` is ``up``, ``down`` (was up, or its socket exists but
    refuses this process) or ``missing`` (not answered since start-up, socket absent or dead); ``reason`` says why
    it is not up, and ``failures`` counts failed attempts while down by ``RuntimeUnavailable.kind``."""

    runtime: str
    socket: str
    state: str = "missing"
    reason: str = "not tried yet"
    reconnects: int = 0
    events: int = 0
    containers: int = 0
    last_change: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, reason: str, kind: UnavailableKind) -> bool:
        """
        Record a failed attempt; returns whether the state or reason changed (worth a log line). A runtime that
        answered once is ``down``; before that it is ``missing``, except that a socket this process may not use
        is ``down`` at once: it exists, so its absence from the metrics would hide a misconfiguration.
        """
        new_state = "down" if self.state in ("up", "down") or kind == "permission_denied" else "missing"
        changed = (self.state, self.reason) != (new_state, reason)
        if new_state == "down":
            self.failures[kind] = self.failures.get(kind, 0) + 1
        if changed:
            self.last_change = time.time()
        self.state, self.reason = new_state, reason
        return changed


class RuntimeMetadata:
    """
    The cache of every configured runtime's containers. ``start()`` launches the watchers on the running loop;
    ``sync_once()`` lists each runtime once without watching (``nodeagent doctor``). ``index`` and
    ``describe`` are safe to call from worker threads: they only read the current immutable index.
    """

    def __init__(
        self,
        clients: Sequence[RuntimeClient],
        log: structlog.typing.FilteringBoundLogger,
        label_allowlist: Sequence[str] = (),
        poll_interval: float = 10.0,
        resync_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Earlier clients win when two runtimes know the same id (Docker's containers also show in containerd's
        # "moby" namespace, with fewer names).
        self.clients = list(clients)
        self.log = log
        self.label_allowlist = tuple(label_allowlist)
        self.label_names = tuple(label_metric_name(k) for k in self.label_allowlist)
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self.statuses = {c.runtime: RuntimeStatus(c.runtime, c.socket) for c in self.clients}
        self.index = EMPTY_INDEX
        self._clock = clock
        self._records: dict[str, dict[str, ContainerRecord]] = {c.runtime: {} for c in self.clients}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: dict[str, asyncio.Event] = {}
        self._missed: dict[str, float] = {}
        self._last_miss_relist: dict[str, float] = {}
        self._reindex_scheduled = False
        self.synced = False  # sync_once ran
        # The kubelet's device assignments, when configured (the GPU collector attributes devices with it).
        self.devices: PodDeviceCache | None = None

    @property
    def running(self) -> bool:
        """Whether the watchers are running."""
        return bool(self._tasks)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one watcher task per runtime on the running loop."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        for client in self.clients:
            self._wake[client.runtime] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._watch(client), name=f"runtime-{client.runtime}"))

    async def aclose(self) -> None:
        """Stop the watchers and close every connection."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self.clients:
            await client.aclose()
        if self.devices is not None:
            await self.devices.aclose()

    async def sync_once(self) -> None:
        """List every runtime once (for ``nodeagent doctor`` and tests); statuses say which answered. Each
        client bounds its own calls with its timeout."""
        for client in self.clients:
            try:
                records = await client.list()
            except (RuntimeUnavailable, TimeoutError) as exc:
                self._set_down(client, *_reason(exc))
                continue
            self._replace(client.runtime, records)
            self._set_up(client)
        self._reindex()
        self.synced = True

    # --- lookups (any thread) ------------------------------------------------------------------------------

    def container(self, container_id: str) -> ContainerRecord | None:
        """The record of ``container_id``; an unknown id asks the watchers to re-list (rate-limited)."""
        record = self.index.containers.get(container_id)
        if record is None and container_id:
            self._note_miss(container_id)
        return record

    def pod(self, uid: str) -> PodRecord | None:
        """The pod with ``uid``, as its containers' labels name it."""
        return self.index.pods.get(uid)

    def label_values(self, record: ContainerRecord) -> tuple[str, ...]:
        """The allowlisted labels of a container (its pod's labels, then its own), in allowlist order."""
        if not self.label_allowlist:
            return ()
        pod = self.index.pods.get(record.pod_uid) if record.pod_uid else None
        merged = {**pod.labels, **record.labels} if pod is not None else record.labels
        return tuple(merged.get(k, "") for k in self.label_allowlist)

    def _note_miss(self, container_id: str) -> None:
        now = self._clock()
        if now - self._missed.get(container_id, -1e9) < MISS_RELIST_INTERVAL:
            return
        if len(self._missed) > 4096:
            self._missed.clear()
        self._missed[container_id] = now
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        now = self._clock()
        for runtime, ev in self._wake.items():
            if now - self._last_miss_relist.get(runtime, -1e9) >= MISS_RELIST_INTERVAL:
                self._last_miss_relist[runtime] = now
                ev.set()

    # --- the watcher ---------------------------------------------------------------------------------------

    async def _watch(self, client: RuntimeClient) -> None:
        backoff = BACKOFF_FIRST
        while True:
            kind: UnavailableKind = "unavailable"
            try:
                await self._session(client)
                reason = "the event stream ended (runtime restarting?)"
            except RuntimeUnavailable as exc:
                reason, kind = exc.reason, exc.kind
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a client bug must not end the watcher
                reason, kind = f"unexpected {type(exc).__name__}: {exc}", "error"
                self.log.error("runtime.watch_failed", **{"error.message": reason, "container.runtime": client.runtime})
            was_up = self.statuses[client.runtime].state == "up"
            self._set_down(client, reason, kind)
            await client.aclose()
            if was_up:
                backoff = BACKOFF_FIRST
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self, client: RuntimeClient) -> None:
        """List, then follow the event stream (or poll) until the connection fails."""
        stream = client.events()
        if stream is None:
            self._replace(client.runtime, await client.list())
            self._set_up(client)
            self._reindex()
            await self._poll(client)
            return
        # Subscribe before listing, so a change between the two is not lost.
        aiter = stream.__aiter__()
        next_event: asyncio.Future[ContainerEvent] = asyncio.ensure_future(aiter.__anext__())
        try:
            await asyncio.sleep(0)
            self._replace(client.runtime, await client.list())
            self._set_up(client)
            self._reindex()
            await self._follow(client, aiter, next_event)
        finally:
            next_event.cancel()
            await asyncio.gather(next_event, return_exceptions=True)

    async def _follow(
        self, client: RuntimeClient, aiter: AsyncIterator[ContainerEvent], next_event: asyncio.Future[ContainerEvent]
    ) -> None:
        wake = self._wake[client.runtime]
        listed = self._clock()
        try:
            while True:
                waiter: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
                timeout = max(0.0, self.resync_interval - (self._clock() - listed))
                done, _ = await asyncio.wait([next_event, waiter], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if waiter not in done:
                    waiter.cancel()
                if next_event in done:
                    try:
                        event = next_event.result()
                    except StopAsyncIteration:
                        return
                    self._apply(client, event)
                    next_event = asyncio.ensure_future(aiter.__anext__())
                if waiter in done or not done:
                    # A container id nobody knew (a missed event), or the periodic resync that repairs drift.
                    wake.clear()
                    self._replace(client.runtime, await client.list())
                    self._reindex()
                    listed = self._clock()
        finally:
            next_event.cancel()
            await asyncio.gather(next_event, return_exceptions=True)

    async def _poll(self, client: RuntimeClient) -> None:
        """
        For a runtime without an event stream we can rely on (CRI's GetContainerEvents needs containerd 1.7+
        or CRI-O with evented PLEG): list every ``poll_interval``, or sooner when the cgroup walk meets an
        unknown container, and turn the differences into start and stop events.
        """
        wake = self._wake[client.runtime]
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.poll_interval)
            wake.clear()
            before = self._records[client.runtime]
            after = {r.id: r for r in await client.list()}
            now = time.time()
            for cid, rec in after.items():
                old = before.get(cid)
                if rec.running and (old is None or not old.running):
                    self._log_event(ContainerEvent("start", cid, rec, now, pid=rec.pid), rec)
                elif not rec.running and old is not None and old.running:
                    self._log_event(ContainerEvent("stop", cid, rec, now), rec)
            for cid, old in before.items():
                if cid not in after and old.running:
                    self._log_event(ContainerEvent("stop", cid, old, now), old)
            self._records[client.runtime] = after
            self._reindex_soon()

    def _apply(self, client: RuntimeClient, event: ContainerEvent) -> None:
        records = self._records[client.runtime]
        status = self.statuses[client.runtime]
        status.events += 1
        known = records.get(event.container_id)
        if event.action == "delete":
            records.pop(event.container_id, None)
        elif event.record is not None:
            records[event.container_id] = event.record
        record = event.record or known
        if event.action in ("start", "stop") and record is not None:
            running = event.action == "start"
            record = replace(record, running=running, pid=event.pid if running else 0)
            records[event.container_id] = record
        if event.action in ("start", "stop"):
            self._log_event(event, record)
        status.containers = len(records)
        self._reindex_soon()

    # --- state -------------------------------------------------------------------------------------------

    def _replace(self, runtime: str, records: Sequence[ContainerRecord]) -> None:
        self._records[runtime] = {r.id: r for r in records}
        self.statuses[runtime].containers = len(records)

    def _set_up(self, client: RuntimeClient) -> None:
        status = self.statuses[client.runtime]
        if status.state != "up":
            if status.state == "down":
                status.reconnects += 1
            self.log.info(
                "runtime.connected",
                message=f"{client.runtime} at {client.socket}: {status.containers} containers",
                **{"container.runtime": client.runtime, "nodeagent.runtime.socket": client.socket},
            )
        status.state, status.reason, status.last_change = "up", "", time.time()

    def _set_down(self, client: RuntimeClient, reason: str, kind: UnavailableKind) -> None:
        status = self.statuses[client.runtime]
        was = status.state
        if status.fail(reason, kind):
            fields = {"container.runtime": client.runtime, "nodeagent.runtime.socket": client.socket, "reason": kind}
            if was == "up":
                self.log.warning(
                    "runtime.disconnected",
                    message=f"{client.runtime}: {reason}; its containers' names are empty until it is back",
                    **fields,
                )
            elif status.state == "down" and was != "down":
                # A socket that exists but refuses this process: a misconfiguration a person has to fix.
                self.log.warning("runtime.unavailable", message=f"{client.runtime}: {reason}", **fields)
            else:
                self.log.debug("runtime.unavailable", message=f"{client.runtime}: {reason}", **fields)
        if self._records[client.runtime]:
            self._records[client.runtime] = {}
            status.containers = 0
            self._reindex()

    def _reindex_soon(self) -> None:
        """Rebuild the index once per burst of events (one loop iteration), not once per event."""
        if self._reindex_scheduled:
            return
        self._reindex_scheduled = True
        asyncio.get_running_loop().call_soon(self._reindex)

    def _reindex(self) -> None:
        self._reindex_scheduled = False
        containers: dict[str, ContainerRecord] = {}
        pods: dict[str, PodRecord] = {}
        for client in reversed(self.clients):  # earlier clients overwrite later ones
            for cid, rec in self._records[client.runtime].items():
                containers[cid] = rec
                if rec.pod_uid:
                    pod = pods.get(rec.pod_uid)
                    if pod is None or (rec.sandbox and not pod.labels):
                        pods[rec.pod_uid] = PodRecord(
                            rec.pod_uid, rec.pod_name, rec.pod_namespace, rec.labels if rec.sandbox else {}
                        )
        self.index = MetadataIndex(self.index.generation + 1, containers, pods)

    # --- events ------------------------------------------------------------------------------------------

    def _log_event(self, event: ContainerEvent, record: ContainerRecord | None) -> None:
        fields = container_event_fields(event, record, self.label_allowlist)
        what = record.name if record is not None and record.name else event.container_id[:12]
        if record is not None and record.pod_name:
            what = f"{record.pod_namespace}/{record.pod_name}/{record.container_name or 'sandbox'}"
        verb = "started" if event.action == "start" else "stopped"
        tail = f" (exit code {event.exit_code})" if event.exit_code is not None else ""
        emit(
            self.log, f"container_{event.action}", f"container {what} {verb}{tail}", fields, trace_id=new_trace_ids()[0]
        )


def _reason(exc: BaseException) -> tuple[str, UnavailableKind]:
    if isinstance(exc, RuntimeUnavailable):
        return exc.reason, exc.kind
    if isinstance(exc, TimeoutError):
        return "no answer in time", "timeout"
    return f"{type(exc).__name__}: {exc}", "error"


def split_image(image: str) -> tuple[str, str]:
    """``registry/repo:tag`` -> (``registry/repo``, ``tag``); a digest reference keeps its digest as the name."""
    if "@" in image:
        return image, ""
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, ""


def container_event_fields(
    event: ContainerEvent, record: ContainerRecord | None, label_allowlist: Sequence[str] = ()
) -> dict[str, Any]:
    """ECS fields (with Beats' ``kubernetes.*`` names beside ECS ``orchestrator.*``) of a start or stop event."""
    start = event.action == "start"
    fields: dict[str, Any] = {
        "container.id": event.container_id,
    }
    if event.time:
        fields["event.start" if start else "event.end"] = _iso(event.time)
    if event.pid:
        fields["process.pid"] = event.pid
    if event.exit_code is not None:
        fields["process.exit_code"] = event.exit_code
    if record is None:
        return fields
    image_name, tag = split_image(record.image)
    optional: dict[str, Any] = {
        "container.name": record.name,
        "container.runtime": record.runtime,
        "container.image.name": image_name,
        "container.image.tag": [tag] if tag else None,
        "container.image.hash.all": [record.image_id] if record.image_id else None,
        "container.labels": {k: record.labels[k] for k in label_allowlist if k in record.labels} or None,
        "nodeagent.container.runtime_namespace": record.runtime_namespace,
        "nodeagent.container.sandbox": True if record.sandbox else None,
    }
    if record.pod_uid:
        optional.update(
            {
                "orchestrator.type": "kubernetes",
                "orchestrator.namespace": record.pod_namespace,
                "orchestrator.resource.type": "pod",
                "orchestrator.resource.name": record.pod_name,
                "orchestrator.resource.id": record.pod_uid,
                "kubernetes.pod.name": record.pod_name,
                "kubernetes.pod.uid": record.pod_uid,
                "kubernetes.namespace": record.pod_namespace,
                "kubernetes.container.name": record.container_name,
            }
        )
    fields.update({k: v for k, v in optional.items() if v})
    return fields


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class PodDeviceCache:
    """
    The kubelet's device assignments (PodResources ``List``), asked at most once per ``min_interval`` however
    many collectors want them (the kubelet rate-limits the API for every client together). After a failed call
    the last answer is kept for ``stale_after`` seconds, then dropped rather than attributing devices to pods
    that may be gone.
    """

    def __init__(
        self,
        client: PodResourcesClient,
        log: structlog.typing.FilteringBoundLogger,
        min_interval: float = 10.0,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.log = log
        self.min_interval = min_interval
        self.stale_after = stale_after
        self.status = RuntimeStatus("kubelet-podresources", client.socket)
        self.calls: dict[str, int] = {}
        self._clock = clock
        self._value: list[DeviceAllocation] = []
        self._asked_at = -1e18
        self._good_at = -1e18
        self._inflight: asyncio.Task[list[DeviceAllocation]] | None = None

    async def allocations(self) -> list[DeviceAllocation]:
        """The current assignments (from the cache when it is younger than ``min_interval``)."""
        if self._clock() - self._asked_at < self.min_interval:
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._ask())
        try:
            return await asyncio.shield(self._inflight)
        finally:
            if self._inflight is not None and self._inflight.done():
                self._inflight = None

    async def _ask(self) -> list[DeviceAllocation]:
        self._asked_at = self._clock()
        status = self.status
        try:
            value = await self.client.list()
        except RuntimeUnavailable as exc:
            result = "rate_limited" if "RESOURCE_EXHAUSTED" in exc.reason else "error"
            self.calls[result] = self.calls.get(result, 0) + 1
            was = status.state
            if status.fail(exc.reason, exc.kind):
                log = self.log.warning if was == "up" or (status.state == "down" and was != "down") else self.log.debug
                log("kubelet.podresources_unavailable", message=f"kubelet PodResources: {exc.reason}", reason=exc.kind)
            await self.client.aclose()
            if self._clock() - self._good_at > self.stale_after:
                self._value = []
            return self._value
        self.calls["ok"] = self.calls.get("ok", 0) + 1
        if status.state != "up":
            status.reconnects += status.state == "down"
            self.log.info("kubelet.podresources_connected", message=f"kubelet PodResources: {len(value)} devices")
        status.state, status.reason, status.containers = "up", "", len(value)
        self._value, self._good_at = value, self._clock()
        return value

    async def aclose(self) -> None:
        """Close the connection."""
        if self._inflight is not None:
            self._inflight.cancel()
        await self.client.aclose()


def build_metadata(
    cfg: RuntimesConfig, kubelet: KubeletConfig, paths: HostPaths, log: structlog.typing.FilteringBoundLogger
) -> RuntimeMetadata:
    """The metadata store of every enabled runtime, with the kubelet device cache; sockets under ``paths.rootfs``."""
    from nodeagent.sources.containerd import ContainerdClient
    from nodeagent.sources.cri import CriClient
    from nodeagent.sources.docker import DockerClient

    clients: list[RuntimeClient] = []
    if cfg.docker.enabled:
        clients.append(DockerClient(paths.root(cfg.docker.socket), "docker", cfg.docker.timeout))
    if cfg.podman.enabled:
        clients.append(DockerClient(paths.root(cfg.podman.socket), "podman", cfg.podman.timeout))
    if cfg.cri.enabled:
        clients.append(CriClient(paths.root(cfg.cri.socket), cfg.cri.timeout))
    if cfg.containerd.enabled:
        clients.append(
            ContainerdClient(paths.root(cfg.containerd.socket), cfg.containerd.timeout, cfg.containerd.namespaces)
        )
    rlog = log.bind(**{"event.dataset": "nodeagent.container"})
    meta = RuntimeMetadata(clients, rlog, cfg.labels, cfg.poll_interval, cfg.resync_interval)
    pr = kubelet.podresources
    if pr.enabled:
        from nodeagent.sources.podresources import PodResourcesClient

        meta.devices = PodDeviceCache(PodResourcesClient(paths.root(pr.socket), pr.timeout), log, pr.min_interval)
    return meta
