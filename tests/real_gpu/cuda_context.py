"""
A process that holds a CUDA context (and some device memory) on one GPU, through the CUDA driver API with ctypes
only: ``cuInit(0)``, ``cuDeviceGet``, ``cuCtxCreate_v2``, ``cuMemAlloc_v2``. It prints ``ready`` and then
``uuid GPU-...`` (the device's UUID, as NVML spells it) on stdout and sleeps, so NVML lists it as a compute process.

Standalone (no imports from the repository), run by path: ``python3 tests/real_gpu/cuda_context.py [--device N]
[--alloc-mib N] [--seconds S]``. ``--check`` only loads ``libcuda.so.1``. Exit status 4: ``libcuda.so.1`` cannot
be loaded; 5: a CUDA call failed (the first stdout line says which).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time

NO_LIBRARY = 4
CUDA_FAILED = 5


class CudaError(Exception):
    pass


def load() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _check(cuda: ctypes.CDLL, name: str, rc: int) -> None:
    if rc != 0:
        text = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(text))
        raise CudaError(f"{name} returned {rc} ({(text.value or b'?').decode()})")


def format_uuid(raw: bytes) -> str:
    """16 bytes of a ``CUuuid`` as NVML prints a GPU UUID: ``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``."""
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def hold_context(cuda: ctypes.CDLL, device: int, alloc_mib: int) -> str:
    """Create a context on ``device`` and allocate ``alloc_mib`` MiB in it; the device's UUID."""
    cuda.cuInit.argtypes = [ctypes.c_uint]
    cuda.cuDeviceGet.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    cuda.cuDeviceGetUuid.argtypes = [ctypes.POINTER(ctypes.c_ubyte * 16), ctypes.c_int]
    cuda.cuCtxCreate_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint, ctypes.c_int]
    cuda.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    _check(cuda, "cuInit", cuda.cuInit(0))
    dev = ctypes.c_int()
    _check(cuda, "cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(dev), device))
    raw = (ctypes.c_ubyte * 16)()
    _check(cuda, "cuDeviceGetUuid", cuda.cuDeviceGetUuid(ctypes.byref(raw), dev))
    ctx = ctypes.c_void_p()
    _check(cuda, "cuCtxCreate_v2", cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev))
    if alloc_mib > 0:
        ptr = ctypes.c_uint64()
        _check(cuda, "cuMemAlloc_v2", cuda.cuMemAlloc_v2(ctypes.byref(ptr), alloc_mib << 20))
    return format_uuid(bytes(raw))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only load libcuda.so.1")
    parser.add_argument("--device", type=int, default=0, help="CUDA device ordinal (default 0)")
    parser.add_argument("--alloc-mib", type=int, default=64, help="device memory to allocate (default 64 MiB)")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to hold the context (default 300)")
    args = parser.parse_args(argv)
    try:
        cuda = load()
    except OSError as exc:
        print(f"error: libcuda.so.1 cannot be loaded: {exc}", flush=True)
        return NO_LIBRARY
    if args.check:
        print("libcuda.so.1 loaded", flush=True)
        return 0
    try:
        uuid = hold_context(cuda, args.device, args.alloc_mib)
    except CudaError as exc:
        print(f"error: {exc}", flush=True)
        return CUDA_FAILED
    # One write: a reader that waits for "ready" finds the uuid line already buffered behind it.
    sys.stdout.write(f"ready\nuuid {uuid}\n")
    sys.stdout.flush()
    time.sleep(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
