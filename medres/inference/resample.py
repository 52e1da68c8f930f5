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

With a CUDA ``device`` and a large target (:func:`mapping_device`: at least
:data:`GPU_MAPPING_MIN_VALUES` values, e.g. a 512x512x300 CT) the sampling runs on the
GPU, in larger slabs; each slab comes back to the host already in the output's dtype
(float16 halves the copy). Coordinates are computed with element-wise float32 (a float32
matrix product may run in TF32 on a GPU, about 3 significant digits: half a voxel off at
index 500). When the GPU runs out of memory the same mapping runs on the CPU.

Example:
    >>> import numpy as np
    >>> src = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    >>> out = resample_to_grid(src, np.eye(4), np.eye(4), (2, 2, 2))
    >>> bool((out == src).all())
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

#: Native voxels per slab (about 2 M: a 512x512 image times 8 slices).
SLAB_VOXELS = 1 << 21
#: Slabs on a GPU are this many times larger (fewer, larger kernels and copies).
GPU_SLAB_FACTOR = 8
#: Output values (channels x voxels) from which a CUDA device maps on the GPU; smaller
#: outputs (a 2D slice) map on the CPU, where the copies would cost more than they save.
GPU_MAPPING_MIN_VALUES = 1 << 22
#: Unsigned types with little CUDA support, sampled (exactly) as a wider signed type.
_GPU_SIGNED = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}


def mapping_device(device: str, n_values: int) -> str:
    """Where an output of ``n_values`` values is mapped: the CUDA ``device`` for outputs of
    at least :data:`GPU_MAPPING_MIN_VALUES` values, else ``cpu``."""
    from medres.inference.sliding import is_cuda

    return device if is_cuda(device) and n_values >= GPU_MAPPING_MIN_VALUES else "cpu"


def _slab_step(per_slice: int, device: str) -> int:
    """Slices per slab: :data:`SLAB_VOXELS` native voxels (times the GPU factor)."""
    voxels = SLAB_VOXELS * (GPU_SLAB_FACTOR if device != "cpu" else 1)
    return max(1, voxels // max(per_slice, 1))


def grid_mapping(
    source_affine: npt.ArrayLike, target_affine: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """4x4 matrix taking target voxel indices to (fractional) source voxel indices."""
    src = np.asarray(source_affine, dtype=np.float64)
    dst = np.asarray(target_affine, dtype=np.float64)
    mapping: npt.NDArray[np.float64] = np.linalg.inv(src) @ dst
    return mapping


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


def _separable(
    mapping: npt.NDArray[np.float64], ndim: int
) -> list[tuple[int, float, float]] | None:
    """Per target axis ``(source axis, scale, offset)`` when no axis mixes with another.

    Reorienting, resampling and cropping keep the scan's direction cosines (MONAI's
    ``Spacing`` does not rotate), so the mapping back is a signed permutation times a
    diagonal, even for oblique scans; then each axis can be interpolated on its own.
    """
    linear = mapping[:ndim, :ndim]
    tol = 1e-6 * max(float(np.abs(linear).max()), 1e-12)
    out: list[tuple[int, float, float]] = []
    used: set[int] = set()
    for target_axis in range(ndim):
        rows = np.flatnonzero(np.abs(linear[:, target_axis]) > tol)
        if len(rows) != 1 or int(rows[0]) in used:
            return None
        row = int(rows[0])
        if np.count_nonzero(np.abs(linear[row]) > tol) != 1:
            return None
        used.add(row)
        out.append((row, float(linear[row, target_axis]), float(mapping[row, 3])))
    return out


def _axis_plan(
    scale: float, offset: float, n_target: int, n_source: int, *, nearest: bool
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Indices into the zero-padded source axis (1 + index) and the linear weights."""
    coord = scale * np.arange(n_target, dtype=np.float64) + offset
    if nearest:
        index = np.rint(coord)
        inside = (index >= 0) & (index <= n_source - 1)
        padded = np.where(inside, index + 1, 0).astype(np.intp)
        return padded, padded, np.zeros(n_target, np.float32)
    coord = np.clip(coord, -1.0, float(n_source))
    low = np.floor(coord)
    weight = (coord - low).astype(np.float32)
    first = (low + 1).astype(np.intp)
    second = np.minimum(first + 1, n_source + 1)
    return first, second, weight


def _resample_separable(
    source: npt.NDArray[Any],
    axes_map: list[tuple[int, float, float]],
    out: npt.NDArray[Any],
    *,
    nearest: bool,
    integer: bool,
    device: str = "cpu",
) -> None:
    """Fill ``out`` axis by axis (gathers and linear blends), a slab of its first axis at
    a time; on a GPU, uint16/uint32 member bits are gathered as a wider signed type."""
    ndim = len(axes_map)
    # put the source axes in target order, with one zero voxel of padding on each side
    order = [0] + [source_axis + 1 for source_axis, _, _ in axes_map]
    work_dtype: Any = source.dtype if nearest else np.float32
    if device != "cpu":
        work_dtype = _GPU_SIGNED.get(np.dtype(work_dtype), work_dtype)
    padded = np.pad(
        np.transpose(source, order).astype(work_dtype, copy=False),
        [(0, 0)] + [(1, 1)] * ndim,
    )
    plans = [
        _axis_plan(scale, offset, out.shape[t + 1], source.shape[src + 1], nearest=nearest)
        for t, (src, scale, offset) in enumerate(axes_map)
    ]
    # slabs along the first axis: each output slab is one contiguous block of memory
    import torch

    from medres.inference.sliding import to_device

    tensor = to_device(torch.from_numpy(np.ascontiguousarray(padded)), device)
    torch_plans = [
        tuple(to_device(torch.from_numpy(part), device) for part in plan) for plan in plans
    ]
    first_len = out.shape[1]
    per_slice = int(np.prod(out.shape[2:]))
    step = _slab_step(per_slice, device)
    with torch.inference_mode():
        for start in range(0, first_len, step):
            stop = min(first_len, start + step)
            values = tensor
            for axis in range(ndim):  # the slab axis first: it shrinks the work most
                first, second, weight = torch_plans[axis]
                if axis == 0:
                    first, second, weight = (
                        first[start:stop],
                        second[start:stop],
                        weight[start:stop],
                    )
                if nearest:
                    values = values.index_select(axis + 1, first)
                    continue
                shape = [1] * (ndim + 1)
                shape[axis + 1] = len(weight)
                low = values.index_select(axis + 1, first)
                high = values.index_select(axis + 1, second)
                values = torch.lerp(low, high, weight.reshape(shape))
            if integer and not nearest:
                values = values.round()
            if out.dtype == np.float16:  # torch converts to half much faster than numpy
                values = values.to(torch.float16)
            out[:, start:stop] = values.cpu().numpy()


def _resample_general(
    source: npt.NDArray[Any],
    mapping: npt.NDArray[np.float64],
    out: npt.NDArray[Any],
    *,
    nearest: bool,
    integer: bool,
    device: str = "cpu",
) -> None:
    """Fill ``out`` by ``grid_sample`` at the mapped coordinates, a slab of its last axis
    at a time (any affine mapping, also one that mixes axes)."""
    import torch
    from torch.nn.functional import grid_sample

    ndim = source.ndim - 1
    target_shape = out.shape[1:]
    # large integers (member bits of > 24 members) lose bits in float32: sample in float64
    work = (
        torch.float64
        if source.dtype.itemsize >= 4 and not np.issubdtype(source.dtype, np.floating)
        else torch.float32
    )
    np_work = np.float64 if work == torch.float64 else np.float32
    linear = mapping[:ndim, :ndim].astype(np_work)
    offset = mapping[:ndim, 3].astype(np_work) + 1.0  # indices into the padded source
    # one zero voxel on each side: outside the source is 0 (also along a size-1 axis,
    # which align_corners=True would otherwise stretch over every coordinate)
    padded = np.pad(source, [(0, 0)] + [(1, 1)] * ndim)
    src_shape = padded.shape[1:]
    # grid_sample's normalised coordinates (align_corners=True): -1 .. 1 over the index range
    scale = np.array([2.0 / (s - 1) for s in src_shape], dtype=np_work)
    shift = np.full(ndim, -1.0, dtype=np_work)
    from medres.inference.sliding import to_device

    tensor = to_device(torch.from_numpy(np.ascontiguousarray(padded, dtype=np_work))[None], device)
    mode = "nearest" if nearest else ("bilinear")
    last = target_shape[-1]
    per_slice = int(np.prod(target_shape[:-1]))
    step = _slab_step(per_slice, device)
    axes = [torch.arange(n, dtype=work, device=device) for n in target_shape[:-1]]
    lin, offset_t, scale_t, shift_t = (
        to_device(torch.from_numpy(a), device) for a in (linear, offset, scale, shift)
    )
    with torch.inference_mode():
        for start in range(0, last, step):
            stop = min(last, start + step)
            slab = torch.arange(start, stop, dtype=work, device=device)
            grids = torch.meshgrid(*axes, slab, indexing="ij")
            index = torch.stack(grids, dim=-1)  # (*slab, ndim) target voxel indices
            src_index = _source_index(index, lin, on_cpu=device == "cpu") + offset_t
            normalised = src_index * scale_t + shift_t
            grid = normalised.flip(-1)[None]  # grid_sample wants (x=last axis, ..., first)
            sampled = grid_sample(
                tensor, grid, mode=mode, padding_mode="zeros", align_corners=True
            )[0]
            if device != "cpu" and out.dtype == np.float16:  # half the copy to the host
                sampled = sampled.to(torch.float16)
            values = sampled.cpu().numpy()
            if integer:
                values = np.rint(values)
            out[..., start:stop] = values


def _source_index(index: Any, lin: Any, *, on_cpu: bool) -> Any:
    """``index @ lin.T``: target voxel indices ``(..., ndim)`` -> source indices. Off the
    CPU as element-wise products (a float32 matrix product may run in TF32 on a GPU)."""
    if on_cpu:
        return index @ lin.T
    total = index[..., :1] * lin[:, 0]
    for j in range(1, lin.shape[1]):
        total = total + index[..., j : j + 1] * lin[:, j]
    return total


def resample_to_grid(
    source: npt.NDArray[Any],
    source_affine: npt.ArrayLike,
    target_affine: npt.ArrayLike,
    target_shape: Sequence[int],
    *,
    nearest: bool = False,
    dtype: npt.DTypeLike = np.float32,
    out: npt.NDArray[Any] | None = None,
    device: str = "cpu",
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
        device: ``cpu``, or a CUDA device to map large outputs on
            (:func:`mapping_device`); the GPU running out of memory falls back to the CPU.

    Returns:
        ``(K, *target_shape)`` array; 0 where the target lies outside the source grid.

    Raises:
        ValueError: ``source`` and ``target_shape`` are not both 2D or both 3D.
    """
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
    axes_map = _separable(mapping, ndim)

    def fill(on: str) -> None:
        if axes_map is not None:
            _resample_separable(source, axes_map, out, nearest=nearest, integer=integer, device=on)
        else:
            _resample_general(source, mapping, out, nearest=nearest, integer=integer, device=on)

    on = mapping_device(device, out.size)
    if on != "cpu":
        import torch

        from medres.inference.sliding import release_cuda_memory

        try:
            fill(on)
            return out
        except torch.cuda.OutOfMemoryError:
            pass  # below, once the traceback's tensors are released
        release_cuda_memory(on)
        logger.warning("GPU memory is short for mapping onto the scan grid: using the CPU")
    fill("cpu")
    return out


__all__ = [
    "GPU_MAPPING_MIN_VALUES",
    "GPU_SLAB_FACTOR",
    "SLAB_VOXELS",
    "grid_mapping",
    "mapping_device",
    "resample_to_grid",
]
