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

This module owns the folder as a whole (:class:`ModelFolder`: opening and verifying it,
loading a member's network) and writing its manifest (:func:`write_manifest`); the
manifest schema and file names live in :mod:`medres.models.manifest`, reading and
checking member weights in :mod:`medres.models.weights` (names re-exported here).

Example:
    >>> folder = ModelFolder.open("models/demo_ct_3d")  # doctest: +SKIP
    >>> net = folder.load_network(folder.members[0], device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medres.errors import ConfigError, ModelError
from medres.io.atomic import write_text_atomic
from medres.models.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    MAX_MEMBERS,
    PIPELINE,
    SPLIT,
    WEIGHTS,
    CrossValidationEntry,
    MemberEntry,
    ModelManifest,
    apply_cross_validation,
    fits_members,
    parse_manifest,
    sha256_file,
    software_versions,
)
from medres.models.registry import build_pipeline_network
from medres.models.weights import _fit_problem, _load_state, _read_weights
from medres.pipeline import PipelineConfig, pipeline_from_bytes, read_config_bytes

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)


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
        root = _folder_root(path)
        manifest = _open_manifest(path, root)
        pipeline, pipeline_bytes = _open_pipeline(path, root)
        unverified = _check_pipeline(path, manifest, pipeline, pipeline_bytes, verify=verify)
        members = [_open_member(path, root, entry, verify=verify) for entry in manifest.members]
        if not members:
            raise ModelError(f"{path}: the model folder has no trained members yet")
        if not verify:
            unverified.append(f"{path}: checksums not verified (opened with verify=False)")
        pipeline, note = apply_cross_validation(path, manifest, pipeline)
        unverified += [note] if note else []
        return cls(
            path=path,
            pipeline=pipeline,
            members=tuple(members),
            manifest=manifest,
            verify=verify,
            unverified=tuple(unverified),
        )

    @property
    def tuned(self) -> CrossValidationEntry | None:
        """The temperatures and post-processing chosen by cross-validation, when they were
        fitted for these members' weights (see ``apply_cross_validation``)."""
        entry = self.manifest.cross_validation
        return entry if entry is not None and fits_members(entry, self.manifest) else None

    def temperature(self, member: str) -> float:
        """The member's temperature (its logits are divided by it); 1 when none was fitted."""
        entry = self.tuned
        return float(entry.temperatures.get(member, 1.0)) if entry is not None else 1.0

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


def _folder_root(path: Path) -> Path:
    """The model folder with links resolved, once it is a folder that has a manifest.

    Raises:
        ModelError: It cannot be resolved, or it is not a folder with ``model.json``.
    """
    try:
        root = path.resolve()
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"{path}: cannot resolve the model folder: {exc}") from None
    if not root.is_dir() or not os.path.lexists(path / MANIFEST):
        raise ModelError(f"{path}: not a medres model folder (no {MANIFEST})")
    return root


def _open_manifest(path: Path, root: Path) -> ModelManifest:
    """The folder's validated ``model.json`` (a small regular file inside the folder).

    Raises:
        ModelError: Naming ``path / model.json`` (not the resolved link target).
    """
    manifest_path = path / MANIFEST
    resolved = _inside(root, manifest_path, "the manifest")
    try:
        return parse_manifest(
            read_config_bytes(resolved, what="manifest"), source=str(manifest_path)
        )
    except ConfigError as exc:
        raise ModelError(str(exc).replace(str(resolved), str(manifest_path), 1)) from None


def _open_pipeline(path: Path, root: Path) -> tuple[PipelineConfig, bytes]:
    """The folder's validated ``pipeline.yaml``, and its bytes (for the checksum).

    Raises:
        ModelError: Naming ``path / pipeline.yaml`` (not the resolved link target).
    """
    pipeline_path = path / PIPELINE
    resolved = _inside(root, pipeline_path, "the pipeline config")
    try:
        pipeline_bytes = read_config_bytes(resolved, what="pipeline file")
        pipeline = pipeline_from_bytes(pipeline_bytes, source=str(pipeline_path))
    except ConfigError as exc:
        raise ModelError(str(exc).replace(str(resolved), str(pipeline_path), 1)) from None
    return pipeline, pipeline_bytes


def _check_pipeline(
    path: Path,
    manifest: ModelManifest,
    pipeline: PipelineConfig,
    pipeline_bytes: bytes,
    *,
    verify: bool,
) -> list[str]:
    """Check ``pipeline.yaml`` against the manifest: checksum (with ``verify``) and contents.

    Returns:
        What could not be verified (a manifest without ``pipeline_sha256``), one line each;
        each is also logged as a warning.

    Raises:
        ModelError: The pipeline was edited after training, or it contradicts the manifest.
    """
    pipeline_path = path / PIPELINE
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
    return unverified


def _open_member(path: Path, root: Path, entry: MemberEntry, *, verify: bool) -> MemberInfo:
    """One member of the manifest, once its ``model.pt`` is inside the folder.

    With ``verify``, the weights must also have the sha256 the manifest records.

    Raises:
        ModelError: The weights file is outside the folder, missing, or changed.
    """
    weights = path / entry.name / WEIGHTS
    resolved = _inside(root, weights, "the member's weights file")
    if verify:
        actual = sha256_file(resolved)
        if actual != entry.weights_sha256:
            raise ModelError(
                f"{weights}: sha256 {actual[:12]}... does not match the manifest "
                f"({entry.weights_sha256[:12]}...); the file was changed or damaged"
            )
    return MemberInfo(
        name=entry.name,
        fold=entry.fold,
        weights_sha256=entry.weights_sha256,
        val_dice=entry.val_dice,
        summary=dict(entry.summary),
    )


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
    """``repr(value)``, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
