"""ECS JSON log lines: field names, errors, and valid JSON for any value."""

from __future__ import annotations

import io
import json

import structlog

from nodeagent.logs import configure


def _lines(emit) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    stream = io.StringIO()
    configure("debug", "json", stream, hostname="node-1")
    try:
        emit(structlog.get_logger())
    finally:
        structlog.reset_defaults()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_ecs_fields() -> None:
    """A record has the ECS base fields; the event becomes `message`; bound context is kept."""
    (record,) = _lines(lambda log: log.bind(**{"trace.id": "a" * 32}).warning("disk.slow", device="sda"))

    assert ("warning", "disk.slow", "node-1", "nodeagent", "a" * 32, "sda") == (
        record["log.level"],
        record["message"],
        record["host.name"],
        record["service.name"],
        record["trace.id"],
        record["nodeagent.device"],  # a key outside ECS goes under nodeagent.
    )
    assert record["@timestamp"].endswith("Z")
    assert "ecs.version" in record


def test_exception_becomes_error_fields() -> None:
    """An exception is written as error.type, error.message and error.stack_trace."""

    def emit(log) -> None:  # type: ignore[no-untyped-def]
        try:
            raise ValueError("bad /proc/stat line 3")
        except ValueError:
            log.exception("collector.failed")

    (record,) = _lines(emit)

    assert ("ValueError", "bad /proc/stat line 3") == (record["error.type"], record["error.message"])
    assert "Traceback" in record["error.stack_trace"]


def test_non_finite_numbers_stay_valid_json() -> None:
    """NaN and infinities, also nested, are written as strings so the line stays valid JSON."""
    (record,) = _lines(lambda log: log.info("odd", ratio=float("nan"), detail={"values": [1.0, float("inf")]}))

    assert ("nan", [1.0, "inf"]) == (record["nodeagent.ratio"], record["nodeagent.detail"]["values"])
