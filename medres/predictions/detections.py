"""``OUT/<scan_id>/detections.json``: a detector ensemble's boxes of one scan.

Every box the fused ensemble kept (score at least ``detection.score_threshold``) is listed,
best first, so that ``medres evaluate`` can draw the whole FROC curve; ``reported`` marks
those at or above ``detection.report_score``, which the report draws and counts.

Coordinates, as in ``lesions.json``: ``box_ijk`` is in voxel *corners* of the scan's own
grid (MONAI's detection convention, voxel ``i`` covers ``[i, i + 1)`` along its axis, so
a lesion of voxels 3..5 spans 3 to 6); ``box_ras_mm`` is the smallest RAS+ box that holds
the voxel box (larger than it on an oblique grid); ``center_ras_mm`` is the centre of the
voxel box, mapped.

Example:
    >>> box = DetectionBox(box_id=1, label="tumour", score=0.9, box_ijk=(3, 2, 6, 4),
    ...     box_ras_mm=(2.5, 1.5, 5.5, 3.5), center_ras_mm=(4.0, 2.5, 0.0),
    ...     size_mm=(3.0, 2.0), members=["a/fold_0"], member_agreement=1.0, reported=True)
    >>> box.dims
    2
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from medres.io.atomic import write_text_atomic
from medres.io.units import MM, LengthUnit
from medres.predictions._base import MeasuredRecord, Record, compact_json, read_json_record
from medres.predictions.layout import ScanFolder

#: ``ScanRecord.ensemble.mode`` of a scan that only a detector predicted.
BOX_FUSION = "box fusion"


class DetectionBox(Record):
    """One fused box of a detector ensemble.

    Attributes:
        box_id: 1-based, by decreasing score.
        label: Lesion label name.
        score: Fused score in 0..1 (weighted box fusion: the views' summed scores over
            their number, so agreement raises it).
        box_ijk: Voxel corners ``(i0, j0[, k0], i1, j1[, k1])`` on the scan's grid.
        box_ras_mm: ``(r0, a0[, s0], r1, a1[, s1])`` RAS+ mm.
        center_ras_mm: Centre of the voxel box in RAS+ mm.
        size_mm: Edge lengths of the voxel box along the grid's axes, mm.
        members: The members (``pipeline/member``) with a box in this cluster.
        member_agreement: ``len(members)`` over the ensemble's members.
        reported: Score at least the pipeline's ``report_score``.
        lesion_id: The segmented lesion this box matches (a segmentation model predicted
            the same scan), or None.
    """

    box_id: int
    label: str
    score: float = Field(ge=0, le=1)
    box_ijk: tuple[float, ...]
    box_ras_mm: tuple[float, ...]
    center_ras_mm: tuple[float, float, float]
    size_mm: tuple[float, ...]
    members: list[str]
    member_agreement: float = Field(ge=0, le=1)
    reported: bool
    lesion_id: int | None = None

    @property
    def dims(self) -> int:
        """2 or 3."""
        return len(self.box_ijk) // 2


class DetectionsRecord(MeasuredRecord):
    """``OUT/<scan_id>/detections.json``.

    Attributes:
        scan_id: The scan.
        pipelines: The detector folders' pipeline names.
        members: Every member (``pipeline/member``).
        tta_views: Flip views per member (1 without test-time augmentation).
        fusion_iou: IoU at which boxes were fused.
        score_threshold: Boxes below it were dropped.
        report_score: Boxes at or above it are ``reported``.
        n_reported: How many boxes are reported.
        boxes: Best first.
        member_boxes: Each member's own boxes (its flip views fused), with
            ``--keep-members``; else empty.
        length_unit: ``mm``, or ``px`` for an image without a pixel size: the file then
            names its sizes and centres in pixels (``size_px``, ``center_px``).
    """

    scan_id: str
    pipelines: list[str]
    members: list[str]
    tta_views: int
    fusion_iou: float
    score_threshold: float
    report_score: float
    n_reported: int
    boxes: list[DetectionBox]
    member_boxes: dict[str, list[DetectionBox]] = Field(default_factory=dict)
    length_unit: LengthUnit = MM

    def unit(self) -> str:
        """The unit ``detections.json`` names its sizes in."""
        return self.length_unit

    @classmethod
    def read(cls, folder: ScanFolder) -> DetectionsRecord:
        """Read and validate ``detections.json``.

        Raises:
            OutputError: Missing, unreadable or not a detections record.
        """
        record: DetectionsRecord = read_json_record(
            folder.detections_json, cls, "detections record"
        )
        return record

    def write(self, folder: ScanFolder) -> Path:
        """Write ``detections.json`` atomically."""
        return write_text_atomic(folder.detections_json, compact_json(self.to_json()))

    @property
    def reported_boxes(self) -> list[DetectionBox]:
        """The boxes at or above the report score."""
        return [b for b in self.boxes if b.reported]


__all__ = ["BOX_FUSION", "DetectionBox", "DetectionsRecord"]
