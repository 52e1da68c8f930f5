"""Per-scan reports (HTML, PDF, overlay PNGs, DICOM SEG/SR) and the batch index page.

:func:`report_scan` turns one ``OUT/<scan_id>/`` written by ``medres predict`` plus the
loaded scan into ``report.html`` (self-contained: images embedded), ``report.pdf``
(weasyprint), ``overlays/*.png`` and, for DICOM input, ``seg.dcm`` and ``sr.dcm``.
:func:`write_index` writes ``OUT/index.html`` listing every scan of ``summary.csv``.

Privacy: by default no patient name, ID, birth date, sex or study date appears in the
HTML, PDF, PNG, JSON or CSV outputs or in any file name (the scan is named by its scan
id, which carries no patient field); ``show_phi`` adds them to the HTML/PDF only. The
DICOM SEG and SR necessarily carry the source's patient module, as DICOM requires.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres._version import __version__
from medres.errors import MedresError
from medres.inference.batch import AfterScanCallback, AfterScanResult, models_provenance
from medres.inference.predictor import Ensemble
from medres.io.atomic import write_bytes_atomic, write_text_atomic
from medres.io.nifti import read_nifti
from medres.io.volume import ScanKind, Volume
from medres.pipeline import IntensityKind, PipelineConfig
from medres.report.images import (
    View,
    display_channel,
    image_view,
    lesion_crop,
    orthogonal_views,
    ras_index,
    render,
    to_ras,
    window,
)

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"
OVERLAYS = "overlays"
SEG_DCM = "seg.dcm"
SR_DCM = "sr.dcm"
INDEX_HTML = "index.html"
#: Lesions that get their own key image (all are in the table).
MAX_KEY_IMAGES = 12
NOTICE = "Research use only. Not for diagnosis or treatment decisions."


@dataclass
class ScanReport:
    """What :func:`report_scan` wrote and why something was skipped."""

    scan_id: str
    files: list[str] = field(default_factory=list)
    dicom_export: str = ""  # "written" or the reason it was skipped
    seconds: float = 0.0


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _ct_window(cfg: PipelineConfig | None) -> tuple[float, float] | None:
    if cfg is not None and cfg.preprocessing.intensity.kind == IntensityKind.CT_WINDOW:
        low, high = cfg.preprocessing.intensity.window or (-160.0, 240.0)
        return (float(low), float(high))
    return None


def _key_images(
    volume: Volume,
    labels: npt.NDArray[np.uint8],
    lesions: Sequence[dict[str, Any]],
    cfg: PipelineConfig | None,
) -> tuple[list[tuple[str, bytes]], str]:
    """Overview and per-lesion PNGs: ``[(file name, png)]`` and the orientation note."""
    channel_names = cfg.channels if cfg is not None else volume.channel_names
    shown = display_channel(volume.array, channel_names or ())
    modality = volume.modality or ("CT" if _ct_window(cfg) else "")
    shown = window(shown, modality=modality, ct_window=_ct_window(cfg))
    images: list[tuple[str, bytes]] = []
    labels = labels.reshape(shown.shape)
    if shown.ndim == 2:
        view = image_view(shown, labels, volume.spacing_mm)
        marks = [
            {
                "lesion_id": x["lesion_id"],
                "row": round(x["center_ijk"][1]),
                "column": round(x["center_ijk"][0]),
            }
            for x in lesions
        ]
        images.append(("overview.png", render(view, lesions=marks, size_inches=5.5)))
        for lesion in lesions[:MAX_KEY_IMAGES]:
            row, column = round(lesion["center_ijk"][1]), round(lesion["center_ijk"][0])
            crop = lesion_crop(
                view, row, column, half_mm=max(lesion["longest_axial_diameter_mm"], 15.0)
            )
            mark = [{"lesion_id": lesion["lesion_id"], "row": row, "column": column}]
            images.append(
                (f"lesion_{lesion['lesion_id']:02d}.png", render(view, lesions=mark, crop=crop))
            )
        note = "2D image shown as stored (first row at the top)."
        if volume.source.kind is ScanKind.IMAGE2D:
            note += (
                " Image files carry no pixel spacing: sizes and the scale bar assume 1 mm pixels."
            )
        return images, note
    # turned to RAS once (flips and transposes: views, no copies); every view reads it
    img_ras, ras_affine = to_ras(shown, volume.affine)
    lab_ras, _ = to_ras(labels, volume.affine)
    ras_shape = img_ras.shape
    center = lesions[0]["center_ras_mm"] if lesions else None
    for view in orthogonal_views(img_ras, lab_ras, ras_affine, center):
        placed = [_mark(view, x, ras_affine, ras_shape) for x in lesions]
        name = f"overview_{view.title.split(',')[0]}.png"
        images.append((name, render(view, lesions=[m for m in placed if m], size_inches=3.4)))
    for lesion in lesions[:MAX_KEY_IMAGES]:
        (view,) = orthogonal_views(
            img_ras, lab_ras, ras_affine, lesion["center_ras_mm"], only="axial"
        )
        centre = _mark(view, lesion, ras_affine, ras_shape)
        if centre is None:
            continue
        crop = lesion_crop(
            view,
            centre["row"],
            centre["column"],
            half_mm=max(lesion["longest_axial_diameter_mm"], 20.0),
        )
        images.append(
            (f"lesion_{lesion['lesion_id']:02d}.png", render(view, lesions=[centre], crop=crop))
        )
    note = (
        "Radiological convention: patient right on the image left; axial views anterior "
        "at the top; coronal and sagittal views superior at the top."
    )
    return images, note


def _mark(
    view: View, lesion: dict[str, Any], ras_affine: npt.NDArray[np.float64], shape: Sequence[int]
) -> dict[str, int] | None:
    """Where a lesion's centre falls in a view (None when it is not near that plane)."""
    i, j, k = ras_index(ras_affine, lesion["center_ras_mm"])
    ni, nj, nk = shape
    plane = view.title.split(",")[0]
    if plane == "axial":
        row, column = nj - 1 - j, ni - 1 - i
    elif plane == "coronal":
        row, column = nk - 1 - k, ni - 1 - i
    else:
        row, column = nk - 1 - k, nj - 1 - j
    rows, columns = view.labels.shape
    if not (0 <= row < rows and 0 <= column < columns):
        return None
    near = view.labels[max(row - 3, 0) : row + 4, max(column - 3, 0) : column + 4]
    if not near.any():
        return None
    return {"lesion_id": int(lesion["lesion_id"]), "row": int(row), "column": int(column)}


_STYLE = """
body { font-family: 'DejaVu Sans', system-ui, sans-serif; margin: 1.6em; color: #1d1d1d; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
.notice { background: #fff4d6; border: 1px solid #e0b84c; padding: 0.4em 0.8em; font-weight: bold; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
.images img { max-width: 31%; margin: 0.3em; vertical-align: top; }
.lesion { display: inline-block; width: 31%; margin: 0.3em; vertical-align: top;
          font-size: 0.8em; page-break-inside: avoid; }
.lesion img { width: 100%; }
.muted { color: #666; font-size: 0.85em; }
@page { size: A4; margin: 1.2cm; }
"""


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _report_html(
    report: dict[str, Any],
    volume: Volume,
    images: Sequence[tuple[str, bytes]],
    orientation_note: str,
    dicom_note: str,
    *,
    show_phi: bool,
    run: dict[str, Any] | None,
) -> str:
    scan_id = html.escape(report["scan_id"])
    three_d = report.get("total_volume_ml") is not None
    rows = []
    for x in report["lesions"]:
        size = x["volume_ml"] if three_d else x["area_mm2"]
        centre = ", ".join(f"{v:.1f}" for v in x["center_ras_mm"])
        rows.append(
            f"<tr><td>{x['lesion_id']}</td><td class='l'>{html.escape(x['label'])}</td>"
            f"<td>{_fmt(size, 3 if three_d else 1)}</td><td>{_fmt(x['longest_axial_diameter_mm'], 1)}</td>"
            f"<td class='l'>{centre}</td><td>{_fmt(x.get('axial_slice'))}</td>"
            f"<td>{_fmt(x.get('max_probability'))}</td><td>{_fmt(x.get('mean_probability'))}</td>"
            f"<td>{x.get('members_detecting', '-')}/{x.get('n_members', '-')}</td>"
            f"<td>{_fmt(x.get('uncertainty'), 3)}</td></tr>"
        )
    grid = report["grid"]
    source = report["source"]
    identity = [
        ("Scan", scan_id),
        ("Kind", html.escape(source.get("kind", ""))),
        ("Modality", html.escape(volume.modality or source.get("modality", "") or "-")),
        ("Size", " x ".join(str(s) for s in grid["shape"])),
        ("Spacing (mm)", " x ".join(f"{s:.3g}" for s in grid["spacing_mm"])),
        ("Orientation", html.escape(grid.get("orientation", ""))),
    ]
    if show_phi:
        patient = volume.patient
        identity += [
            ("Patient name", html.escape(patient.name or "-")),
            ("Patient ID", html.escape(patient.patient_id or "-")),
            ("Birth date", html.escape(patient.birth_date or "-")),
            ("Sex", html.escape(patient.sex or "-")),
            ("Study date", html.escape(volume.source.study_date or "-")),
        ]
    else:
        identity.append(("Patient", "not shown (pseudonymised report; --show-phi to include)"))
    identity_rows = "".join(
        f"<tr><th class='l'>{k}</th><td class='l'>{v}</td></tr>" for k, v in identity
    )
    members = report["ensemble"]["members"]
    checksums = ""
    if run is not None:
        sums = [
            f"{html.escape(f['pipeline'])}/{html.escape(m['name'])}: {m['weights_sha256'][:16]}..."
            for model in run.get("models", [])
            for f in model["folders"]
            for m in f["members"]
        ]
        checksums = "<br>".join(sums)
    overview = "".join(
        f"<img src='{_data_uri(png)}' alt='{html.escape(name)}'>"
        for name, png in images
        if name.startswith("overview")
    )
    lesion_images = "".join(
        f"<div class='lesion'><img src='{_data_uri(png)}' alt='{html.escape(name)}'>"
        f"<br>lesion {int(name.split('_')[1].split('.')[0])}</div>"
        for name, png in images
        if name.startswith("lesion_")
    )
    total = (
        f"{report['total_volume_ml']:.3f} ml" if three_d else f"{report['total_area_mm2']:.1f} mm²"
    )
    size_head = "volume (ml)" if three_d else "area (mm²)"
    notes = [str(w) for w in report.get("notes", [])] + list(volume.warnings)
    warnings_html = (
        "<p class='notice'><b>Notes on reading this scan:</b> "
        + "<br>".join(html.escape(w) for w in dict.fromkeys(notes))
        + "</p>"
        if notes
        else ""
    )
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medres report: {scan_id}</title>
<style>{_STYLE}</style></head><body>
<h1>Lesion report: {scan_id}</h1>
<p class="notice">{NOTICE}</p>
<h2>Scan</h2><table>{identity_rows}</table>
{warnings_html}
<h2>Model</h2>
<p>Ensemble of {len(members)} member(s) ({html.escape(", ".join(report["ensemble"]["pipelines"]))}),
combined by {html.escape(str(report["ensemble"]["mode"]))}.</p>
<p class="muted">{checksums}</p>
<h2>Findings: {report["n_lesions"]} lesion(s), total {total}</h2>
<table><tr><th>id</th><th class='l'>label</th><th>{size_head}</th><th>longest axial diameter (mm)</th>
<th class='l'>centre (RAS mm)</th><th>slice</th><th>score (max p)</th><th>mean p</th>
<th>members</th><th>uncertainty</th></tr>{"".join(rows)}</table>
<p class="muted">Score: the highest ensemble probability in the lesion. Members: how many ensemble
members found it. Uncertainty: the members' mean disagreement (standard deviation of their
probabilities) over the lesion. Sizes and diameters are measured on the scan's own grid.</p>
<h2>Overview</h2><div class="images">{overview}</div>
<h2>Key images</h2><div>{lesion_images or "<p>No lesion found.</p>"}</div>
<p class="muted">{html.escape(orientation_note)} Outlines: yellow over black. {html.escape(dicom_note)}</p>
<p class="muted">medres {__version__}, report made {made}.</p>
</body></html>
"""


def report_scan(
    scan_dir: Path,
    volume: Volume,
    *,
    cfg: PipelineConfig | None,
    run: dict[str, Any] | None = None,
    show_phi: bool = False,
    pdf: bool = True,
    dicom: bool = True,
) -> ScanReport:
    """Write the report files of one predicted scan.

    Args:
        scan_dir: ``OUT/<scan_id>/`` with ``lesions.json`` and ``seg.nii.gz``.
        volume: The scan as loaded for prediction (its own grid).
        cfg: The pipeline that predicted it (channels, CT window, labels).
        run: ``OUT/run.json`` content (model checksums for the report).
        show_phi: Put patient fields into the HTML/PDF.
        pdf: Also write ``report.pdf``.
        dicom: Write ``seg.dcm`` and ``sr.dcm`` for DICOM input.

    Raises:
        MedresError: Unreadable predict outputs (the caller records it for the scan).
    """
    start = time.perf_counter()
    report = json.loads((scan_dir / "lesions.json").read_text(encoding="utf-8"))
    labels_volume = read_nifti(scan_dir / "seg.nii.gz")
    labels = labels_volume.array[0].astype(np.uint8).reshape(volume.spatial_shape)
    if volume.spatial_ndim == 3 and volume.spatial_shape[2] == 1:
        # a single-slice scan (one DICOM image): drawn as a 2D image; its SEG keeps 3D
        from dataclasses import replace

        image_volume = replace(volume, array=volume.array[..., 0])
        image_labels = labels[..., 0]
    else:
        image_volume, image_labels = volume, labels
    result = ScanReport(scan_id=report["scan_id"])
    images, orientation_note = _key_images(image_volume, image_labels, report["lesions"], cfg)
    for name, png in images:
        write_bytes_atomic(scan_dir / OVERLAYS / name, png)
        result.files.append(f"{OVERLAYS}/{name}")
    dicom_note = ""
    if volume.source.kind is ScanKind.DICOM and dicom and cfg is not None:
        from medres.report.dicom_export import export_problem, write_seg, write_sr

        problem = export_problem(volume.source.paths)
        if problem is None:
            try:
                seg = write_seg(
                    scan_dir / SEG_DCM,
                    labels,
                    source_paths=volume.source.paths,
                    label_names=cfg.labels,
                    lesion_indices=cfg.lesion_indices,
                )
                write_sr(
                    scan_dir / SR_DCM,
                    seg,
                    report["lesions"],
                    source_paths=volume.source.paths,
                    lesion_indices=cfg.lesion_indices,
                    label_names=cfg.labels,
                )
                result.files += [SEG_DCM, SR_DCM]
                result.dicom_export = "written"
                dicom_note = "DICOM SEG (seg.dcm) and SR (sr.dcm) reference the source series."
            except (MedresError, ValueError, TypeError, AttributeError) as exc:
                result.dicom_export = f"skipped: {exc}"
        else:
            result.dicom_export = f"skipped: {problem}"
    else:
        result.dicom_export = "skipped: the scan is not a DICOM series (NIfTI or 2D image)"
    if not dicom_note:
        dicom_note = f"DICOM SEG/SR {result.dicom_export}."
    page = _report_html(
        report, volume, images, orientation_note, dicom_note, show_phi=show_phi, run=run
    )
    write_text_atomic(scan_dir / REPORT_HTML, page)
    result.files.append(REPORT_HTML)
    if pdf:
        from medres.report.pdf import render_pdf

        document = render_pdf(page, base_url=str(scan_dir))
        write_bytes_atomic(scan_dir / REPORT_PDF, document)
        result.files.append(REPORT_PDF)
    result.seconds = time.perf_counter() - start
    return result


def report_hook(
    ensembles: Sequence[Ensemble], *, show_phi: bool = False, pdf: bool = True
) -> AfterScanCallback:
    """The ``after_scan`` step of :func:`~medres.inference.batch.predict_batch` that writes
    each scan's report while its volume is still in memory."""
    run = {"models": models_provenance(ensembles)}

    def after_scan(scan_dir: Path, volume: Volume, cfg: PipelineConfig) -> AfterScanResult:
        written = report_scan(scan_dir, volume, cfg=cfg, run=run, show_phi=show_phi, pdf=pdf)
        notes = []
        if volume.source.kind is ScanKind.DICOM and written.dicom_export != "written":
            notes.append(f"DICOM SEG/SR {written.dicom_export}")
        return AfterScanResult(files=tuple(written.files), notes=tuple(notes))

    return after_scan


def write_index(out: Path) -> Path:
    """``OUT/index.html``: every scan of ``summary.csv``, sortable, linking to its report."""
    with (out / "summary.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    body = []
    for row in rows:
        scan_id = html.escape(row["scan_id"])
        has_report = (out / row["scan_id"] / REPORT_HTML).is_file()
        link = f"<a href='{scan_id}/{REPORT_HTML}'>{scan_id}</a>" if has_report else scan_id
        size = row["lesion_volume_ml"] or row["lesion_area_mm2"]
        body.append(
            f"<tr class='{html.escape(row['status'])}'><td class='l'>{link}</td>"
            f"<td class='l'>{html.escape(row['status'])}</td><td class='l'>{html.escape(row['model'])}</td>"
            f"<td class='l'>{html.escape(row['kind'])}</td><td>{html.escape(row['n_lesions'])}</td>"
            f"<td>{html.escape(size)}</td><td>{html.escape(row['seconds'])}</td>"
            f"<td class='l'>{html.escape(row['error'])}</td></tr>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medres predictions</title>
<style>{_STYLE}
th {{ cursor: pointer; }} tr.failed td {{ color: #a00; }}</style></head><body>
<h1>Predictions ({len(rows)} scans)</h1>
<p class="notice">{NOTICE}</p>
<p class="muted">Click a column to sort. Lesion volume in ml (3D) or area in mm² (2D).
Provenance: <a href="run.json">run.json</a>; table: <a href="summary.csv">summary.csv</a>.</p>
<table id="scans"><thead><tr><th class='l'>scan</th><th class='l'>status</th><th class='l'>model</th>
<th class='l'>kind</th><th>lesions</th><th>volume / area</th><th>seconds</th><th class='l'>error</th></tr></thead>
<tbody>{"".join(body)}</tbody></table>
<script>
document.querySelectorAll('#scans th').forEach((th, column) => th.addEventListener('click', () => {{
  const body = document.querySelector('#scans tbody');
  const rows = Array.from(body.rows);
  const ascending = th.dataset.order !== 'asc';
  th.dataset.order = ascending ? 'asc' : 'desc';
  const value = r => r.cells[column].innerText;
  rows.sort((a, b) => {{
    const x = parseFloat(value(a)), y = parseFloat(value(b));
    const c = (!isNaN(x) && !isNaN(y)) ? x - y : value(a).localeCompare(value(b));
    return ascending ? c : -c;
  }});
  rows.forEach(r => body.appendChild(r));
}}));
</script>
</body></html>
"""
    return write_text_atomic(out / INDEX_HTML, page)


__all__ = [
    "INDEX_HTML",
    "NOTICE",
    "REPORT_HTML",
    "REPORT_PDF",
    "SEG_DCM",
    "SR_DCM",
    "ScanReport",
    "report_hook",
    "report_scan",
    "write_index",
]
