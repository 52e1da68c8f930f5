"""Lesion boxes: from label maps (one box per connected lesion), into RAS mm, and fused
across the members of an ensemble (weighted box fusion).

Box convention (MONAI's detection convention, used by :mod:`medres.models.detection`):
an array ``(N, 2 * dims)`` of voxel-index corners ``(i0, j0[, k0], i1, j1[, k1])`` where
voxel ``i`` covers ``[i, i + 1)``: a lesion made of voxels 3..5 along an axis spans 3 to 6.
medres puts voxel *centres* at integer indices elsewhere (``center_ijk``), so the same box
spans index ``2.5 .. 5.5`` around the centres, which :func:`boxes_to_ras_mm` maps to mm.

Example:
    >>> import numpy as np
    >>> label_map = np.zeros((9, 7, 5), np.uint8); label_map[3:6, 2:4, 1:2] = 1
    >>> boxes, labels = boxes_from_label_map(label_map, labels=[1])
    >>> boxes.tolist(), labels.tolist()
    ([[3.0, 2.0, 1.0, 6.0, 4.0, 2.0]], [1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medres.errors import ConfigError
from medres.io.grid import boxes_between_grids


def label_boxes(
    label_map: npt.NDArray[np.integer], label: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The face-connected components of one label: corner boxes ``(M, 2 * dims)`` and
    their voxel counts, in the order of each component's first voxel."""
    import cc3d

    mask = np.asarray(label_map) == label
    dims = mask.ndim
    if not mask.any():
        return np.zeros((0, 2 * dims)), np.zeros(0, np.int64)
    volume = mask if dims == 3 else mask[..., None]
    components = cc3d.connected_components(volume.astype(np.uint8), connectivity=6)
    stats = cc3d.statistics(components)
    boxes = [
        [float(s.start) for s in box[:dims]] + [float(s.stop) for s in box[:dims]]
        for box in stats["bounding_boxes"][1:]
    ]
    counts = np.asarray(stats["voxel_counts"][1:], np.int64)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 2 * dims), counts


def boxes_from_label_map(
    label_map: npt.NDArray[np.integer], *, labels: Sequence[int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """One box per connected component of each label in ``labels``.

    Components are face-connected (6-connectivity in 3D, 4 in 2D), as medres's lesions.

    Args:
        label_map: Integer label map ``(x, y[, z])``.
        labels: The label values that are lesions.

    Returns:
        ``boxes (N, 2 * dims)`` in voxel corners (see the module docstring) and their
        ``labels (N,)``, ordered by label, then by the component's first voxel.
    """
    dims = label_map.ndim
    per_label = [(label, label_boxes(label_map, label)[0]) for label in labels]
    boxes = [box for _, found in per_label for box in found]
    found = [int(label) for label, boxes_of in per_label for _ in boxes_of]
    return (
        np.asarray(boxes, dtype=np.float64).reshape(-1, 2 * dims),
        np.asarray(found, dtype=np.int64),
    )


def boxes_to_ras_mm(
    boxes: npt.NDArray[np.floating], affine: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Voxel-corner boxes -> axis-aligned boxes in RAS mm ``(N, 2 * dims)``.

    Each box's corners (voxel edges: index ``start - 0.5`` and ``stop - 0.5`` around the
    centres) go through the affine; the result is the smallest RAS box holding them (on
    an oblique grid it is larger than the voxel box). 2D boxes use the first two rows and
    columns of the affine and the translation (the slice plane).

    Args:
        boxes: ``(N, 4)`` or ``(N, 6)`` voxel-corner boxes.
        affine: The grid's voxel-to-RAS affine (4x4).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, boxes.shape[-1] if boxes.ndim == 2 else 0))
    dims = boxes.shape[1] // 2
    matrix = np.asarray(affine, dtype=np.float64)
    out = np.empty_like(boxes)
    for n, box in enumerate(boxes):
        low, high = box[:dims] - 0.5, box[dims:] - 0.5
        corners = np.array(np.meshgrid(*zip(low, high, strict=True), indexing="ij"))
        corners = corners.reshape(dims, -1)
        ijk = np.zeros((3, corners.shape[1]))
        ijk[:dims] = corners
        world = matrix[:3, :3] @ ijk + matrix[:3, 3:4]
        out[n, :dims] = world[:dims].min(axis=1)
        out[n, dims:] = world[:dims].max(axis=1)
    return out


def box_iou_matrix(
    a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """IoU of every box of ``a`` with every box of ``b`` (same convention), ``(Na, Nb)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    dims = a.shape[1] // 2 if a.size else b.shape[1] // 2 if b.size else 0
    if not (a.size and b.size):
        return np.zeros((len(a), len(b)))
    low = np.maximum(a[:, None, :dims], b[None, :, :dims])
    high = np.minimum(a[:, None, dims:], b[None, :, dims:])
    overlap = np.clip(high - low, 0, None).prod(axis=-1)
    size_a = (a[:, dims:] - a[:, :dims]).prod(axis=-1)
    size_b = (b[:, dims:] - b[:, :dims]).prod(axis=-1)
    union = size_a[:, None] + size_b[None, :] - overlap
    iou: npt.NDArray[np.float64] = np.where(union > 0, overlap / np.where(union > 0, union, 1), 0.0)
    return iou


@dataclass(frozen=True)
class FusedBoxes:
    """Boxes of several members fused into one list (:func:`fuse_boxes`).

    Attributes:
        boxes: ``(N, 2 * dims)`` score-weighted mean of the clustered boxes.
        scores: ``(N,)`` sum of the cluster's scores over the number of members (a box
            one member of three found at 0.9 scores 0.3).
        labels: ``(N,)`` the cluster's label.
        members: Per box, the sorted indices of the members that found it.
    """

    boxes: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    members: tuple[tuple[int, ...], ...]


def fuse_boxes(
    boxes: Sequence[npt.NDArray[np.floating]],
    scores: Sequence[npt.NDArray[np.floating]],
    labels: Sequence[npt.NDArray[np.integer]],
    *,
    iou_threshold: float = 0.4,
) -> FusedBoxes:
    """Weighted box fusion of the members' detections.

    Boxes of all members, best score first, join the first cluster of their label whose
    fused box they overlap by at least ``iou_threshold``, and start a new cluster
    otherwise; a member adds at most one box to a cluster (its best). A cluster's box is
    the score-weighted mean of its boxes; its score the sum of their scores over the
    number of members, so agreement raises it.

    Args:
        boxes: Per member, ``(Ni, 2 * dims)`` boxes.
        scores: Per member, ``(Ni,)`` scores in 0..1.
        labels: Per member, ``(Ni,)`` labels.
        iou_threshold: Overlap that puts two boxes in one cluster.

    Raises:
        ConfigError: Lists of different lengths, or a threshold outside 0..1.
    """
    if not len(boxes) == len(scores) == len(labels) or not boxes:
        raise ConfigError("fuse_boxes: give boxes, scores and labels for every member (>= 1)")
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"fuse_boxes: iou_threshold {iou_threshold} must be in (0, 1]")
    n_members = len(boxes)
    entries = [
        (float(s), int(lab), member, np.asarray(b, dtype=np.float64))
        for member in range(n_members)
        for b, s, lab in zip(boxes[member], scores[member], labels[member], strict=True)
    ]
    entries.sort(key=lambda e: -e[0])
    clusters: list[_Cluster] = []
    for score, label, member, box in entries:
        chosen = next(
            (
                c
                for c in clusters
                if c.label == label
                and member not in c.members
                and box_iou_matrix(box[None], c.box[None])[0, 0] >= iou_threshold
            ),
            None,
        )
        if chosen is None:
            clusters.append(_Cluster(label=label, members={member}, weights=[score], boxes=[box]))
        else:
            chosen.add(member, score, box)
    shapes = [np.asarray(b).shape for b in boxes]
    width = entries[0][3].shape[0] if entries else next((s[1] for s in shapes if len(s) == 2), 4)
    return FusedBoxes(
        boxes=np.asarray([c.box for c in clusters], dtype=np.float64).reshape(-1, width),
        scores=np.asarray([sum(c.weights) / n_members for c in clusters], dtype=np.float64),
        labels=np.asarray([c.label for c in clusters], dtype=np.int64),
        members=tuple(tuple(sorted(c.members)) for c in clusters),
    )


@dataclass
class _Cluster:
    """Boxes of one lesion from several members, while fusing."""

    label: int
    members: set[int]
    weights: list[float]
    boxes: list[npt.NDArray[np.float64]]

    @property
    def box(self) -> npt.NDArray[np.float64]:
        """The score-weighted mean box."""
        weights = np.asarray(self.weights)
        fused: npt.NDArray[np.float64] = (np.asarray(self.boxes) * weights[:, None]).sum(
            0
        ) / weights.sum()
        return fused

    def add(self, member: int, score: float, box: npt.NDArray[np.float64]) -> None:
        """One more member's box."""
        self.members.add(member)
        self.weights.append(score)
        self.boxes.append(box)


__all__ = [
    "FusedBoxes",
    "box_iou_matrix",
    "boxes_between_grids",
    "boxes_from_label_map",
    "boxes_to_ras_mm",
    "fuse_boxes",
    "label_boxes",
]
