"""
Configuration: one YAML file, ``NODEAGENT_*`` environment variables and command-line flags.

Precedence, lowest to highest: built-in defaults < YAML file < environment < flags. Everything is
validated once, here, at start-up; an invalid value is a ``ConfigError`` naming the key, the value and
what is valid, and the CLI exits with code 2 before anything starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from nodeagent.collector import CollectorConfig, Duration
from nodeagent.collectors import COLLECTORS

ENV_PREFIX = "NODEAGENT_"
DEFAULT_PORT = 10142
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"


_URL_PASSWORD = re.compile(r"(?<=://)([^/@\s:'\"]*):[^/@\s'\"]*@")


def redact_url_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


class ConfigError(Exception):
    """Invalid start-up configuration; the message is meant for a person and names the key."""


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535, e.g. 0.0.0.0:10142 or [::1]:10142")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError("an IPv6 host must be in brackets, e.g. [::]:10142")
    return value


class PathsConfig(BaseModel):
    """Roots through which every host file is read (node_exporter's ``--path.*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    procfs: str = "/proc"
    sysfs: str = "/sys"
    rootfs: str = "/"
    # Empty: <sysfs>/fs/cgroup, which is right unless the host's cgroup tree is mounted elsewhere.
    cgroupfs: str = ""

    @field_validator("procfs", "sysfs", "rootfs", "cgroupfs")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("expected an absolute path")
        return value


class LogConfig(BaseModel):
    """Log output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str = "info"
    format: str = "json"

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("debug", "info", "warning", "error"):
            raise ValueError("expected one of debug, info, warning, error")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ("json", "console"):
            raise ValueError("expected json or console")
        return value


class RuntimeSocketConfig(BaseModel):
    """One API endpoint (a container runtime, the kubelet): a unix socket on the host, read under ``paths.rootfs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    socket: str = ""
    timeout: Duration = 5.0

    @field_validator("socket")
    @classmethod
    def _socket(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("expected an absolute path of a unix socket on the host (read under paths.rootfs)")
        return value


class ContainerdConfig(RuntimeSocketConfig):
    """containerd's native API; ``namespaces`` limits the namespaces read (empty: every namespace)."""

    socket: str = "/run/containerd/containerd.sock"
    namespaces: tuple[str, ...] = ()


class CriConfig(RuntimeSocketConfig):
    """A CRI runtime (CRI-O by default; point it at containerd's socket to use CRI there instead)."""

    socket: str = "/var/run/crio/crio.sock"


class DockerConfig(RuntimeSocketConfig):
    """The Docker Engine API."""

    socket: str = "/var/run/docker.sock"


class PodmanConfig(RuntimeSocketConfig):
    """Podman's Docker-compatible API (rootful socket)."""

    socket: str = "/run/podman/podman.sock"


# Kubernetes label keys: an optional DNS-subdomain prefix and a name of alphanumerics, '-', '_' and '.'.
_LABEL_KEY = re.compile(r"^(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class RuntimesConfig(BaseModel):
    """Container runtimes whose metadata names the cgroup metrics (``name``, ``image``, ``pod`` ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Earlier runtimes win when two know the same container (Docker's containers also appear in containerd).
    docker: DockerConfig = DockerConfig()
    podman: PodmanConfig = PodmanConfig()
    cri: CriConfig = CriConfig()
    containerd: ContainerdConfig = ContainerdConfig()
    # Runtime/pod label keys copied onto nodeagent_container_info as container_label_<key> (fixed set, no union).
    labels: tuple[str, ...] = ()
    # How often a runtime without an event stream (CRI) is listed.
    poll_interval: Duration = 10.0
    # How often a runtime with an event stream is listed again anyway, to repair missed events.
    resync_interval: Duration = 300.0

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: dict[str, str] = {}
        for key in value:
            if not _LABEL_KEY.match(key):
                raise ValueError(
                    f"{key!r} is not a label key (letters, digits, '-', '_', '.', an optional 'prefix/'; "
                    "no spaces or commas)"
                )
            sanitised = re.sub(r"[^a-zA-Z0-9_]", "_", key)
            if sanitised in seen:
                raise ValueError(f"{seen[sanitised]!r} and {key!r} both become container_label_{sanitised}")
            seen[sanitised] = key
        return value


class PodResourcesConfig(RuntimeSocketConfig):
    """The kubelet's PodResources API: which pod holds which device (GPU, MIG slice, time-sliced replica)."""

    socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    timeout: Duration = 10.0
    # The kubelet rate-limits this API (100 QPS, burst 10, shared by every client): never ask more often.
    min_interval: Duration = 10.0


class KubeletConfig(BaseModel):
    """What nodeagent reads from the kubelet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    podresources: PodResourcesConfig = PodResourcesConfig()


def _collectors_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, spec in COLLECTORS.items():
        default = spec.config_model(enabled=spec.default_enabled)
        fields[name] = (spec.config_model, Field(default=default))
    model: type[BaseModel] = create_model(
        "CollectorsConfig", __config__=ConfigDict(extra="forbid", frozen=True), **fields
    )
    return model


CollectorsConfig = _collectors_model()


class ShipTlsConfig(BaseModel):
    """TLS to the log receivers: the server is verified against ``ca_file`` (or the system CAs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    ca_file: str = ""  # CA bundle to verify the server with; empty: the system's
    cert_file: str = ""  # client certificate, for inputs that require one
    key_file: str = ""
    verify: bool = True  # verify the server's certificate and name (turn off only in a lab)
    server_name: str = ""  # the name to verify instead of the host's

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str) -> str:
        if value and not os.access(value, os.R_OK):
            raise ValueError(f"{value}: no such readable file")
        return value

    @model_validator(mode="after")
    def _pair(self) -> ShipTlsConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        return self


class ShipConfig(BaseModel):
    """Shipping logs and node events to Logstash; without ``hosts`` records go to stdout only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["beats", "http", "tcp"] = "beats"
    # beats and tcp: host:port; http: the URL of Logstash's http input. Several: failover in order.
    hosts: tuple[str, ...] = ()
    spool_dir: str = "/var/lib/nodeagent/spool"  # empty: spool in memory only (lost on restart)
    spool_max_bytes: int = Field(256 << 20, ge=1 << 20)
    memory_max_bytes: int = Field(16 << 20, ge=1 << 20)
    batch_max: int = Field(2048, ge=1)  # the largest window (records per batch)
    timeout: Duration = 30.0  # no ACK (or keepalive) for this long: the connection is dropped and retried
    # beats: no ACK that moves forward for this long, keepalives or not (a stuck Logstash pipeline): fail over.
    progress_timeout: Duration = 300.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0
    sync_interval: Duration = 0.5  # how often the spool is written and fsynced
    compression_level: int = Field(3, ge=0, le=9)  # beats: zlib level of the compressed frame (0: none)
    tls: ShipTlsConfig = ShipTlsConfig()

    @field_validator("spool_dir")
    @classmethod
    def _spool_absolute(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("expected an absolute path (or empty for a memory-only spool)")
        return value

    @model_validator(mode="after")
    def _hosts_match_protocol(self) -> ShipConfig:
        for host in self.hosts:
            if self.protocol == "http":
                if not re.match(r"^https?://[^/\s]+", host):
                    raise ValueError(f"hosts: {host!r} is not an http(s) URL (the http protocol posts to a URL)")
                if self.tls.enabled and not host.startswith("https://"):
                    raise ValueError(f"hosts: {host!r} is not https:// but tls.enabled is true")
            else:
                _host_port(host)
        if self.backoff_initial > self.backoff_max:
            raise ValueError("backoff_initial is longer than backoff_max")
        return self


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"hosts: {value!r} is not host:port")
    return host.strip("[]"), int(port)


class LogsConfig(BaseModel):
    """Where logs and node events go besides stdout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ship: ShipConfig = ShipConfig()


class WebConfig(BaseModel):
    """Web security: ``config_file`` names a web-config file in the exporter-toolkit format (TLS, mutual TLS,
    basic auth, response headers; see nodeagent.webconfig). Empty: plain HTTP, no auth. And the HTTP server's
    limits on connections, time and request sizes (nodeagent.httpserver)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_file: str = ""
    # A file of accepted bearer tokens, one per line (e.g. a Secret mounted for Kubernetes scrapers); re-read when
    # it changes. Empty: no bearer-token check. See nodeagent.webconfig.
    bearer_token_file: str = ""

    # Limits of the HTTP server (nodeagent.httpserver; defaults and why: docs/web-limits.md). Above
    # max_connections, new connections wait in the kernel's listen backlog until one closes.
    max_connections: int = Field(1024, ge=1, le=100_000)
    # From the connection's start (after TLS), or a request's first byte, until its header is complete.
    header_read_timeout: Duration = 10.0
    keepalive_timeout: Duration = 75.0  # an idle kept-alive connection is closed after this
    write_timeout: Duration = 30.0  # the whole response must be taken by the client within this
    tls_handshake_timeout: Duration = 10.0  # also bounds the TLS closing handshake
    max_request_line_bytes: int = Field(8190, ge=256, le=1 << 20)
    max_header_field_bytes: int = Field(8190, ge=256, le=1 << 20)  # one header line, name and value
    max_headers: int = Field(100, ge=8, le=10_000)
    # No endpoint reads a body: a larger one is refused (413) from its Content-Length before any of it is read.
    max_request_body_bytes: int = Field(4096, ge=0, le=1 << 30)


class AgentConfig(BaseModel):
    """The whole configuration, frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = DEFAULT_LISTEN
    interval: Duration = 15.0
    timeout: Duration = 10.0
    jitter: Duration = 1.0
    paths: PathsConfig = PathsConfig()
    log: LogConfig = LogConfig()
    logs: LogsConfig = LogsConfig()
    runtimes: RuntimesConfig = RuntimesConfig()
    kubelet: KubeletConfig = KubeletConfig()
    collectors: CollectorsConfig = Field(default_factory=CollectorsConfig)  # type: ignore[valid-type]
    web: WebConfig = WebConfig()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)

    @model_validator(mode="after")
    def _timeouts_fit(self) -> AgentConfig:
        for name in COLLECTORS:
            interval = self.collector_interval(name)
            timeout = self.collector_timeout(name)
            if timeout > interval:
                raise ValueError(
                    f"collectors.{name}: timeout {timeout:g}s is longer than its interval {interval:g}s; "
                    "a cycle must end before the next one is due"
                )
        return self

    def collector(self, name: str) -> CollectorConfig:
        """The typed configuration of one collector."""
        cfg: CollectorConfig = getattr(self.collectors, name)
        return cfg

    def collector_interval(self, name: str) -> float:
        """The collector's interval, falling back to the agent's."""
        return self.collector(name).interval or self.interval

    def collector_timeout(self, name: str) -> float:
        """The collector's timeout, falling back to the agent's (never longer than its interval)."""
        own = self.collector(name).timeout
        if own is not None:
            return own
        return min(self.timeout, self.collector_interval(name))

    def enabled_collectors(self) -> list[str]:
        """Enabled collector names in registry order."""
        return [name for name in COLLECTORS if self.collector(name).enabled]


# ---------------------------------------------------------------------------------------------------
# Loading and merging


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _scalar(text: str) -> Any:
    """Parse an environment or ``--set`` value as a YAML scalar (``false``, ``15s``, ``3``)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        # Not YAML (PyYAML also raises ValueError for an integer of over 4300 digits, RecursionError for deep
        # nesting): the value is the text itself.
        return text


def load_file(path: str) -> dict[str, Any]:
    """Read the YAML file; errors name the file and, for syntax errors, the line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path}: not found") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text ({exc.reason})") from exc
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # Besides YAMLError, PyYAML raises ValueError for an integer of over 4300 digits and RecursionError for
        # nesting deeper than the interpreter's recursion limit.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """
    ``NODEAGENT_<KEY>`` variables as a nested mapping; ``__`` separates levels.

    ``NODEAGENT_COLLECTORS__CPU__ENABLED=false`` sets ``collectors.cpu.enabled``.
    ``NODEAGENT_CONFIG`` names the file and is not a key.
    """
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        _set_path(tree, dotted, _scalar(value))
    return tree


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = AgentConfig
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _describe(exc: ValidationError, sources: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if p != "__root__"]
        key = ".".join(str(p) for p in loc) or "(top level)"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            if loc[:-1] == ["collectors"]:
                lines.append(f"{key}: unknown collector {loc[-1]!r}; valid collectors: {', '.join(COLLECTORS)}")
            else:
                valid = ", ".join(_valid_keys(parent)) if parent else "see README"
                lines.append(f"{key}: unknown key; valid keys here: {valid}")
            continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "value_error" and not loc:
            lines.append(msg)
            continue
        lines.append(f"{key}: invalid value {value!r}: {msg}")
    # A bad Logstash URL is quoted back to the user: never with its password.
    return redact_url_credentials(f"invalid configuration ({sources}):\n  " + "\n  ".join(lines))


def build_config(
    file_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    flag_overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Merge defaults, file, environment and flags (dotted keys) into a validated ``AgentConfig``."""
    environ = os.environ if environ is None else environ
    sources = ["defaults"]
    data: dict[str, Any] = {}
    file_path = file_path or environ.get(ENV_PREFIX + "CONFIG") or None
    if file_path:
        data = load_file(file_path)
        sources.append(file_path)
    env = env_overrides(environ)
    if env:
        data = _merge(data, env)
        sources.append("environment")
    if flag_overrides:
        flags: dict[str, Any] = {}
        for dotted, value in flag_overrides.items():
            _set_path(flags, dotted, value)
        data = _merge(data, flags)
        sources.append("flags")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, ", ".join(sources))) from exc


def parse_set_option(option: str) -> tuple[str, Any]:
    """Parse ``--set key.path=value``."""
    key, sep, value = option.partition("=")
    if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", key.strip()):
        raise ConfigError(f"--set {option!r}: expected KEY=VALUE with a dotted key, e.g. collectors.cpu.enabled=false")
    return key.strip(), _scalar(value)


def dump(cfg: AgentConfig) -> str:
    """The effective configuration as YAML (for ``config check``), passwords in URLs replaced by ``***``."""
    return redact_url_credentials(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
