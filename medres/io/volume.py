"""The :class:`Volume` type and the geometry helpers every stage shares.

Conventions (used throughout medres):

* ``Volume.array`` is channel-first, ``(C, x, y[, z])``. ``x`` is the column index of a
  DICOM/2D image (it runs along a row), ``y`` the row index, ``z`` the slice index, the
  index order of NIfTI, nibabel and MONAI.
* ``Volume.affine`` is a 4x4 float64 matrix mapping the voxel index ``(i, j, k, 1)`` to
  **RAS+** world millimetres (x to the patient's Right, y Anterior, z Superior). DICOM's
  patient coordinates are LPS; loaders negate x and y. 2D volumes keep a 4x4 affine whose
  third column is a unit step out of the image plane.
* ``Volume.spacing_mm`` has one entry per spatial axis and equals the column norms of the
  affine.

The geometry itself (voxel <-> world, voxel volume, same-grid checks, the single-slice
rule) belongs to :class:`medres.io.grid.Grid` and the functions ``voxel_to_world`` and
``world_to_voxel`` of :mod:`medres.io.grid`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.io.units import MM, LengthUnit
from medres.types import AffineRAS, ChannelImage

logger = logging.getLogger(__name__)

#: DICOM LPS <-> NIfTI RAS: negate the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ScanKind(str, Enum):
    """Where a scan came from. Accepts plain strings: ``ScanKind("nifti")``."""

    DICOM = "dicom"
    NIFTI = "nifti"
    IMAGE2D = "image2d"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SourceInfo:
    """Identifiers of the scan a volume came from, as later stages need them.

    Nothing here identifies the patient; patient fields live in :class:`PatientInfo` so a
    report can leave them out.

    Attributes:
        kind: DICOM series, NIfTI file or 2D image.
        paths: Source files, in slice order for DICOM (``paths[k]`` is slice ``k``).
        study_uid: DICOM StudyInstanceUID ("" when not DICOM).
        series_uid: DICOM SeriesInstanceUID ("" when not DICOM).
        frame_of_reference_uid: DICOM FrameOfReferenceUID ("" when absent).
        sop_instance_uids: One SOPInstanceUID per slice, in slice (``z``) order.
        sop_class_uid: SOPClassUID of the slices ("" when not DICOM).
        series_number: DICOM SeriesNumber (None when absent).
        series_description: DICOM SeriesDescription, or the file name for other formats.
        study_date: DICOM StudyDate ``YYYYMMDD`` ("" when absent).
        manufacturer: Scanner manufacturer ("" when absent).
        extra: Further acquisition fields (repetition time, slice thickness...), JSON-ready.
    """

    kind: ScanKind
    paths: tuple[str, ...] = ()
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    sop_class_uid: str = ""
    series_number: int | None = None
    series_description: str = ""
    study_date: str = ""
    manufacturer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PatientInfo:
    """Patient-identifying fields, kept apart so outputs can omit them (they do by default)."""

    name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True, eq=False)
class Volume:
    """An image on a physical grid: channel-first array + RAS affine + provenance.

    Attributes:
        array: ``(C, x, y[, z])`` pixel values. For CT, Hounsfield units (rescale applied).
        affine: 4x4 voxel ``(i, j, k)`` -> RAS+ mm matrix (see module docstring).
        modality: DICOM modality code (``CT``, ``MR``...) or ``""`` when unknown.
        source: Identifiers of the source scan.
        patient: Patient fields (never written to outputs unless asked for).
        channel_names: One name per channel (e.g. ``("flair", "t1c")`` or ``("R","G","B")``).
        warnings: What the loader had to assume or repair (a default pixel spacing, a
            normalised orientation vector...), one line each; they reach the scan's row in
            ``summary.csv`` and its report.
        length_unit: ``"mm"`` when the affine holds the physical voxel size; ``"px"`` for
            a 2D image file without a known pixel size, whose affine then steps one unit
            per pixel and whose sizes are reported in pixels (:mod:`medres.io.units`).

    Example:
        >>> import numpy as np
        >>> v = Volume(np.zeros((1, 4, 3, 2), np.int16), np.diag([2.0, 1.0, 3.0, 1.0]))
        >>> v.spatial_shape, v.spacing_mm
        ((4, 3, 2), (2.0, 1.0, 3.0))
    """

    array: ChannelImage
    affine: AffineRAS
    modality: str = ""
    source: SourceInfo = field(default_factory=lambda: SourceInfo(kind=ScanKind.NIFTI))
    patient: PatientInfo = field(default_factory=PatientInfo)
    channel_names: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    length_unit: LengthUnit = MM

    def __post_init__(self) -> None:
        if self.array.ndim not in (3, 4):
            raise ValueError(
                f"Volume.array must be channel-first (C, x, y[, z]); got shape {self.array.shape}"
            )
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4; got {affine.shape}")
        object.__setattr__(self, "affine", affine)
        if self.channel_names and len(self.channel_names) != self.array.shape[0]:
            raise ValueError(
                f"{len(self.channel_names)} channel names for {self.array.shape[0]} channels"
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis: ``(x, y[, z])``."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def spatial_ndim(self) -> int:
        """2 for images, 3 for volumes."""
        return self.array.ndim - 1

    @property
    def n_channels(self) -> int:
        """Number of channels (first array axis)."""
        return int(self.array.shape[0])

    @property
    def spacing_mm(self) -> tuple[float, ...]:
        """Voxel size along each spatial index axis, in mm (norms of the affine columns)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(s) for s in norms[: self.spatial_ndim])

    @property
    def orientation(self) -> str:
        """Axis codes of the index axes in RAS terms, e.g. ``"LPS"`` or ``"RAS"``."""
        return orientation_codes(self.affine)[: max(self.spatial_ndim, 3)]

    def with_array(self, array: npt.NDArray[Any]) -> Volume:
        """A copy on the same grid with other pixel values (same spatial shape required)."""
        if tuple(array.shape[1:]) != self.spatial_shape:
            raise ValueError(
                f"array spatial shape {array.shape[1:]} differs from {self.spatial_shape}"
            )
        return replace(self, array=array, channel_names=())


def patient_orientation(volume: Volume) -> str:
    """The axis codes of a scan placed in a patient (:attr:`Volume.orientation`), or ``""``
    for a 2D image file, which has no patient geometry."""
    return "" if volume.source.kind is ScanKind.IMAGE2D else volume.orientation


def orientation_codes(affine: AffineRAS) -> str:
    """Letters telling where each index axis points in RAS+ world space.

    Args:
        affine: 4x4 voxel -> RAS+ mm matrix.

    Returns:
        Three letters, e.g. ``"LPS"`` for a DICOM-ordered axial stack (i toward Left,
        j toward Posterior, k toward Superior).

    Example:
        >>> orientation_codes(np.diag([-1.0, -1.0, 1.0, 1.0]))
        'LPS'
    """
    import nibabel.orientations as nio

    codes = nio.aff2axcodes(np.asarray(affine, dtype=np.float64))
    return "".join(c if c is not None else "?" for c in codes)


def affine_from_dicom(
    *,
    image_position_lps: npt.ArrayLike,
    row_direction_lps: npt.ArrayLike,
    column_direction_lps: npt.ArrayLike,
    pixel_spacing_mm: tuple[float, float],
    slice_step_lps: npt.ArrayLike,
) -> AffineRAS:
    """Build the RAS+ affine of a DICOM slice stack indexed ``(x=column, y=row, z=slice)``.

    Args:
        image_position_lps: ImagePositionPatient of slice 0 (centre of its first pixel), LPS mm.
        row_direction_lps: First triplet of ImageOrientationPatient: direction in which the
            column index grows (along a row).
        column_direction_lps: Second triplet: direction in which the row index grows.
        pixel_spacing_mm: DICOM PixelSpacing ``(between rows, between columns)``.
        slice_step_lps: Vector from slice ``k`` to slice ``k+1`` in LPS mm.

    Returns:
        4x4 float64 voxel -> RAS+ mm affine.
    """
    row_spacing, col_spacing = pixel_spacing_mm
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_direction_lps, dtype=np.float64) * col_spacing
    lps[:3, 1] = np.asarray(column_direction_lps, dtype=np.float64) * row_spacing
    lps[:3, 2] = np.asarray(slice_step_lps, dtype=np.float64)
    lps[:3, 3] = np.asarray(image_position_lps, dtype=np.float64)
    ras: AffineRAS = LPS_TO_RAS @ lps
    return ras
