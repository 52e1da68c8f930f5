"""NIfTI-1/2 reading and writing with the affine preserved.

nibabel's ``affine`` is already voxel -> RAS+ mm, the medres convention, so reading keeps
it as is; writing stores it as both sform and qform (code 1, scanner) so every viewer
agrees. Files are written atomically and gzip output is byte-reproducible (no timestamp).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import NiftiError
from medres.io.atomic import write_bytes_atomic
from medres.io.volume import ScanKind, SourceInfo, Volume
from medres.types import AffineRAS

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    """True for ``.nii`` and ``.nii.gz`` file names (case-insensitive)."""
    name = Path(path).name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def read_nifti(path: str | Path, *, channel_axis_from: int = 3) -> Volume:
    """Read a NIfTI file into a :class:`Volume`.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        channel_axis_from: A 4th (and 5th) axis becomes the channel axis; 3D files get one
            channel. Files with fewer than 2 or more than 5 axes are refused.

    Returns:
        Volume with array ``(C, x, y, z)`` on the file's own grid. Integer data without
        scaling keeps its dtype; scaled data becomes float32.

    Raises:
        NiftiError: Unreadable, truncated or unsupported file (the message names it).

    Example:
        >>> vol = read_nifti("sample_data/ct_phantom.nii.gz")  # doctest: +SKIP
        >>> vol.spatial_shape  # doctest: +SKIP
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    try:
        img = nib.load(str(path))
    except FileNotFoundError as exc:
        raise NiftiError(f"{path}: file not found") from exc
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise NiftiError(f"{path}: not a readable NIfTI file: {exc}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"{path}: not a NIfTI image ({type(img).__name__})")
    try:
        slope, inter = img.dataobj.slope, img.dataobj.inter
        scaled = not (slope in (1.0, None) and inter in (0.0, None))
        data: npt.NDArray[Any] = np.asanyarray(img.dataobj)
        if scaled or data.dtype == np.float64:
            data = data.astype(np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise NiftiError(f"{path}: image data is truncated or corrupt: {exc}") from exc
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim < 3 or data.ndim > 5:
        raise NiftiError(f"{path}: {data.ndim}-dimensional data is not supported (3D or 4D)")
    if data.ndim == 5:
        data = data.reshape(*data.shape[:3], -1)
    array = np.moveaxis(data, channel_axis_from, 0) if data.ndim == 4 else data[None]
    array = np.ascontiguousarray(array)
    header = img.header
    desc = header.get("descrip", b"")
    description = desc.item().decode("latin-1", "replace").strip() if hasattr(desc, "item") else ""
    source = SourceInfo(
        kind=ScanKind.NIFTI,
        paths=(str(path),),
        series_description=nifti_stem(path),
        extra={"nifti_description": description} if description else {},
    )
    return Volume(array=array, affine=np.asarray(img.affine, dtype=np.float64), source=source)


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
