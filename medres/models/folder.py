"""Self-describing model folders: everything needed to use a trained model, in one folder.

Layout written by ``medres train``::

    MODEL_DIR/
      model.json          manifest: medres/torch/monai versions, labels, channels, the
                          sha256 of pipeline.yaml, and members with the sha256 of their
                          weights, validation Dice and training summary
      pipeline.yaml       the resolved pipeline config (every default filled in)
      split.json          patient groups of each fold (and excluded test groups)
      fold_0/
        model.pt          best weights (a plain state dict, loaded with weights_only=True)
        metrics.json      validation Dice per patient, best epoch, budget used
        curve.csv         loss, learning rate and validation Dice per epoch
        tensorboard/      the same scalars as TensorBoard events
      fold_1/ ...

Loading needs nothing but that folder, and trusts nothing in it: :meth:`ModelFolder.open`
validates ``model.json`` against :class:`ModelManifest`, checks that every file it uses
(``model.json``, ``pipeline.yaml``, each ``model.pt``) is a regular file inside the folder
(symbolic links resolved), checks every checksum and that manifest and pipeline agree;
:meth:`ModelFolder.load_network` refuses weights that are not a plain state dict of
finite tensors fitting the pipeline's network. Every failure is one :class:`ModelError`
line that starts with the file it is about.

Example:
    >>> folder = ModelFolder.open("models/demo_ct_3d")  # doctest: +SKIP
    >>> net = folder.load_network(folder.members[0], device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medres._version import __version__
from medres.errors import ConfigError, ModelError
from medres.io.atomic import write_text_atomic
from medres.io.files import open_regular
from medres.limits import check_allocation
from medres.models.registry import build_model, build_pipeline_network
from medres.pipeline import (
    PipelineConfig,
    decode_config_text,
    format_validation_errors,
    pipeline_from_bytes,
    read_config_bytes,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

MANIFEST = "model.json"
PIPELINE = "pipeline.yaml"
SPLIT = "split.json"
WEIGHTS = "model.pt"
FORMAT_VERSION = 1
#: Most members one model folder may list (folds are at most 20).
MAX_MEMBERS = 64

_SHA256 = r"^[0-9a-f]{64}$"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_DAMAGED = "the member is damaged: retrain it or restore the file"


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
        if not _PLAIN_NAME.match(value) or value in {".", ".."}:
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise ValueError(
                f"{shown!r} is not a plain folder name inside the model folder (like fold_0)"
            )
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

    @field_validator("members")
    @classmethod
    def _unique(cls, members: tuple[MemberEntry, ...]) -> tuple[MemberEntry, ...]:
        names = [m.name for m in members]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"member(s) {twice} are listed more than once")
        return members


@dataclass(frozen=True)
class MemberInfo:
    """One trained member (one fold) of a model folder.

    Attributes:
        name: Sub-folder name, e.g. ``fold_0``.
        fold: Cross-validation fold index.
        weights_sha256: Checksum of ``model.pt``.
        val_dice: Best mean per-patient validation Dice on the fold's held-out patients.
        summary: The member's ``metrics.json`` summary (epochs, minutes, stop reason...).
    """

    name: str
    fold: int
    weights_sha256: str
    val_dice: float | None
    summary: dict[str, Any]


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
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


def _inside(root: Path, path: Path, what: str) -> Path:
    """``path`` with links resolved, when it is a regular file inside ``root`` (resolved).

    Raises:
        ModelError: Outside the folder, missing, or not a regular file (FIFO, device...).
    """
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"{path}: cannot resolve {what}: {exc}") from None
    if not resolved.is_relative_to(root):
        raise ModelError(
            f"{path}: {what} resolves to {resolved}, outside the model folder {root}; "
            "a model folder must hold its own files (copy them in, e.g. cp -L)"
        )
    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        raise ModelError(f"{path}: {what} is missing") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise ModelError(f"{path}: {what} is not a regular file (a folder, pipe or device)")
    return resolved


def _read_weights(path: Path, *, shown: Path) -> bytes:
    """All bytes of a weights file, refusing non-regular files and files above the budget."""
    with open_regular(path, error=ModelError, what="member weights") as handle:
        size = os.fstat(handle.fileno()).st_size
        too_big = check_allocation("reading the weights", size)
        if too_big:
            raise ModelError(f"{shown}: {too_big}")
        try:
            data = handle.read(size + 1)
        except OSError as exc:
            raise ModelError(
                f"{shown}: cannot read member weights: {exc.strerror or exc}"
            ) from None
    if len(data) != size:
        raise ModelError(f"{shown}: member weights changed size while being read")
    return data


def _load_state(data: bytes, *, shown: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``data``: a zip-format torch file of plain tensors, all finite.

    Raises:
        ModelError: Never with torch's own text (which suggests unsafe loading).
    """
    import torch

    problem = _zip_problem(data)
    if problem:
        raise ModelError(f"{shown}: {problem}; {_DAMAGED}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # every torch.load failure means a damaged member
        if "weights only load failed" in str(exc).lower():
            reason = (
                "holds pickled objects other than tensors, which medres never unpickles "
                "(it may be a checkpoint, or a hostile file)"
            )
        else:
            reason = f"not a readable PyTorch weights file ({type(exc).__name__})"
        raise ModelError(f"{shown}: {reason}; {_DAMAGED}") from None
    if not isinstance(state, dict):
        raise ModelError(
            f"{shown}: holds {_a(type(state).__name__)}, not a state dict of tensors; {_DAMAGED}"
        )
    bad_finite: list[tuple[str, int]] = []
    for key, value in state.items():
        shown_key = str(key) if len(str(key)) <= 60 else str(key)[:57] + "..."
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(
                f"{shown}: entry {shown_key!r} is {_a(type(value).__name__)}, not a tensor; "
                f"model.pt must be a plain state dict: {_DAMAGED}"
            )
        if value.layout != torch.strided or value.is_quantized:
            raise ModelError(
                f"{shown}: tensor {shown_key!r} is not a plain dense tensor; {_DAMAGED}"
            )
        if value.is_floating_point() or value.is_complex():
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad_finite.append((shown_key, count))
    if bad_finite:
        key, count = bad_finite[0]
        more = f" (and {len(bad_finite) - 1} more tensors)" if len(bad_finite) > 1 else ""
        raise ModelError(f"{shown}: {count} non-finite values in {key!r}{more}; {_DAMAGED}")
    return state


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _zip_problem(data: bytes) -> str | None:
    """Why ``data`` is not a torch.save zip file medres loads, or None."""
    if not data.startswith(b"PK\x03\x04"):
        return "not a PyTorch weights file (torch.save zip format expected)"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return "not a PyTorch weights file (a damaged zip archive)"
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        return "compressed entries in the weights file (torch.save writes them uncompressed)"
    if sum(e.file_size for e in entries) > len(data):
        return "its zip directory declares more data than the file holds"
    return None


@dataclass(frozen=True)
class ModelFolder:
    """A trained model on disk: config, labels, split and members.

    Attributes:
        path: The folder, as given to :meth:`open`.
        pipeline: Its validated pipeline config.
        members: Its members, in manifest order.
        manifest: Its validated ``model.json``.
        verify: Whether checksums were checked at open (and are again at load).
        unverified: One line per thing that could not be verified (for example a manifest
            written by an older medres without ``pipeline_sha256``); show them to the user.
    """

    path: Path
    pipeline: PipelineConfig
    members: tuple[MemberInfo, ...]
    manifest: ModelManifest
    verify: bool = True
    unverified: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        """Output label names; index 0 is the background."""
        return self.pipeline.labels

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> ModelFolder:
        """Open and (by default) verify a model folder.

        Checks, in order: ``model.json`` is a regular file inside the folder (after
        resolving links), small, valid JSON and a valid :class:`ModelManifest`;
        ``pipeline.yaml`` likewise, a valid pipeline, unchanged since training
        (``pipeline_sha256``) and agreeing with the manifest (dims, channels, labels,
        lesion labels, model); each member's ``model.pt`` is a regular file inside the
        folder with the recorded sha256.

        Args:
            path: The model folder.
            verify: Check the sha256 of ``pipeline.yaml`` and of every member's weights
                (reading each once). Without it, :attr:`unverified` says so.

        Raises:
            ModelError: One line naming the file and what is wrong with it.

        Example:
            >>> ModelFolder.open("models/demo_ct_3d").labels  # doctest: +SKIP
            ('background', 'lesion')
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        try:
            root = path.resolve()
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"{path}: cannot resolve the model folder: {exc}") from None
        if not root.is_dir() or not os.path.lexists(manifest_path):
            raise ModelError(f"{path}: not a medres model folder (no {MANIFEST})")
        resolved = _inside(root, manifest_path, "the manifest")
        try:
            manifest = parse_manifest(
                read_config_bytes(resolved, what="manifest"), source=str(manifest_path)
            )
        except ConfigError as exc:
            raise ModelError(str(exc).replace(str(resolved), str(manifest_path), 1)) from None

        pipeline_path = path / PIPELINE
        resolved = _inside(root, pipeline_path, "the pipeline config")
        try:
            pipeline_bytes = read_config_bytes(resolved, what="pipeline file")
            pipeline = pipeline_from_bytes(pipeline_bytes, source=str(pipeline_path))
        except ConfigError as exc:
            raise ModelError(str(exc).replace(str(resolved), str(pipeline_path), 1)) from None

        unverified: list[str] = []
        differ = _contradictions(manifest, pipeline)
        if manifest.pipeline_sha256 is None:
            note = (
                f"{pipeline_path}: not verified: {MANIFEST} has no pipeline_sha256 (written "
                "by an older medres); check its settings by hand, or retrain to record it"
            )
            logger.warning("%s", note)
            unverified.append(note)
        elif verify:
            actual = hashlib.sha256(pipeline_bytes).hexdigest()
            if actual != manifest.pipeline_sha256:
                what = f"; {differ[0]}" if differ else ""
                raise ModelError(
                    f"{pipeline_path}: edited after training (sha256 {actual[:12]}... where "
                    f"{MANIFEST} records {manifest.pipeline_sha256[:12]}...){what}; restore "
                    "the original pipeline.yaml, or retrain with the edited one (medres train)"
                )
        if differ:
            raise ModelError(
                f"{pipeline_path}: does not match {MANIFEST}: {differ[0]}; the folder mixes "
                "files of different models: restore both from the same training run"
            )

        members = []
        for entry in manifest.members:
            weights = path / entry.name / WEIGHTS
            resolved = _inside(root, weights, "the member's weights file")
            if verify:
                actual = sha256_file(resolved)
                if actual != entry.weights_sha256:
                    raise ModelError(
                        f"{weights}: sha256 {actual[:12]}... does not match the manifest "
                        f"({entry.weights_sha256[:12]}...); the file was changed or damaged"
                    )
            members.append(
                MemberInfo(
                    name=entry.name,
                    fold=entry.fold,
                    weights_sha256=entry.weights_sha256,
                    val_dice=entry.val_dice,
                    summary=dict(entry.summary),
                )
            )
        if not members:
            raise ModelError(f"{path}: the model folder has no trained members yet")
        if not verify:
            unverified.append(f"{path}: checksums not verified (opened with verify=False)")
        return cls(
            path=path,
            pipeline=pipeline,
            members=tuple(members),
            manifest=manifest,
            verify=verify,
            unverified=tuple(unverified),
        )

    def build_network(self) -> nn.Module:
        """A freshly initialised network of this folder's architecture.

        Raises:
            ModelError: The pipeline's model settings cannot be built.
        """
        try:
            return build_pipeline_network(self.pipeline)
        except (ConfigError, RuntimeError) as exc:
            raise ModelError(f"{self.path / PIPELINE}: cannot build its network: {exc}") from None

    def load_network(self, member: MemberInfo, *, device: str = "cpu") -> nn.Module:
        """The member's network with its weights, in eval mode on ``device``.

        The weights are read once, checked against the manifest's sha256 (when the folder
        was opened with ``verify``), loaded with ``torch.load(weights_only=True)`` on the
        CPU, and must be a plain state dict of finite tensors that fits the network.

        Raises:
            ModelError: Weights outside the folder, damaged, not a plain state dict,
                non-finite, or not fitting the architecture (such as output channels that
                contradict the labels). The message names the file; it never repeats
                torch's own text.
        """
        root = self.path.resolve()
        weights = self.path / member.name / WEIGHTS
        resolved = _inside(root, weights, "the member's weights file")
        data = _read_weights(resolved, shown=weights)
        if self.verify:
            actual = hashlib.sha256(data).hexdigest()
            if actual != member.weights_sha256:
                raise ModelError(
                    f"{weights}: sha256 {actual[:12]}... does not match the manifest "
                    f"({member.weights_sha256[:12]}...); the file was changed or damaged"
                )
        state = _load_state(data, shown=weights)
        net = self.build_network()
        problem = _fit_problem(net, state, self.pipeline)
        if problem:
            raise ModelError(f"{weights}: {problem}")
        try:
            net.load_state_dict(state)
        except Exception as exc:  # any failure here means the weights do not fit
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ModelError(
                f"{weights}: weights do not fit the pipeline's model: {first}"
            ) from None
        return net.to(device).eval()


def _finite(value: Any, *, where: str) -> Any:
    """``value`` with NaN/infinite floats (a diverged validation Dice) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        logger.warning("%s: non-finite value %s recorded as null", where, value)
        return None
    if isinstance(value, dict):
        return {k: _finite(v, where=where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, where=where) for v in value]
    return value


def _contradictions(manifest: ModelManifest, cfg: PipelineConfig) -> list[str]:
    """What ``model.json`` records differently from ``pipeline.yaml`` (one item each)."""
    pairs: list[tuple[str, object, object]] = [
        ("labels", list(manifest.labels), list(cfg.labels)),
        ("dims", manifest.dims, cfg.dims),
        ("channels", list(manifest.channels), list(cfg.channels)),
        ("lesion_labels", list(manifest.lesion_labels), list(cfg.lesion_labels)),
        ("model", manifest.model, cfg.model.name),
        ("pipeline name", manifest.pipeline, cfg.name),
    ]
    return [
        f"{what} differ: {MANIFEST} has {_brief(a)}, {PIPELINE} has {_brief(b)}"
        for what, a, b in pairs
        if a != b
    ]


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fit_problem(net: nn.Module, state: dict[str, torch.Tensor], cfg: PipelineConfig) -> str | None:
    """Why ``state`` does not fit ``net`` (keys, shapes, output channels vs labels), or None."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        return None
    n_labels = len(cfg.labels)
    outputs = _weights_output_channels(state, expected, n_labels, wrong, cfg)
    if outputs is not None:
        return (
            f"the weights have {outputs} output channels but {PIPELINE} lists {n_labels} "
            f"labels {list(cfg.labels)}; the labels contradict the weights: use the "
            "pipeline.yaml the member was trained with"
        )
    if wrong:
        key = wrong[0]
        return (
            f"weights do not fit the pipeline's model ({cfg.model.name}): {key!r} has shape "
            f"{tuple(state[key].shape)} where {tuple(expected[key].shape)} is needed"
            f"{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}; "
            "use the pipeline.yaml the member was trained with"
        )
    detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
    return (
        f"weights do not fit the pipeline's model ({cfg.model.name}): {detail} "
        f"({len(missing)} missing, {len(unexpected)} unexpected tensors); "
        "use the pipeline.yaml the member was trained with"
    )


def _weights_output_channels(
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    n_labels: int,
    wrong: list[str],
    cfg: PipelineConfig,
) -> int | None:
    """The output channel count of ``state`` when only that differs from the pipeline's."""
    if not wrong or any(k not in state for k in expected) or len(state) != len(expected):
        return None
    candidates: set[int] = set()
    for key in wrong:
        have, need = tuple(state[key].shape), tuple(expected[key].shape)
        if len(have) != len(need):
            return None
        axes = [i for i in range(len(need)) if have[i] != need[i]]
        if any(need[i] != n_labels for i in axes):
            return None
        candidates.update(have[i] for i in axes)
    if len(candidates) != 1:
        return None
    outputs = candidates.pop()
    if not 1 <= outputs <= 4096:
        return None
    try:
        other = build_model(
            cfg.model.name,
            dims=cfg.dims,
            in_channels=len(cfg.channels),
            out_channels=outputs,
            params=dict(cfg.model.params),
        ).state_dict()
    except (ConfigError, RuntimeError):
        return None
    fits = all(k in other and other[k].shape == v.shape for k, v in state.items())
    return outputs if fits else None


def write_manifest(
    model_dir: str | Path,
    cfg: PipelineConfig,
    members: Sequence[dict[str, Any]],
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.json`` for the members that are complete (checksums computed here).

    The folder's ``pipeline.yaml`` must already be written (``medres train`` writes it
    first) and hold ``cfg``; its sha256 is recorded as ``pipeline_sha256`` so that a
    later edit (a threshold changed by hand) is refused when the folder is opened.

    Args:
        model_dir: The model folder.
        cfg: Its pipeline.
        members: ``{"name", "fold", "val_dice", "summary"}`` per completed member.
        extra: More provenance (training data location, device, command).

    Raises:
        ModelError: ``pipeline.yaml`` is missing or holds another config, or a member is
            not valid for the manifest (its name, fold or Dice).
    """
    model_dir = Path(model_dir)
    pipeline_path = model_dir / PIPELINE
    try:
        pipeline_bytes = read_config_bytes(pipeline_path, what="pipeline file")
        written = pipeline_from_bytes(pipeline_bytes, source=str(pipeline_path))
    except ConfigError as exc:
        raise ModelError(f"{exc}; write it before the manifest") from None
    if written != cfg:
        raise ModelError(
            f"{pipeline_path}: holds another config than the one being recorded in {MANIFEST}"
        )
    entries = []
    for member in members:
        weights = model_dir / member["name"] / WEIGHTS
        entries.append({**member, "weights_sha256": sha256_file(weights)})
    manifest = {
        "format_version": FORMAT_VERSION,
        "pipeline": cfg.name,
        "description": cfg.description,
        "dims": cfg.dims,
        "channels": list(cfg.channels),
        "labels": list(cfg.labels),
        "lesion_labels": list(cfg.lesion_labels),
        "model": cfg.model.name,
        "pipeline_sha256": hashlib.sha256(pipeline_bytes).hexdigest(),
        "versions": software_versions(),
        "members": entries,
        **(extra or {}),
    }
    target = model_dir / MANIFEST
    text = json.dumps(_finite(manifest, where=str(target)), indent=2, allow_nan=False) + "\n"
    parse_manifest(text.encode("utf-8"), source=str(target))  # never write what open refuses
    return write_text_atomic(target, text)


__all__ = [
    "MANIFEST",
    "MAX_MEMBERS",
    "PIPELINE",
    "SPLIT",
    "WEIGHTS",
    "MemberEntry",
    "MemberInfo",
    "ModelFolder",
    "ModelManifest",
    "parse_manifest",
    "sha256_file",
    "software_versions",
    "write_manifest",
]
