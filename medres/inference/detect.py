"""One detector on one preprocessed image: boxes, scores and labels, with flip views.

Images no larger than the detector's window go through the network whole; larger ones
through MONAI's sliding-window inferer over the network's head outputs (the detector's
``use_inferer``), so anchors and boxes are those of the whole image. Flip test-time
augmentation runs the detector on mirrored copies and mirrors their boxes back: each view
is one list of boxes, fused later with the other members'
(:func:`~medres.inference.boxes.fuse_boxes`).

Boxes are in voxel corners of the image given (MONAI's convention,
:mod:`medres.inference.boxes`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import ModelError
from medres.pipeline import PipelineConfig
from medres.runtime import amp_dtype


@dataclass(frozen=True)
class DetectorView:
    """The detections of one detector on one (possibly mirrored) view, mirrored back.

    Attributes:
        boxes: ``(N, 2 * dims)`` voxel corners on the image given.
        scores: ``(N,)`` in 0..1.
        labels: ``(N,)`` label indices of the pipeline (``cfg.labels``).
        flip: The axes this view was mirrored along (empty: the image itself).
    """

    boxes: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    flip: tuple[int, ...] = ()


def flip_views(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of mirrored axes, the plain view first."""
    axes = list(axes)
    return [combo for n in range(len(axes) + 1) for combo in itertools.combinations(axes, n)]


def unflip_boxes(
    boxes: npt.NDArray[np.float64], flip: Sequence[int], shape: Sequence[int]
) -> npt.NDArray[np.float64]:
    """Boxes found on an image mirrored along ``flip`` as boxes on the original image."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    dims = len(shape)
    for axis in flip:
        low, high = out[:, axis].copy(), out[:, axis + dims].copy()
        out[:, axis], out[:, axis + dims] = shape[axis] - high, shape[axis] - low
    return out


def _needs_windows(shape: Sequence[int], roi: Sequence[int]) -> bool:
    return math.prod(shape) > math.prod(roi) and any(s > r for s, r in zip(shape, roi, strict=True))


def detect(
    net: Any,
    image: Any,
    cfg: PipelineConfig,
    *,
    device: str,
    flips: Sequence[int] = (),
    overlap: float | None = None,
    source: str = "scan",
) -> list[DetectorView]:
    """Run one detector on a preprocessed image ``(C, x, y[, z])``, once per flip view.

    Args:
        net: A :class:`~medres.models.detection` detector (eval mode is set here).
        image: Float tensor on any device.
        cfg: The detector's pipeline (window, overlap, lesion labels).
        device: Where the detector is.
        flips: Axes of flip test-time augmentation (every combination is a view).
        overlap: Sliding-window overlap (default: the pipeline's).
        source: Name of the scan for messages.

    Raises:
        ModelError: The detector gave non-finite scores or boxes (damaged weights).
    """
    import torch

    image = image.to(device)
    shape = tuple(int(s) for s in image.shape[1:])
    roi = cfg.roi_size
    windows = _needs_windows(shape, roi)
    if windows:
        net.set_sliding_window_inferer(
            roi_size=list(roi),
            sw_batch_size=cfg.inference.sw_batch_size,
            overlap=cfg.inference.overlap if overlap is None else overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0,
            progress=False,
        )
    dtype = amp_dtype(device)
    net.eval()
    class_labels = np.asarray(cfg.lesion_indices, dtype=np.int64)
    views = []
    for flip in flip_views(flips):
        view = torch.flip(image, dims=[a + 1 for a in flip]) if flip else image
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=dtype, enabled=dtype is not None),
        ):
            out = net([view], use_inferer=windows)[0]
        boxes = out["boxes"].float().cpu().numpy().astype(np.float64)
        scores = out["labels_scores"].float().cpu().numpy().astype(np.float64)
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ModelError(
                f"{source}: the detector gave NaN or infinite boxes or scores; its weights "
                "are damaged (retrain it or restore the model folder)"
            )
        labels = class_labels[out["labels"].cpu().numpy().astype(np.int64)]
        views.append(DetectorView(unflip_boxes(boxes, flip, shape), scores, labels, tuple(flip)))
    return views


__all__ = ["DetectorView", "detect", "flip_views", "unflip_boxes"]
