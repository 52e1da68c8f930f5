"""``medres train --check``: validate a pipeline and its data, measure the speed of a few
real training steps, and say what a run would do, without writing a model folder.

:func:`plan_training` runs the same checks as :func:`medres.training.run.train_pipeline`
(pipeline, network, every case's files, channels, shapes and label values), decodes
every image as training will (so a truncated file is named now, not minutes into a run),
splits the folds, then trains fold 0's member for a few iterations in a temporary folder and
validates it once, to measure seconds per iteration and per validation on this machine.
From them it predicts how many epochs fit in ``max_minutes`` (wall-clock minutes per
member, validation included) and how long each member will take.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medres.pipeline import PipelineConfig
from medres.runtime import resolve_device
from medres.training.datasets import (
    TrainingCase,
    find_training_cases,
    make_folds,
)
from medres.training.loop import TrainingProgress, train_member

#: Training iterations timed by :func:`plan_training` (the first one, which also loads
#: and caches the data, is left out of the rate).
MEASURED_ITERATIONS = 6


@dataclass
class FoldPlan:
    """One member of the plan: its fold and how many patients and cases it trains on."""

    index: int
    train_groups: int
    val_groups: int
    train_cases: int
    val_cases: int


@dataclass
class TrainingPlan:
    """What ``medres train`` would do with this pipeline and data, and how long it takes.

    Attributes:
        pipeline: The pipeline's name.
        device: Where it would train (resolved).
        n_cases / n_groups: Labelled cases and patients (after ``excluded``).
        lesion_cases: Cases with at least one lesion voxel.
        excluded: Held-out patient groups.
        folds: The members that would train.
        patch_size / batch_size / iterations_per_epoch / epochs: The pipeline's.
        max_minutes: The wall-clock budget per member (None: epochs only).
        startup_s: Seconds from the start of the measured member to its first step
            (network set-up, data loading and caching).
        seconds_per_iteration: One training step (forward, backward, update) measured.
        validation_s: One validation of the measured fold's held-out cases.
        expected_epochs: Epochs each member will finish (``epochs``, or fewer when the
            budget ends first).
        member_minutes: Expected wall-clock minutes per member.
        stopped_by: ``epochs`` or ``time budget``: what will end each member.
    """

    pipeline: str
    device: str
    n_cases: int
    n_groups: int
    lesion_cases: int
    excluded: list[str]
    folds: list[FoldPlan]
    patch_size: tuple[int, ...]
    batch_size: int
    iterations_per_epoch: int
    epochs: int
    val_every_epochs: int
    max_minutes: float | None
    startup_s: float = 0.0
    seconds_per_iteration: float = 0.0
    validation_s: float = 0.0
    expected_epochs: int = 0
    member_minutes: float = 0.0
    stopped_by: str = "epochs"
    notes: list[str] = field(default_factory=list)

    @property
    def iterations_per_minute(self) -> float:
        """Training steps per minute measured (0 when not measured)."""
        return 60.0 / self.seconds_per_iteration if self.seconds_per_iteration > 0 else 0.0


def plan_training(
    cfg: PipelineConfig,
    *,
    data: str | Path,
    folds: Sequence[int] | None = None,
    device: str = "auto",
    max_minutes: float | None = None,
    excluded_groups: Sequence[str] = (),
    mask_suffix: str = "_mask",
    data_root: str | Path | None = None,
    measure_iterations: int = MEASURED_ITERATIONS,
    on_check: Callable[[int, int], None] | None = None,
) -> TrainingPlan:
    """Check ``cfg`` and ``data`` as ``medres train`` does and time a few steps of fold 0.

    Raises:
        DatasetError: Bad or empty data (the same errors as ``medres train``).
        ConfigError: A network the registry cannot build.
        TrainingError: Bad fold numbers or device.
    """
    from medres.models.registry import build_pipeline_network
    from medres.training.run import checked_cases, wanted_folds

    resolved = resolve_device(device)
    wanted = wanted_folds(cfg, folds)
    build_pipeline_network(cfg)
    cases = find_training_cases(data, mask_suffix=mask_suffix, base_dir=data_root)
    cases, check, cfg = checked_cases(cfg, cases, excluded_groups, on_check)
    _decode_every_image(cases, cfg.dims)  # the check reads headers; a dry run reads all
    fold_list = make_folds(cases, n_folds=cfg.training.folds, seed=cfg.training.seed)
    by_group: dict[str, int] = {}
    for case in cases:
        by_group[case.group] = by_group.get(case.group, 0) + 1
    training = cfg.training
    plan = TrainingPlan(
        pipeline=cfg.name,
        device=resolved,
        n_cases=check.n_cases,
        n_groups=check.n_groups,
        lesion_cases=len(check.lesion_cases),
        excluded=list(excluded_groups),
        folds=[
            FoldPlan(
                index=f.index,
                train_groups=len(f.train_groups),
                val_groups=len(f.val_groups),
                train_cases=sum(by_group[g] for g in f.train_groups),
                val_cases=sum(by_group[g] for g in f.val_groups),
            )
            for f in fold_list
            if f.index in wanted
        ],
        patch_size=tuple(training.patch_size),
        batch_size=training.batch_size,
        iterations_per_epoch=training.iterations_per_epoch,
        epochs=training.epochs,
        val_every_epochs=training.val_every_epochs,
        max_minutes=max_minutes if max_minutes is not None else training.max_minutes,
    )
    first = fold_list[wanted[0]]
    _measure(plan, cfg, cases, first, check.lesion_cases, resolved, measure_iterations)
    _expect(plan)
    return plan


def _decode_every_image(cases: Sequence[TrainingCase], dims: int) -> None:
    """Decode every case's image files, as training will, and list every failure.

    Raises:
        DatasetError: Some image cannot be decoded (truncated, corrupt); all are named.
    """
    from medres.errors import DatasetError, LoadError
    from medres.transforms.presets import read_channels

    problems = []
    for case in cases:
        try:
            read_channels(case.image_paths, dims=dims)
        except LoadError as exc:
            problems.append(str(exc))
    if problems:
        listed = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(
            f"{len(problems)} image(s) cannot be decoded; training would stop at them:\n"
            f"  {listed}{more}"
        )


def _measure(
    plan: TrainingPlan,
    cfg: PipelineConfig,
    cases: Sequence[object],
    fold: object,
    lesion_cases: set[str],
    device: str,
    iterations: int,
) -> None:
    """Train ``fold``'s member for ``iterations`` steps and one validation, timed."""
    steps = max(int(iterations), 2)
    short = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(
                update={
                    "epochs": 1,
                    "iterations_per_epoch": steps,
                    "val_every_epochs": 1,
                    "max_minutes": None,
                    "warmup_iterations": 0,
                }
            )
        }
    )
    times: dict[str, list[float]] = {"iteration": [], "validation": []}

    def on_progress(event: TrainingProgress) -> None:
        if event.kind in times:
            times[event.kind].append(event.elapsed_s)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medres-check-") as folder:
        train_member(
            short,
            cases=cases,  # type: ignore[arg-type]
            train_groups=fold.train_groups,  # type: ignore[attr-defined]
            val_groups=fold.val_groups,  # type: ignore[attr-defined]
            lesion_cases=lesion_cases,
            member_dir=Path(folder) / "fold",
            fold=fold.index,  # type: ignore[attr-defined]
            device=device,
            on_progress=on_progress,
        )
    its = times["iteration"]
    total = time.perf_counter() - start
    if len(its) >= 2:
        plan.seconds_per_iteration = (its[-1] - its[0]) / (len(its) - 1)
        plan.startup_s = max(its[0] - plan.seconds_per_iteration, 0.0)
    if times["validation"] and its:
        plan.validation_s = max(times["validation"][-1] - its[-1], 0.0)
    elif its:
        plan.validation_s = max(total - its[-1], 0.0)


def _expect(plan: TrainingPlan) -> None:
    """Epochs that fit the budget and the minutes per member, from the measured rates."""
    epoch_s = (
        plan.iterations_per_epoch * plan.seconds_per_iteration
        + plan.validation_s / plan.val_every_epochs
    )
    wanted_s = plan.startup_s + plan.epochs * epoch_s
    plan.expected_epochs = plan.epochs
    if plan.max_minutes is not None and wanted_s > plan.max_minutes * 60.0 and epoch_s > 0:
        left = max(plan.max_minutes * 60.0 - plan.startup_s, 0.0)
        plan.expected_epochs = min(plan.epochs, math.floor(left / epoch_s))
        plan.stopped_by = "time budget"
        wanted_s = plan.max_minutes * 60.0
    plan.member_minutes = wanted_s / 60.0
    if plan.expected_epochs < 1:
        plan.notes.append(
            "the budget ends before the first epoch does: raise max_minutes or lower "
            "training.iterations_per_epoch"
        )
    elif plan.stopped_by == "time budget" and plan.expected_epochs < plan.epochs / 4:
        plan.notes.append(
            f"only {plan.expected_epochs} of {plan.epochs} epochs fit the budget: the learning "
            "rate still anneals over the budget, but more minutes would train further"
        )


__all__ = ["MEASURED_ITERATIONS", "FoldPlan", "TrainingPlan", "plan_training"]
