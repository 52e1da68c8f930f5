"""Labels from probabilities: the ensemble's mean thresholded, or the members' vote."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def decide_labels(
    foreground: npt.NDArray[np.floating[Any]], *, threshold: float
) -> npt.NDArray[np.uint8]:
    """Label map from foreground probabilities ``(C-1, ...)``.

    One foreground class: ``p > threshold``. Several: the most probable class, the
    background's probability being ``1 - sum``; ties go to the lower label.
    """
    if foreground.shape[0] == 1:
        binary: npt.NDArray[np.uint8] = (foreground[0] > threshold).astype(np.uint8)
        return binary
    best = 1.0 - foreground.sum(0, dtype=np.float32)
    label_map = np.zeros(foreground.shape[1:], dtype=np.uint8)
    for index in range(foreground.shape[0]):
        channel = foreground[index].astype(np.float32, copy=False)
        better = channel > best
        label_map[better] = index + 1
        np.maximum(best, channel, out=best)
    return label_map


def majority_vote(
    member_label_maps: Sequence[npt.NDArray[np.uint8]], n_labels: int
) -> npt.NDArray[np.uint8]:
    """The label most members chose, per voxel; ties go to the lower label."""
    counts = [np.zeros(member_label_maps[0].shape, dtype=np.uint8) for _ in range(n_labels)]
    for label_map in member_label_maps:
        for value in range(1, n_labels):
            counts[value] += label_map == value
    background = np.full(member_label_maps[0].shape, len(member_label_maps), dtype=np.uint8)
    for value in range(1, n_labels):
        background -= counts[value]
    counts[0] = background
    best = counts[0].copy()
    out = np.zeros(member_label_maps[0].shape, dtype=np.uint8)
    for value in range(1, n_labels):
        better = counts[value] > best
        out[better] = value
        np.maximum(best, counts[value], out=best)
    return out


__all__ = ["decide_labels", "majority_vote"]
