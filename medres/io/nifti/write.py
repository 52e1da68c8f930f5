"""Writing NIfTI-1: the affine as sform and qform, atomic files, reproducible gzip.

The affine is stored as both sform and qform (code 1, scanner) so every viewer agrees;
gzip output carries no timestamp, so the same input gives the same bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import NiftiError
from medres.io.atomic import write_bytes_atomic
from medres.io.nifti.names import is_nifti_path
from medres.io.volume import Volume
from medres.types import AffineRAS


def nifti_bytes(
    array: npt.NDArray[Any],
    affine: AffineRAS,
    *,
    compress: bool = True,
    scale: float | None = None,
) -> bytes:
    """Serialise a spatial ``(x, y[, z][, t])`` array and its RAS affine to NIfTI-1 bytes.

    gzip output carries no timestamp, so the same input gives the same bytes.

    Args:
        array: Values to store, in the dtype to store them in.
        affine: 4x4 voxel -> RAS mm.
        compress: gzip the bytes.
        scale: NIfTI ``scl_slope``: readers see ``stored * scale`` (e.g. uint8 with
            ``1/255`` stores probabilities in one byte per voxel).
    """
    import nibabel as nib

    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if scale is not None:
        img.header.set_slope_inter(scale, 0.0)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def write_nifti(
    path: str | Path,
    volume_or_array: Volume | npt.NDArray[Any],
    affine: AffineRAS | None = None,
) -> Path:
    """Write a volume (or a spatial array + affine) as NIfTI, atomically.

    Single-channel volumes are written 3D; several channels become the 4th axis.

    Args:
        path: Destination ending in ``.nii`` or ``.nii.gz``.
        volume_or_array: A :class:`Volume`, or a spatial array ``(x, y, z)``.
        affine: Required with an array; must not be given with a Volume.

    Returns:
        The written path.

    Raises:
        NiftiError: Bad arguments. OutputError: The file cannot be written.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise NiftiError(f"{path}: NIfTI output must end in .nii or .nii.gz")
    if isinstance(volume_or_array, Volume):
        if affine is not None:
            raise NiftiError("pass either a Volume or an array with an affine, not both")
        vol = volume_or_array
        if vol.n_channels == 1:
            data = vol.array[0]
        else:  # channels on the 4th axis; a 2D image gets a unit z axis first
            spatial = vol.array if vol.spatial_ndim == 3 else vol.array[..., None]
            data = np.moveaxis(spatial, 0, -1)
        aff = vol.affine
    else:
        if affine is None:
            raise NiftiError(f"{path}: an affine is needed to write an array")
        data, aff = volume_or_array, affine
    compress = path.name.lower().endswith(".gz")
    return write_bytes_atomic(path, nifti_bytes(np.asarray(data), aff, compress=compress))
