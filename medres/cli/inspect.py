"""``medres inspect DIR``: list the scans in a folder, their geometry and their problems."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from medres.io.volume import Volume

logger = logging.getLogger(__name__)


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "x".join(str(s) for s in shape) if shape else "?"


def _fmt_spacing(spacing: tuple[float, ...] | None) -> str:
    return "x".join(f"{s:.3g}" for s in spacing) if spacing else "?"


def _fmt_mask(mask: str | None, scan_path: str) -> str:
    """The mask file relative to its scan's folder (``x_mask.png``, ``../masks/x.png``)."""
    return os.path.relpath(mask, Path(scan_path).parent) if mask else "-"


def _mask_taken_as_scan(vol: Volume, path: str, mask_suffix: str) -> list[str]:
    """The warning for a 2D scan whose pixels hold only 0 and one other value, else none."""
    import numpy as np

    from medres.io.images2d import looks_like_mask

    if not looks_like_mask(vol):
        return []
    values = np.unique(vol.array)
    if values.size != 2:
        return []  # all black: nothing says it is a mask
    name = Path(path)
    return [
        f"holds only 0 and {float(values[-1]):g}: this looks like a mask taken as a scan; "
        f"name it {name.stem}{mask_suffix or '_mask'}{name.suffix} beside its image, or put "
        "masks in a masks/ folder beside images/"
    ]


def inspect_command(
    folder: Annotated[Path, typer.Argument(help="Folder (searched recursively) or file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Headers only: skip decoding pixels (geometry checks still run)."
        ),
    ] = False,
    mask_suffix: Annotated[
        str, typer.Option(help="Stem suffix marking a mask: case_mask.png belongs to case.png.")
    ] = "_mask",
    show_skipped: Annotated[
        bool, typer.Option("--show-skipped/--hide-skipped", help="List files that are not scans.")
    ] = True,
) -> None:
    """List studies and series found: modality, shape, spacing, orientation, problems.

    Every scan is loaded (pixels decoded) unless --quick. Exits 1 when any scan or file
    could not be read; the others are still listed.
    \f
    Long: one typer option per flag, then one table row per scan.
    """
    from medres.cli.console import console, fail_cleanly, progress_bar
    from medres.errors import LoadError
    from medres.io.discover import discover
    from medres.io.load import load_scan
    from medres.io.volume import ScanKind

    with fail_cleanly(), progress_bar() as progress:
        task = progress.add_task("discover", total=None, item="")

        def on_files(done: int, total: int, path: str) -> None:
            progress.update(task, completed=done, total=total, item=Path(path).name)

        found = discover(folder, mask_suffix=mask_suffix, on_progress=on_files)
        rows: list[dict[str, Any]] = []
        load_task = progress.add_task("load", total=len(found.scans), item="")
        for ref in found.scans:
            progress.update(load_task, item=ref.scan_id)
            row: dict[str, Any] = {
                "scan_id": ref.scan_id,
                "kind": str(ref.kind),
                "modality": ref.modality,
                "files": len(ref.paths),
                "shape": list(ref.spatial_shape) if ref.spatial_shape else None,
                "spacing_mm": list(ref.spacing_mm) if ref.spacing_mm else None,
                "orientation": ref.orientation,
                "description": ref.description,
                "mask": ref.mask_path,
                "length_unit": "px" if ref.kind is ScanKind.IMAGE2D else "mm",
                "path": ref.paths[0] if len(ref.paths) == 1 else str(Path(ref.paths[0]).parent),
                "status": "ok",
                "problem": "",
                "warnings": list(ref.warnings),
            }
            if ref.problem is not None:
                row.update(
                    status="error", problem=str(ref.problem), error=type(ref.problem).__name__
                )
            elif not quick:
                try:
                    vol = load_scan(ref)
                except LoadError as exc:
                    row.update(status="error", problem=str(exc), error=type(exc).__name__)
                except Exception as exc:  # not medres's own error: still one line, the file named
                    logger.debug("%s: unexpected error while loading", row["path"], exc_info=True)
                    problem = f"{row['path']}: {type(exc).__name__}: {exc}"
                    row.update(status="error", problem=problem, error=type(exc).__name__)
                else:
                    row["warnings"] = list(dict.fromkeys([*row["warnings"], *vol.warnings]))
                    row.update(
                        shape=list(vol.spatial_shape),
                        channels=vol.n_channels,
                        spacing_mm=[round(s, 4) for s in vol.spacing_mm],
                        length_unit=vol.length_unit,
                        orientation=vol.orientation if vol.spatial_ndim == 3 else "",
                        dtype=str(vol.array.dtype),
                        value_range=[float(vol.array.min()), float(vol.array.max())],
                        modality=vol.modality or row["modality"],
                    )
                    if ref.kind is ScanKind.IMAGE2D and ref.mask_path is None:
                        row["warnings"] += _mask_taken_as_scan(vol, ref.paths[0], mask_suffix)
            rows.append(row)
            progress.advance(load_task)

    skipped = [
        {"path": s.path, "reason": s.reason, "status": "error" if s.failed else "skipped"}
        for s in found.skipped
    ]
    n_bad = sum(r["status"] == "error" for r in rows) + len(found.failed)
    if as_json:
        console.print_json(json.dumps({"root": found.root, "scans": rows, "skipped": skipped}))
    else:
        _print_tables(rows, skipped, show_skipped=show_skipped)
        console.print(
            f"{len(rows)} scan(s): {sum(r['status'] == 'ok' for r in rows)} ok, "
            f"{sum(r['status'] == 'error' for r in rows)} with errors; "
            f"{len(skipped)} other file(s), {len(found.failed)} unreadable."
        )
    if n_bad:
        raise typer.Exit(1)


def _print_tables(
    rows: list[dict[str, Any]], skipped: list[dict[str, str]], *, show_skipped: bool
) -> None:
    from rich.table import Table

    from medres.cli.console import console

    table = Table(title="Scans", show_lines=False)
    for col in ("scan id", "kind", "mod", "shape", "spacing (mm)", "orient", "mask", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        shape = _fmt_shape(tuple(r["shape"]) if r["shape"] else None)
        if r.get("channels", 1) and r.get("channels", 1) > 1:
            shape += f" x{r['channels']}ch"
        status = "[green]ok[/]" if r["status"] == "ok" else f"[red]{r['problem']}[/]"
        if r["status"] == "ok" and r.get("warnings"):
            status = "[yellow]ok: " + "; ".join(r["warnings"]) + "[/]"
        table.add_row(
            r["scan_id"],
            r["kind"],
            r["modality"] or "-",
            shape,
            "- (px)"
            if r["length_unit"] == "px"
            else _fmt_spacing(tuple(r["spacing_mm"]) if r["spacing_mm"] else None),
            r["orientation"] or "-",
            _fmt_mask(r["mask"], r["path"]),
            status,
        )
    console.print(table)
    if show_skipped and skipped:
        other = Table(title="Other files")
        other.add_column("file", overflow="fold")
        other.add_column("status")
        other.add_column("reason", overflow="fold")
        for s in skipped:
            style = "red" if s["status"] == "error" else "dim"
            other.add_row(s["path"], f"[{style}]{s['status']}[/]", s["reason"])
        console.print(other)
