"""``medres export MODEL_DIR``: the members exported for ONNX Runtime / OpenVINO (and int8)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from medres.training.export import ExportResult


def export_command(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by medres train.")],
    fmt: Annotated[
        list[str],
        typer.Option(
            "--format",
            help="onnx (ONNX Runtime) and/or openvino (OpenVINO IR; the ONNX file is written "
            "too). Repeat for both.",
        ),
    ] = ["onnx"],  # noqa: B006 - typer needs a list default
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Also write post-training int8 versions (needs --calibration)."
        ),
    ] = False,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="Training data to calibrate int8 on and to check each file against (any "
            "medres train --data layout; the model's held-out groups are left out).",
        ),
    ] = None,
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Root for relative paths of a datalist JSON."),
    ] = None,
) -> None:
    """Export every member of a segmentation model folder for `medres predict --runtime`.

    Writes model.onnx (and model.int8.onnx, model.xml/.bin, model.int8.xml/.bin) beside
    each member's model.pt, runs each on the same input as the PyTorch network, and
    records its checksum, largest logit difference and label agreement in model.json.
    Needs the extras: pip install 'medres[onnx]' (and 'medres[openvino]').
    """
    from medres.cli.console import err_console, fail_cleanly
    from medres.training.export import export_model

    formats = [f for value in fmt for f in value.split(",") if f]
    with fail_cleanly():
        result = export_model(
            model_dir,
            formats=formats,
            int8=int8,
            calibration=calibration,
            base_dir=data_root,
            on_member=lambda name: err_console.print(f"exporting {name}", highlight=False),
        )
    _print_exports(result, model_dir, int8=int8)


def _print_exports(result: ExportResult, model_dir: Path, *, int8: bool) -> None:
    """The table of written files, what ``--runtime auto`` will take, and how to use them."""
    from rich.table import Table

    from medres.cli.console import console, err_console

    table = Table(title=f"{model_dir}: exported networks (checked on {result.check_input})")
    numbers = ("max |logit diff|", "same label", "foreground Dice")
    for column in ("member", "runtime", "precision", "file", *numbers):
        table.add_column(column, justify="right" if column in numbers else "left")
    for entry in result.entries:
        table.add_row(
            entry.member,
            entry.runtime,
            entry.precision,
            entry.file,
            f"{entry.max_abs_logit_difference:.2e}",
            f"{100 * entry.label_agreement:.3f} %",
            f"{entry.foreground_dice:.4f}" if entry.foreground_dice is not None else "-",
        )
    console.print(table)
    if int8:
        from medres.inference.runtimes import INT8_AUTO_MIN_DICE

        int8_files = [
            e for e in result.entries if e.precision == "int8" and e.runtime == "openvino"
        ]
        good = bool(int8_files) and all(
            (e.foreground_dice or 0.0) >= INT8_AUTO_MIN_DICE for e in int8_files
        )
        err_console.print(
            "--runtime auto will use openvino-int8 (every member's foreground Dice >= "
            f"{INT8_AUTO_MIN_DICE})"
            if good
            else f"--runtime auto stays on torch: an int8 member's foreground Dice is below "
            f"{INT8_AUTO_MIN_DICE} (or no OpenVINO int8 file); --runtime openvino-int8 uses it",
            highlight=False,
        )
    written = dict.fromkeys(
        e.runtime + ("-int8" if e.precision == "int8" else "") for e in result.entries
    )
    err_console.print(
        f"recorded in {model_dir / 'model.json'}; use: medres predict ... --model {model_dir} "
        f"--runtime {'|'.join(written)}",
        highlight=False,
    )
