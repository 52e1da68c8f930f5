"""NaN never turns into "ok, 0 lesions": a non-finite input or member output fails the scan
with the reason, naming the member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medres.errors import LoadError, ModelError
from medres.inference.predictor import Ensemble
from medres.io.volume import Volume
from medres.models.folder import ModelFolder

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_ct_3d"
AFFINE = np.diag([1.8, 1.8, 2.5, 1.0])


class _NaNOutput(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * float("nan")


@pytest.fixture(scope="module")
def ensemble() -> Ensemble:
    return Ensemble([ModelFolder.open(DEMO)], device="cpu", tta=False)


def test_a_member_that_outputs_nan_fails_the_scan_by_name(ensemble: Ensemble) -> None:
    runner = ensemble.runners[0]
    original = runner.networks[1]
    runner.networks[1] = _NaNOutput(original)
    try:
        volume = Volume(np.full((1, 33, 29, 17), 40, np.int16), AFFINE)
        with pytest.raises(
            ModelError,
            match=r"fold_1: the member gave \d+ NaN or infinite probabilities on odd.nii.gz",
        ):
            ensemble.predict(volume, source="odd.nii.gz")
    finally:
        runner.networks[1] = original


def test_non_finite_input_is_refused(ensemble: Ensemble) -> None:
    array = np.full((1, 33, 29, 17), 40.0, np.float32)
    array[0, 3:9, 4:8, 2:5] = np.nan
    with pytest.raises(
        LoadError,
        match=r"nan.nii.gz: \d+ of \d+ values are NaN or infinite after demo_ct_3d's preprocessing",
    ):
        ensemble.predict(Volume(array, AFFINE), source="nan.nii.gz")
