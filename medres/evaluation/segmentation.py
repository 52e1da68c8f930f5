"""Segmentation metrics in physical units, from statistics that pool over slices or cases.

For one binary mask pair we keep counts and surface distances (:class:`OverlapStats`);
every metric is computed from those, so a patient stored as 2D slices is scored by
pooling its slices' statistics (the counts add up, the surface distances are
concatenated) exactly as if it were one volume.

Surface distances come from MONAI (``monai.metrics.utils.get_edge_surface_distance``:
boundary voxels of each mask, Euclidean distance transform with the voxel spacing,
computed inside the box around both masks, so a small lesion in a large scan costs
little).

Conventions (both documented in docs/user-guide.md):

* both masks empty: Dice = IoU = NSD = 1, HD95 = mean surface distance = 0, volume (area)
  errors 0;
* exactly one empty: Dice = IoU = NSD = 0 and HD95 = mean surface distance = the
  diagonal of the scan in mm (the largest possible distance; the BraTS convention), so a
  missed or invented lesion is never averaged away as "undefined". When slices are
  pooled, each boundary voxel of a slice whose other mask is empty gets that distance.

Example:
    >>> import numpy as np
    >>> a = np.zeros((10, 10), bool); a[2:6, 2:6] = True
    >>> stats = overlap_stats(a, a, spacing_mm=(1.0, 1.0))
    >>> segmentation_metrics(stats, tolerance_mm=1.0)["dice"]
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

#: Metric names in table order, with their units.
SEGMENTATION_METRICS: dict[str, str] = {
    "dice": "",
    "iou": "",
    "hd95_mm": "mm",
    "mean_surface_distance_mm": "mm",
    "nsd": "",
    "volume_error_abs_ml": "ml",
    "area_error_abs_mm2": "mm^2",
    "volume_error_rel": "",
}


@dataclass
class OverlapStats:
    """Sufficient statistics of one (or several pooled) binary mask pairs.

    Sizes carry their unit in their name, as :class:`medres.inference.lesions.Lesion`'s
    do: the ``*_volume_ml`` fields are set for 3D masks and the ``*_area_mm2`` ones for 2D
    masks; the others stay None.

    Attributes:
        tp: Voxels in both masks. fp: only predicted. fn: only true.
        predicted_volume_ml: Predicted volume in ml (3D masks, else None).
        predicted_area_mm2: Predicted area in mm^2 (2D masks, else None).
        true_volume_ml: True volume in ml (3D masks, else None).
        true_area_mm2: True area in mm^2 (2D masks, else None).
        distances_predicted: Distance (mm) of every predicted boundary voxel to the true
            boundary. distances_true: the other way round.
        diagonal_mm: Largest distance in the scan (the penalty for an empty mask).
        parts: How many mask pairs were pooled. one_empty_parts: of them, with one empty.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    predicted_volume_ml: float | None = None
    predicted_area_mm2: float | None = None
    true_volume_ml: float | None = None
    true_area_mm2: float | None = None
    distances_predicted: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.zeros(0, np.float64)
    )
    distances_true: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, np.float64))
    diagonal_mm: float = 0.0
    parts: int = 1
    one_empty_parts: int = 0


def _sum_or_none(values: Sequence[float | None]) -> float | None:
    """Sum of the values that are set; None when none is."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _diagonal_mm(shape: Sequence[int], spacing_mm: Sequence[float]) -> float:
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing_mm, strict=True))))


def overlap_stats(
    predicted: npt.NDArray[np.bool_],
    truth: npt.NDArray[np.bool_],
    *,
    spacing_mm: Sequence[float],
    voxel_measure: float | None = None,
) -> OverlapStats:
    """Counts and surface distances of one binary mask pair on one grid.

    Args:
        predicted: Predicted mask ``(x, y[, z])``.
        truth: True mask, same shape.
        spacing_mm: Voxel step along each axis (mm), for the surface distances; also the
            voxel size when ``voxel_measure`` is not given.
        voxel_measure: Size of one voxel for the volumes: mm^3 for 3D masks, mm^2 for 2D
            masks, as :attr:`medres.io.grid.Grid.voxel_measure` gives it (``|det|`` of the
            affine, the voxel volume ``lesions.json`` uses, right on sheared gantry-tilt
            grids too). Default: the product of ``spacing_mm``, right only for orthogonal
            axes.
    """
    import warnings

    import torch
    from monai.metrics.utils import get_edge_surface_distance

    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} vs {truth.shape}")
    spacing = tuple(float(s) for s in spacing_mm[: predicted.ndim])
    if voxel_measure is not None and not 0.0 < voxel_measure < float("inf"):
        raise ValueError(f"voxel_measure must be a positive size (mm^3, mm^2): {voxel_measure}")
    voxel = float(np.prod(spacing)) if voxel_measure is None else float(voxel_measure)
    in_3d = predicted.ndim == 3
    unit = 1000.0 if in_3d else 1.0  # ml in 3D, mm^2 in 2D
    tp = int(np.count_nonzero(predicted & truth))
    n_pred = int(np.count_nonzero(predicted))
    n_true = int(np.count_nonzero(truth))
    predicted_size, true_size = n_pred * voxel / unit, n_true * voxel / unit
    stats = OverlapStats(
        tp=tp,
        fp=n_pred - tp,
        fn=n_true - tp,
        predicted_volume_ml=predicted_size if in_3d else None,
        predicted_area_mm2=None if in_3d else predicted_size,
        true_volume_ml=true_size if in_3d else None,
        true_area_mm2=None if in_3d else true_size,
        diagonal_mm=_diagonal_mm(predicted.shape, spacing),
        one_empty_parts=int((n_pred == 0) != (n_true == 0)),
    )
    if (n_pred == 0) != (n_true == 0):  # a boundary with no counterpart: the penalty
        from monai.metrics.utils import get_mask_edges

        with warnings.catch_warnings():  # MONAI warns about its own default argument
            warnings.simplefilter("ignore", FutureWarning)
            edges_pred, edges_true = get_mask_edges(
                torch.from_numpy(predicted), torch.from_numpy(truth), crop=True
            )[:2]
        penalty = stats.diagonal_mm
        stats.distances_predicted = np.full(int(edges_pred.sum()), penalty)
        stats.distances_true = np.full(int(edges_true.sum()), penalty)
    elif n_pred and n_true:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _, distances, _ = get_edge_surface_distance(
                torch.from_numpy(predicted),
                torch.from_numpy(truth),
                distance_metric="euclidean",
                spacing=spacing,
                symmetric=True,
                warn_empty=False,
            )
        stats.distances_predicted = distances[0].double().numpy()
        stats.distances_true = distances[1].double().numpy()
    return stats


def pool_stats(parts: Sequence[OverlapStats]) -> OverlapStats:
    """Statistics of several parts (the slices of one patient) as one case."""
    if not parts:
        return OverlapStats(parts=0)
    return OverlapStats(
        tp=sum(p.tp for p in parts),
        fp=sum(p.fp for p in parts),
        fn=sum(p.fn for p in parts),
        predicted_volume_ml=_sum_or_none([p.predicted_volume_ml for p in parts]),
        predicted_area_mm2=_sum_or_none([p.predicted_area_mm2 for p in parts]),
        true_volume_ml=_sum_or_none([p.true_volume_ml for p in parts]),
        true_area_mm2=_sum_or_none([p.true_area_mm2 for p in parts]),
        distances_predicted=np.concatenate([p.distances_predicted for p in parts]),
        distances_true=np.concatenate([p.distances_true for p in parts]),
        diagonal_mm=max(p.diagonal_mm for p in parts),
        parts=sum(p.parts for p in parts),
        one_empty_parts=sum(p.one_empty_parts for p in parts),
    )


def _size_errors(stats: OverlapStats) -> dict[str, float | None]:
    """Absolute volume (3D) or area (2D) error, and the signed error over the true size.

    The relative error is NaN when the truth is empty; the absolute error of the other
    dimension is None.
    """
    errors: dict[str, float | None] = {"volume_error_abs_ml": None, "area_error_abs_mm2": None}
    relative = float("nan")
    for key, predicted, true in (
        ("area_error_abs_mm2", stats.predicted_area_mm2, stats.true_area_mm2),
        ("volume_error_abs_ml", stats.predicted_volume_ml, stats.true_volume_ml),
    ):
        if predicted is None or true is None:
            continue
        error = predicted - true
        errors[key] = float(abs(error))
        relative = float(error / true) if true > 0 else float("nan")
    return {**errors, "volume_error_rel": relative}


def segmentation_metrics(stats: OverlapStats, *, tolerance_mm: float) -> dict[str, float | None]:
    """Dice, IoU, HD95, mean surface distance, NSD and volume errors of pooled statistics.

    Surface metrics pool the boundary distances of every part. A boundary voxel of a part
    where the other mask is empty has no counterpart: its distance is the scan's diagonal
    (so it counts against HD95, the mean surface distance and NSD; see the module
    conventions).

    Returns:
        The figures of :data:`SEGMENTATION_METRICS`, in its order. The absolute size error
        is ``volume_error_abs_ml`` for 3D masks and ``area_error_abs_mm2`` for 2D masks,
        the other one None; ``volume_error_rel`` is NaN when the truth is empty.
    """
    n_pred = stats.tp + stats.fp
    n_true = stats.tp + stats.fn
    if n_pred == 0 and n_true == 0:
        sizes = _size_errors(stats)
        return {
            "dice": 1.0,
            "iou": 1.0,
            "hd95_mm": 0.0,
            "mean_surface_distance_mm": 0.0,
            "nsd": 1.0,
            "volume_error_abs_ml": sizes["volume_error_abs_ml"],
            "area_error_abs_mm2": sizes["area_error_abs_mm2"],
            "volume_error_rel": 0.0,
        }
    dice = 2.0 * stats.tp / (n_pred + n_true)
    iou = stats.tp / (stats.tp + stats.fp + stats.fn)
    both = np.concatenate([stats.distances_predicted, stats.distances_true])
    hd95 = max(
        float(np.percentile(stats.distances_predicted, 95))
        if stats.distances_predicted.size
        else 0.0,
        float(np.percentile(stats.distances_true, 95)) if stats.distances_true.size else 0.0,
    )
    msd = float(both.mean()) if both.size else 0.0
    nsd = float(np.count_nonzero(both <= tolerance_mm) / both.size) if both.size else 1.0
    return {
        "dice": float(dice),
        "iou": float(iou),
        "hd95_mm": float(hd95),
        "mean_surface_distance_mm": float(msd),
        "nsd": float(nsd),
        **_size_errors(stats),
    }


def metric_units() -> dict[str, Any]:
    """Units of :data:`SEGMENTATION_METRICS` (for tables)."""
    return dict(SEGMENTATION_METRICS)


__all__ = [
    "SEGMENTATION_METRICS",
    "OverlapStats",
    "metric_units",
    "overlap_stats",
    "pool_stats",
    "segmentation_metrics",
]
