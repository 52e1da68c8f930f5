"""``medres predict`` as a library call: every scan of a folder through the ensembles.

:func:`predict_batch` discovers the scans, groups channel files, routes each scan to the
ensemble that takes its kind of input (dimensions and channel count), predicts, finds
lesion instances and writes, atomically, per scan ``OUT/<scan_id>/`` (the layout and the
records are :mod:`medres.predictions`'):

* ``seg.nii.gz``: label map on the scan's own grid (same shape, same affine);
* ``probabilities.nii.gz`` (``save_probabilities``): mean probability of each foreground
  label, one byte per voxel (``scl_slope`` 1/255, so readers get 0..1 back);
* ``members/<member>/`` (``keep_members``): each member's own label map and lesions;
* ``lesions.json`` (:class:`~medres.predictions.records.ScanRecord`): lesion instances with
  measurements, score, agreement, uncertainty, plus the scan's grid, source and models.
  Written once the masks are written, with ``complete`` false; rewritten complete, with
  every output and its size, once the after-scan step (the report) has written its files.
  Only that second version marks the scan complete, so a run killed in the report step
  redoes the scan (:mod:`medres.inference.resume`).

and for the run ``summary.csv`` (one row per scan, rewritten as scans finish, at most every
:data:`SUMMARY_INTERVAL_S`, and at the end) and
``run.json`` (versions, model checksums, options, device, inputs, timings, peak memory).

One scan's work is :func:`~medres.inference.scan_step.predict_scan`; an executor decides
where it runs (:class:`InProcess` here, :class:`medres.cluster.ClusterExecutor` on a Dask
cluster). The after-scan step gets the prediction in memory
(:class:`~medres.inference.scan_step.ScanPrediction`: the volume, the label map, the
record), so the report never reads back what was just written. A scan that fails is
recorded with its error and the batch goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from medres.errors import ModelError
from medres.inference.detector import DetectionEnsemble
from medres.inference.inputs import ScanInput, assemble_inputs
from medres.inference.options import PredictOptions
from medres.inference.predictor import Ensemble
from medres.inference.scan_step import AfterScanCallback, ScanJob, predict_scan
from medres.inference.writer import models_provenance, run_record
from medres.io.discover import SkippedFile, discover, safe_name
from medres.models.folder import ModelFolder
from medres.predictions.layout import RunFolder, relative_to_input
from medres.predictions.records import ScanResult, ScanStatus, write_summary

logger = logging.getLogger(__name__)

#: ``summary.csv`` is rewritten at most this often while scans finish (s), and always at
#: the end: rewriting it after each of 10 000 scans would cost the run minutes (a 10 000-row
#: file takes 0.16 s to write). The scan folders, not the summary, decide what --resume
#: redoes, so a run killed in between loses no work.
SUMMARY_INTERVAL_S = 2.0


@dataclass
class BatchRun:
    """What a batch did."""

    out: Path
    results: list[ScanResult]
    skipped: list[SkippedFile]
    ensembles: list[Ensemble]

    @property
    def failed(self) -> list[ScanResult]:
        """Scans (or unreadable files) that produced no output."""
        return [r for r in self.results if r.status == ScanStatus.FAILED]


#: Progress callback: ``(scans_done, scans_total, scan_id, stage)``.
ProgressCallback = Callable[[int, int, str, str], None]


class ScanExecutor(Protocol):
    """Predicts the scans of a run, here or elsewhere, and hands back their rows.

    :class:`InProcess` is the default; :class:`medres.cluster.ClusterExecutor` runs the
    scans as tasks on a Dask cluster. Either way a scan's folder is written by whoever
    predicts it, and the caller alone writes the run's files (summary, run.json).
    """

    def results(
        self, inputs: Sequence[ScanInput], job: ScanJob
    ) -> Iterator[tuple[int, ScanResult]]:
        """Predict every input; yield ``(position in inputs, row)`` as each finishes."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where the scans ran, for ``run.json``."""
        ...


class InProcess:
    """The default executor: the scans one after the other, in this process."""

    def __init__(
        self,
        ensembles: Sequence[Ensemble],
        *,
        after_scan: AfterScanCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.ensembles = ensembles
        self.after_scan = after_scan
        self.on_progress = on_progress

    def results(
        self, inputs: Sequence[ScanInput], job: ScanJob
    ) -> Iterator[tuple[int, ScanResult]]:
        """Predict the inputs in order, reporting each stage to ``on_progress``."""
        total = len(inputs)
        for index, item in enumerate(inputs):

            def on_stage(stage: str, index: int = index, scan_id: str = item.scan_id) -> None:
                if self.on_progress is not None:
                    self.on_progress(index, total, scan_id, stage)

            on_stage("load")
            yield (
                index,
                predict_scan(
                    item, self.ensembles, job, after_scan=self.after_scan, on_stage=on_stage
                ),
            )

    def describe(self) -> dict[str, Any]:
        """This process did the work, with this many torch threads."""
        import torch

        return {"torch_threads": torch.get_num_threads()}


def open_ensembles(model_dirs: Sequence[str | Path], *, options: PredictOptions) -> list[Ensemble]:
    """Open model folders and join those with the same kind of input into ensembles.

    Folders taking the same input (dimensions and channel count) vote together and must
    share their labels; folders taking other inputs form other ensembles, and each scan
    goes to the one that takes it (a 2D 3-channel MR model and a 3D CT model in one run).
    Detection folders form their own ensembles (:class:`DetectionEnsemble`): a scan that
    a segmentation and a detection ensemble both take is predicted by both.

    Raises:
        ModelError: A folder cannot be opened, or folders with the same input disagree
            on labels.
    """
    if not model_dirs:
        raise ModelError("give at least one model folder (--model)")
    groups: dict[tuple[int, int, bool], list[ModelFolder]] = {}
    seen: set[Path] = set()
    for path in model_dirs:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ModelError(f"{path}: the same model folder is given twice")
        seen.add(resolved)
        folder = ModelFolder.open(path)
        pipeline = folder.pipeline
        key = (pipeline.dims, len(pipeline.channels), pipeline.is_detection)
        groups.setdefault(key, []).append(folder)
    ensembles: list[Ensemble] = []
    for (_, _, detector), folders in groups.items():
        kind = DetectionEnsemble if detector else Ensemble
        ensembles.append(
            kind(
                folders,
                device=options.device,
                tta=options.tta,
                mode=options.ensemble,
                overlap=options.overlap,
                runtime=options.runtime,
            )
        )
    return ensembles


def _unreadable_rows(failed: Sequence[SkippedFile], root: Path) -> list[ScanResult]:
    """Failed rows for the files discovery could not read."""
    return [
        ScanResult(
            scan_id=safe_name(Path(bad.path).name),
            status=ScanStatus.FAILED,
            error=f"{bad.path}: {bad.reason}" if bad.path not in bad.reason else bad.reason,
            source=relative_to_input(bad.path, root),
        )
        for bad in failed
    ]


def predict_batch(
    input_dir: str | Path,
    model_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions | None = None,
    ensembles: Sequence[Ensemble] | None = None,
    on_progress: ProgressCallback | None = None,
    after_scan: AfterScanCallback | None = None,
    executor: ScanExecutor | None = None,
) -> BatchRun:
    """Predict every scan under ``input_dir`` and write the outputs under ``out``.

    Args:
        input_dir: Folder of scans (DICOM any nesting, NIfTI, 2D images) or one file.
        model_dirs: Model folders (see :func:`open_ensembles`).
        out: Output folder (created).
        options: Run options.
        ensembles: Already opened ensembles (then ``model_dirs`` is ignored).
        on_progress: ``(done, total, scan_id, stage)`` as work proceeds.
        after_scan: Extra work per finished scan (the CLI writes the reports with it).
        executor: Who predicts the scans (default :class:`InProcess` with ``opened``
            ensembles and ``after_scan``; :class:`medres.cluster.ClusterExecutor` brings
            its own). ``on_progress`` gets ``stage == "done"`` after every finished scan.

    Returns:
        Results per scan. Failed scans are in ``results`` with their errors.

    Raises:
        ModelError: Unusable model folders. LoadError: ``input_dir`` does not exist.
        KeyboardInterrupt: After writing ``summary.csv`` and ``run.json`` for what is done.
    """
    options = options or PredictOptions()
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    root = Path(input_dir)
    run_folder = RunFolder(Path(out))
    opened = (
        list(ensembles) if ensembles is not None else open_ensembles(model_dirs, options=options)
    )
    found = discover(root)
    inputs, unused = assemble_inputs(found, channel_sets=[e.cfg.channels for e in opened])
    skipped = [s for s in found.skipped if not s.failed] + unused
    run_folder.path.mkdir(parents=True, exist_ok=True)
    run = BatchRun(out=run_folder.path, results=[], skipped=skipped, ensembles=opened)
    run.results += _unreadable_rows(found.failed, root)
    total = len(inputs)
    finished = False
    models = models_provenance(opened)
    executor = executor or InProcess(opened, after_scan=after_scan, on_progress=on_progress)
    job = ScanJob(run_folder=run_folder, root=root, options=options)
    first_rows = list(run.results)
    last_summary = -SUMMARY_INTERVAL_S
    rows: list[ScanResult | None] = [None] * total
    try:
        for done, (index, result) in enumerate(executor.results(inputs, job), start=1):
            rows[index] = result
            if time.monotonic() - last_summary >= SUMMARY_INTERVAL_S:
                run.results = first_rows + [r for r in rows if r is not None]
                write_summary(run_folder, run.results)
                last_summary = time.monotonic()
            if on_progress is not None:
                on_progress(done, total, result.scan_id, "done")
        finished = True
    finally:
        run.results = first_rows + [r for r in rows if r is not None]
        write_summary(run_folder, run.results)
        run_record(
            root=root,
            options=options,
            models=models,
            results=run.results,
            skipped=run.skipped,
            started=started,
            seconds=time.perf_counter() - clock,
            finished=finished,
            execution=executor.describe(),
        ).write(run_folder)
    return run


__all__ = [
    "SUMMARY_INTERVAL_S",
    "BatchRun",
    "InProcess",
    "PredictOptions",
    "ProgressCallback",
    "ScanExecutor",
    "open_ensembles",
    "predict_batch",
]
