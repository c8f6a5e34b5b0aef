"""
The collector contract: what a collector is, how it is declared, and what it may raise.

A collector samples one domain (CPU, filesystems, cgroups, GPUs, ...) and returns fresh metric
families each cycle; the scheduler runs it. Declaring one is a ``CollectorSpec`` in its module plus one
line in ``nodeagent/collectors/__init__.py``.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Protocol, TypeVar

import structlog
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from nodeagent.hostfs import HostPaths, ParseError
from nodeagent.metrics import MetricFamily
from nodeagent.workloads import WorkloadResolver

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """
    Parse ``15s``, ``500ms``, ``1m``, ``2h`` or a bare number of seconds into seconds.

    Raises:
        ValueError: the value is not a positive duration; the message says what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15s, 500ms, 1m or a number of seconds")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer past the float range
            raise ValueError("a duration must be a finite number of seconds") from None
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 15s, 500ms, 1m or a number of seconds")
    if not seconds > 0:
        raise ValueError("a duration must be greater than 0")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def check_regex(value: str) -> str:
    """Accept a string only if it compiles as a Python regular expression."""
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}; thousands of nested groups
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return value


Regex = Annotated[str, AfterValidator(check_regex)]


class CollectorConfig(BaseModel):
    """Options every collector has; a collector with more options subclasses this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval: Duration | None = None
    timeout: Duration | None = None


class NoDataError(Exception):
    """
    The source does not exist on this host (no PSI, no GPU, no containerd): not a failure.

    ``hint`` tells a person what would make it available; ``nodeagent doctor`` prints it.
    """

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


class SourceUnavailable(Exception):
    """
    The source exists on this host but does not answer now (a runtime socket that refuses connections, a GPU
    that NVML reports lost): a failure, counted with reason ``unavailable``.
    """


# The reasons a failed cycle is counted under (``nodeagent_collector_failures_total{reason}``).
FAILURE_REASONS = ("timeout", "permission_denied", "not_found", "parse_error", "unavailable", "error")

_ERRNO_REASONS = {
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.ENOENT: "not_found",
    errno.ENODEV: "not_found",
    errno.ENXIO: "not_found",
    errno.ETIMEDOUT: "timeout",
    errno.ECONNREFUSED: "unavailable",
    errno.ECONNRESET: "unavailable",
    errno.ECONNABORTED: "unavailable",
    errno.EPIPE: "unavailable",
    errno.ENOTCONN: "unavailable",
    errno.EHOSTUNREACH: "unavailable",
}


def failure_reason(exc: BaseException) -> str:
    """
    The reason a cycle failed, one of ``FAILURE_REASONS``, from the exception and the exceptions it was raised
    from (a collector that wraps an ``OSError`` keeps its errno's reason).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError):
            return "timeout"
        if isinstance(current, SourceUnavailable | ConnectionError):
            return "unavailable"
        if isinstance(current, ParseError):
            return "parse_error"
        if isinstance(current, OSError) and current.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[current.errno]
        current = current.__cause__ or current.__context__
    return "error"


class Collector(Protocol):
    """One domain's sampler. ``collect`` must bound its own blocking work or run it off the loop."""

    async def collect(self) -> Sequence[MetricFamily]:
        """Sample once and return fresh families; raise ``NoDataError`` if the source is absent."""
        ...

    async def aclose(self) -> None:
        """Release sockets, threads and handles."""
        ...


@dataclass(frozen=True, slots=True)
class CollectorContext:
    """What a collector factory receives besides its own configuration."""

    name: str
    paths: HostPaths
    log: structlog.typing.FilteringBoundLogger
    # The agent's one workload resolver, shared by the cgroup, network and GPU collectors.
    workloads: WorkloadResolver | None = None

    def resolver(self) -> WorkloadResolver:
        """The shared workload resolver, or a private one where none was given (tests, ``once``)."""
        return self.workloads if self.workloads is not None else WorkloadResolver(self.paths)


C = TypeVar("C", bound=CollectorConfig)


@dataclass(frozen=True, slots=True)
class CollectorSpec(Generic[C]):
    """
    A collector's declaration: name (also its config section), config model and factory.

    The factory validates nothing that the config model has not already checked and does only cheap
    I/O; a source that is absent is reported by ``collect`` as ``NoDataError``.
    """

    name: str
    description: str
    config_model: type[C]
    factory: Callable[[CollectorContext, C], Collector]
    default_enabled: bool = True


class BaseCollector:
    """Convenience base with a no-op ``aclose`` for collectors that hold nothing open."""

    async def aclose(self) -> None:
        """Nothing to release."""
        return None
