"""A detector ensemble's part of one scan: ``detections.json``, the link between boxes and
segmented lesions, and the scan record of a scan only a detector predicted.

When a segmentation and a detection ensemble both predict a scan, each segmented lesion
is matched to the box it overlaps most (box IoU at least ``detection.match_iou``, each box
used once, lesions by decreasing size): the lesion gets the box's score
(``detection_score``, ``detection_box_id``), the box the lesion's id. Which model said
what stays apart: the lesion's own scores are the segmentation ensemble's, the box's are
the detector's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medres._version import __version__
from medres.inference.boxes import box_iou_matrix, boxes_to_ras_mm
from medres.inference.detector import DetectionEnsemble, DetectionPrediction
from medres.inference.inputs import ScanInput
from medres.inference.options import PredictOptions
from medres.io.volume import Volume, patient_orientation
from medres.predictions.detections import BOX_FUSION, DetectionBox, DetectionsRecord
from medres.predictions.records import EnsembleRecord, GridRecord, Lesion, ScanRecord


def _box_records(
    ensemble: DetectionEnsemble,
    prediction: DetectionPrediction,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    members: Sequence[Sequence[str]],
) -> list[DetectionBox]:
    det = ensemble.cfg.detection
    assert det is not None
    grid = prediction.grid
    dims = grid.ndim
    ras = boxes_to_ras_mm(boxes, grid.affine)
    spacing = np.asarray(grid.spacing_mm[:dims])
    out = []
    for n in range(len(boxes)):
        low, high = boxes[n, :dims], boxes[n, dims:]
        centre = np.zeros(3)
        centre[:dims] = (low + high) / 2.0 - 0.5  # corners -> voxel-centre indices
        centre_mm = grid.affine[:3, :3] @ centre + grid.affine[:3, 3]
        found_by = list(members[n])
        out.append(
            DetectionBox(
                box_id=n + 1,
                label=ensemble.labels[int(labels[n])],
                score=round(float(min(max(scores[n], 0.0), 1.0)), 5),
                box_ijk=tuple(round(float(v), 3) for v in boxes[n]),
                box_ras_mm=tuple(round(float(v), 3) for v in ras[n]),
                center_ras_mm=tuple(round(float(v), 3) for v in centre_mm),  # type: ignore[arg-type]
                size_mm=tuple(round(float(v), 3) for v in (high - low) * spacing),
                members=found_by,
                member_agreement=round(len(found_by) / max(ensemble.n_members, 1), 4),
                reported=bool(scores[n] >= det.report_score),
            )
        )
    return out


def detections_record(
    ensemble: DetectionEnsemble, prediction: DetectionPrediction, *, scan_id: str
) -> DetectionsRecord:
    """The scan's ``detections.json`` record (boxes best first, reported ones marked)."""
    det = ensemble.cfg.detection
    assert det is not None
    boxes = _box_records(
        ensemble,
        prediction,
        prediction.boxes,
        prediction.scores,
        prediction.labels,
        prediction.members,
    )
    member_boxes = {}
    for name, fused in prediction.member_boxes.items():
        order = np.argsort(-fused.scores, kind="stable")
        member_boxes[name] = _box_records(
            ensemble,
            prediction,
            fused.boxes[order],
            fused.scores[order],
            fused.labels[order],
            [[name]] * len(order),
        )
    return DetectionsRecord(
        scan_id=scan_id,
        pipelines=[f.pipeline.name for f in ensemble.folders],
        members=prediction.member_names,
        tta_views=prediction.views_per_member,
        fusion_iou=det.fusion_iou,
        score_threshold=det.score_threshold,
        report_score=det.report_score,
        n_reported=sum(b.reported for b in boxes),
        boxes=boxes,
        member_boxes=member_boxes,
    )


def link_lesions(
    record: DetectionsRecord, lesions: Sequence[Lesion], *, match_iou: float
) -> tuple[DetectionsRecord, list[Lesion]]:
    """Each segmented lesion with the score of the box it matches, each box with its lesion.

    Lesions (by decreasing size) take the unused box of their label they overlap most, at
    box IoU ``match_iou`` or more.
    """
    if not lesions or not record.boxes:
        return record, list(lesions)
    truth = np.asarray([x.corner_box for x in lesions])
    found = np.asarray([b.box_ijk for b in record.boxes])
    if truth.shape[1] != found.shape[1]:
        return record, list(lesions)
    iou = box_iou_matrix(truth, found)
    boxes = list(record.boxes)
    linked = list(lesions)
    used: set[int] = set()
    for n in sorted(range(len(lesions)), key=lambda k: -lesions[k].voxel_count):
        options = [
            (iou[n, b], b)
            for b in range(len(boxes))
            if b not in used and boxes[b].label == lesions[n].label and iou[n, b] >= match_iou
        ]
        if not options:
            continue
        _, b = max(options)
        used.add(b)
        box = boxes[b]
        linked[n] = lesions[n].model_copy(
            update={"detection_score": box.score, "detection_box_id": box.box_id}
        )
        boxes[b] = box.model_copy(update={"lesion_id": lesions[n].lesion_id})
    return record.model_copy(update={"boxes": boxes}), linked


def detection_scan_record(
    item: ScanInput,
    volume: Volume,
    ensemble: DetectionEnsemble,
    prediction: DetectionPrediction,
    *,
    root: Path,
    options: PredictOptions,
    fingerprint: str,
    seconds: dict[str, float],
    notes: Sequence[str],
) -> ScanRecord:
    """The record (``lesions.json``) of a scan that only a detector predicted: its source,
    grid and models, no segmented lesions (``n_lesions`` 0) and its reported boxes in
    ``n_detections``."""
    from medres.inference.writer import source_record

    grid = prediction.grid
    three_d = grid.ndim == 3
    return ScanRecord(
        medres_version=__version__,
        scan_id=item.scan_id,
        fingerprint=fingerprint,
        source=source_record(item, volume, root),
        grid=GridRecord(
            shape=tuple(grid.shape),
            spacing_mm=tuple(round(s, 5) for s in grid.spacing_mm),
            orientation=patient_orientation(volume),
            length_unit=volume.length_unit,
            affine=np.round(grid.affine, 6).tolist(),
        ),
        ensemble=EnsembleRecord(
            pipelines=[f.pipeline.name for f in ensemble.folders],
            members=prediction.member_names,
            mode=BOX_FUSION,
            tta=[prediction.views_per_member > 1 for _ in ensemble.folders],
        ),
        labels=list(ensemble.labels),
        lesion_labels=list(ensemble.cfg.lesion_labels),
        n_lesions=0,
        total_volume_ml=0.0 if three_d else None,
        total_area_mm2=None if three_d else 0.0,
        lesions=[],
        seconds={k: round(v, 3) for k, v in seconds.items()},
        notes=list(notes),
        complete=False,
    )


__all__ = [
    "detection_scan_record",
    "detections_record",
    "link_lesions",
]
