"""Siemens mosaic: one file whose pixel data tile a whole volume, untiled by nibabel.

This module owns :class:`MosaicGeometry` (the untiled grid and its affine, read from the
Siemens CSA header when the header is read) and the untiling of the pixels when the
volume is loaded. nibabel's ``MosaicWrapper`` does the layout work in both steps; every
value it returns is checked (finite, non-degenerate affine, shape within
:data:`~medres.limits.MAX_VOXELS`) before medres relies on it.

Index order: the untiled volume is ``(i=row in a tile, j=column in a tile, k=image)``,
the order nibabel returns; :attr:`MosaicGeometry.affine_lps` maps those indices to DICOM
patient coordinates (LPS, mm).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medres.errors import CorruptFileError, PixelDecodeError, UnsupportedDicomError
from medres.io.dicom.dataset import read_dataset
from medres.io.dicom.fields import _describe
from medres.io.dicom.pixels import _fix_bits
from medres.io.dicom.records import MosaicGeometry
from medres.limits import MAX_VOXELS

if TYPE_CHECKING:
    from pathlib import Path

    from medres.io.dicom.records import SliceHeader


def read_mosaic_geometry(ds: Any, path: Path) -> MosaicGeometry:
    """Shape and LPS affine of a Siemens mosaic, from its CSA header (nibabel's reader).

    Args:
        ds: The file's header data set (pixels not needed).
        path: The file, for messages.

    Raises:
        UnsupportedDicomError: No CSA header, or nibabel cannot read the layout.
        CorruptFileError: The layout gives an unusable shape or affine.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel.nicom warns on import that it is young
            from nibabel.nicom import dicomwrappers

            wrapper = dicomwrappers.wrapper_from_data(ds)
            if not isinstance(wrapper, dicomwrappers.MosaicWrapper):
                raise UnsupportedDicomError(
                    f"{path}: mosaic image without the Siemens CSA header needed to untile it"
                )
            shape = tuple(int(v) for v in wrapper.image_shape)
            affine_lps = np.asarray(wrapper.affine, dtype=np.float64)
    except UnsupportedDicomError:
        raise
    except Exception as exc:
        raise UnsupportedDicomError(
            f"{path}: cannot read the Siemens mosaic layout: {_describe(exc)}"
        ) from exc
    if (
        len(shape) != 3
        or min(shape) < 1
        or math.prod(shape) > MAX_VOXELS
        or affine_lps.shape != (4, 4)
        or not np.all(np.isfinite(affine_lps))
        or abs(float(np.linalg.det(affine_lps[:3, :3]))) < 1e-9
    ):
        raise CorruptFileError(
            f"{path}: the Siemens mosaic header gives an unusable shape {shape} or affine; "
            "the header is damaged, re-export the series"
        )
    rows = affine_lps.tolist()
    return MosaicGeometry(
        shape_ijk=(shape[0], shape[1], shape[2]),
        affine_lps=tuple((r[0], r[1], r[2], r[3]) for r in rows),
    )


def load_mosaic(s: SliceHeader, out_dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Untile a Siemens mosaic into ``(i, j, k)`` (nibabel's MosaicWrapper does the layout).

    nibabel applies RescaleSlope/Intercept itself; integer results still get the BitsStored
    mask and sign extension of :func:`~medres.io.dicom.pixels._fix_bits`.

    Raises:
        PixelDecodeError: nibabel cannot decode or untile the pixel data.
    """
    ds = read_dataset(s.path, headers_only=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nibabel.nicom import dicomwrappers

            wrapper = dicomwrappers.wrapper_from_data(ds)
            data = np.asarray(wrapper.get_data())
    except Exception as exc:
        raise PixelDecodeError(
            f"{s.path}: cannot decode the mosaic pixel data: {_describe(exc)}"
        ) from exc
    if data.dtype.kind in "iu":
        data = _fix_bits(data.astype(data.dtype.newbyteorder("=")), s)
    return data.astype(out_dtype, copy=False)
