"""Self-describing model folders: everything needed to use a trained model, in one folder.

Layout written by ``medres train``::

    MODEL_DIR/
      model.json          manifest: medres/torch/monai versions, labels, channels, members
                          with their sha256, validation Dice and training summary
      pipeline.yaml       the resolved pipeline config (every default filled in)
      split.json          patient groups of each fold (and excluded test groups)
      fold_0/
        model.pt          best weights (a plain state dict, loaded with weights_only=True)
        metrics.json      validation Dice per patient, best epoch, budget used
        curve.csv         loss, learning rate and validation Dice per epoch
        tensorboard/      the same scalars as TensorBoard events
      fold_1/ ...

Loading needs nothing but that folder: :meth:`ModelFolder.open` checks every checksum
and rebuilds each network through the registry.

Example:
    >>> folder = ModelFolder.open("models/demo_ct_3d")  # doctest: +SKIP
    >>> net = folder.load_network(folder.members[0], device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medres._version import __version__
from medres.errors import ConfigError, ModelError
from medres.io.atomic import write_text_atomic
from medres.models.registry import build_pipeline_network
from medres.pipeline import PipelineConfig, load_pipeline

if TYPE_CHECKING:
    from torch import nn

MANIFEST = "model.json"
PIPELINE = "pipeline.yaml"
SPLIT = "split.json"
WEIGHTS = "model.pt"
FORMAT_VERSION = 1


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


@dataclass(frozen=True)
class ModelFolder:
    """A trained model on disk: config, labels, split and members."""

    path: Path
    pipeline: PipelineConfig
    members: tuple[MemberInfo, ...]
    manifest: dict[str, Any]

    @property
    def labels(self) -> tuple[str, ...]:
        """Output label names; index 0 is the background."""
        return self.pipeline.labels

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> ModelFolder:
        """Open and (by default) verify a model folder.

        Raises:
            ModelError: Missing manifest or weights, unreadable config, checksum mismatch.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ModelError(f"{path}: not a medres model folder (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{manifest_path}: unreadable manifest: {exc}") from None
        try:
            pipeline = load_pipeline(path / PIPELINE)
        except ConfigError as exc:
            raise ModelError(f"{path}: its pipeline.yaml is not valid: {exc}") from None
        members = []
        for entry in manifest.get("members", []):
            weights = path / entry["name"] / WEIGHTS
            if not weights.is_file():
                raise ModelError(f"{weights}: member weights are missing")
            if verify:
                actual = sha256_file(weights)
                if actual != entry["weights_sha256"]:
                    raise ModelError(
                        f"{weights}: sha256 {actual[:12]}... does not match the manifest "
                        f"({entry['weights_sha256'][:12]}...); the file was changed or damaged"
                    )
            members.append(
                MemberInfo(
                    name=entry["name"],
                    fold=int(entry["fold"]),
                    weights_sha256=entry["weights_sha256"],
                    val_dice=entry.get("val_dice"),
                    summary=entry.get("summary", {}),
                )
            )
        if not members:
            raise ModelError(f"{path}: the model folder has no trained members yet")
        return cls(path=path, pipeline=pipeline, members=tuple(members), manifest=manifest)

    def build_network(self) -> nn.Module:
        """A freshly initialised network of this folder's architecture."""
        return build_pipeline_network(self.pipeline)

    def load_network(self, member: MemberInfo, *, device: str = "cpu") -> nn.Module:
        """The member's network with its weights, in eval mode on ``device``.

        Raises:
            ModelError: Weights that do not fit the architecture.
        """
        import torch

        net = self.build_network()
        weights = self.path / member.name / WEIGHTS
        state = torch.load(weights, map_location=device, weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"{weights}: weights do not fit the pipeline's model: {exc}") from None
        return net.to(device).eval()


def write_manifest(
    model_dir: str | Path,
    cfg: PipelineConfig,
    members: Sequence[dict[str, Any]],
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.json`` for the members that are complete (checksums computed here).

    Args:
        model_dir: The model folder.
        cfg: Its pipeline.
        members: ``{"name", "fold", "val_dice", "summary"}`` per completed member.
        extra: More provenance (training data location, device, command).
    """
    model_dir = Path(model_dir)
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
        "versions": software_versions(),
        "members": entries,
        **(extra or {}),
    }
    return write_text_atomic(model_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


__all__ = [
    "MANIFEST",
    "PIPELINE",
    "SPLIT",
    "WEIGHTS",
    "MemberInfo",
    "ModelFolder",
    "sha256_file",
    "software_versions",
    "write_manifest",
]
