"""Lesion-level detection: match predicted and true lesions, count, FROC and CPM.

Lesions are face-connected components (as ``medres predict`` finds them). A predicted
lesion matches a true one when their overlap (IoU of the two components) reaches
``iou_threshold``; matching is greedy, predicted lesions by decreasing score, each taking
the unmatched true lesion it overlaps most. Every true lesion is matched at most once:
an unmatched prediction is a false positive, an unmatched truth a false negative.

FROC: sensitivity against false positives per scan as the score threshold falls; the
CPM (competition performance metric, LUNA16) is the mean sensitivity at 1/8, 1/4, 1/2,
1, 2, 4 and 8 false positives per scan, each read off the curve at the highest
sensitivity reached without exceeding that FP rate.

Example:
    >>> import numpy as np
    >>> truth = np.zeros((20, 20), np.uint8); truth[2:6, 2:6] = 1
    >>> pred = truth.copy(); pred[12:14, 12:14] = 1
    >>> [(m.kind, m.truth_id) for m in match_lesions(pred, truth,
    ...  spacing_mm=(1.0, 1.0), iou_threshold=0.1)]
    [('tp', 1), ('fp', None)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medres.inference.postprocess import label_components

#: Pooled detection figures reported per model (``fp_per_case``: per evaluation case).
DETECTION_METRICS = ("sensitivity", "precision", "f1", "fp_per_case", "cpm")

#: False-positive rates of the CPM.
CPM_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


#: A lesion's identity across files: voxel count and inclusive bounding box per axis.
LesionKey = tuple[int, tuple[tuple[int, int], ...]]


def lesion_key(
    voxel_count: int, box: Sequence[slice] | Sequence[Sequence[int]] | None
) -> LesionKey:
    """Key of a lesion from its voxel count and bounding box (slices or ``[first, last]``)."""
    if box is None:
        return (int(voxel_count), ())
    pairs = tuple(
        (int(b.start), int(b.stop) - 1) if isinstance(b, slice) else (int(b[0]), int(b[1]))
        for b in box
    )
    return (int(voxel_count), pairs)


@dataclass(frozen=True)
class LesionMatch:
    """One row of the lesion table: a true positive, false positive or false negative.

    Attributes:
        kind: ``tp``, ``fp`` or ``fn``.
        predicted_id: Component id in the prediction (ordered by decreasing size), or None.
        truth_id: Component id in the truth, or None.
        score: The predicted lesion's score (None for a false negative).
        iou: Overlap of the matched pair (0 for fp/fn).
        true_size: Size of the true lesion (ml in 3D, mm^2 in 2D), None for fp.
        predicted_size: Size of the predicted lesion, None for fn.
        true_diameter_mm: Equivalent-sphere (circle in 2D) diameter of the true lesion.
    """

    kind: str
    predicted_id: int | None
    truth_id: int | None
    score: float | None
    iou: float
    true_size: float | None
    predicted_size: float | None
    true_diameter_mm: float | None


def _components(
    mask: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.integer], list[int], list[tuple[slice, ...]]]:
    """Components relabelled 1..n by decreasing size (ties: first voxel order).

    Returns:
        ``(labels, sizes, boxes)``: the relabelled map, and the voxel count and bounding box
        (one slice per axis) of components 1..n, in that order.
    """
    import cc3d

    labels, count = label_components(mask)
    if count == 0:
        return labels, [], []
    stats = cc3d.statistics(labels)  # index = component: voxel counts and bounding boxes
    sizes = np.asarray(stats["voxel_counts"][1:], dtype=np.int64)
    order = np.argsort(-sizes, kind="stable") + 1
    remap = np.zeros(count + 1, dtype=np.int64)
    remap[order] = np.arange(1, count + 1)
    boxes = [stats["bounding_boxes"][o] for o in order]
    return remap[labels], [int(sizes[o - 1]) for o in order], boxes


def equivalent_diameter_mm(size: float, ndim: int) -> float:
    """Diameter of the sphere (3D, ``size`` in ml) or circle (2D, ``size`` in mm^2)."""
    if ndim == 3:
        return float((6.0 * size * 1000.0 / np.pi) ** (1.0 / 3.0))
    return float(2.0 * np.sqrt(size / np.pi))


def match_lesions(
    predicted: npt.NDArray[np.integer | np.bool_],
    truth: npt.NDArray[np.integer | np.bool_],
    *,
    scores: Mapping[LesionKey, float] | None = None,
    spacing_mm: Sequence[float],
    voxel_measure: float | None = None,
    iou_threshold: float = 0.1,
) -> list[LesionMatch]:
    """Match the lesions of one predicted and one true binary mask.

    Args:
        predicted: Predicted lesion mask ``(x, y[, z])`` (non-zero = lesion).
        truth: True lesion mask, same grid.
        scores: Score per predicted lesion, keyed by :func:`lesion_key` (voxel count and
            bounding box, as ``lesions.json`` gives them); 1.0 when missing.
        spacing_mm: Voxel step along each axis (mm); gives the voxel size when
            ``voxel_measure`` is not given.
        voxel_measure: Size of one voxel: mm^3 for 3D masks, mm^2 for 2D masks, as
            :attr:`medres.io.grid.Grid.voxel_measure` gives it (``|det|`` of the affine, the
            voxel volume ``lesions.json`` uses, right on sheared gantry-tilt grids too).
            Default: the product of ``spacing_mm``, right only for orthogonal axes.
        iou_threshold: Smallest IoU that counts as a detection.

    Returns:
        One :class:`LesionMatch` per predicted and per missed true lesion.
    """
    pred_mask = np.asarray(predicted) != 0
    true_mask = np.asarray(truth) != 0
    ndim = pred_mask.ndim
    if voxel_measure is not None and not 0.0 < voxel_measure < float("inf"):
        raise ValueError(f"voxel_measure must be a positive size (mm^3, mm^2): {voxel_measure}")
    measure = float(np.prod(spacing_mm[:ndim])) if voxel_measure is None else voxel_measure
    voxel = measure / (1000.0 if ndim == 3 else 1.0)
    pred_labels, pred_sizes, boxes = _components(pred_mask)
    true_labels, true_sizes, _ = _components(true_mask)
    lookup = scores or {}
    scores_by_id = {
        p: float(lookup.get(lesion_key(pred_sizes[p - 1], boxes[p - 1]), 1.0))
        for p in range(1, len(pred_sizes) + 1)
    }
    # overlap counts of every (predicted, true) pair, from voxels in both
    both = pred_mask & true_mask
    pairs = np.stack([pred_labels[both], true_labels[both]], axis=1)
    overlap: dict[tuple[int, int], int] = {}
    if len(pairs):
        keys, counts = np.unique(pairs, axis=0, return_counts=True)
        overlap = {(int(p), int(t)): int(c) for (p, t), c in zip(keys, counts, strict=True)}
    candidates: dict[int, list[tuple[float, int]]] = {}
    for (p, t), inter in overlap.items():
        union = pred_sizes[p - 1] + true_sizes[t - 1] - inter
        candidates.setdefault(p, []).append((inter / union, t))
    order = sorted(
        range(1, len(pred_sizes) + 1), key=lambda p: (-scores_by_id[p], -pred_sizes[p - 1])
    )
    taken: set[int] = set()
    matches: list[LesionMatch] = []
    for p in order:
        best = max(
            (
                (iou, t)
                for iou, t in candidates.get(p, [])
                if t not in taken and iou >= iou_threshold
            ),
            default=None,
        )
        size = pred_sizes[p - 1] * voxel
        if best is None:
            matches.append(LesionMatch("fp", p, None, scores_by_id[p], 0.0, None, size, None))
            continue
        iou, t = best
        taken.add(t)
        true_size = true_sizes[t - 1] * voxel
        matches.append(
            LesionMatch(
                "tp",
                p,
                t,
                scores_by_id[p],
                float(iou),
                true_size,
                size,
                equivalent_diameter_mm(true_size, ndim),
            )
        )
    for t in range(1, len(true_sizes) + 1):
        if t not in taken:
            true_size = true_sizes[t - 1] * voxel
            matches.append(
                LesionMatch(
                    "fn",
                    None,
                    t,
                    None,
                    0.0,
                    true_size,
                    None,
                    equivalent_diameter_mm(true_size, ndim),
                )
            )
    matches.sort(key=lambda m: (m.kind != "tp", m.predicted_id or 0, m.truth_id or 0))
    return matches


@dataclass(frozen=True)
class DetectionSummary:
    """Lesion counts over a set of scans and the rates they give."""

    tp: int
    fp: int
    fn: int
    n_scans: int

    @property
    def sensitivity(self) -> float:
        """TP / (TP + FN); 1.0 when there is no true lesion."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 when nothing was predicted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of sensitivity and precision (1.0 with no lesions at all)."""
        if self.tp + self.fp + self.fn == 0:
            return 1.0
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    @property
    def fp_per_scan(self) -> float:
        """False positives per scan."""
        return self.fp / self.n_scans if self.n_scans else 0.0


def summarise(matches: Sequence[LesionMatch], n_scans: int) -> DetectionSummary:
    """Counts of a list of matches."""
    kinds = [m.kind for m in matches]
    return DetectionSummary(kinds.count("tp"), kinds.count("fp"), kinds.count("fn"), n_scans)


def froc(
    matches: Sequence[LesionMatch], n_scans: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """FROC curve: ``(fp_per_scan, sensitivity, threshold)``, thresholds falling.

    The first point (threshold above every score) is (0, 0).
    """
    n_true = sum(m.kind in ("tp", "fn") for m in matches)
    predicted = sorted(
        (
            (m.score if m.score is not None else 1.0, m.kind == "tp")
            for m in matches
            if m.kind != "fn"
        ),
        key=lambda x: -x[0],
    )
    fps, sens, thresholds = [0.0], [0.0], [np.inf]
    tp = fp = 0
    for index, (score, is_tp) in enumerate(predicted):
        tp += is_tp
        fp += not is_tp
        if index + 1 < len(predicted) and predicted[index + 1][0] == score:
            continue  # one point per distinct threshold
        fps.append(fp / max(n_scans, 1))
        sens.append(tp / n_true if n_true else 1.0)
        thresholds.append(score)
    return np.array(fps), np.array(sens), np.array(thresholds, dtype=np.float64)


def cpm(
    fp_per_scan: npt.NDArray[np.float64],
    sensitivity: npt.NDArray[np.float64],
    rates: Sequence[float] = CPM_FP_RATES,
) -> tuple[float, list[float]]:
    """Mean sensitivity at the given FP rates, and the sensitivity at each rate."""
    at_rate = []
    for rate in rates:
        allowed = sensitivity[fp_per_scan <= rate]
        at_rate.append(float(allowed.max()) if allowed.size else 0.0)
    return float(np.mean(at_rate)), at_rate


#: Lesion size bins by equivalent diameter (mm): label -> (low, high].
SIZE_BINS_MM: dict[str, tuple[float, float]] = {
    "< 5 mm": (0.0, 5.0),
    "5-10 mm": (5.0, 10.0),
    "10-20 mm": (10.0, 20.0),
    "> 20 mm": (20.0, float("inf")),
}


def sensitivity_by_size(matches: Sequence[LesionMatch]) -> dict[str, dict[str, float | int]]:
    """Sensitivity of the true lesions in each size bin (equivalent diameter)."""
    out: dict[str, dict[str, float | int]] = {}
    for name, (low, high) in SIZE_BINS_MM.items():
        in_bin = [
            m
            for m in matches
            if m.true_diameter_mm is not None and low < m.true_diameter_mm <= high
        ]
        found = sum(m.kind == "tp" for m in in_bin)
        out[name] = {
            "true_lesions": len(in_bin),
            "detected": found,
            "sensitivity": found / len(in_bin) if in_bin else float("nan"),
        }
    return out


__all__ = [
    "CPM_FP_RATES",
    "DETECTION_METRICS",
    "SIZE_BINS_MM",
    "DetectionSummary",
    "LesionKey",
    "LesionMatch",
    "cpm",
    "equivalent_diameter_mm",
    "froc",
    "lesion_key",
    "match_lesions",
    "sensitivity_by_size",
    "summarise",
]
