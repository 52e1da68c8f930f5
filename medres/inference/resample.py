"""Map arrays from a model's grid back onto a scan's own grid, slab by slab.

The network sees the scan reoriented, resampled and cropped; its output lives on that
"model grid", whose voxel -> RAS mm affine MONAI tracks through every transform. To bring
an output home we do not replay the transforms backwards (MONAI's ``Invertd`` inverts the
whole multi-class float32 volume at once, several copies deep); we compute, for each
native voxel, where it lies on the model grid (``inv(model_affine) @ native_affine``) and
sample there with ``torch.nn.functional.grid_sample``. The native grid is filled a slab of
slices at a time straight into the output array, in the output's (compact) dtype, so the
extra memory is one slab, whatever the scan's size.

Native voxels outside the model grid (cropped away) get 0, which for class probabilities
means background.

Example:
    >>> import numpy as np
    >>> src = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    >>> out = resample_to_grid(src, np.eye(4), np.eye(4), (2, 2, 2))
    >>> bool((out == src).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: Native voxels per slab (about 2 M: a 512x512 image times 8 slices).
SLAB_VOXELS = 1 << 21


def grid_mapping(
    source_affine: npt.ArrayLike, target_affine: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """4x4 matrix taking target voxel indices to (fractional) source voxel indices."""
    src = np.asarray(source_affine, dtype=np.float64)
    dst = np.asarray(target_affine, dtype=np.float64)
    return np.linalg.inv(src) @ dst  # type: ignore[no-any-return]


def _is_identity(
    mapping: npt.NDArray[np.float64],
    source_shape: Sequence[int],
    target_shape: Sequence[int],
    ndim: int,
) -> bool:
    if tuple(source_shape) != tuple(target_shape):
        return False
    block = np.eye(4)
    return bool(
        np.allclose(mapping[:ndim, :ndim], block[:ndim, :ndim], atol=1e-6)
        and np.allclose(mapping[:ndim, 3], 0.0, atol=1e-4)
    )


def resample_to_grid(
    source: npt.NDArray[Any],
    source_affine: npt.ArrayLike,
    target_affine: npt.ArrayLike,
    target_shape: Sequence[int],
    *,
    nearest: bool = False,
    dtype: npt.DTypeLike = np.float32,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """Sample channel-first ``source (K, *src_shape)`` at every voxel of a target grid.

    Args:
        source: Values on the source grid, 2D ``(K, x, y)`` or 3D ``(K, x, y, z)``.
        source_affine: 4x4 voxel -> RAS mm of the source grid.
        target_affine: 4x4 voxel -> RAS mm of the target grid.
        target_shape: Spatial shape of the target grid.
        nearest: Nearest-neighbour sampling (labels, bit masks) instead of (bi/tri)linear.
        dtype: dtype of the returned array (float16 or uint8 keep it compact); integer
            outputs are rounded.
        out: Optional preallocated ``(K, *target_shape)`` array to fill.

    Returns:
        ``(K, *target_shape)`` array; 0 where the target lies outside the source grid.
    """
    import torch
    import torch.nn.functional as F

    source = np.asarray(source)
    ndim = source.ndim - 1
    if ndim not in (2, 3) or len(target_shape) != ndim:
        raise ValueError(
            f"source {source.shape} and target shape {tuple(target_shape)} must both be 2D or 3D"
        )
    channels = source.shape[0]
    target_shape = tuple(int(s) for s in target_shape)
    if out is None:
        out = np.empty((channels, *target_shape), dtype=dtype)
    integer = np.issubdtype(out.dtype, np.integer)
    mapping = grid_mapping(source_affine, target_affine)
    if _is_identity(mapping, source.shape[1:], target_shape, ndim):
        out[...] = np.rint(source) if integer and not nearest else source
        return out

    linear = mapping[:ndim, :ndim].astype(np.float32)
    offset = mapping[:ndim, 3].astype(np.float32)
    src_shape = source.shape[1:]
    # grid_sample's normalised coordinates (align_corners=True): -1 .. 1 over the index range
    scale = np.array([2.0 / max(s - 1, 1) for s in src_shape], dtype=np.float32)
    shift = np.array([-1.0 if s > 1 else 0.0 for s in src_shape], dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None]
    mode = "nearest" if nearest else ("bilinear")
    last = target_shape[-1]
    per_slice = int(np.prod(target_shape[:-1]))
    step = max(1, SLAB_VOXELS // max(per_slice, 1))
    axes = [torch.arange(n, dtype=torch.float32) for n in target_shape[:-1]]
    lin = torch.from_numpy(linear)
    with torch.inference_mode():
        for start in range(0, last, step):
            stop = min(last, start + step)
            grids = torch.meshgrid(
                *axes, torch.arange(start, stop, dtype=torch.float32), indexing="ij"
            )
            index = torch.stack(grids, dim=-1)  # (*slab, ndim) target voxel indices
            src_index = index @ lin.T + torch.from_numpy(offset)
            normalised = src_index * torch.from_numpy(scale) + torch.from_numpy(shift)
            grid = normalised.flip(-1)[None]  # grid_sample wants (x=last axis, ..., first)
            sampled = F.grid_sample(
                tensor, grid, mode=mode, padding_mode="zeros", align_corners=True
            )[0]
            values = sampled.numpy()
            if integer:
                values = np.rint(values)
            out[..., start:stop] = values
    return out


__all__ = ["SLAB_VOXELS", "grid_mapping", "resample_to_grid"]
