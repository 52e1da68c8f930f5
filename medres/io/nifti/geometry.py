"""The affine of a NIfTI header, as nibabel chooses it, refused unless plausible.

sform when ``sform_code`` > 0, else qform when ``qform_code`` > 0, else the pixdim-only
Analyze default; the result maps ``(x, y, z)`` voxel indices to RAS+ mm. It must be
finite, non-degenerate, with voxel sizes and an origin in physical ranges.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

from medres.errors import NiftiError
from medres.io.nifti.header import _Header, _Layout

#: Smallest and largest voxel size (mm) accepted from pixdim or from an affine column.
MIN_VOXEL_MM = 1e-3
MAX_VOXEL_MM = 1e4
#: Largest distance (mm) of the affine's origin from the scanner origin (1 km).
MAX_ORIGIN_MM = 1e6
#: Smallest ``|det(A)| / (|a1| |a2| |a3|)`` of the affine's 3x3 ``A`` (1 for orthogonal axes,
#: cos(shear) for sheared grids, 0 when two axes are parallel).
MIN_AXIS_INDEPENDENCE = 1e-3
#: NIfTI xyzt_units spatial codes that are not millimetres.
_OTHER_UNITS = {1: "metres", 3: "micrometres"}


def _header_affine(
    header: _Header, layout: _Layout, path: Path, notes: list[str]
) -> npt.NDArray[np.float64]:
    """The affine nibabel would choose, refused unless finite, non-degenerate and plausible."""
    pixdim = [float(v) for v in header.field("pixdim")]
    n_spatial = min(len(layout.shape), 3)
    for axis in range(1, n_spatial + 1):
        size = pixdim[axis]
        if not MIN_VOXEL_MM <= size <= MAX_VOXEL_MM:  # also False for NaN
            raise NiftiError(
                f"{path}: pixdim[{axis}] (voxel size along {'xyz'[axis - 1]}) is {size:g}; "
                f"voxel sizes must be finite and within {MIN_VOXEL_MM:g}..{MAX_VOXEL_MM:g} mm: "
                "fix the header (nibabel: header.set_zooms) or re-export"
            )
    for axis in range(n_spatial + 1, 4):
        if not MIN_VOXEL_MM <= pixdim[axis] <= MAX_VOXEL_MM:
            notes.append(
                f"pixdim[{axis}] of the missing {'xyz'[axis - 1]} axis is "
                f"{pixdim[axis]:g}; assumed 1 mm"
            )
            pixdim[axis] = 1.0
    sform_code, qform_code = header.integer("sform_code"), header.integer("qform_code")
    affine = np.eye(4)
    if sform_code != 0:
        source = "sform (srow_x, srow_y, srow_z)"
        for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
            values = np.asarray(header.field(name), dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise NiftiError(
                    f"{path}: sform field {name} is {values.tolist()}, not finite: fix the "
                    "header (or set sform_code 0 to use the qform) or re-export"
                )
            affine[row] = values
        if not 0 < sform_code <= 5:
            notes.append(f"sform_code {sform_code} is not a NIfTI code; used the sform")
    elif qform_code != 0:
        source = "qform (quatern_b/c/d, qoffset_x/y/z, pixdim)"
        affine = _qform(header, pixdim, path, notes)
        if not 0 < qform_code <= 5:
            notes.append(f"qform_code {qform_code} is not a NIfTI code; used the qform")
    else:
        from nibabel.volumeutils import shape_zoom_affine

        source = "pixdim (qform_code and sform_code are 0)"
        with np.errstate(all="ignore"):
            affine = np.asarray(
                shape_zoom_affine(layout.spatial, pixdim[1:4], True), dtype=np.float64
            )
        notes.append(
            "qform_code and sform_code are 0: the file stores no orientation; assumed "
            "nibabel's default (x flipped, origin at the image centre)"
        )
    _check_affine(affine, source, path)
    units = header.integer("xyzt_units") & 0x07
    if units in _OTHER_UNITS:
        notes.append(
            f"xyzt_units says {_OTHER_UNITS[units]}; the affine is read as millimetres, as "
            "nibabel does"
        )
    return affine


def _qform(
    header: _Header, pixdim: list[float], path: Path, notes: list[str]
) -> npt.NDArray[np.float64]:
    """Affine from the qform fields, as NIfTI's reference library builds it."""
    names = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
    values = {name: header.number(name) for name in names}
    for name, value in values.items():
        if not math.isfinite(value):
            raise NiftiError(
                f"{path}: qform field {name} is {value:g}, not finite: fix the header (or set "
                "qform_code 0) or re-export"
            )
    b, c, d = values["quatern_b"], values["quatern_c"], values["quatern_d"]
    norm2 = b * b + c * c + d * d
    if norm2 > 1.0 + 1e-4:
        raise NiftiError(
            f"{path}: qform quaternion (quatern_b, quatern_c, quatern_d) = ({b:g}, {c:g}, "
            f"{d:g}) has b²+c²+d² = {norm2:.4g} > 1, not a rotation: fix the header or re-export"
        )
    if norm2 > 1.0:  # rounding: renormalise as nifti1_io does
        scale = 1.0 / math.sqrt(norm2)
        b, c, d, a = b * scale, c * scale, d * scale, 0.0
    else:
        a = math.sqrt(1.0 - norm2)
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    qfac = pixdim[0]
    if qfac not in (1.0, -1.0):
        notes.append(
            f"pixdim[0] (qfac) is {qfac:g}, not 1 or -1; read as {-1 if qfac < 0 else 1} as "
            "the NIfTI reference library does"
        )
        qfac = -1.0 if qfac < 0 else 1.0
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([pixdim[1], pixdim[2], pixdim[3] * qfac])
    affine[:3, 3] = [values["qoffset_x"], values["qoffset_y"], values["qoffset_z"]]
    return affine


def _check_affine(affine: npt.NDArray[np.float64], source: str, path: Path) -> None:
    """Refuse a non-finite, degenerate or implausible affine (voxel sizes, origin).

    Raises:
        NiftiError: Naming ``source`` (which header fields the affine came from).
    """
    if not np.all(np.isfinite(affine)):
        raise NiftiError(f"{path}: the {source} holds non-finite values: fix the header")
    with np.errstate(all="ignore"):
        norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        for axis, size in enumerate(norms):
            if not MIN_VOXEL_MM <= size <= MAX_VOXEL_MM:
                raise NiftiError(
                    f"{path}: the {source} gives a voxel size of {size:g} mm along "
                    f"{'xyz'[axis]}; voxel sizes must be within {MIN_VOXEL_MM:g}..{MAX_VOXEL_MM:g}"
                    " mm: fix the header or re-export"
                )
        independence = abs(float(np.linalg.det(affine[:3, :3]))) / float(np.prod(norms))
    if not independence >= MIN_AXIS_INDEPENDENCE:
        raise NiftiError(
            f"{path}: the {source} is degenerate (|det| / product of voxel sizes = "
            f"{independence:.2g}): two voxel axes are (nearly) parallel; fix the header"
        )
    origin = float(np.abs(affine[:3, 3]).max())
    if origin > MAX_ORIGIN_MM:
        raise NiftiError(
            f"{path}: the {source} puts the first voxel {origin:g} mm from the origin, beyond "
            f"the {MAX_ORIGIN_MM:g} mm medres accepts: fix the header"
        )
