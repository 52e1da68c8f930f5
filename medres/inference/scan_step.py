"""One scan of ``medres predict``: resume check, load, routing to an ensemble, prediction,
masks, lesion record and the after-scan step (the report), written atomically into the
scan's own folder (:mod:`medres.predictions`). :func:`predict_scan` is what every executor
of :mod:`medres.inference.batch` runs per scan, in this process or on a cluster worker.

A scan that fails is a row with its error, never an exception. A requested output that
could not be written (a failed report) fails the scan; its masks are kept.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from medres.errors import MedresError
from medres.inference.detection_step import (
    detection_scan_record,
    detections_record,
    link_lesions,
)
from medres.inference.detector import DetectionEnsemble
from medres.inference.inputs import ScanInput, load_input
from medres.inference.options import PredictOptions
from medres.inference.predictor import Ensemble
from medres.inference.resume import is_complete, output_sizes, plan_fingerprint, source_key
from medres.inference.writer import ensemble_name, scan_lesions, scan_record, write_masks
from medres.io.images2d import with_pixel_size
from medres.io.units import NO_PIXEL_SIZE_NOTE, PX
from medres.io.volume import Volume
from medres.pipeline import PipelineConfig
from medres.predictions.detections import DetectionsRecord
from medres.predictions.layout import RunFolder, ScanFolder, relative_to_input
from medres.predictions.records import Lesion, ScanRecord, ScanResult, ScanStatus

logger = logging.getLogger(__name__)


class NoModelForScanError(MedresError):
    """No ensemble of the run takes this scan (dimensions or channel count differ)."""


@dataclass(frozen=True)
class ScanPrediction:
    """One predicted scan, in memory, as the after-scan step (the report) gets it.

    Attributes:
        folder: The scan's output folder (masks and an incomplete record written).
        volume: The scan as loaded for prediction (its own grid).
        label_map: The ensemble's label map on that grid (what ``seg.nii.gz`` holds; all
            zeros when only a detector predicted the scan).
        record: The scan's record (lesions, grid, source, models).
        cfg: The pipeline of the ensemble that predicted it (the segmentation one when
            both kinds did).
        detections: A detector ensemble's boxes, when one predicted the scan.
    """

    folder: ScanFolder
    volume: Volume
    label_map: npt.NDArray[np.uint8]
    record: ScanRecord
    cfg: PipelineConfig
    detections: DetectionsRecord | None = None


@dataclass(frozen=True)
class AfterScanResult:
    """What an after-scan step (the report) wrote for one scan.

    Attributes:
        files: Written files, relative to the scan folder (``overlays/lesion_01.png``).
        notes: Notes for the scan's row (``DICOM SEG/SR skipped: ...``).
    """

    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


#: Called after a scan's masks are written, with the prediction in memory; returns what
#: it wrote and notes for the scan's row. What it raises fails the scan, keeping the
#: masks already written (e.g. the report step).
AfterScanCallback = Callable[[ScanPrediction], AfterScanResult]


@dataclass(frozen=True)
class ScanJob:
    """What every scan of a run shares: where the outputs go, what was asked for.

    Attributes:
        run_folder: The prediction folder (``OUT``).
        root: The scans folder (or file) as given; sources are recorded relative to it.
        options: The run options.
    """

    run_folder: RunFolder
    root: Path
    options: PredictOptions


def predict_scan(
    item: ScanInput,
    ensembles: Sequence[Ensemble],
    job: ScanJob,
    *,
    after_scan: AfterScanCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ScanResult:
    """One scan through resume check, load, routing, prediction, outputs and report.

    Never raises for a bad scan: every failure becomes the row's error.
    """
    step = _ScanStep(item, ensembles, job.run_folder, job.root, job.options, after_scan)
    return step.run(on_stage or (lambda stage: None))


def failed_result(item: ScanInput, root: Path, error: str) -> ScanResult:
    """The row of a scan that could not be predicted at all (e.g. its worker died)."""
    return ScanResult(
        scan_id=item.scan_id,
        status=ScanStatus.FAILED,
        kind=str(item.kind),
        source=relative_to_input(item.name, root),
        error=error,
    )


def _describe(volume: Volume) -> tuple[str, str]:
    """The scan's shape and its voxel size in mm ("" when measured in pixels)."""
    shape = "x".join(str(s) for s in volume.spatial_shape)
    if volume.length_unit == PX:
        return shape, ""
    spacing = "x".join(f"{s:.3g}" for s in volume.spacing_mm)
    return shape, spacing


def _set_area(result: ScanResult, record: ScanRecord) -> None:
    """The summary row's lesion area, in the column of the scan's unit."""
    if record.length_unit == PX:
        result.lesion_area_px2, result.lesion_area_mm2 = record.total_area_mm2, None
    else:
        result.lesion_area_mm2, result.lesion_area_px2 = record.total_area_mm2, None


def _with_pixel_size(volume: Volume, plan: Sequence[Ensemble], options: PredictOptions) -> Volume:
    """A 2D image file on the pixel size asked for (``--pixel-size-mm``, else the first
    pipeline's ``preprocessing.pixel_size_mm``); still in pixels when neither gives one,
    with a note saying so."""
    if volume.length_unit != PX:
        return volume
    given = options.pixel_size_mm
    if given is None:
        given = next(
            (e.cfg.preprocessing.pixel_size_mm for e in plan if e.cfg.preprocessing.pixel_size_mm),
            None,
        )
    if given is not None:
        return with_pixel_size(volume, given)
    return replace(volume, warnings=(*volume.warnings, NO_PIXEL_SIZE_NOTE))


class _ScanStep:
    """One scan through resume check, load, routing, prediction, outputs and report."""

    def __init__(
        self,
        item: ScanInput,
        ensembles: Sequence[Ensemble],
        run_folder: RunFolder,
        root: Path,
        options: PredictOptions,
        after_scan: AfterScanCallback | None,
    ) -> None:
        self.item = item
        self.ensembles = ensembles
        self.folder = run_folder.scan(item.scan_id)
        self.root = root
        self.options = options
        self.after_scan = after_scan
        self.result = failed_result(item, root, "")

    def run(self, on_stage: Callable[[str], None]) -> ScanResult:
        """Do the scan; every failure becomes the row's error, never an exception."""
        start = time.perf_counter()
        result = self.result
        try:
            if not (self.options.resume and self._resumed()):
                self._predict(on_stage, start)
        except NoModelForScanError as exc:
            result.error = str(exc)
            if self.options.skip_unmatched:
                result.status = ScanStatus.SKIPPED
        except MedresError as exc:
            result.error = str(exc)
            logger.info("%s failed: %s", self.item.scan_id, exc)
        except Exception as exc:  # one scan's unexpected failure must not end the batch
            result.error = f"{self.item.name}: {type(exc).__name__}: {exc}"
            logger.debug("%s failed:\n%s", self.item.scan_id, traceback.format_exc())
        if result.status != ScanStatus.RESUMED:
            result.scan_seconds = round(time.perf_counter() - start, 3)
        return result

    def _resumed(self) -> bool:
        """Fill the row from a complete earlier record of the same models and options."""
        key = source_key(self.item, self.root)
        for plan in self._plans():
            expected = plan_fingerprint(plan, self.options, self.item.paths)
            previous = is_complete(self.folder, expected, source=key)
            if previous is None:
                continue
            result = self.result
            result.status = ScanStatus.RESUMED
            result.model = _plan_name(plan)
            result.n_lesions = previous.n_lesions
            result.n_detections = previous.n_detections
            result.lesion_volume_ml = previous.total_volume_ml
            _set_area(result, previous)
            result.notes = "; ".join(previous.notes)
            result.shape = "x".join(str(s) for s in previous.grid.shape)
            result.spacing_mm = "x".join(f"{s:.3g}" for s in previous.grid.spacing_mm)
            result.modality = previous.source.modality
            return True
        return False

    def _plans(self) -> list[tuple[Ensemble, ...]]:
        """Every way the run's ensembles may have predicted a scan: one segmentation
        ensemble, one detection ensemble, or one of each (pairs first)."""
        segmenters = [e for e in self.ensembles if not e.is_detector]
        detectors = [e for e in self.ensembles if e.is_detector]
        pairs = [(s, d) for s in segmenters for d in detectors]
        return [*pairs, *((e,) for e in self.ensembles)]

    def _choose(self, volume: Volume) -> tuple[Ensemble, ...]:
        """The first segmentation and the first detection ensemble that take the scan."""
        problems = []
        chosen: dict[bool, Ensemble] = {}
        for ensemble in self.ensembles:
            problem = ensemble.input_problem(volume)
            if problem is None:
                chosen.setdefault(ensemble.is_detector, ensemble)
            else:
                problems.append(problem)
        if not chosen:
            raise NoModelForScanError(
                f"{self.item.name}: no model takes this scan: {'; '.join(problems)}"
            )
        return tuple(chosen[kind] for kind in (False, True) if kind in chosen)

    def _predict(self, on_stage: Callable[[str], None], start: float) -> None:
        """Predict, write the masks, boxes and record, then the after-scan step.

        Long: the order of the writes is what makes a killed run resume to the same result
        (masks, then an incomplete record, then the report, then the complete record).
        """
        item, result, folder = self.item, self.result, self.folder
        folder.clear()
        load_start = time.perf_counter()
        volume = load_input(item)
        load_seconds = time.perf_counter() - load_start
        result.modality = volume.modality
        plan = self._choose(volume)
        volume = _with_pixel_size(volume, plan, self.options)
        result.shape, result.spacing_mm = _describe(volume)
        result.model = _plan_name(plan)
        segmenter = next((e for e in plan if not e.is_detector), None)
        detector = next((e for e in plan if isinstance(e, DetectionEnsemble)), None)
        seconds: dict[str, float] = {"load": load_seconds}  # reading the scan's files
        written: list[str] = []
        notes = ([item.note] if item.note else []) + list(volume.warnings)
        expected = plan_fingerprint(plan, self.options, item.paths)
        label_map: npt.NDArray[np.uint8] | None = None
        record: ScanRecord | None = None
        lesions: list[Lesion] = []
        if segmenter is not None:
            label_map, record, lesions = self._segment(
                segmenter, volume, seconds, written, notes, on_stage
            )
        detections = None
        if detector is not None:
            on_stage("detect")
            found = detector.predict_boxes(
                volume, source=item.name, keep_members=self.options.keep_members, on_stage=on_stage
            )
            for stage, value in found.seconds.items():
                seconds[stage] = seconds.get(stage, 0.0) + value
            detections = detections_record(detector, found, scan_id=item.scan_id)
            detections = detections.model_copy(update={"length_unit": volume.length_unit})
            if record is None:
                label_map = np.zeros(found.grid.shape, np.uint8)
                record = detection_scan_record(
                    item,
                    volume,
                    detector,
                    found,
                    root=self.root,
                    options=self.options,
                    fingerprint=expected,
                    seconds=seconds,
                    notes=notes,
                )
            else:
                det_cfg = detector.cfg.detection
                assert det_cfg is not None
                detections, lesions = link_lesions(detections, lesions, match_iou=det_cfg.match_iou)
            record = record.model_copy(
                update={"lesions": lesions, "n_detections": detections.n_reported}
            )
            written.append(folder.relative(detections.write(folder)))
            result.n_detections = detections.n_reported
        assert record is not None and label_map is not None
        record = record.model_copy(update={"fingerprint": expected})
        result.n_lesions = record.n_lesions if segmenter is not None else None
        result.lesion_volume_ml = record.total_volume_ml
        _set_area(result, record)
        result.notes = "; ".join(notes)
        if self.after_scan is not None:
            record.write(folder)  # masks are kept if the report fails; not complete yet
            on_stage("report")
            report_start = time.perf_counter()
            cfg = (segmenter or plan[0]).cfg
            scan = ScanPrediction(folder, volume, label_map, record, cfg, detections)
            try:
                extra = self.after_scan(scan)
            except Exception as exc:  # the masks stay; the scan is not complete
                result.error = f"{item.name}: report not written: {type(exc).__name__}: {exc}"
                result.stage_seconds = {k: round(v, 3) for k, v in seconds.items()}
                logger.debug("%s report failed:\n%s", item.scan_id, traceback.format_exc())
                return
            seconds["report"] = time.perf_counter() - report_start
            written += list(extra.files)
            notes += list(extra.notes)
        seconds["total"] = time.perf_counter() - start
        record.model_copy(
            update={
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "notes": notes,
                "outputs": output_sizes(folder, written),
                "complete": True,
            }
        ).write(folder)
        result.status = ScanStatus.OK
        result.notes = "; ".join(notes)
        result.stage_seconds = {k: round(v, 3) for k, v in seconds.items()}

    def _segment(
        self,
        ensemble: Ensemble,
        volume: Volume,
        seconds: dict[str, float],
        written: list[str],
        notes: list[str],
        on_stage: Callable[[str], None],
    ) -> tuple[npt.NDArray[np.uint8], ScanRecord, list[Lesion]]:
        """A segmentation ensemble's label map, masks written, lesions and record."""
        item, folder = self.item, self.folder
        prediction = ensemble.predict(
            volume, source=item.name, keep_members=self.options.keep_members, on_stage=on_stage
        )
        on_stage("lesions")
        lesion_start = time.perf_counter()
        lesions = scan_lesions(ensemble, prediction)
        seconds.update(prediction.seconds)
        seconds["lesions"] = time.perf_counter() - lesion_start
        on_stage("write")
        write_start = time.perf_counter()
        written += write_masks(
            folder,
            prediction,
            ensemble,
            save_probabilities=self.options.save_probabilities,
            length_unit=volume.length_unit,
        )
        seconds["write"] = time.perf_counter() - write_start
        record = scan_record(
            item,
            volume,
            ensemble,
            prediction,
            lesions,
            root=self.root,
            options=self.options,
            seconds=seconds,
            notes=notes,
        )
        return prediction.label_map, record, lesions


def _plan_name(plan: tuple[Ensemble, ...]) -> str:
    """The models of a scan: ``seg_pipeline + det_pipeline``."""
    return " + ".join(ensemble_name(e) for e in plan)


__all__ = [
    "AfterScanCallback",
    "AfterScanResult",
    "NoModelForScanError",
    "ScanJob",
    "ScanPrediction",
    "failed_result",
    "predict_scan",
]
