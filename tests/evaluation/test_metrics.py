"""Every metric against analytic values, in 2D and 3D with anisotropic spacing, and
against MONAI's own metric functions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)

from medres.evaluation.calibration import ReliabilityBins
from medres.evaluation.detection import (
    cpm,
    froc,
    lesion_key,
    match_lesions,
    sensitivity_by_size,
    summarise,
)
from medres.evaluation.segmentation import overlap_stats, pool_stats, segmentation_metrics
from medres.evaluation.statistics import bootstrap_ci, describe, paired_comparison


def _box(shape: tuple[int, ...], lower: tuple[int, ...], upper: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lower, upper, strict=True))] = True
    return mask


def _ball(shape, spacing, center_mm, radius_mm) -> np.ndarray:
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    return sum((g - c) ** 2 for g, c in zip(grids, center_mm, strict=True)) <= radius_mm**2


def _monai(fn, a: np.ndarray, b: np.ndarray, **kwargs) -> float:
    pred = torch.from_numpy(a[None, None].astype(np.float32))
    true = torch.from_numpy(b[None, None].astype(np.float32))
    with warnings.catch_warnings():  # MONAI warns about its own default argument
        warnings.simplefilter("ignore", FutureWarning)
        return float(fn(pred, true, **kwargs).squeeze())


@pytest.mark.parametrize("spacing", [(2.0, 0.7, 1.3), (0.8, 0.8, 3.0)], ids=["aniso", "thick"])
def test_two_boxes_with_known_overlap(spacing: tuple[float, float, float]) -> None:
    shape = (37, 29, 23)
    a = _box(shape, (5, 5, 5), (15, 15, 15))  # 1000 voxels
    b = _box(shape, (8, 5, 5), (18, 15, 15))  # shifted 3 voxels along x: 700 shared
    metrics = segmentation_metrics(overlap_stats(a, b, spacing_mm=spacing), tolerance_mm=0.5)
    assert metrics["dice"] == pytest.approx(0.7)
    assert metrics["iou"] == pytest.approx(700 / 1300)
    assert metrics["volume_error_abs_ml"] == pytest.approx(0.0)
    stats = overlap_stats(a, b, spacing_mm=spacing)
    # the largest boundary distance is the shift, in mm
    assert max(stats.distances_predicted.max(), stats.distances_true.max()) == pytest.approx(
        3 * spacing[0]
    )
    # HD95, mean surface distance and NSD equal MONAI's own functions
    hd95 = _monai(compute_hausdorff_distance, a, b, percentile=95, spacing=spacing)
    assert metrics["hd95_mm"] == pytest.approx(hd95, rel=1e-6)
    assd = _monai(compute_average_surface_distance, a, b, symmetric=True, spacing=spacing)
    assert metrics["mean_surface_distance_mm"] == pytest.approx(assd, rel=1e-6)
    nsd = _monai(
        compute_surface_dice, a, b, class_thresholds=[0.5], spacing=spacing, include_background=True
    )
    assert metrics["nsd"] == pytest.approx(nsd, rel=1e-6)


def test_shifted_disc_in_2d_and_volume_errors() -> None:
    spacing = (0.5, 1.5)
    shape = (80, 40)
    a = _ball(shape, spacing, (20.0, 30.0), 8.0)
    b = _ball(shape, spacing, (23.0, 30.0), 8.0)  # 3 mm along x (6 pixels)
    stats = overlap_stats(a, b, spacing_mm=spacing)
    assert max(stats.distances_predicted.max(), stats.distances_true.max()) == pytest.approx(3.0)
    metrics = segmentation_metrics(stats, tolerance_mm=3.0)
    assert metrics["nsd"] == pytest.approx(1.0)  # every boundary point within 3 mm
    assert metrics["hd95_mm"] <= 3.0 + 1e-9
    c = _ball(shape, spacing, (20.0, 30.0), 4.0)
    areas = overlap_stats(c, a, spacing_mm=spacing)
    m = segmentation_metrics(areas, tolerance_mm=1.0)
    expected = (np.count_nonzero(a) - np.count_nonzero(c)) * 0.75  # mm^2 in 2D
    assert m["area_error_abs_mm2"] == pytest.approx(expected)
    assert m["volume_error_rel"] == pytest.approx(-expected / (np.count_nonzero(a) * 0.75))


def test_empty_mask_conventions() -> None:
    shape, spacing = (10, 12, 8), (1.0, 2.0, 3.0)
    empty = np.zeros(shape, bool)
    lesion = _box(shape, (2, 2, 2), (5, 5, 5))
    both = segmentation_metrics(overlap_stats(empty, empty, spacing_mm=spacing), tolerance_mm=1)
    assert both == {
        "dice": 1.0,
        "iou": 1.0,
        "hd95_mm": 0.0,
        "mean_surface_distance_mm": 0.0,
        "nsd": 1.0,
        "volume_error_abs_ml": 0.0,
        "area_error_abs_mm2": None,
        "volume_error_rel": 0.0,
    }
    diagonal = math.sqrt(10**2 + 24**2 + 24**2)
    for pred, true in ((empty, lesion), (lesion, empty)):
        m = segmentation_metrics(overlap_stats(pred, true, spacing_mm=spacing), tolerance_mm=1)
        assert (m["dice"], m["iou"], m["nsd"]) == (0.0, 0.0, 0.0)
        assert m["hd95_mm"] == pytest.approx(diagonal)
        assert m["mean_surface_distance_mm"] == pytest.approx(diagonal)
    missed = segmentation_metrics(overlap_stats(empty, lesion, spacing_mm=spacing), tolerance_mm=1)
    assert missed["volume_error_rel"] == pytest.approx(-1.0)
    invented = segmentation_metrics(
        overlap_stats(lesion, empty, spacing_mm=spacing), tolerance_mm=1
    )
    assert math.isnan(invented["volume_error_rel"])


def test_pooling_slices_equals_counting_them_together() -> None:
    spacing = (1.0, 1.0)
    slices = [
        (_box((20, 20), (2, 2), (8, 8)), _box((20, 20), (3, 3), (8, 8))),
        (np.zeros((20, 20), bool), np.zeros((20, 20), bool)),
        (_box((20, 20), (10, 10), (12, 12)), np.zeros((20, 20), bool)),  # a false positive
    ]
    parts = [overlap_stats(p, t, spacing_mm=spacing) for p, t in slices]
    pooled = segmentation_metrics(pool_stats(parts), tolerance_mm=1.0)
    stacked_pred = np.stack([p for p, _ in slices])
    stacked_true = np.stack([t for _, t in slices])
    tp = np.count_nonzero(stacked_pred & stacked_true)
    assert pooled["dice"] == pytest.approx(2 * tp / (stacked_pred.sum() + stacked_true.sum()))
    # the false-positive slice's boundary counts at the diagonal penalty
    assert pooled["hd95_mm"] == pytest.approx(math.sqrt(2) * 20)


def test_lesion_matching_counts_and_iou_threshold() -> None:
    spacing = (1.0, 1.0, 2.0)
    shape = (40, 40, 20)
    truth = np.zeros(shape, np.uint8)
    truth[2:8, 2:8, 2:6] = 1  # A
    truth[20:26, 20:26, 2:6] = 1  # B
    truth[30:32, 2:4, 10:11] = 1  # C (tiny, missed)
    pred = np.zeros(shape, np.uint8)
    pred[3:8, 2:8, 2:6] = 1  # overlaps A well
    pred[20:21, 20:21, 2:3] = 1  # touches B: IoU 1/144
    pred[34:38, 30:34, 14:16] = 1  # nothing there
    matches = match_lesions(pred, truth, spacing_mm=spacing, iou_threshold=0.1)
    counts = summarise(matches, n_cases=1)
    assert (counts.tp, counts.fp, counts.fn) == (1, 2, 2)
    assert counts.sensitivity == pytest.approx(1 / 3) and counts.precision == pytest.approx(1 / 3)
    assert counts.f1 == pytest.approx(1 / 3)
    loose = summarise(match_lesions(pred, truth, spacing_mm=spacing, iou_threshold=0.005), 1)
    assert (loose.tp, loose.fp, loose.fn) == (2, 1, 1)
    tp = next(m for m in matches if m.kind == "tp")
    assert tp.iou == pytest.approx(120 / 144) and tp.true_volume_ml == pytest.approx(0.288)
    by_size = sensitivity_by_size(matches)
    assert by_size["< 5 mm"]["true_lesions"] == 1 and by_size["< 5 mm"]["detected"] == 0
    # scores come from lesions.json entries keyed by voxel count and bounding box
    scored = match_lesions(
        pred, truth, spacing_mm=spacing, scores={lesion_key(120, [(3, 7), (2, 7), (2, 5)]): 0.3}
    )
    assert next(m for m in scored if m.kind == "tp").score == pytest.approx(0.3)


def test_froc_and_cpm_by_hand() -> None:
    from medres.evaluation.detection import LesionMatch

    def m(kind: str, score: float | None) -> LesionMatch:
        return LesionMatch(
            kind=kind,
            predicted_id=1 if kind != "fn" else None,
            truth_id=1 if kind != "fp" else None,
            score=score,
            iou=0.5,
            true_volume_ml=1.0,
            true_area_mm2=None,
            predicted_volume_ml=1.0,
            predicted_area_mm2=None,
            true_diameter_mm=10.0,
        )

    # 4 true lesions in 2 scans: found at scores 0.9 and 0.6, one fp at 0.8, one at 0.3
    matches = [m("tp", 0.9), m("fp", 0.8), m("tp", 0.6), m("fp", 0.3), m("fn", None), m("fn", None)]
    fps, sens, thresholds = froc(matches, n_cases=2)
    np.testing.assert_allclose(fps, [0, 0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(sens, [0, 0.25, 0.25, 0.5, 0.5])
    score, at_rate = cpm(fps, sens)
    assert at_rate == [0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert score == pytest.approx(3.0 / 7.0)
    assert thresholds[1] == pytest.approx(0.9)


def test_calibration_and_statistics() -> None:
    bins = ReliabilityBins(n_bins=4)
    bins.add(np.array([0.1, 0.1, 0.9, 0.9, 0.6]), np.array([0, 1, 1, 1, 0], bool))
    # bins: [0,.25): p 0.1 vs freq 0.5 (2 voxels); [.5,.75): 0.6 vs 0 (1); [.75,1]: 0.9 vs 1 (2)
    assert bins.ece() == pytest.approx((2 * 0.4 + 1 * 0.6 + 2 * 0.1) / 5)
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= low < 2.5 < high <= 4.0
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0]) == (low, high)  # seeded
    d = describe([1.0, float("nan"), 3.0])
    assert (d["mean"], d["median"], d["n"]) == (2.0, 2.0, 2)
    paired = paired_comparison([0.6, 0.7, 0.8, 0.5], [0.7, 0.8, 0.85, 0.7])
    assert paired["mean_difference"] == pytest.approx(-0.1125) and paired["ci_high"] < 0


def _gantry_tilt_affine() -> np.ndarray:
    """Sheared grid: each slice steps 2.5 mm up and 0.9 mm forward (a tilted gantry)."""
    affine = np.eye(4)
    affine[:3, :3] = [[0.8, 0.0, 0.0], [0.0, 0.8, 0.9], [0.0, 0.0, 2.5]]
    affine[:3, 3] = [-20.0, 15.0, 40.0]
    return affine


def test_sheared_grid_sizes_agree_with_lesions_json() -> None:
    """Bug: on a gantry-tilt grid, lesions.json (|det A|) and the evaluation (product of the
    spacings) gave one lesion two volumes. With the grid's voxel volume they agree."""
    from medres.inference.lesions import find_lesions
    from medres.io.grid import Grid

    shape = (17, 15, 9)
    grid = Grid(shape, _gantry_tilt_affine())
    assert grid.voxel_volume_mm3 == pytest.approx(1.6)
    assert float(np.prod(grid.spacing_mm)) == pytest.approx(1.7005, abs=1e-4)  # 6% more
    truth = _box(shape, (3, 2, 1), (9, 8, 6))  # 180 voxels
    predicted = _box(shape, (4, 2, 1), (11, 8, 6))  # 210 voxels, 150 shared
    (lesion,) = find_lesions(predicted.astype(np.uint8), affine=grid.affine)
    assert lesion.volume_ml == pytest.approx(210 * 1.6 / 1000)

    stats = overlap_stats(
        predicted, truth, spacing_mm=grid.spacing_mm, voxel_measure=grid.voxel_measure
    )
    assert stats.predicted_volume_ml == pytest.approx(lesion.volume_ml, abs=1e-5)
    assert stats.true_volume_ml == pytest.approx(180 * 1.6 / 1000)
    metrics = segmentation_metrics(stats, tolerance_mm=1.0)
    assert metrics["volume_error_abs_ml"] == pytest.approx(30 * 1.6 / 1000)
    (match,) = match_lesions(
        predicted, truth, spacing_mm=grid.spacing_mm, voxel_measure=grid.voxel_measure
    )
    assert match.kind == "tp"
    assert match.predicted_volume_ml == pytest.approx(lesion.volume_ml, abs=1e-5)
    assert match.true_volume_ml == pytest.approx(180 * 1.6 / 1000)
    # without the grid's voxel volume the old default (product of spacings) is kept
    plain = overlap_stats(predicted, truth, spacing_mm=grid.spacing_mm)
    assert plain.predicted_volume_ml == pytest.approx(210 * 1.7005 / 1000, abs=1e-5)


def test_sizes_name_their_unit_in_2d_and_3d() -> None:
    """3D grids fill the ``*_volume_ml`` fields, 2D grids the ``*_area_mm2`` ones."""
    flat = _box((20, 16), (2, 2), (6, 5))  # 12 pixels of 0.5 x 1.5 mm
    (match,) = match_lesions(flat, flat, spacing_mm=(0.5, 1.5))
    assert (match.true_area_mm2, match.predicted_area_mm2) == (9.0, 9.0)
    assert (match.true_volume_ml, match.predicted_volume_ml) == (None, None)
    stats = overlap_stats(flat, flat, spacing_mm=(0.5, 1.5))
    assert (stats.true_area_mm2, stats.true_volume_ml) == (9.0, None)
    metrics = segmentation_metrics(stats, tolerance_mm=1.0)
    assert (metrics["area_error_abs_mm2"], metrics["volume_error_abs_ml"]) == (0.0, None)
    pooled = pool_stats([stats, stats])
    assert (pooled.true_area_mm2, pooled.true_volume_ml) == (18.0, None)


def test_match_kind_accepts_plain_strings_and_writes_them() -> None:
    from medres.evaluation.detection import LesionMatch, MatchKind

    fields = {
        "predicted_id": None,
        "truth_id": 1,
        "score": None,
        "iou": 0.0,
        "true_volume_ml": 0.5,
        "true_area_mm2": None,
        "predicted_volume_ml": None,
        "predicted_area_mm2": None,
        "true_diameter_mm": 9.8,
    }
    missed = LesionMatch(kind="fn", **fields)
    assert missed.kind is MatchKind.FN and missed.kind == "fn"
    row = missed.to_row()
    assert type(row["kind"]) is str and row["kind"] == "fn"
    assert list(row)[5:9] == [
        "true_volume_ml",
        "true_area_mm2",
        "predicted_volume_ml",
        "predicted_area_mm2",
    ]
    with pytest.raises(ValueError, match="lesion match kind 'hit': use tp, fp or fn"):
        LesionMatch(kind="hit", **fields)
