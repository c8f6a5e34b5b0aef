"""
Child processes of the real-GPU checks: an environment from which ``libnvidia-ml.so.1`` resolves to the real library
(no NVML test double, no scenario), and running the probe in it. The test process itself never loads NVML.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.nvml_double.build import STAMP_NAME
from tests.nvml_double.scenario import SCENARIO_ENV

REPO = Path(__file__).resolve().parents[2]
CUDA_CONTEXT_SCRIPT = Path(__file__).with_name("cuda_context.py")
UNAVAILABLE = 3  # the probe's exit status when NVML cannot be used here
DOUBLE_DIR_PREFIX = "nodeagent-nvml-double-"  # tests.nvml_double.build.default_directory()


def is_double_dir(entry: str) -> bool:
    """Whether a library search path entry (or an LD_PRELOAD path) belongs to the NVML test double."""
    if not entry:
        return False
    p = Path(entry)
    if DOUBLE_DIR_PREFIX in str(p):
        return True
    directory = p if p.is_dir() else p.parent
    return (directory / STAMP_NAME).exists()


def real_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    ``base`` (default: this process's environment) without what points a child at the NVML test double: the
    scenario variable, and ``LD_LIBRARY_PATH`` / ``LD_PRELOAD`` entries in a double's build directory. Other
    entries stay (a GPU node may need them to find the real driver libraries).
    """
    env = dict(os.environ if base is None else base)
    env.pop(SCENARIO_ENV, None)
    # ld.so splits LD_LIBRARY_PATH at ':' and ';', LD_PRELOAD at ':' and blanks.
    for var, separators in (("LD_LIBRARY_PATH", r"[:;]"), ("LD_PRELOAD", r"[:\s]+")):
        if var not in env:
            continue
        kept = [p for p in re.split(separators, env[var]) if p and not is_double_dir(p)]
        if kept:
            env[var] = ":".join(kept)
        else:
            del env[var]
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA device 0 is then NVML index 0
    return env


@dataclass
class ProbeResult:
    """What one probe run left: exit status, its JSON (``None`` if it wrote none), and stderr."""

    rc: int
    data: dict[str, Any] | None
    stderr: str

    @property
    def unavailable(self) -> bool:
        return self.rc == UNAVAILABLE

    @property
    def reason(self) -> str:
        if self.data is not None and self.data.get("reason"):
            return str(self.data["reason"])
        return self.stderr.strip().splitlines()[-1] if self.stderr.strip() else f"probe exited {self.rc}"

    def describe(self) -> str:
        """For an assertion message."""
        return f"probe exited {self.rc}; stderr:\n{self.stderr[-4000:]}"


def run_probe(
    json_path: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> ProbeResult:
    """
    ``python3 -m tests.real_gpu.probe --json json_path *args`` from the repository root, in ``env`` (default: the
    clean ``real_env()``), and its result.
    """
    json_path.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.real_gpu.probe", "--json", str(json_path), *args],
        cwd=REPO,
        env=dict(env) if env is not None else real_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    data = json.loads(json_path.read_text()) if json_path.exists() else None
    return ProbeResult(proc.returncode, data, proc.stderr)


def check_cuda(env: Mapping[str, str] | None = None, timeout: float = 60.0) -> tuple[int, str]:
    """Whether ``libcuda.so.1`` loads in a clean child: (exit status of ``cuda_context.py --check``, its output)."""
    proc = subprocess.run(
        [sys.executable, str(CUDA_CONTEXT_SCRIPT), "--check"],
        env=dict(env) if env is not None else real_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def exec_cuda_context_code(args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """
    ``python3 -c`` code that replaces itself (``execve``: same pid, same cgroups) with ``cuda_context.py args`` in the
    clean environment, for ``TestCgroups.spawn_ready``, which starts children with the test process's environment.
    """
    clean = dict(env) if env is not None else real_env()
    argv = [sys.executable, str(CUDA_CONTEXT_SCRIPT), *args]
    return f"import os, sys; os.execve(sys.executable, {argv!r}, {clean!r})"


def in_child_pid_namespace() -> bool:
    """Whether this process sees itself under more than one pid (``NSpid``): NVML lists host pids, not ours."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return len(line.split()) > 2
    return False
