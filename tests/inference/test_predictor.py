"""Ensemble prediction: the demo model on a held-out phantom, and the geometry contract.

Whatever the scan's orientation and spacing, the label map comes back with exactly the
scan's shape and affine, and lands where the lesion is.
"""

from __future__ import annotations

import numpy as np
import pytest

from medres.errors import LoadError, ModelError
from medres.inference.lesions import find_lesions
from medres.inference.predictor import Ensemble, decide_labels, majority_vote
from medres.io.nifti import read_nifti
from medres.io.volume import Volume
from medres.models.folder import ModelFolder
from medres.synthetic import ct_phantom
from tests.conftest import REPO, SAMPLE_DATA, oblique_affine, relabelled_model

DEMO = REPO / "models" / "demo_ct_3d"


@pytest.fixture(scope="module")
def demo_ensemble() -> Ensemble:
    return Ensemble([ModelFolder.open(DEMO)])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_demo_model_on_the_held_out_sample_phantom(demo_ensemble: Ensemble) -> None:
    image = read_nifti(SAMPLE_DATA / "ct_phantom.nii.gz")
    truth = read_nifti(SAMPLE_DATA / "ct_phantom_mask.nii.gz").array[0] > 0
    result = demo_ensemble.predict(image, keep_members=True)
    # resampled to 1.8 mm and reoriented to RAS for the network, mapped back
    assert result.label_map.shape == image.spatial_shape
    np.testing.assert_array_equal(result.affine, image.affine)
    assert result.probabilities.shape == (1, *image.spatial_shape)
    assert result.probabilities.dtype == np.float16
    assert float(result.probabilities.min()) >= 0.0 and float(result.probabilities.max()) <= 1.0
    assert _dice(result.label_map == 1, truth) > 0.8  # seed 7 is not a training phantom
    assert len(result.member_label_maps) == 3 and len(result.member_names) == 3
    for member in result.member_label_maps:
        assert member.shape == image.spatial_shape and _dice(member == 1, truth) > 0.7
    lesions = find_lesions(
        result.label_map,
        affine=result.affine,
        probabilities=result.probabilities[0],
        member_hits=result.member_hits[0],
        n_members=3,
        uncertainty=result.uncertainty[0],
    )
    assert lesions and all(x.members_detecting is not None for x in lesions)
    assert max(x.members_detecting or 0 for x in lesions) == 3
    assert all(0.0 <= (x.uncertainty or 0.0) <= 0.5 for x in lesions)


@pytest.mark.parametrize(
    "spacing, oblique",
    [((0.9, 1.3, 3.1), False), ((1.1, 0.8, 2.2), True)],
    ids=["anisotropic", "oblique"],
)
def test_mask_comes_back_on_the_scans_own_grid(
    demo_ensemble: Ensemble, spacing: tuple[float, float, float], oblique: bool
) -> None:
    """Odd shape, anisotropic or oblique grid: same shape, same affine, lesion in place."""
    shape = (97, 83, 29)
    ct, mask = ct_phantom(shape=shape, spacing_mm=spacing, seed=11)
    affine = oblique_affine(spacing) if oblique else ct.affine  # LPS-ordered, as DICOM loads
    scan = Volume(ct.array, affine)
    result = demo_ensemble.predict(scan)
    assert result.label_map.shape == shape
    np.testing.assert_array_equal(result.affine, affine)
    assert result.probabilities.shape[1:] == shape
    truth = mask.array[0] > 0
    assert _dice(result.label_map == 1, truth) > 0.6


def test_vote_and_mean_agree_closely_and_inputs_are_checked() -> None:
    folder = ModelFolder.open(DEMO)
    vote = Ensemble([folder], mode="vote")
    image = read_nifti(SAMPLE_DATA / "ct_phantom.nii.gz")
    voted = vote.predict(image).label_map == 1
    truth = read_nifti(SAMPLE_DATA / "ct_phantom_mask.nii.gz").array[0] > 0
    assert _dice(voted, truth) > 0.8
    two_channels = Volume(np.zeros((2, 8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(LoadError, match="2 channel"):
        vote.predict(two_channels, source="odd.nii.gz")
    flat = Volume(np.zeros((1, 8, 8), np.float32), np.eye(4))
    assert "2D scan" in (vote.input_problem(flat) or "")


def test_folders_with_other_labels_cannot_join(tmp_path) -> None:
    other = relabelled_model(DEMO, tmp_path / "other", "lesion", "nodule")
    with pytest.raises(ModelError, match="labels differ"):
        Ensemble([ModelFolder.open(DEMO), ModelFolder.open(other)])


def test_label_decisions() -> None:
    fg = np.array([[0.2, 0.6, 0.5]], np.float32)
    assert decide_labels(fg, threshold=0.5).tolist() == [0, 1, 0]
    multi = np.array([[0.5, 0.3, 0.1], [0.2, 0.4, 0.1]], np.float32)  # bg 0.3, 0.3, 0.8
    assert decide_labels(multi, threshold=0.5).tolist() == [1, 2, 0]
    members = [np.array([1, 2, 0, 1]), np.array([1, 0, 0, 2]), np.array([0, 2, 1, 0])]
    assert majority_vote([m.astype(np.uint8) for m in members], 3).tolist() == [1, 2, 0, 0]
