"""Scoring one prediction folder scan by scan: every model's label map against the truth.

:class:`Scoring` accumulates, per case, model and label, the overlap statistics, the
lesion matches, the calibration bins (all voxels and the lesion region) and the box
matches; :mod:`medres.evaluation.run` (``medres predict`` folders) and
:mod:`medres.evaluation.label_maps` (any folder of label maps) feed it and
:mod:`medres.evaluation.summary` turns it into figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import EvaluationError, MedresError
from medres.evaluation.boxes import SEGMENTATION, BoxScoring
from medres.evaluation.calibration import ReliabilityBins, lesion_region
from medres.evaluation.detection import (
    lesion_key,
    match_lesions,
)
from medres.evaluation.segmentation import (
    overlap_stats,
)
from medres.evaluation.summary import ENSEMBLE, ModelCase
from medres.evaluation.truth import TruthIndex, read_truth
from medres.io.grid import squeeze_single_slice_array
from medres.io.nifti import read_nifti
from medres.io.units import MM, PX
from medres.pipeline import PipelineConfig
from medres.predictions.detections import DetectionsRecord
from medres.predictions.layout import MemberFolder, ScanFolder
from medres.predictions.records import Lesion, MemberLesionsRecord, ScanRecord
from medres.types import StrEnum


class CaseGrouping(StrEnum):
    """What one evaluation case is."""

    SCAN = "scan"  #: each scan
    FOLDER = "folder"  #: every scan of one source folder (the slices of a patient)


@dataclass(frozen=True)
class EvaluateOptions:
    """How to score.

    Attributes:
        group_by: ``scan`` (each scan is a case) or ``folder`` (scans of one source folder
            pooled into one case: the slices of a patient).
        tolerance_mm: NSD tolerance; None: the largest voxel spacing of the case.
        iou_threshold: Smallest lesion IoU that counts as a detection.
        members: Score the members too (when their masks were saved).
        truth_name: Truth file name inside case folders.
        mask_suffix: Suffix of truth mask files.
        data_root: Base folder of a datalist's relative paths.
        skip_missing_truth: Scans without truth are counted and left out instead of being
            reported as problems (a predict folder holding more than the truth covers).
        boxes: Box-level figures (:mod:`~medres.evaluation.boxes`) of the segmented
            lesions even when no detector predicted the run (always when one did).
        min_lesion_size: In the box-level figures, true lesions smaller than this (mm^3
            in 3D, mm^2 in 2D) are left out and boxes on them are not false positives.
    """

    group_by: CaseGrouping | str = CaseGrouping.SCAN
    tolerance_mm: float | None = None
    iou_threshold: float = 0.1
    members: bool = True
    truth_name: str | None = None
    mask_suffix: str = "_mask"
    data_root: str | None = None
    skip_missing_truth: bool = False
    boxes: bool = False
    min_lesion_size: float = 0.0

    def __post_init__(self) -> None:
        if self.group_by not in {g.value for g in CaseGrouping}:
            raise EvaluationError(f"group_by {self.group_by!r}: use scan or folder")
        object.__setattr__(self, "group_by", CaseGrouping(self.group_by))


def _model_outputs(
    folder: ScanFolder, record: ScanRecord, *, members: bool
) -> dict[str, tuple[ScanFolder | MemberFolder, list[Lesion]]]:
    """Model name -> (folder with its seg/probabilities, its lesions) for one scan."""
    found: dict[str, tuple[ScanFolder | MemberFolder, list[Lesion]]] = {
        ENSEMBLE: (folder, record.lesions)
    }
    for member in folder.members() if members else []:
        lesions: list[Lesion] = []
        if member.lesions_json.is_file():
            lesions = MemberLesionsRecord.read(member).lesions
        found[member.name] = (member, lesions)
    return found


def _scores(lesions: Sequence[Lesion], label: str) -> dict[Any, float]:
    return {
        lesion_key(x.voxel_count, x.bbox_ijk): float(x.max_probability)
        for x in lesions
        if x.label == label and x.max_probability is not None
    }


def _spatial(array: npt.NDArray[Any], ndim: int) -> npt.NDArray[Any]:
    """A 2D grid's map as stored in NIfTI, ``(x, y, 1)``, back to ``(x, y)``."""
    return squeeze_single_slice_array(array) if ndim == 2 else array


@dataclass
class Scoring:
    """What the scans scored so far add up to: case -> model -> label -> statistics."""

    options: EvaluateOptions
    configs: dict[str, PipelineConfig]
    index: TruthIndex
    cases: dict[str, dict[str, dict[str, ModelCase]]] = field(default_factory=dict)
    calibration: dict[str, dict[str, ReliabilityBins]] = field(default_factory=dict)
    #: the same, over the lesion region only (truth or prediction, dilated)
    lesion_calibration: dict[str, dict[str, ReliabilityBins]] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    without_truth: list[str] = field(default_factory=list)
    scored_scans: int = 0
    labels_seen: list[str] = field(default_factory=list)
    spacing_of_case: dict[str, float] = field(default_factory=dict)
    boxes: BoxScoring = field(default_factory=BoxScoring)
    units: dict[str, list[str]] = field(default_factory=dict)  # unit -> scans measured in it

    def length_unit(self, predictions: Path) -> str:
        """The unit every scored scan is measured in.

        Raises:
            EvaluationError: Some scans are in mm and others in pixels: their sizes and
                distances cannot be averaged together.
        """
        if len(self.units) > 1:
            px = self.units.get(PX, [])
            raise EvaluationError(
                f"{predictions}: {len(px)} scan(s) are measured in pixels (image files without "
                f"a pixel size, e.g. {px[0]}) and {len(self.units[MM])} in mm: evaluate them "
                "apart, or predict the images with --pixel-size-mm"
            )
        return next(iter(self.units), MM)

    def _case_of(self, record: ScanRecord) -> str:
        if self.options.group_by != CaseGrouping.FOLDER:
            return record.scan_id
        source = record.source.files[0] if record.source.files else record.scan_id
        folder = Path(source).parent
        return str(folder) if str(folder) not in ("", ".") else record.scan_id

    def add_scan(self, scan_dir: ScanFolder) -> None:
        """Score every model of one scan against its truth (problems are recorded)."""
        try:
            record = ScanRecord.read(scan_dir)
        except MedresError as exc:
            self.failed.append({"scan_id": scan_dir.scan_id, "error": str(exc)})
            return
        scan_id = record.scan_id
        pipelines = record.ensemble.pipelines
        default = next(iter(self.configs.values()))
        cfg = self.configs.get(pipelines[0], default) if pipelines else default
        grid = record.grid
        voxel_measure = grid.grid.voxel_measure
        self.units.setdefault(grid.length_unit, []).append(scan_id)
        if self.options.skip_missing_truth and not self.index.has(scan_id):
            self.without_truth.append(scan_id)
            return
        try:
            truth_map = read_truth(
                self.index.find(scan_id),
                scan_id=scan_id,
                shape=grid.shape,
                affine=grid.affine_ras,
                cfg=cfg,
            )
        except EvaluationError as exc:
            self.failed.append({"scan_id": scan_id, "error": str(exc)})
            return
        case_id = self._case_of(record)
        self.spacing_of_case[case_id] = max(
            self.spacing_of_case.get(case_id, 0.0), max(grid.spacing_mm)
        )
        self.scored_scans += 1
        segmented = record.segmented
        outputs = _model_outputs(scan_dir, record, members=self.options.members)
        self._score_boxes(scan_dir, record, case_id, truth_map, cfg, outputs if segmented else {})
        for model, (model_dir, model_lesions) in outputs.items() if segmented else []:
            try:
                predicted = _spatial(read_nifti(model_dir.seg).array[0], len(grid.shape))
            except MedresError as exc:
                self.failed.append({"scan_id": scan_id, "error": f"{model}: {exc}"})
                continue
            probabilities = None
            if model_dir.probabilities.is_file():
                probabilities = read_nifti(model_dir.probabilities).array
            for label_index in cfg.lesion_indices:
                self.score_label(
                    case_id,
                    scan_id,
                    model,
                    cfg.labels[label_index],
                    predicted == label_index,
                    truth_map == label_index,
                    scores=_scores(model_lesions, cfg.labels[label_index]),
                    spacing_mm=grid.spacing_mm,
                    voxel_measure=voxel_measure,
                    probability=None
                    if probabilities is None
                    else _spatial(
                        probabilities[min(label_index - 1, probabilities.shape[0] - 1)],
                        len(grid.shape),
                    ),
                )

    def _score_boxes(
        self,
        scan_dir: ScanFolder,
        record: ScanRecord,
        case_id: str,
        truth_map: npt.NDArray[Any],
        cfg: PipelineConfig,
        outputs: dict[str, tuple[ScanFolder | MemberFolder, list[Lesion]]],
    ) -> None:
        """Box-level scores of the scan's detector boxes and segmented lesions."""
        detections = None
        if scan_dir.detections_json.is_file():
            try:
                detections = DetectionsRecord.read(scan_dir)
            except MedresError as exc:
                self.failed.append({"scan_id": scan_dir.scan_id, "error": str(exc)})
        if detections is None and not self.boxes.models and not self.options.boxes:
            return  # a segmentation-only run: box figures only when asked for
        lesions = {
            SEGMENTATION if model == ENSEMBLE else f"{SEGMENTATION}/{model}": found
            for model, (_, found) in outputs.items()
        }
        grid = record.grid
        three_d = len(grid.shape) == 3
        self.boxes.iou_threshold = self.options.iou_threshold
        self.boxes.min_size = self.options.min_lesion_size / (1000.0 if three_d else 1.0)
        self.boxes.add_scan(
            case_id,
            _spatial(truth_map, len(grid.shape)),
            cfg.labels,
            cfg.lesion_indices,
            voxel_size=grid.grid.voxel_measure / (1000.0 if three_d else 1.0),
            lesions=lesions,
            detections=detections,
        )

    def score_label(
        self,
        case_id: str,
        scan_id: str,
        model: str,
        label: str,
        pred_mask: npt.NDArray[np.bool_],
        true_mask: npt.NDArray[np.bool_],
        *,
        scores: dict[Any, float],
        spacing_mm: tuple[float, ...],
        voxel_measure: float,
        probability: npt.NDArray[Any] | None,
    ) -> None:
        if label not in self.labels_seen:
            self.labels_seen.append(label)
        per_model = self.cases.setdefault(case_id, {})
        stats = per_model.setdefault(model, {}).setdefault(label, ModelCase())
        stats.parts.append(
            overlap_stats(pred_mask, true_mask, spacing_mm=spacing_mm, voxel_measure=voxel_measure)
        )
        found = match_lesions(
            pred_mask,
            true_mask,
            scores=scores,
            spacing_mm=spacing_mm,
            voxel_measure=voxel_measure,
            iou_threshold=self.options.iou_threshold,
        )
        stats.matches += found
        stats.match_scans += [scan_id] * len(found)
        stats.n_scans += 1
        if probability is not None:
            bins = self.calibration.setdefault(model, {}).setdefault(label, ReliabilityBins())
            bins.add(probability, true_mask)
            near = lesion_region(true_mask, pred_mask)
            if near.any():
                region = self.lesion_calibration.setdefault(model, {})
                region.setdefault(label, ReliabilityBins()).add(
                    np.asarray(probability)[near], true_mask[near]
                )


__all__ = ["CaseGrouping", "EvaluateOptions", "Scoring"]
