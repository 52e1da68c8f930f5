"""Lesion boxes: one per connected lesion (MONAI's corner convention), into RAS mm on
anisotropic, flipped and oblique grids, and weighted box fusion across members."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.box_ops import convert_mask_to_box

from medres.errors import ConfigError
from medres.inference.boxes import box_iou_matrix, boxes_from_label_map, boxes_to_ras_mm, fuse_boxes
from tests.conftest import oblique_affine


def test_one_box_per_connected_lesion_of_each_label() -> None:
    label_map = np.zeros((17, 15, 9), np.uint8)
    label_map[2:5, 3:4, 1:3] = 1
    label_map[10:16, 8:14, 6:9] = 1
    label_map[7:8, 0:2, 4:5] = 2
    boxes, labels = boxes_from_label_map(label_map, labels=[1, 2])
    assert labels.tolist() == [1, 1, 2]
    assert boxes.tolist() == [
        [2, 3, 1, 5, 4, 3],
        [10, 8, 6, 16, 14, 9],
        [7, 0, 4, 8, 2, 5],
    ]
    empty, none = boxes_from_label_map(np.zeros((5, 4, 3), np.uint8), labels=[1])
    assert empty.shape == (0, 6) and none.shape == (0,)


def test_2d_boxes_and_monai_agree() -> None:
    label_map = np.zeros((13, 11), np.uint8)
    label_map[4:9, 2:7] = 1
    boxes, _ = boxes_from_label_map(label_map, labels=[1])
    assert boxes.tolist() == [[4, 2, 9, 7]]
    monai_boxes, _ = convert_mask_to_box(torch.as_tensor(label_map[None]), bg_label=0)
    assert np.asarray(monai_boxes).tolist() == boxes.tolist()


def test_boxes_in_ras_mm_on_anisotropic_and_flipped_grids() -> None:
    box = np.array([[2.0, 3.0, 1.0, 5.0, 4.0, 3.0]])  # voxels 2..4, 3, 1..2
    affine = np.diag([2.5, 0.8, 0.8, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    mm = boxes_to_ras_mm(box, affine)
    # voxel edges at index 1.5 .. 4.5, 2.5 .. 3.5, 0.5 .. 2.5
    assert mm[0].tolist() == pytest.approx([13.75, -18.0, 5.4, 21.25, -17.2, 7.0])
    flipped = affine.copy()
    flipped[0, 0] = -2.5  # an LPS-like axis: the mm box still has min before max
    lows, highs = boxes_to_ras_mm(box, flipped)[0].reshape(2, 3)
    assert (lows < highs).all()
    assert lows[0] == pytest.approx(10.0 - 2.5 * 4.5)


def test_oblique_box_holds_every_voxel_of_the_lesion() -> None:
    affine = oblique_affine((2.5, 0.8, 0.8))
    label_map = np.zeros((12, 10, 8), np.uint8)
    label_map[3:7, 2:6, 1:4] = 1
    boxes, _ = boxes_from_label_map(label_map, labels=[1])
    lows, highs = boxes_to_ras_mm(boxes, affine)[0].reshape(2, 3)
    ijk = np.argwhere(label_map == 1).T.astype(float)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    assert (world.min(axis=1) >= lows - 1e-9).all()
    assert (world.max(axis=1) <= highs + 1e-9).all()


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 2, 2], [10, 10, 11, 11]], float)
    b = np.array([[1, 0, 3, 2]], float)
    assert box_iou_matrix(a, b)[:, 0].tolist() == pytest.approx([2 / 6, 0.0])
    assert box_iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


def test_fusion_of_three_members() -> None:
    lesion = np.array([10.0, 10.0, 20.0, 20.0])
    shifted = lesion + 1.0
    other = np.array([40.0, 40.0, 44.0, 44.0])
    fused = fuse_boxes(
        boxes=[np.array([lesion, other]), np.array([shifted]), np.zeros((0, 4))],
        scores=[np.array([0.9, 0.6]), np.array([0.3]), np.zeros(0)],
        labels=[np.array([1, 1]), np.array([1]), np.zeros(0, np.int64)],
    )
    assert fused.members == ((0, 1), (0,))
    assert fused.scores.tolist() == pytest.approx([(0.9 + 0.3) / 3, 0.6 / 3])
    assert fused.boxes[0].tolist() == pytest.approx((lesion * 0.9 + shifted * 0.3) / 1.2)
    assert fused.boxes[1].tolist() == other.tolist()


def test_fusion_keeps_labels_and_a_members_own_boxes_apart() -> None:
    box = np.array([[0.0, 0.0, 0.0, 4.0, 4.0, 4.0]])
    fused = fuse_boxes(
        boxes=[np.concatenate([box, box + 0.5]), box],
        scores=[np.array([0.8, 0.7]), np.array([0.9])],
        labels=[np.array([1, 1]), np.array([2])],
    )
    assert sorted(fused.labels.tolist()) == [1, 1, 2]  # other label: its own cluster
    assert all(len(members) == 1 for members in fused.members)
    with pytest.raises(ConfigError, match="every member"):
        fuse_boxes(boxes=[box], scores=[], labels=[])
    with pytest.raises(ConfigError, match="iou_threshold"):
        fuse_boxes(boxes=[box], scores=[np.array([1.0])], labels=[np.array([1])], iou_threshold=0)
