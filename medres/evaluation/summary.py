"""The figures of an evaluation: per-case rows, and per model and label the summary
(means, medians, bootstrap intervals, detection figures pooled over cases, FROC, size
bins, calibration, and each member against the ensemble, case by case).

The statistics of one model on one case and label accumulate in a :class:`ModelCase`
(``medres.evaluation.run`` fills them scan by scan); these functions only compute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.evaluation.calibration import ReliabilityBins
from medres.evaluation.detection import (
    DETECTION_METRICS,
    LesionMatch,
    cpm,
    froc,
    sensitivity_by_size,
    summarise,
)
from medres.evaluation.segmentation import (
    SEGMENTATION_METRICS,
    OverlapStats,
    pool_stats,
    segmentation_metrics,
)
from medres.evaluation.statistics import bootstrap_cases_ci, describe, paired_comparison
from medres.io.order import natural_key

#: The model name of the ensemble in every table (members are named by their folders).
ENSEMBLE = "ensemble"


@dataclass
class ModelCase:
    """Accumulated statistics of one model on one case and label."""

    parts: list[OverlapStats] = field(default_factory=list)
    matches: list[LesionMatch] = field(default_factory=list)
    match_scans: list[str] = field(default_factory=list)  # the scan of each match
    n_scans: int = 0


def case_rows(
    cases: dict[str, dict[str, dict[str, ModelCase]]],
    models: Sequence[str],
    labels: Sequence[str],
    tolerance_mm: float | None,
    spacing_of_case: dict[str, float],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for case_id in sorted(cases, key=natural_key):
        for model in models:
            for label in labels:
                stats = cases[case_id].get(model, {}).get(label)
                if stats is None:
                    continue
                tolerance = tolerance_mm or spacing_of_case[case_id]
                seg = segmentation_metrics(pool_stats(stats.parts), tolerance_mm=tolerance)
                det = summarise(stats.matches, 1)
                rows.append(
                    {
                        "case": case_id,
                        "model": model,
                        "label": label,
                        "scans": stats.n_scans,
                        **seg,
                        "nsd_tolerance_mm": tolerance,
                        "true_lesions": det.tp + det.fn,
                        "tp": det.tp,
                        "fp": det.fp,
                        "fn": det.fn,
                        "sensitivity": det.sensitivity,
                        "precision": det.precision,
                        "f1": det.f1,
                    }
                )
    return rows


def _detection_figures(
    per_case: Sequence[Sequence[LesionMatch]],
) -> dict[str, float]:
    matches = [m for case in per_case for m in case]
    counts = summarise(matches, len(per_case))
    fps, sens, _ = froc(matches, len(per_case))
    score, _ = cpm(fps, sens)
    return {
        "sensitivity": counts.sensitivity,
        "precision": counts.precision,
        "f1": counts.f1,
        "fp_per_case": counts.fp_per_case,
        "cpm": score,
    }


def _detection_ci(
    per_case: Sequence[Sequence[LesionMatch]], *, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Bootstrap (over cases) intervals of the pooled detection figures."""

    def figures(indices: npt.NDArray[np.intp]) -> list[float]:
        found = _detection_figures([per_case[i] for i in indices])
        return [found[k] for k in DETECTION_METRICS]

    intervals = bootstrap_cases_ci(len(per_case), figures, seed=seed)
    return dict(zip(DETECTION_METRICS, intervals, strict=True))


def summarise_models(
    rows: Sequence[dict[str, Any]],
    cases: dict[str, dict[str, dict[str, ModelCase]]],
    models: Sequence[str],
    labels: Sequence[str],
    calibration: dict[str, dict[str, ReliabilityBins]],
    length_unit: str = "mm",
    lesion_calibration: dict[str, dict[str, ReliabilityBins]] | None = None,
) -> dict[str, Any]:
    """Per label and model: the summary of :mod:`medres.evaluation` (``length_unit``: of
    the scans, for the size bins; the figures keep their in-memory ``_mm`` names)."""
    out: dict[str, Any] = {
        "models": list(models),
        "labels": list(labels),
        "length_unit": length_unit,
        "results": {},
    }
    for label in labels:
        by_model: dict[str, Any] = {}
        ensemble_rows = {
            r["case"]: r for r in rows if r["model"] == ENSEMBLE and r["label"] == label
        }
        for model in models:
            model_rows = [r for r in rows if r["model"] == model and r["label"] == label]
            if not model_rows:
                continue
            case_ids = [r["case"] for r in model_rows]
            per_case = [cases[c][model][label].matches for c in case_ids]
            entry: dict[str, Any] = {
                "segmentation": {
                    metric: describe([r[metric] for r in model_rows])
                    for metric in SEGMENTATION_METRICS
                },
                "per_case_f1": describe([r["f1"] for r in model_rows]),
            }
            figures = _detection_figures(per_case)
            intervals = _detection_ci(per_case)
            entry["detection"] = {
                k: {"value": figures[k], "ci_low": intervals[k][0], "ci_high": intervals[k][1]}
                for k in DETECTION_METRICS
            }
            all_matches = [m for case in per_case for m in case]
            counts = summarise(all_matches, len(per_case))
            entry["detection_counts"] = {"tp": counts.tp, "fp": counts.fp, "fn": counts.fn}
            fps, sens, thresholds = froc(all_matches, len(per_case))
            entry["froc"] = {
                "fp_per_case": fps.tolist(),
                "sensitivity": sens.tolist(),
                "threshold": [t if math.isfinite(t) else None for t in thresholds.tolist()],
                "cpm_by_rate": dict(
                    zip(["1/8", "1/4", "1/2", "1", "2", "4", "8"], cpm(fps, sens)[1], strict=True)
                ),
            }
            entry["sensitivity_by_size"] = sensitivity_by_size(all_matches, length_unit)
            bins = calibration.get(model, {}).get(label)
            if bins is not None:
                entry["calibration"] = {"ece": bins.ece(), "bins": bins.table()}
                region = (lesion_calibration or {}).get(model, {}).get(label)
                if region is not None:
                    entry["calibration"]["ece_lesion_region"] = region.ece()
            if model != ENSEMBLE and ensemble_rows:
                paired = [r for r in model_rows if r["case"] in ensemble_rows]
                entry["vs_ensemble"] = {
                    metric: paired_comparison(
                        [r[metric] for r in paired],
                        [ensemble_rows[r["case"]][metric] for r in paired],
                    )
                    for metric in ("dice", "hd95_mm", "nsd", "f1")
                }
            by_model[model] = entry
        out["results"][label] = by_model
    return out


__all__ = ["ENSEMBLE", "ModelCase", "case_rows", "summarise_models"]
