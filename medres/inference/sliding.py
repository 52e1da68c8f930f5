"""Sliding-window inference of one network on one preprocessed image."""

from __future__ import annotations

import logging
from typing import Any

from medres.pipeline import PipelineConfig

logger = logging.getLogger(__name__)


def predict_logits(
    net: Any, image: Any, cfg: PipelineConfig, *, device: str, overlap: float | None = None
) -> Any:
    """Sliding-window (Gaussian-blended) logits ``(C, ...)`` for one image ``(C_in, ...)``.

    On CUDA the windows run in float16 autocast. The blended output is stitched on the GPU;
    when that runs out of memory the same windows are stitched in CPU memory instead
    (MONAI's ``device="cpu"``), so a large volume costs time, not a crash. The result is
    always a float32 CPU tensor.
    """
    import torch
    from monai.inferers import sliding_window_inference

    roi = cfg.roi_size
    on_cuda = device.startswith("cuda")

    def run(stitch_device: str | None) -> Any:
        with torch.inference_mode():
            batch = torch.as_tensor(image, dtype=torch.float32)[None].to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=on_cuda):
                logits = sliding_window_inference(
                    batch,
                    roi_size=roi,
                    sw_batch_size=cfg.inference.sw_batch_size,
                    predictor=net,
                    overlap=cfg.inference.overlap if overlap is None else overlap,
                    mode="gaussian",
                    padding_mode="constant",
                    sw_device=device,
                    device=stitch_device,
                )
        return torch.as_tensor(logits).float()[0].cpu()

    if not on_cuda:
        return run(None)
    try:
        return run(device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        logger.warning("GPU memory is short for this volume: stitching windows on the CPU")
        return run("cpu")


__all__ = ["predict_logits"]
