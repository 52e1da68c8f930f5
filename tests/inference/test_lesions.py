"""Lesion measurements on synthetic spheres and discs of known size, anisotropic grids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medres.inference.lesions import find_lesions, slice_axis
from tests.conftest import oblique_affine


def _sphere(shape, spacing, center_mm, radius_mm):
    grid = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center_mm, strict=True))
    return (dist2 <= radius_mm**2).astype(np.uint8)


@pytest.mark.parametrize(
    "spacing", [(0.8, 0.8, 2.5), (0.7, 1.1, 1.5)], ids=["thick-slices", "anisotropic"]
)
def test_sphere_volume_and_diameter(spacing) -> None:
    radius = 10.0
    shape = (61, 47, 23)
    center = (24.0, 26.0, 16.0)
    labels = _sphere(shape, spacing, center, radius)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    (lesion,) = find_lesions(labels, affine=affine, label_name="tumour")
    assert lesion.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.05)
    assert lesion.area_mm2 is None
    assert abs(lesion.longest_axial_diameter_mm - 2 * radius) <= max(spacing[:2])
    expected_center = np.array(center) / np.array(spacing)
    np.testing.assert_allclose(lesion.center_ijk, expected_center, atol=0.5)
    np.testing.assert_allclose(lesion.center_ras_mm, np.add(center, [-10.0, 5.0, 30.0]), atol=0.6)
    assert lesion.axial_slice is not None
    assert abs(lesion.axial_slice * spacing[2] - center[2]) <= spacing[2]


def test_discs_in_2d_sorted_by_size_with_scores() -> None:
    spacing = (0.6, 0.9)
    labels = _sphere((90, 70), spacing, (15.0, 20.0), 6.0) + _sphere(
        (90, 70), spacing, (38.0, 40.0), 9.0
    )
    affine = np.diag([*spacing, 1.0, 1.0])
    prob = labels * 0.8 + 0.1
    # members 0 and 2 found the big disc, member 1 nothing; the small one only member 2
    small_disc = _sphere((90, 70), spacing, (15.0, 20.0), 6.0).astype(bool)
    hits = np.where(labels > 0, 0b101, 0).astype(np.uint8)
    hits[small_disc] = 0b100
    spread = (labels * np.std([0.9, 0.0, 0.7])).astype(np.float16)
    big, small = find_lesions(
        labels,
        affine=affine,
        probabilities=prob,
        member_hits=hits,
        n_members=3,
        uncertainty=spread,
    )
    assert (big.lesion_id, small.lesion_id) == (1, 2)
    assert big.area_mm2 == pytest.approx(math.pi * 9.0**2, rel=0.05)
    assert small.area_mm2 == pytest.approx(math.pi * 6.0**2, rel=0.05)
    assert abs(big.longest_axial_diameter_mm - 18.0) <= 0.9
    assert big.volume_ml is None and big.axial_slice is None
    assert big.max_probability == pytest.approx(0.9) and big.mean_probability == pytest.approx(0.9)
    assert (big.members_detecting, big.n_members) == (2, 3)
    assert (small.members_detecting, small.n_members) == (1, 3)
    assert big.uncertainty == pytest.approx(np.std([0.9, 0.0, 0.7]), abs=1e-3)
    with pytest.raises(ValueError, match="n_members"):
        find_lesions(labels, affine=affine, member_hits=hits)


def test_known_count_min_size_and_oblique_axis() -> None:
    labels = np.zeros((30, 20, 10), np.uint8)
    labels[2:6, 2:6, 2:6] = 1  # 64 voxels
    labels[10:12, 10:12, 2:4] = 1  # 8 voxels
    labels[20, 15, 8] = 1  # 1 voxel
    labels[25:28, 2:4, 1:2] = 2  # another label
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm^3 voxels
    assert len(find_lesions(labels, affine=affine)) == 3
    kept = find_lesions(labels, affine=affine, min_size=60.0)  # drops the 8 mm^3 voxel
    assert [x.voxel_count for x in kept] == [64, 8]
    assert kept[0].bbox_ijk == ((2, 5), (2, 5), (2, 5))
    assert find_lesions(labels, affine=affine, label_index=2)[0].voxel_count == 6
    assert find_lesions(np.zeros((4, 4, 4), np.uint8), affine=affine) == []
    # the slice axis follows the patient's superior-inferior direction, whatever the order
    sagittal = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    assert slice_axis(sagittal, 3) == 0 and slice_axis(oblique_affine((1, 1, 3)), 3) == 2


def test_small_lesion_removal_measures_a_sheared_grid_by_its_determinant() -> None:
    """Gantry tilt: the spacing product overstates the voxel (|det| is the true size)."""
    from medres.inference.postprocess import remove_small_lesions
    from medres.io.grid import Grid

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[1, 2] = 1.5  # slice steps tilted: column norm 2.5 mm, |det| 2 mm^3
    labels = np.zeros((9, 8, 7), np.uint8)
    labels[2:4, 2:4, 2:4] = 1  # 8 voxels: 16 mm^3 by |det|, 20 mm^3 by the spacing product
    grid = Grid(labels.shape, affine)
    assert grid.voxel_measure == pytest.approx(2.0)
    assert float(np.prod(grid.spacing_mm)) == pytest.approx(2.5)
    kept = remove_small_lesions(
        labels, voxel_measure=grid.voxel_measure, min_size=18.0, lesion_indices=(1,)
    )
    assert kept.sum() == 0  # 16 mm^3 < 18 mm^3, as find_lesions measures it
    (lesion,) = find_lesions(labels, affine=affine)
    assert lesion.volume_ml == pytest.approx(0.016)


def test_in_plane_diameter_equals_the_brute_force_farthest_pair() -> None:
    """Only each row's end voxels are compared; the answer is that of every voxel pair."""
    from medres.inference.lesions import _in_plane_diameter

    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = (int(rng.integers(9, 50)), int(rng.integers(9, 50)))
        ij = np.argwhere(rng.random(shape) < rng.uniform(0.2, 0.9)).astype(np.int64)
        columns = rng.normal(size=(3, 2))  # any sheared, anisotropic in-plane axes
        mm = ij.astype(np.float64) @ columns.T
        basis, _ = np.linalg.qr(columns)
        planar = mm @ basis
        dist = np.sqrt(((planar[:, None] - planar[None]) ** 2).sum(-1))
        a, b = np.unravel_index(int(np.argmax(dist)), dist.shape)
        direction = (planar[a] - planar[b]) / dist[a, b]
        extent = float(np.abs(np.abs(columns.T @ basis) @ direction).max())
        assert _in_plane_diameter(ij, columns) == pytest.approx(dist[a, b] + extent, rel=1e-9)
