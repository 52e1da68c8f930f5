"""``medres demo``: the whole path on ``sample_data/`` with the bundled demo ensemble.

1. **Predict** every CT scan of ``sample_data/`` with ``models/demo_ct_3d`` (3 members,
   mean ensemble): the held-out phantom as NIfTI and as a DICOM series, and the six
   training phantoms. Each scan gets its mask on its own grid, its lesions, its report
   (HTML, PDF, overlays; DICOM SEG and SR for the series). The 2D sample slices are listed
   as skipped (the demo model is a 3D CT model).
2. **Evaluate** the held-out phantom (both copies) against its mask: every member and the
   ensemble, with lesion detection. The training phantoms are not scored, since the
   model has seen them.
3. Print where ``index.html`` and ``evaluation.html`` are.

``sample_data/`` and ``models/demo_ct_3d/`` are taken from the current folder when it
holds them (a clone), else from beside the installed package (an editable install).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medres.errors import ConfigError
from medres.evaluation.run import EvaluateOptions, EvaluationRun, evaluate_predictions
from medres.inference.batch import BatchRun, PredictOptions, open_ensembles, predict_batch
from medres.io import discover
from medres.report.build import report_hook, write_index

#: The phantom the demo model never saw, and its mask.
HELD_OUT_SCAN = "ct_phantom.nii.gz"
HELD_OUT_MASK = "ct_phantom_mask.nii.gz"
HELD_OUT_SERIES = "ct_phantom_dicom"


@dataclass
class DemoRun:
    """What the demo produced."""

    predictions: Path
    evaluation: EvaluationRun
    batch: BatchRun
    index: Path


def find_demo_inputs(data: Path | None = None, model: Path | None = None) -> tuple[Path, Path]:
    """``sample_data/`` and ``models/demo_ct_3d/``: given, in the current folder, or in the
    checkout the package was installed from.

    Raises:
        ConfigError: Neither place has them (a wheel install without the repository).
    """
    candidates = [Path.cwd(), Path(__file__).resolve().parents[1]]
    if data is None:
        data = next((c / "sample_data" for c in candidates if (c / "sample_data").is_dir()), None)
    if model is None:
        model = next(
            (
                c / "models" / "demo_ct_3d"
                for c in candidates
                if (c / "models" / "demo_ct_3d").is_dir()
            ),
            None,
        )
    if data is None or model is None:
        raise ConfigError(
            "the demo needs sample_data/ and models/demo_ct_3d/ from the medres repository; "
            "run it inside a clone, or pass --data and --model"
        )
    return data, model


def _truth_folder(data: Path, out: Path, series_ids: list[str]) -> Path:
    """The held-out mask, named for both copies of the held-out phantom."""
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / HELD_OUT_MASK, truth / HELD_OUT_MASK)
    for scan_id in series_ids:  # the DICOM copy lies on the same grid as the NIfTI
        shutil.copyfile(data / HELD_OUT_MASK, truth / f"{scan_id}.nii.gz")
    return truth


def run_demo(
    out: str | Path,
    *,
    data: Path | None = None,
    model: Path | None = None,
    device: str = "cpu",
    pdf: bool = True,
    on_progress: Callable[[int, int, str, str], None] | None = None,
) -> DemoRun:
    """Predict, report and evaluate the sample data into ``out``.

    Raises:
        ConfigError: The sample data or the demo model cannot be found.
    """
    data, model = find_demo_inputs(data, model)
    out = Path(out)
    predictions = out / "predictions"
    options = PredictOptions(
        device=device,
        keep_members=True,
        save_probabilities=True,
        skip_unmatched=True,
        report=True,
        report_pdf=pdf,
    )
    ensembles = open_ensembles([model], options=options)
    batch = predict_batch(
        data,
        [],
        predictions,
        options=options,
        ensembles=ensembles,
        on_progress=on_progress,
        after_scan=report_hook(ensembles, pdf=pdf),
    )
    index = write_index(predictions)
    series_ids = [s.scan_id for s in discover(data / HELD_OUT_SERIES).scans]
    truth = _truth_folder(data, out, series_ids)
    evaluation = evaluate_predictions(
        predictions,
        truth,
        out / "evaluation",
        options=EvaluateOptions(skip_missing_truth=True),
    )
    return DemoRun(predictions=predictions, evaluation=evaluation, batch=batch, index=index)


__all__ = ["DemoRun", "find_demo_inputs", "run_demo"]
