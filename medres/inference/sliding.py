"""Sliding-window inference of one network on one preprocessed image."""

from __future__ import annotations

from typing import Any

from medres.pipeline import PipelineConfig


def predict_logits(net: Any, image: Any, cfg: PipelineConfig, *, device: str) -> Any:
    """Sliding-window (Gaussian-blended) logits for one preprocessed image ``(C, ...)``."""
    import torch
    from monai.inferers import sliding_window_inference

    roi = cfg.roi_size
    with torch.inference_mode():
        batch = torch.as_tensor(image, dtype=torch.float32)[None].to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
            logits = sliding_window_inference(
                batch,
                roi_size=roi,
                sw_batch_size=cfg.inference.sw_batch_size,
                predictor=net,
                overlap=cfg.inference.overlap,
                mode="gaussian",
                padding_mode="constant",
            )
    return torch.as_tensor(logits).float()[0]


__all__ = ["predict_logits"]
