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

and for the run ``summary.csv`` (one row per scan, rewritten after every scan) and
``run.json`` (versions, model checksums, options, device, inputs, timings, peak memory).

The after-scan step gets the prediction in memory (:class:`ScanPrediction`: the volume,
the label map, the record), so the report never reads back what was just written.
A scan that fails is recorded with its error and the batch goes on. A requested output
that could not be written (a failed report) fails the scan; its masks are kept.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from medres.errors import MedresError, ModelError
from medres.inference.inputs import ScanInput, assemble_inputs, load_input
from medres.inference.options import PredictOptions
from medres.inference.predictor import Ensemble
from medres.inference.resume import fingerprint, is_complete, output_sizes, source_key
from medres.inference.writer import (
    ensemble_name,
    models_provenance,
    run_record,
    scan_lesions,
    scan_record,
    write_masks,
)
from medres.io.discover import SkippedFile, discover, safe_name
from medres.io.volume import Volume
from medres.models.folder import ModelFolder
from medres.pipeline import PipelineConfig
from medres.predictions.layout import RunFolder, ScanFolder, relative_to_input
from medres.predictions.records import ScanRecord, ScanResult, ScanStatus, write_summary

logger = logging.getLogger(__name__)


class NoModelForScanError(MedresError):
    """No ensemble of the run takes this scan (dimensions or channel count differ)."""


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


@dataclass(frozen=True)
class ScanPrediction:
    """One predicted scan, in memory, as the after-scan step (the report) gets it.

    Attributes:
        folder: The scan's output folder (masks and an incomplete record written).
        volume: The scan as loaded for prediction (its own grid).
        label_map: The ensemble's label map on that grid (what ``seg.nii.gz`` holds).
        record: The scan's record (lesions, grid, source, models).
        cfg: The pipeline of the ensemble that predicted it.
    """

    folder: ScanFolder
    volume: Volume
    label_map: npt.NDArray[np.uint8]
    record: ScanRecord
    cfg: PipelineConfig


@dataclass(frozen=True)
class AfterScanResult:
    """What an after-scan step (the report) wrote for one scan.

    Attributes:
        files: Written files, relative to the scan folder (``overlays/lesion_01.png``).
        notes: Notes for the scan's row (``DICOM SEG/SR skipped: ...``).
    """

    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


#: Progress callback: ``(scans_done, scans_total, scan_id, stage)``.
ProgressCallback = Callable[[int, int, str, str], None]
#: Called after a scan's masks are written, with the prediction in memory; returns what
#: it wrote and notes for the scan's row. What it raises fails the scan, keeping the
#: masks already written (e.g. the report step).
AfterScanCallback = Callable[[ScanPrediction], AfterScanResult]


@dataclass(frozen=True)
class ScanJob:
    """What every scan of a run shares: where the outputs go, what was asked for.

    Attributes:
        run_folder: The prediction folder (``OUT``).
        root: The scans folder (or file) as given; sources are recorded relative to it.
        options: The run options.
    """

    run_folder: RunFolder
    root: Path
    options: PredictOptions


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
        """Where the scans ran, for ``run.json`` (``{}`` for this process)."""
        ...


def predict_scan(
    item: ScanInput,
    ensembles: Sequence[Ensemble],
    job: ScanJob,
    *,
    after_scan: AfterScanCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ScanResult:
    """One scan through resume check, load, routing, prediction, outputs and report.

    Never raises for a bad scan: every failure becomes the row's error.
    """
    step = _ScanStep(item, ensembles, job.run_folder, job.root, job.options, after_scan)
    return step.run(on_stage or (lambda stage: None))


def failed_result(item: ScanInput, root: Path, error: str) -> ScanResult:
    """The row of a scan that could not be predicted at all (e.g. its worker died)."""
    return ScanResult(
        scan_id=item.scan_id,
        status=ScanStatus.FAILED,
        kind=str(item.kind),
        source=relative_to_input(item.name, root),
        error=error,
    )


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
        """Nothing to record: the run's own process did the work."""
        return {}


def open_ensembles(model_dirs: Sequence[str | Path], *, options: PredictOptions) -> list[Ensemble]:
    """Open model folders and join those with the same kind of input into ensembles.

    Folders taking the same input (dimensions and channel count) vote together and must
    share their labels; folders taking other inputs form other ensembles, and each scan
    goes to the one that takes it (a 2D 3-channel MR model and a 3D CT model in one run).

    Raises:
        ModelError: A folder cannot be opened, or folders with the same input disagree
            on labels.
    """
    if not model_dirs:
        raise ModelError("give at least one model folder (--model)")
    groups: dict[tuple[int, int], list[ModelFolder]] = {}
    seen: set[Path] = set()
    for path in model_dirs:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ModelError(f"{path}: the same model folder is given twice")
        seen.add(resolved)
        folder = ModelFolder.open(path)
        key = (folder.pipeline.dims, len(folder.pipeline.channels))
        groups.setdefault(key, []).append(folder)
    return [
        Ensemble(
            folders,
            device=options.device,
            tta=options.tta,
            mode=options.ensemble,
            overlap=options.overlap,
        )
        for folders in groups.values()
    ]


def _describe(volume: Volume) -> tuple[str, str]:
    shape = "x".join(str(s) for s in volume.spatial_shape)
    spacing = "x".join(f"{s:.3g}" for s in volume.spacing_mm)
    return shape, spacing


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
    for bad in found.failed:
        run.results.append(
            ScanResult(
                scan_id=safe_name(Path(bad.path).name),
                status=ScanStatus.FAILED,
                error=f"{bad.path}: {bad.reason}" if bad.path not in bad.reason else bad.reason,
                source=relative_to_input(bad.path, root),
            )
        )
    total = len(inputs)
    finished = False
    models = models_provenance(opened)
    executor = executor or InProcess(opened, after_scan=after_scan, on_progress=on_progress)
    job = ScanJob(run_folder=run_folder, root=root, options=options)
    first_rows = list(run.results)
    rows: list[ScanResult | None] = [None] * total
    try:
        for done, (index, result) in enumerate(executor.results(inputs, job), start=1):
            rows[index] = result
            run.results = first_rows + [r for r in rows if r is not None]
            write_summary(run_folder, run.results)
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


class _ScanStep:
    """One scan through resume check, load, routing, prediction, outputs and report."""

    def __init__(
        self,
        item: ScanInput,
        ensembles: Sequence[Ensemble],
        run_folder: RunFolder,
        root: Path,
        options: PredictOptions,
        after_scan: AfterScanCallback | None,
    ) -> None:
        self.item = item
        self.ensembles = ensembles
        self.folder = run_folder.scan(item.scan_id)
        self.root = root
        self.options = options
        self.after_scan = after_scan
        self.result = failed_result(item, root, "")

    def run(self, on_stage: Callable[[str], None]) -> ScanResult:
        """Do the scan; every failure becomes the row's error, never an exception."""
        start = time.perf_counter()
        result = self.result
        try:
            if not (self.options.resume and self._resumed()):
                self._predict(on_stage, start)
        except NoModelForScanError as exc:
            result.error = str(exc)
            if self.options.skip_unmatched:
                result.status = ScanStatus.SKIPPED
        except MedresError as exc:
            result.error = str(exc)
            logger.info("%s failed: %s", self.item.scan_id, exc)
        except Exception as exc:  # one scan's unexpected failure must not end the batch
            result.error = f"{self.item.name}: {type(exc).__name__}: {exc}"
            logger.debug("%s failed:\n%s", self.item.scan_id, traceback.format_exc())
        if result.status != ScanStatus.RESUMED:
            result.seconds = round(time.perf_counter() - start, 3)
        return result

    def _resumed(self) -> bool:
        """Fill the row from a complete earlier record of the same models and options."""
        key = source_key(self.item, self.root)
        for ensemble in self.ensembles:
            expected = fingerprint(ensemble, self.options, self.item.paths)
            previous = is_complete(self.folder, expected, source=key)
            if previous is None:
                continue
            result = self.result
            result.status = ScanStatus.RESUMED
            result.model = ensemble_name(ensemble)
            result.n_lesions = previous.n_lesions
            result.lesion_volume_ml = previous.total_volume_ml
            result.lesion_area_mm2 = previous.total_area_mm2
            result.notes = "; ".join(previous.notes)
            result.shape = "x".join(str(s) for s in previous.grid.shape)
            result.spacing_mm = "x".join(f"{s:.3g}" for s in previous.grid.spacing_mm)
            result.modality = previous.source.modality
            return True
        return False

    def _choose(self, volume: Volume) -> Ensemble:
        problems = []
        for ensemble in self.ensembles:
            problem = ensemble.input_problem(volume)
            if problem is None:
                return ensemble
            problems.append(problem)
        raise NoModelForScanError(
            f"{self.item.name}: no model takes this scan: {'; '.join(problems)}"
        )

    def _predict(self, on_stage: Callable[[str], None], start: float) -> None:
        item, result, folder = self.item, self.result, self.folder
        folder.clear()
        volume = load_input(item)
        result.modality = volume.modality
        result.shape, result.spacing_mm = _describe(volume)
        chosen = self._choose(volume)
        result.model = ensemble_name(chosen)
        prediction = chosen.predict(
            volume, source=item.name, keep_members=self.options.keep_members, on_stage=on_stage
        )
        on_stage("lesions")
        lesion_start = time.perf_counter()
        lesions = scan_lesions(chosen, prediction)
        seconds = dict(prediction.seconds)
        seconds["lesions"] = time.perf_counter() - lesion_start
        on_stage("write")
        write_start = time.perf_counter()
        written = write_masks(
            folder, prediction, chosen, save_probabilities=self.options.save_probabilities
        )
        seconds["write"] = time.perf_counter() - write_start
        notes = ([item.note] if item.note else []) + list(volume.warnings)
        record = scan_record(
            item,
            volume,
            chosen,
            prediction,
            lesions,
            root=self.root,
            options=self.options,
            seconds=seconds,
            notes=notes,
        )
        result.n_lesions = record.n_lesions
        result.lesion_volume_ml = record.total_volume_ml
        result.lesion_area_mm2 = record.total_area_mm2
        result.notes = "; ".join(notes)
        if self.after_scan is not None:
            record.write(folder)  # masks are kept if the report fails; not complete yet
            on_stage("report")
            report_start = time.perf_counter()
            scan = ScanPrediction(folder, volume, prediction.label_map, record, chosen.cfg)
            try:
                extra = self.after_scan(scan)
            except Exception as exc:  # the masks stay; the scan is not complete
                result.error = f"{item.name}: report not written: {type(exc).__name__}: {exc}"
                result.stage_seconds = {k: round(v, 3) for k, v in seconds.items()}
                logger.debug("%s report failed:\n%s", item.scan_id, traceback.format_exc())
                return
            seconds["report"] = time.perf_counter() - report_start
            written += list(extra.files)
            notes += list(extra.notes)
        seconds["total"] = time.perf_counter() - start
        record.model_copy(
            update={
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "notes": notes,
                "outputs": output_sizes(folder, written),
                "complete": True,
            }
        ).write(folder)
        result.status = ScanStatus.OK
        result.notes = "; ".join(notes)
        result.stage_seconds = {k: round(v, 3) for k, v in seconds.items()}


__all__ = [
    "AfterScanCallback",
    "AfterScanResult",
    "BatchRun",
    "InProcess",
    "NoModelForScanError",
    "PredictOptions",
    "ProgressCallback",
    "ScanExecutor",
    "ScanJob",
    "ScanPrediction",
    "failed_result",
    "open_ensembles",
    "predict_batch",
    "predict_scan",
]
