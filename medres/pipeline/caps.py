"""Caps on what a pipeline config may ask for, and the checks that apply them.

Sizes a config may ask for (patch and window sides, batch sizes, network parameter lists)
are capped so that a hostile file ends as one :class:`~medres.errors.ConfigError` line
instead of an out-of-memory kill or a hang.
"""

from __future__ import annotations

import math
from typing import Any

#: Longest list in ``model.params`` (e.g. ``channels``: one entry per resolution level).
MAX_PARAM_ITEMS = 16
#: Largest integer in ``model.params`` (channel/filter counts and every other count).
MAX_PARAM_INT = 4096
#: Tighter caps for parameters that are not channel counts (3D kernels grow as k^3).
PARAM_INT_CAPS = {
    "strides": 8,
    "kernel_size": 15,
    "num_res_units": 16,
    "blocks_down": 16,
    "blocks_up": 16,
}
#: Longest string value in ``model.params``.
MAX_PARAM_TEXT = 64
#: Largest side of ``training.patch_size`` / ``inference.roi_size`` (voxels).
MAX_PATCH_SIDE = 1024
#: Largest number of voxels of one training patch or sliding window (256^3).
MAX_PATCH_VOXELS = 256**3
#: Largest ``training.batch_size``.
MAX_BATCH_SIZE = 256
#: Largest ``inference.sw_batch_size``.
MAX_SW_BATCH_SIZE = 64
#: Largest number of voxels in one batch (batch size x patch voxels, per input channel).
MAX_BATCH_VOXELS = 1 << 27
#: Largest ``inference.overlap``: each axis needs 1 / (1 - overlap) times more windows.
MAX_OVERLAP = 0.9
#: Largest number of output labels (background included).
MAX_LABELS = 256
#: Smallest and largest ``preprocessing.target_spacing_mm`` entry (mm).
SPACING_RANGE_MM = (0.01, 100.0)


def _check_sides(what: str, value: tuple[int, ...]) -> None:
    """Refuse patch/window sizes too small to be a window or too large to allocate."""
    if any(side < 4 for side in value):
        raise ValueError(f"{list(value)}: every side must be >= 4")
    if any(side > MAX_PATCH_SIDE for side in value):
        raise ValueError(f"{list(value)}: every side must be <= {MAX_PATCH_SIDE} voxels")
    if math.prod(value) > MAX_PATCH_VOXELS:
        raise ValueError(
            f"{list(value)}: {math.prod(value)} voxels per {what}, above the "
            f"{MAX_PATCH_VOXELS} (256^3) limit; use a smaller size"
        )


def _short(key: object, width: int = 40) -> str:
    """``key`` as text, cut to ``width`` characters with ``...``."""
    text = str(key)
    return text if len(text) <= width else text[: width - 3] + "..."


def _param_problem(key: str, value: Any) -> str | None:
    """Why ``model.params[key] = value`` is refused before any network is built, or None."""
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_PARAM_ITEMS:
            return f"{len(value)} values, at most {MAX_PARAM_ITEMS} are accepted"
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                return "lists of lists are not accepted; give plain numbers"
            problem = _param_problem(key, item)
            if problem:
                return problem
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        cap = PARAM_INT_CAPS.get(key, MAX_PARAM_INT)
        if not 0 <= value <= cap:
            return f"{_short(value)} is outside 0..{cap}"
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if abs(value) > MAX_PARAM_INT:
            return f"{value} is outside -{MAX_PARAM_INT}..{MAX_PARAM_INT}"
        return None
    if isinstance(value, str):
        if len(value) > MAX_PARAM_TEXT:
            return f"text of {len(value)} characters, at most {MAX_PARAM_TEXT} are accepted"
        return None
    return (
        f"a {type(value).__name__} is not accepted; give a number, a string, null or a list "
        f"of up to {MAX_PARAM_ITEMS} numbers"
    )
