"""Find and read the ground truth of each predicted scan.

The truth is a folder or a datalist JSON. A scan ``S`` (its ``scan_id`` in the predict
folder) is matched to:

* in a folder (searched recursively): a file whose name without extension is
  ``S<mask suffix>`` (``S_mask.nii.gz``, ``S_mask.tif``...), or ``S`` in a mask folder
  (``masks/S.png``, ``labels/S.nii.gz``: :func:`medres.io.pairing.is_mask_folder`), or
  else ``S`` anywhere (``S.nii.gz``, for a folder of label maps only), or, with
  ``truth_name``, the file of that name in a folder called ``S``
  (``brats_pat0001/OTMultiClass.nii.gz``);
* in a datalist JSON (``{"training": [...], "test": [...]}`` or a list): the ``label``
  of the entry whose ``id`` is ``S``; relative paths start at the JSON's folder or at
  ``data_root``.

Every problem is an :class:`~medres.errors.EvaluationError` naming the scan and file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import EvaluationError, MedresError
from medres.io.discover import iter_files
from medres.io.grid import GRID_TOLERANCE_MM, Grid, squeeze_single_slice_array
from medres.io.images2d import is_image2d_path, read_mask2d
from medres.io.nifti import is_nifti_path, nifti_stem, read_nifti
from medres.io.pairing import is_mask_folder
from medres.io.volume import Volume
from medres.pipeline import PipelineConfig


class TruthIndex:
    """Where the truth of each scan id is.

    Args:
        source: Truth folder or datalist JSON.
        truth_name: File name of the truth inside a case folder named like the scan.
        mask_suffix: Suffix of mask files (``X_mask.tif`` is the truth of scan ``X``).
        data_root: Base folder for relative paths in a datalist.

    Raises:
        EvaluationError: The source does not exist or the datalist cannot be read.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        truth_name: str | None = None,
        mask_suffix: str = "_mask",
        data_root: str | Path | None = None,
    ) -> None:
        self.source = Path(source)
        self.truth_name = truth_name
        self.mask_suffix = mask_suffix
        self.paths: dict[str, list[Path]] = defaultdict(list)
        self.plain: dict[str, list[Path]] = defaultdict(list)  # named exactly like the scan
        if not self.source.exists():
            raise EvaluationError(f"{self.source}: no such truth folder or datalist")
        if self.source.is_file() and self.source.suffix.lower() == ".json":
            self._from_datalist(Path(data_root) if data_root else self.source.parent)
        else:
            self._from_folder()

    def _add(self, key: str, path: Path, *, plain: bool = False) -> None:
        target = self.plain if plain else self.paths
        if path not in target[key]:
            target[key].append(path)

    def _from_folder(self) -> None:
        for path in iter_files(self.source):
            if not (is_nifti_path(path) or is_image2d_path(path)):
                continue
            if self.truth_name and path.name == self.truth_name:
                self._add(path.parent.name, path)
                continue
            stem = nifti_stem(path) if is_nifti_path(path) else path.stem
            suffixed = bool(self.mask_suffix) and stem.endswith(self.mask_suffix)
            if suffixed:
                self._add(stem[: -len(self.mask_suffix)], path)
            elif self._in_mask_folder(path):  # masks/x.png: the truth of scan x
                self._add(stem, path)
            elif not self.truth_name:
                self._add(stem, path, plain=True)

    def _in_mask_folder(self, path: Path) -> bool:
        """Whether ``path`` lies in a ``masks/``, ``labels/``, ``case_mask/``... folder below
        the truth folder (:func:`medres.io.pairing.is_mask_folder`)."""
        try:
            parts = path.parent.relative_to(self.source).parts
        except ValueError:
            return False
        return any(is_mask_folder(part) for part in parts)

    def _from_datalist(self, root: Path) -> None:
        try:
            data = json.loads(self.source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"{self.source}: cannot read datalist JSON: {exc}") from None
        lists = (
            [v for v in data.values() if isinstance(v, list)] if isinstance(data, dict) else [data]
        )
        for entries in lists:
            for entry in entries:
                if not isinstance(entry, dict) or "label" not in entry:
                    continue
                label = root / str(entry["label"])
                # Decathlon lists have no ids: the label's name is the case's
                key = str(entry.get("id") or nifti_stem(label))
                self._add(key, label)

    def has(self, scan_id: str) -> bool:
        """Whether any truth file is named for ``scan_id``."""
        return bool(self.paths.get(scan_id) or self.plain.get(scan_id))

    def find(self, scan_id: str) -> Path:
        """The truth file of ``scan_id``.

        Raises:
            EvaluationError: None found, or several candidates.
        """
        # a mask named after the scan wins over a file named exactly like it (which, in a
        # folder of images with their masks, is the image itself)
        found = self.paths.get(scan_id) or self.plain.get(scan_id, [])
        if not found:
            looked = f"{scan_id}.nii.gz, {scan_id}{self.mask_suffix}.*"
            if self.truth_name:
                looked += f", {scan_id}/{self.truth_name}"
            raise EvaluationError(
                f"{scan_id}: no ground truth in {self.source} (looked for {looked})"
            )
        if len(found) > 1:
            names = ", ".join(str(p) for p in found[:3])
            raise EvaluationError(f"{scan_id}: several ground-truth files match: {names}")
        return found[0]


def read_truth(
    path: Path,
    *,
    scan_id: str,
    shape: tuple[int, ...],
    affine: npt.NDArray[np.float64],
    cfg: PipelineConfig,
) -> npt.NDArray[np.uint8]:
    """The truth label map of one scan, in the pipeline's label indices, on its grid.

    Args:
        path: The truth file (NIfTI or 2D mask).
        scan_id: The scan, for messages.
        shape: Spatial shape ``(x, y[, z])`` of the prediction.
        affine: 4x4 voxel -> RAS+ mm affine of the prediction.
        cfg: The pipeline (label indices and ``label_map``).

    A single-slice truth ``(x, y, 1)`` of a 2D prediction is read as 2D. Truth and
    prediction are one grid when every voxel corner lies within
    :data:`~medres.io.grid.GRID_TOLERANCE_MM` (see :meth:`~medres.io.grid.Grid.same_grid`).

    Raises:
        EvaluationError: Unreadable file, other shape or affine than the prediction, or
            label values the pipeline does not know.
    """
    from medres.transforms.presets import map_labels

    try:
        if is_image2d_path(path):
            like = Volume(np.zeros((1, *shape[:2]), np.uint8), affine)
            array: npt.NDArray[Any] = read_mask2d(path, like=like).array[0]
            truth_affine = affine
        else:
            volume = read_nifti(path)
            array = volume.array[0]
            truth_affine = volume.affine
    except MedresError as exc:
        raise EvaluationError(f"{scan_id}: cannot read its truth: {exc}") from None
    if len(shape) == 2:
        array = squeeze_single_slice_array(array)
    if tuple(array.shape) != tuple(shape):
        raise EvaluationError(
            f"{scan_id}: truth {path.name} is {tuple(array.shape)} but the prediction is "
            f"{tuple(shape)}: not the same grid"
        )
    truth_grid, grid = Grid(array.shape, truth_affine), Grid(tuple(shape), affine)
    if not truth_grid.same_grid(grid):
        raise EvaluationError(
            f"{scan_id}: truth {path.name} has another affine than the scan (voxel corners "
            f"up to {truth_grid.corner_distance_mm(grid):.3f} mm apart, "
            f"{GRID_TOLERANCE_MM} mm allowed): not the same grid"
        )
    try:
        return map_labels(array, cfg, source=str(path))
    except MedresError as exc:
        raise EvaluationError(f"{scan_id}: {exc}") from None


__all__ = ["TruthIndex", "read_truth"]
