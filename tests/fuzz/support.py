"""
What every fuzz test shares: the example budget (scaled by ``NODEAGENT_FUZZ_SCALE``), the per-target case counter
that the conftest reports, and the call wrapper that enforces the property "a value or a documented typed error,
never another exception".
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hypothesis import HealthCheck, settings

SCALE_ENV = "NODEAGENT_FUZZ_SCALE"
REPORT_ENV = "NODEAGENT_FUZZ_REPORT"


def scale() -> float:
    """The multiplier of every test's example budget: ``NODEAGENT_FUZZ_SCALE`` (default 1, e.g. 20 for a deep run)."""
    raw = os.environ.get(SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{SCALE_ENV}={raw!r}: expected a positive number such as 1, 0.5 or 20") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{SCALE_ENV}={raw!r}: expected a positive number such as 1, 0.5 or 20")
    return value


def budget(examples: int) -> settings:
    """
    Hypothesis settings for one fuzz test: ``examples`` times the scale, no deadline (a loaded CI machine must not
    turn a slow example into a failure), and none of the health checks that only say generation was slow or large.
    """
    return settings(
        max_examples=max(1, round(examples * scale())),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


class Outcome(NamedTuple):
    """What one call of a target gave: its value, or the documented error it raised (then ``value`` is None)."""

    value: Any
    error: BaseException | None


@dataclass
class TargetCount:
    """Calls of one target: how many, how many gave a value, how many a documented error, and their CPU time."""

    cases: int = 0
    values: int = 0
    errors: int = 0
    seconds: float = 0.0


@dataclass(repr=False)
class Cases:
    """The per-target counts of one test session (kept in the pytest config's stash by the conftest)."""

    targets: dict[str, TargetCount] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Short, because Hypothesis prints every argument of a failing example, fixtures included.
        return f"Cases({self.total} so far)"

    def call(
        self,
        target: str,
        fn: Callable[..., Any],
        *args: Any,
        allowed: tuple[type[BaseException], ...] = (),
        names: str = "",
        **kwargs: Any,
    ) -> Outcome:
        """
        Call ``fn(*args, **kwargs)`` as one case of ``target``. An exception of an ``allowed`` type is the
        documented outcome of bad input: its message must be non-empty and, when ``names`` is given, contain it (the
        file or key it is about). Any other exception propagates and fails the test (Hypothesis then shrinks it).
        """
        count = self.targets.setdefault(target, TargetCount())
        count.cases += 1
        started = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
        except allowed as exc:
            count.errors += 1
            message = str(exc)
            assert message.strip(), f"{target}: {type(exc).__name__} without a message"
            assert names in message, f"{target}: {type(exc).__name__} message {message!r} does not name {names!r}"
            return Outcome(None, exc)
        finally:
            count.seconds += time.perf_counter() - started
        count.values += 1
        return Outcome(value, None)

    @property
    def total(self) -> int:
        """Cases over all targets."""
        return sum(c.cases for c in self.targets.values())

    def report(self) -> dict[str, Any]:
        """The counts as a JSON-ready document."""
        return {
            "cases": self.total,
            "targets": len(self.targets),
            "scale": scale(),
            "per_target": {
                name: {"cases": c.cases, "values": c.values, "errors": c.errors, "seconds": round(c.seconds, 3)}
                for name, c in sorted(self.targets.items())
            },
        }
