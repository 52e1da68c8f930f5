"""``medres convert DIR OUT``: DICOM series -> NIfTI + JSON sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def convert_command(
    folder: Annotated[Path, typer.Argument(help="Folder with DICOM series (any nesting).")],
    out: Annotated[Path, typer.Argument(help="Output folder for .nii.gz + .json files.")],
    show_phi: Annotated[
        bool, typer.Option("--show-phi", help="Copy patient name/ID/birth date into sidecars.")
    ] = False,
    compress: Annotated[bool, typer.Option("--gzip/--no-gzip", help="Write .nii.gz.")] = True,
) -> None:
    """Convert every DICOM series under FOLDER to NIfTI with a JSON sidecar.

    Output files are named by scan id (series number, description, short UID hash), never
    by patient fields. A series that fails is reported and the others are converted;
    the exit code is 1 when any failed.
    """
    from rich.table import Table

    from medres.cli.console import console, fail_cleanly, progress_bar
    from medres.errors import MedresError
    from medres.io.convert import convert_scan
    from medres.io.discover import discover
    from medres.io.volume import ScanKind

    failures: list[tuple[str, str]] = []
    written: list[tuple[str, str]] = []
    with fail_cleanly(), progress_bar() as progress:
        found = discover(folder)
        series = [ref for ref in found.scans if ref.kind is ScanKind.DICOM]
        task = progress.add_task("convert", total=len(series), item="")
        for ref in series:
            progress.update(task, item=ref.scan_id)
            try:
                result = convert_scan(ref, out, include_patient=show_phi, compress=compress)
            except MedresError as exc:
                failures.append((ref.scan_id, str(exc)))
            else:
                written.append((ref.scan_id, str(result.nifti_path)))
            progress.advance(task)

    table = Table(title=f"Converted to {out}")
    table.add_column("scan id", overflow="fold")
    table.add_column("result", overflow="fold")
    for scan_id, path in written:
        table.add_row(scan_id, f"[green]{path}[/]")
    for scan_id, message in failures:
        table.add_row(scan_id, f"[red]{message}[/]")
    console.print(table)
    others = len(found.scans) - len(written) - len(failures)
    console.print(
        f"{len(written)} series converted, {len(failures)} failed"
        + (f"; {others} non-DICOM scan(s) left as they are" if others else "")
    )
    if failures or found.failed:
        raise typer.Exit(1)
