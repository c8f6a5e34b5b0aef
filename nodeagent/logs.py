"""
Structured logging: structlog, one JSON object per line on stdout, Elastic Common Schema names.

Every record carries ``@timestamp`` (UTC), ``log.level``, ``message``, ``ecs.version``,
``service.name``, ``service.version`` and ``host.name``; records inside a collection cycle also carry
that cycle's ``trace.id`` and ``span.id`` (bound through contextvars by the scheduler).
``--log-format console`` renders the same events for a person at a terminal.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
import traceback
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from nodeagent import __version__

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


def _static_fields(hostname: str) -> Processor:
    fields = {
        "ecs.version": ECS_VERSION,
        "service.name": "nodeagent",
        "service.version": __version__,
        "host.name": hostname,
    }

    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add


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


def _render_json(_: WrappedLogger, __: str, event: EventDict) -> str:
    # allow_nan=False: NaN/Infinity are not JSON; Elasticsearch rejects such documents.
    try:
        return json.dumps(event, default=_json_default, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(event), default=_json_default, allow_nan=False, separators=(",", ":"))


def configure(
    level: str = "info", fmt: str = "json", stream: TextIO | None = None, hostname: str | None = None
) -> None:
    """Configure structlog once for the process."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="@timestamp"),
    ]
    renderer: list[Processor]
    if fmt == "console":
        renderer = [
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    else:
        renderer = [
            _ecs_level,
            _ecs_error,
            _static_fields(hostname or socket.gethostname()),
            structlog.processors.EventRenamer("message"),
            _render_json,
        ]
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
