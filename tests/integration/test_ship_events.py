"""
Every kind of node event, produced for real on this machine, reaches the Logstash test double through the running
agent with its trace id and a unique event id, and bumps ``nodeagent_events_total`` with that trace id as exemplar:

* ``oom_kill``: a memory hog OOM-killed by the kernel in a test cgroup with a 32 MiB limit (cgroups collector);
* ``link_down`` / ``link_up``: a real veth pair set down and up (network collector, netlink link events);
* ``container_start`` / ``container_stop``: the Docker Engine API test double's event stream (runtimes);
* ``gpu_xid``: a critical Xid queued in the NVML test double, loaded by the agent through ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from nodeagent.events import EVENT_TYPES
from nodeagent.hostfs import HostPaths
from nodeagent.sources.cgroupfs import discover_layout
from tests.doubles.docker_engine import DockerEngineDouble
from tests.integration.agent_proc import http_get, wait_until
from tests.integration.cgroups_helpers import TestCgroups
from tests.integration.netns_helpers import NetnsLab, require_netns
from tests.integration.ship_peers import BackgroundLumberjack, ShippingAgent, agent_config, assert_all_arrived
from tests.integration.test_cgroups_real import _limit_memory, _oom_kill, make_container
from tests.integration.test_network_real import quiet_pair
from tests.nvml_double import Gpu, Scenario, Xid, build_or_missing, subprocess_env
from tests.prereq import missing

pytestmark = pytest.mark.integration


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[tuple[DockerEngineDouble, asyncio.AbstractEventLoop]]:
    """The Docker Engine double on a unix socket, served from an event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    engine = DockerEngineDouble(tmp_path / "docker.sock")
    asyncio.run_coroutine_threadsafe(engine.serve(), loop).result(10)
    try:
        yield engine, loop
    finally:
        asyncio.run_coroutine_threadsafe(engine.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> Any:
    async def call() -> Any:
        return fn(*args)

    return asyncio.run_coroutine_threadsafe(call(), loop).result(10)


def test_every_node_event_reaches_logstash_with_its_trace_id(
    tmp_path: Path, docker: tuple[DockerEngineDouble, asyncio.AbstractEventLoop]
) -> None:
    if os.geteuid() != 0:
        missing("root (test cgroups, veth pairs)")
    require_netns()
    engine, engine_loop = docker
    tree = TestCgroups(discover_layout(HostPaths().cgroup_root))
    receiver = BackgroundLumberjack()
    receiver.start()
    lab = NetnsLab().__enter__()
    try:
        c = make_container(tree)
        _limit_memory(tree, c.rel, 32 << 20)
        _, host_end, _ = quiet_pair(lab, "e")
        scenario = tmp_path / "nvml.scenario"
        Scenario(gpus=[Gpu(xids=[Xid(1, 79)])]).write(scenario)
        config = agent_config(
            tmp_path,
            receiver.port,
            tmp_path / "spool",
            enable={
                "cgroups": {"interval": "0.5s", "exclude": tree.exclude},
                "network": {"interval": "1s"},
                "gpu": {"interval": "0.5s"},
            },
            extra={
                "runtimes": {
                    "docker": {"socket": str(engine.socket_path)},
                    "podman": {"enabled": False},
                    "cri": {"enabled": False},
                    "containerd": {"enabled": False},
                },
                "kubelet": {"podresources": {"enabled": False}},
            },
            level="info",
        )
        env = subprocess_env(build_or_missing(), scenario)
        with ShippingAgent(config, tmp_path, env) as agent:
            time.sleep(1.5)  # the runtime event stream and the netlink subscription are up
            on_loop(engine_loop, engine.add_container, None, "web", "nginx:1.27")
            ctr = next(iter(engine.containers))
            _oom_kill(tree, c.rel, 1)
            lab.link(None, host_end, "down")
            time.sleep(0.3)
            lab.link(None, host_end, "up")
            on_loop(engine_loop, engine.stop, ctr, 0)

            def every_action_logged() -> bool:
                return {r.get("event.action") for r in agent.records()} >= set(EVENT_TYPES)

            wait_until(every_action_logged, 30, f"the agent to log each of {sorted(EVENT_TYPES)}")
            wanted = agent.ids()
            docs = assert_all_arrived(wanted, receiver)
            _, _, body = http_get(f"http://127.0.0.1:{agent.port}/metrics", {"Accept": "application/openmetrics-text"})
    finally:
        receiver.close()
        lab.__exit__(None, None, None)
        assert tree.cleanup() == []
    events = {}
    for d in docs:
        if d.get("event.kind") == "event":
            events.setdefault(d["event.action"], []).append(d)
    assert set(events) >= set(EVENT_TYPES)
    ids = [d["event.id"] for d in docs]
    assert len(set(ids)) == len(ids)  # unique ids (and no duplicate deliveries here)
    for action, docs_of in events.items():
        for d in docs_of:
            assert len(d["trace.id"]) == 32 and d["event.category"] == list(EVENT_TYPES[action].category), d
            assert d["data_stream.dataset"] == EVENT_TYPES[action].dataset
    assert any(d.get("nodeagent.workload.id") == tree.id(c.rel) for d in events["oom_kill"])
    assert any(d.get("interface.name") == host_end for d in events["link_down"])
    assert any(d.get("nodeagent.gpu.xid") == 79 for d in events["gpu_xid"])
    # The counter's exemplar is the trace id of the last event of that action (OpenMetrics exposition).
    samples = {
        s.labels["action"]: s
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name == "nodeagent_events_total"
    }
    for action, docs_of in events.items():
        assert samples[action].value >= len(docs_of)
        assert samples[action].exemplar is not None
        assert samples[action].exemplar.labels["trace_id"] in {d["trace.id"] for d in docs_of}
