"""``medres evaluate`` as a library call: score a predict folder against ground truth.

:func:`evaluate_predictions` reads what ``medres predict`` wrote (``seg.nii.gz``,
``lesions.json``, ``probabilities.nii.gz`` and the same under ``members/<member>/`` when
predicted with ``--members``), finds each scan's truth (:class:`TruthIndex`), and scores
the ensemble and every member:

* segmentation (:mod:`~medres.evaluation.segmentation`): Dice, IoU, HD95, mean surface
  distance, NSD at a tolerance, absolute and relative volume error, per case;
* detection (:mod:`~medres.evaluation.detection`): lesion matches, sensitivity, precision,
  F1, false positives per case, FROC and CPM, sensitivity by lesion size;
* calibration (:mod:`~medres.evaluation.calibration`) of the voxel probabilities when
  they were saved;
* for every figure: mean, median and 95 % bootstrap CI over cases, and each member
  against the ensemble, case by case (:mod:`~medres.evaluation.statistics`).

A case is a scan, or with ``group_by="folder"`` every scan of one source folder pooled
(the slices of one patient for 2D data). A case that cannot be scored (no truth, other
grid, unknown label values) is recorded with its error; the others go on.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres._version import __version__
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
from medres.evaluation.summary import ENSEMBLE, ModelCase, case_rows, summarise_models
from medres.evaluation.truth import TruthIndex, read_truth
from medres.io.atomic import write_text_atomic
from medres.io.grid import squeeze_single_slice_array
from medres.io.nifti import read_nifti
from medres.io.order import natural_key
from medres.io.units import MM, PX, keys_in_unit
from medres.pipeline import PipelineConfig
from medres.predictions.detections import DetectionsRecord
from medres.predictions.layout import MemberFolder, RunFolder, ScanFolder
from medres.predictions.records import Lesion, MemberLesionsRecord, RunRecord, ScanRecord
from medres.types import StrEnum

logger = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
LESIONS_CSV = "lesions.csv"
SUMMARY_JSON = "summary.json"


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


@dataclass
class EvaluationRun:
    """What an evaluation found."""

    out: Path
    models: list[str]
    labels: list[str]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    failed: list[dict[str, str]]
    seconds: float


def _read_run(folder: RunFolder) -> tuple[dict[str, PipelineConfig], RunRecord]:
    """The run's pipelines by name (each parsed once) and its record."""
    try:
        run = RunRecord.read(folder)
    except MedresError as exc:
        raise EvaluationError(f"{folder.path}: not a medres predict folder ({exc})") from None
    configs = run.pipelines()
    if not configs:
        raise EvaluationError(f"{folder.run_json}: names no model")
    return configs, run


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
class _Scoring:
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
                self._score_label(
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

    def _score_label(
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


def _finished_scans(folder: RunFolder, run: RunRecord) -> list[ScanFolder]:
    """The scan folders the run finished (never a stale output of an earlier run).

    Raises:
        EvaluationError: There is none.
    """
    finished = run.finished_scans()
    scan_dirs = [scan for scan in folder.scans() if finished is None or scan.scan_id in finished]
    if not scan_dirs:
        raise EvaluationError(f"{folder.path}: no predicted scan (no scan folder with a record)")
    return scan_dirs


def evaluate_predictions(
    predictions: str | Path,
    truth: str | Path,
    out: str | Path | None = None,
    *,
    options: EvaluateOptions | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> EvaluationRun:
    """Score a ``medres predict`` folder against ground truth and write the results.

    Args:
        predictions: The predict output folder.
        truth: Truth folder or datalist JSON (see :class:`TruthIndex`).
        out: Where to write (default: ``<predictions>/evaluation``).
        options: Scoring options.
        on_progress: ``(done, total, scan_id)``.

    Raises:
        EvaluationError: Not a predict folder, unusable truth source, nothing to score.
    """
    options = options or EvaluateOptions()
    start = time.perf_counter()
    predictions = Path(predictions)
    run_folder = RunFolder(predictions)
    out_dir = Path(out) if out is not None else run_folder.evaluation_dir
    configs, run = _read_run(run_folder)
    index = TruthIndex(
        truth,
        truth_name=options.truth_name,
        mask_suffix=options.mask_suffix,
        data_root=options.data_root,
    )
    scan_dirs = _finished_scans(run_folder, run)
    scoring = _Scoring(options=options, configs=configs, index=index)
    for done, scan_dir in enumerate(scan_dirs):
        if on_progress is not None:
            on_progress(done, len(scan_dirs), scan_dir.scan_id)
        scoring.add_scan(scan_dir)
    cases, calibration, failed = scoring.cases, scoring.calibration, scoring.failed
    labels_seen, spacing_of_case = scoring.labels_seen, scoring.spacing_of_case
    scored_scans, without_truth = scoring.scored_scans, scoring.without_truth
    if not cases and not scoring.boxes.models:
        raise EvaluationError(
            f"{predictions}: no scan could be scored; first problem: "
            f"{failed[0]['error'] if failed else 'none found'}"
        )
    models = sorted({m for per in cases.values() for m in per}, key=lambda m: (m != ENSEMBLE, m))
    models = models[1:] + models[:1]  # members first, the ensemble last
    unit = scoring.length_unit(predictions)
    scoring.boxes.length_unit = unit
    rows = case_rows(cases, models, labels_seen, options.tolerance_mm, spacing_of_case)
    summary = summarise_models(
        rows, cases, models, labels_seen, calibration, unit, scoring.lesion_calibration
    )
    if scoring.boxes.models:
        summary["boxes"] = scoring.boxes.summary()
    seconds = time.perf_counter() - start
    summary.update(
        {
            "medres_version": __version__,
            "predictions": str(predictions),
            "truth": str(truth),
            "options": asdict(options),
            "n_cases": len(cases) or len(scoring.boxes.cases),
            "n_scans": scored_scans,
            "failed": failed,
            "without_truth": without_truth,
            "seconds": round(seconds, 2),
        }
    )
    evaluation = EvaluationRun(
        out=out_dir,
        models=models,
        labels=labels_seen,
        rows=rows,
        summary=summary,
        failed=failed,
        seconds=seconds,
    )
    write_outputs(evaluation, cases)
    return evaluation


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    return buffer.getvalue()


def write_outputs(
    evaluation: EvaluationRun, cases: dict[str, dict[str, dict[str, ModelCase]]]
) -> None:
    """``metrics.csv``, ``lesions.csv``, ``summary.json``, plots and ``evaluation.html``."""
    from medres.evaluation.report import write_html, write_plots

    out = evaluation.out
    out.mkdir(parents=True, exist_ok=True)
    unit = evaluation.summary.get("length_unit", MM)
    write_text_atomic(out / METRICS_CSV, _csv(keys_in_unit(evaluation.rows, unit)))
    lesion_rows = [
        {"case": case_id, "scan": scan, "model": model, "label": label, **match.to_row()}
        for case_id, per_model in sorted(cases.items(), key=lambda item: natural_key(item[0]))
        for model, per_label in per_model.items()
        for label, stats in per_label.items()
        for scan, match in zip(stats.match_scans, stats.matches, strict=True)
    ]
    write_text_atomic(out / LESIONS_CSV, _csv(keys_in_unit(lesion_rows, unit)))
    summary = keys_in_unit(_json_safe(evaluation.summary), unit)
    write_text_atomic(out / SUMMARY_JSON, json.dumps(summary, indent=1) + "\n")
    plots = write_plots(out, evaluation.summary, evaluation.rows)
    write_html(out, evaluation.summary, evaluation.failed, plots)


__all__ = [
    "ENSEMBLE",
    "EvaluateOptions",
    "EvaluationRun",
    "evaluate_predictions",
    "write_outputs",
]
