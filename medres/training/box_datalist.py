"""Detection truth given as boxes: MONAI's detection datalist format.

A datalist entry with a ``box`` list instead of a mask path trains a detector directly::

    {"box_mode": "xyzwhd", "box_space": "voxel",
     "training": [{"image": "case1.nii.gz", "box": [[10, 20, 5, 8, 8, 4]], "label": [0]}]}

* ``box``: one list of ``2 * dims`` numbers per lesion, in ``box_mode`` (MONAI's names:
  ``xyxy``, ``xxyy``, ``xywh``, ``ccwh`` in 2D; ``xyzxyz``, ``xxyyzz``, ``xyxyzz``,
  ``xyzwhd``, ``cccwhd`` in 3D), given once for the file or per entry.
* ``box_space``: ``voxel`` (array indices of the image, MONAI's corner convention: voxel
  ``i`` covers ``[i, i + 1)``, the default), ``ras_mm`` or ``lps_mm`` (world millimetres,
  e.g. LUNA16's ``world`` boxes are LPS).
* ``label``: one class per box, ``0 .. len(lesion_labels) - 1`` (MONAI's numbering of the
  detector's classes); a missing ``label`` means class 0 for every box.

A box outside the image, with a negative or zero size, in an unknown mode or space, or
with an unknown class is refused with the datalist file and the case named, when the data
is checked: before anything trains. For training, the boxes are painted into an instance
map on the image's grid (:func:`~medres.transforms.instances.paint_boxes`; larger boxes
first, so a small box inside a large one keeps its own id) and augmented like a mask, as
:mod:`medres.transforms.instances` describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import DatasetError
from medres.io.grid import boxes_between_grids
from medres.pipeline import PipelineConfig
from medres.transforms.instances import MAX_INSTANCES

#: MONAI box modes by spatial dimensions.
BOX_MODES = {
    2: ("xyxy", "xxyy", "xywh", "ccwh"),
    3: ("xyzxyz", "xxyyzz", "xyxyzz", "xyzwhd", "cccwhd"),
}

#: Coordinate spaces a datalist's boxes may be given in.
BOX_SPACES = ("voxel", "ras_mm", "lps_mm")

#: Boxes reaching this far (voxels) outside the image are refused, not clipped.
OUTSIDE_TOLERANCE = 0.5


@dataclass(frozen=True)
class BoxTruth:
    """A case's boxes as the datalist gives them.

    Attributes:
        boxes: One tuple of ``2 * dims`` numbers per box, in ``mode``.
        classes: One class per box (``0 .. len(lesion_labels) - 1``).
        mode: MONAI box mode.
        space: ``voxel``, ``ras_mm`` or ``lps_mm``.
        where: ``datalist.json: case ID`` for messages.
    """

    boxes: tuple[tuple[float, ...], ...]
    classes: tuple[int, ...]
    mode: str
    space: str
    where: str


def read_box_entry(entry: dict[str, Any], defaults: dict[str, Any], *, where: str) -> BoxTruth:
    """The boxes of one datalist entry, checked for shape, mode, space and sizes.

    Raises:
        DatasetError: Names ``where`` and the problem.
    """
    mode = str(entry.get("box_mode", defaults.get("box_mode", "")))
    space = str(entry.get("box_space", defaults.get("box_space", "voxel")))
    known = [m for modes in BOX_MODES.values() for m in modes]
    if mode not in known:
        raise DatasetError(
            f"{where}: unknown box_mode {mode!r}; give one of {', '.join(known)} "
            "(for the file or per entry)"
        )
    if space not in BOX_SPACES:
        raise DatasetError(f"{where}: unknown box_space {space!r}; use {', '.join(BOX_SPACES)}")
    raw = entry.get("box")
    dims = next(d for d, modes in BOX_MODES.items() if mode in modes)
    if not isinstance(raw, list) or not all(
        isinstance(b, list) and len(b) == 2 * dims for b in raw
    ):
        raise DatasetError(f"{where}: 'box' must be a list of boxes of {2 * dims} numbers each")
    try:
        boxes = tuple(tuple(float(v) for v in b) for b in raw)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: 'box' holds a value that is not a number") from None
    if not all(np.isfinite(b).all() for b in boxes):
        raise DatasetError(f"{where}: 'box' holds NaN or infinite values")
    labels = entry.get("label", [0] * len(boxes))
    if not isinstance(labels, list) or len(labels) != len(boxes):
        raise DatasetError(f"{where}: 'label' needs one class per box ({len(boxes)})")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise DatasetError(f"{where}: 'label' classes must be integers")
    if len(boxes) > MAX_INSTANCES:
        raise DatasetError(f"{where}: {len(boxes)} boxes; at most {MAX_INSTANCES} per case")
    corners = _corners(boxes, mode, dims)
    for n, box in enumerate(corners):
        if not (box[dims:] > box[:dims]).all():
            raise DatasetError(
                f"{where}: box {n + 1} {list(boxes[n])} has a negative or zero size in "
                f"box_mode {mode}"
            )
    return BoxTruth(boxes, tuple(int(v) for v in labels), mode, space, where)


def _corners(boxes: Sequence[Sequence[float]], mode: str, dims: int) -> npt.NDArray[np.float64]:
    """Boxes in ``mode`` as corner boxes (``xyzxyz`` / ``xyxy``)."""
    from monai.data.box_utils import convert_box_mode

    if not boxes:
        return np.zeros((0, 2 * dims))
    target = "xyzxyz" if dims == 3 else "xyxy"
    converted = convert_box_mode(np.asarray(boxes, np.float64), src_mode=mode, dst_mode=target)
    return np.asarray(converted, dtype=np.float64)


def in_voxels(truth: BoxTruth, boxes: npt.NDArray[np.float64]) -> BoxTruth:
    """``truth`` with its boxes replaced by voxel-corner boxes (from :func:`voxel_boxes`)."""
    dims = boxes.shape[1] // 2 if boxes.size else len(truth.boxes[0]) // 2 if truth.boxes else 3
    return BoxTruth(
        boxes=tuple(tuple(float(v) for v in b) for b in boxes),
        classes=truth.classes,
        mode="xyzxyz" if dims == 3 else "xyxy",
        space="voxel",
        where=truth.where,
    )


def voxel_boxes(
    truth: BoxTruth, *, shape: Sequence[int], affine: npt.NDArray[np.floating], n_classes: int
) -> npt.NDArray[np.float64]:
    """The boxes as voxel-corner boxes of the image, checked against it.

    Raises:
        DatasetError: Wrong number of dimensions, a class outside ``0..n_classes - 1`` or a
            box outside the image (by more than :data:`OUTSIDE_TOLERANCE` voxels).
    """
    dims = len(shape)
    if truth.boxes and len(truth.boxes[0]) != 2 * dims:
        raise DatasetError(f"{truth.where}: {len(truth.boxes[0]) // 2}D boxes for a {dims}D image")
    bad = [c for c in truth.classes if not 0 <= c < n_classes]
    if bad:
        raise DatasetError(
            f"{truth.where}: box class {bad[0]} is not a lesion class 0..{n_classes - 1}"
        )
    boxes = _corners(truth.boxes, truth.mode, dims)
    if truth.space != "voxel":
        world = np.eye(4)
        if truth.space == "lps_mm":
            world[0, 0] = world[1, 1] = -1.0
        # a world box is a voxel box of a 1 mm grid whose voxel i spans [i - 0.5, i + 0.5)
        boxes = boxes_between_grids(boxes + 0.5, world, np.asarray(affine, np.float64))
    limit = np.asarray(list(shape), dtype=np.float64)
    for n, box in enumerate(boxes):
        low, high = box[:dims], box[dims:]
        if (low < -OUTSIDE_TOLERANCE).any() or (high > limit + OUTSIDE_TOLERANCE).any():
            raise DatasetError(
                f"{truth.where}: box {n + 1} {list(truth.boxes[n])} ({truth.space}) lies "
                f"outside the image of {list(shape)} voxels"
            )
    return np.clip(boxes, 0.0, np.concatenate([limit, limit]))


def checked_boxes(
    truth: BoxTruth, image_paths: Sequence[Path], cfg: PipelineConfig, *, case_id: str
) -> tuple[npt.NDArray[np.uint8], BoxTruth]:
    """A case's boxes painted as a label map (label indices), and the boxes in voxels.

    Raises:
        DatasetError: A missing image, boxes for a segmentation pipeline, boxes outside
            the image, of the wrong dimension or of an unknown class.
    """
    from medres.transforms.instances import paint_boxes
    from medres.transforms.presets import read_channels

    if not cfg.is_detection:
        raise DatasetError(
            f"{truth.where}: boxes train a detector; {cfg.name} is a segmentation "
            "pipeline (task: segmentation) and needs masks"
        )
    missing = [p for p in image_paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: image file is missing (case {case_id})")
    image = read_channels(image_paths, dims=cfg.dims)
    if image.array.shape[0] != len(cfg.channels):
        raise DatasetError(
            f"{image_paths[0]}: {image.array.shape[0]} channel(s) but the pipeline "
            f"expects {len(cfg.channels)} ({', '.join(cfg.channels)})"
        )
    shape = image.spatial_shape
    boxes = voxel_boxes(truth, shape=shape, affine=image.affine, n_classes=len(cfg.lesion_labels))
    indices = [cfg.lesion_indices[c] for c in truth.classes]
    ids, labels = paint_boxes(boxes, indices, shape=shape)
    return labels[ids], in_voxels(truth, boxes)


__all__ = [
    "BOX_MODES",
    "BOX_SPACES",
    "OUTSIDE_TOLERANCE",
    "BoxTruth",
    "checked_boxes",
    "in_voxels",
    "read_box_entry",
    "voxel_boxes",
]
