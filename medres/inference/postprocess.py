"""Post-processing of label maps: remove lesion components below a physical size.

Sizes are physical: mm^3 for 3D label maps, mm^2 for 2D ones (a 2D pipeline's slices
are cleaned one by one), so one setting means the same on any voxel spacing.

Example:
    >>> import numpy as np
    >>> label_map = np.zeros((10, 10), np.uint8); label_map[1, 1] = 1; label_map[4:8, 4:8] = 1
    >>> int(remove_small_lesions(label_map, voxel_measure=1.0, min_size=4.0,
    ...                          lesion_indices=(1,)).sum())
    16
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def occupied_box(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) holding every True voxel; None when empty.

    Lesions fill a small part of a scan: labelling only this box keeps the int32 work
    arrays of connected-component labelling small on a 512x512x300 CT.
    """
    box: list[slice] = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=others))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def label_components(
    mask: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.unsignedinteger[Any]], int]:
    """Face-connected components of a 2D or 3D mask (6-connected in 3D, 4 in 2D).

    Uses connected-components-3d: about 4 times faster than scipy's labelling on a
    512x512x300 mask.

    Returns:
        ``(labels, count)``: 0 is the background, components are 1..count.
    """
    import cc3d

    mask = np.ascontiguousarray(mask, dtype=bool)
    voxels = int(np.count_nonzero(mask))
    if voxels == 0:
        return np.zeros(mask.shape, np.uint16), 0
    if mask.ndim == 3:
        labels, count = cc3d.connected_components(
            mask, connectivity=6, return_N=True, max_labels=voxels
        )
    else:
        labels, count = cc3d.connected_components(
            mask, connectivity=4, return_N=True, max_labels=voxels
        )
    return labels, int(count)


def remove_small_lesions(
    label_map: npt.NDArray[np.integer],
    *,
    voxel_measure: float,
    min_size: float,
    lesion_indices: Sequence[int],
    max_lesions: int | None = None,
) -> npt.NDArray[np.uint8]:
    """Set lesion components smaller than ``min_size`` to background, and with
    ``max_lesions`` all but the largest ``max_lesions`` of each label (one lesion per image:
    a skin lesion, a polyp, one tumour).

    Args:
        label_map: Label map ``(x, y)`` or ``(x, y, z)``.
        voxel_measure: Size of one voxel: mm^3 for 3D maps, mm^2 for 2D maps
            (:attr:`~medres.io.grid.Grid.voxel_measure`: |det| of the affine, right for
            sheared gantry-tilt grids).
        min_size: Smallest kept component, in the same unit.
        lesion_indices: Labels treated as lesions (others are left alone).
        max_lesions: Largest components kept per label (None: all); ties keep the first.

    Returns:
        A cleaned copy (uint8). Components are face-connected (6 in 3D, 4 in 2D).
    """
    out = np.array(label_map, dtype=np.uint8, copy=True)
    if min_size <= 0 and max_lesions is None:
        return out
    if max_lesions is not None and max_lesions < 1:
        raise ValueError(f"max_lesions must be at least 1, got {max_lesions}")
    if not voxel_measure > 0:
        raise ValueError(f"voxel_measure must be positive, got {voxel_measure}")
    voxel = float(voxel_measure)
    for label in lesion_indices:
        box = occupied_box(out == label)
        if box is None:
            continue
        region = out[box]  # a view: changes land in ``out``
        components, count = label_components(region == label)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel()) * voxel
        drop = sizes < min_size
        if max_lesions is not None and count > max_lesions:
            order = np.argsort(-sizes[1:], kind="stable") + 1  # largest first
            drop[order[max_lesions:]] = True
        drop[0] = False  # the background of the box
        if drop.any():
            region[drop[components]] = 0
    return out


__all__ = ["remove_small_lesions"]
