"""
Fault tests of log shipping with the real agent process and the Lumberjack v2 test double (Logstash's beats input):
the receiver down for 60 s while records keep coming, ``kill -9`` with unacknowledged records in the spool, a slow
receiver, and a full spool directory. Each asserts that nothing was lost: every ``event.id`` the agent logged (its
stdout has every record) arrives at least once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.doubles.lumberjack import Mode
from tests.integration.agent_proc import wait_until
from tests.integration.ship_peers import BackgroundLumberjack, ShippingAgent, agent_config, assert_all_arrived
from tests.prereq import missing

pytestmark = pytest.mark.integration


def test_receiver_down_for_60_seconds_loses_nothing_and_memory_stays_bounded(
    tmp_path: Path, receiver: BackgroundLumberjack
) -> None:
    receiver.start()
    with ShippingAgent(agent_config(tmp_path, receiver.port, tmp_path / "spool"), tmp_path) as agent:
        wait_until(lambda: len(receiver.documents()) > 20, 10, "records flowing")
        receiver.stop()  # Logstash goes away for a minute while the agent keeps logging
        down_at = time.monotonic()
        base = agent.rss_kib()
        rss = [base]
        while time.monotonic() - down_at < 60:
            time.sleep(5)
            rss.append(agent.rss_kib())
        during = agent.ids()
        unacked = agent.metric("nodeagent_log_records_unacknowledged")
        receiver.start()
        assert_all_arrived(during, receiver)
        assert agent.metric("nodeagent_log_records_dropped_total") == 0
    assert unacked >= 300  # at ~10 records/s, the minute's records waited in the spool
    growth_mib = (max(rss) - base) / 1024
    print(
        f"\nRSS during the 60 s outage: {base / 1024:.1f} MiB at the start, max {max(rss) / 1024:.1f} MiB "
        f"(+{growth_mib:.1f} MiB) with {unacked:.0f} records waiting; {len(during)} records checked"
    )
    assert growth_mib < 16, rss  # the spool is on disk; memory holds at most memory_max_bytes of unwritten records


def test_kill_9_with_unacknowledged_records_then_restart_delivers_them(
    tmp_path: Path, receiver: BackgroundLumberjack
) -> None:
    receiver.server.mode = Mode.SILENT  # reads batches, never acknowledges: everything stays in the spool
    receiver.start()
    spool = tmp_path / "spool"
    config = agent_config(tmp_path, receiver.port, spool)
    with ShippingAgent(config, tmp_path) as first:
        wait_until(lambda: first.metric("nodeagent_log_records_unacknowledged") > 50, 15, "unacknowledged records")
        before = first.ids()
        time.sleep(0.7)  # > sync_interval: what was logged up to `before` is on disk
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    assert receiver.documents() == []  # nothing was acknowledged
    receiver.set_mode(Mode.NORMAL)
    with ShippingAgent(config, tmp_path):
        assert_all_arrived(before, receiver)


def test_slow_receiver_with_keepalives_loses_nothing(tmp_path: Path) -> None:
    receiver = BackgroundLumberjack(mode=Mode.DELAYED_ACK, delay_s=2.5, keepalive_s=0.4)
    try:
        receiver.start()
        with ShippingAgent(agent_config(tmp_path, receiver.port, tmp_path / "spool"), tmp_path) as agent:
            time.sleep(6)
            wanted = agent.ids()
            assert_all_arrived(wanted, receiver, limit=30)
            assert receiver.server.keepalives > 0
            assert agent.metric("nodeagent_log_ship_failures_total") == 0  # each wait < timeout thanks to ACK 0
    finally:
        receiver.close()


def test_spool_directory_full_keeps_records_in_memory_and_delivers_them(
    tmp_path: Path, receiver: BackgroundLumberjack
) -> None:
    if os.geteuid() != 0:
        missing("root (mounting a small tmpfs as a full spool directory)")
    spool = tmp_path / "tiny"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(spool)], check=True)
    try:
        port = receiver.port  # not started: Logstash is down, the spool fills the 64 KiB disk
        with ShippingAgent(agent_config(tmp_path, port, spool), tmp_path) as agent:
            wait_until(lambda: agent.metric("nodeagent_log_spool_write_errors_total") > 0, 30, "the disk to fill")
            time.sleep(1)
            wanted = agent.ids()
            assert agent.proc.poll() is None  # still running
            receiver.start()
            assert_all_arrived(wanted, receiver)
            assert agent.metric("nodeagent_log_records_dropped_total") == 0
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)
