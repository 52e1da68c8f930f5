"""Per-scan reports (HTML, PDF, overlay PNGs, DICOM SEG/SR) and the batch index page.

:func:`report_scan` turns one predicted scan, in memory (a
:class:`~medres.inference.scan_step.ScanPrediction`: the loaded scan, its label map and its
record), into ``report.html`` (self-contained: images embedded), ``report.pdf`` (the same
facts on A4 pages, :mod:`~medres.report.pdf_report`), ``overlays/*.png`` and, for DICOM
input, ``seg.dcm`` and ``sr.dcm``, in the scan's folder. :func:`write_index` writes
``OUT/index.html`` listing every scan of ``summary.csv``. The key images are
:mod:`~medres.report.key_images`' and the pages :mod:`~medres.report.html`'s.

Privacy: by default no patient name, ID, birth date, sex or study date appears in the
HTML, PDF, PNG, JSON or CSV outputs or in any file name (the scan is named by its scan
id, which carries no patient field); ``show_phi`` adds them to the HTML/PDF only. The
DICOM SEG and SR necessarily carry the source's patient module, as DICOM requires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medres.errors import MedresError
from medres.inference.predictor import Ensemble
from medres.inference.scan_step import AfterScanCallback, AfterScanResult, ScanPrediction
from medres.inference.writer import models_provenance
from medres.io.atomic import write_bytes_atomic, write_text_atomic
from medres.io.grid import (
    is_single_slice,
    squeeze_single_slice_array,
    squeeze_single_slice_volume,
)
from medres.io.volume import ScanKind
from medres.pipeline import PipelineConfig
from medres.predictions.layout import RunFolder, ScanFolder
from medres.predictions.records import ModelProvenance, read_summary
from medres.report.html import NOTICE, index_page, page_facts, scan_page
from medres.report.key_images import key_images
from medres.report.pdf_report import scan_pdf
from medres.report.study import write_study_pages

logger = logging.getLogger(__name__)


@dataclass
class ScanReport:
    """What :func:`report_scan` wrote and why something was skipped."""

    scan_id: str
    files: list[str] = field(default_factory=list)
    dicom_export: str = ""  # "written" or the reason it was skipped
    seconds: float = 0.0
    saliency_seconds: float = 0.0  # of all its lesions' saliency maps (0: none made)
    saliency_lesions: int = 0


def _dicom_objects(scan: ScanPrediction, result: ScanReport) -> str:
    """Write ``seg.dcm`` (when a segmentation model predicted the scan) and ``sr.dcm``
    (its lesions and a detector's reported boxes) for DICOM input; the note for the page.
    """
    volume, cfg, folder = scan.volume, scan.cfg, scan.folder
    if volume.source.kind is not ScanKind.DICOM:
        result.dicom_export = "skipped: the scan is not a DICOM series (NIfTI or 2D image)"
        return f"DICOM SEG/SR {result.dicom_export}."
    from medres.report.dicom_export import export_problem, write_seg, write_sr

    problem = export_problem(volume.source.paths)
    if problem is not None:
        result.dicom_export = f"skipped: {problem}"
        return f"DICOM SEG/SR {result.dicom_export}."
    segmented = scan.record.segmented
    boxes = scan.detections.reported_boxes if scan.detections is not None else []
    try:
        seg = None
        if segmented:
            seg = write_seg(
                folder.seg_dcm,
                scan.label_map,
                source_paths=volume.source.paths,
                label_names=cfg.labels,
                lesion_indices=cfg.lesion_indices,
            )
        write_sr(
            folder.sr_dcm,
            seg,
            scan.record.lesions,
            source_paths=volume.source.paths,
            lesion_indices=cfg.lesion_indices,
            label_names=cfg.labels,
            boxes=boxes,
            grid_affine=scan.record.grid.affine_ras,
        )
    except (MedresError, ValueError, TypeError, AttributeError) as exc:
        result.dicom_export = f"skipped: {exc}"
        return f"DICOM SEG/SR {result.dicom_export}."
    written = [folder.seg_dcm] if segmented else []
    result.files += [folder.relative(p) for p in [*written, folder.sr_dcm]]
    result.dicom_export = "written"
    if not segmented:
        return "DICOM SR (sr.dcm) holds the detector's boxes and references the source series."
    return "DICOM SEG (seg.dcm) and SR (sr.dcm) reference the source series."


def report_scan(
    scan: ScanPrediction,
    *,
    models: Sequence[ModelProvenance] | None = None,
    show_phi: bool = False,
    pdf: bool = True,
    dicom: bool = True,
    explain: Ensemble | None = None,
) -> ScanReport:
    """Write the report files of one predicted scan into its folder.

    Args:
        scan: The prediction in memory: volume (its own grid), label map, record, pipeline.
        models: The run's models (member checksums on the page).
        show_phi: Put patient fields into the HTML/PDF.
        pdf: Also write ``report.pdf``.
        dicom: Write ``seg.dcm`` and ``sr.dcm`` for DICOM input.
        explain: The segmentation ensemble that predicted the scan: each lesion with a key
            image also gets its saliency map (:mod:`medres.inference.saliency`).

    Raises:
        MedresError: An output cannot be written (the caller records it for the scan).
    """
    start = time.perf_counter()
    volume, folder, record = scan.volume, scan.folder, scan.record
    labels = scan.label_map.reshape(volume.spatial_shape)
    image_volume, image_labels = volume, labels
    if is_single_slice(volume.spatial_shape):
        # a single-slice scan (one DICOM image): drawn as a 2D image; its SEG keeps 3D
        image_volume = squeeze_single_slice_volume(volume)
        image_labels = squeeze_single_slice_array(labels)
    result = ScanReport(scan_id=record.scan_id)
    boxes = scan.detections.reported_boxes if scan.detections is not None else []
    heats = _saliency(explain, scan, labels, result) if explain is not None else {}
    images, orientation_note = key_images(
        image_volume, image_labels, record.lesions, scan.cfg, boxes=boxes, heats=heats
    )
    for name, png in images:
        write_bytes_atomic(folder.overlay(name), png)
        result.files.append(folder.relative(folder.overlay(name)))
    if dicom:
        dicom_note = _dicom_objects(replace(scan, label_map=labels), result)
    else:
        result.dicom_export = "skipped: --no-dicom"
        dicom_note = f"DICOM SEG/SR {result.dicom_export}."
    facts = page_facts(
        record,
        volume,
        images,
        orientation_note=orientation_note,
        dicom_note=dicom_note,
        models=models,
        show_phi=show_phi,
        detections=scan.detections,
    )
    write_text_atomic(folder.report_html, scan_page(facts))
    result.files.append(folder.relative(folder.report_html))
    if pdf:
        write_bytes_atomic(folder.report_pdf, scan_pdf(facts))
        result.files.append(folder.relative(folder.report_pdf))
    result.seconds = time.perf_counter() - start
    return result


def _saliency(
    ensemble: Ensemble, scan: ScanPrediction, labels: Any, result: ScanReport
) -> dict[int, Any]:
    """Each key-image lesion's saliency map, on the grid the report draws."""
    from medres.inference.saliency import lesion_saliency
    from medres.report.key_images import MAX_KEY_IMAGES

    heats = {}
    for lesion in scan.record.lesions[:MAX_KEY_IMAGES]:
        found = lesion_saliency(ensemble, scan.volume, labels, lesion)
        heat = found.heat
        if is_single_slice(scan.volume.spatial_shape):
            heat = squeeze_single_slice_array(heat)
        heats[lesion.lesion_id] = heat
        result.saliency_seconds += found.seconds
        result.saliency_lesions += 1
    return heats


def explaining(ensembles: Sequence[Ensemble], cfg: PipelineConfig) -> Ensemble | None:
    """The segmentation ensemble of ``cfg``'s pipeline among ``ensembles`` (None: none)."""
    return next(
        (e for e in ensembles if not e.is_detector and e.cfg.name == cfg.name),
        None,
    )


def report_hook(
    ensembles: Sequence[Ensemble],
    *,
    show_phi: bool = False,
    pdf: bool = True,
    explain: bool = False,
) -> AfterScanCallback:
    """The ``after_scan`` step of :func:`~medres.inference.batch.predict_batch` that writes
    each scan's report from the prediction in memory (with ``explain``, saliency maps)."""
    models = models_provenance(ensembles)

    def after_scan(scan: ScanPrediction) -> AfterScanResult:
        ensemble = explaining(ensembles, scan.cfg) if explain else None
        written = report_scan(scan, models=models, show_phi=show_phi, pdf=pdf, explain=ensemble)
        notes = []
        if scan.volume.source.kind is ScanKind.DICOM and written.dicom_export != "written":
            notes.append(f"DICOM SEG/SR {written.dicom_export}")
        return AfterScanResult(files=tuple(written.files), notes=tuple(notes))

    return after_scan


def write_index(out: str | Path) -> Path:
    """``OUT/index.html``: every scan of ``summary.csv``, sortable, linking to its report,
    and above them the studies of several scans (``OUT/studies/``, :mod:`~medres.report.study`).

    Raises:
        OutputError: ``summary.csv`` is missing or unreadable.
    """
    run = RunFolder(Path(out))
    rows = read_summary(run)
    reports = {}
    for row in rows:
        folder: ScanFolder = run.scan(row["scan_id"])
        if folder.report_html.is_file():
            reports[row["scan_id"]] = folder.report_html.relative_to(run.path).as_posix()
    page = index_page(
        rows,
        reports=reports,
        run_json=run.run_json.name,
        summary_csv=run.summary_csv.name,
        studies=write_study_pages(run),
    )
    return write_text_atomic(run.index_html, page)


__all__ = [
    "NOTICE",
    "ScanReport",
    "report_hook",
    "report_scan",
    "write_index",
]
