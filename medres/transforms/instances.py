"""Lesion instances for detection training: one id per connected lesion, carried through
augmentation, so the boxes are taken after every crop, flip, rotation and zoom.

A detector learns boxes, but medres augments images and masks with MONAI's spatial
transforms. As nnDetection does, the truth travels as an *instance map* (each lesion its
own id, interpolated with ``nearest`` like any label) and the boxes are read off the
augmented patch (:func:`instance_boxes`): a rotated lesion gets the box of its rotated
voxels and a lesion cut by the patch border the box of what is left of it.

:class:`InstanceLabelsd` turns the label map (label indices, after preprocessing) into
that instance map, ``uint8`` ids ``1..n`` (face-connected components of each lesion
label, the same lesions ``medres predict`` counts), and stores which label each id has in
``record["instance_labels"]``: an array of :data:`MAX_INSTANCES` + 1 label indices
(0 for unused ids), fixed in size so that batches collate.

Example:
    >>> import numpy as np
    >>> label = np.zeros((1, 8, 8), np.uint8); label[0, 1:3, 1:3] = 1; label[0, 5:7, 5:8] = 1
    >>> ids, labels = lesion_instances(label[0], lesion_indices=[1])
    >>> int(ids.max()), labels[:3].tolist()
    (2, [0, 1, 1])
    >>> instance_boxes(ids, labels)[0].tolist()
    [[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 7.0, 8.0]]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import DatasetError

#: Most lesions one training case may hold (ids are ``uint8``; more is refused).
MAX_INSTANCES = 255

#: Key of the per-id label indices in a training record.
INSTANCE_LABELS = "instance_labels"


def lesion_instances(
    label_map: npt.NDArray[np.integer],
    *,
    lesion_indices: Sequence[int],
    source: str = "case",
    min_voxels: float = 0.0,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """An instance map (``uint8`` ids ``1..n``) and the label index of each id.

    Components are face-connected (4 in 2D, 6 in 3D), numbered by label, then by their
    first voxel. Components of fewer than ``min_voxels`` voxels are not lesions to find:
    they become background.

    Raises:
        DatasetError: More than :data:`MAX_INSTANCES` lesions in one case.
    """
    import cc3d

    label_map = np.asarray(label_map)
    ids = np.zeros(label_map.shape, np.uint8)
    labels = np.zeros(MAX_INSTANCES + 1, np.uint8)
    count = 0
    for index in lesion_indices:
        mask = label_map == index
        if not mask.any():
            continue
        volume = mask if mask.ndim == 3 else mask[..., None]
        components, n = cc3d.connected_components(
            np.ascontiguousarray(volume, dtype=np.uint8), connectivity=6, return_N=True
        )
        components = components.reshape(mask.shape).astype(np.int64)
        if min_voxels > 0 and n:
            sizes = np.bincount(components.ravel(), minlength=n + 1)
            kept = np.flatnonzero(sizes[1:] >= min_voxels) + 1
            renumber = np.zeros(n + 1, np.int64)
            renumber[kept] = np.arange(1, kept.size + 1)
            components, n = renumber[components], int(kept.size)
            mask = components > 0
        if count + n > MAX_INSTANCES:
            raise DatasetError(
                f"{source}: more than {MAX_INSTANCES} separate lesions in one case; a "
                "detector trains on at most that many per image (split the case)"
            )
        ids[mask] = (components[mask] + count).astype(np.uint8)
        labels[count + 1 : count + n + 1] = index
        count += int(n)
    return ids, labels


def instance_boxes(
    instance_map: npt.NDArray[np.integer], instance_labels: npt.NDArray[np.integer]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """One box per instance id present in ``instance_map`` (MONAI's corner convention,
    ``[first, last + 1)`` per axis) and its label index, in id order.

    Args:
        instance_map: Ids ``(x, y[, z])`` (0: background).
        instance_labels: Label index of every id (index = id).
    """
    import cc3d

    ids = np.asarray(instance_map)
    dims = ids.ndim
    present = np.unique(ids)
    present = present[present > 0]
    if present.size == 0:
        return np.zeros((0, 2 * dims)), np.zeros(0, np.int64)
    volume = ids if dims == 3 else ids[..., None]
    stats = cc3d.statistics(np.ascontiguousarray(volume, dtype=np.uint32))
    boxes = []
    for value in present:
        box = stats["bounding_boxes"][int(value)]
        boxes.append([float(s.start) for s in box[:dims]] + [float(s.stop) for s in box[:dims]])
    labels = np.asarray([int(instance_labels[int(v)]) for v in present], dtype=np.int64)
    return np.asarray(boxes, dtype=np.float64), labels


def paint_boxes(
    boxes: npt.NDArray[np.float64], label_indices: Sequence[int], *, shape: Sequence[int]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Truth given as boxes, as an instance map: box ``n`` painted with id ``n + 1``
    (larger boxes first, so a smaller box inside a larger one keeps its id) and the label
    index of every id, as :class:`InstanceLabelsd` gives them for masks.

    A voxel belongs to a box when its centre lies inside it.

    Args:
        boxes: ``(N, 2 * dims)`` voxel-corner boxes on the image.
        label_indices: Label index (``cfg.labels``) of each box.
        shape: The image's spatial shape.
    """
    dims = len(shape)
    ids = np.zeros(tuple(shape), np.uint8)
    labels = np.zeros(MAX_INSTANCES + 1, np.uint8)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 2 * dims)
    sizes = [(b[dims:] - b[:dims]).prod() for b in boxes]
    for n in sorted(range(len(boxes)), key=lambda k: -sizes[k]):
        low = np.ceil(boxes[n, :dims] - 0.5).astype(int)
        high = np.maximum(np.ceil(boxes[n, dims:] - 0.5).astype(int), low + 1)
        ids[tuple(slice(a, b) for a, b in zip(low, high, strict=True))] = n + 1
        labels[n + 1] = int(label_indices[n])
    return ids, labels


class InstanceLabelsd:
    """MONAI-style dictionary transform: ``record["label"]`` becomes its instance map.

    The label's MetaTensor (affine, meta) is kept; ``record["instance_labels"]`` gets the
    label index of every id. A record whose truth came as boxes already holds its instance
    map (painted by :class:`~medres.transforms.presets.LoadCased`) and passes unchanged.
    Deterministic, so ``CacheDataset`` caches it.
    """

    def __init__(
        self, lesion_indices: Sequence[int], *, key: str = "label", min_size: float = 0.0
    ) -> None:
        """``min_size``: smallest lesion to find, mm^3 (3D) or mm^2 (2D) on the label's grid
        (the pipeline's ``postprocessing.min_lesion_size``); smaller ones become background."""
        self.lesion_indices = tuple(lesion_indices)
        self.key = key
        self.min_size = float(min_size)

    def __call__(self, record: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(record)
        if INSTANCE_LABELS in record:  # painted from boxes already
            return out
        label = record[self.key]
        array = np.asarray(label.array if hasattr(label, "array") else label)
        source = str(record.get("case_id") or record.get(self.key + "_path") or "case")
        min_voxels = 0.0
        if self.min_size > 0 and hasattr(label, "affine"):
            dims = array.ndim - 1
            affine = np.asarray(label.affine, dtype=np.float64)
            min_voxels = self.min_size / abs(float(np.linalg.det(affine[:dims, :dims])))
        ids, labels = lesion_instances(
            array[0], lesion_indices=self.lesion_indices, source=source, min_voxels=min_voxels
        )
        if hasattr(label, "affine"):  # a MetaTensor: keep its affine and meta
            from monai.data import MetaTensor

            out[self.key] = MetaTensor(ids[None], meta=dict(label.meta))  # meta holds the affine
        else:
            out[self.key] = ids[None]
        out[INSTANCE_LABELS] = labels
        return out


__all__ = [
    "INSTANCE_LABELS",
    "MAX_INSTANCES",
    "InstanceLabelsd",
    "instance_boxes",
    "lesion_instances",
    "paint_boxes",
]
