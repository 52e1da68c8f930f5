"""Mapping model-grid arrays back onto a scan grid: exact for flips and permutations."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import medres.inference.resample as resample
from medres.inference.resample import resample_to_grid
from tests.conftest import oblique_affine


def _reoriented(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """``array`` flipped/permuted to ``codes`` axis order, with its new affine (nibabel)."""
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(codes))
    )
    out = nib.orientations.apply_orientation(array, ornt)
    return out, affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)


@pytest.mark.parametrize("nearest", [True, False])
def test_flips_and_permutations_are_exact(nearest: bool) -> None:
    rng = np.random.default_rng(0)
    scan_affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    scan_affine[:3, 3] = [100.0, 80.0, -40.0]
    values = rng.integers(0, 200, size=(23, 17, 9)).astype(np.float32)
    model, model_affine = _reoriented(values, scan_affine, "SRA")  # what Orientationd might do
    back = resample_to_grid(model[None], model_affine, scan_affine, values.shape, nearest=nearest)
    np.testing.assert_allclose(back[0], values, atol=1e-3)


def test_smooth_field_survives_an_oblique_zoomed_crop() -> None:
    """A field defined in world mm, sampled on a coarser model grid, comes back in place."""
    scan_affine = oblique_affine((0.7, 1.1, 3.0))
    shape = (41, 37, 13)
    model_affine = scan_affine @ np.diag([1.5, 1.5, 0.75, 1.0])
    model_affine[:3, 3] = scan_affine[:3, :3] @ np.array([4.0, 3.0, 1.0]) + scan_affine[:3, 3]

    def field(affine: np.ndarray, grid_shape: tuple[int, ...]) -> np.ndarray:
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid_shape], indexing="ij"), -1)
        xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
        return np.sin(xyz[..., 0] / 9.0) + np.cos(xyz[..., 1] / 7.0) + xyz[..., 2] / 40.0

    model_values = field(model_affine, (22, 20, 20)).astype(np.float32)
    back = resample_to_grid(model_values[None], model_affine, scan_affine, shape, dtype=np.float16)
    assert back.dtype == np.float16 and back.shape == (1, *shape)
    truth = field(scan_affine, shape)
    inside = (slice(6, 34), slice(5, 31), slice(2, 11))  # away from the model grid's edge
    error = float(np.abs(back[0][inside] - truth[inside]).mean())
    assert error < 0.02
    # the check can fail: the same field one voxel off is several times further away
    shifted = np.abs(back[0][1:][inside] - truth[:-1][inside]).mean()
    assert shifted > 3 * error
    # outside the model grid (the corner before its origin) everything is 0
    assert float(np.abs(back[0, :2, :2, 0]).max()) == 0.0


def test_slabs_give_the_same_result_as_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    source = rng.random((2, 12, 10, 8)).astype(np.float32)
    source_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    target_affine = np.diag([0.9, 1.1, 1.3, 1.0])
    whole = resample_to_grid(source, source_affine, target_affine, (25, 19, 17))
    monkeypatch.setattr(resample, "SLAB_VOXELS", 25 * 19 * 2)  # 2 slices per slab
    slabs = resample_to_grid(source, source_affine, target_affine, (25, 19, 17))
    np.testing.assert_array_equal(whole, slabs)


def test_2d_grids_and_integer_outputs() -> None:
    labels = np.zeros((1, 10, 6), np.float32)
    labels[0, 2:5, 1:3] = 1
    source_affine = np.diag([2.0, 2.0, 1.0, 1.0])
    target_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    out = resample_to_grid(
        labels, source_affine, target_affine, (20, 12), nearest=True, dtype=np.uint8
    )
    assert out.dtype == np.uint8 and out.shape == (1, 20, 12)
    np.testing.assert_array_equal(out[0, ::2, ::2], labels[0].astype(np.uint8))
    with pytest.raises(ValueError, match="2D or 3D"):
        resample_to_grid(labels, source_affine, target_affine, (20, 12, 3))


@pytest.mark.parametrize("nearest", [True, False])
def test_per_axis_path_matches_the_general_path(
    monkeypatch: pytest.MonkeyPatch, nearest: bool
) -> None:
    """Axis-aligned mappings take a per-axis shortcut; it must equal grid sampling."""
    rng = np.random.default_rng(2)
    source = rng.integers(0, 9, size=(2, 14, 11, 9)).astype(np.float32)
    source_affine = np.diag([-1.8, 1.8, 2.5, 1.0])  # flipped, coarser
    source_affine[:3, 3] = [30.0, -12.0, 4.0]
    # spacings and offsets chosen so that no target voxel falls exactly halfway between
    # two source voxels (where "nearest" is a tie either path may break its own way)
    target_affine = oblique_affine((0.93, 0.71, 2.07), angle_deg=0.0)
    target_affine[:3, 3] = [5.03, -10.07, 3.02]
    shape = (31, 27, 13)
    fast = resample_to_grid(source, source_affine, target_affine, shape, nearest=nearest)
    monkeypatch.setattr(resample, "_separable", lambda mapping, ndim: None)
    general = resample_to_grid(source, source_affine, target_affine, shape, nearest=nearest)
    assert np.abs(fast).sum() > 0
    np.testing.assert_allclose(fast, general, atol=1e-4)
