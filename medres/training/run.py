"""Train every member of a pipeline into a self-describing model folder.

This is what ``medres train`` calls: find and check the data, split patients into folds,
write ``pipeline.yaml`` and ``split.json``, train each requested fold (skipping members
that are already complete when resuming) and write ``model.json`` after each member.

Under torchrun (``torchrun --nproc_per_node G -m medres train ...``) every rank runs this
same function: all of them check the data and the ``out`` folder, rank 0 alone writes
``pipeline.yaml``, ``split.json`` and ``model.json`` and removes stale member folders, and
the folds train one after the other, each across all ranks (see
:mod:`medres.training.ddp` and :mod:`medres.training.loop`).

Example:
    >>> from medres.pipeline import load_pipeline  # doctest: +SKIP
    >>> result = train_pipeline(load_pipeline("pipelines/demo_ct_3d.yaml"),  # doctest: +SKIP
    ...                         data="sample_data/ct_train", out="models/demo")
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medres.errors import MedresError, TrainingError
from medres.io.atomic import write_text_atomic
from medres.models.folder import MANIFEST, PIPELINE, SPLIT, write_manifest
from medres.models.manifest import CrossValidationEntry
from medres.pipeline import PipelineConfig, load_pipeline
from medres.training.datasets import (
    DatasetCheck,
    Fold,
    TrainingCase,
    check_cases,
    exclude_groups,
    find_training_cases,
    make_folds,
    split_to_json,
    with_voxel_boxes,
)
from medres.training.ddp import DistributedContext, distributed_session
from medres.training.detection import with_anchor_shapes
from medres.training.loop import (
    MemberResult,
    TrainingProgress,
    member_is_complete,
    resolve_device,
    train_member,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """Summary of a ``train_pipeline`` call."""

    model_dir: Path
    device: str
    check: DatasetCheck
    members: list[dict[str, Any]]
    cross_validation: CrossValidationEntry | None = None


@dataclass(frozen=True)
class MemberJob:
    """Everything one member's training needs: a unit of work that can run anywhere.

    Members are independent (own fold, own seeds, own folder), so a runner may train them
    one after the other in this process or side by side elsewhere (:mod:`medres.cluster`)
    and get the same members.
    """

    cfg: PipelineConfig
    cases: tuple[TrainingCase, ...]
    train_groups: tuple[str, ...]
    val_groups: tuple[str, ...]
    lesion_cases: frozenset[str]
    member_dir: Path
    fold: int
    device: str
    max_minutes: float | None
    resume: bool

    def train(
        self, *, on_progress: Callable[[TrainingProgress], None] | None = None
    ) -> MemberResult:
        """Train this member into ``member_dir`` (see :func:`train_member`)."""
        return train_member(
            self.cfg,
            cases=self.cases,
            train_groups=self.train_groups,
            val_groups=self.val_groups,
            lesion_cases=set(self.lesion_cases),
            member_dir=self.member_dir,
            fold=self.fold,
            device=self.device,
            max_minutes=self.max_minutes,
            resume=self.resume,
            on_progress=on_progress,
        )


#: Trains members and yields each one's result as it finishes (in any order).
MemberRunner = Callable[[Sequence[MemberJob]], Iterator[MemberResult]]


def train_in_process(
    on_progress: Callable[[TrainingProgress], None] | None = None,
) -> MemberRunner:
    """The default runner: the members one after the other, in this process."""

    def run(jobs: Sequence[MemberJob]) -> Iterator[MemberResult]:
        for job in jobs:
            yield job.train(on_progress=on_progress)

    return run


def _prepare_folder(out: Path, cfg: PipelineConfig, *, resume: bool, create: bool) -> None:
    """Check ``out``: new, or this pipeline's model with ``resume``; create it if ``create``.

    Raises:
        TrainingError: ``out`` holds another pipeline's model, holds this one without
            ``resume``, or is a non-empty folder of something else.
    """
    existing = out / PIPELINE
    if existing.is_file():
        previous = load_pipeline(existing)
        if previous != cfg:
            raise TrainingError(
                f"{out}: holds a model trained with a different pipeline config; choose "
                "another --out folder (or the same pipeline to resume)"
            )
        if not resume:
            raise TrainingError(
                f"{out}: already holds a model of pipeline {cfg.name!r}; pass --resume to "
                "continue it, or choose another --out folder"
            )
    elif out.exists() and any(out.iterdir()) and not resume:
        raise TrainingError(f"{out}: folder exists and is not empty; choose another --out")
    if create:
        out.mkdir(parents=True, exist_ok=True)


def train_pipeline(
    cfg: PipelineConfig,
    *,
    data: str | Path,
    out: str | Path,
    folds: Sequence[int] | None = None,
    device: str = "auto",
    max_minutes: float | None = None,
    resume: bool = False,
    excluded_groups: Sequence[str] = (),
    mask_suffix: str = "_mask",
    data_root: str | Path | None = None,
    on_progress: Callable[[TrainingProgress], None] | None = None,
    on_check: Callable[[int, int], None] | None = None,
    runner: MemberRunner | None = None,
    tune: bool = True,
) -> TrainingRun:
    """Check the data, then train the requested folds into ``out``.

    Under torchrun every rank calls this (see the module docstring); the members train
    across all ranks, one after the other, and only rank 0 writes files.

    Args:
        cfg: Pipeline.
        data: Datalist JSON, Decathlon folder or folder of 2D image/mask pairs.
        out: Model folder to create (or to resume into).
        folds: Fold indices to train (default: all ``training.folds``).
        device: ``auto``, ``cpu`` or ``cuda``.
        max_minutes: Wall-clock budget per member (overrides the pipeline).
        resume: Continue an interrupted run in ``out``.
        excluded_groups: Patients held out from training and cross-validation.
        mask_suffix: Mask suffix of 2D image/mask pairs.
        data_root: Base folder for relative paths of a datalist.
        on_progress: Progress callback (see :class:`TrainingProgress`).
        on_check: Progress callback of the data check ``(done, total)``.
        runner: Trains the members (default :func:`train_in_process` with
            ``on_progress``; :func:`medres.cluster.train_on_cluster` side by side).
        tune: Once the member of every fold asked for is trained, fit the members'
            temperatures and choose the post-processing from their out-of-fold predictions
            (:func:`medres.training.tuning.tune_model`; segmentation models only).

    Long: one place keeps the order a resumable run relies on: check, split, members,
    manifest, then the cross-validation tuning.

    Raises:
        DatasetError: Bad or empty data (before anything is trained).
        ConfigError: A model the registry cannot build.
        TrainingError: Bad fold numbers, device, or an ``out`` folder in the way; under
            torchrun, a broken launch environment or fewer GPUs than processes.
    """
    from medres.models.registry import build_pipeline_network

    out = Path(out)
    # a cluster's workers resolve the device themselves (the driver may have no GPU)
    resolved_device = resolve_device(device) if runner is None else device
    wanted = wanted_folds(cfg, folds)
    build_pipeline_network(cfg)  # fail on bad model params before reading data
    with distributed_session(resolved_device) as ctx:
        cases = find_training_cases(data, mask_suffix=mask_suffix, base_dir=data_root)
        cases, check, cfg = checked_cases(cfg, cases, excluded_groups, on_check)
        fold_list = make_folds(cases, n_folds=cfg.training.folds, seed=cfg.training.seed)
        split = split_to_json(fold_list, cases, excluded_groups)
        _prepare_out(out, cfg, split, resume=resume, ctx=ctx)
        provenance = _provenance(data, check, resolved_device, ctx)
        jobs = _member_jobs(
            cfg,
            out,
            cases,
            fold_list,
            check,
            wanted,
            ctx=ctx,
            max_minutes=max_minutes,
            resume=resume,
        )
        for _result in (runner or train_in_process(on_progress))(jobs):
            if ctx.is_main:
                write_manifest(
                    out, cfg, _completed_members(out, fold_list), extra={"training": provenance}
                )
        members = _completed_members(out, fold_list)
        if ctx.is_main and members and not (out / MANIFEST).is_file():
            write_manifest(out, cfg, members, extra={"training": provenance})
    shown = _trained_on(members) if runner is not None else resolved_device
    wanted_done = {m["fold"] for m in members} >= set(wanted)  # every fold asked for
    entry = None
    if tune and members and wanted_done and ctx.is_main and not cfg.is_detection:
        entry = _tune(out, cases, "cpu" if runner is not None else resolved_device)
    return TrainingRun(
        model_dir=out, device=shown, check=check, members=members, cross_validation=entry
    )


def _tune(out: Path, cases: Sequence[TrainingCase], device: str) -> CrossValidationEntry:
    """Temperatures and post-processing from the members' out-of-fold predictions."""
    from medres.training.tuning import tune_model

    return tune_model(out, cases, device=device)


def checked_cases(
    cfg: PipelineConfig,
    cases: Sequence[TrainingCase],
    excluded_groups: Sequence[str],
    on_check: Callable[[int, int], None] | None,
) -> tuple[list[TrainingCase], DatasetCheck, PipelineConfig]:
    """The cases (held-out groups dropped, datalist boxes in voxels), their check, and the
    pipeline with a detector's anchors chosen from the training boxes when not given."""
    if excluded_groups:
        cases = exclude_groups(cases, excluded_groups)
    check = check_cases(cases, cfg, on_progress=on_check)
    cases = with_voxel_boxes(cases, cfg)
    return cases, check, with_anchor_shapes(cfg, cases, check.lesion_cases)


def _trained_on(members: Sequence[dict[str, Any]]) -> str:
    """The devices the members record (where a runner's workers trained them)."""
    return ", ".join(sorted({str(m["summary"].get("device")) for m in members})) or "-"


def _prepare_out(
    out: Path, cfg: PipelineConfig, split: dict[str, Any], *, resume: bool, ctx: DistributedContext
) -> None:
    """Check ``out`` on every rank, then write ``pipeline.yaml`` and ``split.json`` on rank 0.

    Raises:
        TrainingError: ``out`` is in the way (see :func:`_prepare_folder`) or holds
            another split.
    """
    _prepare_folder(out, cfg, resume=resume, create=ctx.is_main)
    _check_split(out, split)
    ctx.barrier()  # every rank has checked ``out`` before rank 0 writes into it
    if ctx.is_main:
        _write_pipeline_and_split(out, cfg, split)


def _member_jobs(
    cfg: PipelineConfig,
    out: Path,
    cases: Sequence[TrainingCase],
    fold_list: Sequence[Fold],
    check: DatasetCheck,
    wanted: Sequence[int],
    *,
    ctx: DistributedContext,
    max_minutes: float | None,
    resume: bool,
) -> list[MemberJob]:
    """The members of ``wanted`` folds still to train, each on this rank's device.

    Raises:
        TrainingError: A member is complete but ``resume`` was not asked for.
    """
    return [
        MemberJob(
            cfg=cfg,
            cases=tuple(cases),
            train_groups=tuple(fold_list[index].train_groups),
            val_groups=tuple(fold_list[index].val_groups),
            lesion_cases=frozenset(check.lesion_cases),
            member_dir=out / f"fold_{index}",
            fold=index,
            device=ctx.device,
            max_minutes=max_minutes,
            resume=resume,
        )
        for index in wanted
        if _needs_training(out / f"fold_{index}", index, resume=resume, remove=ctx.is_main)
    ]


def _needs_training(member_dir: Path, index: int, *, resume: bool, remove: bool) -> bool:
    """Whether fold ``index`` is still to train; a stale folder is removed unless resuming.

    ``remove`` False (the other ranks of a distributed run) leaves the removal to rank 0.

    Raises:
        TrainingError: The member is complete but ``resume`` was not asked for.
    """
    if member_is_complete(member_dir) is not None:
        if not resume:
            raise TrainingError(f"{member_dir}: member already trained; pass --resume")
        logger.info("fold %d is complete; skipping", index)
        return False
    if remove and member_dir.exists() and not resume:
        shutil.rmtree(member_dir)
    return True


def wanted_folds(cfg: PipelineConfig, folds: Sequence[int] | None) -> list[int]:
    """The fold indices to train, sorted (all of them for None).

    Raises:
        TrainingError: An index the pipeline does not have.
    """
    n_folds = cfg.training.folds
    wanted = list(range(n_folds)) if folds is None else sorted(set(folds))
    bad = [f for f in wanted if not 0 <= f < n_folds]
    if bad:
        raise TrainingError(f"fold(s) {bad} do not exist; the pipeline has folds 0..{n_folds - 1}")
    return wanted


def _check_split(out: Path, split: dict[str, Any]) -> None:
    """Refuse to continue a model in ``out`` that was started on another split.

    Raises:
        TrainingError: ``out`` already holds another split (the data or the excluded
            groups changed since the model was started).
    """
    split_path = out / SPLIT
    if split_path.is_file():
        previous_split = json.loads(split_path.read_text(encoding="utf-8"))
        if previous_split != split:
            raise TrainingError(
                f"{split_path}: the data set or excluded groups changed since this model was "
                "started; resume with the same data, or train into a new --out folder"
            )


def _write_pipeline_and_split(out: Path, cfg: PipelineConfig, split: dict[str, Any]) -> None:
    """Write ``pipeline.yaml`` and ``split.json`` into ``out`` (checked by :func:`_check_split`);
    a ``pipeline.yaml`` already holding ``cfg`` is left as it is (its checksum is in
    ``model.json``; a newer medres writes the same config with more default keys)."""
    try:
        same = load_pipeline(out / PIPELINE) == cfg
    except MedresError:
        same = False
    if not same:
        write_text_atomic(out / PIPELINE, cfg.to_yaml())
    write_text_atomic(out / SPLIT, json.dumps(split, indent=2) + "\n")


def _provenance(
    data: str | Path, check: DatasetCheck, device: str, ctx: DistributedContext
) -> dict[str, Any]:
    """What the manifest records about the training data and the machine.

    Under torchrun also ``"distributed": {"world_size": G, "backend": "gloo" | "nccl"}``
    (``torch_threads`` is then rank 0's).
    """
    import torch

    provenance: dict[str, Any] = {
        "training_data": os.path.basename(os.path.normpath(str(data))),
        "n_cases": check.n_cases,
        "n_groups": check.n_groups,
        "label_voxels": check.label_voxels,
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
    if ctx.enabled:
        provenance["distributed"] = {"world_size": ctx.world_size, "backend": ctx.backend}
    return provenance


def _completed_members(out: Path, fold_list: Sequence[Fold]) -> list[dict[str, Any]]:
    """The manifest entries of the members in ``out`` that finished training, in fold order."""
    done = []
    for fold in fold_list:
        summary = member_is_complete(out / f"fold_{fold.index}")
        if summary is not None:
            done.append(
                {
                    "name": f"fold_{fold.index}",
                    "fold": fold.index,
                    "val_dice": summary.get("best_val_dice"),
                    "summary": summary,
                }
            )
    return done


__all__ = [
    "MemberJob",
    "MemberRunner",
    "TrainingRun",
    "train_in_process",
    "train_pipeline",
]
