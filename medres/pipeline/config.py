"""The whole task config, :class:`PipelineConfig`, and its checks across sections."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from medres.limits import MAX_CHANNELS
from medres.pipeline.caps import MAX_BATCH_VOXELS, MAX_LABELS
from medres.pipeline.choices import TaskKind
from medres.pipeline.sections import (
    AugmentationConfig,
    DetectionConfig,
    InferenceConfig,
    ModelConfig,
    PostprocessingConfig,
    PreprocessingConfig,
    TrainingConfig,
    _Strict,
)


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
        task: ``segmentation`` (a label per voxel) or ``detection`` (a box and a score per
            lesion, see :class:`DetectionConfig`); the model must be of that kind.
        detection: The detector's settings; only for ``task: detection`` (filled with
            the defaults when left out).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: TaskKind = TaskKind.SEGMENTATION
    description: str = ""
    dims: Literal[2, 3]
    channels: tuple[str, ...] = Field(min_length=1, max_length=MAX_CHANNELS)
    labels: tuple[str, ...] = Field(min_length=2, max_length=MAX_LABELS)
    lesion_labels: tuple[str, ...] = Field(min_length=1, max_length=MAX_LABELS)
    label_map: dict[int, int] = Field(default_factory=dict)
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    model: ModelConfig
    training: TrainingConfig
    inference: InferenceConfig = InferenceConfig()
    postprocessing: PostprocessingConfig = PostprocessingConfig()
    detection: DetectionConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_detection(cls, data: Any) -> Any:
        """A detection pipeline without a ``detection`` section gets the defaults."""
        detector = isinstance(data, dict) and str(data.get("task")) == TaskKind.DETECTION
        if detector and data.get("detection") is None:
            data = {**data, "detection": {}}
        return data

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        """Labels, label map, sizes per ``dims``, flip axes and the inference batch, together."""
        n = self.dims
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels {list(self.labels)} contain duplicates")
        unknown = [name for name in self.lesion_labels if name not in self.labels]
        if unknown:
            raise ValueError(f"lesion_labels {unknown} are not in labels {list(self.labels)}")
        if self.labels[0] in self.lesion_labels:
            raise ValueError("label 0 is the background and cannot be a lesion label")
        self._check_task()
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
        roi = self.inference.roi_size or self.training.patch_size
        voxels = self.inference.sw_batch_size * math.prod(roi)
        if voxels > MAX_BATCH_VOXELS:
            raise ValueError(
                f"inference.sw_batch_size {self.inference.sw_batch_size} x window {list(roi)} "
                f"is {voxels} voxels per forward pass, above the {MAX_BATCH_VOXELS} limit; "
                "use a smaller sw_batch_size or roi_size"
            )
        return self

    def _check_task(self) -> None:
        """The model is of the task's kind; ``detection`` only with ``task: detection``."""
        from medres.pipeline.choices import DETECTION_MODELS

        detector = self.model.name in DETECTION_MODELS
        if self.task == TaskKind.DETECTION and not detector:
            raise ValueError(
                f"task detection needs a detection model ({', '.join(DETECTION_MODELS)}), "
                f"not {self.model.name!r}"
            )
        if self.task == TaskKind.SEGMENTATION and detector:
            raise ValueError(f"model {self.model.name!r} is a detector: set task: detection")
        if self.task == TaskKind.SEGMENTATION and self.detection is not None:
            raise ValueError("the detection section is only for task: detection")
        shapes = self.detection.anchor_shapes if self.detection else None
        for shape in shapes or ():
            if len(shape) != self.dims:
                raise ValueError(
                    f"detection.anchor_shapes: {list(shape)} has {len(shape)} edges but dims "
                    f"is {self.dims}"
                )

    @property
    def is_detection(self) -> bool:
        """Whether this pipeline trains and runs a lesion detector."""
        return self.task == TaskKind.DETECTION

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
