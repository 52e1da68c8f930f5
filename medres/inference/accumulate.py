"""Running sums of an ensemble's members, and their mapping onto the scan grid.

Members of one model folder share a model grid (its preprocessing), so their sums are
kept there (:class:`FolderSums`: probabilities, squares, member bits) and mapped onto the
scan grid once per folder (:class:`ScanGridSums`). One folder: the folder's mean and
standard deviation are mapped directly (float16 on the scan grid). Several folders:
sums are mapped and added in float32, and the mean and spread computed at the end.
The member bits are mapped nearest, so a member "found" a voxel where its own label map
says so on the model grid.

Grids: arrays are ``(C-1, x, y[, z])``; ``model_affine`` and ``scan_affine`` map voxel
indices to RAS+ mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.inference.resample import resample_to_grid


def bits_dtype(n_members: int) -> type[np.unsignedinteger[Any]]:
    """The smallest unsigned type with a bit per member."""
    if n_members <= 8:
        return np.uint8
    if n_members <= 16:
        return np.uint16
    return np.uint32


@dataclass
class FolderSums:
    """Sums over the members of one model folder, on its model grid.

    Attributes:
        bits: The dtype of the member bit masks.
    """

    bits: type[np.unsignedinteger[Any]]
    total: npt.NDArray[np.float32] | None = None
    squares: npt.NDArray[np.float32] | None = None
    member_bits: npt.NDArray[Any] | None = None
    count: int = 0

    def add(
        self, foreground: npt.NDArray[np.float32], own: npt.NDArray[np.uint8], *, bit: int
    ) -> None:
        """Add one member's foreground probabilities and set its bit where its own label
        map has each label."""
        if self.total is None or self.squares is None or self.member_bits is None:
            self.total, self.squares = foreground.copy(), foreground**2
            self.member_bits = np.zeros(foreground.shape, dtype=self.bits)
        else:
            self.total += foreground
            self.squares += foreground**2
        for index in range(foreground.shape[0]):
            self.member_bits[index][own == index + 1] |= self.bits(1 << bit)
        self.count += 1


class ScanGridSums:
    """Mean, spread and member bits of every member, on the scan grid.

    Args:
        shape: Spatial shape of the scan grid.
        n_foreground: Foreground labels (``C-1``).
        n_members: Members in the ensemble (bits per voxel).
        several_folders: More than one model folder (sums in float32, mapped each).
    """

    def __init__(
        self, shape: tuple[int, ...], *, n_foreground: int, n_members: int, several_folders: bool
    ) -> None:
        dtype = np.float32 if several_folders else np.float16
        self.shape = shape
        self.n_members = n_members
        self.several_folders = several_folders
        self.bits = bits_dtype(n_members)
        self.mean = np.zeros((n_foreground, *shape), dtype=dtype)
        self.spread = np.zeros((n_foreground, *shape), dtype=dtype)
        self.hits = np.zeros((n_foreground, *shape), dtype=self.bits)

    def add_folder(
        self,
        sums: FolderSums,
        *,
        model_affine: npt.NDArray[np.float64],
        scan_affine: npt.NDArray[np.float64],
        device: str = "cpu",
    ) -> None:
        """Map one folder's sums from its model grid onto the scan grid (on a CUDA
        ``device`` when the scan grid is large, see
        :func:`~medres.inference.resample.mapping_device`)."""
        assert sums.total is not None and sums.squares is not None
        assert sums.member_bits is not None
        shape = self.shape
        model, scan = model_affine, scan_affine
        if self.several_folders:  # sums on the scan grid; mean and spread at the end
            self.mean += resample_to_grid(sums.total, model, scan, shape, device=device)
            self.spread += resample_to_grid(sums.squares, model, scan, shape, device=device)
        else:
            folder_mean = sums.total / sums.count
            folder_std = np.sqrt(np.maximum(sums.squares / sums.count - folder_mean**2, 0.0))
            resample_to_grid(folder_mean, model, scan, shape, out=self.mean, device=device)
            resample_to_grid(folder_std, model, scan, shape, out=self.spread, device=device)
        self.hits |= resample_to_grid(
            sums.member_bits, model, scan, shape, nearest=True, dtype=self.bits, device=device
        )

    def finish(self) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.float16]]:
        """The members' mean probability and standard deviation, float16 (call once:
        several folders' float32 sums are released)."""
        if not self.several_folders:
            return (
                self.mean.astype(np.float16, copy=False),
                self.spread.astype(np.float16, copy=False),
            )
        mean, spread = self.mean, self.spread
        mean /= self.n_members
        spread /= self.n_members
        spread -= mean**2
        np.sqrt(np.maximum(spread, 0.0, out=spread), out=spread)
        mean16, spread16 = mean.astype(np.float16), spread.astype(np.float16)
        del mean, spread
        self.mean = self.spread = np.zeros((0,), np.float32)  # the float32 sums are freed
        return mean16, spread16


__all__ = ["FolderSums", "ScanGridSums", "bits_dtype"]
