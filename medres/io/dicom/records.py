"""The typed records a DICOM series passes through: one slice's header, one volume's plan,
and a Siemens mosaic's untiled geometry (:class:`MosaicGeometry`).

:class:`SliceHeader` is what :mod:`medres.io.dicom.headers` reads from one file (or one
frame); :class:`SeriesPlan` is what :mod:`medres.io.dicom.plan` makes of the slices of one
volume, before any pixel is decoded. Positions and directions are DICOM patient
coordinates (LPS, mm); the plan's affine maps ``(x=column, y=row, z=slice)`` indices to
RAS+ mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medres.io.dicom.fields import ORIENTATION_TOL
from medres.io.volume import LPS_TO_RAS, PatientInfo
from medres.types import AffineRAS


@dataclass(frozen=True)
class MosaicGeometry:
    """The untiled grid of a Siemens mosaic and where it lies in the patient.

    Attributes:
        shape_ijk: ``(rows of a tile, columns of a tile, number of images)``, the shape of
            the untiled volume in nibabel's index order ``(i, j, k)``.
        affine_lps: 4 x 4 matrix (rows of 4 floats) mapping ``(i, j, k, 1)`` to DICOM
            patient coordinates (LPS, mm).

    Example:
        >>> g = MosaicGeometry(shape_ijk=(64, 64, 35), affine_lps=((3.0, 0, 0, 0),
        ...     (0, 3.0, 0, 0), (0, 0, 3.6, 0), (0, 0, 0, 1.0)))
        >>> g.n_images
        35
    """

    shape_ijk: tuple[int, int, int]
    affine_lps: tuple[tuple[float, float, float, float], ...]

    @property
    def n_images(self) -> int:
        """How many images (slices) the mosaic tiles."""
        return self.shape_ijk[2]

    def affine_ras(self) -> AffineRAS:
        """The affine mapping ``(i, j, k)`` indices to RAS+ mm."""
        ras: AffineRAS = LPS_TO_RAS @ np.asarray(self.affine_lps, dtype=np.float64)
        return ras

    def as_json(self) -> dict[str, Any]:
        """The JSON-ready record kept in ``SliceHeader.extra["mosaic"]`` for sidecars."""
        return {
            "shape": self.shape_ijk,
            "affine_lps": [list(row) for row in self.affine_lps],
            "n_images": self.n_images,
        }


@dataclass(frozen=True)
class SliceHeader:
    """Header facts of one slice (one file, or one frame of a multi-frame file).

    Positions and directions are DICOM patient coordinates (LPS, mm). ``warnings`` lists
    what reading the header had to assume (a default pixel spacing...).
    """

    path: str
    frame: int | None
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    modality: str
    instance_number: int | None
    position_lps: tuple[float, float, float] | None
    orientation_lps: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    rescale_slope: float
    rescale_intercept: float
    has_modality_lut: bool
    number_of_frames: int
    split_keys: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    series_number: int | None = None
    series_description: str = ""
    study_date: str = ""
    manufacturer: str = ""
    patient: PatientInfo = field(default_factory=PatientInfo, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    #: The tile layout and affine of a Siemens mosaic (one file holding a whole volume);
    #: None for every other image. ``extra["mosaic"]`` is its JSON copy for the sidecar.
    mosaic: MosaicGeometry | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """Short human name of this slice for error messages."""
        name = Path(self.path).name
        if self.frame is not None:
            name += f" frame {self.frame + 1}"
        if self.instance_number is not None:
            name += f" (instance {self.instance_number})"
        return name

    @property
    def geometry_key(self) -> tuple[Any, ...]:
        """Facts that must agree for slices to stack into one volume."""
        orient = (
            tuple(round(v / ORIENTATION_TOL) for v in self.orientation_lps)
            if self.orientation_lps
            else None
        )
        spacing = (
            tuple(round(v, 3) for v in self.pixel_spacing_mm) if self.pixel_spacing_mm else None
        )
        return (
            self.rows,
            self.columns,
            self.samples_per_pixel,
            self.bits_allocated,
            self.pixel_representation,
            self.photometric,
            orient,
            spacing,
        )


@dataclass(frozen=True)
class SeriesPlan:
    """Sorted, checked slices of one volume and the affine they imply (headers only).

    ``warnings`` lists the values that had to be assumed (a default pixel spacing...);
    the loaded :class:`Volume` repeats them.
    """

    slices: tuple[SliceHeader, ...]
    affine: AffineRAS
    spatial_shape: tuple[int, ...]
    output_dtype: np.dtype[Any]
    samples_per_pixel: int
    gantry_tilt_deg: float = 0.0
    has_geometry: bool = True
    warnings: tuple[str, ...] = ()

    @property
    def first(self) -> SliceHeader:
        """The first slice (lowest position along the slice normal)."""
        return self.slices[0]
