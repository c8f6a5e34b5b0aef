"""The exporter-toolkit web-config file: validation, TLS / mutual TLS and basic auth on a real agent process,
reload with the last good configuration kept, and no credentials in the logs."""

from __future__ import annotations

import base64
import os
import ssl
import sys
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from nodeagent.webconfig import WebConfigError, WebSecurity, load_web_config, parse_web_config
from tests.doubles.tls import TlsFiles, make_tls_files
from tests.integration.agent_proc import free_port, run_nodeagent, started_process, wait_until

PASSWORD = "s3cret-Pa55word"
WRONG = "not-the-Pa55word"


def _hash(password: str) -> str:
    # Cost 4 keeps the tests fast; $2y$ is what htpasswd writes.
    return "$2y$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()[4:]


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Maybe}", "client_auth_type"),
        ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS99}", "tls_server_config.min_version"),
        ("tls_server_config: {key_file: b}", "tls_server_config.cert_file"),
        (
            "tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert}",
            "tls_server_config.client_ca_file",
        ),
        ("basic_auth_users: {alice: plaintext}", "basic_auth_users.alice"),
        ("http_server_config: {headers: {Server: x}}", "http_server_config.headers.Server"),
        ("tls_config: {}", "tls_config"),
        ("- a list", "(top level)"),
    ],
)
def test_invalid_file_names_the_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "web.yml"
    with pytest.raises(WebConfigError) as info:
        parse_web_config(text, str(path))
    assert key in str(info.value)
    assert str(path) in str(info.value)
    assert "web.config_file" in str(info.value)


def test_missing_certificate_file_is_an_error_at_load(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config: {cert_file: nope.pem, key_file: nope-key.pem}\n")
    with pytest.raises(WebConfigError, match=r"tls_server_config\.cert_file: cannot load"):
        load_web_config(str(path))


def test_valid_file_relative_paths_and_headers(tmp_path: Path, tls: TlsFiles) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {tls.server_cert}\n  key_file: {tls.server_key}\n"
        f"  client_ca_file: {tls.ca_cert}\n  client_auth_type: VerifyClientCertIfGiven\n  max_version: TLS13\n"
        "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        "http_server_config:\n  headers: {x-frame-options: deny}\n"
        f"basic_auth_users:\n  alice: '{_hash(PASSWORD)}'\n"
    )
    cfg = load_web_config(str(path))
    assert cfg.tls is not None and cfg.tls.min_version == ssl.TLSVersion.TLSv1_2
    assert {"X-Frame-Options": "deny"} == dict(cfg.headers)
    assert ("tls_server_config.cipher_suites",) == cfg.ignored


# --- reload -------------------------------------------------------------------------------------------------


async def test_reload_on_change_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: '{_hash(PASSWORD)}'\n")
    security = WebSecurity(load_web_config(str(path)))
    assert await security.authorized(_basic("alice", PASSWORD))
    assert await security.authorized(_basic("alice", PASSWORD))  # from the cache
    assert not await security.authorized(_basic("alice", WRONG))
    assert not await security.authorized(_basic("bob", PASSWORD))
    assert not await security.authorized(None)
    assert not await security.authorized("Basic !!!")
    assert not await security.authorized(_basic("alice", "x" * 100))  # over bcrypt's 72 bytes: refused, not 500

    path.write_text(f"basic_auth_users:\n  bob: '{_hash(WRONG)}'\n")
    os.utime(path, ns=(1, 1))  # a distinct mtime even on coarse clocks
    security.reload_if_changed()
    assert await security.authorized(_basic("bob", WRONG))
    assert not await security.authorized(_basic("alice", PASSWORD))

    path.write_text("basic_auth_users: {bob: broken}\n")
    os.utime(path, ns=(2, 2))
    security.reload_if_changed()  # invalid: the last good file stays in force
    assert await security.authorized(_basic("bob", WRONG))


# --- the real agent -----------------------------------------------------------------------------------------


def test_invalid_file_at_start_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  alice: hunter2\n")
    proc = run_nodeagent("run", "--listen", f"127.0.0.1:{free_port()}", "--web.config.file", str(path))
    assert 2 == proc.returncode
    assert f"web.config_file {path}: basic_auth_users.alice:" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def _get(url: str, ctx: ssl.SSLContext, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_mtls_and_basic_auth_on_the_agent(tmp_path: Path, tls: TlsFiles) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        f"  cert_file: {tls.server_cert.name}\n  key_file: {tls.server_key.name}\n"
        f"  client_ca_file: {tls.ca_cert}\n  client_auth_type: RequireAndVerifyClientCert\n"
        "http_server_config:\n  headers: {X-Content-Type-Options: nosniff}\n"
        f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n"
    )
    # cert_file/key_file relative to the web-config file's directory.
    for src in (tls.server_cert, tls.server_key):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    port = free_port()
    log_path = tmp_path / "agent.log"
    cmd = [sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{port}", "--web.config.file", str(web)]
    with started_process(
        cmd, log_path, lambda: "agent.started" in log_path.read_text(errors="replace"), "the agent to start"
    ):
        url = f"https://127.0.0.1:{port}/metrics"
        good = tls.client_context(client_cert=True)

        # TLS works and basic auth guards every route.
        status, headers, _ = _get(url, good)
        assert 401 == status
        assert headers["WWW-Authenticate"].startswith("Basic ")
        assert "nosniff" == headers["X-Content-Type-Options"]
        assert 401 == _get(url, good, _basic("prometheus", WRONG))[0]
        assert 401 == _get(url, good, _basic("someone", PASSWORD))[0]
        status, headers, body = _get(url, good, _basic("prometheus", PASSWORD))
        assert 200 == status, body
        assert b"# TYPE" in body
        assert "nosniff" == headers["X-Content-Type-Options"]
        assert 200 == _get(url, good, _basic("prometheus", PASSWORD))[0]  # cached check

        # Mutual TLS: a client without a certificate is refused at the TLS layer, before HTTP.
        with pytest.raises(OSError):
            _get(url, tls.client_context(client_cert=False), _basic("prometheus", PASSWORD))
        # A client that does not trust the server's CA refuses it.
        with pytest.raises(OSError):
            _get(url, tls.client_context(trust_ca=False, client_cert=True), _basic("prometheus", PASSWORD))
        # Plain HTTP is not served.
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()

        wait_until(lambda: log_path.stat().st_size > 0, 5, "log output")
    log = log_path.read_text(errors="replace")
    assert "agent.started" in log
    for secret in (PASSWORD, WRONG, base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()):
        assert secret not in log
