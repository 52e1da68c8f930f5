"""The typed records of a prediction folder, each with one read and one write.

* :class:`ScanRecord`: ``OUT/<scan_id>/lesions.json``: the scan's source, grid, models,
  lesions (:class:`Lesion`), timings, notes and, once every output is written,
  ``complete`` with the size of each output (what ``--resume`` trusts).
* :class:`MemberLesionsRecord`: ``members/<member>/lesions.json``: one member's lesions.
* :class:`RunRecord`: ``OUT/run.json``: versions, options, the models
  (:class:`ModelProvenance`, with the resolved pipelines), one :class:`ScanResult` per scan
  and the files left out.
* :class:`ScanResult`: one row of ``OUT/summary.csv`` (:func:`write_summary`,
  :func:`read_summary`).

The run's records live in :mod:`~medres.predictions.run_records` and are re-exported here,
so ``from medres.predictions.records import X`` finds every record.

Coordinates: ``*_ijk`` are voxel indices in the array order ``(x, y[, z])`` of the scan's
own grid; ``*_ras_mm`` are RAS+ millimetres; ``GridRecord.affine`` maps the first to the
second. Unknown keys in files written by other medres versions are ignored; a file that
does not validate raises :class:`~medres.errors.OutputError` naming it.

Example:
    >>> lesion = Lesion(lesion_id=1, label="tumour", voxel_count=8, volume_ml=0.008,
    ...     area_mm2=None, center_ijk=(1.5, 1.5, 1.5), center_ras_mm=(1.5, 1.5, 1.5),
    ...     bbox_ijk=((1, 2), (1, 2), (1, 2)), longest_axial_diameter_mm=2.0, axial_slice=1,
    ...     mean_probability=0.9, max_probability=0.95, members_detecting=3, n_members=3,
    ...     uncertainty=0.01)
    >>> lesion.size_mm3
    8.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from medres.io.atomic import write_text_atomic
from medres.io.grid import Grid
from medres.io.units import MM, LengthUnit
from medres.predictions._base import MeasuredRecord, Record, compact_json, read_json_record
from medres.predictions.layout import MemberFolder, ScanFolder
from medres.predictions.run_records import (
    SUMMARY_COLUMNS,
    FolderProvenance,
    InputKindRecord,
    MemberProvenance,
    ModelProvenance,
    RunRecord,
    RunScanEntry,
    ScanResult,
    ScanStatus,
    SkippedRecord,
    read_summary,
    write_summary,
)


class Lesion(Record):
    """One connected lesion of a label map, as found and as stored.

    :func:`~medres.inference.lesions.find_lesions` builds it; ``lesions.json`` stores it
    as it is, and the report, the DICOM SR and ``medres evaluate`` read it back.

    Attributes:
        lesion_id: 1-based, ordered by decreasing size.
        label: Label name (e.g. ``tumour``).
        voxel_count: Voxels (pixels in 2D) in the component.
        volume_ml: Volume in millilitres (3D maps; ``None`` for 2D).
        area_mm2: Area in mm^2 (2D maps; ``None`` for 3D).
        center_ijk: Mean voxel index ``(i, j[, k])``.
        center_ras_mm: Centre in RAS millimetres.
        bbox_ijk: Inclusive ``(first, last)`` voxel index per axis.
        longest_axial_diameter_mm: Longest in-plane extent over the lesion's axial slices.
        axial_slice: Voxel index (along the slice axis) where that diameter lies (3D).
        mean_probability: Mean ensemble probability of the label over the lesion.
        max_probability: Maximum of it: the detection score.
        members_detecting: Members whose own prediction overlaps the lesion.
        n_members: Members in the ensemble.
        uncertainty: Mean over the lesion of the members' probability standard deviation
            (0 when all members agree; ``None`` without member probabilities).
        detection_score: When a detector predicted the same scan: the score of the box
            matching this lesion (``detections.json``), else ``None``.
        detection_box_id: That box's ``box_id``.
    """

    lesion_id: int
    label: str
    voxel_count: int
    volume_ml: float | None
    area_mm2: float | None
    center_ijk: tuple[float, ...]
    center_ras_mm: tuple[float, float, float]
    bbox_ijk: tuple[tuple[int, int], ...]
    longest_axial_diameter_mm: float
    axial_slice: int | None
    mean_probability: float | None
    max_probability: float | None
    members_detecting: int | None
    n_members: int | None
    uncertainty: float | None
    detection_score: float | None = None
    detection_box_id: int | None = None

    @property
    def corner_box(self) -> list[float]:
        """``bbox_ijk`` as a voxel-corner box ``[first..., last + 1...]`` (MONAI's
        detection convention, as ``detections.json``'s ``box_ijk``)."""
        return [float(a) for a, _ in self.bbox_ijk] + [float(b) + 1.0 for _, b in self.bbox_ijk]

    @property
    def size_mm3(self) -> float | None:
        """Volume in mm^3 (3D lesions), else ``None``."""
        return None if self.volume_ml is None else self.volume_ml * 1000.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists), as ``lesions.json`` stores it."""
        return self.model_dump(mode="json")


class SourceRecord(Record):
    """Where the scan came from, and how to find it again.

    Attributes:
        kind: ``dicom``, ``nifti`` or ``image2d``.
        name: The source relative to the run's input folder (the first file, or the
            series / case folder), as predict named it.
        key: Identity of the source: a hash of every source file's relative path (and the
            DICOM series UID and part); ``medres report`` finds the scan again by it.
        state: A hash of every source file's path, size and modification time: differs
            when a source file changed after predict read it.
        files: The first four source files (relative), then ``"... N more"``.
        n_files: How many source files.
        grouped_by: How channel files were stacked (``""`` for a single scan).
        modality, series_uid, study_uid, frame_of_reference_uid: DICOM identifiers
            (empty for other formats).
        description: SeriesDescription or file name (sanitised).
    """

    kind: str
    name: str = ""
    key: str = ""
    state: str = ""
    files: list[str]
    n_files: int
    grouped_by: str = ""
    modality: str = ""
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    description: str = ""


class GridRecord(Record):
    """The scan's own grid, which ``seg.nii.gz`` and every map share.

    Attributes:
        shape: Spatial shape ``(x, y[, z])``.
        spacing_mm: Voxel size per axis (norms of the affine's columns); 1 per pixel for
            an image measured in pixels.
        orientation: RAS axis codes (``LPS``...); ``""`` for a 2D image file.
        affine: 4x4 voxel ``(i, j, k)`` -> RAS+ mm (pixels for an image without a size).
        length_unit: ``mm``, or ``px`` when the image gave no pixel size: then every size
            of the scan's record is in pixels and its JSON keys say so (``area_px2``).
    """

    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    orientation: str
    affine: tuple[tuple[float, float, float, float], ...]
    length_unit: LengthUnit = MM

    @model_validator(mode="after")
    def _a_real_grid(self) -> GridRecord:
        Grid(self.shape, self.affine_ras)  # shape and affine describe a usable grid
        return self

    @property
    def affine_ras(self) -> npt.NDArray[np.float64]:
        """The affine as a 4x4 float64 array."""
        return np.asarray(self.affine, dtype=np.float64)

    @property
    def grid(self) -> Grid:
        """The recorded grid as a :class:`~medres.io.grid.Grid` (voxel measure, mapping)."""
        return Grid(self.shape, self.affine_ras)


class EnsembleRecord(Record):
    """Which models predicted the scan and how they were combined."""

    pipelines: list[str]
    members: list[str]
    mode: str
    tta: list[bool]


class ScanRecord(MeasuredRecord):
    """``OUT/<scan_id>/lesions.json``.

    Attributes:
        medres_version: The medres that wrote it.
        scan_id: The scan (its folder's name).
        fingerprint: What makes two predictions the same (models, options, source files);
            ``--resume`` compares it.
        source, grid, ensemble: See the record types.
        labels: Label names of the models, background first.
        lesion_labels: The labels split into lesions.
        n_lesions: How many lesions.
        total_volume_ml: Sum of lesion volumes (3D; ``None`` for 2D).
        total_area_mm2: Sum of lesion areas (2D; ``None`` for 3D).
        lesions: Ordered by decreasing size (ids 1..N).
        n_detections: Boxes of a detector ensemble at or above its report score
            (``detections.json``), or ``None`` when no detector predicted the scan.
        seconds: Wall seconds per stage.
        notes: What the reader of this scan must know (assumed spacing, grouping...).
        complete: Every output below is written (the report included).
        outputs: Each output relative to the scan folder -> size in bytes.
    """

    medres_version: str
    scan_id: str
    fingerprint: str
    source: SourceRecord
    grid: GridRecord
    ensemble: EnsembleRecord
    labels: list[str]
    lesion_labels: list[str]
    n_lesions: int
    total_volume_ml: float | None
    total_area_mm2: float | None
    lesions: list[Lesion]
    n_detections: int | None = None
    seconds: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    complete: bool = False
    outputs: dict[str, int] = Field(default_factory=dict)

    @property
    def length_unit(self) -> LengthUnit:
        """``mm``, or ``px`` for an image measured in pixels (:mod:`medres.io.units`)."""
        return self.grid.length_unit

    def unit(self) -> str:
        """The unit ``lesions.json`` names its sizes in: the scan's."""
        return self.length_unit

    @classmethod
    def read(cls, folder: ScanFolder) -> ScanRecord:
        """Read and validate ``lesions.json``.

        Raises:
            OutputError: Missing, unreadable or not a scan record.
        """
        record: ScanRecord = read_json_record(folder.lesions_json, cls, "scan record")
        return record

    def write(self, folder: ScanFolder) -> Path:
        """Write ``lesions.json`` atomically."""
        return write_text_atomic(folder.lesions_json, compact_json(self.to_json()))

    @property
    def segmented(self) -> bool:
        """A segmentation model predicted the scan (``seg.nii.gz``); False when only a
        detector did (its ensemble mode is ``box fusion``)."""
        from medres.predictions.detections import BOX_FUSION

        return self.ensemble.mode != BOX_FUSION

    @property
    def three_d(self) -> bool:
        """The scan's grid is 3D (lesions measured in ml)."""
        return len(self.grid.shape) == 3


class MemberLesionsRecord(MeasuredRecord):
    """``members/<member>/lesions.json``: one member's own lesions (no ensemble scores)."""

    member: str
    n_lesions: int
    lesions: list[Lesion]
    length_unit: LengthUnit = MM

    def unit(self) -> str:
        """The unit the member's ``lesions.json`` names its sizes in."""
        return self.length_unit

    @classmethod
    def read(cls, folder: MemberFolder) -> MemberLesionsRecord:
        """Read and validate a member's ``lesions.json``.

        Raises:
            OutputError: Missing, unreadable or not a member record.
        """
        record: MemberLesionsRecord = read_json_record(
            folder.lesions_json, cls, "member lesion record"
        )
        return record

    def write(self, folder: MemberFolder) -> Path:
        """Write the member's ``lesions.json`` atomically (sizes named in its unit)."""
        return write_text_atomic(folder.lesions_json, compact_json(self.to_json()))


__all__ = [
    "SUMMARY_COLUMNS",
    "EnsembleRecord",
    "FolderProvenance",
    "GridRecord",
    "InputKindRecord",
    "Lesion",
    "MemberLesionsRecord",
    "MemberProvenance",
    "ModelProvenance",
    "RunRecord",
    "RunScanEntry",
    "ScanRecord",
    "ScanResult",
    "ScanStatus",
    "SkippedRecord",
    "SourceRecord",
    "read_summary",
    "write_summary",
]
