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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medres._version import __version__
from medres.errors import EvaluationError, MedresError
from medres.evaluation.scoring import EvaluateOptions, Scoring
from medres.evaluation.summary import ENSEMBLE, ModelCase, case_rows, summarise_models
from medres.evaluation.truth import TruthIndex
from medres.io.atomic import write_text_atomic
from medres.io.order import natural_key
from medres.io.units import MM, keys_in_unit
from medres.pipeline import PipelineConfig
from medres.predictions.layout import RunFolder, ScanFolder
from medres.predictions.records import RunRecord

logger = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
LESIONS_CSV = "lesions.csv"
SUMMARY_JSON = "summary.json"


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


def is_predict_folder(folder: str | Path) -> bool:
    """Whether ``folder`` was written by ``medres predict`` (it holds ``run.json``)."""
    return RunFolder(Path(folder)).run_json.is_file()


def predict_pipeline(folder: str | Path) -> PipelineConfig:
    """The pipeline of a ``medres predict`` folder's first model (its labels and label map).

    Raises:
        EvaluationError: Not a readable predict folder.
    """
    configs, _ = _read_run(RunFolder(Path(folder)))
    return next(iter(configs.values()))


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
    scoring = Scoring(options=options, configs=configs, index=index)
    for done, scan_dir in enumerate(scan_dirs):
        if on_progress is not None:
            on_progress(done, len(scan_dirs), scan_dir.scan_id)
        scoring.add_scan(scan_dir)
    return finish_evaluation(scoring, predictions, truth, out_dir, start=start)


def finish_evaluation(
    scoring: Scoring,
    predictions: Path,
    truth: str | Path,
    out_dir: Path,
    *,
    start: float,
    kind: str = "medres predict",
) -> EvaluationRun:
    """The figures of a filled :class:`Scoring` (rows, summary), written to ``out_dir``.

    Raises:
        EvaluationError: Nothing could be scored, or the scans mix mm and px.
    """
    options = scoring.options
    cases, calibration, failed = scoring.cases, scoring.calibration, scoring.failed
    labels_seen, spacing_of_case = scoring.labels_seen, scoring.spacing_of_case
    if not cases and not scoring.boxes.models:
        raise EvaluationError(
            f"{predictions}: no scan could be scored; first problem: "
            f"{failed[0]['error'] if failed else 'none found'}"
        )
    models = sorted({m for per in cases.values() for m in per}, key=lambda m: (m != ENSEMBLE, m))
    if ENSEMBLE in models:
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
            "predictions_kind": kind,
            "truth": str(truth),
            "options": asdict(options),
            "n_cases": len(cases) or len(scoring.boxes.cases),
            "n_scans": scoring.scored_scans,
            "failed": failed,
            "without_truth": scoring.without_truth,
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


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither), tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV (columns of the first row; floats to 6 significant digits)."""
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
    write_text_atomic(out / METRICS_CSV, csv_text(keys_in_unit(evaluation.rows, unit)))
    lesion_rows = [
        {"case": case_id, "scan": scan, "model": model, "label": label, **match.to_row()}
        for case_id, per_model in sorted(cases.items(), key=lambda item: natural_key(item[0]))
        for model, per_label in per_model.items()
        for label, stats in per_label.items()
        for scan, match in zip(stats.match_scans, stats.matches, strict=True)
    ]
    write_text_atomic(out / LESIONS_CSV, csv_text(keys_in_unit(lesion_rows, unit)))
    summary = keys_in_unit(json_safe(evaluation.summary), unit)
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
