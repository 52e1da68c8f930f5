"""Box-level lesion detection: FROC, CPM and mAP of detectors and of segmented lesions.

Truth boxes are the boxes of the true lesions (face-connected components of each lesion
label of the truth mask, MONAI's corner convention). Every model of a predict folder that
puts boxes on lesions is scored against them the same way, so they compare side by side:

* ``detector``: a detector ensemble's fused boxes (``detections.json``) and, with
  ``--members``, each detector member's (``detector/<member>``);
* ``segmentation``: the bounding boxes of a segmentation ensemble's lesions, scored by the
  lesion's maximum probability, and its members' (``segmentation/<member>``).

A prediction finds a true lesion at box IoU ``iou_threshold`` or more (nnDetection's 0.1),
greedily by decreasing score (:func:`~medres.evaluation.detection.match_boxes`). Per model
and label: the FROC curve and CPM (false positives per evaluation case: a scan, or a
patient's slices with ``group_by="folder"``), the sensitivity at 1 false positive per
case, average precision at IoU 0.1 and its mean over IoU 0.1, 0.2, ..., 0.5, sensitivity
by true lesion size, and 95 % bootstrap intervals over cases of CPM, sensitivity at 1 FP
and AP at 0.1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.evaluation.detection import (
    CPM_FP_RATES,
    LesionMatch,
    MatchKind,
    cpm,
    froc,
    greedy_pairs,
    sensitivity_by_size,
    sized_match,
)
from medres.evaluation.statistics import bootstrap_cases_ci
from medres.inference.boxes import box_iou_matrix, label_boxes
from medres.predictions.detections import DetectionsRecord
from medres.predictions.records import Lesion

#: Box IoU thresholds averaged in ``map_0.1_0.5``.
MAP_IOUS = (0.1, 0.2, 0.3, 0.4, 0.5)

DETECTOR = "detector"
SEGMENTATION = "segmentation"


def match_boxes(
    predicted: npt.ArrayLike,
    scores: Sequence[float] | npt.NDArray[np.floating],
    truth: npt.ArrayLike,
    *,
    iou_threshold: float = 0.1,
    voxel_size: float = 1.0,
    true_sizes: Sequence[float] | None = None,
) -> list[LesionMatch]:
    """Match predicted boxes to true boxes of one case by box IoU (nnDetection's way).

    Greedy, predictions by decreasing score, each taking the unmatched true box it
    overlaps most (IoU at least ``iou_threshold``). Sizes are box volumes (3D, ml) or
    areas (2D, mm^2) from ``voxel_size`` (one voxel's ml or mm^2), unless ``true_sizes``
    gives the true lesions' own sizes (in that unit, for the size bins).

    Args:
        predicted: ``(N, 2 * dims)`` boxes (MONAI corners, voxels of the truth's grid).
        scores: ``(N,)`` their scores.
        truth: ``(M, 2 * dims)`` true boxes on the same grid.
        iou_threshold: Smallest IoU that counts as a detection.
        voxel_size: Size of one voxel in ml (3D) or mm^2 (2D).
        true_sizes: Size of each true lesion (default: its box's).

    Returns:
        One :class:`LesionMatch` per predicted and per missed true box; ``predicted_id``
        and ``truth_id`` are 1-based positions in the inputs.
    """
    pred_array = np.asarray(predicted, dtype=np.float64)
    true_array = np.asarray(truth, dtype=np.float64)
    width = (
        pred_array.shape[1] if pred_array.size else true_array.shape[1] if true_array.size else 4
    )
    pred_boxes, true_boxes = pred_array.reshape(-1, width), true_array.reshape(-1, width)
    ndim = width // 2
    iou = box_iou_matrix(pred_boxes, true_boxes)

    def sizes(boxes: npt.NDArray[np.float64]) -> list[float]:
        return [float(v) * voxel_size for v in (boxes[:, ndim:] - boxes[:, :ndim]).prod(axis=1)]

    pred_sizes = sizes(pred_boxes)
    truth_sizes = list(true_sizes) if true_sizes is not None else sizes(true_boxes)
    order = sorted(range(len(pred_boxes)), key=lambda p: -float(scores[p]))
    candidates = {
        p + 1: [(float(iou[p, t]), t + 1) for t in range(len(true_boxes)) if iou[p, t] > 0]
        for p in order
    }
    pairs = greedy_pairs([p + 1 for p in order], candidates, iou_threshold)
    matches: list[LesionMatch] = []
    for p in order:
        score = float(scores[p])
        if p + 1 in pairs:
            overlap, t = pairs[p + 1]
            tp_sizes = (pred_sizes[p], truth_sizes[t - 1])
            matches.append(sized_match(MatchKind.TP, (p + 1, t), score, overlap, tp_sizes, ndim))
        else:
            fp_sizes = (pred_sizes[p], None)
            matches.append(sized_match(MatchKind.FP, (p + 1, None), score, 0.0, fp_sizes, ndim))
    found = {t for _, t in pairs.values()}
    for t in range(1, len(true_boxes) + 1):
        if t not in found:
            fn_sizes = (None, truth_sizes[t - 1])
            matches.append(sized_match(MatchKind.FN, (None, t), None, 0.0, fn_sizes, ndim))
    return matches


def average_precision(matches: Sequence[LesionMatch]) -> float:
    """Area under the precision-recall curve of pooled matches (all-point interpolated,
    as COCO / nnDetection); NaN without true lesions."""
    n_true = sum(m.kind in (MatchKind.TP, MatchKind.FN) for m in matches)
    if n_true == 0:
        return float("nan")
    predicted = sorted(
        ((m.score or 0.0, m.kind == MatchKind.TP) for m in matches if m.kind != MatchKind.FN),
        key=lambda x: -x[0],
    )
    if not predicted:
        return 0.0
    hits = np.cumsum([is_tp for _, is_tp in predicted])
    recall = hits / n_true
    precision = hits / np.arange(1, len(predicted) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * envelope).sum())


def _case_arrays(
    matches: Sequence[LesionMatch],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], int]:
    """One case's predictions as arrays: scores, whether each is a TP, and its true lesions."""
    predicted = [m for m in matches if m.kind != MatchKind.FN]
    scores = np.asarray([m.score if m.score is not None else 1.0 for m in predicted], np.float64)
    hits = np.asarray([m.kind == MatchKind.TP for m in predicted], dtype=bool)
    return scores, hits, sum(m.kind != MatchKind.FP for m in matches)


def pooled_figures(
    cases: Sequence[tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], int]],
) -> list[float]:
    """CPM, sensitivity at 1 FP per case and AP of cases pooled, from their arrays
    (:func:`_case_arrays`): the same figures as :func:`~medres.evaluation.detection.froc`,
    :func:`~medres.evaluation.detection.cpm` and :func:`average_precision`, vectorised for
    the bootstrap."""
    scores = np.concatenate([c[0] for c in cases]) if cases else np.zeros(0)
    hits = np.concatenate([c[1] for c in cases]) if cases else np.zeros(0, bool)
    n_true = sum(c[2] for c in cases)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    last = np.r_[scores[1:] != scores[:-1], True] if scores.size else np.zeros(0, bool)
    fps = np.r_[0.0, fp[last] / max(len(cases), 1)]
    sens = np.r_[0.0, tp[last] / n_true] if n_true else np.r_[0.0, np.ones(int(last.sum()))]
    by_rate = [float(sens[fps <= rate].max()) for rate in CPM_FP_RATES]
    if n_true == 0:
        ap = float("nan")
    elif not scores.size:
        ap = 0.0
    else:
        precision = tp / np.arange(1, scores.size + 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        ap = float((np.diff(np.r_[0.0, tp / n_true]) * envelope).sum())
    return [float(np.mean(by_rate)), by_rate[CPM_FP_RATES.index(1.0)], ap]


def truth_boxes(
    truth_map: npt.NDArray[np.integer], label_index: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The true lesions of one label: corner boxes ``(M, 2 * dims)`` and voxel counts."""
    return label_boxes(truth_map, label_index)


def _lesion_boxes(lesions: Sequence[Lesion], label: str) -> tuple[list[list[float]], list[float]]:
    found = [x for x in lesions if x.label == label]
    boxes = [x.corner_box for x in found]
    scores = [float(x.max_probability if x.max_probability is not None else 1.0) for x in found]
    return boxes, scores


@dataclass
class _ModelMatches:
    """One model's matches of one label, per case and per IoU threshold."""

    by_case: dict[str, dict[float, list[LesionMatch]]] = field(default_factory=dict)

    def add(self, case: str, per_iou: dict[float, list[LesionMatch]]) -> None:
        slot = self.by_case.setdefault(case, {})
        for iou, matches in per_iou.items():
            slot.setdefault(iou, []).extend(matches)


@dataclass
class BoxScoring:
    """Box matches of every model collected scan by scan, then summarised.

    Attributes:
        iou_threshold: The IoU at which FROC, CPM and the size bins count a detection.
        min_size: True lesions smaller than this (ml in 3D, mm^2 in 2D) are left out, and
            a predicted box on one counts neither as found nor as a false positive
            (LUNA16's exclusions); 0 counts every true lesion.
    """

    iou_threshold: float = 0.1
    min_size: float = 0.0
    length_unit: str = "mm"
    models: dict[str, dict[str, _ModelMatches]] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)

    def _add(
        self,
        model: str,
        label: str,
        case: str,
        predicted: Sequence[Sequence[float]],
        scores: Sequence[float],
        truth: tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]],
        voxel_size: float,
    ) -> None:
        boxes, counts = truth
        sizes = counts.astype(np.float64) * voxel_size
        kept = sizes >= self.min_size
        found = np.asarray(predicted, dtype=np.float64).reshape(-1, boxes.shape[1])
        ignored_iou = box_iou_matrix(found, boxes[~kept])
        thresholds = sorted({self.iou_threshold, *MAP_IOUS})
        per_iou = {}
        for iou in thresholds:
            matches = match_boxes(
                found,
                np.asarray(scores, dtype=np.float64),
                boxes[kept],
                iou_threshold=iou,
                voxel_size=voxel_size,
                true_sizes=sizes[kept].tolist(),
            )
            # a box on a true lesion too small to count is neither found nor false
            per_iou[iou] = [
                m
                for m in matches
                if not (
                    m.kind == MatchKind.FP
                    and m.predicted_id is not None
                    and ignored_iou.shape[1]
                    and ignored_iou[m.predicted_id - 1].max() >= iou
                )
            ]
        self.models.setdefault(model, {}).setdefault(label, _ModelMatches()).add(case, per_iou)

    def add_scan(
        self,
        case: str,
        truth_map: npt.NDArray[np.integer],
        labels: Sequence[str],
        lesion_indices: Sequence[int],
        *,
        voxel_size: float,
        lesions: Mapping[str, Sequence[Lesion]],
        detections: DetectionsRecord | None,
    ) -> None:
        """Score one scan's boxes of every model against its truth.

        Args:
            case: The evaluation case the scan belongs to.
            truth_map: Label indices on the scan's grid.
            labels: Label names (index = label index).
            lesion_indices: The lesion labels.
            voxel_size: One voxel's ml (3D) or mm^2 (2D).
            lesions: Segmented lesions per model (``segmentation``, ``segmentation/m``...).
            detections: The scan's ``detections.json`` record, if any.
        """
        if case not in self.cases:
            self.cases.append(case)
        for index in lesion_indices:
            label = labels[index]
            truth = truth_boxes(truth_map, index)
            for model, found in lesions.items():
                boxes, scores = _lesion_boxes(found, label)
                self._add(model, label, case, boxes, scores, truth, voxel_size)
            if detections is None:
                continue
            sets = {DETECTOR: detections.boxes}
            sets |= {f"{DETECTOR}/{m}": b for m, b in detections.member_boxes.items()}
            for model, entries in sets.items():
                chosen = [b for b in entries if b.label == label]
                self._add(
                    model,
                    label,
                    case,
                    [list(b.box_ijk) for b in chosen],
                    [b.score for b in chosen],
                    truth,
                    voxel_size,
                )

    def summary(self) -> dict[str, Any]:
        """Per label, per model: FROC, CPM, sensitivity at 1 FP, AP, size bins, CIs."""
        out: dict[str, Any] = {
            "iou_threshold": self.iou_threshold,
            "fp_rates": list(CPM_FP_RATES),
            "n_cases": len(self.cases),
            "results": {},
        }
        for model, per_label in sorted(self.models.items()):
            for label, matches in per_label.items():
                out["results"].setdefault(label, {})[model] = self._figures(matches)
        labels = {label for per_label in self.models.values() for label in per_label}
        for label in sorted(labels):
            if DETECTOR in self.models and SEGMENTATION in self.models:
                out.setdefault("detector_minus_segmentation", {})[label] = self._paired(
                    self.models[DETECTOR][label], self.models[SEGMENTATION][label]
                )
        return out

    def _paired(self, a: _ModelMatches, b: _ModelMatches) -> dict[str, Any]:
        """``a`` minus ``b``: CPM, sensitivity at 1 FP and AP, with paired bootstrap
        intervals (both models resampled with the same cases)."""
        at = self.iou_threshold
        left = [_case_arrays(a.by_case.get(c, {}).get(at, [])) for c in self.cases]
        right = [_case_arrays(b.by_case.get(c, {}).get(at, [])) for c in self.cases]

        def difference(indices: Sequence[int] | npt.NDArray[np.intp]) -> list[float]:
            x = pooled_figures([left[i] for i in indices])
            y = pooled_figures([right[i] for i in indices])
            return [p - q for p, q in zip(x, y, strict=True)]

        values = difference(range(len(self.cases)))
        intervals = bootstrap_cases_ci(len(self.cases), difference) if self.cases else []
        names = ["cpm", "sensitivity_at_1fp", "ap_0.1"]
        return {
            name: {"value": v, "ci_low": lo, "ci_high": hi}
            for name, v, (lo, hi) in zip(names, values, intervals, strict=False)
        }

    def _figures(self, matches: _ModelMatches) -> dict[str, Any]:
        cases = [matches.by_case.get(c, {}) for c in self.cases]
        at = self.iou_threshold

        arrays = [_case_arrays(c.get(at, [])) for c in cases]

        def figures(indices: Sequence[int] | npt.NDArray[np.intp]) -> list[float]:
            return pooled_figures([arrays[i] for i in indices])

        all_cases = list(range(len(cases)))
        pooled = [m for c in cases for m in c.get(at, [])]
        fps, sens, thresholds = froc(pooled, len(cases))
        score, by_rate = cpm(fps, sens)
        aps = {
            iou: average_precision([m for c in cases for m in c.get(iou, [])]) for iou in MAP_IOUS
        }
        intervals = bootstrap_cases_ci(len(cases), figures) if cases else []
        n_true = sum(m.kind != "fp" for m in pooled)
        return {
            "cpm": score,
            "sensitivity_at_fp": dict(zip([str(r) for r in CPM_FP_RATES], by_rate, strict=True)),
            "sensitivity_at_1fp": by_rate[CPM_FP_RATES.index(1.0)],
            "ap_0.1": aps[0.1],
            "map_0.1_0.5": float(np.nanmean(list(aps.values()))) if n_true else float("nan"),
            "ap_by_iou": {str(k): v for k, v in aps.items()},
            "true_lesions": n_true,
            "predicted": sum(m.kind != "fn" for m in pooled),
            "ci": dict(zip(["cpm", "sensitivity_at_1fp", "ap_0.1"], intervals, strict=False)),
            "froc": {
                "fp_per_case": fps.tolist(),
                "sensitivity": sens.tolist(),
                "threshold": [float(t) if np.isfinite(t) else None for t in thresholds],
            },
            "by_size": sensitivity_by_size(pooled, self.length_unit),
            "n_cases": len(all_cases),
        }


__all__ = [
    "DETECTOR",
    "MAP_IOUS",
    "SEGMENTATION",
    "BoxScoring",
    "average_precision",
    "match_boxes",
    "pooled_figures",
    "truth_boxes",
]
