"""Array aliases that name what their axes mean.

Spatial arrays in medres are indexed ``(x, y[, z])`` where ``x`` runs along a DICOM row
(the column index), ``y`` down the columns (the row index) and ``z`` across slices, the
same index order as NIfTI/nibabel and MONAI. Image arrays are channel-first:
``(C, x, y[, z])``.

An *affine* is a 4x4 float64 matrix mapping a voxel index ``(i, j, k, 1)`` to RAS+ world
coordinates in millimetres, as in NIfTI: world x grows toward the patient's Right,
y toward Anterior, z toward Superior. (DICOM's LPS has x and y negated.)
"""

from __future__ import annotations

import sys
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

#: 4x4 voxel index (i, j, k) -> RAS+ millimetre matrix, float64.
AffineRAS: TypeAlias = npt.NDArray[np.float64]
#: Channel-first image array ``(C, x, y[, z])`` of any numeric dtype.
ChannelImage: TypeAlias = npt.NDArray[np.generic]
#: Spatial array without a channel axis ``(x, y[, z])``.
SpatialArray: TypeAlias = npt.NDArray[np.generic]
if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10
    from enum import Enum

    class StrEnum(str, Enum):
        """String enum (``enum.StrEnum`` from Python 3.11): members are also plain strings."""

        def __str__(self) -> str:
            return str.__str__(self)


#: Points as rows, ``(N, 3)`` float64, either voxel indices or millimetres (names say which).
Points: TypeAlias = npt.NDArray[np.float64]
