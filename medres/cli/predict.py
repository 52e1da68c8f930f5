"""``medres predict DIR --model M [--model M2 ...] --out OUT``: batch ensemble inference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medres.cli.cluster import SchedulerOption, TorchThreadsOption, WorkersOption

if TYPE_CHECKING:
    from medres.cluster.client import ClusterSpec
    from medres.inference.batch import BatchRun, PredictOptions, ScanExecutor
    from medres.inference.predictor import Ensemble
    from medres.predictions.layout import RunFolder
    from medres.predictions.records import ScanResult

#: Scans listed on the console (all of them are in summary.csv).
MAX_ROWS = 40


def predict_command(
    scans: Annotated[
        Path, typer.Argument(help="Folder of scans (DICOM any nesting, NIfTI, 2D) or one file.")
    ],
    model: Annotated[
        list[Path],
        typer.Option(
            "--model",
            "-m",
            help="Model folder (from medres train). Repeat to add folders: those taking the "
            "same input form one ensemble; others take the scans that fit them.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta", help="Flip test-time augmentation (default: the pipeline's)."
        ),
    ] = None,
    ensemble: Annotated[
        str | None,
        typer.Option(
            "--ensemble",
            help="How members combine: mean (of probabilities) or vote (majority of their "
            "label maps). Default: the pipeline's (mean).",
        ),
    ] = None,
    overlap: Annotated[
        float | None,
        typer.Option(
            "--overlap",
            min=0.0,
            max=0.9,
            help="Sliding-window overlap, 0 to 0.9 (default: the pipeline's).",
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="What runs the segmentation networks: auto (the fastest the model folders "
            "hold, see medres export), torch, onnx, openvino, onnx-int8 or openvino-int8.",
        ),
    ] = "auto",
    pixel_size_mm: Annotated[
        str | None,
        typer.Option(
            "--pixel-size-mm",
            help="Pixel size of 2D image files (PNG, TIFF, JPEG carry none), e.g. 0.05 or "
            "0.05,0.06 (x,y): lesions in mm instead of pixels. Default: the pipeline's "
            "preprocessing.pixel_size_mm, else sizes in px. DICOM and NIfTI keep their own.",
        ),
    ] = None,
    members: Annotated[
        bool,
        typer.Option("--members", help="Also write each member's mask (for medres evaluate)."),
    ] = False,
    probabilities: Annotated[
        bool,
        typer.Option(
            "--probabilities", help="Also write probabilities.nii.gz (one byte per voxel)."
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip scans whose outputs in --out are complete.")
    ] = False,
    report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="Write report.html/pdf, overlays and DICOM SEG/SR per scan, and index.html.",
        ),
    ] = True,
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="report.pdf with the report.")] = True,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Saliency maps in the reports (occlusion sensitivity per lesion; costs more "
            "than the prediction: seconds per lesion, see docs).",
        ),
    ] = False,
    show_phi: Annotated[
        bool, typer.Option("--show-phi", help="Patient fields in the reports (off by default).")
    ] = False,
    skip_unmatched: Annotated[
        bool,
        typer.Option(
            "--skip-unmatched",
            help="List scans no model takes (other dimensions or channel count) as skipped "
            "instead of failed, e.g. for a mixed PACS export.",
        ),
    ] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    torch_threads: TorchThreadsOption = None,
) -> None:
    """Segment every scan with an ensemble; masks on each scan's own grid, plus lesions.

    Writes OUT/<scan_id>/seg.nii.gz and lesions.json per scan, OUT/summary.csv and
    OUT/run.json. A detection model (task: detection) writes OUT/<scan_id>/detections.json
    (boxes, scores, which members found them); with a segmentation model too, each
    segmented lesion gets the score of the detector's matching box. A scan that cannot be
    read or does not fit the models is reported and the others go on; the exit code is 1
    when any scan failed.
    \f
    Long: one typer option per flag; the work is in _run and _print_run.
    """
    from medres.cli.cluster import cluster_spec
    from medres.cli.console import fail_cleanly
    from medres.inference.batch import PredictOptions
    from medres.runtime import resolve_device, tune_allocator

    tune_allocator()
    with fail_cleanly():
        spec = cluster_spec(workers, scheduler, torch_threads)
        if spec.scheduler:  # the workers resolve the device: they may have GPUs, we none
            scans, out, model = scans.resolve(), out.resolve(), [m.resolve() for m in model]
        options = PredictOptions(
            device=device if spec.scheduler else resolve_device(device),
            tta=tta,
            ensemble=ensemble,
            overlap=overlap,
            keep_members=members,
            save_probabilities=probabilities,
            resume=resume,
            skip_unmatched=skip_unmatched,
            report=report,
            report_pdf=report and pdf,
            report_phi=report and show_phi,
            runtime=runtime,
            pixel_size_mm=parse_pixel_size(pixel_size_mm),
            explain=report and explain,
        )
        run, index = _run(scans, model, out, options, spec)
    _print_run(run, scans=scans, out=out, device=options.device, index=index)


def _run(
    scans: Path, model: list[Path], out: Path, options: PredictOptions, spec: ClusterSpec
) -> tuple[BatchRun, Path | None]:
    """Open the models, predict with a progress bar, write the index; Ctrl-C exits 130."""
    from dataclasses import replace

    from medres.cli.cluster import describe_spec
    from medres.cli.console import err_console
    from medres.inference.batch import open_ensembles

    # on a cluster the workers hold the models; the driver's copy only names them
    opened = open_ensembles(
        model, options=replace(options, device="cpu") if spec.wanted else options
    )
    for item in opened:
        names = ", ".join(f.pipeline.name for f in item.folders)
        combine = "box fusion" if item.is_detector else f"ensemble {item.mode}"
        combine += f", runtime {item.runtime}"
        kind = "detector" if item.is_detector else "segmentation"
        err_console.print(
            f"model {names} ({kind}): {item.n_members} member(s), {item.cfg.dims}D, "
            f"channels {', '.join(item.cfg.channels)}, {combine}"
        )
        for folder in item.folders:
            for note in folder.unverified:
                err_console.print(f"[yellow]warning:[/] {note}", highlight=False)
    try:
        if spec.wanted:
            from medres.cluster import ClusterExecutor, open_client

            err_console.print(describe_spec(spec), highlight=False)
            with open_client(spec) as client:
                executor = ClusterExecutor(client, spec, model, options)
                run = _predict_with_progress(scans, out, options, opened, executor=executor)
        else:
            run = _predict_with_progress(scans, out, options, opened, executor=None)
    except KeyboardInterrupt:
        err_console.print(
            "interrupted: finished scans are saved; run the same command with --resume to continue"
        )
        raise typer.Exit(130) from None
    index = None
    if options.report:
        from medres.report.build import write_index

        index = write_index(out)
    return run, index


def _predict_with_progress(
    scans: Path,
    out: Path,
    options: PredictOptions,
    opened: list[Ensemble],
    *,
    executor: ScanExecutor | None,
) -> BatchRun:
    """predict_batch under a progress bar (reports in this process unless an executor)."""
    from medres.cli.console import progress_bar
    from medres.inference.batch import predict_batch

    after_scan = None
    if options.report and executor is None:
        from medres.report.build import report_hook

        after_scan = report_hook(
            opened, show_phi=options.report_phi, pdf=options.report_pdf, explain=options.explain
        )
    with progress_bar(transient=False) as progress:
        task = progress.add_task("scans", total=None, item="")

        def on_progress(done: int, total: int, scan_id: str, stage: str) -> None:
            progress.update(task, completed=done, total=total, item=f"{scan_id} {stage}")

        return predict_batch(
            scans,
            [],
            out,
            options=options,
            ensembles=opened,
            on_progress=on_progress,
            after_scan=after_scan,
            executor=executor,
        )


def parse_pixel_size(text: str | None) -> tuple[float, float] | None:
    """``--pixel-size-mm`` as ``(x, y)`` mm: ``0.05`` (square) or ``0.05,0.06``.

    Raises:
        ConfigError: Not one or two numbers above 0 and at most 100.
    """
    from medres.errors import ConfigError
    from medres.io.images2d import check_pixel_size

    if text is None:
        return None
    try:
        return check_pixel_size(tuple(float(part) for part in text.split(",")))
    except ValueError as exc:
        raise ConfigError(f"--pixel-size-mm {text}: {exc}") from None


def _size_header(run: BatchRun) -> str:
    """The lesion-size column's header, with the units of the scans in the table."""
    units = []
    if any(r.lesion_volume_ml is not None for r in run.results):
        units.append("volume ml")
    if any(r.lesion_area_mm2 is not None for r in run.results):
        units.append("area mm²")
    if any(r.lesion_area_px2 is not None for r in run.results):
        units.append("area px²")
    return " / ".join(units) or "volume ml / area mm²"


def _print_table(run: BatchRun, *, out: Path, device: str, with_report: bool) -> None:
    from rich.table import Table

    from medres.cli.console import console

    table = Table(title=f"medres predict: {out} ({device})")
    boxes = any(r.n_detections is not None for r in run.results)
    columns = ["scan", "status", "model", "shape", "lesions", _size_header(run)]
    # wall-clock seconds of each scan, its report included when reports are written
    seconds = "s (with report)" if with_report else "s"
    for column in [*columns, *(["boxes"] if boxes else []), seconds]:
        table.add_column(column)
    for result in run.results[:MAX_ROWS]:
        size = result.lesion_volume_ml
        if size is None:
            size = (
                result.lesion_area_mm2 if result.lesion_area_px2 is None else result.lesion_area_px2
            )
        cells = [
            result.scan_id,
            str(result.status),
            result.model,
            result.shape,
            "" if result.n_lesions is None else str(result.n_lesions),
            "" if size is None or result.n_lesions is None else f"{size:.2f}",
        ]
        if boxes:  # a detector's boxes at or above its report score
            cells.append("" if result.n_detections is None else str(result.n_detections))
        table.add_row(*cells, f"{result.scan_seconds:.1f}")
    console.print(table)


def _print_notes(noted: list[ScanResult], folder: RunFolder) -> None:
    """Each scan's notes; a note most scans share once, with their number."""
    from collections import Counter

    from medres.cli.console import err_console

    counts = Counter(note for r in noted for note in r.notes.split("; "))
    shared = {note for note, n in counts.items() if n > 2}
    for note in sorted(shared, key=lambda n: -counts[n]):
        err_console.print(f"[yellow]note[/] {counts[note]} scans: {note}", highlight=False)
    own = [(r.scan_id, [n for n in r.notes.split("; ") if n not in shared]) for r in noted]
    own = [(scan_id, notes) for scan_id, notes in own if notes]
    for scan_id, notes in own[:MAX_ROWS]:
        err_console.print(f"[yellow]note[/] {scan_id}: {'; '.join(notes)}", highlight=False)
    if len(own) > MAX_ROWS:
        err_console.print(
            f"... notes on {len(own) - MAX_ROWS} more scans in {folder.summary_csv.name}"
        )


def _print_run(run: BatchRun, *, scans: Path, out: Path, device: str, index: Path | None) -> None:
    """The results table, counts, notes and failures; exit 1 when a scan failed."""
    from medres.cli.console import EXIT_SOME_FAILED, console, err_console
    from medres.predictions.layout import RunFolder
    from medres.predictions.records import ScanStatus

    folder = RunFolder(out)
    _print_table(run, out=out, device=device, with_report=index is not None)
    if index is not None:
        err_console.print(f"reports: {index}")
    if len(run.results) > MAX_ROWS:
        console.print(f"... {len(run.results) - MAX_ROWS} more rows in {folder.summary_csv}")
    statuses = Counter(str(r.status) for r in run.results)
    err_console.print(
        ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "no scans found"
    )
    if run.skipped:
        reasons = Counter(s.reason for s in run.skipped)
        err_console.print(
            f"{len(run.skipped)} file(s) not used (listed in {folder.run_json.name}):"
        )
        for reason, n in reasons.most_common(5):
            err_console.print(f"  {n} x {reason}", highlight=False)
    done = (ScanStatus.OK, ScanStatus.RESUMED)
    _print_notes([r for r in run.results if r.notes and r.status in done], folder)
    for failure in run.failed:
        err_console.print(f"[red]failed[/] {failure.scan_id}: {failure.error}", highlight=False)
    unmatched = [r for r in run.results if r.status == ScanStatus.SKIPPED]
    if unmatched:
        err_console.print(
            f"{len(unmatched)} scan(s) skipped: no model takes them (see {folder.summary_csv.name})"
        )
    if run.failed:
        raise typer.Exit(EXIT_SOME_FAILED)
    if not run.results:
        err_console.print(
            f"[red]no scans found in {scans}[/]: nothing was predicted"
            + (" (every file was left out, see the reasons above)" if run.skipped else ""),
            highlight=False,
        )
        raise typer.Exit(EXIT_SOME_FAILED)
