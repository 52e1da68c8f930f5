"""The files of one member's folder while it trains and once it is complete.

``checkpoint.pt`` (weights, optimizer, scaler and :class:`_MemberState`, written atomically
and removed once the member is complete), ``curve.csv`` (one row per epoch), TensorBoard
scalars, ``metrics.json`` (the summary, ``"status": "complete"``) and the best weights
``model.pt``. :func:`member_is_complete` says whether a folder holds a finished member.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medres.errors import TrainingError
from medres.io.atomic import atomic_write, write_bytes_atomic
from medres.models.folder import WEIGHTS
from medres.pipeline import PipelineConfig

if TYPE_CHECKING:
    from medres.training.member_setup import _MemberModel

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVE = "curve.csv"
CURVE_FIELDS = ("epoch", "iteration", "elapsed_s", "lr", "train_loss", "val_dice")


@dataclass
class _MemberState:
    """Where a member's training stands: what a checkpoint holds besides its tensors.

    Attributes:
        epoch: Epochs done.
        iteration: Iterations (batches) done.
        elapsed_before_s: Wall time used before this run (by the runs it resumes).
        curve: One ``curve.csv`` row per epoch done.
        best_dice: Best validation Dice so far, or None.
        best_epoch: The epoch that reached it.
        best_per_group: Its Dice per patient group.
    """

    epoch: int = 0
    iteration: int = 0
    elapsed_before_s: float = 0.0
    curve: list[dict[str, Any]] = field(default_factory=list)
    best_dice: float | None = None
    best_epoch: int | None = None
    best_per_group: dict[str, float] = field(default_factory=dict)


def _save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` into memory, then write the bytes atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _save_checkpoint(
    path: Path,
    cfg: PipelineConfig,
    state: _MemberState,
    *,
    net: Any,
    optimizer: Any,
    scaler: Any,
    use_scaler: bool,
    elapsed_s: float,
) -> None:
    """Write a resumable checkpoint (``elapsed_s``: the member's wall time so far).

    The scaler's state is stored only when ``use_scaler`` (float16 AMP); bfloat16 and
    float32 runs store ``{}``, as checkpoints without AMP always have.
    """
    _save_torch(
        path,
        {
            "config": cfg.model_dump(mode="json"),
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else {},
            "epoch": state.epoch,
            "iteration": state.iteration,
            "elapsed_s": elapsed_s,
            "curve": state.curve,
            "best_dice": state.best_dice,
            "best_epoch": state.best_epoch,
            "best_per_group": state.best_per_group,
        },
    )


def _load_checkpoint(
    path: Path,
    cfg: PipelineConfig,
    *,
    net: Any,
    optimizer: Any,
    scaler: Any,
    use_scaler: bool,
    device: str,
) -> _MemberState:
    """Restore ``net``, ``optimizer`` (and ``scaler`` with ``use_scaler``) from a checkpoint.

    A scaler state saved by a float16 run is ignored by a run without a scaler (bfloat16
    or CPU), and a run with one starts its scaler afresh from a checkpoint without.

    Returns:
        Where training stood when the checkpoint was written.

    Raises:
        TrainingError: The checkpoint was made with another pipeline config.
    """
    import torch

    saved = torch.load(path, map_location=device, weights_only=True)
    if saved.get("config") != cfg.model_dump(mode="json"):
        raise TrainingError(
            f"{path}: checkpoint was made with another pipeline config; "
            "resume with the same pipeline or train into a new --out folder"
        )
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if use_scaler and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    return _MemberState(
        epoch=int(saved["epoch"]),
        iteration=int(saved["iteration"]),
        elapsed_before_s=float(saved["elapsed_s"]),
        curve=list(saved["curve"]),
        best_dice=saved["best_dice"],
        best_epoch=saved["best_epoch"],
        best_per_group=dict(saved["best_per_group"]),
    )


def _resumed_state(
    cfg: PipelineConfig, model: _MemberModel, checkpoint_path: Path, *, fold: int
) -> _MemberState:
    """The state in ``checkpoint_path`` (loaded into ``model``), a fresh one without it.

    Raises:
        TrainingError: The checkpoint was made with another pipeline config.
    """
    if not checkpoint_path.is_file():
        return _MemberState()
    state = _load_checkpoint(
        checkpoint_path,
        cfg,
        net=model.net,
        optimizer=model.optimizer,
        scaler=model.scaler,
        use_scaler=model.scaler.is_enabled(),
        device=model.device,
    )
    logger.info(
        "fold %d: resuming after epoch %d (%d iterations)", fold, state.epoch, state.iteration
    )
    return state


def _write_curve(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``curve.csv`` with every row so far (empty cells for missing values)."""
    with atomic_write(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=CURVE_FIELDS)  # type: ignore[arg-type]
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CURVE_FIELDS})


class _Scalars:
    """TensorBoard scalars (no-op when tensorboard is not installed)."""

    def __init__(self, folder: Path, purge_step: int, *, enabled: bool = True) -> None:
        """Open a writer on ``folder``; events after ``purge_step`` (a resume) are dropped.

        With ``enabled`` False (the ranks of a distributed run other than rank 0) nothing
        is opened or written.
        """
        if not enabled:
            self.writer = None
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            logger.warning("tensorboard is not installed; scalars go to curve.csv only")
            self.writer = None
            return
        self.writer = SummaryWriter(str(folder), purge_step=purge_step or None)

    def add(self, tag: str, value: float, step: int) -> None:
        """Record ``value`` of ``tag`` at iteration ``step``."""
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()


def member_is_complete(member_dir: str | Path) -> dict[str, Any] | None:
    """The member's summary when it finished training (``metrics.json`` + weights), else None."""
    member_dir = Path(member_dir)
    try:
        summary: dict[str, Any] = json.loads((member_dir / METRICS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("status") == "complete" and (member_dir / WEIGHTS).is_file():
        return summary
    return None


__all__ = ["CHECKPOINT", "CURVE", "CURVE_FIELDS", "METRICS", "member_is_complete"]
