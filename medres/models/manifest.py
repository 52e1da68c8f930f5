"""The ``model.json`` of a model folder: its schema, file names and strict parsing.

:class:`ModelManifest` (with one :class:`MemberEntry` per member) is what ``model.json``
may hold; :func:`parse_manifest` refuses anything else (not UTF-8, NaN, duplicate keys,
unknown keys, bad checksums) as one :class:`~medres.errors.ModelError` line naming the
file. The names of the files in a model folder and the checksum and version helpers that
fill a manifest live here too.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medres._version import __version__
from medres.errors import ConfigError, ModelError
from medres.pipeline import PipelineConfig, decode_config_text, format_validation_errors

MANIFEST = "model.json"
PIPELINE = "pipeline.yaml"
SPLIT = "split.json"
WEIGHTS = "model.pt"
FORMAT_VERSION = 1
#: Most members one model folder may list (folds are at most 20).
MAX_MEMBERS = 64

_SHA256 = r"^[0-9a-f]{64}$"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape a model's numbers."""
    import monai
    import numpy
    import torch

    return {
        "medres": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
    }


class MemberEntry(BaseModel):
    """One member as recorded in ``model.json`` (validated, unknown keys refused).

    Attributes:
        name: Plain sub-folder name inside the model folder (``fold_0``), never a path.
        fold: Cross-validation fold index (>= 0).
        weights_sha256: Lower-case hex sha256 of the member's ``model.pt``.
        val_dice: Best validation Dice (0..1), or null.
        summary: The member's training summary (free-form provenance).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    fold: int = Field(ge=0, le=10_000, strict=True)
    weights_sha256: str = Field(pattern=_SHA256)
    val_dice: float | None = Field(default=None, ge=0, le=1, strict=True)
    summary: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """A member name is a plain folder name, never a path."""
        if not _PLAIN_NAME.match(value) or value in {".", ".."}:
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise ValueError(
                f"{shown!r} is not a plain folder name inside the model folder (like fold_0)"
            )
        return value


class ExportEntry(BaseModel):
    """One exported file of a member (written by ``medres export``), as in ``model.json``.

    Attributes:
        member: The member's name (``fold_0``).
        runtime: What runs the file: ``onnx`` (ONNX Runtime) or ``openvino``.
        precision: ``fp32``, or ``int8`` (post-training quantised, calibrated on scans).
        file: Path inside the member's folder (``model.onnx``, ``model.int8.xml``...).
        sha256: Checksum of ``file``.
        data_file / data_sha256: OpenVINO's weights (``.bin``) beside its ``.xml``.
        weights_sha256: The ``model.pt`` it was exported from (an export of other weights
            is never used).
        window: The input window ``(C_in, x, y[, z])`` it was checked on (any batch runs).
        max_abs_logit_difference: Largest ``|logit - torch logit|`` on the check input.
        label_agreement: Share of the check input's voxels whose label (arg-max) equals
            the PyTorch network's.
        foreground_dice: Dice of the voxels labelled foreground by it and by the PyTorch
            network on the check input (1 when neither labels any; None in entries of
            an earlier medres, which ``auto`` then passes over); ``--runtime auto``
            takes an int8 file only when it is at least
            :data:`~medres.inference.runtimes.INT8_AUTO_MIN_DICE`.
        check_input: What the check ran on (``calibration windows`` or ``random``).
        versions: The packages that wrote it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    member: str = Field(max_length=64)
    runtime: Literal["onnx", "openvino"]
    precision: Literal["fp32", "int8"]
    file: str = Field(max_length=200)
    sha256: str = Field(pattern=_SHA256)
    data_file: str | None = Field(default=None, max_length=200)
    data_sha256: str | None = Field(default=None, pattern=_SHA256)
    weights_sha256: str = Field(pattern=_SHA256)
    window: tuple[int, ...] = Field(min_length=3, max_length=4)
    max_abs_logit_difference: float = Field(ge=0)
    label_agreement: float = Field(ge=0, le=1)
    foreground_dice: float | None = Field(default=None, ge=0, le=1)
    check_input: str = Field(max_length=200)
    versions: dict[str, str] = Field(default_factory=dict)

    @field_validator("file", "data_file")
    @classmethod
    def _plain_file(cls, value: str | None) -> str | None:
        """An exported file sits in its member's folder: a plain name, never a path."""
        if value is not None and (not _PLAIN_NAME.match(value) or value in {".", ".."}):
            raise ValueError(f"{value[:40]!r} is not a plain file name inside the member folder")
        return value


class PostprocessingChoice(BaseModel):
    """The settings that turn probabilities into lesions: threshold, smallest lesion, and
    how many lesions a scan keeps per label (None: all)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")

    threshold: float = Field(gt=0, lt=1)
    min_lesion_size: float = Field(ge=0)
    max_lesions: int | None = Field(default=None, ge=1)

    def describe(self, size_unit: str) -> str:
        """e.g. ``threshold 0.5, lesions from 40 px², the largest only`` (``size_unit``:
        of ``min_lesion_size``, ``mm³``, ``mm²`` or ``px²``)."""
        if self.max_lesions is None:
            kept = "all lesions kept"
        elif self.max_lesions == 1:
            kept = "the largest lesion only"
        else:
            kept = f"the {self.max_lesions} largest lesions"
        size = f"lesions from {self.min_lesion_size:g} {size_unit}"
        return f"threshold {self.threshold:g}, {size}, {kept}"


class CrossValidationEntry(BaseModel):
    """What the members' out-of-fold predictions chose (``medres train`` writes it after
    the last fold; :mod:`medres.training.tuning`).

    Attributes:
        weights_sha256: Member name -> the weights it was fitted for; a retrained member
            makes the entry stale (then it is not applied).
        temperatures: Member name -> its temperature: predict divides the member's logits
            by it before the softmax (1: unchanged).
        configured: The pipeline's own post-processing.
        chosen: The post-processing predict applies (the configured one when no candidate
            beat it).
        scores: Out-of-fold figures (``dice_configured``, ``dice_chosen``, ``f1_...``).
        ece: Expected calibration error before and after the temperatures, over all
            voxels and over the lesion region (``all_before``, ``lesion_after``...).
        candidates: The best candidates tried, with their scores.
        n_cases: Out-of-fold cases (slices or volumes) used.
        length_unit: The scans' length unit (``mm`` or ``px``).
        size_unit: The unit of ``min_lesion_size``: ``mm³``, ``mm²`` or ``px²``.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="allow")

    weights_sha256: dict[str, str]
    temperatures: dict[str, float]
    configured: PostprocessingChoice
    chosen: PostprocessingChoice
    scores: dict[str, float] = Field(default_factory=dict)
    ece: dict[str, float] = Field(default_factory=dict)
    candidates: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    n_cases: int = Field(ge=1)
    length_unit: Literal["mm", "px"] = "mm"
    size_unit: Literal["mm³", "mm²", "px²"] = "mm³"

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.01 <= v <= 100}
        if bad:
            raise ValueError(f"temperatures must lie in 0.01..100: {bad}")
        return value


class ModelManifest(BaseModel):
    """The validated ``model.json`` of a model folder.

    Extra top-level keys (training provenance such as ``training``) are kept as they are.

    Attributes:
        format_version: Manifest format (1).
        pipeline: Name of the pipeline the members were trained with.
        description: One line for humans.
        dims: 2 or 3, as in the pipeline.
        channels: Input channel names, as in the pipeline.
        labels: Output label names, as in the pipeline.
        lesion_labels: Lesion label names, as in the pipeline.
        model: Registry name of the network, as in the pipeline.
        versions: Package versions at training time.
        pipeline_sha256: sha256 of ``pipeline.yaml``; absent in manifests written by older
            medres versions (then the pipeline is not verified, see
            :attr:`ModelFolder.unverified`).
        members: The trained members.
        exports: The members' exported networks (``medres export``); dropped when the
            members are retrained.
        cross_validation: Temperatures and post-processing chosen from the members'
            out-of-fold predictions (:class:`CrossValidationEntry`), or None.
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    format_version: int = Field(ge=1, le=FORMAT_VERSION, strict=True)
    pipeline: str = Field(max_length=200)
    description: str = ""
    dims: Literal[2, 3]
    channels: tuple[str, ...] = Field(min_length=1)
    labels: tuple[str, ...] = Field(min_length=2)
    lesion_labels: tuple[str, ...]
    model: str = Field(max_length=64)
    versions: dict[str, str] = Field(default_factory=dict)
    pipeline_sha256: str | None = Field(default=None, pattern=_SHA256)
    members: tuple[MemberEntry, ...] = Field(max_length=MAX_MEMBERS)
    exports: tuple[ExportEntry, ...] = Field(default=(), max_length=8 * MAX_MEMBERS)
    cross_validation: CrossValidationEntry | None = None

    @field_validator("members")
    @classmethod
    def _unique(cls, members: tuple[MemberEntry, ...]) -> tuple[MemberEntry, ...]:
        """Each member is listed once."""
        names = [m.name for m in members]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"member(s) {twice} are listed more than once")
        return members


def fits_members(entry: CrossValidationEntry, manifest: ModelManifest) -> bool:
    """Whether the entry was fitted for exactly these members' weights."""
    return entry.weights_sha256 == {m.name: m.weights_sha256 for m in manifest.members}


def apply_cross_validation(
    path: str | Path, manifest: ModelManifest, pipeline: PipelineConfig
) -> tuple[PipelineConfig, str]:
    """The pipeline with the post-processing its cross-validation chose (threshold,
    smallest lesion, lesions kept), and a note when the choice is stale or switched off."""
    entry = manifest.cross_validation
    if entry is None:
        return pipeline, ""
    if not fits_members(entry, manifest):
        return pipeline, (
            f"{Path(path) / MANIFEST}: the cross-validated post-processing and temperatures were "
            "fitted for other weights (members retrained): not applied"
        )
    if not pipeline.postprocessing.choose_from_cross_validation:
        return pipeline, ""
    chosen = entry.chosen
    return pipeline.model_copy(
        update={
            "inference": pipeline.inference.model_copy(update={"threshold": chosen.threshold}),
            "postprocessing": pipeline.postprocessing.model_copy(
                update={
                    "min_lesion_size": chosen.min_lesion_size,
                    "max_lesions": chosen.max_lesions,
                }
            ),
        }
    ), ""


def _refuse_constant(name: str) -> float:
    """``json.loads`` hook: refuse ``NaN`` and ``Infinity``, which JSON does not allow."""
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: refuse an object that has one key twice."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            shown = key if len(key) <= 40 else key[:37] + "..."
            raise ValueError(f"key {shown!r} appears twice in one object")
        result[key] = value
    return result


def parse_manifest(data: bytes, *, source: str) -> ModelManifest:
    """Decode, parse and validate the bytes of a ``model.json``.

    Raises:
        ModelError: Not UTF-8, not JSON (NaN, duplicate keys and thousand-digit numbers
            included), or not a valid manifest; the message starts with ``source``.

    Example:
        >>> parse_manifest(b"[]", source="m/model.json")  # doctest: +SKIP
        Traceback (most recent call last):
        ModelError: m/model.json: a manifest must be a JSON object, got a list; ...
    """
    try:
        text = decode_config_text(data, source=source)
    except ConfigError as exc:
        raise ModelError(str(exc)) from None
    try:
        raw = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); "
            "restore the manifest written by medres train"
        ) from None
    except RecursionError:
        raise ModelError(f"{source}: not valid JSON: nested too deeply") from None
    except ValueError as exc:
        reason = str(exc)
        if "integer string conversion" in reason:
            reason = "an integer with thousands of digits"
        raise ModelError(f"{source}: not valid JSON: {reason}") from None
    if not isinstance(raw, dict):
        kinds = {"list": "a list", "str": "a string", "NoneType": "null"}
        kind = kinds.get(type(raw).__name__, type(raw).__name__)
        raise ModelError(
            f"{source}: a manifest must be a JSON object, got {kind}; "
            "restore the manifest written by medres train"
        )
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as exc:
        raise ModelError(
            f"{source}: invalid manifest: {format_validation_errors(exc)}; "
            "restore the manifest written by medres train"
        ) from None
