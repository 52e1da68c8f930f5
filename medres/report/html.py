"""The HTML pages of the reports, from jinja2 templates (autoescaped) in ``templates/``.

:func:`scan_page` renders one scan's report from its record and key images (images
embedded as data URIs, so the file stands alone); :func:`index_page` renders the run's
list of scans. Every value reaches the page through the template, which escapes it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medres._version import __version__
from medres.predictions.detections import DetectionsRecord
from medres.predictions.records import Lesion, ModelProvenance, ScanRecord

if TYPE_CHECKING:
    import jinja2

    from medres.io.volume import Volume

NOTICE = "Research use only. Not for diagnosis or treatment decisions."
_TEMPLATES = Path(__file__).parent / "templates"


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


@cache
def _style() -> str:
    """The stylesheet, marked safe: it is medres's own file, not data to escape."""
    from markupsafe import Markup

    return Markup((_TEMPLATES / "report.css").read_text(encoding="utf-8"))


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _centre(lesion: Lesion) -> str:
    return ", ".join(f"{v:.1f}" for v in lesion.center_ras_mm)


@dataclass(frozen=True)
class _Image:
    name: str
    uri: str
    lesion_id: int = 0


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _identity(record: ScanRecord, volume: Volume, *, show_phi: bool) -> list[tuple[str, str]]:
    grid = record.grid
    identity = [
        ("Scan", record.scan_id),
        ("Kind", record.source.kind),
        ("Modality", volume.modality or record.source.modality or "-"),
        ("Size", " x ".join(str(s) for s in grid.shape)),
        ("Spacing (mm)", " x ".join(f"{s:.3g}" for s in grid.spacing_mm)),
        ("Orientation", grid.orientation),
    ]
    if show_phi:
        patient = volume.patient
        identity += [
            ("Patient name", patient.name or "-"),
            ("Patient ID", patient.patient_id or "-"),
            ("Birth date", patient.birth_date or "-"),
            ("Sex", patient.sex or "-"),
            ("Study date", volume.source.study_date or "-"),
        ]
    else:
        identity.append(("Patient", "not shown (pseudonymised report; --show-phi to include)"))
    return identity


#: Detector boxes listed in a report's table (every box is in detections.json).
MAX_LISTED_BOXES = 50


def scan_page(
    record: ScanRecord,
    volume: Volume,
    images: Sequence[tuple[str, bytes]],
    *,
    orientation_note: str,
    dicom_note: str,
    models: Sequence[ModelProvenance] | None,
    show_phi: bool,
    detections: DetectionsRecord | None = None,
) -> str:
    """One scan's self-contained ``report.html``.

    Args:
        record: The scan's record (lesions, grid, source, models).
        volume: The scan as loaded (modality, patient fields for ``show_phi``).
        images: ``(file name, png)``: ``overview*.png`` and ``lesion_NN.png``.
        orientation_note: How the images are oriented.
        dicom_note: Whether DICOM SEG/SR were written, or why not.
        models: The run's models (member checksums are listed); None: not listed.
        show_phi: Put patient fields on the page.
        detections: A detector ensemble's boxes of the scan (``detections.json``).
    """
    three_d = record.three_d
    checksums = [
        f"{folder.pipeline}/{member.name}: {member.weights_sha256[:16]}..."
        for model in models or ()
        for folder in model.folders
        for member in folder.members
    ]
    total = (
        f"{record.total_volume_ml:.3f} ml"
        if three_d and record.total_volume_ml is not None
        else f"{record.total_area_mm2 or 0.0:.1f} mm²"
    )
    notes = list(dict.fromkeys([*record.notes, *volume.warnings]))
    return (
        _environment()
        .get_template("scan_report.html.j2")
        .render(
            record=record,
            style=_style(),
            notice=NOTICE,
            identity=_identity(record, volume, show_phi=show_phi),
            notes=notes,
            checksums=checksums,
            total=total,
            three_d=three_d,
            size_head="volume (ml)" if three_d else "area (mm²)",
            overview=[_Image(n, _data_uri(p)) for n, p in images if n.startswith("overview")],
            key_images=[
                _Image(n, _data_uri(p), int(n.split("_")[1].split(".")[0]))
                for n, p in images
                if n.startswith("lesion_")
            ],
            box_images=[
                _Image(n, _data_uri(p), int(n.split("_")[1].split(".")[0]))
                for n, p in images
                if n.startswith("box_")
            ],
            detections=detections,
            max_boxes=MAX_LISTED_BOXES,
            segmented=record.segmented,
            orientation_note=orientation_note,
            dicom_note=dicom_note,
            fmt=_fmt,
            centre=_centre,
            version=__version__,
            made=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


def index_page(
    rows: Sequence[dict[str, str]], *, reports: dict[str, str], run_json: str, summary_csv: str
) -> str:
    """The run's ``index.html``: one sortable row per scan of ``summary.csv``.

    Args:
        rows: ``summary.csv`` rows.
        reports: Scan id -> link to its report (scans without a report are not linked).
        run_json: Link to the run record. summary_csv: Link to the table.
    """
    shown = [
        {
            **row,
            "report": reports.get(row["scan_id"], ""),
            "size": row["lesion_volume_ml"] or row["lesion_area_mm2"],
        }
        for row in rows
    ]
    return (
        _environment()
        .get_template("index.html.j2")
        .render(
            rows=shown, style=_style(), notice=NOTICE, run_json=run_json, summary_csv=summary_csv
        )
    )


__all__ = ["NOTICE", "index_page", "scan_page"]
