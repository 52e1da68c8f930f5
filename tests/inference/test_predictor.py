"""The bundled demo model predicts the held-out sample phantom back on its own grid."""

from __future__ import annotations

import numpy as np

from medres.inference.predictor import Predictor
from medres.io.nifti import read_nifti
from medres.models.folder import ModelFolder
from tests.conftest import REPO, SAMPLE_DATA


def test_demo_model_on_the_held_out_sample_phantom() -> None:
    folder = ModelFolder.open(REPO / "models" / "demo_ct_3d")
    assert len(folder.members) == 3
    image = read_nifti(SAMPLE_DATA / "ct_phantom.nii.gz")
    truth = read_nifti(SAMPLE_DATA / "ct_phantom_mask.nii.gz").array[0] > 0
    result = Predictor(folder).predict(
        {"image": [str(SAMPLE_DATA / "ct_phantom.nii.gz")]}, keep_members=True
    )
    # resampled to 1.8 mm and reoriented to RAS for the network, inverted back
    assert result.labels.shape == image.spatial_shape
    np.testing.assert_allclose(result.affine, image.affine)
    assert result.probabilities.shape == (2, *image.spatial_shape)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-4)
    predicted = result.labels == 1
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice > 0.8, dice  # the phantom (seed 7) is not among the training phantoms
    assert len(result.member_probabilities) == 3
