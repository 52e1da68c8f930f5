"""Process-level speed settings for long CPU runs (training, batch prediction).

glibc's allocator returns freed memory to the system eagerly (heap trimming) and switches
large blocks to fresh ``mmap`` calls; a training loop that allocates and frees the same
activation tensors every iteration then pays page faults each time. Raising the trim
threshold and fixing the mmap threshold keeps that memory in the process: measured here
with ``benchmarks/bench_training.py`` (see docs/user-guide.md). The cost is that the
process keeps its peak memory instead of shrinking between iterations.

The library never changes these settings by itself; the CLI commands call
:func:`tune_allocator` once at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: large enough that activation tensors are recycled from the heap, not mmap-ed anew (older
#: glibc releases refuse values above 32 MiB; then the call returns False)
_MMAP_THRESHOLD_BYTES = 1 << 30
_TRIM_THRESHOLD_BYTES = 1 << 40


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc only). Returns True when applied.

    Equivalent to starting the process with ``MALLOC_TRIM_THRESHOLD_`` set high and
    ``MALLOC_MMAP_THRESHOLD_`` fixed; a no-op on other platforms and C libraries.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_trim = mallopt(_M_TRIM_THRESHOLD, min(_TRIM_THRESHOLD_BYTES, 2**31 - 1))
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    applied = bool(ok_trim and ok_mmap)
    logger.debug("allocator tuning %s", "applied" if applied else "refused")
    return applied


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; refuses ``cuda`` without a GPU.

    Raises:
        ConfigError: An unknown device name, or CUDA requested but unavailable.
    """
    import torch

    from medres.errors import ConfigError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} requested but torch {torch.__version__} sees no CUDA GPU; "
                "use --device cpu or install a CUDA build of torch"
            )
        return device
    if device == "cpu":
        return device
    raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")


def amp_dtype(device: str) -> Any:
    """The autocast dtype for mixed precision on ``device``; None where AMP is off (CPU).

    bfloat16 on CUDA GPUs that support it (Ampere and later: same range as float32, so
    training needs no gradient scaler), float16 on older ones. CPU runs in float32: bf16
    autocast is slower on CPUs without AMX (see docs/user-guide.md).
    """
    import torch

    if not device.startswith("cuda"):
        return None
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's own memory.

    On Linux this is ``VmHWM``: ``getrusage(RUSAGE_SELF).ru_maxrss`` would also never drop
    below the peak RSS of the parent at spawn time (subprocess uses vfork, and exec folds
    the parent's high-water mark into the child's ``ru_maxrss``), and clearing the peak does
    not clear that part. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    import resource
    from pathlib import Path

    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


__all__ = ["amp_dtype", "peak_rss_bytes", "resolve_device", "tune_allocator"]
