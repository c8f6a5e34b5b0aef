"""
Web security from a web-config file in the Prometheus exporter-toolkit format (node_exporter's
``--web.config.file``; here the key ``web.config_file`` and the flag ``--web.config.file``):

- ``tls_server_config``: ``cert_file``/``key_file`` (relative paths are relative to the web-config file),
  ``min_version``/``max_version`` (TLS10..TLS13, default minimum TLS12), ``client_auth_type``, ``client_ca_file``;
- ``basic_auth_users``: user -> bcrypt hash (``htpasswd -nBC 10 "" | tr -d ':\\n'``);
- ``http_server_config.headers``: extra response headers (the names exporter-toolkit allows).

Differences from exporter-toolkit (Go's ``crypto/tls`` has modes OpenSSL does not):

- ``RequestClientCert`` and ``VerifyClientCertIfGiven`` both become ``ssl.CERT_OPTIONAL``: a certificate the
  client presents is always verified (against ``client_ca_file``, else the system store), where Go's
  ``RequestClientCert`` accepts any certificate unverified.
- ``RequireAnyClientCert`` and ``RequireAndVerifyClientCert`` both become ``ssl.CERT_REQUIRED``: the certificate
  is always verified, where Go's ``RequireAnyClientCert`` does not verify it.
- Inline ``cert``/``key`` and ``client_allowed_sans`` are refused with an error (not silently ignored);
  ``cipher_suites``, ``curve_preferences``, ``prefer_server_cipher_suites``, ``http2`` and ``rate_limit`` are
  accepted and ignored (``WebConfig.ignored`` names them so the caller can warn).

Beyond exporter-toolkit, for Kubernetes scrapers that send a service-account or static token: the agent key
``web.bearer_token_file`` names a file of accepted bearer tokens, one per line (``Authorization: Bearer ...``).
With both basic auth users and tokens configured, either one admits a request. ``/healthz`` and ``/readyz`` are
served without authentication so that kubelet probes and load balancers need no credentials; they reveal
nothing but liveness and readiness.

Everything is re-read when its file changes: the web-config file, the certificate, key and client CA files it
names (certificate rotation by cert-manager or a renewal job needs no restart), and the token file. Changes are
noticed on the next request and at least every ``WATCH_SECONDS``; new TLS connections use the new context,
established ones keep theirs. A file that has become invalid is reported once per change and the last good
configuration stays in force. Credentials, tokens and hashes are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import structlog
import yaml
from aiohttp import web

from nodeagent.config import ConfigError

KEY = "web.config_file"
TOKEN_KEY = "web.bearer_token_file"

# How often the files are checked for changes when no request comes in (certificate rotation).
WATCH_SECONDS = 5.0

# Served without authentication (kubelet probes, load balancer health checks).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}

# exporter-toolkit's allowed response headers (lower case -> canonical name).
ALLOWED_HEADERS = {
    name.lower(): name
    for name in (
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "X-XSS-Protection",
        "Content-Security-Policy",
    )
}

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "cert",
    "key",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
}
_TLS_IGNORED = ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites")
_HTTP_KEYS = {"http2", "headers"}


class WebConfigError(ConfigError):
    """An invalid web-config file; the message names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        super().__init__(f"{KEY} {path}: {key}: {problem}" if key else f"{KEY} {path}: {problem}")


@dataclass(frozen=True)
class TlsServerConfig:
    """``tls_server_config`` with paths resolved against the web-config file's directory."""

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str = ""
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None


@dataclass(frozen=True)
class WebConfig:
    """A validated web-config file."""

    path: str
    tls: TlsServerConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()


def _mapping(path: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(path, key, f"expected a mapping, got {type(value).__name__}")
    return value


def _string(path: str, key: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(path, key, f"expected a string, got {type(value).__name__}")
    return value


def _strict(path: str, prefix: str, tree: Mapping[str, Any], allowed: set[str]) -> None:
    for name in tree:
        if name not in allowed:
            raise WebConfigError(path, f"{prefix}{name}", "unknown key; valid: " + ", ".join(sorted(allowed)))


def _resolve(base: Path, name: str) -> str:
    return str(base / name) if name and not os.path.isabs(name) else name


def _tls(path: str, base: Path, tree: dict[str, Any], ignored: list[str]) -> TlsServerConfig:
    prefix = "tls_server_config."
    _strict(path, prefix, tree, _TLS_KEYS)
    for name in ("cert", "key"):
        if tree.get(name):
            raise WebConfigError(path, prefix + name, f"inline PEM is not supported; use {name}_file")
    if tree.get("client_allowed_sans"):
        raise WebConfigError(path, prefix + "client_allowed_sans", "not supported by nodeagent")
    ignored.extend(prefix + name for name in _TLS_IGNORED if tree.get(name))
    cert_file = _string(path, prefix + "cert_file", tree.get("cert_file"))
    key_file = _string(path, prefix + "key_file", tree.get("key_file"))
    if not cert_file:
        raise WebConfigError(path, prefix + "cert_file", "missing; TLS needs a certificate")
    if not key_file:
        raise WebConfigError(path, prefix + "key_file", "missing; TLS needs a private key")
    auth = _string(path, prefix + "client_auth_type", tree.get("client_auth_type")) or "NoClientCert"
    if auth not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            path, prefix + "client_auth_type", f"invalid value {auth!r}; valid: " + ", ".join(CLIENT_AUTH_TYPES)
        )
    ca_file = _string(path, prefix + "client_ca_file", tree.get("client_ca_file"))
    if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not ca_file:
        raise WebConfigError(path, prefix + "client_ca_file", f"required with client_auth_type {auth}")
    versions: dict[str, ssl.TLSVersion | None] = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "")):
        value = _string(path, prefix + name, tree.get(name)) or default
        if value and value not in TLS_VERSIONS:
            raise WebConfigError(path, prefix + name, f"invalid value {value!r}; valid: " + ", ".join(TLS_VERSIONS))
        versions[name] = TLS_VERSIONS[value] if value else None
    min_version = versions["min_version"]
    assert min_version is not None
    max_version = versions["max_version"]
    if max_version is not None and max_version < min_version:
        raise WebConfigError(path, prefix + "max_version", "is lower than min_version")
    tls = TlsServerConfig(
        cert_file=_resolve(base, cert_file),
        key_file=_resolve(base, key_file),
        client_auth_type=auth,
        client_ca_file=_resolve(base, ca_file),
        min_version=min_version,
        max_version=max_version,
    )
    build_ssl_context(tls, path)  # the files must exist and match now, not at the first connection
    return tls


def parse_web_config(text: str, path: str) -> WebConfig:
    """Validate the text of a web-config file; ``WebConfigError`` names the key."""
    try:
        tree = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # PyYAML also raises ValueError (an integer of over 4300 digits) and RecursionError (deep nesting).
        raise WebConfigError(path, "", f"not valid YAML: {exc}") from None
    root = _mapping(path, "(top level)", tree)
    _strict(path, "", root, _TOP_KEYS)
    ignored: list[str] = ["rate_limit"] if root.get("rate_limit") else []
    base = Path(path).parent
    tls_tree = _mapping(path, "tls_server_config", root.get("tls_server_config"))
    tls = _tls(path, base, tls_tree, ignored) if tls_tree else None

    users: dict[str, bytes] = {}
    for user, hashed in _mapping(path, "basic_auth_users", root.get("basic_auth_users")).items():
        key = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(path, key, "a user name must be a non-empty string without ':'")
        # Never echo the hash itself in the message.
        if (
            not isinstance(hashed, str)
            or not hashed.isascii()
            or not hashed.startswith(("$2a$", "$2b$", "$2y$"))
            or len(hashed) != 60
        ):
            raise WebConfigError(path, key, "expected a bcrypt hash ($2a$/$2b$/$2y$, 60 characters)")
        users[user] = hashed.encode("ascii")

    http = _mapping(path, "http_server_config", root.get("http_server_config"))
    _strict(path, "http_server_config.", http, _HTTP_KEYS)
    if "http2" in http:
        ignored.append("http_server_config.http2")
    headers: dict[str, str] = {}
    for name, value in _mapping(path, "http_server_config.headers", http.get("headers")).items():
        key = f"http_server_config.headers.{name}"
        canonical = ALLOWED_HEADERS.get(str(name).lower())
        if canonical is None:
            raise WebConfigError(path, key, "not an allowed header; valid: " + ", ".join(ALLOWED_HEADERS.values()))
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise WebConfigError(path, key, "expected a single-line string")
        headers[canonical] = value
    return WebConfig(path=path, tls=tls, users=users, headers=headers, ignored=tuple(ignored))


def load_web_config(path: str) -> WebConfig:
    """Read and validate a web-config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(path, "", f"cannot read: {exc}") from None
    return parse_web_config(text, path)


def build_ssl_context(tls: TlsServerConfig, path: str = "") -> ssl.SSLContext:
    """A server ``SSLContext`` for ``tls`` (see the module docstring for how client_auth_type maps)."""
    prefix = "tls_server_config."
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls.min_version
    if tls.max_version is not None:
        ctx.maximum_version = tls.max_version
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: a path with a NUL byte
        raise WebConfigError(
            path, prefix + "cert_file", f"cannot load {tls.cert_file} / {tls.key_file}: {exc}"
        ) from None
    ctx.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    if ctx.verify_mode != ssl.CERT_NONE:
        try:
            if tls.client_ca_file:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: a path with a NUL byte
            raise WebConfigError(path, prefix + "client_ca_file", f"cannot load {tls.client_ca_file}: {exc}") from None
    return ctx


def load_bearer_tokens(path: str) -> frozenset[bytes]:
    """
    The SHA-256 digests of the tokens in ``path``, one per line (blank lines and lines starting with ``#`` are
    skipped). Raises ``ConfigError`` naming the key and the file (never a token) if the file cannot be read or
    holds no token.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{TOKEN_KEY} {path}: cannot read: {reason}") from None
    tokens = [line.strip() for line in text.splitlines()]
    digests = frozenset(hashlib.sha256(t.encode()).digest() for t in tokens if t and not t.startswith("#"))
    if not digests:
        raise ConfigError(f"{TOKEN_KEY} {path}: no token in the file (one token per line)")
    return digests


class ReloadableSSLContext(ssl.SSLContext):
    """
    The server's TLS context, whose settings can be replaced while it serves: each new connection is wrapped by
    the current inner context (certificate, key, client CA, verify mode, versions), through ``wrap_bio``, the one
    method asyncio's TLS transport calls on a server context.
    """

    current: ssl.SSLContext

    def __new__(cls, current: ssl.SSLContext) -> ReloadableSSLContext:
        obj = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        obj.current = current
        return obj

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """Wrap a new connection with the current settings."""
        return self.current.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname, session=session
        )


def _cache_key(user: str, password: bytes, hashed: bytes) -> bytes:
    return hashlib.sha256(user.encode() + b"\0" + password + b"\0" + hashed).digest()


# Compared against for unknown users so that they cost about as much as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"nodeagent-unknown-user", bcrypt.gensalt(4))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebSecurity:
    """
    The live web configuration: the auth and headers middleware and the TLS context, re-read when their files
    change (see the module docstring).
    """

    def __init__(self, config: WebConfig | None, token_file: str = "") -> None:
        self.config = config if config is not None else WebConfig(path="")
        self.token_file = token_file
        self.tokens: frozenset[bytes] = load_bearer_tokens(token_file) if token_file else frozenset()
        self.ssl_context: ReloadableSSLContext | None = None
        if self.config.tls is not None:
            self.ssl_context = ReloadableSSLContext(build_ssl_context(self.config.tls, self.config.path))
        self._stamps = self._stamp_files()
        self._cache: set[bytes] = set()  # digests of (user, password, hash) that bcrypt accepted
        self._log = structlog.get_logger()
        self._checked_at = 0.0

    def _files(self) -> list[str]:
        files = [self.config.path] if self.config.path else []
        tls = self.config.tls
        if tls is not None:
            files += [tls.cert_file, tls.key_file] + ([tls.client_ca_file] if tls.client_ca_file else [])
        return files + ([self.token_file] if self.token_file else [])

    def _stamp_files(self) -> dict[str, tuple[int, int, int] | None]:
        return {path: self._stat(path) for path in self._files()}

    @staticmethod
    def _stat(path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload_if_changed(self) -> bool:
        """
        Re-read what changed (mtime, size or inode of any file); keep the last good configuration of each part
        on error. Returns whether anything was reloaded.
        """
        stamps = self._stamp_files()
        if stamps == self._stamps:
            return False
        changed = {path for path in stamps.keys() | self._stamps.keys() if stamps.get(path) != self._stamps.get(path)}
        reloaded = False
        if self.config.path and changed - {self.token_file}:
            reloaded = self._reload_web_config()
        if self.token_file in changed:
            reloaded = self._reload_tokens() or reloaded
        # A reloaded web-config may name other certificate files: stamp those from now on.
        self._stamps = stamps if list(stamps) == self._files() else self._stamp_files()
        return reloaded

    def _reload_tokens(self) -> bool:
        try:
            tokens = load_bearer_tokens(self.token_file)
        except ConfigError as exc:
            self._log.error("web.bearer_tokens_reload_failed", error={"message": str(exc)})
            return False
        if tokens == self.tokens:
            return False
        self.tokens = tokens
        self._log.info("web.bearer_tokens_reloaded", path=self.token_file, tokens=len(tokens))
        return True

    def _reload_web_config(self) -> bool:
        try:
            new = load_web_config(self.config.path)
            context = build_ssl_context(new.tls, new.path) if new.tls is not None else None
        except WebConfigError as exc:
            self._log.error("web.config_reload_failed", error={"message": str(exc)}, path=self.config.path)
            return False
        if (context is None) != (self.ssl_context is None):
            # The listening socket was opened with or without TLS; switching needs a new socket.
            self._log.error(
                "web.config_reload_failed",
                error={"message": "turning TLS on or off needs a restart; keeping the running configuration"},
                path=self.config.path,
            )
            return False
        if self.ssl_context is not None and context is not None:
            self.ssl_context.current = context
        self.config = new
        self._cache.clear()
        self._log.info("web.config_reloaded", path=self.config.path, tls=context is not None)
        return True

    async def watch(self) -> None:
        """Check the files every ``WATCH_SECONDS`` (for certificates rotated while no request comes in)."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            self.reload_if_changed()

    def _bearer_ok(self, header: str) -> bool:
        digest = hashlib.sha256(header[7:].strip().encode("utf-8", "replace")).digest()
        ok = False
        for accepted in self.tokens:  # compare against every token, in constant time each
            ok |= hmac.compare_digest(digest, accepted)
        return ok

    async def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries an accepted token or a configured user's password."""
        users = self.config.users
        if not users and not self.tokens:
            return True
        if not header:
            return False
        scheme = header[:7].lower()
        if scheme == "bearer ":
            return bool(self.tokens) and self._bearer_ok(header)
        if scheme[:6] != "basic " or not users:
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_bytes, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user = user_bytes.decode("utf-8", "replace")
        hashed = users.get(user)
        key = _cache_key(user, password, hashed or _DUMMY_HASH)
        if hashed is not None and key in self._cache:
            return True
        try:
            ok = await asyncio.to_thread(bcrypt.checkpw, password, hashed or _DUMMY_HASH)
        except ValueError:  # bcrypt 5 refuses passwords over 72 bytes; no configured password is that long
            return False
        if ok and hashed is not None:
            self._cache.add(key)
            return True
        return False

    def _challenge(self) -> str:
        schemes = (['Basic realm="nodeagent"'] if self.config.users else []) + (
            ['Bearer realm="nodeagent"'] if self.tokens else []
        )
        return ", ".join(schemes)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware: basic or bearer auth (401 with ``WWW-Authenticate``) and the configured headers."""
        self.reload_if_changed()
        if request.path in OPEN_PATHS or await self.authorized(request.headers.get("Authorization")):
            response = await handler(request)
        else:
            response = web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": self._challenge()})
        response.headers.update(self.config.headers)
        return response
