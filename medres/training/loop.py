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

Several processes (torchrun, :mod:`medres.training.ddp`): with G ranks the network
trains in DistributedDataParallel and every step of every rank draws ``batch_size``
patches, so one step sees G x ``batch_size`` patches and an epoch G x
``iterations_per_epoch`` x ``batch_size``; ``iterations_per_epoch``, ``epochs`` and the
learning-rate schedule still count optimiser steps, as in one process. Each epoch draws
one weighted sample of G x the single-process size from the epoch's seed and rank ``r``
takes its positions ``r::G``; random augmentations are seeded per rank. Rank 0 alone
validates (the others wait for its score) and writes the member folder (``model.pt``,
curve, TensorBoard, checkpoint, metrics); the loss shown and recorded is the mean over
the ranks. Rank 0's clock is the only one: it decides when the time budget is spent
(all ranks stop after the same step) and its elapsed time sets everyone's learning
rate. Resuming, every rank loads the checkpoint rank 0 wrote. In one process nothing
of this happens: no process group, the same samples and steps as before.

This module owns the loop itself: :func:`train_member` and its :class:`_MemberTrainer`
(one epoch, one step, the end of an epoch, the time budget). The set-up of the network
and data lives in :mod:`medres.training.member_setup`, validation in
:mod:`medres.training.validation` and the member folder's files (checkpoint, curve,
metrics, TensorBoard) in :mod:`medres.training.member_files` (names re-exported here).
"""

from __future__ import annotations

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
from medres.io.atomic import write_text_atomic
from medres.models.folder import WEIGHTS
from medres.pipeline import PipelineConfig, ScheduleName
from medres.runtime import resolve_device
from medres.training.datasets import TrainingCase
from medres.training.ddp import DistributedContext, current_context, wrap_for_training
from medres.training.detection import detection_loss, validate_detector
from medres.training.member_files import (
    CHECKPOINT,
    CURVE,
    CURVE_FIELDS,
    METRICS,
    _MemberState,
    _resumed_state,
    _save_checkpoint,
    _save_torch,
    _Scalars,
    _write_curve,
    member_is_complete,
)
from medres.training.member_setup import (
    _epoch_indices,
    _epoch_seed,
    _MemberData,
    _MemberModel,
    _rank_seed,
    _seed_everything,
)
from medres.training.validation import dice_counts, dice_from_counts, validate

logger = logging.getLogger(__name__)


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

    Under torchrun (a process group exists, see :mod:`medres.training.ddp`) every rank
    calls this with its own ``device``; they train the member together and only rank 0
    writes into ``member_dir``. Every rank returns the same result.

    Args:
        cfg: The pipeline.
        cases: All cases (checked by :func:`~medres.training.datasets.check_cases`).
        train_groups: Patient groups to train on.
        val_groups: Held-out patient groups to validate on.
        lesion_cases: Case ids that contain a lesion (for positive oversampling).
        member_dir: Output folder of this member.
        fold: Fold index (part of every seed).
        device: ``cpu`` or ``cuda`` (already resolved); CUDA trains with AMP in
            :func:`~medres.runtime.amp_dtype`'s dtype (bfloat16, or float16 with a scaler).
        max_minutes: Wall-clock budget; overrides ``training.max_minutes``.
        resume: Continue from ``checkpoint.pt`` when present.
        on_progress: Called after every iteration and validation.

    Raises:
        TrainingError: A checkpoint from another configuration, or an unusable device.
    """
    member_dir = Path(member_dir)
    ctx = current_context(device)
    if ctx.is_main:
        member_dir.mkdir(parents=True, exist_ok=True)
    budget_min = max_minutes if max_minutes is not None else cfg.training.max_minutes
    model = _MemberModel.build(cfg, fold=fold, device=device)
    checkpoint_path = member_dir / CHECKPOINT
    state = _resumed_state(cfg, model, checkpoint_path, fold=fold) if resume else _MemberState()
    data = _MemberData.load(
        cfg, cases, train_groups, val_groups, lesion_cases, fold=fold, load_validation=ctx.is_main
    )
    trainer = _MemberTrainer(
        cfg,
        fold=fold,
        member_dir=member_dir,
        model=model,
        data=data,
        state=state,
        budget_s=budget_min * 60.0 if budget_min is not None else None,
        on_progress=on_progress,
        ctx=ctx,
    )
    result = trainer.run()
    if ctx.is_main:
        _write_summary(member_dir, result, device, data, train_groups, val_groups)
    ctx.barrier()  # the member is complete on disk for every rank
    return result


def _write_summary(
    member_dir: Path,
    result: MemberResult,
    device: str,
    data: _MemberData,
    train_groups: Sequence[str],
    val_groups: Sequence[str],
) -> None:
    """Write ``metrics.json`` (the member is complete) and remove its checkpoint."""
    summary = {
        **result.summary(),
        # what best_val_dice holds: the held-out Dice, or a detector's CPM
        "val_metric": "cpm" if data.detection else "dice",
        "status": "complete",
        "device": device,
        "train_groups": sorted(set(train_groups)),
        "val_groups": sorted(set(val_groups)),
        "train_cases": len(data.train_cases),
        "val_cases": len(data.val_cases),
    }
    write_text_atomic(member_dir / METRICS, json.dumps(summary, indent=2) + "\n")
    (member_dir / CHECKPOINT).unlink(missing_ok=True)


class _MemberTrainer:
    """The epochs of one member, from its current state to the end of its budget."""

    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        fold: int,
        member_dir: Path,
        model: _MemberModel,
        data: _MemberData,
        state: _MemberState,
        budget_s: float | None,
        on_progress: Callable[[TrainingProgress], None] | None,
        ctx: DistributedContext,
    ) -> None:
        """Open the TensorBoard scalars and start the clock (``budget_s``: wall time).

        ``ctx`` is this process's place in a distributed run (a world of one without).
        """
        self.cfg = cfg
        self.ctx = ctx
        self.train_net = wrap_for_training(model.net, ctx)
        self.fold = fold
        self.member_dir = member_dir
        self.model = model
        self.data = data
        self.state = state
        self.budget_s = budget_s
        self.on_progress = on_progress
        self.stopped_by = "epochs"
        self.scalars = _Scalars(
            member_dir / "tensorboard", purge_step=state.iteration, enabled=ctx.is_main
        )
        self.t_start = time.perf_counter()
        #: rank 0's elapsed time at the last step, shared by every rank (distributed only)
        self.main_elapsed_s = state.elapsed_before_s

    def elapsed(self) -> float:
        """Wall time of this member so far, the runs it resumes included (s)."""
        return self.state.elapsed_before_s + time.perf_counter() - self.t_start

    def run(self) -> MemberResult:
        """Train until ``training.epochs`` or the time budget, whichever comes first."""
        tcfg = self.cfg.training
        if self.budget_s is not None and self.state.elapsed_before_s >= self.budget_s:
            self.stopped_by = "time"
        try:
            while self.state.epoch < tcfg.epochs and self.stopped_by != "time":
                losses = self._train_epoch()
                self.state.epoch += 1
                self._end_epoch(losses)
        finally:
            self.scalars.close()
        return MemberResult(
            fold=self.fold,
            best_val_dice=self.state.best_dice,
            best_epoch=self.state.best_epoch,
            epochs_done=self.state.epoch,
            iterations=self.state.iteration,
            elapsed_s=self.elapsed(),
            stopped_by=self.stopped_by,
            val_dice_per_group=self.state.best_per_group,
        )

    def _progress_fraction(self) -> float:
        """How much of the budget is used: the larger of the epoch and the time fractions."""
        tcfg = self.cfg.training
        by_epochs = self.state.iteration / float(tcfg.epochs * tcfg.iterations_per_epoch)
        # distributed: rank 0's clock, so that every rank steps at the same learning rate
        elapsed = self.main_elapsed_s if self.ctx.enabled else self.elapsed()
        by_time = elapsed / self.budget_s if self.budget_s else 0.0
        return max(by_epochs, by_time)

    def _emit(self, kind: str, loss: float, val: float | None) -> None:
        """Report a :class:`TrainingProgress` event to ``on_progress``, if any."""
        if self.on_progress is not None:
            tcfg = self.cfg.training
            self.on_progress(
                TrainingProgress(
                    kind=kind,
                    fold=self.fold,
                    epoch=self.state.epoch,
                    epochs=tcfg.epochs,
                    iteration=self.state.iteration,
                    iterations_per_epoch=tcfg.iterations_per_epoch,
                    loss=loss,
                    val_dice=val,
                    best_dice=self.state.best_dice,
                    elapsed_s=self.elapsed(),
                    budget_s=self.budget_s,
                )
            )

    def _epoch_loader(self) -> Any:
        """The epoch's batches: re-seeded from ``(seed, fold, epoch)``, sampled by weight.

        Each rank gets its share of the epoch's draw (:func:`_epoch_indices`) and its own
        augmentation seed (:func:`_rank_seed`; rank 0's is the epoch's seed).
        """
        from monai.data import DataLoader, list_data_collate

        tcfg = self.cfg.training
        seed = _epoch_seed(self.cfg, self.fold, self.state.epoch)
        rank_seed = _rank_seed(seed, self.ctx.rank)
        _seed_everything(rank_seed)
        self.data.train_ds.transform.set_random_state(seed=rank_seed)
        indices = _epoch_indices(
            self.data.weights.tolist(),
            samples=tcfg.iterations_per_epoch * tcfg.batch_size,
            seed=seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        return DataLoader(
            self.data.train_ds,
            batch_size=tcfg.batch_size,
            sampler=indices,
            num_workers=0,
            collate_fn=list_data_collate,
        )

    def _train_epoch(self) -> list[float]:
        """One epoch of steps (fewer when the time budget runs out); their losses."""
        loader = self._epoch_loader()
        self.train_net.train()
        losses: list[float] = []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Num foregrounds 0.*")
            for batch in loader:
                value, out_of_time = self._after_step(self._step(batch))
                losses.append(value)
                self.state.iteration += 1
                self._emit("iteration", value, None)
                if out_of_time:
                    self.stopped_by = "time"
                    break
        return losses

    def _after_step(self, loss: float) -> tuple[float, bool]:
        """The step's loss (the mean over ranks) and whether the time budget is spent.

        Distributed, one all-reduce after every step brings every rank the mean loss and
        rank 0's clock and decision, so all ranks stop after the same step.
        """
        elapsed = self.elapsed()
        out_of_time = self.budget_s is not None and elapsed >= self.budget_s
        if not self.ctx.enabled:
            return loss, out_of_time
        mean_loss, (main_elapsed, main_out_of_time) = self.ctx.mean_with_main(
            loss, (elapsed, float(out_of_time))
        )
        self.main_elapsed_s = main_elapsed
        return mean_loss, main_out_of_time > 0.5

    def _step(self, batch: dict[str, Any]) -> float:
        """One optimiser step on ``batch`` at the scheduled learning rate; its loss.

        Raises:
            TrainingError: The loss is not finite.
        """
        import torch

        model = self.model
        lr = learning_rate(self.cfg, self._progress_fraction(), self.state.iteration)
        for group in model.optimizer.param_groups:
            group["lr"] = lr
        model.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=model.autocast_dtype, enabled=model.use_amp):
            if self.cfg.is_detection:
                loss = detection_loss(self.train_net, batch, self.cfg, device=model.device)
            else:
                image = batch["image"].to(model.device)
                label = batch["label"].to(model.device)
                loss = model.loss_fn(self.train_net(image), label)
        model.scaler.scale(loss).backward()
        model.scaler.step(model.optimizer)
        model.scaler.update()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"fold {self.fold}: loss became {value} at iteration {self.state.iteration}; "
                "lower training.optimizer.lr"
            )
        return value

    def _end_epoch(self, losses: list[float]) -> None:
        """Curve row, scalars, validation (keeping the best weights) and checkpoint."""
        tcfg = self.cfg.training
        state = self.state
        train_loss = float(np.mean(losses)) if losses else float("nan")
        row: dict[str, Any] = {
            "epoch": state.epoch,
            "iteration": state.iteration,
            "elapsed_s": round(self.elapsed(), 2),
            "lr": float(f"{self.model.optimizer.param_groups[0]['lr']:.6g}"),
            "train_loss": round(train_loss, 5),
            "val_dice": None,
        }
        self.scalars.add("train/loss", train_loss, state.iteration)
        self.scalars.add("train/lr", row["lr"], state.iteration)
        last = state.epoch >= tcfg.epochs or self.stopped_by == "time"
        main = self.ctx.is_main
        if self.data.val_cases and (state.epoch % tcfg.val_every_epochs == 0 or last):
            row["val_dice"] = round(self._validate(train_loss), 5)
        elif not self.data.val_cases and main:
            _save_torch(self.member_dir / WEIGHTS, self.model.net.state_dict())
        state.curve.append(row)
        if main:
            _write_curve(self.member_dir / CURVE, state.curve)
        if main and (state.epoch % tcfg.checkpoint_every_epochs == 0 or last):
            _save_checkpoint(
                self.member_dir / CHECKPOINT,
                self.cfg,
                state,
                net=self.model.net,
                optimizer=self.model.optimizer,
                scaler=self.model.scaler,
                use_scaler=self.model.scaler.is_enabled(),
                elapsed_s=self.elapsed(),
            )
        self._emit("epoch", train_loss, row["val_dice"])

    def _validate(self, train_loss: float) -> float:
        """Validate, keep the weights when they are the best so far; the validation Dice.

        Distributed, rank 0 validates (the unwrapped network) while the others wait for
        its score, so that every rank keeps the same best score and epoch.
        """
        state = self.state
        score: tuple[float, dict[str, float]] = (0.0, {})
        if self.ctx.is_main:
            check = validate_detector if self.cfg.is_detection else validate
            score = check(self.model.net, self.data.val_items, self.cfg, device=self.model.device)
        val_dice, per_group = self.ctx.broadcast(score)
        tag = "val/cpm" if self.cfg.is_detection else "val/dice"
        self.scalars.add(tag, val_dice, state.iteration)
        tie = self.cfg.is_detection and val_dice == state.best_dice  # CPM ties: later wins
        if state.best_dice is None or val_dice > state.best_dice or tie:
            state.best_dice, state.best_epoch = val_dice, state.epoch
            state.best_per_group = per_group
            if self.ctx.is_main:
                _save_torch(self.member_dir / WEIGHTS, self.model.net.state_dict())
        self._emit("validation", train_loss, val_dice)
        return val_dice


__all__ = [
    "CHECKPOINT",
    "CURVE",
    "CURVE_FIELDS",
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
