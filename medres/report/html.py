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
from medres.io.order import natural_key
from medres.io.units import PX, area_unit, volume_unit
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


def _centre(lesion: Lesion, unit: str) -> str:
    """RAS mm of a scan in a patient; the pixel ``(x, y)`` of an image in pixels."""
    if unit == PX:
        return ", ".join(f"{v:.1f}" for v in lesion.center_ras_mm[:2])
    return ", ".join(f"{v:.1f}" for v in lesion.center_ras_mm)


@dataclass(frozen=True)
class _Image:
    name: str
    uri: str


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _spacing(record: ScanRecord) -> tuple[str, str]:
    grid = record.grid
    if grid.length_unit == PX:
        return ("Pixel size", "not given: sizes in pixels (px)")
    return ("Spacing (mm)", " x ".join(f"{s:.3g}" for s in grid.spacing_mm))


def _identity(record: ScanRecord, volume: Volume, *, show_phi: bool) -> list[tuple[str, str]]:
    grid = record.grid
    identity = [
        ("Scan", record.scan_id),
        ("Kind", record.source.kind),
        ("Modality", volume.modality or record.source.modality or "-"),
        ("Size", " x ".join(str(s) for s in grid.shape)),
        _spacing(record),
        ("Orientation", grid.orientation or "- (an image file: no patient orientation)"),
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


@dataclass(frozen=True)
class Table:
    """A table of a report page: header cells, rows of text, and which columns are text
    (left-aligned; the others are numbers, right-aligned)."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    text_columns: frozenset[int] = frozenset()


@dataclass(frozen=True)
class PageFacts:
    """Everything one scan's report shows, for its HTML page and its PDF alike."""

    scan_id: str
    identity: list[tuple[str, str]]
    notes: list[str]
    model_lines: list[str]
    checksums: list[str]
    findings_title: str | None
    lesions: Table | None
    lesions_note: str
    boxes_title: str | None
    boxes: Table | None
    boxes_note: str
    overview: list[tuple[str, bytes]]
    key_images: list[tuple[str, bytes, str]]
    no_key_images: str
    footnote: str
    made: str


def lesion_table(record: ScanRecord, detections: DetectionsRecord | None) -> Table:
    three_d, unit = record.three_d, record.length_unit
    image_file = record.grid.orientation == ""
    headers = [
        "id",
        "label",
        f"volume ({volume_unit(unit)})" if three_d else f"area ({area_unit(unit)})",
        f"longest {'' if image_file else 'axial '}diameter ({unit})",
        "centre (x, y px)" if unit == PX else "centre (RAS mm)",
        "slice",
        "score (max p)",
        "mean p",
        "members",
        "uncertainty",
    ]
    rows = []
    for x in record.lesions:
        row = [
            str(x.lesion_id),
            x.label,
            _fmt(x.volume_ml if three_d else x.area_mm2, 3 if three_d else 1),
            _fmt(x.longest_axial_diameter_mm, 1),
            _centre(x, unit),
            _fmt(x.axial_slice),
            _fmt(x.max_probability),
            _fmt(x.mean_probability),
            f"{_fmt(x.members_detecting)}/{_fmt(x.n_members)}",
            _fmt(x.uncertainty, 3),
        ]
        if detections is not None:
            row.append(
                f"B{x.detection_box_id} {_fmt(x.detection_score)}"
                if x.detection_score is not None
                else "-"
            )
        rows.append(tuple(row))
    if detections is not None:
        headers.append("box")
    return Table(tuple(headers), tuple(rows), frozenset({1, 4}))


def _box_table(detections: DetectionsRecord, unit: str) -> Table:
    n_members = len(detections.members)
    rows = tuple(
        (
            f"B{b.box_id}",
            b.label,
            _fmt(b.score),
            ", ".join(f"{v:.1f}" for v in b.center_ras_mm),
            " x ".join(f"{v:.1f}" for v in b.size_mm),
            f"{len(b.members)}/{n_members}",
            str(b.lesion_id) if b.lesion_id is not None else "-",
        )
        for b in detections.reported_boxes[:MAX_LISTED_BOXES]
    )
    centre = "centre (x, y px)" if unit == PX else "centre (RAS mm)"
    headers = ("box", "label", "score", centre, f"size ({unit})", "members", "lesion")
    return Table(headers, rows, frozenset({1, 3, 4}))


def page_facts(
    record: ScanRecord,
    volume: Volume,
    images: Sequence[tuple[str, bytes]],
    *,
    orientation_note: str,
    dicom_note: str,
    models: Sequence[ModelProvenance] | None,
    show_phi: bool,
    detections: DetectionsRecord | None = None,
) -> PageFacts:
    """What one scan's report says and shows (:func:`scan_page` and the PDF lay it out).

    Args:
        record: The scan's record (lesions, grid, source, models).
        volume: The scan as loaded (modality, patient fields for ``show_phi``).
        images: ``(file name, png)``: ``overview*.png``, ``lesion_NN.png``, ``box_NN.png``.
        orientation_note: How the images are oriented.
        dicom_note: Whether DICOM SEG/SR were written, or why not.
        models: The run's models (member checksums are listed); None: not listed.
        show_phi: Put patient fields on the page.
        detections: A detector ensemble's boxes of the scan (``detections.json``).

    Long: one sentence per part of the page.
    """
    three_d, segmented = record.three_d, record.segmented
    model_lines = []
    if segmented:
        ensemble = record.ensemble
        model_lines.append(
            f"Segmentation: ensemble of {len(ensemble.members)} member(s) "
            f"({', '.join(ensemble.pipelines)}), combined by {ensemble.mode}."
        )
    if detections is not None:
        model_lines.append(
            f"Detection: ensemble of {len(detections.members)} member(s) "
            f"({', '.join(detections.pipelines)}), {detections.tta_views} flip view(s) each, "
            f"boxes fused by weighted box fusion (IoU {detections.fusion_iou})."
        )
    total = (
        f"{record.total_volume_ml:.3f} ml"
        if three_d and record.total_volume_ml is not None
        else f"{record.total_area_mm2 or 0.0:.1f} {area_unit(record.length_unit)}"
    )
    lesions_note = (
        "Score: the highest ensemble probability in the lesion. Members: how many ensemble "
        "members found it. Uncertainty: the members' mean disagreement (standard deviation "
        "of their probabilities) over the lesion. Sizes and diameters are measured on the "
        "scan's own grid"
        + (", in pixels: the image file gives no pixel size." if record.length_unit == PX else ".")
    )
    if any(n.startswith("saliency_") for n, _ in images):
        lesions_note += (
            " What the model looked at: occlusion sensitivity of the ensemble's lesion score "
            "(its mean logit over the lesion): brighter where blurring the image away lowers "
            "the score most (MONAI OcclusionSensitivity; the region around the lesion only)."
        )
    if detections is not None:
        lesions_note += (
            " Box: the detector's box that overlaps the lesion most (box IoU at least its "
            "match IoU) and its score; the two models are independent."
        )
    boxes_note = ""
    if detections is not None:
        boxes_note = (
            "Score: the fused score of the members' boxes (each member's and flip view's score "
            "summed over their number, so agreement raises it). Members: how many members put "
            'a box there. Boxes (dashed cyan, "B<id> <score>") are drawn on every image they '
            "cross; detections.json lists every box down to score "
            f"{detections.score_threshold} with voxel and RAS corners."
        )
        if detections.n_reported > MAX_LISTED_BOXES:
            boxes_note = (
                f"The {MAX_LISTED_BOXES} best of {detections.n_reported} boxes are listed; "
                f"detections.json has all. {boxes_note}"
            )
    key = [
        (
            n,
            png,
            f"lesion {n.split('_')[1].split('.')[0].lstrip('0')}"
            + (": what the model looked at" if n.startswith("saliency_") else ""),
        )
        for n, png in images
        if n.startswith(("lesion_", "saliency_"))
    ]
    key += [
        (n, png, f"box B{n.split('_')[1].split('.')[0].lstrip('0')}")
        for n, png in images
        if n.startswith("box_")
    ]
    return PageFacts(
        scan_id=record.scan_id,
        identity=_identity(record, volume, show_phi=show_phi),
        notes=list(dict.fromkeys([*record.notes, *volume.warnings])),
        model_lines=model_lines
        + [
            f"{folder.pipeline}: {folder.cross_validation}"
            for model in models or ()
            for folder in model.folders
            if folder.cross_validation
        ],
        checksums=[
            f"{folder.pipeline}/{member.name}: {member.weights_sha256[:16]}..."
            for model in models or ()
            for folder in model.folders
            for member in folder.members
        ],
        findings_title=f"Findings: {record.n_lesions} lesion(s), total {total}"
        if segmented
        else None,
        lesions=lesion_table(record, detections) if segmented else None,
        lesions_note=lesions_note if segmented else "",
        boxes_title=f"Detector boxes: {detections.n_reported} with score ≥ "
        f"{detections.report_score}"
        if detections is not None
        else None,
        boxes=_box_table(detections, record.length_unit) if detections is not None else None,
        boxes_note=boxes_note,
        overview=[(n, p) for n, p in images if n.startswith("overview")],
        key_images=key,
        no_key_images="No lesion found." if segmented else "No box reached the report score.",
        footnote=f"{orientation_note} Outlines: yellow over black. {dicom_note}",
        made=f"medres {__version__}, report made "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
    )


def render_template(name: str, **values: Any) -> str:
    """Render one of the report templates (``templates/NAME``) with the report style."""
    return _environment().get_template(name).render(style=_style(), notice=NOTICE, **values)


def scan_page(facts: PageFacts) -> str:
    """One scan's self-contained ``report.html`` (images embedded as data URIs)."""
    return (
        _environment()
        .get_template("scan_report.html.j2")
        .render(
            facts=facts,
            style=_style(),
            notice=NOTICE,
            overview=[_Image(n, _data_uri(p)) for n, p in facts.overview],
            key_images=[_Image(caption, _data_uri(p)) for _, p, caption in facts.key_images],
        )
    )


def _size_cell(row: dict[str, str]) -> str:
    """A summary row's lesion volume or area, with its unit."""
    for column, unit in (
        ("lesion_volume_ml", "ml"),
        ("lesion_area_mm2", "mm²"),
        ("lesion_area_px2", "px²"),
    ):
        if row.get(column):
            return f"{row[column]} {unit}"
    return ""


def index_page(
    rows: Sequence[dict[str, str]],
    *,
    reports: dict[str, str],
    run_json: str,
    summary_csv: str,
    studies: Sequence[dict[str, object]] = (),
) -> str:
    """The run's ``index.html``: the studies of several scans, then one sortable row per
    scan of ``summary.csv`` in natural scan-id order.

    Args:
        rows: ``summary.csv`` rows.
        reports: Scan id -> link to its report (scans without a report are not linked).
        run_json: Link to the run record. summary_csv: Link to the table.
        studies: ``title``, ``page``, ``n_scans``, ``n_lesions``, ``with_lesions`` of each
            study page (:func:`medres.report.study.write_study_pages`).
    """
    shown = [
        {
            **row,
            "report": reports.get(row["scan_id"], ""),
            "size": _size_cell(row),
        }
        for row in sorted(rows, key=lambda r: natural_key(r["scan_id"]))
    ]
    return render_template(
        "index.html.j2", rows=shown, run_json=run_json, summary_csv=summary_csv, studies=studies
    )


__all__ = [
    "NOTICE",
    "PageFacts",
    "Table",
    "index_page",
    "lesion_table",
    "page_facts",
    "render_template",
    "scan_page",
]
