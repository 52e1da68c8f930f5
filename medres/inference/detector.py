"""Detector ensembles: the boxes of every member (and flip view), fused, on the scan's grid.

A :class:`DetectionEnsemble` is an :class:`~medres.inference.predictor.Ensemble` of
``task: detection`` model folders. For one scan, per folder: the scan is preprocessed
onto the folder's model grid (the same transforms as a segmentation folder); each member
detects boxes there (:func:`~medres.inference.detect.detect`, once per flip view); the
boxes go back to the scan's grid through the two affines
(:func:`~medres.inference.boxes.boxes_between_grids`). Then all views of all members are
fused by weighted box fusion (:func:`~medres.inference.boxes.fuse_boxes`): a box's score
is its cluster's summed score over the number of views, and the members that put a box
in the cluster are its agreement. Boxes too small to hold a lesion of the pipeline's
``postprocessing.min_lesion_size`` are dropped, as segmented lesions of that size are.

Example:
    >>> ensemble = DetectionEnsemble([ModelFolder.open("models/lgg_det")])  # doctest: +SKIP
    >>> found = ensemble.predict(volume)  # doctest: +SKIP
    >>> found.boxes.shape  # (N, 2 * dims), voxel corners of the scan's grid  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from medres.errors import LoadError, ModelError
from medres.inference.boxes import FusedBoxes, boxes_between_grids, fuse_boxes
from medres.inference.detect import DetectorView, detect
from medres.inference.predictor import Ensemble
from medres.io.grid import Grid
from medres.io.volume import Volume
from medres.models.folder import ModelFolder
from medres.pipeline import PipelineConfig


@dataclass
class DetectionPrediction:
    """A detector ensemble's boxes of one scan, on the scan's own grid.

    Attributes:
        boxes: ``(N, 2 * dims)`` voxel corners, best score first.
        scores: ``(N,)`` fused scores.
        labels: ``(N,)`` label indices (``cfg.labels``).
        members: Per box, the names of the members that found it.
        member_names: Every member (``pipeline/member``).
        views_per_member: Flip views each member ran.
        grid: The scan's grid as predicted (2D scans: the 2D grid).
        member_boxes: Each member's own fused views, with ``keep_members``.
        seconds: ``preprocess``, ``detect``, ``fuse``.
    """

    boxes: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    members: list[tuple[str, ...]]
    member_names: list[str]
    views_per_member: int
    grid: Grid
    member_boxes: dict[str, FusedBoxes] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def check_detectors(folders: Sequence[ModelFolder]) -> None:
    """Refuse folders that are not detectors (segmentation folders go to an Ensemble).

    Raises:
        ModelError: Names the folder.
    """
    for folder in folders:
        if not folder.pipeline.is_detection:
            raise ModelError(f"{folder.path}: not a detection model (task: segmentation)")


class DetectionEnsemble(Ensemble):
    """The members of one or more detection model folders, fused box by box.

    Args: as :class:`~medres.inference.predictor.Ensemble` (``mode`` is not used).

    Raises:
        ModelError: Incompatible folders, or a segmentation folder among them.
    """

    def __init__(self, folders: Sequence[ModelFolder], **kwargs: object) -> None:
        check_detectors(folders)
        super().__init__(folders, **kwargs)  # type: ignore[arg-type]

    #: True: boxes on lesions (an Ensemble of segmentation folders says False)
    is_detector: bool = True

    def predict_boxes(
        self,
        volume: Volume,
        *,
        source: str = "scan",
        keep_members: bool = False,
        on_stage: Callable[[str], None] | None = None,
    ) -> DetectionPrediction:
        """Detect, map back and fuse the boxes of one scan.

        Raises:
            LoadError: The scan does not fit the models (dims, channels), or holds
                non-finite values after preprocessing.
            ModelError: A member gave non-finite boxes or scores.
        """
        from medres.transforms.presets import fit_dims

        problem = self.input_problem(volume)
        if problem is not None:
            raise LoadError(f"{source}: {problem}")
        volume = fit_dims(volume, dims=self.cfg.dims, source=source)
        grid = Grid(volume.spatial_shape, volume.affine)
        stage = on_stage or (lambda _: None)
        seconds = {"preprocess": 0.0, "detect": 0.0, "fuse": 0.0}
        views: list[DetectorView] = []
        view_member: list[int] = []
        member = 0
        for runner in self.runners:
            cfg = runner.folder.pipeline
            start = time.perf_counter()
            stage(f"preprocess ({cfg.name})")
            tensor, model_affine = self._preprocess(runner, volume, source)
            seconds["preprocess"] += time.perf_counter() - start
            for info, net in zip(runner.members, runner.networks, strict=True):
                stage(f"detect {cfg.name}/{info.name}")
                start = time.perf_counter()
                found = detect(
                    net,
                    tensor,
                    cfg,
                    device=self.device,
                    flips=self._flips(runner),
                    overlap=self.overlap,
                    source=source,
                )
                seconds["detect"] += time.perf_counter() - start
                for view in found:
                    mapped = boxes_between_grids(
                        view.boxes, model_affine, volume.affine, target_shape=grid.shape
                    )
                    views.append(DetectorView(mapped, view.scores, view.labels, view.flip))
                    view_member.append(member)
                member += 1
        start = time.perf_counter()
        prediction = self._fuse(views, view_member, grid, keep_members=keep_members)
        seconds["fuse"] = time.perf_counter() - start
        prediction.seconds = seconds
        return prediction

    def _fuse(
        self,
        views: Sequence[DetectorView],
        view_member: Sequence[int],
        grid: Grid,
        *,
        keep_members: bool,
    ) -> DetectionPrediction:
        """Weighted box fusion of every view; per box the members that found it."""
        det = self.cfg.detection
        if det is None:
            raise ModelError(f"{self.folders[0].path}: not a detection model")
        names = self.member_names
        fused = _drop_small(_fuse_views(views, det.fusion_iou), grid, self.cfg)
        order = np.argsort(-fused.scores, kind="stable")
        members = [tuple(sorted({names[view_member[v]] for v in fused.members[i]})) for i in order]
        per_member: dict[str, FusedBoxes] = {}
        if keep_members:
            for m, name in enumerate(names):
                own = [v for v, owner in zip(views, view_member, strict=True) if owner == m]
                per_member[name] = _drop_small(_fuse_views(own, det.fusion_iou), grid, self.cfg)
        return DetectionPrediction(
            boxes=fused.boxes[order],
            scores=fused.scores[order],
            labels=fused.labels[order],
            members=members,
            member_names=names,
            views_per_member=len(views) // max(self.n_members, 1),
            grid=grid,
            member_boxes=per_member,
        )


def _drop_small(fused: FusedBoxes, grid: Grid, cfg: PipelineConfig) -> FusedBoxes:
    """Boxes smaller than ``postprocessing.min_lesion_size`` (their whole box, mm^3 or
    mm^2 on the scan grid) cannot hold a lesion of that size: dropped."""
    minimum = cfg.postprocessing.min_lesion_size
    if minimum <= 0 or not len(fused.scores):
        return fused
    dims = fused.boxes.shape[1] // 2
    sizes = (fused.boxes[:, dims:] - fused.boxes[:, :dims]).prod(axis=1) * grid.voxel_measure
    keep = np.flatnonzero(sizes >= minimum)
    return FusedBoxes(
        fused.boxes[keep],
        fused.scores[keep],
        fused.labels[keep],
        tuple(fused.members[k] for k in keep),
    )


def _fuse_views(views: Sequence[DetectorView], iou: float) -> FusedBoxes:
    if not views:
        return FusedBoxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), ())
    return fuse_boxes(
        [v.boxes for v in views],
        [v.scores for v in views],
        [v.labels for v in views],
        iou_threshold=iou,
    )


__all__ = ["DetectionEnsemble", "DetectionPrediction", "check_detectors"]
