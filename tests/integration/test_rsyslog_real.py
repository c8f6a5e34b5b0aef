"""The tcp transport's json_lines framing against a real rsyslog (Debian package ``rsyslog``): ``imtcp`` splits the
stream at LF, ``mmjsonparse`` parses each line as one JSON object, ``omfile`` writes it out, and every record must
come back whole and equal to what was sent.

rsyslogd runs in the foreground with only its own configuration, work directory and pid file in the test's
temporary directory, on a free loopback port, unprivileged-friendly; it does not touch a system rsyslog.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from nodeagent.ship.tcp import TcpTransport
from tests.integration.agent_proc import free_port, started_process, wait_until
from tests.prereq import require_binary

pytestmark = pytest.mark.integration

# imtcp's default maxMessageSize is 8k: a longer line is cut into several messages (each one broken JSON), silently.
MAX_MESSAGE_SIZE = "64k"

RSYSLOG_CONF = """\
global(
  workDirectory="{work}"
  maxMessageSize="{max_message_size}"
  net.enableDNS="off"
  processInternalMessages="on"
)
module(load="imtcp")
module(load="mmjsonparse")

template(name="rawline" type="list") {{ property(name="rawmsg") constant(value="\\n") }}
template(name="jsonline" type="list") {{ property(name="$!all-json") constant(value="\\n") }}

# rsyslog's own messages: processInternalMessages="on" keeps them here instead of sending them to the host's /dev/log
# (the system logger); the default ruleset gets only them (the input has its own ruleset). Kept for diagnosis.
action(type="omfile" file="{tmp}/internal.log" template="RSYSLOG_FileFormat")

ruleset(name="json_lines") {{
  action(type="omfile" file="{tmp}/raw.ndjson" template="rawline")
  # cookie="": the line is bare JSON, no "@cee:" prefix; useRawMsg: parse the whole line, not the syslog MSG part.
  action(type="mmjsonparse" cookie="" useRawMsg="on")
  if $parsesuccess == "OK" then {{
    action(type="omfile" file="{tmp}/parsed.ndjson" template="jsonline")
  }} else {{
    action(type="omfile" file="{tmp}/failed.ndjson" template="rawline")
  }}
}}

input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="json_lines")
"""


def encode(doc: dict[str, Any]) -> bytes:
    """The agent's framing rule for one record."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"event": {"id": "unicode"}, "message": "GPU 0 température 85 °C — Xid 79 ✓ 日本語 😀 \u007f"},
        {"event": {"id": "newlines"}, "message": 'one\ntwo\r\nthree\n\n\ttab "quoted" \\ / </script>', "ctl": "\u0001"},
        {"event": {"id": "big"}, "message": "x" * (20 * 1024), "labels": {"pad": "y" * 100}},
        {"event": {"id": "types"}, "n": -(2**63), "f": 0.1, "e": 1.5e-7, "t": True, "z": None, "o": {}, "l": [[]]},
    ]
    docs += [
        {
            "@timestamp": f"2026-01-01T00:00:{i % 60:02d}.000Z",
            "event": {"id": f"e{i}", "kind": "event"},
            "host": {"name": "node1"},
            "message": f"event {i}",
        }
        for i in range(200)
    ]
    return docs


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").splitlines()


def _parses(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _ship(port: int, docs: list[dict[str, Any]]) -> list[int]:
    progress: list[int] = []
    transport = TcpTransport("127.0.0.1", port, timeout=10.0)
    try:
        # Several sends on the kept connection, then a new connection after aclose.
        await transport.send([encode(d) for d in docs[:4]], progress.append)
        await transport.send([encode(d) for d in docs[4:100]], progress.append)
        await transport.aclose()
        await transport.send([encode(d) for d in docs[100:]], progress.append)
    finally:
        await transport.aclose()
    return progress


def test_json_lines_arrive_whole_in_rsyslog(tmp_path: Path) -> None:
    rsyslogd = require_binary("rsyslogd", "rsyslog")
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(
        RSYSLOG_CONF.format(work=work, tmp=tmp_path, port=port, max_message_size=MAX_MESSAGE_SIZE), encoding="utf-8"
    )
    log_path = tmp_path / "rsyslogd.log"
    cmd = [rsyslogd, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")]
    docs = documents()
    with started_process(cmd, log_path, lambda: _listening(port), "rsyslogd to listen", 30, tmp_path):
        progress = asyncio.run(_ship(port, docs))
        assert progress == [4, 96, len(docs) - 100]

        def diagnosis() -> str:
            internal = tmp_path / "internal.log"
            return "\n".join(
                f"{p.name}: {p.read_text(errors='replace')[-2000:]}" for p in (log_path, internal) if p.exists()
            )

        try:
            wait_until(lambda: len(_lines(tmp_path / "raw.ndjson")) >= len(docs), 30, f"{len(docs)} lines from rsyslog")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {len(_lines(tmp_path / 'raw.ndjson'))}\n{diagnosis()}") from None

    by_id = {d["event"]["id"]: d for d in docs}
    raw_lines = _lines(tmp_path / "raw.ndjson")
    assert [line[:100] for line in raw_lines if not _parses(line)] == [], "lines rsyslog cut or mangled"
    raw = [json.loads(line) for line in raw_lines]
    assert len(raw) == len(docs)
    assert {r["event"]["id"]: r for r in raw} == by_id
    # Within one connection the order is kept.
    assert [r["event"]["id"] for r in raw[:100]] == [d["event"]["id"] for d in docs[:100]]
    # mmjsonparse took every line as one JSON object, and rsyslog's own serialisation of it is the same object.
    assert _lines(tmp_path / "failed.ndjson") == []
    parsed = [json.loads(line) for line in _lines(tmp_path / "parsed.ndjson")]
    assert len(parsed) == len(docs)
    assert {p["event"]["id"]: p for p in parsed} == by_id
    assert len(encode(by_id["big"])) > 20 * 1024
