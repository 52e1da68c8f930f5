"""The sections of a pipeline config, one frozen pydantic model each.

Unknown keys, wrong types and out-of-range values are refused by each section; checks
that need several sections at once live in :class:`~medres.pipeline.config.PipelineConfig`.
Spatial sizes are in the array index order ``(x, y[, z])`` (see :mod:`medres.types`).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medres.pipeline.caps import (
    MAX_BATCH_SIZE,
    MAX_BATCH_VOXELS,
    MAX_OVERLAP,
    MAX_PATCH_SIDE,
    MAX_SW_BATCH_SIZE,
    SPACING_RANGE_MM,
    _check_sides,
    _param_problem,
    _short,
)
from medres.pipeline.choices import (
    BoxLoss,
    EnsembleMode,
    IntensityKind,
    LossName,
    ScheduleName,
)


# Every section refuses unknown keys, NaN/infinity and overlong strings, and is frozen.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, str_max_length=1000)


class IntensityConfig(_Strict):
    """Intensity normalisation.

    Attributes:
        kind: See :class:`IntensityKind`.
        window: ``[low, high]`` for ``ct_window`` (HU), e.g. ``[-160, 240]``.
        foreground_only: For ``zscore``/``percentile``: compute statistics over non-zero
            voxels only (skull-stripped MR), leaving the background at 0.
    """

    kind: IntensityKind = IntensityKind.ZSCORE
    window: tuple[float, float] | None = None
    foreground_only: bool = True

    @model_validator(mode="after")
    def _check(self) -> IntensityConfig:
        """A ``ct_window`` needs a window with low below high."""
        if self.kind == IntensityKind.CT_WINDOW:
            if self.window is None:
                raise ValueError("intensity kind 'ct_window' needs window: [low, high] in HU")
            if self.window[0] >= self.window[1]:
                raise ValueError(f"intensity window {list(self.window)}: low must be below high")
        return self


class PreprocessingConfig(_Strict):
    """Deterministic, invertible geometry and intensity steps (cached once per scan).

    Attributes:
        orientation: Axis codes to reorient to (``RAS``, ``LPS``...), or ``null`` to keep
            the scan's own axis order. Only used for 3D.
        target_spacing_mm: Resample to this voxel size ``(x, y[, z])``, or ``null`` to keep.
        intensity: Normalisation, see :class:`IntensityConfig`.
        crop_foreground: Crop to the bounding box of non-zero image voxels (skull-stripped
            MR) before training; inverted (padded back) at prediction.
        pixel_size_mm: Pixel size ``(x, y)`` in mm of the 2D image files this pipeline
            predicts (PNG, TIFF, JPEG carry none): their lesions are then measured in mm,
            not pixels. ``medres predict --pixel-size-mm`` overrides it.
    """

    orientation: str | None = None
    target_spacing_mm: tuple[float, ...] | None = None
    intensity: IntensityConfig = IntensityConfig()
    crop_foreground: bool = False
    pixel_size_mm: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> PreprocessingConfig:
        """Orientation codes, and spacing within :data:`SPACING_RANGE_MM`."""
        if self.orientation is not None:
            codes = self.orientation.upper()
            pairs = [{"L", "R"}, {"A", "P"}, {"S", "I"}]
            if len(codes) != 3 or any(len(set(codes) & p) != 1 for p in pairs):
                raise ValueError(
                    f"orientation {self.orientation!r}: give three axis codes, one of each "
                    "L/R, A/P, S/I (e.g. RAS)"
                )
        if self.pixel_size_mm is not None and any(not 0 < s <= 100 for s in self.pixel_size_mm):
            raise ValueError(
                f"pixel_size_mm {list(self.pixel_size_mm)}: each size must be above 0 and at "
                "most 100 mm"
            )
        if self.target_spacing_mm is not None and any(s <= 0 for s in self.target_spacing_mm):
            raise ValueError(f"target_spacing_mm {list(self.target_spacing_mm)} must be > 0")
        low, high = SPACING_RANGE_MM
        if self.target_spacing_mm is not None and any(
            not low <= s <= high for s in self.target_spacing_mm
        ):
            raise ValueError(
                f"target_spacing_mm {list(self.target_spacing_mm)}: every entry must be "
                f"between {low} and {high} mm"
            )
        return self


class AugmentationConfig(_Strict):
    """Random augmentation applied to training patches only.

    Attributes:
        flip_axes: Spatial axes that may be mirrored (each with probability 0.5).
        rotate_deg: Maximum in-plane rotation (2D) or rotation about each axis (3D), degrees.
        scale: ``[min, max]`` zoom factor of the random affine.
        affine_prob: Probability of applying the random rotation/zoom.
        intensity_scale: Random multiplicative intensity change, +- this fraction.
        intensity_shift: Random additive intensity change, +- this (normalised units).
        intensity_prob: Probability of each intensity change.
        noise_std: Standard deviation of added Gaussian noise (normalised units).
        noise_prob: Probability of adding noise.
    """

    flip_axes: tuple[int, ...] = (0, 1)
    rotate_deg: float = Field(default=15.0, ge=0, le=180)
    scale: tuple[float, float] = (0.85, 1.15)
    affine_prob: float = Field(default=0.3, ge=0, le=1)
    intensity_scale: float = Field(default=0.1, ge=0)
    intensity_shift: float = Field(default=0.1, ge=0)
    intensity_prob: float = Field(default=0.3, ge=0, le=1)
    noise_std: float = Field(default=0.05, ge=0)
    noise_prob: float = Field(default=0.15, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> AugmentationConfig:
        """Zoom range ``0 < min <= max``."""
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"augmentation scale {list(self.scale)}: need 0 < min <= max")
        return self


class ModelConfig(_Strict):
    """Network: a registry name and its keyword parameters.

    Attributes:
        name: One of :func:`medres.models.registry.model_names`.
        params: Keyword arguments of that builder (checked when the model is built).
    """

    name: str = Field(max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter within the caps of :mod:`medres.pipeline.caps`."""
        for key, value in params.items():
            problem = _param_problem(str(key), value)
            if problem:
                raise ValueError(f".{_short(key)}: {problem}")
        return params


class OptimizerConfig(_Strict):
    """AdamW settings."""

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)


class TrainingConfig(_Strict):
    """Training budget and loop settings.

    Training stops at ``epochs`` or after ``max_minutes`` (when set), whichever comes
    first; the learning-rate schedule follows the larger of the two progress fractions,
    so a time-limited run still anneals to the end.

    Attributes:
        folds: Number of cross-validation folds (split by patient); one member per fold.
        seed: Seed for folds, sampling, augmentation and weights.
        epochs: Maximum number of epochs.
        iterations_per_epoch: Batches per epoch (patches are sampled, nnU-Net style).
        max_minutes: Wall-clock budget per member, or ``null`` for epochs only.
        batch_size: Patches per batch.
        patch_size: Training patch ``(x, y[, z])`` in voxels after preprocessing.
        positive_fraction: Fraction of patches drawn from cases that contain a lesion
            (and centred on lesion voxels where the case is larger than the patch).
        optimizer: AdamW settings.
        schedule: Learning-rate schedule.
        warmup_iterations: Linear warm-up length.
        loss: Loss function.
        val_every_epochs: Validate on the held-out fold every this many epochs.
        checkpoint_every_epochs: Save a resumable checkpoint every this many epochs.
    """

    folds: int = Field(default=3, ge=2, le=20)
    seed: int = 0
    epochs: int = Field(default=50, ge=1)
    iterations_per_epoch: int = Field(default=50, ge=1)
    max_minutes: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=8, ge=1, le=MAX_BATCH_SIZE)
    patch_size: tuple[int, ...]
    positive_fraction: float = Field(default=0.5, ge=0, le=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleName = ScheduleName.POLY
    warmup_iterations: int = Field(default=0, ge=0)
    loss: LossName = LossName.DICE_CE
    val_every_epochs: int = Field(default=1, ge=1)
    checkpoint_every_epochs: int = Field(default=1, ge=1)

    @field_validator("patch_size")
    @classmethod
    def _check_patch(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        """Patch sides and voxels within the caps."""
        _check_sides("patch", value)
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        """Voxels per batch within :data:`MAX_BATCH_VOXELS`."""
        voxels = self.batch_size * math.prod(self.patch_size)
        if voxels > MAX_BATCH_VOXELS:
            raise ValueError(
                f"batch_size {self.batch_size} x patch_size {list(self.patch_size)} is "
                f"{voxels} voxels per batch, above the {MAX_BATCH_VOXELS} limit; "
                "use a smaller batch or patch"
            )
        return self


class InferenceConfig(_Strict):
    """Defaults for ``medres predict`` and for validation during training.

    Attributes:
        roi_size: Sliding-window size ``(x, y[, z])``; defaults to the patch size.
        overlap: Fraction of overlap between windows.
        sw_batch_size: Windows per forward pass.
        tta: Average over mirrored copies (flip test-time augmentation) along
            ``augmentation.flip_axes`` (every combination of them).
        threshold: Probability above which a voxel is a lesion (binary tasks).
        ensemble: How members combine.
    """

    roi_size: tuple[int, ...] | None = None
    overlap: float = Field(default=0.5, ge=0, lt=1)
    sw_batch_size: int = Field(default=2, ge=1, le=MAX_SW_BATCH_SIZE)
    tta: bool = False
    threshold: float = Field(default=0.5, gt=0, lt=1)
    ensemble: EnsembleMode = EnsembleMode.MEAN

    @field_validator("roi_size")
    @classmethod
    def _check_roi(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        """Window sides and voxels within the caps."""
        if value is not None:
            _check_sides("window", value)
        return value

    @field_validator("overlap")
    @classmethod
    def _check_overlap(cls, value: float) -> float:
        """Overlap at most :data:`MAX_OVERLAP`."""
        if value > MAX_OVERLAP:
            per_axis = 1 / (1 - value) if value < 1 else math.inf
            raise ValueError(
                f"{value} is above {MAX_OVERLAP}: each axis would need {per_axis:.0f}x as many "
                f"windows as without overlap ({per_axis**3:.0e}x per 3D volume); use 0.25-0.5"
            )
        return value


class PostprocessingConfig(_Strict):
    """Lesion clean-up after prediction.

    Attributes:
        min_lesion_size: Connected components smaller than this are removed: mm^3 for 3D
            pipelines, mm^2 for 2D ones (px^2 for image files measured in pixels).
        max_lesions: Keep only this many largest lesions per label and scan (1: one lesion
            per image, as a skin lesion or a polyp); ``null`` keeps all.
        choose_from_cross_validation: After training, choose the threshold, the minimum
            size and whether to keep only the largest lesion from the members' out-of-fold
            predictions (as nnU-Net does), when that beats these settings.
    """

    min_lesion_size: float = Field(
        default=0.0, ge=0, description="smallest kept lesion: mm^3 in 3D pipelines, mm^2 in 2D ones"
    )
    max_lesions: int | None = Field(default=None, ge=1, le=10_000)
    choose_from_cross_validation: bool = True


class DetectionConfig(_Strict):
    """The lesion detector of a ``task: detection`` pipeline (anchors, matching, boxes).

    Boxes are in voxels of the model grid (after preprocessing), MONAI's corner
    convention; see :mod:`medres.inference.boxes`.

    Attributes:
        anchor_shapes: Anchors of one location at the finest pyramid level, edge lengths
            in model-grid voxels ``(x, y[, z])``, one list per anchor; every coarser level
            doubles them. ``null``: derived from the training boxes when training starts
            (:func:`medres.training.detection_data.derive_anchor_shapes`) and written into
            the model folder's resolved ``pipeline.yaml``.
        atss_candidates: ATSS: candidate anchors per pyramid level and true box (the
            closest centres); those above the mean + std of their IoUs match.
        negatives_per_image: Anchors sampled per image for the classification loss (hard
            negatives first).
        positive_fraction: Share of matched anchors among them.
        box_loss: Box regression loss: ``smooth_l1`` of the encoded offsets (robust from a
            random start) or ``giou`` of the decoded boxes.
        score_threshold: Detections scoring below this are dropped (FROC needs low
            scores: keep it small).
        nms_iou: Boxes overlapping a better one by more than this IoU are dropped.
        detections_per_image: At most this many boxes per scan and member.
        fusion_iou: Boxes of different members (and flip views) overlapping by at least
            this IoU are fused into one (weighted box fusion).
        report_score: Boxes scoring at least this are drawn and listed in the report
            (every box is in ``detections.json``).
        match_iou: Box IoU at which a detection finds a true lesion, in validation and
            evaluation (nnDetection's 0.1).
    """

    anchor_shapes: tuple[tuple[float, ...], ...] | None = Field(default=None, max_length=8)
    atss_candidates: int = Field(default=4, ge=1, le=64)
    negatives_per_image: int = Field(default=64, ge=1, le=4096)
    positive_fraction: float = Field(default=0.3, gt=0, lt=1)
    box_loss: BoxLoss = BoxLoss.SMOOTH_L1
    score_threshold: float = Field(default=0.05, ge=0, lt=1)
    nms_iou: float = Field(default=0.2, gt=0, le=1)
    detections_per_image: int = Field(default=32, ge=1, le=1000)
    fusion_iou: float = Field(default=0.4, gt=0, le=1)
    report_score: float = Field(default=0.5, ge=0, le=1)
    match_iou: float = Field(default=0.1, gt=0, le=1)

    @field_validator("anchor_shapes")
    @classmethod
    def _check_anchors(
        cls, value: tuple[tuple[float, ...], ...] | None
    ) -> tuple[tuple[float, ...], ...] | None:
        """Positive edges of at most the largest patch side."""
        for shape in value or ():
            if not all(0 < edge <= MAX_PATCH_SIDE for edge in shape):
                raise ValueError(
                    f"anchor shape {list(shape)}: edges must be > 0 and <= {MAX_PATCH_SIDE} voxels"
                )
        return value
