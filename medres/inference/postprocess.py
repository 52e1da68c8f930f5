"""Post-processing of label maps: remove lesion components below a physical size.

Sizes are physical: mm^3 for 3D label maps, mm^2 for 2D ones (a 2D pipeline's slices
are cleaned one by one), so one setting means the same on any voxel spacing.

Example:
    >>> import numpy as np
    >>> labels = np.zeros((10, 10), np.uint8); labels[1, 1] = 1; labels[4:8, 4:8] = 1
    >>> int(remove_small_lesions(labels, spacing_mm=(1.0, 1.0), min_size=4.0,
    ...                          lesion_indices=(1,)).sum())
    16
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def remove_small_lesions(
    labels: npt.NDArray[np.integer],
    *,
    spacing_mm: Sequence[float],
    min_size: float,
    lesion_indices: Sequence[int],
) -> npt.NDArray[np.uint8]:
    """Set lesion components smaller than ``min_size`` to background.

    Args:
        labels: Label map ``(x, y)`` or ``(x, y, z)``.
        spacing_mm: Voxel size along each axis of ``labels``.
        min_size: Smallest kept component: mm^2 for 2D maps, mm^3 for 3D maps.
        lesion_indices: Labels treated as lesions (others are left alone).

    Returns:
        A cleaned copy (uint8). Components are face-connected (6 in 3D, 4 in 2D).
    """
    from scipy import ndimage

    out = np.array(labels, dtype=np.uint8, copy=True)
    if min_size <= 0:
        return out
    if len(spacing_mm) != out.ndim:
        raise ValueError(f"spacing_mm has {len(spacing_mm)} values for a {out.ndim}D label map")
    voxel = float(np.prod(spacing_mm))
    for label in lesion_indices:
        components, count = ndimage.label(out == label)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:] * voxel
        small = np.flatnonzero(sizes < min_size) + 1
        if small.size:
            out[np.isin(components, small)] = 0
    return out


__all__ = ["remove_small_lesions"]
