"""The typed records of a prediction folder, each with one read and one write.

* :class:`ScanRecord`: ``OUT/<scan_id>/lesions.json``: the scan's source, grid, models,
  lesions (:class:`LesionRecord`), timings, notes and, once every output is written,
  ``complete`` with the size of each output (what ``--resume`` trusts).
* :class:`MemberLesionsRecord`: ``members/<member>/lesions.json``: one member's lesions.
* :class:`RunRecord`: ``OUT/run.json``: versions, options, the models
  (:class:`ModelProvenance`, with the resolved pipelines), one :class:`ScanResult` per scan
  and the files left out.
* :class:`ScanResult`: one row of ``OUT/summary.csv`` (:func:`write_summary`,
  :func:`read_summary`).

Coordinates: ``*_ijk`` are voxel indices in the array order ``(x, y[, z])`` of the scan's
own grid; ``*_ras_mm`` are RAS+ millimetres; ``GridRecord.affine`` maps the first to the
second. Unknown keys in files written by other medres versions are ignored; a file that
does not validate raises :class:`~medres.errors.OutputError` naming it.

Example:
    >>> lesion = LesionRecord(lesion_id=1, label="tumour", voxel_count=8, volume_ml=0.008,
    ...     area_mm2=None, center_ijk=(1.5, 1.5, 1.5), center_ras_mm=(1.5, 1.5, 1.5),
    ...     bbox_ijk=((1, 2), (1, 2), (1, 2)), longest_axial_diameter_mm=2.0, axial_slice=1,
    ...     mean_probability=0.9, max_probability=0.95, members_detecting=3, n_members=3,
    ...     uncertainty=0.01)
    >>> lesion.size_mm3
    8.0
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from medres.errors import OutputError
from medres.io.atomic import write_text_atomic
from medres.io.files import read_regular_bytes
from medres.io.grid import Grid
from medres.limits import MAX_RECORD_BYTES
from medres.predictions.layout import MemberFolder, RunFolder, ScanFolder
from medres.types import StrEnum

if TYPE_CHECKING:
    from medres.inference.lesions import Lesion
    from medres.pipeline import PipelineConfig


def compact_json(data: Any) -> str:
    """Indented JSON with short lists of numbers or strings kept on one line."""
    text = json.dumps(data, indent=2)
    return (
        re.sub(
            r"\[\s+([^\[\]{}]*?)\s+\]",
            lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]",
            text,
        )
        + "\n"
    )


class _Record(BaseModel):
    """Frozen, ignores keys it does not know (files of other medres versions)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def _read_json_record(path: Path, record: type[Any], what: str) -> Any:
    """Read a record through medres's bounded opener (regular files only, capped size)."""
    data = read_regular_bytes(path, limit=MAX_RECORD_BYTES, error=OutputError, what=what)
    try:
        return record.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise OutputError(
            f"{path}: not a medres {what} ({where}: {first['msg']}); re-run medres predict"
        ) from None


class LesionRecord(_Record):
    """One lesion as stored (see :class:`~medres.inference.lesions.Lesion` for the fields).

    ``volume_ml`` is set on 3D grids and ``area_mm2`` on 2D ones; the other is ``None``.
    """

    lesion_id: int
    label: str
    voxel_count: int
    volume_ml: float | None
    area_mm2: float | None
    center_ijk: tuple[float, ...]
    center_ras_mm: tuple[float, float, float]
    bbox_ijk: tuple[tuple[int, int], ...]
    longest_axial_diameter_mm: float
    axial_slice: int | None
    mean_probability: float | None
    max_probability: float | None
    members_detecting: int | None
    n_members: int | None
    uncertainty: float | None

    @classmethod
    def from_lesion(cls, lesion: Lesion) -> LesionRecord:
        """The record of a lesion found by :func:`~medres.inference.lesions.find_lesions`."""
        return cls.model_validate(asdict(lesion))

    @property
    def size_mm3(self) -> float | None:
        """Volume in mm^3 (3D lesions), else ``None``."""
        return None if self.volume_ml is None else self.volume_ml * 1000.0


class SourceRecord(_Record):
    """Where the scan came from, and how to find it again.

    Attributes:
        kind: ``dicom``, ``nifti`` or ``image2d``.
        name: The source relative to the run's input folder (the first file, or the
            series / case folder), as predict named it.
        key: Identity of the source: a hash of every source file's relative path (and the
            DICOM series UID and part); ``medres report`` finds the scan again by it.
        state: A hash of every source file's path, size and modification time: differs
            when a source file changed after predict read it.
        files: The first four source files (relative), then ``"... N more"``.
        n_files: How many source files.
        grouped_by: How channel files were stacked (``""`` for a single scan).
        modality, series_uid, study_uid, frame_of_reference_uid: DICOM identifiers
            (empty for other formats).
        description: SeriesDescription or file name (sanitised).
    """

    kind: str
    name: str = ""
    key: str = ""
    state: str = ""
    files: list[str]
    n_files: int
    grouped_by: str = ""
    modality: str = ""
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    description: str = ""


class GridRecord(_Record):
    """The scan's own grid, which ``seg.nii.gz`` and every map share.

    Attributes:
        shape: Spatial shape ``(x, y[, z])``.
        spacing_mm: Voxel size per axis (norms of the affine's columns).
        orientation: RAS axis codes (``LPS``...).
        affine: 4x4 voxel ``(i, j, k)`` -> RAS+ mm.
    """

    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    orientation: str
    affine: tuple[tuple[float, float, float, float], ...]

    @model_validator(mode="after")
    def _a_real_grid(self) -> GridRecord:
        Grid(self.shape, self.affine_ras)  # shape and affine describe a usable grid
        return self

    @property
    def affine_ras(self) -> npt.NDArray[np.float64]:
        """The affine as a 4x4 float64 array."""
        return np.asarray(self.affine, dtype=np.float64)

    @property
    def grid(self) -> Grid:
        """The recorded grid as a :class:`~medres.io.grid.Grid` (voxel measure, mapping)."""
        return Grid(self.shape, self.affine_ras)


class EnsembleRecord(_Record):
    """Which models predicted the scan and how they were combined."""

    pipelines: list[str]
    members: list[str]
    mode: str
    tta: list[bool]


class ScanRecord(_Record):
    """``OUT/<scan_id>/lesions.json``.

    Attributes:
        medres_version: The medres that wrote it.
        scan_id: The scan (its folder's name).
        fingerprint: What makes two predictions the same (models, options, source files);
            ``--resume`` compares it.
        source, grid, ensemble: See the record types.
        labels: Label names of the models, background first.
        lesion_labels: The labels split into lesions.
        n_lesions: How many lesions.
        total_volume_ml: Sum of lesion volumes (3D; ``None`` for 2D).
        total_area_mm2: Sum of lesion areas (2D; ``None`` for 3D).
        lesions: Ordered by decreasing size (ids 1..N).
        seconds: Wall seconds per stage.
        notes: What the reader of this scan must know (assumed spacing, grouping...).
        complete: Every output below is written (the report included).
        outputs: Each output relative to the scan folder -> size in bytes.
    """

    medres_version: str
    scan_id: str
    fingerprint: str
    source: SourceRecord
    grid: GridRecord
    ensemble: EnsembleRecord
    labels: list[str]
    lesion_labels: list[str]
    n_lesions: int
    total_volume_ml: float | None
    total_area_mm2: float | None
    lesions: list[LesionRecord]
    seconds: dict[str, float] = {}
    notes: list[str] = []
    complete: bool = False
    outputs: dict[str, int] = {}

    @classmethod
    def read(cls, folder: ScanFolder) -> ScanRecord:
        """Read and validate ``lesions.json``.

        Raises:
            OutputError: Missing, unreadable or not a scan record.
        """
        record: ScanRecord = _read_json_record(folder.lesions_json, cls, "scan record")
        return record

    def write(self, folder: ScanFolder) -> Path:
        """Write ``lesions.json`` atomically."""
        return write_text_atomic(folder.lesions_json, compact_json(self.model_dump(mode="json")))

    @property
    def three_d(self) -> bool:
        """The scan's grid is 3D (lesions measured in ml)."""
        return len(self.grid.shape) == 3


class MemberLesionsRecord(_Record):
    """``members/<member>/lesions.json``: one member's own lesions (no ensemble scores)."""

    member: str
    n_lesions: int
    lesions: list[LesionRecord]

    @classmethod
    def read(cls, folder: MemberFolder) -> MemberLesionsRecord:
        """Read and validate a member's ``lesions.json``.

        Raises:
            OutputError: Missing, unreadable or not a member record.
        """
        record: MemberLesionsRecord = _read_json_record(
            folder.lesions_json, cls, "member lesion record"
        )
        return record

    def write(self, folder: MemberFolder) -> Path:
        """Write the member's ``lesions.json`` atomically."""
        return write_text_atomic(folder.lesions_json, compact_json(self.model_dump(mode="json")))


class MemberProvenance(_Record):
    """One member of a model folder: its name and weight checksum."""

    name: str
    weights_sha256: str


class FolderProvenance(_Record):
    """One model folder of an ensemble, with its resolved pipeline."""

    path: str
    pipeline: str
    unverified: list[str] = []
    members: list[MemberProvenance]
    config: dict[str, Any]


class InputKindRecord(_Record):
    """What an ensemble takes: dimensions and channel names."""

    dims: int
    channels: list[str]


class ModelProvenance(_Record):
    """One ensemble of a run: its input, labels and folders (``run.json`` ``models``)."""

    ensemble: str
    mode: str
    takes: InputKindRecord
    labels: list[str]
    folders: list[FolderProvenance]


class ScanStatus(StrEnum):
    """What happened to a scan in a batch."""

    OK = "ok"
    RESUMED = "resumed"
    FAILED = "failed"
    SKIPPED = "skipped"


#: Columns of ``summary.csv``, in order; units in the names.
SUMMARY_COLUMNS = (
    "scan_id",
    "status",
    "model",
    "kind",
    "modality",
    "shape",
    "spacing_mm",
    "n_lesions",
    "lesion_volume_ml",
    "lesion_area_mm2",
    "seconds",
    "error",
    "notes",
    "source",
)


@dataclass
class ScanResult:
    """One scan of a batch: a row of ``summary.csv`` and an entry of ``run.json``.

    Mutable: the batch fills it in as the scan goes through the stages.
    """

    scan_id: str
    status: ScanStatus | str
    model: str = ""
    kind: str = ""
    modality: str = ""
    shape: str = ""
    spacing_mm: str = ""
    n_lesions: int | None = None
    lesion_volume_ml: float | None = None
    lesion_area_mm2: float | None = None
    seconds: float = 0.0
    error: str = ""
    notes: str = ""
    source: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = ScanStatus(self.status)

    def row(self) -> dict[str, Any]:
        """The ``summary.csv`` row (fixed columns; ``None`` as empty)."""
        data = asdict(self)
        data["status"] = str(self.status)
        return {k: "" if data[k] is None else data[k] for k in SUMMARY_COLUMNS}


def write_summary(folder: RunFolder, results: list[ScanResult]) -> Path:
    """Write ``summary.csv`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow(result.row())
    return write_text_atomic(folder.summary_csv, buffer.getvalue())


def read_summary(folder: RunFolder) -> list[dict[str, str]]:
    """The rows of ``summary.csv`` as written (strings; empty for ``None``).

    Raises:
        OutputError: No readable ``summary.csv``.
    """
    try:
        with folder.summary_csv.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise OutputError(f"{folder.summary_csv}: cannot read the scan table: {exc}") from None
    missing = [c for c in SUMMARY_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise OutputError(f"{folder.summary_csv}: not a medres scan table (no {missing[0]})")
    return rows


class SkippedRecord(_Record):
    """A file the run left out, and why."""

    path: str
    reason: str


class RunScanEntry(_Record):
    """One scan in ``run.json``: the summary row plus seconds per stage."""

    model_config = ConfigDict(frozen=True, extra="allow")

    scan_id: str
    status: ScanStatus
    stage_seconds: dict[str, float] = {}


class RunRecord(_Record):
    """``OUT/run.json``: what the run was and what it did.

    Attributes:
        medres_version: The medres that wrote it.
        software: Versions of the libraries that matter (torch, monai, ...).
        started: ISO start time (UTC).
        finished: Every scan was attempted (False after an interruption).
        seconds_total: Wall seconds of the run.
        peak_memory_mib: Peak resident memory of the process.
        input: The scans folder (or file) as given.
        options: The predict options (see ``PredictOptions``).
        models: One entry per ensemble.
        counts: Scans per status.
        scans: One entry per scan, in processing order.
        skipped: Files left out, with the reason.
    """

    medres_version: str
    software: dict[str, str] = {}
    started: str = ""
    finished: bool = False
    seconds_total: float = 0.0
    peak_memory_mib: float = 0.0
    input: str
    options: dict[str, Any] = {}
    models: list[ModelProvenance]
    counts: dict[str, int] = {}
    scans: list[RunScanEntry] = []
    skipped: list[SkippedRecord] = []

    @classmethod
    def read(cls, folder: RunFolder) -> RunRecord:
        """Read and validate ``run.json``.

        Raises:
            OutputError: Missing, unreadable or not a run record (not a predict folder).
        """
        record: RunRecord = _read_json_record(folder.run_json, cls, "predict run record")
        return record

    def write(self, folder: RunFolder) -> Path:
        """Write ``run.json`` atomically."""
        return write_text_atomic(folder.run_json, compact_json(self.model_dump(mode="json")))

    def pipelines(self) -> dict[str, PipelineConfig]:
        """The resolved pipelines of the run's models, by pipeline name (parsed once).

        Raises:
            ConfigError: A recorded pipeline does not validate.
        """
        from medres.pipeline import parse_pipeline

        out: dict[str, PipelineConfig] = {}
        for model in self.models:
            for folder in model.folders:
                cfg = parse_pipeline(folder.config, source="run.json")
                out[cfg.name] = cfg
        return out

    def finished_scans(self) -> set[str] | None:
        """Scan ids marked ok or resumed (``None`` when the run lists no scan)."""
        if not self.scans:
            return None
        done = (ScanStatus.OK, ScanStatus.RESUMED)
        return {s.scan_id for s in self.scans if s.status in done}


__all__ = [
    "SUMMARY_COLUMNS",
    "EnsembleRecord",
    "FolderProvenance",
    "GridRecord",
    "InputKindRecord",
    "LesionRecord",
    "MemberLesionsRecord",
    "MemberProvenance",
    "ModelProvenance",
    "RunRecord",
    "RunScanEntry",
    "ScanRecord",
    "ScanResult",
    "ScanStatus",
    "SkippedRecord",
    "SourceRecord",
    "compact_json",
    "read_summary",
    "write_summary",
]
