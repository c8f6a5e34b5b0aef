"""A test double of NVIDIA's ``libnvidia-ml.so.1`` (the public NVML C API), written in C, for nodeagent's tests.

The real ``pynvml`` (PyPI nvidia-ml-py) loads it through its ordinary ctypes path, so tests exercise the same
symbol lookups, struct layouts and error mapping as on a GPU node. Values come from a scenario file
(``scenario.Scenario``) named by ``NVML_DOUBLE_SCENARIO``. Two ways to load it:

* another process: ``subprocess_env(lib_dir, scenario_path)`` sets ``LD_LIBRARY_PATH`` (read by glibc at process
  start, so it only works for a new process) and the scenario variable;
* this process: ``with loaded_into_pynvml(lib_dir):`` points ``pynvml.nvmlLib`` at the double and restores
  pynvml's module state afterwards.

See README.md for the scenario format and the list of faked functions.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.nvml_double.build import LIBRARY_NAME, BuildFailed, CompilerMissing, build
from tests.nvml_double.scenario import (
    SCENARIO_ENV,
    Field,
    FieldError,
    Gpu,
    MigDevice,
    Process,
    ProcUtil,
    Scenario,
    ValueType,
    Xid,
    gpu_uuid,
    mig_uuid,
)

__all__ = [
    "LIBRARY_NAME",
    "SCENARIO_ENV",
    "BuildFailed",
    "CompilerMissing",
    "Field",
    "FieldError",
    "Gpu",
    "MigDevice",
    "ProcUtil",
    "Process",
    "Scenario",
    "ValueType",
    "Xid",
    "build",
    "build_or_missing",
    "gpu_uuid",
    "loaded_into_pynvml",
    "mig_uuid",
    "subprocess_env",
]


def build_or_missing() -> Path:
    """The compiled double; without gcc the calling test skips, or fails under ``CI=true`` (``tests.prereq``)."""
    from tests.prereq import missing

    try:
        return build()
    except CompilerMissing as exc:
        missing(f"gcc to build the NVML test double ({exc})")
        raise


def subprocess_env(lib_dir: Path, scenario_path: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process whose ``CDLL("libnvidia-ml.so.1")`` finds the double."""
    env = dict(os.environ if base is None else base)
    previous = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(lib_dir) if not previous else f"{lib_dir}{os.pathsep}{previous}"
    env[SCENARIO_ENV] = str(scenario_path)
    return env


@contextmanager
def loaded_into_pynvml(lib_dir: Path) -> Iterator[ctypes.CDLL]:
    """Make this process's ``pynvml`` use the double; undo it (and every leftover nvmlInit) on exit.

    The double keeps its own init refcount for the life of the process (a shared object is never unloaded), so
    on exit it is shut down until it answers UNINITIALIZED; pynvml's ``nvmlLib``, function-pointer cache and
    ``_nvmlLib_refcount`` are restored to what they were.
    """
    import pynvml

    lib = ctypes.CDLL(str(Path(lib_dir) / LIBRARY_NAME))
    with pynvml.libLoadLock:
        saved = (pynvml.nvmlLib, pynvml._nvmlLib_refcount)
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        yield lib
    finally:
        for _ in range(10_000):
            if lib.nvmlShutdown() != 0:  # UNINITIALIZED once balanced (or an injected nvmlShutdown error)
                break
        with pynvml.libLoadLock:
            pynvml.nvmlLib, pynvml._nvmlLib_refcount = saved
            pynvml._nvmlGetFunctionPointer_cache.clear()
