"""The command line, run as a real process: once, doctor, config check, version, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse


def nodeagent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nodeagent`` with arguments."""
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_once_prints_host_families() -> None:
    """`nodeagent once` prints a parseable exposition with the host families and exits 0."""
    proc = nodeagent("once")
    names = {f.name for f in text_parse(proc.stdout)}

    assert 0 == proc.returncode, proc.stderr
    assert {"node_load1", "node_filesystem_avail_bytes", "nodeagent_collector_success"} <= names


def test_once_openmetrics() -> None:
    """`nodeagent once --format openmetrics` prints valid OpenMetrics."""
    proc = nodeagent("once", "--format", "openmetrics")
    names = {f.name for f in om_parse(proc.stdout)}

    assert 0 == proc.returncode, proc.stderr
    assert "nodeagent_collector_skipped" in names


def test_once_with_a_broken_root_still_exits_zero(tmp_path: Path) -> None:
    """Collectors failing on a missing /proc are reported as success 0, and `once` still exits 0."""
    proc = nodeagent("once", "--path.procfs", str(tmp_path))
    success = {
        s.labels["collector"]: s.value
        for f in text_parse(proc.stdout)
        for s in f.samples
        if s.name == "nodeagent_collector_success"
    }

    assert 0 == proc.returncode
    assert 0.0 == success["loadavg"]


def test_invalid_configuration_exits_2_with_the_key(tmp_path: Path) -> None:
    """An invalid value exits 2 before anything starts, naming the key and the value."""
    proc = nodeagent("once", "--set", "interval=never")

    assert 2 == proc.returncode
    assert "interval: invalid value 'never'" in proc.stderr
    assert "" == proc.stdout


def test_a_spool_directory_that_cannot_be_created_exits_2(tmp_path: Path) -> None:
    """Shipping configured with an unusable spool directory stops start-up with exit 2, naming the key."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    args = ("--set", "logs.ship.hosts=[127.0.0.1:5044]", "--set", f"logs.ship.spool_dir={blocker}/spool")
    proc = nodeagent("run", "--listen", "127.0.0.1:1", *args)

    assert 2 == proc.returncode
    assert "logs.ship: cannot start shipping" in proc.stderr


def test_unknown_collector_flag_exits_2() -> None:
    """A misspelt collector switch is rejected by the argument parser with exit 2."""
    proc = nodeagent("once", "--no-collector.lodavg")

    assert 2 == proc.returncode
    assert "unrecognized arguments: --no-collector.lodavg" in proc.stderr


def test_collector_switches() -> None:
    """--no-collector.NAME disables a collector."""
    proc = nodeagent("once", "--no-collector.loadavg")

    assert 0 == proc.returncode
    assert "node_load1" not in proc.stdout
    assert "node_filesystem_size_bytes" in proc.stdout


def test_config_check(tmp_path: Path) -> None:
    """`config check` accepts a valid file (printing the effective config) and rejects a bad one with exit 2."""
    good = tmp_path / "good.yaml"
    good.write_text("interval: 30s\ncollectors:\n  loadavg:\n    enabled: false\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("collectors:\n  nosuch: {}\n")
    ok = nodeagent("config", "check", str(good))
    ko = nodeagent("config", "check", str(bad))

    assert 0 == ok.returncode, ok.stderr
    assert "interval: 30.0" in ok.stdout
    assert 2 == ko.returncode
    assert "collectors.nosuch: unknown collector 'nosuch'" in ko.stderr


def test_doctor_explains_failures(tmp_path: Path) -> None:
    """doctor reports each collector; with /proc pointed at an empty dir it says what fails and why, exit 1."""
    ok = nodeagent("doctor")
    broken = nodeagent("doctor", "--path.procfs", str(tmp_path))

    assert 0 == ok.returncode, ok.stdout + ok.stderr
    assert "OK      loadavg" in ok.stdout
    assert 1 == broken.returncode
    assert "FAIL    loadavg" in broken.stdout
    assert f"paths.procfs={tmp_path}" in broken.stdout
    assert "NODATA  filesystem: no mountinfo" in broken.stdout


def test_version() -> None:
    """`version` prints the version."""
    proc = nodeagent("version")

    assert 0 == proc.returncode
    assert proc.stdout.startswith("nodeagent 0.1.0 ")


def test_missing_root_is_named(tmp_path: Path) -> None:
    """A host root that does not exist is reported by key and path; `once` still runs the rest."""
    proc = nodeagent("once", "--path.sysfs", str(tmp_path / "host" / "sys"))

    assert 0 == proc.returncode
    assert f"paths.sysfs={tmp_path}/host/sys is not a directory" in proc.stderr
    assert "node_load1" in proc.stdout


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    """A /proc file that cannot be read fails that collector with a message naming the file."""
    (tmp_path / "loadavg").mkdir()
    proc = nodeagent("doctor", "--path.procfs", str(tmp_path))

    assert f"FAIL    loadavg: [Errno 21] cannot read {tmp_path}/loadavg: Is a directory" in proc.stdout


def test_every_command_prints_its_help() -> None:
    """--help works for every command (argparse 3.11 used to assert while wrapping the long usage line)."""
    for command in (["run"], ["once"], ["doctor"], ["config", "check"], ["version"]):
        proc = subprocess.run(
            [sys.executable, "-m", "nodeagent", *command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, (command, proc.stderr)
        assert "--help" in proc.stdout
