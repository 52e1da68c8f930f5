"""Sliding-window stitching: on a GPU that runs out of memory, the windows are stitched in
CPU memory instead. No GPU here, so CUDA is simulated: the test checks the decision logic
(first try on the device, then the same call with ``device="cpu"``), not the kernels."""

from __future__ import annotations

import warnings
from typing import Any

import monai.inferers
import pytest
import torch

from medres.inference.sliding import predict_logits
from medres.pipeline import load_pipeline
from tests.conftest import REPO


def test_out_of_memory_on_the_gpu_falls_back_to_cpu_stitching(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = load_pipeline(REPO / "pipelines" / "demo_ct_3d.yaml")
    calls: list[Any] = []

    def fake_sliding_window(inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs["device"])
        if str(kwargs["device"]).startswith("cuda"):
            raise torch.cuda.OutOfMemoryError("simulated: the stitched volume does not fit")
        return torch.zeros((1, 2, *inputs.shape[2:]))

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", fake_sliding_window)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)  # no CUDA here
    image = torch.zeros((1, 12, 10, 8))
    with warnings.catch_warnings():  # autocast warns that this torch has no CUDA
        warnings.simplefilter("ignore", UserWarning)
        logits = predict_logits(torch.nn.Identity(), image, cfg, device="cuda:0")
    assert calls == ["cuda:0", "cpu"]
    assert logits.shape == (2, 12, 10, 8) and logits.device.type == "cpu"
    calls.clear()
    predict_logits(torch.nn.Identity(), image, cfg, device="cpu")
    assert calls == [None]  # on the CPU the output simply stays where the windows run
