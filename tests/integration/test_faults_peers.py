"""
Fault matrix, peers half: the real agent process while one of its peers fails, and after the fault clears.

* containerd (real, with runc) stopped (SIGTERM) and then killed (SIGKILL) under a running agent, and started again;
* the containerd socket refusing the agent (an unprivileged uid, run with ``setpriv``), then its group granted;
* the kubelet PodResources socket missing at start, appearing, going away and coming back (PodResources double,
  NVML double as the GPUs);
* the spool's file system full (a 1 MiB tmpfs filled by another file), then space given back;
* Logstash down, then slow (acknowledging after the agent's timeout), then well (Lumberjack double);
* SIGTERM with a backlog, with Logstash down and with a slow Logstash, then a restart that delivers the rest.

Each asserts that /metrics kept answering through the fault, that the affected source says so (``runtime_up`` 0,
``ship_up`` 0, a failure counter, the reason in the log) while every other collector stays successful, that
nothing already collected or queued is lost (records counted: at least once, duplicates only where docs/logs.md
says they may come from), and the time to recover once the fault is cleared. What ``test_ship_faults.py``
already proves (a 60 s outage with memory bounded, ``kill -9`` with unacknowledged records, a slow receiver that
keeps the connection alive with keepalives, a full spool directory while Logstash is down) is not repeated here.
"""

from __future__ import annotations

import collections
import os
import secrets
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.runtimes import BACKOFF_MAX
from tests.doubles.lumberjack import Mode, ReceivedEvent
from tests.doubles.podresources import typical_allocations
from tests.faults_peers_helpers import (
    NO_RUNTIMES,
    NOBODY,
    BackgroundPodResources,
    FaultAgent,
    Samples,
    ScrapeWatch,
    collector_state,
    collectors_only,
    fill,
    measure,
    scrape,
    tmpfs,
    total,
    value,
)
from tests.integration.agent_proc import wait_until
from tests.integration.containerd_harness import BUSYBOX_REF, Containerd, prerequisites_and_image
from tests.integration.ship_peers import BackgroundLumberjack, ShippingAgent, agent_config, assert_all_arrived
from tests.nvml_double import Gpu, Scenario, build_or_missing, subprocess_env
from tests.prereq import missing, require_binary

pytestmark = [pytest.mark.integration, pytest.mark.root]

INTERVAL = 1.0  # collection interval of the agents under test
SHIP_BACKOFF_MAX = 1.0  # logs.ship.backoff_max of ship_peers.agent_config
SHIP_TIMEOUT = 1.0  # logs.ship.timeout of ship_peers.agent_config
SYNC_INTERVAL = 0.5  # logs.ship.sync_interval (the default)
DRAIN_SECONDS = 5.0  # what docs/logs.md promises a SIGTERM: up to 5 s to deliver what is queued
MARGIN = 2.5  # scheduling slack of a small, shared CI machine


def reconnect_bound(outage: float) -> float:
    """
    The longest a runtime watcher may take to reconnect once its peer is back after ``outage`` seconds: the backoff
    doubles from 0.5 s (+-20 % jitter), so the wait in progress is at most the time already waited plus 0.5 s,
    and never more than ``BACKOFF_MAX``; then one collection cycle shows it.
    """
    return 1.2 * min(BACKOFF_MAX, outage + 0.5) + INTERVAL + MARGIN


# --- containerd ------------------------------------------------------------------------------------------------


class Pod:
    """One Kubernetes-labelled container of the module's containerd: its cgroup id and the names it must get."""

    def __init__(self, ctrd: Containerd) -> None:
        uid = str(uuid.uuid4())
        # A kubepods-style path of its own (the resolver finds a pod below any segment naming kubepods): the cgroups
        # the harness creates, and removes at the end, are never those of another containerd test's pods.
        self.parent = f"/natest-kubepods/burstable/pod{uid}"
        self.container_id = secrets.token_hex(32)
        labels = {
            "io.kubernetes.pod.name": "web-0",
            "io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.pod.uid": uid,
            "io.kubernetes.container.name": "app",
        }
        ctrd.run_container("k8s.io", self.container_id, BUSYBOX_REF, self.parent, labels)
        self.cgroup = f"{self.parent}/{self.container_id}"
        self.names = {"name": self.container_id, "image": BUSYBOX_REF, "container": "app", "pod": "web-0"}

    def rows(self, samples: Samples) -> list[dict[str, str]]:
        """The labels of every ``container_*`` sample of the container's cgroup."""
        return [
            lb
            for name, rows in samples.items()
            if name.startswith("container_")
            for lb, _ in rows
            if lb.get("id") == self.cgroup
        ]

    def named(self, samples: Samples) -> bool:
        rows = self.rows(samples)
        return bool(rows) and all({k: lb.get(k) for k in self.names} == self.names for lb in rows)

    def unnamed(self, samples: Samples) -> bool:
        """Series still there (the cgroup is read), names empty (never stale while the runtime is away)."""
        rows = self.rows(samples)
        return bool(rows) and all(lb.get("pod") == "" and lb.get("container") == "" for lb in rows)


@pytest.fixture(scope="module")
def ctrd() -> Iterator[Containerd]:
    image = prerequisites_and_image()
    top = Path(tempfile.mkdtemp(prefix="natest-ctrd-", dir="/tmp"))
    c = Containerd(top)
    try:
        # /run/containerd is 0711: anyone may reach the socket, whose own mode decides. access(2) checks with the
        # real uid and no capabilities, so the unprivileged agent needs the same search permission here.
        for d in {top, c.base, c.sock_dir}:
            d.chmod(0o711)
        c.start()
        c.import_image(image, "k8s.io")
        yield c
    finally:
        problems = c.close()
        shutil.rmtree(top, ignore_errors=True)
    assert problems == [], problems


@pytest.fixture(scope="module")
def pod(ctrd: Containerd) -> Pod:
    return Pod(ctrd)


def runtime_config(ctrd: Containerd, pod: Pod) -> dict[str, Any]:
    """cgroups (of the test pod only), runtimes and loadavg every second; the module's containerd the only runtime."""
    return {
        "interval": f"{INTERVAL:g}s",
        "jitter": "1ms",
        "log": {"level": "debug"},
        "collectors": collectors_only({"cgroups": {"include": f"^{pod.parent}"}, "runtimes": {}, "loadavg": {}}),
        "runtimes": {
            **NO_RUNTIMES["runtimes"],
            "containerd": {"socket": ctrd.address, "timeout": "2s"},
        },
        "kubelet": NO_RUNTIMES["kubelet"],
    }


def containerd_up(samples: Samples, ctrd: Containerd) -> float | None:
    return value(samples, "nodeagent_runtime_up", runtime="containerd", socket=ctrd.address)


def assert_others_fine(samples: Samples, *collectors: str) -> None:
    """Every collector named succeeded in its last cycle and found its source."""
    assert {c: collector_state(samples, c) for c in collectors} == {c: (1.0, 1.0) for c in collectors}


def attempts_logged(agent: FaultAgent, reason: str, text: str) -> bool:
    """Whether a failed reconnect attempt was logged with ``reason`` and ``text`` in its message."""
    return any(
        r.get("nodeagent.reason") == reason and text in r["message"] for r in agent.events("runtime.unavailable")
    )


def test_containerd_stopped_then_killed_and_restarted(ctrd: Containerd, pod: Pod, tmp_path: Path) -> None:
    """
    containerd stopped (SIGTERM: it removes its socket) and, the second time, killed (SIGKILL: a dead socket that
    refuses): ``nodeagent_runtime_up`` 0 and the reason logged, the runtimes collector still succeeds (it reports
    the runtime, it does not fail with it), the container's series keep coming with empty names; once containerd
    is back, the names, ``runtime_up`` 1 and the container count return within the reconnect backoff and a cycle.
    """
    ctrd.start()
    with FaultAgent(runtime_config(ctrd, pod), tmp_path) as agent:
        measure(lambda: pod.named(agent.scrape()), 20, "the container's series to carry its names")
        before = agent.scrape()
        containers = value(before, "nodeagent_runtime_containers", runtime="containerd")
        assert containers is not None and containers >= 1
        recoveries = {}
        with ScrapeWatch(agent.url) as watch:
            for fault, reason, text in (
                ("stop", "not_found", f"socket {ctrd.address} does not exist"),
                ("kill", "unavailable", "Connection refused"),
            ):
                getattr(ctrd, fault)()
                down_at = time.monotonic()
                measure(lambda: containerd_up(agent.scrape(), ctrd) == 0.0, 10, f"runtime_up 0 after {fault}")
                measure(lambda: pod.unnamed(agent.scrape()), 2 * INTERVAL + MARGIN, "names to empty")
                time.sleep(INTERVAL)  # a cycle with containerd away
                during = agent.scrape()
                assert_others_fine(during, "runtimes", "cgroups", "loadavg")
                assert pod.unnamed(during) and containerd_up(during, ctrd) == 0.0
                measure(
                    lambda r=reason, t=text: attempts_logged(agent, r, t),  # type: ignore[misc]
                    reconnect_bound(time.monotonic() - down_at),
                    f"a reconnect attempt logged with reason {reason} after {fault}",
                )
                ctrd.start()
                outage = time.monotonic() - down_at
                recoveries[fault] = measure(
                    lambda: (lambda s: pod.named(s) and containerd_up(s, ctrd) == 1.0)(agent.scrape()),
                    reconnect_bound(outage),
                    f"names and runtime_up 1 after containerd came back ({fault}, {outage:.1f} s away)",
                )
        after = agent.scrape()
        assert value(after, "nodeagent_runtime_containers", runtime="containerd") == containers
        assert value(after, "nodeagent_runtime_reconnects_total", runtime="containerd") == 2.0
        assert_others_fine(after, "runtimes", "cgroups", "loadavg")
        assert watch.failures == [] and watch.ok >= 10
        disconnects = agent.events("runtime.disconnected")
        assert [(r["log.level"], r["nodeagent.reason"]) for r in disconnects] == [("warning", "unavailable")] * 2
        assert agent.proc is not None and agent.proc.poll() is None
    print(
        f"\ncontainerd back -> names again: {recoveries['stop']:.2f} s (stopped), {recoveries['kill']:.2f} s (killed)"
    )


def test_runtime_socket_permission_denied_then_granted(ctrd: Containerd, pod: Pod, tmp_path: Path) -> None:
    """
    The agent runs as nobody; containerd's socket is root:root 0660, as containerd makes it: the socket exists, so
    the runtime is not "missing" but down (``runtime_up`` 0) with a warning that says permission denied and what
    to do, and the runtimes and cgroups collectors keep succeeding. Granting the socket's group to the agent's
    gid brings ``runtime_up`` 1 and the names back within the reconnect backoff and a cycle. ``nodeagent doctor``
    run as the same user says the same while the socket refuses.
    """
    require_binary("setpriv", "util-linux")
    ctrd.start()
    os.chown(ctrd.address, 0, 0)
    os.chmod(ctrd.address, 0o660)
    try:
        started = time.monotonic()
        with FaultAgent(runtime_config(ctrd, pod), tmp_path, as_user=NOBODY) as agent:
            assert agent.proc is not None
            uid_line = next(
                x for x in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines() if x.startswith("Uid:")
            )
            assert uid_line.split()[1:] == [str(NOBODY)] * 4  # the denial is real: no root, no CAP_DAC_OVERRIDE
            with ScrapeWatch(agent.url) as watch:
                measure(lambda: containerd_up(agent.scrape(), ctrd) == 0.0, 10, "runtime_up 0 for the refused socket")
                time.sleep(INTERVAL)
                denied = agent.scrape()
                assert_others_fine(denied, "runtimes", "cgroups", "loadavg")
                assert pod.unnamed(denied)
                warnings = [r for r in agent.events("runtime.unavailable") if r["log.level"] == "warning"]
                assert [(r["nodeagent.reason"], r["message"]) for r in warnings] == [
                    (
                        "permission_denied",
                        f"containerd: permission denied on {ctrd.address}: run as root or add this user to the "
                        "socket's group",
                    )
                ]
                # nodeagent doctor, as the same user, names the state and the remedy.
                assert (
                    f"  containerd            down: permission denied on {ctrd.address}: run as root or add this user "
                    "to the socket's group\n"
                ) in agent.doctor()
                os.chown(ctrd.address, 0, NOBODY)  # the fix an operator makes: the socket's group is the agent's
                denied_for = time.monotonic() - started
                recovery = measure(
                    lambda: (lambda s: pod.named(s) and containerd_up(s, ctrd) == 1.0)(agent.scrape()),
                    reconnect_bound(denied_for),
                    f"runtime_up 1 and names once the socket's group is the agent's (denied for {denied_for:.1f} s)",
                )
            assert watch.failures == [] and watch.ok >= 5
            assert_others_fine(agent.scrape(), "runtimes", "cgroups", "loadavg")
    finally:
        os.chown(ctrd.address, 0, 0)
    print(f"\nsocket permission restored -> runtime_up 1 and names: {recovery:.2f} s")


# --- kubelet PodResources ------------------------------------------------------------------------------------------


def test_kubelet_podresources_socket_missing_then_appears(tmp_path: Path) -> None:
    """
    No kubelet socket at start: documented as no data (no ``runtime_up`` row, runtimes ``has_data`` 0), the GPU
    collector succeeds without attribution. The socket appears: within ``min_interval`` and a cycle, the GPUs
    carry the pod the kubelet assigned them to and ``runtime_up`` is 1. The kubelet goes away: ``runtime_up`` 0,
    the last answer is kept (docs/runtimes.md: 60 s), GPU metrics unaffected; it comes back: one reconnect.
    """
    lib_dir = build_or_missing()
    scenario = tmp_path / "nvml.scenario"
    Scenario(gpus=[Gpu(), Gpu()]).write(scenario)
    sockdir = Path(tempfile.mkdtemp(prefix="natest-kubelet-", dir="/tmp"))  # short: a unix socket path is <108 bytes
    sock = sockdir / "kubelet.sock"
    kubelet = BackgroundPodResources(sock, typical_allocations())
    min_interval = 0.5
    config = {
        "interval": f"{INTERVAL:g}s",
        "jitter": "1ms",
        "collectors": collectors_only({"gpu": {"interval": "0.5s"}, "runtimes": {"interval": "0.5s"}, "loadavg": {}}),
        "runtimes": NO_RUNTIMES["runtimes"],
        "kubelet": {"podresources": {"socket": str(sock), "min_interval": f"{min_interval}s", "timeout": "1s"}},
    }
    expected = {("0", "ml", "train-0", "trainer"), ("1", "ml", "train-0", "trainer")}  # typical_allocations, 2 GPUs

    def attributed(samples: Samples) -> set[tuple[str, ...]]:
        rows = samples.get("nodeagent_gpu_allocation_info", [])
        return {(lb["gpu"], lb["namespace"], lb["pod"], lb["container"]) for lb, _ in rows}

    def kubelet_up(samples: Samples) -> float | None:
        return value(samples, "nodeagent_runtime_up", runtime="kubelet-podresources", socket=str(sock))

    try:
        with (
            FaultAgent(config, tmp_path, env=subprocess_env(lib_dir, scenario)) as agent,
            ScrapeWatch(agent.url) as watch,
        ):
            time.sleep(2 * INTERVAL)  # a few cycles without the socket
            missing_now = agent.scrape()
            assert kubelet_up(missing_now) is None
            assert collector_state(missing_now, "runtimes") == (1.0, 0.0)
            assert_others_fine(missing_now, "gpu", "loadavg")
            assert len(missing_now["nodeagent_gpu_up"]) == 2 and attributed(missing_now) == set()

            kubelet.start()
            appeared = measure(
                lambda: (lambda s: attributed(s) == expected and kubelet_up(s) == 1.0)(agent.scrape()),
                min_interval + 0.5 + MARGIN,
                "GPU attribution once the kubelet socket appears",
            )
            assert_others_fine(agent.scrape(), "runtimes", "gpu", "loadavg")

            kubelet.stop()
            measure(lambda: kubelet_up(agent.scrape()) == 0.0, min_interval + 0.5 + MARGIN, "runtime_up 0")
            gone = agent.scrape()
            assert attributed(gone) == expected  # the last answer stays (for 60 s), nothing collected is dropped
            assert_others_fine(gone, "runtimes", "gpu", "loadavg")
            assert total(gone, "nodeagent_kubelet_podresources_requests_total") > 0

            kubelet.start()
            back = measure(
                lambda: (lambda s: kubelet_up(s) == 1.0)(agent.scrape()),
                min_interval + 0.5 + MARGIN,
                "runtime_up 1 when the kubelet is back",
            )
            final = agent.scrape()
            assert value(final, "nodeagent_runtime_reconnects_total", runtime="kubelet-podresources") == 1.0
            assert attributed(final) == expected
            assert watch.failures == []
        # One warning when the kubelet that answered went away: the socket vanished (not_found) or the call in flight
        # was cut (unavailable), whichever the stop met first; the attempts while missing at start are debug.
        warned = [r for r in agent.events("kubelet.podresources_unavailable") if r["log.level"] == "warning"]
        assert [r["nodeagent.reason"] in ("not_found", "unavailable") for r in warned] == [True], warned
    finally:
        kubelet.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    print(f"\nkubelet socket appears -> GPU attribution: {appeared:.2f} s; kubelet back -> up 1: {back:.2f} s")


# --- log shipping ----------------------------------------------------------------------------------------------


def received(receiver: BackgroundLumberjack) -> list[ReceivedEvent]:
    """Every event the double recorded as queued, with the connection that brought it."""

    async def events() -> list[ReceivedEvent]:
        return list(receiver.server.events)

    result: list[ReceivedEvent] = receiver._call(events())
    return result


def copies(events: list[ReceivedEvent], wanted: set[str]) -> collections.Counter[str]:
    """How many times each wanted ``event.id`` arrived."""
    return collections.Counter(e.event["event.id"] for e in events if e.event.get("event.id") in wanted)


def test_spool_disk_full_then_space_back_resumes_spooling(tmp_path: Path, receiver: BackgroundLumberjack) -> None:
    """
    Logstash down, so every record waits in the spool; another file fills the spool's file system: writes fail
    and are counted, the records stay in memory, nothing is dropped, the agent serves. The file is removed: the
    spool writes what it held within a sync interval or two. Then ``kill -9`` and a restart with Logstash up:
    every record logged up to that point arrives exactly once (it was only ever sent by the second agent).
    """
    if os.geteuid() != 0:
        missing("root (mounting a tmpfs for the spool)")
    with tmpfs(tmp_path / "spool", "1m") as spool:
        config = agent_config(tmp_path, receiver.port, spool, enable={"loadavg": {"interval": "1s"}})
        with ShippingAgent(config, tmp_path) as agent, ScrapeWatch(f"http://127.0.0.1:{agent.port}") as watch:
            url = f"http://127.0.0.1:{agent.port}"
            wait_until(lambda: agent.metric('nodeagent_log_spool_bytes{where="disk"}') > 0, 10, "records on disk")
            filler = fill(spool)
            wait_until(
                lambda: (
                    agent.metric("nodeagent_log_spool_write_errors_total") > 0
                    and agent.metric('nodeagent_log_spool_bytes{where="memory"}') > 0
                ),
                10,
                "failed spool writes and records held in memory",
            )
            time.sleep(2.5)  # the disk stays full for five sync intervals
            full = scrape(url)  # one snapshot: a partial write may move bytes from memory to disk between two
            held = value(full, "nodeagent_log_spool_bytes", where="memory") or 0.0
            disk_full = value(full, "nodeagent_log_spool_bytes", where="disk") or 0.0
            assert held > 0 and total(full, "nodeagent_log_records_dropped_total") == 0
            assert collector_state(full, "loadavg") == (1.0, 1.0)  # the only collector, unaffected
            filler.unlink()
            resumed = measure(
                lambda: value(scrape(url), "nodeagent_log_spool_bytes", where="disk") >= disk_full + held,  # type: ignore[operator]
                2 * SYNC_INTERVAL + MARGIN,
                "the records held in memory to be written once there is space",
            )
            wanted: set[str] = set()

            def all_on_disk() -> bool:
                ids = agent.ids()  # read before the scrape: every one of them was in the spool by then
                if agent.metric('nodeagent_log_spool_bytes{where="memory"}') != 0:
                    return False
                wanted.update(ids)
                return True

            measure(all_on_disk, 10, "a moment with every record logged so far on disk")
            # The reason, once, in the log; and once more when the disk takes writes again.
            said = [
                (r["log.level"], r["nodeagent.log.event"])
                for r in agent.records()
                if "spool_w" in r["message"] + r.get("nodeagent.log.event", "")
            ]
            assert said == [("warning", "ship.spool_write_failed"), ("info", "ship.spool_written")], said
            failed = next(r for r in agent.records() if r.get("nodeagent.log.event") == "ship.spool_write_failed")
            assert "No space left on device" in failed["error.message"] and str(spool) in failed["message"]
            assert agent.metric("nodeagent_log_records_dropped_total") == 0
            assert agent.metric("nodeagent_log_records_acknowledged_total") == 0
            assert agent.proc.poll() is None and watch.failures == []
            agent.proc.send_signal(signal.SIGKILL)  # only what is on disk survives this
            agent.proc.wait(10)
        receiver.start()
        with ShippingAgent(config, tmp_path):
            assert_all_arrived(wanted, receiver)
        counts = copies(received(receiver), wanted)
    assert set(counts) == wanted and max(counts.values()) == 1, collections.Counter(counts.values())
    print(f"\ndisk space back -> spooling resumed in {resumed:.2f} s; {len(wanted)} records, each delivered once")


def test_logstash_down_then_slow_then_back_delivers_everything(tmp_path: Path) -> None:
    """
    Logstash down (refused), then up but acknowledging each window 2 s late, after the agent's 1 s timeout (no
    keepalives: a stalled pipeline), then well. While down and slow: ``ship_up`` 0, failures counted, nothing
    acknowledged, records pile up in the spool, the agent serves and collects. Once well: every record logged
    arrives, within the shipping backoff and timeout. Duplicates (at least once) are only records that a slow
    window delivered after the agent had given up on it: every duplicated id has a copy from a slow connection.
    """
    receiver = BackgroundLumberjack(mode=Mode.DELAYED_ACK, delay_s=2.0, keepalive_s=60.0)
    try:
        config = agent_config(tmp_path, receiver.port, tmp_path / "spool")
        with ShippingAgent(config, tmp_path) as agent, ScrapeWatch(f"http://127.0.0.1:{agent.port}") as watch:
            wait_until(lambda: agent.metric("nodeagent_log_ship_failures_total") > 0, 10, "refused batches")
            time.sleep(1.5)
            assert (
                agent.metric("nodeagent_log_ship_up") == 0 and agent.metric("nodeagent_log_records_unacknowledged") > 0
            )

            receiver.start()  # up, but slow
            failures_slow = agent.metric("nodeagent_log_ship_failures_total")
            time.sleep(5)
            assert agent.metric("nodeagent_log_ship_failures_total") > failures_slow  # timed out, sent again
            assert agent.metric("nodeagent_log_ship_up") == 0
            assert agent.metric("nodeagent_log_records_acknowledged_total") == 0
            assert agent.metric("nodeagent_collector_success") == 1.0

            wanted = agent.ids()
            slow_connections = receiver.server.connections
            receiver.set_mode(Mode.NORMAL)
            well_at = time.monotonic()
            assert_all_arrived(wanted, receiver, limit=SHIP_TIMEOUT + SHIP_BACKOFF_MAX + 10)
            delivered = time.monotonic() - well_at
            # The last records may have arrived in a slow window the agent had already given up on: it reports the
            # endpoint up once a window of its own is acknowledged, within one timeout and backoff.
            up_within = SHIP_TIMEOUT + SHIP_BACKOFF_MAX + MARGIN
            wait_until(lambda: agent.metric("nodeagent_log_ship_up") == 1, up_within, "ship_up 1")
            assert agent.metric("nodeagent_log_records_dropped_total") == 0
            assert watch.failures == []
            reasons = [r["error.message"] for r in agent.records() if r.get("nodeagent.log.event") == "ship.failed"]
            endpoint = f"127.0.0.1:{receiver.port}"
            assert reasons[0] == f"connect to {endpoint}: Connection refused", reasons
            assert any(x.startswith(f"no ACK from {endpoint} in 1s (0/") for x in reasons), reasons
        events = received(receiver)
        counts = copies(events, wanted)
        assert set(counts) == wanted
        duplicated = {i for i, n in counts.items() if n > 1}
        from_slow = {e.event["event.id"] for e in events if e.connection <= slow_connections}
        assert duplicated <= from_slow, duplicated - from_slow
        assert duplicated, "no window was delivered late: the slow phase did not happen as planned"
    finally:
        receiver.close()
    assert delivered <= SHIP_TIMEOUT + SHIP_BACKOFF_MAX + MARGIN + 2.0  # an in-flight slow window times out first
    dups = sum(counts.values()) - len(counts)
    print(
        f"\nLogstash back -> backlog of {len(wanted)} records delivered in {delivered:.2f} s; "
        f"{dups} duplicate copies, all of windows acknowledged too late"
    )


def test_sigterm_with_a_backlog_flushes_within_the_bound_then_exits(tmp_path: Path) -> None:
    """
    A backlog built while Logstash is down. SIGTERM with Logstash still down: the agent exits at once (nothing
    can be delivered), code 0, the backlog on disk. Restarted against a slow Logstash (each window of 4 ACKed
    after 0.4 s, slower than the agent logs): SIGTERM once delivery works; it keeps delivering for up to 5 s
    (docs/logs.md), then writes the spool and exits. A third start against a well Logstash delivers every
    record the first two logged before their SIGTERM; duplicates are at most the one window in flight.
    """
    batch = 4
    receiver = BackgroundLumberjack(mode=Mode.DELAYED_ACK, delay_s=0.4, keepalive_s=60.0)
    spool = tmp_path / "spool"
    config = agent_config(
        tmp_path, receiver.port, spool, enable={"loadavg": {"interval": "0.05s", "timeout": "0.05s"}}, batch_max=batch
    )
    exits: dict[str, float] = {}

    def terminate(agent: ShippingAgent, name: str) -> set[str]:
        logged = agent.ids()
        agent.proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = agent.proc.wait(DRAIN_SECONDS + 15)
        exits[name] = time.monotonic() - began
        assert code == 0, agent.log_path.read_text()[-2000:]
        return logged

    try:
        with ShippingAgent(config, tmp_path) as first:
            wait_until(lambda: first.metric("nodeagent_log_records_unacknowledged") > 60, 15, "a backlog")
            wanted = terminate(first, "down")
        assert receiver.server.events == []

        receiver.start()
        with ShippingAgent(config, tmp_path) as second:
            wait_until(lambda: second.metric("nodeagent_log_ship_up") == 1, 15, "delivery to the slow Logstash")
            before = len(received(receiver))
            backlog = second.metric("nodeagent_log_records_unacknowledged")
            wanted |= terminate(second, "slow")
        drained = len(received(receiver)) - before
        assert 0 < drained < backlog  # it delivered during the drain, and the drain ended at its bound

        receiver.set_mode(Mode.NORMAL)
        with ShippingAgent(config, tmp_path):
            assert_all_arrived(wanted, receiver)
        counts = copies(received(receiver), wanted)
    finally:
        receiver.close()
    assert set(counts) == wanted
    dups = sum(counts.values()) - len(counts)
    assert dups <= batch, collections.Counter(counts.values())
    assert exits["down"] <= DRAIN_SECONDS + MARGIN
    assert exits["slow"] <= DRAIN_SECONDS + MARGIN
    print(
        f"\nSIGTERM with a backlog: exit in {exits['down']:.2f} s with Logstash down, {exits['slow']:.2f} s with a "
        f"slow Logstash ({drained} records delivered while draining); {len(wanted)} records, {dups} duplicates"
    )
