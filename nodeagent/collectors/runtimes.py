"""
Container runtimes and the kubelet as metadata sources: whether each runtime's API answers, how many containers
it knows, reconnects and events, and which pod and container the kubelet assigned each device to (PodResources).
The metadata itself names the cgroup metrics (``nodeagent.runtimes``); this collector reports on its sources.
Shell equivalent: ``ctr namespaces ls; ctr -n k8s.io containers ls; crictl ps -a; docker ps -a``.
"""

from __future__ import annotations

from collections.abc import Sequence

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.metrics import MetricFamily, counter, gauge, info
from nodeagent.runtimes import RuntimeMetadata, RuntimeStatus

_HINT = (
    "mount the runtime's socket into the agent's container at the same path (or set runtimes.<name>.socket), "
    "and run as root; `nodeagent doctor` lists each socket's state"
)


class RuntimesCollector(BaseCollector):
    """Reads the shared ``RuntimeMetadata`` (no I/O of its own except the rate-limited PodResources call)."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        meta = ctx.resolver().metadata
        if meta is None:
            raise ValueError("the runtimes collector needs the agent's runtime metadata (WorkloadResolver.metadata)")
        self._meta: RuntimeMetadata = meta

    async def collect(self) -> Sequence[MetricFamily]:
        """Report each runtime's state and the kubelet's device assignments."""
        meta = self._meta
        if not meta.running and not meta.synced:
            await meta.sync_once()  # `nodeagent doctor` and `once`: nothing is watching, so ask once
        statuses: list[RuntimeStatus] = list(meta.statuses.values())
        devices = meta.devices
        allocations = await devices.allocations() if devices is not None else []
        if devices is not None:
            statuses.append(devices.status)
        seen = [s for s in statuses if s.state != "missing"]
        if not seen:
            reasons = "; ".join(f"{s.runtime}: {s.reason}" for s in statuses) or "every runtime is disabled"
            raise NoDataError(f"no container runtime or kubelet socket answers ({reasons})", _HINT)

        up = gauge(
            "nodeagent_runtime_up",
            "Whether the runtime's API answers (1) or not (0); a socket absent since start-up is not listed.",
            ("runtime", "socket"),
        )
        containers = gauge(
            "nodeagent_runtime_containers", "Containers and pod sandboxes the runtime reports.", ("runtime",)
        )
        reconnects = counter(
            "nodeagent_runtime_reconnects_total", "Times the runtime's API answered again after failing.", ("runtime",)
        )
        events = counter("nodeagent_runtime_events_total", "Container events received from the runtime.", ("runtime",))
        failures = counter(
            "nodeagent_runtime_failures_total",
            "Failed attempts to reach the runtime's API while it is down, by reason (timeout, permission_denied, "
            "not_found, unavailable, parse_error or error).",
            ("runtime", "reason"),
        )
        for s in seen:
            up.add((s.runtime, s.socket), 1.0 if s.state == "up" else 0.0)
            containers.add((s.runtime,), float(s.containers))
            reconnects.add((s.runtime,), float(s.reconnects))
            if s.runtime in meta.statuses:
                events.add((s.runtime,), float(s.events))
            for reason, count in sorted(s.failures.items()):
                failures.add((s.runtime, reason), float(count))
        families = [up.build(), containers.build(), reconnects.build(), events.build(), failures.build()]
        if devices is not None and devices.calls:
            calls = counter(
                "nodeagent_kubelet_podresources_requests_total",
                "PodResources List calls by result (ok, error, rate_limited).",
                ("result",),
            )
            for result, n in sorted(devices.calls.items()):
                calls.add((result,), float(n))
            assigned = info(
                "nodeagent_pod_device_info",
                "A device the kubelet assigned to a container (PodResources); NVIDIA ids are GPU-<uuid>, "
                "GPU-<uuid>::<replica> or MIG-<uuid>.",
                ("namespace", "pod", "container", "resource", "device_id"),
            )
            for a in allocations:
                assigned.add((a.namespace, a.pod, a.container, a.resource, a.device_id), 1.0)
            families += [calls.build(), assigned.build()]
        return [f for f in families if f.samples]


SPEC = CollectorSpec(
    name="runtimes",
    description="Container runtime (containerd, CRI, Docker, Podman) and kubelet PodResources connection state.",
    config_model=CollectorConfig,
    factory=RuntimesCollector,
)
