"""Lesion-level detection: match predicted and true lesions, count, FROC and CPM.

Lesions are face-connected components (as ``medres predict`` finds them). A predicted
lesion matches a true one when their overlap (IoU of the two components) reaches
``iou_threshold``; matching is greedy, predicted lesions by decreasing score, each taking
the unmatched true lesion it overlaps most. Every true lesion is matched at most once:
an unmatched prediction is a false positive, an unmatched truth a false negative.

FROC: sensitivity against false positives per case (a case is a scan, or several scans
pooled, such as the slices of one patient) as the score threshold falls; the CPM
(competition performance metric, LUNA16) is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2,
4 and 8 false positives per case, each read off the curve at the highest sensitivity
reached without exceeding that FP rate.

Example:
    >>> import numpy as np
    >>> truth = np.zeros((20, 20), np.uint8); truth[2:6, 2:6] = 1
    >>> pred = truth.copy(); pred[12:14, 12:14] = 1
    >>> [(str(m.kind), m.truth_id) for m in match_lesions(pred, truth,
    ...  spacing_mm=(1.0, 1.0), iou_threshold=0.1)]
    [('tp', 1), ('fp', None)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.inference.postprocess import label_components
from medres.types import StrEnum

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


class MatchKind(StrEnum):
    """What one row of the lesion table is."""

    TP = "tp"  #: a predicted lesion that found a true one (true positive)
    FP = "fp"  #: a predicted lesion that found none (false positive)
    FN = "fn"  #: a true lesion that no prediction found (false negative)


@dataclass(frozen=True)
class LesionMatch:
    """One row of the lesion table: a true positive, false positive or false negative.

    Sizes carry their unit in their name, as :class:`medres.inference.lesions.Lesion`'s
    do: on 3D grids the ``*_volume_ml`` fields are set and the ``*_area_mm2`` ones are
    None, on 2D grids the other way round.

    Attributes:
        kind: ``tp``, ``fp`` or ``fn`` (a plain string is converted to :class:`MatchKind`).
        predicted_id: Component id in the prediction (ordered by decreasing size), or None.
        truth_id: Component id in the truth, or None.
        score: The predicted lesion's score (None for a false negative).
        iou: Overlap of the matched pair (0 for fp/fn).
        true_volume_ml: Volume of the true lesion in ml (3D), None for fp and in 2D.
        true_area_mm2: Area of the true lesion in mm^2 (2D), None for fp and in 3D.
        predicted_volume_ml: Volume of the predicted lesion in ml (3D), None for fn and in 2D.
        predicted_area_mm2: Area of the predicted lesion in mm^2 (2D), None for fn and in 3D.
        true_diameter_mm: Equivalent-sphere (circle in 2D) diameter of the true lesion.

    Raises:
        ValueError: ``kind`` is not ``tp``, ``fp`` or ``fn``.
    """

    kind: MatchKind | str
    predicted_id: int | None
    truth_id: int | None
    score: float | None
    iou: float
    true_volume_ml: float | None
    true_area_mm2: float | None
    predicted_volume_ml: float | None
    predicted_area_mm2: float | None
    true_diameter_mm: float | None

    def __post_init__(self) -> None:
        if self.kind not in {k.value for k in MatchKind}:
            raise ValueError(f"lesion match kind {self.kind!r}: use tp, fp or fn")
        object.__setattr__(self, "kind", MatchKind(self.kind))

    def to_row(self) -> dict[str, Any]:
        """The match as a ``lesions.csv`` row: field name -> value, ``kind`` a plain string."""
        return {**asdict(self), "kind": MatchKind(self.kind).value}


def _components(
    mask: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.integer], list[int], list[tuple[slice, ...]]]:
    """Components relabelled 1..n by decreasing size (ties: first voxel order).

    Returns:
        ``(label_map, sizes, boxes)``: the relabelled map, and the voxel count and bounding
        box (one slice per axis) of components 1..n, in that order.
    """
    import cc3d

    label_map, count = label_components(mask)
    if count == 0:
        return label_map, [], []
    stats = cc3d.statistics(label_map)  # index = component: voxel counts and bounding boxes
    sizes = np.asarray(stats["voxel_counts"][1:], dtype=np.int64)
    order = np.argsort(-sizes, kind="stable") + 1
    remap = np.zeros(count + 1, dtype=np.int64)
    remap[order] = np.arange(1, count + 1)
    boxes = [stats["bounding_boxes"][o] for o in order]
    return remap[label_map], [int(sizes[o - 1]) for o in order], boxes


def equivalent_diameter_mm(size: float, ndim: int) -> float:
    """Diameter of the sphere (3D, ``size`` in ml) or circle (2D, ``size`` in mm^2)."""
    if ndim == 3:
        return float((6.0 * size * 1000.0 / np.pi) ** (1.0 / 3.0))
    return float(2.0 * np.sqrt(size / np.pi))


def _voxel_size(spacing_mm: Sequence[float], voxel_measure: float | None, ndim: int) -> float:
    """Size of one voxel in the unit of the lesion sizes: ml in 3D, mm^2 in 2D."""
    if voxel_measure is not None and not 0.0 < voxel_measure < float("inf"):
        raise ValueError(f"voxel_measure must be a positive size (mm^3, mm^2): {voxel_measure}")
    measure = float(np.prod(spacing_mm[:ndim])) if voxel_measure is None else voxel_measure
    return measure / (1000.0 if ndim == 3 else 1.0)


def _candidates(
    pred_map: npt.NDArray[np.integer],
    true_map: npt.NDArray[np.integer],
    both: npt.NDArray[np.bool_],
    sizes: tuple[Sequence[int], Sequence[int]],
) -> dict[int, list[tuple[float, int]]]:
    """Predicted id -> ``(iou, true id)`` of every true lesion it overlaps.

    Args:
        pred_map: Predicted components (ids 1..n). true_map: true components, same grid.
        both: Voxels in both masks.
        sizes: Voxel counts of the predicted and of the true components, by id - 1.
    """
    pred_sizes, true_sizes = sizes
    # overlap counts of every (predicted, true) pair, from voxels in both
    pairs = np.stack([pred_map[both], true_map[both]], axis=1)
    overlap: dict[tuple[int, int], int] = {}
    if len(pairs):
        keys, counts = np.unique(pairs, axis=0, return_counts=True)
        overlap = {(int(p), int(t)): int(c) for (p, t), c in zip(keys, counts, strict=True)}
    candidates: dict[int, list[tuple[float, int]]] = {}
    for (p, t), inter in overlap.items():
        union = pred_sizes[p - 1] + true_sizes[t - 1] - inter
        candidates.setdefault(p, []).append((inter / union, t))
    return candidates


def greedy_pairs(
    order: Sequence[int],
    candidates: Mapping[int, Sequence[tuple[float, int]]],
    iou_threshold: float,
) -> dict[int, tuple[float, int]]:
    """Predicted id -> ``(iou, true id)``: in ``order``, each prediction takes the
    unmatched true lesion it overlaps most (at least ``iou_threshold``)."""
    taken: set[int] = set()
    pairs: dict[int, tuple[float, int]] = {}
    for p in order:
        best = max(
            (
                (iou, t)
                for iou, t in candidates.get(p, [])
                if t not in taken and iou >= iou_threshold
            ),
            default=None,
        )
        if best is not None:
            taken.add(best[1])
            pairs[p] = best
    return pairs


def sized_match(
    kind: MatchKind,
    ids: tuple[int | None, int | None],
    score: float | None,
    iou: float,
    sizes: tuple[float | None, float | None],
    ndim: int,
) -> LesionMatch:
    """A match from ``(predicted, true)`` ids and sizes in ml (3D) or mm^2 (2D)."""
    predicted_size, true_size = sizes
    in_3d = ndim == 3
    return LesionMatch(
        kind=kind,
        predicted_id=ids[0],
        truth_id=ids[1],
        score=score,
        iou=iou,
        true_volume_ml=true_size if in_3d else None,
        true_area_mm2=None if in_3d else true_size,
        predicted_volume_ml=predicted_size if in_3d else None,
        predicted_area_mm2=None if in_3d else predicted_size,
        true_diameter_mm=None if true_size is None else equivalent_diameter_mm(true_size, ndim),
    )


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
        One :class:`LesionMatch` per predicted and per missed true lesion: true positives
        first, then by predicted id, then by true id.

    Raises:
        ValueError: ``voxel_measure`` is not a positive finite size.
    """
    pred_mask = np.asarray(predicted) != 0
    true_mask = np.asarray(truth) != 0
    ndim = pred_mask.ndim
    voxel = _voxel_size(spacing_mm, voxel_measure, ndim)
    pred_map, pred_sizes, boxes = _components(pred_mask)
    true_map, true_sizes, _ = _components(true_mask)
    lookup = scores or {}
    scores_by_id = {
        p: float(lookup.get(lesion_key(pred_sizes[p - 1], boxes[p - 1]), 1.0))
        for p in range(1, len(pred_sizes) + 1)
    }
    order = sorted(
        range(1, len(pred_sizes) + 1), key=lambda p: (-scores_by_id[p], -pred_sizes[p - 1])
    )
    candidates = _candidates(pred_map, true_map, pred_mask & true_mask, (pred_sizes, true_sizes))
    pairs = greedy_pairs(order, candidates, iou_threshold)
    matches: list[LesionMatch] = []
    for p in order:
        size = pred_sizes[p - 1] * voxel
        if p not in pairs:
            matches.append(
                sized_match(MatchKind.FP, (p, None), scores_by_id[p], 0.0, (size, None), ndim)
            )
            continue
        iou, t = pairs[p]
        true_size = true_sizes[t - 1] * voxel
        matches.append(
            sized_match(MatchKind.TP, (p, t), scores_by_id[p], float(iou), (size, true_size), ndim)
        )
    found = {t for _, t in pairs.values()}
    for t in range(1, len(true_sizes) + 1):
        if t not in found:
            true_size = true_sizes[t - 1] * voxel
            matches.append(sized_match(MatchKind.FN, (None, t), None, 0.0, (None, true_size), ndim))
    matches.sort(key=lambda m: (m.kind != MatchKind.TP, m.predicted_id or 0, m.truth_id or 0))
    return matches


@dataclass(frozen=True)
class DetectionSummary:
    """Lesion counts over a set of cases and the rates they give."""

    tp: int
    fp: int
    fn: int
    n_cases: int

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
    def fp_per_case(self) -> float:
        """False positives per case."""
        return self.fp / self.n_cases if self.n_cases else 0.0


def summarise(matches: Sequence[LesionMatch], n_cases: int) -> DetectionSummary:
    """Counts of a list of matches over ``n_cases`` cases."""
    kinds = [m.kind for m in matches]
    return DetectionSummary(
        kinds.count(MatchKind.TP), kinds.count(MatchKind.FP), kinds.count(MatchKind.FN), n_cases
    )


def froc(
    matches: Sequence[LesionMatch], n_cases: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """FROC curve over ``n_cases`` cases: ``(fp_per_case, sensitivity, threshold)``,
    thresholds falling.

    The first point (threshold above every score) is (0, 0).
    """
    n_true = sum(m.kind in (MatchKind.TP, MatchKind.FN) for m in matches)
    predicted = sorted(
        (
            (m.score if m.score is not None else 1.0, m.kind == MatchKind.TP)
            for m in matches
            if m.kind != MatchKind.FN
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
        fps.append(fp / max(n_cases, 1))
        sens.append(tp / n_true if n_true else 1.0)
        thresholds.append(score)
    return np.array(fps), np.array(sens), np.array(thresholds, dtype=np.float64)


def cpm(
    fp_per_case: npt.NDArray[np.float64],
    sensitivity: npt.NDArray[np.float64],
    rates: Sequence[float] = CPM_FP_RATES,
) -> tuple[float, list[float]]:
    """Mean sensitivity at the given FP rates (false positives per case), and the
    sensitivity at each rate."""
    at_rate = []
    for rate in rates:
        allowed = sensitivity[fp_per_case <= rate]
        at_rate.append(float(allowed.max()) if allowed.size else 0.0)
    return float(np.mean(at_rate)), at_rate


#: Lesion size bins by equivalent diameter (mm): label -> (low, high].
SIZE_BINS_MM: dict[str, tuple[float, float]] = {
    "< 5 mm": (0.0, 5.0),
    "5-10 mm": (5.0, 10.0),
    "10-20 mm": (10.0, 20.0),
    "> 20 mm": (20.0, float("inf")),
}


#: The bins of images measured in pixels (equivalent diameter in px).
SIZE_BINS_PX: dict[str, tuple[float, float]] = {
    "< 10 px": (0.0, 10.0),
    "10-30 px": (10.0, 30.0),
    "30-100 px": (30.0, 100.0),
    "> 100 px": (100.0, float("inf")),
}


def size_bins(length_unit: str = "mm") -> dict[str, tuple[float, float]]:
    """The lesion size bins (equivalent diameter) of scans measured in ``length_unit``."""
    return SIZE_BINS_PX if length_unit == "px" else SIZE_BINS_MM


def sensitivity_by_size(
    matches: Sequence[LesionMatch], length_unit: str = "mm"
) -> dict[str, dict[str, float | int]]:
    """Sensitivity of the true lesions in each size bin (equivalent diameter, in the
    scans' ``length_unit``: :func:`size_bins`)."""
    out: dict[str, dict[str, float | int]] = {}
    for name, (low, high) in size_bins(length_unit).items():
        in_bin = [
            m
            for m in matches
            if m.true_diameter_mm is not None and low < m.true_diameter_mm <= high
        ]
        found = sum(m.kind == MatchKind.TP for m in in_bin)
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
    "SIZE_BINS_PX",
    "DetectionSummary",
    "LesionKey",
    "LesionMatch",
    "MatchKind",
    "cpm",
    "equivalent_diameter_mm",
    "froc",
    "greedy_pairs",
    "lesion_key",
    "match_lesions",
    "sensitivity_by_size",
    "size_bins",
    "sized_match",
    "summarise",
]
