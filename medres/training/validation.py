"""Validation during training: mean per-patient Dice of one member on its held-out groups.

A patient's slices or volume count together; empty truth and empty prediction count as
1.0; the score is averaged over the lesion labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medres.inference.sliding import predict_logits
from medres.pipeline import PipelineConfig


def dice_counts(pred: Any, truth: Any, label: int) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)`` voxels of ``label``."""
    p = pred == label
    t = truth == label
    tp = int((p & t).sum())
    return tp, int(p.sum()) - tp, int(t.sum()) - tp


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice from voxel counts; 1.0 when truth and prediction are both empty."""
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def validate(
    net: Any,
    items: Sequence[dict[str, Any]],
    cfg: PipelineConfig,
    *,
    device: str,
) -> tuple[float, dict[str, float]]:
    """Mean per-patient Dice over the lesion labels, and Dice per patient group."""
    counts: dict[str, dict[int, list[int]]] = {}
    net.eval()
    for item in items:
        logits = predict_logits(net, item["image"], cfg, device=device)
        pred = logits.argmax(0).cpu().numpy()
        truth = np.asarray(item["label"])[0]
        group = counts.setdefault(str(item["group"]), {i: [0, 0, 0] for i in cfg.lesion_indices})
        for label in cfg.lesion_indices:
            tp, fp, fn = dice_counts(pred, truth, label)
            group[label][0] += tp
            group[label][1] += fp
            group[label][2] += fn
    per_group = {
        name: float(np.mean([dice_from_counts(*c) for c in by_label.values()]))
        for name, by_label in sorted(counts.items())
    }
    return float(np.mean(list(per_group.values()))), per_group


__all__ = ["dice_counts", "dice_from_counts", "validate"]
