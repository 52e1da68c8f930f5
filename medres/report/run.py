"""``medres report OUT``: (re)build the reports of a prediction folder.

Each scan folder is paired with its source by what its record stored, never by scan id
or discovery order: the scans are discovered again where ``run.json`` says they came from,
and the folder takes the scan whose source key (its files' relative paths and DICOM
series) equals the recorded one. A source that is gone, or whose files changed since
predict read them (size or modification time), is reported for that scan and nothing is
drawn from it; the other scans go on. Then ``index.html`` is written.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medres.errors import MedresError, OutputError
from medres.inference.inputs import ScanInput, assemble_inputs, load_input
from medres.inference.resume import refresh_outputs, source_key, source_state
from medres.inference.scan_step import ScanPrediction
from medres.io import discover
from medres.io.images2d import with_pixel_size
from medres.io.nifti import read_nifti
from medres.io.units import MM
from medres.pipeline import PipelineConfig
from medres.predictions.detections import DetectionsRecord
from medres.predictions.layout import RunFolder, ScanFolder
from medres.predictions.records import RunRecord, ScanRecord
from medres.report.build import ScanReport, explaining, report_scan, write_index

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)


@dataclass
class ReportRun:
    """What ``medres report`` did."""

    reports: list[ScanReport] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    index: Path | None = None


def _source_of(
    folder: ScanFolder, record: ScanRecord, by_key: dict[str, ScanInput], root: Path
) -> ScanInput:
    """The scan a folder was predicted from.

    Raises:
        OutputError: The record names no source key, the source is gone, or it changed.
    """
    source = record.source
    where = source.name or (source.files[0] if source.files else record.scan_id)
    if not source.key:
        raise OutputError(
            f"{folder.scan_id}: its record does not say which source it came from (written "
            "by an earlier medres); run medres predict again, without --resume, to report it"
        )
    item = by_key.get(source.key)
    if item is None:
        raise OutputError(
            f"{folder.scan_id}: its source {where} is no longer in {root} (moved, renamed "
            "or removed); the report needs the images it was predicted from"
        )
    if source.state and source_state(item, root) != source.state:
        raise OutputError(
            f"{folder.scan_id}: its source {where} changed since medres predict read it "
            "(file size or modification time differ); run medres predict again"
        )
    return item


def _scan_prediction(
    folder: ScanFolder, record: ScanRecord, item: ScanInput, cfg: PipelineConfig
) -> ScanPrediction:
    volume = load_input(item)
    if record.grid.length_unit == MM:  # a 2D image file measured with a given pixel size
        volume = with_pixel_size(volume, tuple(record.grid.spacing_mm[:2]))
    detections = None
    if folder.detections_json.is_file():
        detections = DetectionsRecord.read(folder)
    if not record.segmented:  # only a detector predicted it: no mask
        empty = np.zeros(volume.spatial_shape, np.uint8)
        return ScanPrediction(folder, volume, empty, record, cfg, detections)
    labels = read_nifti(folder.seg).array[0]
    if labels.size != int(np.prod(volume.spatial_shape)):
        raise OutputError(
            f"{folder.seg}: holds {labels.size} voxels but the scan has "
            f"{int(np.prod(volume.spatial_shape))}: not the mask of this scan"
        )
    labels = labels.astype(np.uint8).reshape(volume.spatial_shape)
    return ScanPrediction(folder, volume, labels, record, cfg, detections)


def _open_models(run: RunRecord) -> list[Any]:
    """The run's segmentation ensembles, opened again from their model folders (torch).

    Raises:
        MedresError: A model folder is gone or no longer what the run used.
    """
    from medres.inference.batch import PredictOptions, open_ensembles

    paths = [f.path for model in run.models for f in model.folders]
    return list(open_ensembles(paths, options=PredictOptions(runtime="torch")))


def report_predictions(
    out: str | Path,
    *,
    show_phi: bool = False,
    pdf: bool = True,
    dicom: bool = True,
    explain: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> ReportRun:
    """Write every scan's report and the index of a ``medres predict`` folder; with
    ``explain``, each lesion's saliency map too (the run's model folders are opened again).

    Raises:
        OutputError: ``out`` is not a predict folder, or its input folder is gone.
    """
    run_folder = RunFolder(Path(out))
    try:
        run = RunRecord.read(run_folder)
    except OutputError as exc:
        raise OutputError(f"{run_folder.path}: not a medres predict folder ({exc})") from None
    configs = run.pipelines()
    root = Path(run.input)
    if not root.exists():
        raise OutputError(
            f"{run_folder.path}: the scans were read from {root}, which no longer exists; "
            "the report needs the source images"
        )
    inputs, _ = assemble_inputs(discover(root), channel_sets=[c.channels for c in configs.values()])
    by_key = {source_key(item, root): item for item in inputs}
    scans = run_folder.scans()
    result = ReportRun()
    ensembles = _open_models(run) if explain else []
    for done, folder in enumerate(scans):
        if on_progress is not None:
            on_progress(done, len(scans), folder.scan_id)
        try:
            record = ScanRecord.read(folder)
            cfg = configs.get(record.ensemble.pipelines[0]) if record.ensemble.pipelines else None
            if cfg is None:
                raise OutputError(f"{folder.scan_id}: its pipeline is not among the run's models")
            item = _source_of(folder, record, by_key, root)
            scan = _scan_prediction(folder, record, item, cfg)
            written = report_scan(
                scan,
                models=run.models,
                show_phi=show_phi,
                pdf=pdf,
                dicom=dicom,
                explain=explaining(ensembles, cfg) if explain else None,
            )
            if not show_phi:  # a report with patient fields is never "complete" for resume
                refresh_outputs(folder, written.files)
            result.reports.append(written)
        except MedresError as exc:
            message = str(exc)
            if not message.startswith(folder.scan_id):
                message = f"{folder.scan_id}: {message}"
            result.failed.append({"scan_id": folder.scan_id, "error": message})
        except Exception as exc:  # one scan's unexpected failure must not end the run
            message = f"{folder.scan_id}: {type(exc).__name__}: {exc}"
            result.failed.append({"scan_id": folder.scan_id, "error": message})
            logger.debug("%s report failed:\n%s", folder.scan_id, traceback.format_exc())
    if run_folder.summary_csv.is_file():
        result.index = write_index(run_folder.path)
    return result


__all__ = ["ReportRun", "report_predictions"]
