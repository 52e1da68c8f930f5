"""Streaming NIfTI image data into one ``(C, x, y, z)`` array, chunk by chunk.

The data are read in file order (x fastest) in pieces of a few MiB straight into the
output array, scaled to float32 where the header asks for it, and non-finite values are
counted; no second full copy is made.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import NiftiError
from medres.io.nifti.header import _human_bytes, _Layout


def _readinto_full(stream: io.BufferedIOBase, view: memoryview) -> int:
    """Fill ``view`` from ``stream``; returns the bytes read (fewer only at its end)."""
    done = 0
    total = len(view)
    while done < total:
        n = stream.readinto(view[done:])
        if not n:
            break
        done += n
    return done


def _skip(stream: io.BufferedIOBase, n_bytes: int, path: Path, layout: _Layout) -> None:
    """Read past the header extensions up to ``vox_offset``."""
    while n_bytes > 0:
        part = stream.read(min(n_bytes, 1 << 20))
        if not part:
            raise NiftiError(
                f"{path}: truncated: the file ends before vox_offset {layout.offset}, where the "
                "image data should start; re-export or re-download the file"
            )
        n_bytes -= len(part)


def _blocks(shape: tuple[int, int, int], per_chunk: int) -> Iterator[tuple[slice, slice, slice]]:
    """Consecutive file-order pieces of one volume as ``(x, y, z)`` slices of its grid.

    NIfTI stores x fastest, then y, then z; a piece is whole slices, whole rows of one
    slice, or part of one row, of at most ``per_chunk`` voxels.
    """
    nx, ny, nz = shape
    everything = slice(None)
    if nx * ny <= per_chunk:
        step = per_chunk // (nx * ny)
        for z in range(0, nz, step):
            yield everything, everything, slice(z, min(z + step, nz))
    elif nx <= per_chunk:
        step = per_chunk // nx
        for z in range(nz):
            for y in range(0, ny, step):
                yield everything, slice(y, min(y + step, ny)), slice(z, z + 1)
    else:
        for z in range(nz):
            for y in range(ny):
                for x in range(0, nx, per_chunk):
                    yield slice(x, min(x + per_chunk, nx)), slice(y, y + 1), slice(z, z + 1)


def _read_data(
    stream: io.BufferedIOBase, layout: _Layout, path: Path, *, chunk_bytes: int
) -> tuple[npt.NDArray[Any], int]:
    """Stream the image data into one ``(C, x, y, z)`` array; also count non-finite values.

    ``chunk_bytes`` is the size of the pieces read at a time (see :func:`_blocks`).
    """
    item = layout.file_dtype.itemsize * layout.components
    per_chunk = max(1, min(chunk_bytes // item, layout.n_voxels))
    buffer = np.empty(per_chunk * item, dtype=np.uint8)
    view = buffer.data
    scratch = np.empty(per_chunk, np.float32) if layout.out_dtype.kind == "f" else None
    out = np.empty((layout.n_channels, *layout.spatial), dtype=layout.out_dtype)
    n_bad = 0
    n_read = 0
    width = min(layout.components, 3)
    for volume in range(layout.n_t * layout.n_u):
        t, u = volume % layout.n_t, volume // layout.n_t
        channel = (t * layout.n_u + u) * width  # a 5th axis follows the 4th, as numpy reshape
        for xs, ys, zs in _blocks(layout.spatial, per_chunk):
            dest = out[channel : channel + width, xs, ys, zs]
            block = dest.shape[1:]
            count = block[0] * block[1] * block[2]
            got = _readinto_full(stream, view[: count * item])
            n_read += got
            if got < count * item:
                raise NiftiError(
                    f"{path}: truncated: the image data end after {_human_bytes(n_read)} of the "
                    f"{_human_bytes(layout.data_bytes)} the header declares ({layout.description});"
                    " re-export or re-download the file"
                )
            raw = buffer[: count * item].view(layout.file_dtype)
            if layout.components > 1:
                voxels = raw.reshape(block[2], block[1], block[0], layout.components)
                dest[...] = voxels[..., :width].transpose(3, 2, 1, 0)
                continue
            values: npt.NDArray[Any] = raw
            if scratch is not None and (layout.slope is not None or raw.dtype != scratch.dtype):
                values = scratch[:count]
                with np.errstate(all="ignore"):
                    if layout.slope is None:
                        np.copyto(values, raw, casting="unsafe")
                    else:
                        np.multiply(raw, layout.slope, out=values, casting="unsafe")
                        if layout.inter:
                            values += np.float32(layout.inter)
            if layout.check_finite:
                n_bad += count - int(np.count_nonzero(np.isfinite(values)))
            dest[0] = values.reshape(block[2], block[1], block[0]).T
    return out, n_bad


def _non_finite_message(n_bad: int, n_total: int, layout: _Layout) -> str:
    """The message for ``n_bad`` NaN/infinite voxels of ``n_total``, naming the likely cause."""
    share = 100.0 * n_bad / n_total
    percent = f"{share:.1f}" if share >= 0.1 else f"{share:.2g}"
    cause = ""
    if layout.slope is not None:
        cause = f" after scaling (scl_slope {layout.slope:g}, scl_inter {layout.inter:g})"
    elif layout.file_dtype.kind == "f" and layout.file_dtype.itemsize == 8:
        cause = " (float64 values beyond the float32 range count as infinite)"
    return (
        f"{n_bad} of {n_total} voxels ({percent} %) are NaN or infinite{cause}; medres needs "
        "finite intensities: replace them (e.g. numpy.nan_to_num) and retry"
    )
