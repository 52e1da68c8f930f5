"""Bounds on what medres reads before it allocates: file sizes, voxel counts, memory.

Every header value is distrusted (``docs/user-guide.md``, "Hostile input"): a declared
image size is checked against these bounds and against the bytes actually on disk before
any array is made, so a damaged or hostile file ends as one clear error instead of an
out-of-memory kill or a hang.

The memory budget defaults to half of the machine's RAM and can be set with the
environment variable ``MEDRES_MAX_MEMORY_GB`` (a positive number of GiB).

Example:
    >>> from medres.limits import memory_budget_bytes
    >>> memory_budget_bytes() > 0
    True
"""

from __future__ import annotations

import os

#: Largest pipeline.yaml / model.json / datalist accepted (bytes). Real ones are a few KiB.
MAX_CONFIG_BYTES = 1 << 20
#: Largest record of a prediction folder accepted (lesions.json, run.json; bytes). A run of
#: 10,000 scans writes a run.json of about 10 MB.
MAX_RECORD_BYTES = 512 << 20
#: Largest number of YAML nodes (scalars, lists, mappings, aliases counted as expanded) in a
#: config file; defeats "billion laughs" alias bombs before anything is built from them.
MAX_CONFIG_NODES = 100_000
#: Largest number of spatial voxels of one scan (a 1024 x 1024 x 2000 CT is 2.1e9).
MAX_VOXELS = 2_500_000_000
#: Largest number of channels (or time points turned into channels) of one scan.
MAX_CHANNELS = 64
#: Largest decompressed size of a gzip stream relative to its compressed size; a NIfTI
#: compresses 3-20x, a gzip bomb 1000x and more.
MAX_GZIP_RATIO = 400
#: Largest number of DICOM slices in one series.
MAX_SLICES = 20_000
#: Largest file discovery opens as a possible DICOM slice (bytes).
MAX_DICOM_FILE_BYTES = 4 << 30

_ENV_MEMORY = "MEDRES_MAX_MEMORY_GB"


def total_memory_bytes() -> int:
    """Physical memory of this machine (bytes); 16 GiB when it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def memory_budget_bytes() -> int:
    """Largest single array medres allocates for one scan (bytes).

    ``MEDRES_MAX_MEMORY_GB`` when set to a positive number, else half of the RAM.
    """
    value = os.environ.get(_ENV_MEMORY, "").strip()
    if value:
        try:
            gib = float(value)
        except ValueError:
            gib = 0.0
        if gib > 0 and gib == gib and gib != float("inf"):
            return int(gib * (1 << 30))
    return total_memory_bytes() // 2


def check_allocation(what: str, n_bytes: int) -> str | None:
    """Why an array of ``n_bytes`` must not be allocated for ``what``, or None when it may.

    Returns a message fragment (without the file name) such as
    ``"needs 64.0 GiB for 2000 x 2000 x 2000 voxels, above the 12.0 GiB memory budget
    (MEDRES_MAX_MEMORY_GB)"``.
    """
    budget = memory_budget_bytes()
    if n_bytes > budget:
        return (
            f"{what} needs {n_bytes / 2**30:.1f} GiB, above the {budget / 2**30:.1f} GiB "
            f"memory budget (set {_ENV_MEMORY} to raise it)"
        )
    return None


__all__ = [
    "MAX_CHANNELS",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
    "MAX_DICOM_FILE_BYTES",
    "MAX_GZIP_RATIO",
    "MAX_RECORD_BYTES",
    "MAX_SLICES",
    "MAX_VOXELS",
    "check_allocation",
    "memory_budget_bytes",
    "total_memory_bytes",
]
