"""The ``web.*`` limits of the HTTP server: defaults, the usual sources, errors that name the key, and that each key
reaches the server (the behaviour under load: tests/integration/test_load.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.config import ConfigError, WebConfig, build_config, dump
from nodeagent.httpserver import LINGER_SECONDS, handler_options


def test_defaults() -> None:
    web = build_config(environ={}).web

    assert ("", "") == (web.config_file, web.bearer_token_file)
    assert 1024 == web.max_connections
    assert (10.0, 75.0, 30.0, 10.0) == (
        web.header_read_timeout,
        web.keepalive_timeout,
        web.write_timeout,
        web.tls_handshake_timeout,
    )
    assert (8190, 8190, 100, 4096) == (
        web.max_request_line_bytes,
        web.max_header_field_bytes,
        web.max_headers,
        web.max_request_body_bytes,
    )


def test_file_environment_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "nodeagent.yaml"
    path.write_text("web:\n  max_connections: 64\n  header_read_timeout: 500ms\n  keepalive_timeout: 2m\n")
    env = {"NODEAGENT_WEB__WRITE_TIMEOUT": "5s", "NODEAGENT_WEB__MAX_HEADERS": "20"}
    flags = {"web.max_request_body_bytes": 0, "web.max_connections": 128}

    web = build_config(str(path), env, flags).web

    assert (128, 0.5, 120.0, 5.0, 20, 0) == (
        web.max_connections,
        web.header_read_timeout,
        web.keepalive_timeout,
        web.write_timeout,
        web.max_headers,
        web.max_request_body_bytes,
    )
    assert "max_connections: 128" in dump(build_config(str(path), env, flags))


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("web.max_connections", 0, "greater than or equal to 1"),
        ("web.max_connections", "many", "valid integer"),
        ("web.header_read_timeout", "0s", "a duration must be greater than 0"),
        ("web.keepalive_timeout", "soon", "expected a duration"),
        ("web.write_timeout", -1, "a duration must be greater than 0"),
        ("web.tls_handshake_timeout", True, "expected a duration"),
        ("web.max_request_line_bytes", 100, "greater than or equal to 256"),
        ("web.max_header_field_bytes", 1 << 21, "less than or equal to 1048576"),
        ("web.max_headers", 4, "greater than or equal to 8"),
        ("web.max_request_body_bytes", -1, "greater than or equal to 0"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_valid(key: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(environ={}, flag_overrides={key: value})

    assert f"{key}: invalid value {value!r}" in str(info.value)
    assert problem in str(info.value)


def test_a_misspelt_key_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(environ={}, flag_overrides={"web.max_conections": 10})

    message = str(info.value)
    assert "web.max_conections: unknown key" in message
    for key in WebConfig.model_fields:
        assert key in message


def test_each_limit_reaches_aiohttp() -> None:
    web = WebConfig(keepalive_timeout=9, max_request_line_bytes=1000, max_header_field_bytes=2000, max_headers=30)

    assert {
        "access_log": None,
        "keepalive_timeout": 9.0,
        "max_line_size": 1000,
        "max_field_size": 2000,
        "max_headers": 30,
        "lingering_time": LINGER_SECONDS,
    } == handler_options(web)
