"""
The fuzz tests' case counter: a session fixture every fuzz test records its calls in, a one-line summary at the end of
the session ("fuzz: N cases over M targets"), and the per-target counts as JSON in the file that
``NODEAGENT_FUZZ_REPORT`` names.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.fuzz.support import REPORT_ENV, Cases

_CASES = pytest.StashKey[Cases]()
_SECONDS = pytest.StashKey[float]()  # time spent running the fuzz tests (not the rest of the session)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """Add the test's run time to the fuzz time (this conftest's hooks see only the tests below tests/fuzz)."""
    started = time.monotonic()
    try:
        return (yield)
    finally:
        item.config.stash[_SECONDS] = item.config.stash.get(_SECONDS, 0.0) + time.monotonic() - started


@pytest.fixture(scope="session")
def cases(request: pytest.FixtureRequest) -> Cases:
    """The session's case counter (session-scoped, so Hypothesis reuses it across examples)."""
    config = request.config
    if _CASES not in config.stash:
        config.stash[_CASES] = Cases()
    return config.stash[_CASES]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the JSON report where ``NODEAGENT_FUZZ_REPORT`` says, if any fuzz test ran."""
    config = session.config
    path = os.environ.get(REPORT_ENV, "").strip()
    if not path or _CASES not in config.stash:
        return
    doc = config.stash[_CASES].report()
    doc["wall_seconds"] = round(config.stash.get(_SECONDS, 0.0), 1)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """One line with the totals; with ``-v`` also one line per target."""
    if _CASES not in config.stash:
        return
    counted = config.stash[_CASES]
    wall = config.stash.get(_SECONDS, 0.0)
    terminalreporter.write_sep("-", "fuzz")
    if config.getoption("verbose") > 0:
        for name, c in sorted(counted.targets.items()):
            terminalreporter.write_line(
                f"  {name}: {c.cases} cases ({c.values} values, {c.errors} documented errors), {c.seconds:.2f}s"
            )
    terminalreporter.write_line(f"fuzz: {counted.total} cases over {len(counted.targets)} targets in {wall:.1f}s")
