"""Detection members: box targets from augmented patches, anchors from the training boxes,
and validation by FROC.

A detection member trains with the segmentation members' loop (:mod:`medres.training.loop`):
the same cases, folds, patches, augmentation, budget, checkpoints and TensorBoard. What
differs is here:

* :func:`batch_targets`: the detector's targets, one box per lesion id left in each
  augmented patch (:mod:`medres.transforms.instances`), labels numbered among the
  pipeline's lesion labels.
* :func:`derive_anchor_shapes`: with ``detection.anchor_shapes: null`` the anchors are
  chosen from the boxes of the training lesions on the model grid, once before the folds
  train, and written into the model folder's ``pipeline.yaml``.
* :func:`validate_detector`: the held-out fold's CPM (mean sensitivity at 1/8..8 false
  positives per patient group, box IoU >= ``detection.match_iou``); the best-scoring
  weights are kept, as the best Dice is for segmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medres.errors import TrainingError
from medres.evaluation.boxes import match_boxes
from medres.evaluation.detection import LesionMatch, cpm, froc
from medres.inference.detect import detect
from medres.models.detection import BOX_KEY, LABEL_KEY
from medres.pipeline import PipelineConfig
from medres.training.datasets import TrainingCase
from medres.transforms.instances import INSTANCE_LABELS, instance_boxes

#: Anchor edges are never smaller than this (voxels of the model grid).
MIN_ANCHOR_EDGE = 4.0


def batch_targets(
    batch: dict[str, Any], cfg: PipelineConfig, *, device: str
) -> list[dict[str, Any]]:
    """The detector's targets of a training batch: per patch, the boxes of its lesion ids.

    Labels are positions in ``cfg.lesion_labels`` (the detector's classes).
    """
    import torch

    ids = batch["label"].cpu().numpy()
    per_id = np.asarray(batch[INSTANCE_LABELS].cpu())
    class_of = {index: k for k, index in enumerate(cfg.lesion_indices)}
    targets = []
    for b in range(ids.shape[0]):
        boxes, labels = instance_boxes(ids[b, 0], per_id[b])
        classes = [class_of[int(label)] for label in labels]
        targets.append(
            {
                BOX_KEY: torch.as_tensor(boxes, dtype=torch.float32, device=device),
                LABEL_KEY: torch.as_tensor(classes, dtype=torch.int64, device=device),
            }
        )
    return targets


def detection_loss(net: Any, batch: dict[str, Any], cfg: PipelineConfig, *, device: str) -> Any:
    """Classification (focal) plus box regression loss of one batch."""
    images = batch["image"].to(device)
    losses = net(images, batch_targets(batch, cfg, device=device))
    return losses[net.cls_key] + losses[net.box_reg_key]


def derive_anchor_shapes(
    box_edges: Sequence[Sequence[float]], *, dims: int, n_levels: int
) -> tuple[tuple[float, ...], ...]:
    """Three anchor shapes at the finest pyramid level, from the training boxes' edges.

    The levels double the shapes, so three shapes a third of an octave apart cover the
    lesions from the smallest to ``2 ** (n_levels - 1)`` times the largest base shape. The
    smallest base shape is the 5th percentile of the boxes' geometric-mean edge (at least
    :data:`MIN_ANCHOR_EDGE`), stretched per axis by the median aspect of the boxes; when
    the lesions span more than the levels cover, the base grows so that the largest
    lesions (95th percentile) still meet an anchor of their size.

    Args:
        box_edges: Edge lengths ``(x, y[, z])`` of every training box, model-grid voxels.
        dims: 2 or 3.
        n_levels: Pyramid levels.
    """
    edges = np.asarray(box_edges, dtype=np.float64).reshape(-1, dims)
    if edges.size == 0:
        return tuple(tuple([8.0 * 2 ** (k / 3)] * dims) for k in range(3))
    edges = np.maximum(edges, 1.0)
    mean_edge = np.exp(np.log(edges).mean(axis=1))
    aspect = np.median(edges / mean_edge[:, None], axis=0)
    aspect = aspect / np.exp(np.log(aspect).mean())
    low, high = np.percentile(mean_edge, 5), np.percentile(mean_edge, 95)
    reach = 2 ** (n_levels - 1 + 2 / 3)  # largest anchor / smallest anchor
    base = max(low, high / reach, MIN_ANCHOR_EDGE)
    return tuple(tuple(round(float(base * 2 ** (k / 3) * a), 2) for a in aspect) for k in range(3))


def training_box_edges(cfg: PipelineConfig, cases: Sequence[TrainingCase]) -> list[list[float]]:
    """Edges of every lesion's box on the model grid (after preprocessing) of ``cases``."""
    from medres.transforms.presets import unwrap_transform_errors, validation_transforms

    transform = validation_transforms(cfg)
    edges: list[list[float]] = []
    with unwrap_transform_errors():
        for case in cases:
            item = transform(case.record())
            boxes, _ = instance_boxes(np.asarray(item["label"])[0], item[INSTANCE_LABELS])
            edges += (boxes[:, cfg.dims :] - boxes[:, : cfg.dims]).tolist()
    return edges


def with_anchor_shapes(
    cfg: PipelineConfig, cases: Sequence[TrainingCase], lesion_cases: set[str]
) -> PipelineConfig:
    """``cfg`` with ``detection.anchor_shapes`` chosen from the lesion cases' boxes when
    it leaves them ``null`` (else ``cfg`` itself)."""
    det = cfg.detection
    if det is None or det.anchor_shapes is not None:
        return cfg
    returned = cfg.model.params.get("returned_layers", (1, 2))
    with_lesions = [c for c in cases if c.case_id in lesion_cases]
    edges = training_box_edges(cfg, with_lesions)
    shapes = derive_anchor_shapes(edges, dims=cfg.dims, n_levels=len(returned) + 1)
    return cfg.model_copy(update={"detection": det.model_copy(update={"anchor_shapes": shapes})})


def validate_detector(
    net: Any, items: Sequence[dict[str, Any]], cfg: PipelineConfig, *, device: str
) -> tuple[float, dict[str, float]]:
    """CPM of the held-out cases (false positives per patient group), and each group's.

    A group's own score is its CPM with its cases pooled (one group: FPs per group).

    Raises:
        TrainingError: A validation case without a patient group.
    """
    det = cfg.detection
    assert det is not None
    by_group: dict[str, list[LesionMatch]] = {}
    for item in items:
        if "group" not in item:
            raise TrainingError("validation case without a patient group")
        views = detect(net, item["image"], cfg, device=device, source=str(item.get("case_id")))
        truth, _ = instance_boxes(np.asarray(item["label"])[0], item[INSTANCE_LABELS])
        view = views[0]
        by_group.setdefault(str(item["group"]), []).extend(
            match_boxes(view.boxes, view.scores, truth, iou_threshold=det.match_iou)
        )
    per_group = {name: cpm(*froc(matches, 1)[:2])[0] for name, matches in sorted(by_group.items())}
    pooled = [m for matches in by_group.values() for m in matches]
    score = cpm(*froc(pooled, max(len(by_group), 1))[:2])[0] if pooled else 0.0
    return (score if math.isfinite(score) else 0.0), per_group


__all__ = [
    "MIN_ANCHOR_EDGE",
    "batch_targets",
    "derive_anchor_shapes",
    "detection_loss",
    "training_box_edges",
    "validate_detector",
    "with_anchor_shapes",
]
