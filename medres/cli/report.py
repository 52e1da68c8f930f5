"""``medres report OUT``: HTML/PDF reports, overlays and DICOM SEG/SR of a predict folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_command(
    out: Annotated[Path, typer.Argument(help="Output folder of medres predict.")],
    show_phi: Annotated[
        bool,
        typer.Option(
            "--show-phi", help="Put patient name, ID, birth date, sex and study date in reports."
        ),
    ] = False,
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="Also write report.pdf.")] = True,
    dicom: Annotated[
        bool, typer.Option("--dicom/--no-dicom", help="DICOM SEG and SR for DICOM input.")
    ] = True,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Beside each lesion's key image, what the model looked at: occlusion "
            "sensitivity of its lesion score (seconds per lesion; the model folders must "
            "still be where medres predict read them).",
        ),
    ] = False,
) -> None:
    """(Re)build per-scan reports and OUT/index.html from a prediction folder.

    Per scan: report.html (self-contained), report.pdf, overlays/*.png, and for DICOM
    input seg.dcm (DICOM SEG) and sr.dcm (TID 1500 measurement report). Needs the scans
    where medres predict read them.
    """
    from medres.cli.console import EXIT_SOME_FAILED, err_console, fail_cleanly, progress_bar
    from medres.report.run import report_predictions

    with fail_cleanly(), progress_bar() as progress:
        task = progress.add_task("reports", total=None, item="")

        def on_progress(done: int, total: int, scan_id: str) -> None:
            progress.update(task, completed=done, total=total, item=scan_id)

        result = report_predictions(
            out, show_phi=show_phi, pdf=pdf, dicom=dicom, explain=explain, on_progress=on_progress
        )
    seconds = [r.seconds for r in result.reports]
    mean = sum(seconds) / len(seconds) if seconds else 0.0
    err_console.print(
        f"{len(result.reports)} report(s) written ({mean:.1f} s per scan); index: {result.index}"
    )
    explained = sum(r.saliency_lesions for r in result.reports)
    if explained:
        spent = sum(r.saliency_seconds for r in result.reports)
        err_console.print(
            f"saliency maps of {explained} lesion(s): {spent / explained:.1f} s per lesion"
        )
    for failure in result.failed:
        err_console.print(f"[red]no report[/] {failure['error']}", highlight=False)
    if result.failed:
        raise typer.Exit(EXIT_SOME_FAILED)
