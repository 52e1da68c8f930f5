"""``medres demo [--out DIR]``: predict, report and evaluate the bundled sample data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo_out"),
    data: Annotated[
        Path | None, typer.Option("--data", help="Sample data folder (default: sample_data/).")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model folder (default: models/demo_ct_3d/)."),
    ] = None,
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="Also write report.pdf.")] = True,
) -> None:
    """The whole path on sample_data/ with the bundled demo ensemble (about a minute on CPU).

    Finds and loads the sample scans (DICOM and NIfTI), predicts them with the 3 demo
    members, measures lesions, writes a report per scan, and scores the held-out phantom
    against its mask (members and ensemble). Prints where the pages are.
    """
    from medres.cli.console import console, err_console, fail_cleanly, progress_bar
    from medres.demo import run_demo
    from medres.runtime import tune_allocator

    tune_allocator()
    with fail_cleanly(), progress_bar() as progress:
        task = progress.add_task("demo", total=None, item="")

        def on_progress(done: int, total: int, scan_id: str, stage: str) -> None:
            progress.update(task, completed=done, total=total, item=f"{scan_id} {stage}")

        result = run_demo(out, data=data, model=model, pdf=pdf, on_progress=on_progress)
    ok = [r for r in result.batch.results if r.status == "ok"]
    lesions = sum(r.n_lesions or 0 for r in ok)
    console.print(f"predicted {len(ok)} CT scan(s): {lesions} lesion(s) found")
    for label, by_model in result.evaluation.summary["results"].items():
        for name, entry in by_model.items():
            dice = entry["segmentation"]["dice"]["mean"]
            f1 = entry["detection"]["f1"]["value"]
            console.print(
                f"  held-out phantom, {label}, {name}: Dice {dice:.3f}, lesion F1 {f1:.2f}"
            )
    console.print(f"reports:    {result.index}")
    console.print(f"evaluation: {result.evaluation.out / 'evaluation.html'}")
    err_console.print("open the index page in a browser; research use only")
