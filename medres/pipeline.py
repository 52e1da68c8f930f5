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

Example:
    >>> cfg = load_pipeline("pipelines/demo_ct_3d.yaml")  # doctest: +SKIP
    >>> cfg.dims, cfg.labels  # doctest: +SKIP
    (3, ('background', 'lesion'))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medres.errors import ConfigError
from medres.limits import MAX_CHANNELS, MAX_CONFIG_BYTES, MAX_CONFIG_NODES
from medres.types import StrEnum

if TYPE_CHECKING:
    import yaml


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


#: Deepest nesting of lists/mappings in a config file (real pipelines nest 4 levels).
MAX_CONFIG_DEPTH = 32
#: Longest list in ``model.params`` (e.g. ``channels``: one entry per resolution level).
MAX_PARAM_ITEMS = 16
#: Largest integer in ``model.params`` (channel/filter counts and every other count).
MAX_PARAM_INT = 4096
#: Tighter caps for parameters that are not channel counts (3D kernels grow as k^3).
PARAM_INT_CAPS = {
    "strides": 8,
    "kernel_size": 15,
    "num_res_units": 16,
    "blocks_down": 16,
    "blocks_up": 16,
}
#: Longest string value in ``model.params``.
MAX_PARAM_TEXT = 64
#: Largest side of ``training.patch_size`` / ``inference.roi_size`` (voxels).
MAX_PATCH_SIDE = 1024
#: Largest number of voxels of one training patch or sliding window (256^3).
MAX_PATCH_VOXELS = 256**3
#: Largest ``training.batch_size``.
MAX_BATCH_SIZE = 256
#: Largest ``inference.sw_batch_size``.
MAX_SW_BATCH_SIZE = 64
#: Largest number of voxels in one batch (batch size x patch voxels, per input channel).
MAX_BATCH_VOXELS = 1 << 27
#: Largest ``inference.overlap``: each axis needs 1 / (1 - overlap) times more windows.
MAX_OVERLAP = 0.9
#: Largest number of output labels (background included).
MAX_LABELS = 256
#: Smallest and largest ``preprocessing.target_spacing_mm`` entry (mm).
SPACING_RANGE_MM = (0.01, 100.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, str_max_length=1000)


def _check_sides(what: str, value: tuple[int, ...]) -> None:
    """Refuse patch/window sizes too small to be a window or too large to allocate."""
    if any(side < 4 for side in value):
        raise ValueError(f"{list(value)}: every side must be >= 4")
    if any(side > MAX_PATCH_SIDE for side in value):
        raise ValueError(f"{list(value)}: every side must be <= {MAX_PATCH_SIDE} voxels")
    if math.prod(value) > MAX_PATCH_VOXELS:
        raise ValueError(
            f"{list(value)}: {math.prod(value)} voxels per {what}, above the "
            f"{MAX_PATCH_VOXELS} (256^3) limit; use a smaller size"
        )


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
        for key, value in params.items():
            problem = _param_problem(str(key), value)
            if problem:
                raise ValueError(f".{_short(key)}: {problem}")
        return params


def _short(key: object, width: int = 40) -> str:
    text = str(key)
    return text if len(text) <= width else text[: width - 3] + "..."


def _param_problem(key: str, value: Any) -> str | None:
    """Why ``model.params[key] = value`` is refused before any network is built, or None."""
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_PARAM_ITEMS:
            return f"{len(value)} values, at most {MAX_PARAM_ITEMS} are accepted"
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                return "lists of lists are not accepted; give plain numbers"
            problem = _param_problem(key, item)
            if problem:
                return problem
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        cap = PARAM_INT_CAPS.get(key, MAX_PARAM_INT)
        if not 0 <= value <= cap:
            return f"{_short(value)} is outside 0..{cap}"
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if abs(value) > MAX_PARAM_INT:
            return f"{value} is outside -{MAX_PARAM_INT}..{MAX_PARAM_INT}"
        return None
    if isinstance(value, str):
        if len(value) > MAX_PARAM_TEXT:
            return f"text of {len(value)} characters, at most {MAX_PARAM_TEXT} are accepted"
        return None
    return (
        f"a {type(value).__name__} is not accepted; give a number, a string, null or a list "
        f"of up to {MAX_PARAM_ITEMS} numbers"
    )


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
        _check_sides("patch", value)
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
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
        if value is not None:
            _check_sides("window", value)
        return value

    @field_validator("overlap")
    @classmethod
    def _check_overlap(cls, value: float) -> float:
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
        roi = self.inference.roi_size or self.training.patch_size
        voxels = self.inference.sw_batch_size * math.prod(roi)
        if voxels > MAX_BATCH_VOXELS:
            raise ValueError(
                f"inference.sw_batch_size {self.inference.sw_batch_size} x window {list(roi)} "
                f"is {voxels} voxels per forward pass, above the {MAX_BATCH_VOXELS} limit; "
                "use a smaller sw_batch_size or roi_size"
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


#: How many problems one error message lists before "... and N more".
_MAX_LISTED = 5


def format_validation_errors(exc: ValidationError) -> str:
    """One line listing each bad key with its dotted path (the first few of many).

    Example: ``training.batchsize: unknown key (...); model: required key is missing``.
    """
    parts = []
    errors = exc.errors()
    for err in errors[:_MAX_LISTED]:
        where = ".".join(_short(p) for p in err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/user-guide.md)"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
            if message.startswith(".") and where:  # a validator naming a key inside its field
                where, message = where + message.split(":", 1)[0], message.split(":", 1)[1][1:]
        parts.append(f"{where}: {message}" if where else message)
    if len(errors) > _MAX_LISTED:
        parts.append(f"... and {len(errors) - _MAX_LISTED} more")
    return "; ".join(parts)


def read_config_bytes(path: str | Path, *, what: str = "config file") -> bytes:
    """The bytes of a small config file, refusing anything that is not one.

    Symbolic links are followed, but the target must be a regular file (not a FIFO, a
    device such as ``/dev/zero``, or a folder) of at most
    :data:`~medres.limits.MAX_CONFIG_BYTES`. The file is opened non-blocking and checked
    again after opening, and at most the cap plus one byte is read, so a file that grows
    or is swapped while being read cannot exhaust memory or hang.

    Args:
        path: The file.
        what: What to call it in messages (``"pipeline file"``, ``"manifest"``).

    Raises:
        ConfigError: Missing, not a regular file, too large or unreadable.

    Example:
        >>> read_config_bytes("pipelines/demo_ct_3d.yaml")[:5]  # doctest: +SKIP
        b'name:'
    """
    from medres.io.files import read_regular_bytes

    return read_regular_bytes(path, limit=MAX_CONFIG_BYTES, error=ConfigError, what=what)


def decode_config_text(data: bytes, *, source: str) -> str:
    """UTF-8 text of a config file (a leading byte-order mark is dropped).

    Raises:
        ConfigError: The bytes are not UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def yaml_size_problem(root: yaml.Node) -> str | None:
    """Why a composed YAML node graph is refused, or None when it may be constructed.

    Counts every node with aliases expanded (a memoised size per node, so the walk is
    linear in the text even for an alias bomb), and refuses more than
    :data:`~medres.limits.MAX_CONFIG_NODES` nodes, aliases that contain themselves and
    nesting deeper than :data:`MAX_CONFIG_DEPTH`. Iterative, so depth cannot overflow
    Python's stack.
    """
    sizes: dict[int, int] = {}
    active = {id(root)}
    stack: list[tuple[yaml.Node, list[yaml.Node], int]] = [(root, _yaml_children(root), 0)]
    while stack:
        node, kids, index = stack[-1]
        if index < len(kids):
            stack[-1] = (node, kids, index + 1)
            kid = kids[index]
            if id(kid) in sizes:
                continue
            if id(kid) in active:
                mark = kid.start_mark
                return (
                    f"recursive alias at line {mark.line + 1} (an anchor used inside itself); "
                    "a pipeline has no cycles"
                )
            if len(stack) >= MAX_CONFIG_DEPTH:
                return f"nested more than {MAX_CONFIG_DEPTH} levels deep"
            active.add(id(kid))
            stack.append((kid, _yaml_children(kid), 0))
            continue
        stack.pop()
        active.discard(id(node))
        total = 1 + sum(sizes[id(kid)] for kid in kids)
        if total > MAX_CONFIG_NODES:
            return (
                f"more than {MAX_CONFIG_NODES} YAML nodes with aliases expanded (an alias "
                "bomb?); a pipeline needs a few hundred: write the values out"
            )
        sizes[id(node)] = total
    return None


def _yaml_problem(exc: Exception) -> str:
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or type(exc).__name__
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"{problem}{where}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "an integer with thousands of digits"
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def parse_yaml(text: str, *, source: str) -> Any:
    """Safely parse one YAML document: compose, count nodes, then construct.

    Only the YAML safe schema is used (no Python tags), and the node graph is checked
    with :func:`yaml_size_problem` before any Python object is built.

    Raises:
        ConfigError: Syntax errors, several documents, alias bombs, recursive aliases,
            values that are not valid (a date such as 2021-02-30), prefixed by ``source``.

    Example:
        >>> parse_yaml("a: &x [1, 2]\nb: *x\n", source="t.yaml")
        {'a': [1, 2], 'b': [1, 2]}
    """
    import yaml

    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters already
        node = loader.get_single_node()
        if node is None:
            return None
        problem = yaml_size_problem(node)
        if problem:
            raise ConfigError(f"{source}: refused: {problem}")
        return loader.construct_document(node)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_pipeline(data: Any, *, source: str = "<config>") -> PipelineConfig:
    """Validate a parsed YAML/JSON mapping into a :class:`PipelineConfig`.

    Raises:
        ConfigError: Listing every bad key with its path, prefixed by ``source``.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a pipeline must be a mapping of keys, got {type(data).__name__}"
        )
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"{source}: invalid pipeline config: {format_validation_errors(exc)}"
        ) from None


def pipeline_from_bytes(data: bytes, *, source: str) -> PipelineConfig:
    """Decode, parse (see :func:`parse_yaml`) and validate the bytes of a pipeline file.

    Raises:
        ConfigError: Not UTF-8, not valid YAML, refused as too large, or invalid config.
    """
    return parse_pipeline(
        parse_yaml(decode_config_text(data, source=source), source=source), source=source
    )


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file.

    The file is read with :func:`read_config_bytes` (regular files up to
    :data:`~medres.limits.MAX_CONFIG_BYTES` only) and parsed with :func:`parse_yaml`.

    Raises:
        ConfigError: Missing file, not a regular file, too large, YAML syntax error, alias
            bomb, unknown keys or bad values; the message starts with ``path``.
    """
    path = Path(path)
    return pipeline_from_bytes(read_config_bytes(path, what="pipeline file"), source=str(path))


__all__ = [
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
    "decode_config_text",
    "format_validation_errors",
    "load_pipeline",
    "parse_pipeline",
    "parse_yaml",
    "pipeline_from_bytes",
    "read_config_bytes",
    "yaml_size_problem",
]
