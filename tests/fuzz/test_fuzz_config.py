"""
The configuration loaders under hostile and generated valid input:

* ``nodeagent.config.build_config`` from a YAML file, ``NODEAGENT_*`` environment variables and ``--set`` options
  (``parse_set_option``). Documented error: ``ConfigError``, whose message names the file (or the source) and the key;
  the CLI turns it into exit code 2. Seeds: the packaged configs (systemd, Kubernetes) and the full effective default
  configuration that ``config check`` prints; damage is done to the bytes and to the YAML tree (values of the wrong
  type or range, keys dropped, deep nesting);
* ``nodeagent.webconfig.parse_web_config``, the exporter-toolkit web-config file. Documented error:
  ``WebConfigError`` (a ``ConfigError``) naming the file and the key. Seeds include TLS with real certificate files,
  basic auth with bcrypt hashes, and the allowed headers.

The valid half: settings generated in every source form (YAML, environment, ``--set``) give the same, expected
``AgentConfig``; generated web-configs give back their users and headers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from nodeagent.config import AgentConfig, ConfigError, build_config, dump, parse_set_option
from nodeagent.webconfig import ALLOWED_HEADERS, WebConfigError, parse_web_config
from tests.doubles.tls import make_tls_files
from tests.fuzz.strategies import hostile_bytes, hostile_json
from tests.fuzz.support import Cases, budget

REPO = Path(__file__).resolve().parents[2]
CONFIG_SEEDS: tuple[str, ...] = (
    (REPO / "packaging" / "systemd" / "config.yaml").read_text(),
    (REPO / "packaging" / "kubernetes" / "base" / "config.yaml").read_text(),
    dump(build_config(environ={})),
)
CONFIG_TREES: tuple[Any, ...] = tuple(yaml.safe_load(s) for s in CONFIG_SEEDS)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config") / "config.yaml"


def _check(value: AgentConfig | None) -> None:
    if value is not None:
        assert isinstance(value, AgentConfig)
        dump(value)  # `config check` prints every valid configuration


@budget(120)
@given(hostile_bytes(tuple(s.encode() for s in CONFIG_SEEDS)) | hostile_json(CONFIG_TREES))
@example(content=b"listen: 0.0.0.0:10142\n\xff\n")  # UnicodeDecodeError from the file's text stream
@example(content=b"interval: " + b"9" * 5000)  # ValueError from PyYAML: past int()'s 4300 digits
@example(content=b"[" * 5_000)  # RecursionError from PyYAML
@example(content=b"interval: " + b"9" * 400)  # OverflowError from parse_duration's float()
@example(content=b"collectors: {vmstat: {fields: 'a{4294967296}'}}")  # OverflowError from re.compile
@example(content=b"collectors: {vmstat: {fields: '" + b"(" * 5000 + b")" * 5000 + b"'}}")  # RecursionError: re
def test_hostile_config_file(cases: Cases, config_path: Path, content: bytes) -> None:
    """A damaged config file: a validated configuration, or ConfigError naming the file."""
    config_path.write_bytes(content)
    outcome = cases.call(
        "config_file", build_config, str(config_path), environ={}, allowed=(ConfigError,), names=str(config_path)
    )
    _check(outcome.value)


ENV_KEYS = (
    "INTERVAL",
    "TIMEOUT",
    "LISTEN",
    "LOG__LEVEL",
    "PATHS__PROCFS",
    "COLLECTORS__CPU__ENABLED",
    "COLLECTORS__NETWORK__DEVICE_EXCLUDE",
    "COLLECTORS__CGROUPS__KINDS",
    "LOGS__SHIP__HOSTS",
    "LOGS__SHIP__BATCH_MAX",
    "RUNTIMES__LABELS",
    "RUNTIMES__DOCKER__SOCKET",
    "WEB__CONFIG_FILE",
    "COLLECTORS",
    "",
    "NO__SUCH__KEY",
)
ENV_VALUE_SEEDS = (b"15s", b"500ms", b"true", b"0.0.0.0:10142", b"[a:1, b:2]", b"{x: 1}", b"/proc", b"^(veth|cali)")


@budget(150)
@given(
    st.dictionaries(
        st.sampled_from(ENV_KEYS).map(lambda k: "NODEAGENT_" + k),
        hostile_bytes(ENV_VALUE_SEEDS).map(lambda b: b.decode("utf-8", "replace").replace("\x00", "")),
        max_size=4,
    )
)
@example(environ={"NODEAGENT_INTERVAL": "9" * 5000})  # ValueError from PyYAML in _scalar
@example(environ={"NODEAGENT_COLLECTORS": "[" * 5_000})  # RecursionError from PyYAML in _scalar
def test_hostile_environment(cases: Cases, environ: dict[str, str]) -> None:
    """Damaged NODEAGENT_* variables: a validated configuration, or ConfigError."""
    _check(cases.call("config_environment", build_config, None, environ, allowed=(ConfigError,)).value)


SET_SEEDS = tuple(
    s.encode()
    for s in (
        "interval=30s",
        "collectors.cpu.enabled=false",
        "logs.ship.hosts=[logstash:5044]",
        "collectors.vmstat.fields=^pg",
        "log.level=DEBUG",
        "paths.rootfs=/host/root",
    )
)


@budget(150)
@given(hostile_bytes(SET_SEEDS).map(lambda b: b.decode("utf-8", "replace")))
@example(option="interval=" + "9" * 5000)  # ValueError from PyYAML in _scalar
def test_hostile_set_option(cases: Cases, option: str) -> None:
    """A damaged --set option: ConfigError naming the option, or a key and value that validate or fail cleanly."""
    outcome = cases.call("config_set_option", parse_set_option, option, allowed=(ConfigError,), names="--set")
    if outcome.value is not None:
        key, value = outcome.value
        built = cases.call("config_set_option", build_config, None, {}, {key: value}, allowed=(ConfigError,))
        _check(built.value)


# --- valid configurations: file, environment and --set agree ----------------------------------------------------------

DURATIONS = st.one_of(
    st.integers(1, 3600).map(lambda n: (f"{n}s", float(n))),
    st.integers(1, 600_000).map(lambda n: (f"{n}ms", n / 1000)),
    st.integers(1, 60).map(lambda n: (f"{n}m", n * 60.0)),
    st.integers(1, 3600).map(lambda n: (n, float(n))),
)
HOSTS = st.lists(
    st.tuples(st.sampled_from(("logstash", "10.0.0.7", "[fd00::7]", "ls-1.example")), st.integers(1, 65535)).map(
        lambda hp: f"{hp[0]}:{hp[1]}"
    ),
    max_size=3,
)


@st.composite
def settings_trees(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """Valid settings as a dotted-key mapping, and the values the AgentConfig must then hold (by dotted key)."""
    settings: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    text, seconds = draw(DURATIONS)
    timeout = draw(st.integers(1, 10))
    settings["interval"], expected["interval"] = text, seconds
    settings["timeout"], expected["timeout"] = f"{timeout}s", float(timeout)
    expected["collector_timeout"] = min(float(timeout), seconds)
    level = draw(st.sampled_from(("debug", "info", "warning", "error")))
    settings["log.level"], expected["log.level"] = draw(st.sampled_from((level, level.upper()))), level
    host, port = draw(st.sampled_from(("0.0.0.0", "127.0.0.1", "[::]", "[::1]"))), draw(st.integers(1, 65535))
    settings["listen"] = expected["listen"] = f"{host}:{port}"
    for name in draw(st.lists(st.sampled_from(("cpu", "meminfo", "diskstats", "netstat", "textfile")), unique=True)):
        enabled = draw(st.booleans())
        settings[f"collectors.{name}.enabled"] = expected[f"collectors.{name}.enabled"] = enabled
    hosts = draw(HOSTS)
    settings["logs.ship.hosts"], expected["logs.ship.hosts"] = hosts, tuple(hosts)
    return settings, expected


def _as_tree(settings: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in settings.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _yaml_scalar(value: Any) -> str:
    """How a person writes the value in an environment variable or a --set option."""
    if isinstance(value, list):
        return json.dumps(value)  # a YAML flow sequence of quoted strings ("[fd00::7]:1" needs the quotes)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _lookup(cfg: AgentConfig, dotted: str) -> Any:
    if dotted == "collector_timeout":
        return cfg.collector_timeout("cpu")
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@budget(100)
@given(settings_trees())
def test_valid_settings_agree_across_sources(
    cases: Cases, config_path: Path, generated: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    """The same settings as a YAML file, as NODEAGENT_* variables and as --set options give the expected config."""
    settings, expected = generated
    config_path.write_text(yaml.safe_dump(_as_tree(settings)))
    from_file = cases.call("config_file", build_config, str(config_path), environ={}).value
    environ = {"NODEAGENT_" + k.upper().replace(".", "__"): _yaml_scalar(v) for k, v in settings.items()}
    from_env = cases.call("config_environment", build_config, None, environ).value
    flags = dict(
        cases.call("config_set_option", parse_set_option, f"{k}={_yaml_scalar(v)}").value for k, v in settings.items()
    )
    from_flags = cases.call("config_set_option", build_config, None, {}, flags).value
    for dotted, value in expected.items():
        # "9ms" is 9 * 0.001 = 0.009000000000000001 s: equal to a rounding, which no interval notices.
        want = pytest.approx(value, rel=1e-12) if isinstance(value, float) else value
        assert want == _lookup(from_file, dotted), dotted
    assert from_file == from_env == from_flags


def test_config_seeds_validate(cases: Cases, config_path: Path) -> None:
    """The undamaged seeds are valid configurations."""
    for seed in CONFIG_SEEDS:
        config_path.write_text(seed)
        _check(cases.call("config_file", build_config, str(config_path), environ={}).value)


# --- web-config -------------------------------------------------------------------------------------------------------

BCRYPT_HASH = bcrypt.hashpw(b"fuzz", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("web")
    make_tls_files(directory / "tls")
    yield directory


TLS = {"cert_file": "tls/server.pem", "key_file": "tls/server-key.pem"}  # relative to the web-config's directory
WEB_SEEDS: tuple[dict[str, Any], ...] = (
    {"basic_auth_users": {"prometheus": BCRYPT_HASH, "alice": BCRYPT_HASH}},
    {"tls_server_config": {**TLS, "min_version": "TLS12", "max_version": "TLS13"}},
    {
        "tls_server_config": {**TLS, "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "tls/ca.pem"},
        "basic_auth_users": {"prometheus": BCRYPT_HASH},
        "http_server_config": {"headers": {"X-Frame-Options": "deny", "Strict-Transport-Security": "max-age=1"}},
    },
    {"http_server_config": {"http2": True, "headers": {"x-content-type-options": "nosniff"}}, "rate_limit": None},
)
WEB_TEXT_SEEDS = tuple(yaml.safe_dump(s).encode() for s in WEB_SEEDS)


@budget(100)  # a case with TLS loads its certificates: about 25 ms
@given(hostile_json(WEB_SEEDS) | hostile_bytes(WEB_TEXT_SEEDS))
@example(raw=b"basic_auth_users: {alice: '$2b$10$" + "\u00e9".encode() * 53 + b"'}")  # UnicodeEncodeError
@example(raw=b'tls_server_config: {cert_file: "tls/a\\0b", key_file: tls/server-key.pem}')  # ValueError: NUL
@example(raw=b"rate_limit: " + b"9" * 5000)  # ValueError from PyYAML: past int()'s 4300 digits
@example(raw=b"[" * 5_000)  # RecursionError from PyYAML
def test_hostile_web_config(cases: Cases, web_dir: Path, raw: bytes) -> None:
    """A damaged web-config: a validated WebConfig, or WebConfigError naming the file."""
    path = str(web_dir / "web-config.yml")
    outcome = cases.call(
        "web_config", parse_web_config, raw.decode("utf-8", "replace"), path, allowed=(WebConfigError,), names=path
    )
    if outcome.value is not None:
        assert all(isinstance(h, bytes) and len(h) == 60 for h in outcome.value.users.values())
        assert set(outcome.value.headers) <= set(ALLOWED_HEADERS.values())


BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
HASHES = st.tuples(
    st.sampled_from(("$2a$", "$2b$", "$2y$")), st.integers(4, 31), st.text(BCRYPT_ALPHABET, min_size=53, max_size=53)
).map(lambda t: f"{t[0]}{t[1]:02d}${t[2]}")
USERS = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters=":"), min_size=1, max_size=12
)
HEADER_VALUES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=20)


@budget(100)
@given(
    st.dictionaries(USERS, HASHES, max_size=4),
    st.dictionaries(st.sampled_from(sorted(ALLOWED_HEADERS.values())), HEADER_VALUES, max_size=3),
    st.booleans(),
)
def test_web_config_roundtrip(
    cases: Cases, web_dir: Path, users: dict[str, str], headers: dict[str, str], lower: bool
) -> None:
    """Users (any name without ':') with their hashes, and allowed headers (any case) come back canonical."""
    doc = {
        "basic_auth_users": users,
        "http_server_config": {"headers": {(k.lower() if lower else k): v for k, v in headers.items()}},
    }
    cfg = cases.call("web_config", parse_web_config, yaml.safe_dump(doc), str(web_dir / "web.yml")).value
    assert {u: h.encode() for u, h in users.items()} == dict(cfg.users)
    assert headers == dict(cfg.headers)


def test_web_config_seeds_validate(cases: Cases, web_dir: Path) -> None:
    """The undamaged seeds validate, TLS ones with their certificate files resolved next to the web-config."""
    for seed in WEB_SEEDS:
        cfg = cases.call("web_config", parse_web_config, yaml.safe_dump(seed), str(web_dir / "web.yml")).value
        if cfg.tls is not None:
            assert str(web_dir / "tls" / "server.pem") == cfg.tls.cert_file
