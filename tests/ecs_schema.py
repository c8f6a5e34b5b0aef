"""
A small schema of the Elastic Common Schema fields nodeagent writes (types from elastic/ecs 8.x field
definitions), used to check every record the agent logs or ships. Custom fields live under ``nodeagent.``;
Beats-style ``kubernetes.*``, ``slurm.*`` and ``systemd.*`` are allowed as keyword-valued extensions.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

KEYWORD, TEXT, DATE, LONG = "keyword", "text", "date", "long"
KEYWORDS, OBJECT, HEX32, HEX16 = "keyword[]", "object", "hex32", "hex16"

FIELDS: dict[str, str] = {
    "@timestamp": DATE,
    "message": TEXT,
    "log.level": KEYWORD,
    "ecs.version": KEYWORD,
    "service.name": KEYWORD,
    "service.version": KEYWORD,
    "service.type": KEYWORD,
    "host.name": KEYWORD,
    "host.hostname": KEYWORD,
    "host.id": KEYWORD,
    "agent.name": KEYWORD,
    "agent.type": KEYWORD,
    "agent.version": KEYWORD,
    "agent.id": KEYWORD,
    "agent.ephemeral_id": KEYWORD,
    "trace.id": HEX32,
    "span.id": HEX16,
    "event.id": KEYWORD,
    "event.kind": KEYWORD,
    "event.category": KEYWORDS,
    "event.type": KEYWORDS,
    "event.action": KEYWORD,
    "event.module": KEYWORD,
    "event.dataset": KEYWORD,
    "event.code": KEYWORD,
    "event.start": DATE,
    "event.end": DATE,
    "error.type": KEYWORD,
    "error.message": TEXT,
    "error.stack_trace": TEXT,
    "container.id": KEYWORD,
    "container.name": KEYWORD,
    "container.image.name": KEYWORD,
    "container.image.tag": KEYWORDS,
    "container.image.hash.all": KEYWORDS,
    "container.runtime": KEYWORD,
    "container.labels": OBJECT,
    "orchestrator.type": KEYWORD,
    "orchestrator.namespace": KEYWORD,
    "orchestrator.resource.type": KEYWORD,
    "orchestrator.resource.name": KEYWORD,
    "orchestrator.resource.id": KEYWORD,
    "process.pid": LONG,
    "process.exit_code": LONG,
    "interface.name": KEYWORD,
    "interface.id": KEYWORD,
    "interface.alias": KEYWORD,
    "user.id": KEYWORD,
    "url.original": KEYWORD,
    "data_stream.type": KEYWORD,
    "data_stream.dataset": KEYWORD,
    "data_stream.namespace": KEYWORD,
}
EXTENSIONS = ("nodeagent.", "kubernetes.", "slurm.", "systemd.")
REQUIRED = ("@timestamp", "log.level", "message", "ecs.version", "event.id", "host.name", "service.name")
_HEX = {HEX32: re.compile(r"^[0-9a-f]{32}$"), HEX16: re.compile(r"^[0-9a-f]{16}$")}


def _check(key: str, kind: str, value: Any) -> str | None:
    if kind in (KEYWORD, TEXT):
        ok = isinstance(value, str)
    elif kind == KEYWORDS:  # ECS keyword fields may hold one value or an array of them
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    elif kind == LONG:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == OBJECT:
        ok = isinstance(value, dict)
    elif kind == DATE:
        try:
            ok = isinstance(value, str) and dt.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
        except ValueError:
            ok = False
    else:
        ok = isinstance(value, str) and bool(_HEX[kind].match(value))
    return None if ok else f"{key}: expected {kind}, got {value!r}"


def problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with one record (an empty list if it validates)."""
    out = [f"{key}: required field missing" for key in REQUIRED if key not in record]
    for key, value in record.items():
        if key == "@metadata":
            if not (isinstance(value, dict) and isinstance(value.get("_id"), str)):
                out.append(f"@metadata: expected {{'_id': str}}, got {value!r}")
            continue
        kind = FIELDS.get(key)
        if kind is None:
            if not key.startswith(EXTENSIONS):
                out.append(f"{key}: not an ECS field nodeagent declares, and not under {EXTENSIONS}")
            continue
        problem = _check(key, kind, value)
        if problem:
            out.append(problem)
    return out
