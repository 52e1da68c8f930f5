"""``medres evaluate PREDICTIONS --truth T``: metrics per member and for the ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from collections.abc import Callable

    from medres.evaluation.compare import Compared
    from medres.evaluation.run import EvaluateOptions, EvaluationRun
    from medres.pipeline import PipelineConfig

#: Problems listed on the console (all of them are in summary.json).
MAX_PROBLEMS = 10


def evaluate_command(
    predictions: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Output folder(s) of medres predict, or any folder of label maps (nnU-Net's "
            "CASE.nii.gz, a reader's masks); several are compared in one table."
        ),
    ] = None,
    more: Annotated[
        list[Path] | None,
        typer.Option(
            "--predictions",
            "-p",
            help="Another prediction folder to compare (repeat it): medres, nnU-Net, a reader.",
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            "-t",
            help="Ground truth: a folder (masks named <scan_id>_mask.* or <scan_id>.nii.gz, "
            "or --truth-name files in <scan_id>/ folders) or a datalist JSON (id + label).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write (default: PREDICTIONS/evaluation)."),
    ] = None,
    members: Annotated[
        bool,
        typer.Option(
            "--members/--no-members",
            help="Also score each member (needs medres predict --members).",
        ),
    ] = True,
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            help="scan: each scan is a case; folder: the scans of one source folder are "
            "pooled into one case (the slices of a patient).",
        ),
    ] = "scan",
    tolerance_mm: Annotated[
        float | None,
        typer.Option(
            "--tolerance-mm", help="NSD tolerance in mm (default: the case's largest spacing)."
        ),
    ] = None,
    iou: Annotated[
        float,
        typer.Option("--iou", min=0.0, max=1.0, help="Lesion overlap (IoU) that counts as found."),
    ] = 0.1,
    truth_name: Annotated[
        str | None,
        typer.Option("--truth-name", help="Truth file name inside each case folder."),
    ] = None,
    mask_suffix: Annotated[str, typer.Option("--mask-suffix", help="Truth mask suffix.")] = "_mask",
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Base folder for relative paths in a datalist JSON."),
    ] = None,
    skip_missing_truth: Annotated[
        bool,
        typer.Option(
            "--skip-missing-truth",
            help="Leave out scans without ground truth instead of reporting them.",
        ),
    ] = False,
    boxes: Annotated[
        bool,
        typer.Option(
            "--boxes",
            help="Box-level FROC/CPM/AP of the segmented lesions too (always with a detector).",
        ),
    ] = False,
    min_lesion_size: Annotated[
        float,
        typer.Option(
            "--min-lesion-size",
            min=0.0,
            help="Box figures: true lesions smaller than this (mm³ 3D, mm² 2D) are left out.",
        ),
    ] = 0.0,
) -> None:
    """Score predictions against ground truth: segmentation, lesion detection, calibration.

    Writes metrics.csv (per case and model), lesions.csv (every lesion match),
    summary.json (means, medians, 95 % bootstrap CIs, member vs ensemble), PNG plots and
    evaluation.html. Detection models' boxes (detections.json) and, with --boxes, the
    bounding boxes of segmented lesions are scored box by box (summary.json "boxes":
    FROC, CPM, sensitivity at 1 FP per case, AP at IoU 0.1 and 0.1-0.5). Cases that cannot
    be scored are listed; the exit code is then 1.
    \f
    Long: one typer option per flag; the tables are _print_results'.
    """
    from medres.cli.console import (
        fail_cleanly,
        progress_bar,
    )
    from medres.errors import EvaluationError
    from medres.evaluation.run import EvaluateOptions

    folders = [*(predictions or []), *(more or [])]
    with fail_cleanly():
        if not folders:
            raise EvaluationError("give the prediction folder(s) to evaluate")
        if truth is None:
            raise EvaluationError("give the ground truth with --truth (a folder or datalist JSON)")
        options = EvaluateOptions(
            group_by=group_by,
            tolerance_mm=tolerance_mm,
            iou_threshold=iou,
            members=members,
            truth_name=truth_name,
            mask_suffix=mask_suffix,
            data_root=str(data_root) if data_root else None,
            skip_missing_truth=skip_missing_truth,
            boxes=boxes,
            min_lesion_size=min_lesion_size,
        )
        with progress_bar() as progress:
            task = progress.add_task("evaluate", total=None, item="")

            def on_progress(done: int, total: int, scan_id: str) -> None:
                progress.update(task, completed=done, total=total, item=scan_id)

            if len(folders) == 1:
                result = evaluate_folder(folders[0], truth, out, options, on_progress)
            else:
                runs, comparison, where = compare_folders(folders, truth, out, options, on_progress)
    if len(folders) == 1:
        _print_results(result)
    else:
        _print_comparison(runs, comparison, where)


def evaluate_folder(
    folder: Path,
    truth: Path,
    out: Path | None,
    options: EvaluateOptions,
    on_progress: Callable[[int, int, str], None],
    *,
    name: str | None = None,
    cfg: PipelineConfig | None = None,
) -> EvaluationRun:
    """One folder: a ``medres predict`` folder, or label maps (as the model ``name``)."""
    from medres.evaluation.label_maps import evaluate_label_maps
    from medres.evaluation.run import evaluate_predictions, is_predict_folder

    if is_predict_folder(folder):
        return evaluate_predictions(folder, truth, out, options=options, on_progress=on_progress)
    return evaluate_label_maps(
        folder, truth, out, name=name, cfg=cfg, options=options, on_progress=on_progress
    )


def compare_folders(
    folders: list[Path],
    truth: Path,
    out: Path | None,
    options: EvaluateOptions,
    on_progress: Callable[[int, int, str], None],
) -> tuple[list[Compared], dict[str, Any], Path]:
    """Every folder evaluated into ``OUT/<name>/``, then compared with the first."""
    from medres.evaluation.compare import (
        Compared,
        compare,
        main_model,
        unique_names,
        write_comparison,
    )
    from medres.evaluation.run import is_predict_folder, predict_pipeline

    where = out if out is not None else folders[0] / "comparison"
    medres_folders = [f for f in folders if is_predict_folder(f)]
    cfg = predict_pipeline(medres_folders[0]) if medres_folders else None
    entries = []
    for folder, name in zip(folders, unique_names(folders), strict=True):
        run = evaluate_folder(
            folder, truth, where / name.replace("/", "_"), options, on_progress, name=name, cfg=cfg
        )
        entries.append(Compared(name, run, main_model(run)))
    comparison = compare(entries)
    write_comparison(where, comparison)
    return entries, comparison, where


def _print_comparison(entries: list[Compared], comparison: dict[str, Any], where: Path) -> None:
    """One table per label: each folder's figures, and its difference from the first."""
    from rich.table import Table

    from medres.cli.console import EXIT_SOME_FAILED, console, err_console

    unit = comparison["length_unit"]
    first = entries[0].name
    for label, items in comparison["labels"].items():
        table = Table(title=f"{label}: mean [95 % CI]; minus {first}: paired over common cases")
        for column in ("prediction", "cases", "Dice", f"HD95 {unit}", "lesion F1"):
            table.add_column(column, no_wrap=column == "prediction")
        table.add_column(f"Dice minus {first}", overflow="fold")
        table.add_column(f"F1 minus {first}", overflow="fold")
        for item in items:
            paired = item.get("minus_first")

            def diff(metric: str, d: dict[str, Any] | None = paired) -> str:
                if d is None:
                    return "-"
                m = d[metric]
                return f"{m['mean_difference']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"

            table.add_row(
                item["name"],
                str(item["n_cases"]),
                f"{item['dice']['mean']:.3f} [{item['dice']['ci_low']:.3f}, "
                f"{item['dice']['ci_high']:.3f}]",
                f"{item['hd95_mm']['mean']:.1f}",
                f"{item['f1']['mean']:.3f}",
                diff("dice"),
                diff("f1"),
            )
        console.print(table)
    err_console.print(f"each folder's evaluation and comparison.json/.csv: {where}")
    failed = [(e.name, f) for e in entries for f in e.evaluation.failed]
    for name, failure in failed[:MAX_PROBLEMS]:
        err_console.print(
            f"[red]not scored[/] {name}: {failure['scan_id']}: {failure['error']}",
            highlight=False,
        )
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _with_ci(entry: dict[str, Any], key: str) -> str:
    low, high = entry["ci"].get(key, (float("nan"), float("nan")))
    return f"{entry[key]:.3f} [{low:.2f}, {high:.2f}]"


def _print_boxes(boxes: dict[str, Any]) -> None:
    """One table per label of the box-level figures (95 % CI over cases)."""
    from rich.table import Table

    from medres.cli.console import console

    for label, by_model in boxes["results"].items():
        table = Table(
            title=f"{label} boxes: IoU >= {boxes['iou_threshold']}, "
            f"FP per case over {boxes['n_cases']} case(s)"
        )
        for column in ("model", "CPM", "sens @ 1 FP", "AP@0.1", "mAP 0.1-0.5", "true", "boxes"):
            table.add_column(column)
        for model, entry in by_model.items():
            table.add_row(
                model,
                _with_ci(entry, "cpm"),
                _with_ci(entry, "sensitivity_at_1fp"),
                _with_ci(entry, "ap_0.1"),
                f"{entry['map_0.1_0.5']:.3f}",
                str(entry["true_lesions"]),
                str(entry["predicted"]),
            )
        console.print(table)
        paired = boxes.get("detector_minus_segmentation", {}).get(label)
        if paired:
            cpm = paired["cpm"]
            console.print(
                f"detector minus segmentation, CPM {cpm['value']:+.3f} "
                f"[{cpm['ci_low']:+.3f}, {cpm['ci_high']:+.3f}] (paired bootstrap over cases)"
            )


def short_model_names(models: list[str]) -> dict[str, str]:
    """Names that tell the models apart in a narrow table: each member's name without
    what all members' names start with (``lgg_flair_2d.fold_0`` -> ``fold_0``), cut at a
    separator; whole names when that would make two alike. The ensemble keeps its name."""
    members = [m for m in models if m != "ensemble"]
    short = {m: m for m in models}
    if len(members) < 2:
        return short
    shared = members[0]
    for name in members[1:]:  # the characters all names start with
        while not name.startswith(shared):
            shared = shared[:-1]
    cut = max(shared.rfind(c) for c in "./") + 1  # pipeline.fold_0 -> fold_0
    if cut == 0:
        cut = max(shared.rfind(c) for c in "_-") + 1
    tails = {m: m[cut:] for m in members}
    distinct = len(set(tails.values())) == len(tails) and not set(tails.values()) & set(models)
    if cut > 0 and all(tails.values()) and distinct:
        short.update(tails)
    return short


def _print_results(result: EvaluationRun) -> None:
    """One table per label (mean [95 % CI] per model), then the problems; exit 1 on any."""
    from rich.table import Table

    from medres.cli.console import EXIT_SOME_FAILED, console, err_console

    unit = result.summary.get("length_unit", "mm")
    for label, by_model in result.summary["results"].items():
        table = Table(title=f"{label}: mean [95 % CI] over {result.summary['n_cases']} case(s)")
        names = short_model_names(list(by_model))
        table.add_column("model", no_wrap=True, min_width=max(len(n) for n in names.values()))
        for column in (
            "Dice",
            f"HD95 {unit}",
            "NSD",
            "lesion F1",
            "sens.",
            "FP/case",
            "CPM",
        ):
            table.add_column(column, overflow="fold")
        for model, entry in by_model.items():
            seg = entry["segmentation"]
            det = entry["detection"]

            def ci(d: dict[str, float], key: str = "mean") -> str:
                return f"{d[key]:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"

            table.add_row(
                names[model],
                ci(seg["dice"]),
                f"{seg['hd95_mm']['mean']:.1f}",
                f"{seg['nsd']['mean']:.3f}",
                ci(det["f1"], "value"),
                f"{det['sensitivity']['value']:.3f}",
                f"{det['fp_per_case']['value']:.2f}",
                f"{det['cpm']['value']:.3f}",
            )
        console.print(table)
        calibrated = {m: e["calibration"] for m, e in by_model.items() if "calibration" in e}
        if calibrated:
            console.print(
                "ECE of the voxel probabilities, all voxels / lesion region: "
                + "; ".join(
                    f"{names[m]} {c['ece']:.4f} / {c.get('ece_lesion_region', float('nan')):.4f}"
                    for m, c in calibrated.items()
                ),
                highlight=False,
            )
    if "boxes" in result.summary:
        _print_boxes(result.summary["boxes"])
    err_console.print(
        f"{result.summary['n_scans']} scan(s) in {result.summary['n_cases']} case(s) scored in "
        f"{result.seconds:.1f} s; see {result.out / 'evaluation.html'}"
    )
    if result.summary["without_truth"]:
        err_console.print(f"{len(result.summary['without_truth'])} scan(s) without truth left out")
    for failure in result.failed[:MAX_PROBLEMS]:
        err_console.print(
            f"[red]not scored[/] {failure['scan_id']}: {failure['error']}", highlight=False
        )
    if len(result.failed) > MAX_PROBLEMS:
        err_console.print(
            f"... {len(result.failed) - MAX_PROBLEMS} more scan(s) not scored: see "
            f"{result.out / 'summary.json'} (failed)"
        )
    if result.failed:
        raise typer.Exit(EXIT_SOME_FAILED)
