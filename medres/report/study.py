"""One report per study: the scans of a patient folder (2D slices, the LGG layout) or of a
DICOM study together, with every finding and its key images, in natural slice order.

Each scan keeps its own ``report.html`` (and SEG/SR); a study holding several scans also
gets ``OUT/studies/<study>.html``, which lists the findings of all of them scan by scan
and shows each lesion's key image (the scans' own ``overlays/lesion_NN.png``, linked, not
copied). The index page lists the studies above the scans.

What makes a study: the DICOM StudyInstanceUID for DICOM series, else the folder the
scan's file lies in (relative to the predicted folder). A study of one scan gets no page
of its own: its scan's report is the study report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath

from medres._version import __version__
from medres.errors import MedresError
from medres.io.atomic import write_text_atomic
from medres.io.order import natural_key
from medres.io.scan_refs import safe_name
from medres.io.units import area_unit, volume_unit
from medres.predictions.layout import RunFolder
from medres.predictions.records import ScanRecord
from medres.report.html import lesion_table, render_template

logger = logging.getLogger(__name__)

#: The folder of the study pages inside ``OUT/``.
STUDIES_FOLDER = "studies"
#: Key images on one study page (every finding is in its table).
MAX_STUDY_IMAGES = 60


@dataclass
class StudyImage:
    """A key image on a study page: its link (relative to the page) and caption."""

    src: str
    caption: str


@dataclass
class Study:
    """The scans of one study and what its page shows."""

    key: str
    title: str
    what: str
    records: list[ScanRecord] = field(default_factory=list)

    @property
    def page_name(self) -> str:
        """The page's file name in ``OUT/studies/``."""
        return f"{safe_name(self.title, max_length=80)}.html"


def study_of(record: ScanRecord) -> tuple[str, str, str]:
    """``(key, title, what)`` of the study a scan belongs to (see the module docstring)."""
    source = record.source
    if source.study_uid:  # the UID's end names it: no patient field reaches a file name
        return f"dicom:{source.study_uid}", f"study {source.study_uid[-12:]}", "DICOM study"
    folder = PurePosixPath(source.name).parent.as_posix() if source.name else ""
    if folder in ("", "."):
        return "folder:.", "top folder", "the predicted folder's own files"
    return f"folder:{folder}", folder, f"folder {folder}"


def group_studies(run: RunFolder) -> list[Study]:
    """The studies of a run holding two or more scans, each in natural scan order."""
    studies: dict[str, Study] = {}
    for folder in run.scans():
        try:
            record = ScanRecord.read(folder)
        except MedresError as exc:
            logger.info("%s: left out of the study pages: %s", folder.scan_id, exc)
            continue
        key, title, what = study_of(record)
        studies.setdefault(key, Study(key, title, what)).records.append(record)
    grouped = [s for s in studies.values() if len(s.records) > 1]
    for study in grouped:
        study.records.sort(key=lambda r: natural_key(r.scan_id))
    return sorted(grouped, key=lambda s: natural_key(s.title))


def _study_facts(study: Study) -> dict[str, object]:
    """What a study page shows: the findings of every scan, images, totals, notes."""
    rows: list[tuple[str, str, tuple[str, ...]]] = []
    images: list[StudyImage] = []
    without: list[tuple[str, str]] = []
    headers: tuple[str, ...] = ()
    text_columns: frozenset[int] = frozenset()
    total, three_d, unit = 0.0, False, "mm"
    notes: list[str] = []
    for record in study.records:
        report = f"../{record.scan_id}/report.html"
        three_d, unit = record.three_d, record.length_unit
        total += (record.total_volume_ml if three_d else record.total_area_mm2) or 0.0
        notes += [n for n in record.notes if n not in notes]
        if not record.lesions:
            without.append((record.scan_id, report))
            continue
        table = lesion_table(record, None)
        headers, text_columns = table.headers, table.text_columns
        rows += [(record.scan_id, report, row) for row in table.rows]
        for lesion in record.lesions:
            for kind, what in (("lesion", ""), ("saliency", ", what the model looked at")):
                name = f"overlays/{kind}_{lesion.lesion_id:02d}.png"
                if name in record.outputs and len(images) < MAX_STUDY_IMAGES:
                    caption = f"{record.scan_id}: lesion {lesion.lesion_id}{what}"
                    images.append(StudyImage(f"../{record.scan_id}/{name}", caption))
    size_unit = volume_unit(unit) if three_d else area_unit(unit)
    return {
        "title": study.title,
        "what": study.what,
        "scans": [r.scan_id for r in study.records],
        "with_lesions": sum(bool(r.lesions) for r in study.records),
        "n_lesions": sum(r.n_lesions for r in study.records),
        "total": f"{total:.3f} {size_unit}" if three_d else f"{total:.1f} {size_unit}",
        "rows": rows,
        "headers": headers,
        "text_columns": text_columns,
        "table_note": "Lesions are numbered within each scan (its own report uses the same ids); "
        "sizes are measured on each scan's own grid.",
        "images": images,
        "without_lesions": without,
        "notes": notes,
    }


def write_study_pages(run: RunFolder) -> list[dict[str, object]]:
    """Write ``OUT/studies/<study>.html`` for every study of two or more scans; remove
    the pages of studies no longer in the run. Returns one entry per study for the index
    page: ``title``, ``page`` (relative to ``OUT``), ``n_scans``, ``n_lesions``."""
    studies = group_studies(run)
    folder = run.path / STUDIES_FOLDER
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    listed: list[dict[str, object]] = []
    kept: set[str] = set()
    for study in studies:
        facts = _study_facts(study)
        page = render_template(
            "study_report.html.j2",
            study=facts,
            index="../index.html",
            version=__version__,
            made=made,
        )
        write_text_atomic(folder / study.page_name, page)
        kept.add(study.page_name)
        listed.append(
            {
                "title": study.title,
                "page": f"{STUDIES_FOLDER}/{study.page_name}",
                "n_scans": len(study.records),
                "n_lesions": facts["n_lesions"],
                "with_lesions": facts["with_lesions"],
            }
        )
    if folder.is_dir():
        for stale in folder.glob("*.html"):
            if stale.name not in kept:
                stale.unlink(missing_ok=True)
    return listed


__all__ = [
    "MAX_STUDY_IMAGES",
    "STUDIES_FOLDER",
    "Study",
    "group_studies",
    "study_of",
    "write_study_pages",
]
