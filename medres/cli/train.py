"""``medres train PIPELINE --data DIR --out MODEL_DIR``: train the members of a pipeline."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medres.cli.cluster import SchedulerOption, TorchThreadsOption, WorkersOption

if TYPE_CHECKING:
    from distributed import Client

    from medres.cluster.client import ClusterSpec
    from medres.models.manifest import CrossValidationEntry
    from medres.training.loop import TrainingProgress
    from medres.training.plan import TrainingPlan
    from medres.training.run import MemberRunner, TrainingRun


def _parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give fold numbers like 0,1,2") from None


def train_command(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (see pipelines/).")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Datalist JSON, Decathlon folder (imagesTr/labelsTr) or folder of 2D "
            "image/mask pairs.",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Model folder to write (not with --check).")
    ] = None,
    folds: Annotated[
        str | None, typer.Option("--folds", help="Folds to train, e.g. 0,1 (default: all).")
    ] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option("--max-minutes", help="Wall-clock budget per member (overrides the config)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.")
    ] = False,
    exclude_groups: Annotated[
        str | None,
        typer.Option(
            "--exclude-groups",
            help="Patients held out of training and cross-validation (a test set): "
            "comma-separated, or @file with one per line.",
        ),
    ] = None,
    mask_suffix: Annotated[
        str, typer.Option("--mask-suffix", help="Mask suffix of 2D image/mask pairs.")
    ] = "_mask",
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Base folder for relative paths in a datalist JSON."),
    ] = None,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune/--no-tune",
            help="After the last fold: fit each member's temperature (calibrated "
            "probabilities) and choose the post-processing from the out-of-fold predictions.",
        ),
    ] = True,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Dry run: check the pipeline and data, time a few training steps and print "
            "the plan (cases, folds, patch, iterations per minute, epochs in the budget); "
            "writes nothing.",
        ),
    ] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    torch_threads: TorchThreadsOption = None,
) -> None:
    """Train one member per cross-validation fold into a self-describing model folder.

    The data are checked first (files, channels, shapes, label values); nothing is trained
    when any case is bad. Interrupt with Ctrl-C and continue later with --resume. Under
    torchrun (torchrun --nproc_per_node G -m medres train ...) the G processes train each
    member together and only rank 0 shows progress and the table. With --workers or
    --scheduler the members train side by side, one per Dask worker.
    \f
    Long: one typer option per flag, and the progress callback that draws the bars.
    """
    from medres.cli.cluster import cluster_spec
    from medres.cli.console import (
        err_console,
        fail_cleanly,
        progress_bar,
    )
    from medres.errors import ClusterError
    from medres.pipeline import load_pipeline
    from medres.runtime import tune_allocator
    from medres.training.datasets import read_group_list
    from medres.training.ddp import launch_from_env
    from medres.training.run import train_pipeline

    tune_allocator()
    fold_list = _parse_folds(folds)
    if check:
        _check_only(
            pipeline, data, fold_list, device, max_minutes, exclude_groups, mask_suffix, data_root
        )
        return
    if out is None:
        raise typer.BadParameter("give the model folder to write with --out", param_hint="--out")
    with fail_cleanly(), ExitStack() as stack:
        launch = launch_from_env()
        quiet = not launch.is_main  # torchrun: only rank 0 draws and prints
        spec = cluster_spec(workers, scheduler, torch_threads)
        if spec.wanted and launch.world_size > 1:
            raise ClusterError(
                "--workers/--scheduler train members side by side; under torchrun every "
                "process trains the same member: use one or the other"
            )
        groups = read_group_list(exclude_groups) if exclude_groups else []
        cfg = load_pipeline(pipeline)
        client = None
        if spec.wanted:
            from medres.cli.cluster import describe_spec
            from medres.cluster import open_client

            err_console.print(describe_spec(spec), highlight=False)
            client = stack.enter_context(open_client(spec))
        with nullcontext(_Silent()) if quiet else progress_bar(transient=False) as progress:
            check_task = progress.add_task("check data", total=None, item="")
            tasks: dict[int, Any] = {}

            def on_check(done: int, total: int) -> None:
                progress.update(check_task, completed=done + 1, total=total)

            def on_progress(event: TrainingProgress) -> None:
                if event.fold not in tasks:
                    total = event.epochs * event.iterations_per_epoch
                    tasks[event.fold] = progress.add_task(
                        f"fold {event.fold}", total=total, item=""
                    )
                task = tasks[event.fold]
                total = event.epochs * event.iterations_per_epoch
                rate = event.iteration / max(event.elapsed_s, 1e-6)
                left = (total - event.iteration) / max(rate, 1e-6)
                if event.budget_s is not None:
                    left = min(left, event.budget_s - event.elapsed_s)
                best = f"{event.best_dice:.3f}" if event.best_dice is not None else "-"
                val = f" val {event.val_dice:.3f}" if event.val_dice is not None else ""
                if event.budget_s is not None and event.iteration > 0:
                    # a time budget: the bar's total is what the budget will allow
                    total = min(total, event.iteration + int(max(left, 0) * rate))
                progress.update(
                    task,
                    total=max(total, event.iteration),
                    completed=event.iteration,
                    item=f"epoch {event.epoch + (event.kind == 'iteration')} "
                    f"loss {event.loss:.3f}{val} best {best}",  # the bar's eta follows the budget
                )

            try:
                run = train_pipeline(
                    cfg,
                    data=data,
                    out=out,
                    folds=fold_list,
                    device=device,
                    max_minutes=max_minutes,
                    resume=resume,
                    excluded_groups=groups,
                    mask_suffix=mask_suffix,
                    data_root=data_root,
                    on_progress=on_progress,
                    on_check=on_check,
                    runner=_cluster_runner(client, spec, on_progress),
                    tune=tune,
                )
            except KeyboardInterrupt:
                if not quiet:
                    err_console.print(
                        "interrupted: the last finished epoch is saved; run the same command "
                        "with --resume to continue"
                    )
                raise typer.Exit(130) from None
    if not quiet:
        _print_members(run, cfg_name=cfg.name)


def _check_only(
    pipeline: Path,
    data: Path,
    folds: list[int] | None,
    device: str,
    max_minutes: float | None,
    exclude_groups: str | None,
    mask_suffix: str,
    data_root: Path | None,
) -> None:
    """``medres train --check``: the plan of a run, measured, and nothing written."""
    from medres.cli.console import fail_cleanly, progress_bar
    from medres.pipeline import load_pipeline
    from medres.training.datasets import read_group_list
    from medres.training.plan import plan_training

    with fail_cleanly():
        cfg = load_pipeline(pipeline)
        groups = read_group_list(exclude_groups) if exclude_groups else []
        with progress_bar() as progress:
            task = progress.add_task("check data", total=None, item="")

            def on_check(done: int, total: int) -> None:
                progress.update(task, completed=done + 1, total=total)

            plan = plan_training(
                cfg,
                data=data,
                folds=folds,
                device=device,
                max_minutes=max_minutes,
                excluded_groups=groups,
                mask_suffix=mask_suffix,
                data_root=data_root,
                on_check=on_check,
            )
    _print_plan(plan)


def _print_plan(plan: TrainingPlan) -> None:
    """The plan of ``medres train --check``: data, folds, rates, what the budget allows."""
    from rich.table import Table

    from medres.cli.console import console

    console.print(
        f"pipeline {plan.pipeline} on {plan.device}: {plan.n_cases} cases, {plan.n_groups} "
        f"patients, {plan.lesion_cases} with lesions"
        + (f"; {len(plan.excluded)} patient(s) held out" if plan.excluded else ""),
        highlight=False,
    )
    table = Table(title="members (one per fold)")
    for column in ("member", "train patients", "train cases", "val patients", "val cases"):
        table.add_column(column)
    for fold in plan.folds:
        table.add_row(
            f"fold_{fold.index}",
            str(fold.train_groups),
            str(fold.train_cases),
            str(fold.val_groups),
            str(fold.val_cases),
        )
    console.print(table)
    budget = (
        f"{plan.max_minutes:g} wall-clock minutes per member"
        if plan.max_minutes is not None
        else "no time budget (epochs only)"
    )
    console.print(
        f"patch {'x'.join(map(str, plan.patch_size))}, batch {plan.batch_size}, "
        f"{plan.iterations_per_epoch} iterations per epoch, {plan.epochs} epochs, {budget}\n"
        f"measured on fold_{plan.folds[0].index}: {plan.iterations_per_minute:.0f} iterations "
        f"per minute ({plan.seconds_per_iteration:.3f} s each), validation "
        f"{plan.validation_s:.1f} s, start-up {plan.startup_s:.1f} s\n"
        f"expected: {plan.expected_epochs} of {plan.epochs} epochs per member (stopped by "
        f"{plan.stopped_by}), about {plan.member_minutes:.1f} minutes per member, "
        f"{plan.member_minutes * len(plan.folds):.1f} in all",
        highlight=False,
    )
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print("nothing was written (--check)", highlight=False)


def _print_cross_validation(entry: CrossValidationEntry) -> None:
    """The temperatures, ECE and post-processing the out-of-fold predictions gave."""
    from medres.cli.console import err_console

    temperatures = ", ".join(f"{k} {v:.2f}" for k, v in entry.temperatures.items())
    ece, scores = entry.ece, entry.scores
    err_console.print(
        f"cross-validation ({entry.n_cases} out-of-fold cases): temperatures {temperatures}; "
        f"ECE in the lesion region {ece['lesion_before']:.4f} -> {ece['lesion_after']:.4f}, "
        f"over all voxels {ece['all_before']:.4f} -> {ece['all_after']:.4f}\n"
        f"post-processing: {entry.chosen.describe(entry.size_unit)} (out-of-fold Dice "
        f"{scores['dice_chosen']:.3f}, lesion F1 {scores['f1_chosen']:.3f}; the pipeline's "
        f"own: Dice {scores['dice_configured']:.3f}, F1 {scores['f1_configured']:.3f})",
        highlight=False,
    )


def _cluster_runner(
    client: Client | None, spec: ClusterSpec, on_progress: Callable[[TrainingProgress], None]
) -> MemberRunner | None:
    """The Dask runner when a cluster is open, else None (members in this process)."""
    if client is None:
        return None
    from medres.cluster import train_on_cluster

    return train_on_cluster(client, spec, on_progress=on_progress)


class _Silent:
    """The progress calls of the commands, doing nothing (torchrun ranks other than 0)."""

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        return 0

    def update(self, task_id: int, **fields: Any) -> None:
        return None


def _print_members(run: TrainingRun, *, cfg_name: str) -> None:
    """One row per trained member, then the data summary."""
    from rich.table import Table

    from medres.cli.console import console, err_console

    table = Table(title=f"{cfg_name}: model folder {run.model_dir} ({run.device})")
    detector = any(m["summary"].get("val_metric") == "cpm" for m in run.members)
    score = "val CPM" if detector else "val Dice"
    for column in ("member", score, "best epoch", "epochs", "iterations", "minutes", "stop"):
        table.add_column(column)
    for member in run.members:
        s = member["summary"]
        dice = member["val_dice"]
        table.add_row(
            member["name"],
            f"{dice:.3f}" if dice is not None else "-",
            str(s.get("best_epoch")),
            str(s.get("epochs_done")),
            str(s.get("iterations")),
            f"{s.get('minutes', 0):.1f}",
            str(s.get("stopped_by")),
        )
    console.print(table)
    err_console.print(
        f"data: {run.check.n_cases} cases, {run.check.n_groups} patients, "
        f"{len(run.check.lesion_cases)} with lesions"
    )
    if run.cross_validation is not None:
        _print_cross_validation(run.cross_validation)
