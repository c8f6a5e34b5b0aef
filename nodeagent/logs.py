"""
Structured logging: structlog, one JSON object per line on stdout, Elastic Common Schema names.

Every record carries ``@timestamp`` (UTC), ``log.level``, ``message``, ``ecs.version``, ``service.*``,
``host.{name,hostname,id}``, ``agent.*``, ``data_stream.*`` and a unique ``event.id``; records inside a collection
cycle also carry that cycle's ``trace.id`` and ``span.id`` (bound through contextvars by the scheduler), node events
(``nodeagent.events``) their own. With shipping configured (``logs.ship``) each record is also handed to the spool
with ``@metadata._id`` set to its event id. ``--log-format console`` renders the same records for a person.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from nodeagent import __version__
from nodeagent.events import NODE_EVENT_KEY, new_event_id
from nodeagent.ship import PRIORITY_EVENT, PRIORITY_LOG, PRIORITY_LOG_PROBLEM

ECS_VERSION = "8.11.0"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _ecs_level(_: WrappedLogger, method: str, event: EventDict) -> EventDict:
    level = event.pop("level", None) or method
    event["log.level"] = "warning" if level == "warn" else level
    return event


def _ecs_error(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Turn ``exc_info`` into ECS ``error.type``, ``error.message`` and ``error.stack_trace``."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        etype, value, tb = exc_info
        if etype is not None:
            event["error.type"] = etype.__name__
            event["error.message"] = str(value)
            event["error.stack_trace"] = "".join(traceback.format_exception(etype, value, tb))
    error = event.pop("error", None)
    if isinstance(error, dict):
        for key, val in error.items():
            event[f"error.{key}"] = val
    elif error is not None:
        event["error.message"] = str(error)
    return event


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value
    return ""


# One id per agent process (ECS agent.ephemeral_id).
_EPHEMERAL_ID = secrets.token_hex(16)


def static_fields(hostname: str) -> dict[str, Any]:
    """The ECS fields every record of this process carries."""
    host_id = _machine_id()
    fields: dict[str, Any] = {
        "ecs.version": ECS_VERSION,
        "service.name": "nodeagent",
        "service.version": __version__,
        "service.type": "nodeagent",
        "host.name": hostname,
        "host.hostname": hostname,
        "agent.name": "nodeagent",
        "agent.type": "nodeagent",
        "agent.version": __version__,
        "agent.ephemeral_id": _EPHEMERAL_ID,
        "data_stream.type": "logs",
        "data_stream.namespace": "default",
    }
    if host_id:
        fields["host.id"] = host_id
        fields["agent.id"] = host_id
    return fields


_second: tuple[int, str] = (-1, "")  # the last whole second seen and its ISO 8601 text (replaced whole: threads)


def _timestamp(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """``@timestamp``: UTC, ISO 8601 with microseconds and ``Z``; the date and time part formatted once a second."""
    global _second
    now = time.time()
    sec = int(now)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    event["@timestamp"] = f"{cached[1]}.{int((now - sec) * 1e6):06d}Z"
    return event


def _per_record_fields(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    # Node events go to their own data stream dataset; the agent's own records to nodeagent.log.
    if "data_stream.dataset" not in event:
        event["data_stream.dataset"] = event.get("event.dataset") or "nodeagent.log"
    if "event.id" not in event:
        event["event.id"] = new_event_id()
    return event


def _json_default(value: Any) -> Any:
    return str(value)


def _finite(value: Any) -> Any:
    """Replace NaN and infinities, at any depth, by their string spelling."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _dumps(event: Mapping[str, Any]) -> str:
    # allow_nan=False: NaN/Infinity are not JSON; Elasticsearch rejects such documents.
    try:
        return json.dumps(event, default=_json_default, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(event), default=_json_default, allow_nan=False, separators=(",", ":"))


def _ecs_json(hostname: str) -> Callable[[WrappedLogger, str, EventDict], str]:
    """The JSON renderer with this process's static ECS fields, serialised once and put in front of each record."""
    fields = static_fields(hostname)
    prefix = _dumps(fields)[:-1] + ","
    keys = fields.keys()

    def render(_: WrappedLogger, __: str, event: EventDict) -> str:
        if keys & event.keys():  # a record that sets one of them itself wins
            return _dumps({**fields, **event})
        body = _dumps(event)
        return prefix + body[1:] if len(body) > 2 else prefix[:-1] + "}"

    return render


# A record's spool priority: node events last to be dropped, the agent's debug/info records first.
def _priority(event: EventDict) -> int:
    if event.get(NODE_EVENT_KEY) == "event":
        return PRIORITY_EVENT
    return PRIORITY_LOG_PROBLEM if event.get("log.level") in ("warning", "error", "critical") else PRIORITY_LOG


def shipped_copy(line: str, event_id: str) -> bytes:
    """
    The record as shipped: the rendered line with ``@metadata._id`` = its event id in front, which Logstash keeps
    out of the stored document and its Elasticsearch output can use as the document id (a re-sent record then
    overwrites itself instead of being stored twice).
    """
    return f'{{"@metadata":{{"_id":"{event_id}"}},{line[1:]}'.encode()


Sink = Callable[[bytes, int], object]


def _ship_json(sink: Sink, hostname: str) -> Processor:
    """The JSON renderer that also hands each record, with its priority, to ``sink`` (which must not block)."""
    to_json = _ecs_json(hostname)

    def render(logger: WrappedLogger, method: str, event: EventDict) -> str:
        line = to_json(logger, method, event)
        sink(shipped_copy(line, str(event["event.id"])), _priority(event))
        return line

    return render


def _name_and_message(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """``log.info("ship.failed", message="...")``: the text is the message, the name goes to ``nodeagent.log.event``."""
    if "message" in event and "event" in event:
        event["nodeagent.log.event"] = event["event"]
        event["event"] = event.pop("message")
    return event


# Top-level names of the ECS field sets (and Beats' conventions) nodeagent writes; any other key of a record is
# nodeagent's own and goes under ``nodeagent.`` so it cannot collide with an ECS field in an Elasticsearch mapping.
ECS_ROOTS = frozenset(
    {
        "@timestamp", "message", "event", "log", "ecs", "service", "host", "agent", "trace", "span", "transaction",
        "error", "container", "orchestrator", "kubernetes", "process", "interface", "user", "url", "data_stream",
        "labels", "tags", "file", "network", "source", "destination", "cloud", "slurm", "systemd",
        "nodeagent", "log_level",
    }
)  # fmt: skip


_ECS_KEY: dict[str, bool] = {}  # key -> whether it stays where it is (keys come from code: a bounded set)


def _namespace_custom(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    move = None
    for key in event:
        ok = _ECS_KEY.get(key)
        if ok is None:
            ok = key.split(".", 1)[0] in ECS_ROOTS
            if len(_ECS_KEY) < 10_000:
                _ECS_KEY[key] = ok
        if not ok:
            move = [key] if move is None else [*move, key]
    if move:
        for key in move:
            event["nodeagent." + key] = event.pop(key)
    return event


def _ecs_chain() -> list[Processor]:
    return [
        _ecs_level,
        _ecs_error,
        _per_record_fields,
        _name_and_message,
        _namespace_custom,
        structlog.processors.EventRenamer("message"),
    ]


def _ship_tap(sink: Sink, hostname: str) -> Processor:
    """For console output: ship an ECS JSON copy of each record, leave the record itself to the console renderer."""
    chain = _ecs_chain()
    to_json = _ecs_json(hostname)

    def tap(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        copy = dict(event)
        for processor in chain:
            copy = processor(logger, method, copy)  # type: ignore[assignment]
        line = to_json(logger, method, copy)
        sink(shipped_copy(line, str(copy["event.id"])), _priority(copy))
        return event

    return tap


def configure(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    hostname: str | None = None,
    sink: Sink | None = None,
) -> None:
    """
    Configure structlog once for the process. With ``sink``, every record is also handed over as shipped JSON
    bytes with its spool priority (``nodeagent.ship``): ``sink`` is called on the logging thread and must not block.
    """
    host = hostname or socket.gethostname()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _timestamp,
    ]
    renderer: list[Processor]
    if fmt == "console":
        renderer = [
            *([_ship_tap(sink, host)] if sink is not None else []),
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    else:
        renderer = [*_ecs_chain(), _ship_json(sink, host) if sink is not None else _ecs_json(host)]
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
