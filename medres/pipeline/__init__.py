"""Pipeline configs: the declarative YAML that says how a task is trained and predicted.

A pipeline file (``pipelines/*.yaml``) is validated into frozen pydantic models. Unknown
keys, wrong types and inconsistent values are refused with a message that names the file
and the key, before any data is read. Choices are plain strings checked against
``StrEnum`` members; models are named and resolved through
:mod:`medres.models.registry` (no code in configs).

Spatial sizes (``target_spacing_mm``, ``patch_size``, ``roi_size``) are given in the
array index order medres uses everywhere, ``(x, y[, z])`` (see :mod:`medres.types`).

Config files are distrusted like any other input: only regular files of at most
:data:`~medres.limits.MAX_CONFIG_BYTES` are read (:func:`read_config_bytes`), YAML is
composed and its nodes counted with every alias expanded before any Python object is
built (:func:`parse_yaml`), and sizes a config may ask for (patch and window sides, batch
sizes, network parameter lists) are capped, so a hostile file ends as one
:class:`~medres.errors.ConfigError` line instead of an out-of-memory kill or a hang.

Modules, one job each:

* :mod:`~medres.pipeline.choices`: the ``StrEnum`` choices (intensity, loss, schedule...).
* :mod:`~medres.pipeline.caps`: the caps on sizes and network parameters.
* :mod:`~medres.pipeline.sections`: one pydantic model per config section.
* :mod:`~medres.pipeline.config`: :class:`PipelineConfig`, the checks across sections.
* :mod:`~medres.pipeline.loader`: capped file reading and the guarded YAML parser.
* :mod:`~medres.pipeline.parse`: validation into a config, one-line error messages.

Example:
    >>> cfg = load_pipeline("pipelines/demo_ct_3d.yaml")  # doctest: +SKIP
    >>> cfg.dims, cfg.labels  # doctest: +SKIP
    (3, ('background', 'lesion'))
"""

from __future__ import annotations

from medres.pipeline.caps import (
    MAX_BATCH_SIZE,
    MAX_BATCH_VOXELS,
    MAX_LABELS,
    MAX_OVERLAP,
    MAX_PARAM_INT,
    MAX_PARAM_ITEMS,
    MAX_PARAM_TEXT,
    MAX_PATCH_SIDE,
    MAX_PATCH_VOXELS,
    MAX_SW_BATCH_SIZE,
    PARAM_INT_CAPS,
    SPACING_RANGE_MM,
)
from medres.pipeline.choices import (
    DETECTION_MODELS,
    BoxLoss,
    EnsembleMode,
    IntensityKind,
    LossName,
    ScheduleName,
    TaskKind,
)
from medres.pipeline.config import PipelineConfig
from medres.pipeline.loader import (
    MAX_CONFIG_DEPTH,
    decode_config_text,
    parse_yaml,
    read_config_bytes,
    yaml_size_problem,
)
from medres.pipeline.parse import (
    format_validation_errors,
    load_pipeline,
    parse_pipeline,
    pipeline_from_bytes,
)
from medres.pipeline.sections import (
    AugmentationConfig,
    DetectionConfig,
    InferenceConfig,
    IntensityConfig,
    ModelConfig,
    OptimizerConfig,
    PostprocessingConfig,
    PreprocessingConfig,
    TrainingConfig,
)

__all__ = [
    "DETECTION_MODELS",
    "MAX_BATCH_SIZE",
    "MAX_BATCH_VOXELS",
    "MAX_CONFIG_DEPTH",
    "MAX_LABELS",
    "MAX_OVERLAP",
    "MAX_PARAM_INT",
    "MAX_PARAM_ITEMS",
    "MAX_PARAM_TEXT",
    "MAX_PATCH_SIDE",
    "MAX_PATCH_VOXELS",
    "MAX_SW_BATCH_SIZE",
    "PARAM_INT_CAPS",
    "SPACING_RANGE_MM",
    "AugmentationConfig",
    "BoxLoss",
    "DetectionConfig",
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
    "TaskKind",
    "TrainingConfig",
    "decode_config_text",
    "format_validation_errors",
    "load_pipeline",
    "parse_pipeline",
    "parse_yaml",
    "pipeline_from_bytes",
    "read_config_bytes",
    "yaml_size_problem",
]
