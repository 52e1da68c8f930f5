"""The Grid type: spacing, |det| voxel volume, voxel <-> world, same_grid, single-slice rule.

Odd anisotropic shapes and spacings throughout, so an axis-order bug fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from medres.io.grid import (
    GRID_TOLERANCE_MM,
    Grid,
    is_single_slice,
    squeeze_single_slice_array,
    squeeze_single_slice_shape,
    squeeze_single_slice_volume,
    voxel_to_world,
    world_to_voxel,
)
from medres.io.volume import Volume
from tests.conftest import oblique_affine

SHAPE = (17, 15, 9)
SPACING = (2.5, 0.8, 0.8)


def _anisotropic() -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-20.0, 31.5, 7.25]
    return affine


def _gantry_tilt(tilt_deg: float = 20.0) -> np.ndarray:
    """Axial slices 2.5 mm apart, each shifted along y by the tilt: columns not orthogonal."""
    affine = np.eye(4)
    step = 2.5
    affine[:3, 0] = [0.7, 0.0, 0.0]
    affine[:3, 1] = [0.0, 0.9, 0.0]
    affine[:3, 2] = [0.0, step * np.tan(np.radians(tilt_deg)), step]
    affine[:3, 3] = [-120.0, 80.0, -35.0]
    return affine


AFFINES = {
    "anisotropic": _anisotropic(),
    "oblique": oblique_affine(SPACING),
    "gantry-tilt": _gantry_tilt(),
}


def test_spacing_and_voxel_volume_of_an_anisotropic_grid() -> None:
    grid = Grid(SHAPE, _anisotropic())
    assert grid.shape == SHAPE and grid.ndim == 3
    assert grid.spacing_mm == pytest.approx(SPACING)
    assert grid.voxel_volume_mm3 == pytest.approx(2.5 * 0.8 * 0.8)
    assert grid.voxel_measure == grid.voxel_volume_mm3


def test_voxel_volume_of_a_sheared_grid_is_the_determinant() -> None:
    grid = Grid(SHAPE, _gantry_tilt(20.0))
    # the slice step is longer than the slice spacing: the spacing product overstates
    assert grid.spacing_mm[2] == pytest.approx(2.5 / np.cos(np.radians(20.0)))
    assert grid.voxel_volume_mm3 == pytest.approx(0.7 * 0.9 * 2.5)
    assert float(np.prod(grid.spacing_mm)) > grid.voxel_volume_mm3 * 1.06


def test_oblique_grid_keeps_its_spacing_and_volume() -> None:
    grid = Grid(SHAPE, oblique_affine(SPACING))
    assert grid.spacing_mm == pytest.approx(SPACING)
    assert grid.voxel_volume_mm3 == pytest.approx(np.prod(SPACING))


def test_of_volume() -> None:
    volume = Volume(np.zeros((2, *SHAPE), np.float32), _anisotropic())
    grid = Grid.of(volume)
    assert grid.shape == SHAPE
    np.testing.assert_array_equal(grid.affine, volume.affine)
    assert grid.spacing_mm == pytest.approx(volume.spacing_mm)


def test_grid_affine_is_a_read_only_copy() -> None:
    affine = _anisotropic()
    grid = Grid(SHAPE, affine)
    affine[0, 3] = 99.0
    assert grid.affine[0, 3] == -20.0
    with pytest.raises(ValueError, match="read-only"):
        grid.affine[0, 0] = 1.0


@pytest.mark.parametrize("name", list(AFFINES), ids=list(AFFINES))
def test_voxel_world_round_trip(name: str) -> None:
    grid = Grid(SHAPE, AFFINES[name])
    rng = np.random.default_rng(0)
    ijk = rng.uniform(-0.5, np.array(SHAPE) - 0.5, size=(50, 3))
    world = grid.voxel_to_world(ijk)
    assert world.shape == (50, 3)
    np.testing.assert_allclose(grid.world_to_voxel(world), ijk, atol=1e-9)
    # one point as (3,), many as (N, 3), a batch as (A, B, 3)
    assert grid.voxel_to_world(ijk[0]).shape == (3,)
    np.testing.assert_allclose(grid.voxel_to_world(ijk.reshape(5, 10, 3)).reshape(50, 3), world)
    # the module functions are the Grid's maths
    np.testing.assert_array_equal(voxel_to_world(grid.affine, ijk), world)
    np.testing.assert_allclose(world_to_voxel(grid.affine, world), ijk, atol=1e-9)


def test_voxel_to_world_follows_the_affine_columns() -> None:
    grid = Grid(SHAPE, _gantry_tilt(20.0))
    origin = grid.voxel_to_world([0, 0, 0])
    np.testing.assert_allclose(origin, [-120.0, 80.0, -35.0])
    np.testing.assert_allclose(grid.voxel_to_world([16, 0, 0]) - origin, [16 * 0.7, 0, 0])
    np.testing.assert_allclose(grid.voxel_to_world([0, 14, 0]) - origin, [0, 14 * 0.9, 0])
    shift = 2.5 * np.tan(np.radians(20.0))
    np.testing.assert_allclose(grid.voxel_to_world([0, 0, 8]) - origin, [0, 8 * shift, 8 * 2.5])
    np.testing.assert_allclose(
        voxel_to_world(grid.affine, [0, 0, 8]), origin + np.array([0, 8 * shift, 20])
    )


def test_points_need_one_coordinate_per_axis() -> None:
    grid = Grid(SHAPE, _anisotropic())
    with pytest.raises(
        ValueError, match=r"3 coordinates along their last axis; got shape \(4, 2\)"
    ):
        grid.voxel_to_world(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"2 coordinates along their last axis"):
        Grid((17, 15), _anisotropic()).voxel_to_world([1.0, 2.0, 3.0])


def test_2d_grid_pixel_area_and_mapping() -> None:
    affine = np.diag([0.8, 0.7, 1.0, 1.0])
    affine[:3, 3] = [5.0, -3.0, 12.0]
    grid = Grid((17, 15), affine)
    assert grid.ndim == 2
    assert grid.spacing_mm == pytest.approx((0.8, 0.7))
    assert grid.pixel_area_mm2 == pytest.approx(0.56)
    assert grid.voxel_measure == grid.pixel_area_mm2
    with pytest.raises(ValueError, match=r"2D grid \(17, 15\) has no voxel volume"):
        _ = grid.voxel_volume_mm3
    with pytest.raises(ValueError, match=r"3D grid \(17, 15, 9\) has voxels, not pixels"):
        _ = Grid(SHAPE, affine).pixel_area_mm2
    np.testing.assert_allclose(grid.voxel_to_world([[16, 14]]), [[5.0 + 12.8, -3.0 + 9.8, 12.0]])
    ij = np.array([[0.0, 0.0], [16.0, 14.0], [3.25, 7.5]])
    np.testing.assert_allclose(grid.world_to_voxel(grid.voxel_to_world(ij)), ij, atol=1e-12)
    # a point off the image plane lands on its orthogonal projection
    np.testing.assert_allclose(grid.world_to_voxel([5.0 + 0.8, -3.0, 40.0]), [1.0, 0.0])


def test_2d_pixel_area_of_a_tilted_sheared_plane() -> None:
    """In-plane area |c0 x c1| of a sheared plane that is not the world's x-y plane."""
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.6, 0.8]  # 1 mm, tilted out of the x-y plane
    affine[:3, 1] = [2.0, 0.3, 0.4]  # 0.5 mm along column 0 plus 2 mm across it
    grid = Grid((17, 15), affine)
    assert grid.pixel_area_mm2 == pytest.approx(2.0)
    assert grid.spacing_mm[1] == pytest.approx(np.sqrt(4.25))


def test_single_slice_rule() -> None:
    affine = _anisotropic()
    flat = Grid((17, 15, 1), affine)
    squeezed = flat.squeeze_single_slice()
    assert squeezed.shape == (17, 15) and squeezed.ndim == 2
    np.testing.assert_array_equal(squeezed.affine, affine)
    assert squeezed.pixel_area_mm2 == pytest.approx(2.5 * 0.8)
    volume_grid = Grid(SHAPE, affine)
    assert volume_grid.squeeze_single_slice() is volume_grid
    assert Grid((17, 1), affine).squeeze_single_slice().shape == (17, 1)  # 2D stays 2D
    assert is_single_slice((17, 15, 1)) and not is_single_slice((17, 1, 9))
    assert not is_single_slice((17, 1))
    assert squeeze_single_slice_shape((17, 15, 1)) == (17, 15)
    assert squeeze_single_slice_shape(SHAPE) == SHAPE


def test_single_slice_array_and_volume_helpers() -> None:
    array = np.arange(17 * 15).reshape(17, 15, 1)
    squeezed = squeeze_single_slice_array(array)
    assert squeezed.shape == (17, 15) and squeezed[16, 14] == 17 * 15 - 1
    assert squeeze_single_slice_array(np.zeros(SHAPE)).shape == SHAPE
    assert squeeze_single_slice_array(np.zeros((17, 1))).shape == (17, 1)
    volume = Volume(
        np.zeros((2, 17, 15, 1), np.int16), _anisotropic(), modality="CT", warnings=("w",)
    )
    flat = squeeze_single_slice_volume(volume)
    assert flat.spatial_shape == (17, 15) and flat.n_channels == 2
    assert flat.modality == "CT" and flat.warnings == ("w",)
    assert Grid.of(flat).same_grid(Grid.of(volume).squeeze_single_slice())
    # a channel-first 2D image with one row is not a single slice
    thin = Volume(np.zeros((3, 17, 1), np.uint8), np.eye(4))
    assert squeeze_single_slice_volume(thin) is thin


def _moved(affine: np.ndarray, *, corner_mm: float, axis: int) -> np.ndarray:
    """``affine`` with one column scaled so the farthest voxel corner moves ``corner_mm``."""
    moved = affine.copy()
    far = SHAPE[axis] - 0.5  # index of the far corner along ``axis`` (the near one: -0.5)
    column = moved[:3, axis]
    moved[:3, axis] = column * (1 + corner_mm / (far * np.linalg.norm(column)))
    return moved


@pytest.mark.parametrize("name", list(AFFINES), ids=list(AFFINES))
@pytest.mark.parametrize(
    ("distance", "same"),
    [(0.0, True), (0.9 * GRID_TOLERANCE_MM, True), (1.1 * GRID_TOLERANCE_MM, False)],
    ids=["equal", "just-inside", "just-outside"],
)
def test_same_grid_just_inside_and_outside_the_tolerance(
    name: str, distance: float, same: bool
) -> None:
    affine = AFFINES[name]
    grid = Grid(SHAPE, affine)
    shifted = affine.copy()
    shifted[:3, 3] += np.array([0.6, -0.8, 0.0]) * distance  # a translation of ``distance``
    assert grid.same_grid(Grid(SHAPE, shifted)) is same
    assert grid.corner_distance_mm(Grid(SHAPE, shifted)) == pytest.approx(distance, abs=1e-12)
    # a change of voxel size shows at the far corner: the whole grid is compared
    for axis in range(3):
        stretched = Grid(SHAPE, _moved(affine, corner_mm=distance, axis=axis))
        assert stretched.same_grid(grid) is same, axis


def test_same_grid_compares_the_whole_extent_not_affine_elements() -> None:
    """A spacing error far below the tolerance per voxel adds up over the grid."""
    affine = _anisotropic()
    big = (512, 512, 300)
    slightly = affine.copy()
    slightly[0, 0] += 0.5 * GRID_TOLERANCE_MM / 100  # 5e-5 mm per voxel, 0.026 mm over 512
    assert not Grid(big, affine).same_grid(Grid(big, slightly))
    assert Grid((17, 15, 9), affine).same_grid(Grid((17, 15, 9), slightly))


def test_same_grid_needs_the_same_shape() -> None:
    grid = Grid(SHAPE, _anisotropic())
    assert not grid.same_grid(Grid((17, 15, 8), _anisotropic()))
    assert not grid.same_grid(Grid((15, 17, 9), _anisotropic()))
    assert not grid.same_grid(Grid((17, 15), _anisotropic()))
    with pytest.raises(ValueError, match="a 3D grid cannot be compared with a 2D one"):
        grid.corner_distance_mm(Grid((17, 15), _anisotropic()))


def test_2d_same_grid_ignores_the_out_of_plane_column() -> None:
    a = np.diag([0.8, 0.7, 1.0, 1.0])
    b = np.diag([0.8, 0.7, 5.0, 1.0])  # a single slice 5 mm thick, squeezed to 2D
    assert Grid((17, 15), a).same_grid(Grid((17, 15, 1), b).squeeze_single_slice())
    assert not Grid((17, 15, 1), a).same_grid(Grid((17, 15, 1), b))


def test_corners_cover_the_grid() -> None:
    corners = Grid((17, 15), np.eye(4)).corners_ijk()
    assert sorted(map(tuple, corners.tolist())) == [
        (-0.5, -0.5),
        (-0.5, 14.5),
        (16.5, -0.5),
        (16.5, 14.5),
    ]
    assert Grid(SHAPE, np.eye(4)).corners_ijk().shape == (8, 3)


def _bad_last_row() -> np.ndarray:
    affine = np.eye(4)
    affine[3, 0] = 0.1
    return affine


@pytest.mark.parametrize(
    ("shape", "affine", "message"),
    [
        ((17,), np.eye(4), r"2 or 3 positive integer sizes \(x, y\[, z\]\); got \(17,\)"),
        ((17, 15, 9, 2), np.eye(4), r"2 or 3 positive integer sizes"),
        ((17, 0, 9), np.eye(4), r"2 or 3 positive integer sizes"),
        ((17, 15.0, 9), np.eye(4), r"2 or 3 positive integer sizes"),
        (SHAPE, np.eye(3), r"must be 4x4 \(voxel -> RAS mm\); got \(3, 3\)"),
        (SHAPE, np.diag([1.0, np.nan, 1.0, 1.0]), "non-finite values"),
        (SHAPE, _bad_last_row(), r"last row must be \(0, 0, 0, 1\)"),
        (SHAPE, np.diag([1.0, 1.0, 0.0, 1.0]), r"degenerate \(voxel volume 0\)"),
        ((17, 15), np.diag([1.0, 0.0, 1.0, 1.0]), r"degenerate \(pixel area 0\)"),
    ],
    ids=[
        "1d",
        "4d",
        "zero-size",
        "float-size",
        "3x3",
        "nan",
        "last-row",
        "flat-3d",
        "flat-2d",
    ],
)
def test_invalid_grids_are_refused(shape: tuple, affine: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Grid(shape, affine)


def test_a_2d_grid_needs_no_out_of_plane_column() -> None:
    grid = Grid((17, 15), np.diag([0.8, 0.7, 0.0, 1.0]))  # third column unused in 2D
    assert grid.pixel_area_mm2 == pytest.approx(0.56)
    np.testing.assert_allclose(grid.world_to_voxel([1.6, 2.1, 0.0]), [2.0, 3.0])
