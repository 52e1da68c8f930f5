"""Pipeline configs: the declarative YAML that says how a task is trained and predicted.

A pipeline file (``pipelines/*.yaml``) is validated into frozen pydantic models. Unknown
keys, wrong types and inconsistent values are refused with a message that names the file
and the key, before any data is read. Choices are plain strings checked against
``StrEnum`` members; models are named and resolved through
:mod:`medres.models.registry` (no code in configs).

Spatial sizes (``target_spacing_mm``, ``patch_size``, ``roi_size``) are given in the
array index order medres uses everywhere, ``(x, y[, z])`` (see :mod:`medres.types`).

Example:
    >>> cfg = load_pipeline("pipelines/demo_ct_3d.yaml")  # doctest: +SKIP
    >>> cfg.dims, cfg.labels  # doctest: +SKIP
    (3, ('background', 'lesion'))
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medres.errors import ConfigError

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10
    from enum import Enum

    class StrEnum(str, Enum):
        """String enum for Python 3.10."""


class IntensityKind(StrEnum):
    """How image intensities are normalised before the network sees them."""

    #: Clip to a window (CT HU) and scale to [0, 1].
    CT_WINDOW = "ct_window"
    #: Subtract the mean and divide by the standard deviation, per channel.
    ZSCORE = "zscore"
    #: Clip each channel to its 0.5-99.5 percentiles and scale to [0, 1].
    PERCENTILE = "percentile"
    #: Leave values as they are (already normalised data).
    NONE = "none"


class LossName(StrEnum):
    """Training loss (all from MONAI, softmax over the label channels)."""

    DICE_CE = "dice_ce"
    DICE = "dice"
    DICE_FOCAL = "dice_focal"


class ScheduleName(StrEnum):
    """Learning-rate schedule over the training budget (epochs or minutes, whichever ends first)."""

    POLY = "poly"
    COSINE = "cosine"
    CONSTANT = "constant"


class EnsembleMode(StrEnum):
    """How the members of a model folder are combined at prediction time."""

    MEAN = "mean"
    VOTE = "vote"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """

    orientation: str | None = None
    target_spacing_mm: tuple[float, ...] | None = None
    intensity: IntensityConfig = IntensityConfig()
    crop_foreground: bool = False

    @model_validator(mode="after")
    def _check(self) -> PreprocessingConfig:
        if self.orientation is not None:
            codes = self.orientation.upper()
            pairs = [{"L", "R"}, {"A", "P"}, {"S", "I"}]
            if len(codes) != 3 or any(len(set(codes) & p) != 1 for p in pairs):
                raise ValueError(
                    f"orientation {self.orientation!r}: give three axis codes, one of each "
                    "L/R, A/P, S/I (e.g. RAS)"
                )
        if self.target_spacing_mm is not None and any(s <= 0 for s in self.target_spacing_mm):
            raise ValueError(f"target_spacing_mm {list(self.target_spacing_mm)} must be > 0")
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
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"augmentation scale {list(self.scale)}: need 0 < min <= max")
        return self


class ModelConfig(_Strict):
    """Network: a registry name and its keyword parameters.

    Attributes:
        name: One of :func:`medres.models.registry.model_names`.
        params: Keyword arguments of that builder (checked when the model is built).
    """

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


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
    batch_size: int = Field(default=8, ge=1)
    patch_size: tuple[int, ...]
    positive_fraction: float = Field(default=0.5, ge=0, le=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleName = ScheduleName.POLY
    warmup_iterations: int = Field(default=0, ge=0)
    loss: LossName = LossName.DICE_CE
    val_every_epochs: int = Field(default=1, ge=1)
    checkpoint_every_epochs: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if any(p < 4 for p in self.patch_size):
            raise ValueError(f"patch_size {list(self.patch_size)}: every side must be >= 4")
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
    sw_batch_size: int = Field(default=2, ge=1)
    tta: bool = False
    threshold: float = Field(default=0.5, gt=0, lt=1)
    ensemble: EnsembleMode = EnsembleMode.MEAN


class PostprocessingConfig(_Strict):
    """Lesion clean-up after prediction.

    Attributes:
        min_lesion_size: Connected components smaller than this are removed: mm^3 for 3D
            pipelines, mm^2 for 2D ones.
    """

    min_lesion_size: float = Field(default=0.0, ge=0)


class PipelineConfig(_Strict):
    """A whole task: data, preprocessing, augmentation, model, training, inference.

    Attributes:
        name: Short identifier (file-name safe).
        description: One line for humans.
        dims: 2 for slice-wise 2D images, 3 for volumes.
        channels: Input channel names, in order (their count is the network's input).
        labels: Output label names; index 0 must be the background.
        lesion_labels: Which labels are lesions (counted as instances at prediction).
        label_map: Raw mask value -> label index, for masks that use other values (BraTS
            1-4 -> 1). Values not listed map to themselves and must be valid label indices;
            anything else is refused when the data set is checked.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    dims: Literal[2, 3]
    channels: tuple[str, ...] = Field(min_length=1)
    labels: tuple[str, ...] = Field(min_length=2)
    lesion_labels: tuple[str, ...] = Field(min_length=1)
    label_map: dict[int, int] = Field(default_factory=dict)
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    model: ModelConfig
    training: TrainingConfig
    inference: InferenceConfig = InferenceConfig()
    postprocessing: PostprocessingConfig = PostprocessingConfig()

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        n = self.dims
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels {list(self.labels)} contain duplicates")
        unknown = [name for name in self.lesion_labels if name not in self.labels]
        if unknown:
            raise ValueError(f"lesion_labels {unknown} are not in labels {list(self.labels)}")
        if self.labels[0] in self.lesion_labels:
            raise ValueError("label 0 is the background and cannot be a lesion label")
        for raw, target in self.label_map.items():
            if raw < 0 or not 0 <= target < len(self.labels):
                raise ValueError(
                    f"label_map {raw}: {target}: target must be a label index "
                    f"0..{len(self.labels) - 1}"
                )
        sizes = {
            "training.patch_size": self.training.patch_size,
            "inference.roi_size": self.inference.roi_size,
            "preprocessing.target_spacing_mm": self.preprocessing.target_spacing_mm,
        }
        for key, value in sizes.items():
            if value is not None and len(value) != n:
                raise ValueError(f"{key} has {len(value)} values but dims is {n}")
        if any(axis >= n or axis < 0 for axis in self.augmentation.flip_axes):
            raise ValueError(
                f"augmentation.flip_axes {list(self.augmentation.flip_axes)}: axes are 0..{n - 1}"
            )
        return self

    @property
    def roi_size(self) -> tuple[int, ...]:
        """Sliding-window size: ``inference.roi_size`` or the training patch size."""
        return self.inference.roi_size or self.training.patch_size

    @property
    def lesion_indices(self) -> tuple[int, ...]:
        """Label indices of the lesion labels."""
        return tuple(self.labels.index(name) for name in self.lesion_labels)

    def to_yaml(self) -> str:
        """The resolved config (all defaults filled in) as YAML text."""
        import yaml

        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/user-guide.md)"
        elif err["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_pipeline(data: Any, *, source: str = "<config>") -> PipelineConfig:
    """Validate a parsed YAML/JSON mapping into a :class:`PipelineConfig`.

    Raises:
        ConfigError: Listing every bad key with its path, prefixed by ``source``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a pipeline must be a mapping of keys, got {type(data)}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid pipeline config:\n{_format_errors(exc)}") from None


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file.

    Raises:
        ConfigError: Missing file, YAML syntax error, unknown keys or bad values.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_pipeline(data, source=str(path))


__all__ = [
    "AugmentationConfig",
    "EnsembleMode",
    "InferenceConfig",
    "IntensityConfig",
    "IntensityKind",
    "LossName",
    "ModelConfig",
    "OptimizerConfig",
    "PipelineConfig",
    "PostprocessingConfig",
    "PreprocessingConfig",
    "ScheduleName",
    "TrainingConfig",
    "load_pipeline",
    "parse_pipeline",
]
