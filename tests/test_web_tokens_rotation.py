"""Bearer tokens for Kubernetes scrapers, open probe paths, certificate rotation without a restart, and
``config check`` validating the web security files (real agent processes on loopback)."""

from __future__ import annotations

import os
import shutil
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nodeagent.config import ConfigError
from nodeagent.webconfig import WATCH_SECONDS, load_bearer_tokens
from tests.doubles.tls import make_tls_files
from tests.integration.agent_proc import free_port, http_get, run_nodeagent, started_process, wait_until

TOKEN = "tok-6f1c2e9a-first"
ROTATED = "tok-0b77d5c3-second"


def _agent(tmp_path: Path, config: str) -> tuple[list[str], Path, int]:
    port = free_port()
    cfg = tmp_path / "nodeagent.yaml"
    # Cheap collectors only: these tests are about the web layer.
    cfg.write_text(config + "collectors:\n  cgroups: {enabled: false}\n  runtimes: {enabled: false}\n")
    cmd = [sys.executable, "-m", "nodeagent", "run", "--listen", f"127.0.0.1:{port}", "--config", str(cfg)]
    return cmd, tmp_path / "agent.log", port


def test_token_file_errors_name_the_key_never_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"web\.bearer_token_file .*missing: cannot read: No such file"):
        load_bearer_tokens(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="no token in the file"):
        load_bearer_tokens(str(empty))
    two = tmp_path / "two"
    two.write_text(f"{TOKEN}\n  {ROTATED}  \n")
    assert 2 == len(load_bearer_tokens(str(two)))


def test_bad_token_file_exits_2_at_start_and_in_config_check(tmp_path: Path) -> None:
    cmd, _, _ = _agent(tmp_path, f"web:\n  bearer_token_file: {tmp_path / 'absent'}\n")
    run = run_nodeagent(*cmd[3:])
    assert 2 == run.returncode
    assert "web.bearer_token_file" in run.stderr and "absent" in run.stderr
    check = run_nodeagent("config", "check", str(tmp_path / "nodeagent.yaml"))
    assert 2 == check.returncode
    assert "web.bearer_token_file" in check.stderr


def test_config_check_validates_the_web_config_file(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config: {cert_file: nope.pem, key_file: nope-key.pem}\n")
    cfg = tmp_path / "nodeagent.yaml"
    cfg.write_text(f"web:\n  config_file: {web}\n")
    check = run_nodeagent("config", "check", str(cfg))
    assert 2 == check.returncode
    assert f"web.config_file {web}: tls_server_config.cert_file: cannot load" in check.stderr


def test_bearer_tokens_on_the_agent_with_reload(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# scrapers\n{TOKEN}\n")
    cmd, log_path, port = _agent(tmp_path, f"web:\n  bearer_token_file: {tokens}\n")
    url = f"http://127.0.0.1:{port}"
    with started_process(cmd, log_path, lambda: http_get(url + "/healthz")[0] == 200, "the agent to start"):
        status, headers, _ = http_get(url + "/metrics")
        assert 401 == status
        assert 'Bearer realm="nodeagent"' == headers["WWW-Authenticate"]
        assert 401 == http_get(url + "/metrics", {"Authorization": f"Bearer {ROTATED}"})[0]
        assert 401 == http_get(url + "/metrics", {"Authorization": f"Basic {TOKEN}"})[0]
        # Probes need no credentials; the index page and metrics do.
        wait_until(lambda: http_get(url + "/readyz")[0] == 200, 30, "readiness without credentials")
        status, _, body = http_get(url + "/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert 200 == status and b"# TYPE node_load1 gauge" in body
        assert 401 == http_get(url + "/")[0]

        # The Secret is updated: the new token works at once, the old one no longer does.
        tokens.write_text(f"{ROTATED}\n")
        os.utime(tokens, ns=(10**18, 10**18))
        assert 200 == http_get(url + "/metrics", {"Authorization": f"Bearer {ROTATED}"})[0]
        assert 401 == http_get(url + "/metrics", {"Authorization": f"Bearer {TOKEN}"})[0]

        # An emptied file is refused on reload; the last good tokens stay in force.
        tokens.write_text("\n")
        os.utime(tokens, ns=(2 * 10**18, 2 * 10**18))
        assert 200 == http_get(url + "/metrics", {"Authorization": f"Bearer {ROTATED}"})[0]
        wait_until(lambda: "web.bearer_tokens_reload_failed" in log_path.read_text(), 5, "the reload error")
    log = log_path.read_text(errors="replace")
    assert "web.bearer_tokens_reloaded" in log
    assert TOKEN not in log and ROTATED not in log


def _fetch(url: str, ctx: ssl.SSLContext) -> int:
    with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
        return int(resp.status)


def _handshake_ok(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        return _fetch(url, ctx) == 200
    except (urllib.error.URLError, ssl.SSLError, OSError):
        return False


def test_certificate_rotation_without_restart(tmp_path: Path) -> None:
    """The certificate and key files are replaced (as cert-manager does): new connections get the new
    certificate within the watch period, without a request having to arrive first; a broken pair is refused and
    the last good one kept."""
    first = make_tls_files(tmp_path / "first", ca_name="first CA")
    second = make_tls_files(tmp_path / "second", ca_name="second CA")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(first.server_cert, live / "tls.crt")
    shutil.copy(first.server_key, live / "tls.key")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config: {cert_file: live/tls.crt, key_file: live/tls.key}\n")
    cmd, log_path, port = _agent(tmp_path, f"web:\n  config_file: {web}\n")
    url = f"https://127.0.0.1:{port}/healthz"
    trusts_first, trusts_second = first.client_context(), second.client_context()
    with started_process(cmd, log_path, lambda: _handshake_ok(url, trusts_first), "the agent to serve TLS"):
        assert not _handshake_ok(url, trusts_second)

        # Replace both files atomically, the way a Secret volume is updated (a symlink swap).
        staged = tmp_path / "staged"
        staged.mkdir()
        shutil.copy(second.server_cert, staged / "tls.crt")
        shutil.copy(second.server_key, staged / "tls.key")
        os.rename(live, tmp_path / "old")
        os.rename(staged, live)
        wait_until(lambda: _handshake_ok(url, trusts_second), WATCH_SECONDS + 5, "the rotated certificate")
        assert not _handshake_ok(url, trusts_first)

        # A key that does not match the certificate: refused, the second pair keeps serving.
        (live / "tls.key").write_bytes(first.server_key.read_bytes())
        wait_until(lambda: "web.config_reload_failed" in log_path.read_text(), WATCH_SECONDS + 5, "the refused reload")
        assert _handshake_ok(url, trusts_second)
    log = log_path.read_text(errors="replace")
    assert "web.config_reloaded" in log
    key_pem = second.server_key.read_text()
    assert key_pem.splitlines()[1] not in log
