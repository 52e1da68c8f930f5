"""The training loop of one member (one fold): patches, AdamW, schedule, validation, resume.

One member trains on the cases of its fold's training groups and is validated with
sliding-window inference on the held-out groups. The score is the mean per-patient Dice
(a patient's slices or volume counted together; empty truth and empty prediction count
as 1.0), averaged over the lesion labels. The best-scoring weights are kept.

Budget: training stops after ``training.epochs`` or ``max_minutes`` of wall time
(validation included), whichever comes first; the learning rate follows the larger of
the two progress fractions so a time-limited run still anneals.

Resume: a checkpoint (weights, optimizer, scaler, epoch, time used, curve, best score) is
written atomically every ``checkpoint_every_epochs``. Every epoch re-seeds its random
streams from ``(seed, fold, epoch)``, so a run resumed at an epoch boundary continues as
the uninterrupted run would have.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medres.errors import TrainingError
from medres.inference.sliding import predict_logits
from medres.io.atomic import atomic_write, write_bytes_atomic, write_text_atomic
from medres.models.folder import WEIGHTS
from medres.models.registry import build_pipeline_network
from medres.pipeline import LossName, PipelineConfig, ScheduleName
from medres.runtime import resolve_device
from medres.training.datasets import TrainingCase

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVE = "curve.csv"
CURVE_FIELDS = ("epoch", "iteration", "elapsed_s", "lr", "train_loss", "val_dice")


@dataclass(frozen=True)
class TrainingProgress:
    """A progress event for a CLI progress bar (the library never prints).

    ``kind`` is ``"iteration"``, ``"validation"`` or ``"epoch"``.
    """

    kind: str
    fold: int
    epoch: int
    epochs: int
    iteration: int
    iterations_per_epoch: int
    loss: float
    val_dice: float | None
    best_dice: float | None
    elapsed_s: float
    budget_s: float | None


@dataclass
class MemberResult:
    """What a finished member reports (also written to its ``metrics.json``)."""

    fold: int
    best_val_dice: float | None
    best_epoch: int | None
    epochs_done: int
    iterations: int
    elapsed_s: float
    stopped_by: str
    val_dice_per_group: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "fold": self.fold,
            "best_val_dice": self.best_val_dice,
            "best_epoch": self.best_epoch,
            "epochs_done": self.epochs_done,
            "iterations": self.iterations,
            "minutes": round(self.elapsed_s / 60.0, 2),
            "stopped_by": self.stopped_by,
            "val_dice_per_group": self.val_dice_per_group,
        }


def learning_rate(cfg: PipelineConfig, progress: float, iteration: int) -> float:
    """Learning rate at ``progress`` in [0, 1] of the budget (after linear warm-up)."""
    base = cfg.training.optimizer.lr
    warmup = cfg.training.warmup_iterations
    if warmup and iteration < warmup:
        return base * (iteration + 1) / warmup
    progress = min(max(progress, 0.0), 1.0)
    if cfg.training.schedule == ScheduleName.POLY:
        return float(base * (1.0 - progress) ** 0.9)
    if cfg.training.schedule == ScheduleName.COSINE:
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


def _loss(cfg: PipelineConfig) -> Any:
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    if cfg.training.loss == LossName.DICE_CE:
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    if cfg.training.loss == LossName.DICE_FOCAL:
        return DiceFocalLoss(to_onehot_y=True, softmax=True, include_background=False)
    return DiceLoss(to_onehot_y=True, softmax=True, include_background=False)


def dice_counts(pred: Any, truth: Any, label: int) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)`` voxels of ``label``."""
    p = pred == label
    t = truth == label
    tp = int((p & t).sum())
    return tp, int(p.sum()) - tp, int(t.sum()) - tp


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice from voxel counts; 1.0 when truth and prediction are both empty."""
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def validate(
    net: Any,
    items: Sequence[dict[str, Any]],
    cfg: PipelineConfig,
    *,
    device: str,
) -> tuple[float, dict[str, float]]:
    """Mean per-patient Dice over the lesion labels, and Dice per patient group."""
    counts: dict[str, dict[int, list[int]]] = {}
    net.eval()
    for item in items:
        logits = predict_logits(net, item["image"], cfg, device=device)
        pred = logits.argmax(0).cpu().numpy()
        truth = np.asarray(item["label"])[0]
        group = counts.setdefault(str(item["group"]), {i: [0, 0, 0] for i in cfg.lesion_indices})
        for label in cfg.lesion_indices:
            tp, fp, fn = dice_counts(pred, truth, label)
            group[label][0] += tp
            group[label][1] += fp
            group[label][2] += fn
    per_group = {
        name: float(np.mean([dice_from_counts(*c) for c in by_label.values()]))
        for name, by_label in sorted(counts.items())
    }
    return float(np.mean(list(per_group.values()))), per_group


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(cfg: PipelineConfig, fold: int, epoch: int) -> int:
    return (cfg.training.seed * 1_000_003 + fold * 10_007 + epoch) % (2**31 - 1)


def _save_torch(path: Path, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _write_curve(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_write(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=CURVE_FIELDS)  # type: ignore[arg-type]
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CURVE_FIELDS})


class _Scalars:
    """TensorBoard scalars (no-op when tensorboard is not installed)."""

    def __init__(self, folder: Path, purge_step: int) -> None:
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
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train_member(
    cfg: PipelineConfig,
    *,
    cases: Sequence[TrainingCase],
    train_groups: Sequence[str],
    val_groups: Sequence[str],
    lesion_cases: set[str],
    member_dir: str | Path,
    fold: int,
    device: str = "cpu",
    max_minutes: float | None = None,
    resume: bool = False,
    on_progress: Callable[[TrainingProgress], None] | None = None,
) -> MemberResult:
    """Train one member and write its folder (``model.pt``, metrics, curve, TensorBoard).

    Args:
        cfg: The pipeline.
        cases: All cases (checked by :func:`~medres.training.datasets.check_cases`).
        train_groups: Patient groups to train on.
        val_groups: Held-out patient groups to validate on.
        lesion_cases: Case ids that contain a lesion (for positive oversampling).
        member_dir: Output folder of this member.
        fold: Fold index (part of every seed).
        device: ``cpu`` or ``cuda`` (already resolved); CUDA trains with AMP.
        max_minutes: Wall-clock budget; overrides ``training.max_minutes``.
        resume: Continue from ``checkpoint.pt`` when present.
        on_progress: Called after every iteration and validation.

    Raises:
        TrainingError: A checkpoint from another configuration, or an unusable device.
    """
    import torch
    from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate

    from medres.transforms.presets import (
        training_transforms,
        unwrap_transform_errors,
        validation_transforms,
    )

    member_dir = Path(member_dir)
    member_dir.mkdir(parents=True, exist_ok=True)
    tcfg = cfg.training
    budget_min = max_minutes if max_minutes is not None else tcfg.max_minutes
    budget_s = budget_min * 60.0 if budget_min is not None else None
    use_amp = device.startswith("cuda")

    _seed_everything(tcfg.seed + fold)
    net = build_pipeline_network(cfg).to(device)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=tcfg.optimizer.lr, weight_decay=tcfg.optimizer.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = _loss(cfg)

    start_epoch, iteration, elapsed_before = 0, 0, 0.0
    curve: list[dict[str, Any]] = []
    best_dice: float | None = None
    best_epoch: int | None = None
    best_per_group: dict[str, float] = {}
    checkpoint_path = member_dir / CHECKPOINT
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state.get("config") != cfg.model_dump(mode="json"):
            raise TrainingError(
                f"{checkpoint_path}: checkpoint was made with another pipeline config; "
                "resume with the same pipeline or train into a new --out folder"
            )
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if use_amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        iteration = int(state["iteration"])
        elapsed_before = float(state["elapsed_s"])
        curve = list(state["curve"])
        best_dice = state["best_dice"]
        best_epoch = state["best_epoch"]
        best_per_group = dict(state["best_per_group"])
        logger.info(
            "fold %d: resuming after epoch %d (%d iterations)", fold, start_epoch, iteration
        )

    train_set = set(train_groups)
    val_set = set(val_groups)
    train_cases = [c for c in cases if c.group in train_set]
    val_cases = [c for c in cases if c.group in val_set]
    if not train_cases:
        raise TrainingError(f"fold {fold}: no training cases")

    with warnings.catch_warnings(), unwrap_transform_errors():
        warnings.filterwarnings("ignore", message=".*Num foregrounds 0.*")
        train_ds = CacheDataset(
            [c.record() for c in train_cases],
            transform=training_transforms(cfg),
            cache_rate=1.0,
            num_workers=0,
            progress=False,
        )
        val_items = list(
            Dataset([c.record() for c in val_cases], transform=validation_transforms(cfg))
        )

    positive = np.array([c.case_id in lesion_cases for c in train_cases])
    weights = np.ones(len(train_cases))
    if positive.any() and (~positive).any():
        p = tcfg.positive_fraction
        weights[positive] = p / positive.sum()
        weights[~positive] = (1.0 - p) / (~positive).sum()

    scalars = _Scalars(member_dir / "tensorboard", purge_step=iteration)
    t_start = time.perf_counter()
    stopped_by = "epochs"
    epoch = start_epoch

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    def progress_fraction() -> float:
        by_epochs = iteration / float(tcfg.epochs * tcfg.iterations_per_epoch)
        by_time = elapsed() / budget_s if budget_s else 0.0
        return max(by_epochs, by_time)

    def emit(kind: str, loss: float, val: float | None) -> None:
        if on_progress is not None:
            on_progress(
                TrainingProgress(
                    kind=kind,
                    fold=fold,
                    epoch=epoch,
                    epochs=tcfg.epochs,
                    iteration=iteration,
                    iterations_per_epoch=tcfg.iterations_per_epoch,
                    loss=loss,
                    val_dice=val,
                    best_dice=best_dice,
                    elapsed_s=elapsed(),
                    budget_s=budget_s,
                )
            )

    if budget_s is not None and elapsed_before >= budget_s:
        stopped_by = "time"
    try:
        while epoch < tcfg.epochs and stopped_by != "time":
            seed = _epoch_seed(cfg, fold, epoch)
            _seed_everything(seed)
            train_ds.transform.set_random_state(seed=seed)
            generator = torch.Generator().manual_seed(seed)
            sampler = torch.utils.data.WeightedRandomSampler(
                weights.tolist(),
                num_samples=tcfg.iterations_per_epoch * tcfg.batch_size,
                replacement=True,
                generator=generator,
            )
            loader = DataLoader(
                train_ds,
                batch_size=tcfg.batch_size,
                sampler=sampler,
                num_workers=0,
                collate_fn=list_data_collate,
            )
            net.train()
            losses: list[float] = []
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Num foregrounds 0.*")
                for batch in loader:
                    lr = learning_rate(cfg, progress_fraction(), iteration)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    image = batch["image"].to(device)
                    label = batch["label"].to(device)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                        loss = loss_fn(net(image), label)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainingError(
                            f"fold {fold}: loss became {value} at iteration {iteration}; "
                            "lower training.optimizer.lr"
                        )
                    losses.append(value)
                    iteration += 1
                    emit("iteration", value, None)
                    if budget_s is not None and elapsed() >= budget_s:
                        stopped_by = "time"
                        break
            epoch += 1
            train_loss = float(np.mean(losses)) if losses else float("nan")
            row: dict[str, Any] = {
                "epoch": epoch,
                "iteration": iteration,
                "elapsed_s": round(elapsed(), 2),
                "lr": float(f"{optimizer.param_groups[0]['lr']:.6g}"),
                "train_loss": round(train_loss, 5),
                "val_dice": None,
            }
            scalars.add("train/loss", train_loss, iteration)
            scalars.add("train/lr", row["lr"], iteration)
            last = epoch >= tcfg.epochs or stopped_by == "time"
            if val_items and (epoch % tcfg.val_every_epochs == 0 or last):
                val_dice, per_group = validate(net, val_items, cfg, device=device)
                row["val_dice"] = round(val_dice, 5)
                scalars.add("val/dice", val_dice, iteration)
                if best_dice is None or val_dice > best_dice:
                    best_dice, best_epoch, best_per_group = val_dice, epoch, per_group
                    _save_torch(member_dir / WEIGHTS, net.state_dict())
                emit("validation", train_loss, val_dice)
            elif not val_items:
                _save_torch(member_dir / WEIGHTS, net.state_dict())
            curve.append(row)
            _write_curve(member_dir / CURVE, curve)
            if epoch % tcfg.checkpoint_every_epochs == 0 or last:
                _save_torch(
                    checkpoint_path,
                    {
                        "config": cfg.model_dump(mode="json"),
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if use_amp else {},
                        "epoch": epoch,
                        "iteration": iteration,
                        "elapsed_s": elapsed(),
                        "curve": curve,
                        "best_dice": best_dice,
                        "best_epoch": best_epoch,
                        "best_per_group": best_per_group,
                    },
                )
            emit("epoch", train_loss, row["val_dice"])
    finally:
        scalars.close()

    result = MemberResult(
        fold=fold,
        best_val_dice=best_dice,
        best_epoch=best_epoch,
        epochs_done=epoch,
        iterations=iteration,
        elapsed_s=elapsed(),
        stopped_by=stopped_by,
        val_dice_per_group=best_per_group,
    )
    summary = {
        **result.summary(),
        "status": "complete",
        "device": device,
        "train_groups": sorted(train_set),
        "val_groups": sorted(val_set),
        "train_cases": len(train_cases),
        "val_cases": len(val_cases),
    }
    write_text_atomic(member_dir / METRICS, json.dumps(summary, indent=2) + "\n")
    checkpoint_path.unlink(missing_ok=True)
    return result


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


__all__ = [
    "CHECKPOINT",
    "CURVE",
    "METRICS",
    "MemberResult",
    "TrainingProgress",
    "dice_counts",
    "dice_from_counts",
    "learning_rate",
    "member_is_complete",
    "predict_logits",
    "resolve_device",
    "train_member",
    "validate",
]
