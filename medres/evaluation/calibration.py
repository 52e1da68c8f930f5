"""Calibration of voxel probabilities: reliability bins and expected calibration error.

Bins are accumulated scan by scan (counts, summed probabilities, summed outcomes), so a
whole test set is never held in memory. ECE is the count-weighted mean absolute gap
between the mean predicted probability and the observed lesion frequency per bin.

Example:
    >>> import numpy as np
    >>> bins = ReliabilityBins(n_bins=10)
    >>> bins.add(np.array([0.05, 0.95, 0.95, 0.05]), np.array([0, 1, 1, 0], bool))
    >>> round(bins.ece(), 3)
    0.05
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class ReliabilityBins:
    """Equal-width probability bins over [0, 1].

    Attributes:
        n_bins: Number of bins.
        count: Voxels per bin. probability_sum: their summed probability.
        positive: How many of them are lesion in the truth.
    """

    n_bins: int = 15
    count: npt.NDArray[np.int64] = field(init=False)
    probability_sum: npt.NDArray[np.float64] = field(init=False)
    positive: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.count = np.zeros(self.n_bins, np.int64)
        self.probability_sum = np.zeros(self.n_bins, np.float64)
        self.positive = np.zeros(self.n_bins, np.int64)

    def add(self, probability: npt.NDArray[Any], truth: npt.NDArray[np.bool_]) -> None:
        """Add the voxels of one scan (probability and truth on the same grid)."""
        p = np.asarray(probability, dtype=np.float32).ravel()
        t = np.asarray(truth, dtype=bool).ravel()
        index = np.minimum((p * self.n_bins).astype(np.int64), self.n_bins - 1)
        self.count += np.bincount(index, minlength=self.n_bins)
        self.probability_sum += np.bincount(index, weights=p, minlength=self.n_bins)
        self.positive += np.bincount(index[t], minlength=self.n_bins)

    def ece(self) -> float:
        """Expected calibration error over every added voxel (0 when none)."""
        total = int(self.count.sum())
        if total == 0:
            return 0.0
        used = self.count > 0
        confidence = self.probability_sum[used] / self.count[used]
        frequency = self.positive[used] / self.count[used]
        return float(np.sum(self.count[used] * np.abs(confidence - frequency)) / total)

    def table(self) -> list[dict[str, float]]:
        """Per bin: range, voxels, mean probability, observed frequency."""
        rows = []
        for index in range(self.n_bins):
            n = int(self.count[index])
            rows.append(
                {
                    "low": index / self.n_bins,
                    "high": (index + 1) / self.n_bins,
                    "voxels": n,
                    "mean_probability": float(self.probability_sum[index] / n)
                    if n
                    else float("nan"),
                    "lesion_frequency": float(self.positive[index] / n) if n else float("nan"),
                }
            )
        return rows


#: The lesion region of the lesion-region ECE: truth or prediction, dilated by this many
#: voxels (face steps).
LESION_REGION_VOXELS = 3


def lesion_region(
    truth: npt.NDArray[np.bool_], predicted: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Where a lesion is or was predicted, dilated by :data:`LESION_REGION_VOXELS`: the
    voxels of the lesion-region ECE, which the many easy background voxels of a whole
    scan cannot dilute."""
    from scipy import ndimage

    either: npt.NDArray[np.bool_] = np.asarray(truth, bool) | np.asarray(predicted, bool)
    if not either.any():
        return either
    dilated = ndimage.binary_dilation(either, iterations=LESION_REGION_VOXELS)
    return np.asarray(dilated, dtype=bool)


__all__ = ["LESION_REGION_VOXELS", "ReliabilityBins", "lesion_region"]
