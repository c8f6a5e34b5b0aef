"""Configuration: precedence, defaults, and errors that name the key, the value and what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.collector import parse_duration
from nodeagent.collectors import COLLECTORS
from nodeagent.config import DEFAULT_LISTEN, ConfigError, build_config, env_overrides, parse_set_option


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "nodeagent.yaml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    """With nothing given, every default-enabled collector runs every 15 s with a 10 s timeout on the real roots."""
    cfg = build_config(environ={})

    assert DEFAULT_LISTEN == cfg.listen
    assert (15.0, 10.0) == (cfg.interval, cfg.timeout)
    assert ("/proc", "/sys", "/") == (cfg.paths.procfs, cfg.paths.sysfs, cfg.paths.rootfs)
    assert [n for n, s in COLLECTORS.items() if s.default_enabled] == cfg.enabled_collectors()


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    """Flags beat the environment, which beats the file, which beats the defaults."""
    path = _write(
        tmp_path,
        "listen: 127.0.0.1:1111\ninterval: 30s\npaths:\n  procfs: /host/proc\n"
        "collectors:\n  loadavg:\n    interval: 1m\n",
    )
    env = {"NODEAGENT_INTERVAL": "20s", "NODEAGENT_LISTEN": "127.0.0.1:2222"}
    cfg = build_config(path, env, {"listen": "127.0.0.1:3333"})

    assert "127.0.0.1:3333" == cfg.listen
    assert 20.0 == cfg.interval
    assert "/host/proc" == cfg.paths.procfs
    assert 60.0 == cfg.collector_interval("loadavg")
    assert 20.0 == cfg.collector_interval("self")


def test_env_nesting_and_config_variable(tmp_path: Path) -> None:
    """NODEAGENT_A__B sets a.b; NODEAGENT_CONFIG names the file."""
    path = _write(tmp_path, "interval: 5s\n")
    cfg = build_config(None, {"NODEAGENT_CONFIG": path, "NODEAGENT_COLLECTORS__LOADAVG__ENABLED": "false"})

    assert 5.0 == cfg.interval
    assert "loadavg" not in cfg.enabled_collectors()
    assert {"collectors": {"cpu": {"timeout": "2s"}}} == env_overrides(
        {"NODEAGENT_COLLECTORS__CPU__TIMEOUT": "2s", "OTHER": "x"}
    )


def test_timeout_defaults_to_at_most_the_interval() -> None:
    """A collector with a 2 s interval gets a 2 s timeout, not the agent's 10 s."""
    cfg = build_config(environ={}, flag_overrides={"collectors.loadavg.interval": "2s"})

    assert 2.0 == cfg.collector_timeout("loadavg")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("interval: soon\n", "interval: invalid value 'soon': expected a duration such as 15s"),
        ("interval: -5\n", "interval: invalid value -5: a duration must be greater than 0"),
        ("listen: localhost\n", "listen: invalid value 'localhost': expected HOST:PORT"),
        ("listne: 0.0.0.0:1\n", "listne: unknown key; valid keys here: listen, interval"),
        ("paths:\n  proc: /x\n", "paths.proc: unknown key; valid keys here: procfs, sysfs, rootfs"),
        (
            "paths:\n  procfs: host/proc\n",
            "paths.procfs: invalid value 'host/proc': expected an absolute path",
        ),
        ("collectors:\n  gpux: {}\n", "collectors.gpux: unknown collector 'gpux'; valid collectors: "),
        (
            "collectors:\n  loadavg:\n    enabled: maybe\n",
            "collectors.loadavg.enabled: invalid value 'maybe'",
        ),
        (
            "collectors:\n  loadavg:\n    timeout: 1m\n",
            "collectors.loadavg: timeout 60s is longer than its interval 15s",
        ),
        (
            "collectors:\n  filesystem:\n    fs_types_exclude: '(('\n",
            "collectors.filesystem.fs_types_exclude: invalid value '((': not a valid regular expression",
        ),
        (
            "log:\n  level: loud\n",
            "log.level: invalid value 'loud': expected one of debug, info, warning, error",
        ),
        (
            "runtimes:\n  labels: ['app, team']\n",
            "runtimes.labels: invalid value ['app, team']: 'app, team' is not a label key (letters, digits",
        ),
        (
            "runtimes:\n  labels: [app.name, app_name]\n",
            "'app.name' and 'app_name' both become container_label_app_name",
        ),
        (
            "runtimes:\n  containerd:\n    socket: run/containerd.sock\n",
            "runtimes.containerd.socket: invalid value 'run/containerd.sock': expected an absolute path of a unix",
        ),
        ("runtimes:\n  crio: {}\n", "runtimes.crio: unknown key; valid keys here: docker, podman, cri, containerd"),
        (
            "logs:\n  ship:\n    hosts: [logstash]\n",
            "logs.ship: invalid value {'hosts': ['logstash']}: hosts: 'logstash' is not host:port",
        ),
        (
            "logs:\n  ship:\n    protocol: http\n    hosts: [logstash:8080]\n",
            "hosts: 'logstash:8080' is not an http(s) URL",
        ),
        ("logs:\n  ship:\n    protocol: kafka\n", "logs.ship.protocol: invalid value 'kafka'"),
        ("logs:\n  ship:\n    spool_dir: spool\n", "logs.ship.spool_dir: invalid value 'spool': expected an absolute"),
        (
            "logs:\n  ship:\n    tls:\n      ca_file: /nonexistent/ca.crt\n",
            "logs.ship.tls.ca_file: invalid value '/nonexistent/ca.crt': /nonexistent/ca.crt: no such readable file",
        ),
        (
            "logs:\n  ship:\n    tls:\n      cert_file: /etc/hostname\n",
            "logs.ship.tls: invalid value {'cert_file': '/etc/hostname'}: cert_file and key_file go together",
        ),
        ("- a\n- b\n", "expected a mapping of keys at the top, got list"),
        ("interval: [1\n", "invalid YAML at line 2, column 1"),
    ],
)
def test_invalid_configuration_is_explained(tmp_path: Path, yaml_text: str, message: str) -> None:
    """Each kind of bad input yields one message naming the key and what is valid."""
    with pytest.raises(ConfigError) as err:
        build_config(_write(tmp_path, yaml_text), {})

    assert message in str(err.value)


def test_unknown_collector_lists_the_valid_ones(tmp_path: Path) -> None:
    """The message for an unknown collector lists every valid name."""
    with pytest.raises(ConfigError) as err:
        build_config(_write(tmp_path, "collectors:\n  nope: {}\n"), {})

    assert all(name in str(err.value) for name in COLLECTORS)


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A missing config file is reported with its path."""
    with pytest.raises(ConfigError, match=r"config file .*/absent.yaml: not found"):
        build_config(str(tmp_path / "absent.yaml"), {})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), (3, 3.0), ("0.25", 0.25)],
)
def test_durations(text: str | int, seconds: float) -> None:
    """Durations accept ms, s, m, h and bare seconds."""
    assert seconds == parse_duration(text)


def test_set_option() -> None:
    """--set parses a dotted key and a YAML scalar, and rejects anything else."""
    assert ("collectors.cpu.enabled", False) == parse_set_option("collectors.cpu.enabled=false")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_set_option("novalue")
