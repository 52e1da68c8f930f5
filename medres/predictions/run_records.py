"""The run's records: ``run.json`` (:class:`RunRecord`, with :class:`ModelProvenance` per
ensemble) and ``summary.csv`` (one :class:`ScanResult` row per scan)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from medres.errors import OutputError
from medres.io.atomic import write_text_atomic
from medres.predictions._base import Record, compact_json, read_json_record
from medres.predictions.layout import RunFolder
from medres.types import StrEnum

if TYPE_CHECKING:
    from medres.pipeline import PipelineConfig


class MemberProvenance(Record):
    """One member of a model folder: its name and weight checksum."""

    name: str
    weights_sha256: str
    temperature: float = 1.0


class FolderProvenance(Record):
    """One model folder of an ensemble, with its resolved pipeline."""

    path: str
    pipeline: str
    unverified: list[str] = Field(default_factory=list)
    members: list[MemberProvenance]
    config: dict[str, Any]
    cross_validation: str = ""  # what the out-of-fold predictions chose, in words


class InputKindRecord(Record):
    """What an ensemble takes: dimensions and channel names."""

    dims: int
    channels: list[str]


class ModelProvenance(Record):
    """One ensemble of a run: its input, labels and folders (``run.json`` ``models``);
    ``runtime`` is what ran the member networks (``torch``, ``openvino``...)."""

    ensemble: str
    mode: str
    takes: InputKindRecord
    labels: list[str]
    folders: list[FolderProvenance]
    runtime: str = "torch"


class ScanStatus(StrEnum):
    """What happened to a scan in a batch."""

    OK = "ok"
    RESUMED = "resumed"
    FAILED = "failed"
    SKIPPED = "skipped"


#: Columns of ``summary.csv``, in order; units in the names. ``spacing_mm`` and
#: ``lesion_area_mm2`` are empty for an image measured in pixels, whose lesion area is in
#: ``lesion_area_px2``. ``scan_seconds``: wall-clock seconds of the scan from its load to its
#: last output, the report included when reports are written (``run.json`` splits the same
#: time by stage in ``stage_seconds``, whose ``total`` it is).
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
    "lesion_area_px2",
    "n_detections",
    "scan_seconds",
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
    lesion_area_px2: float | None = None
    n_detections: int | None = None
    scan_seconds: float = 0.0
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


class SkippedRecord(Record):
    """A file the run left out, and why."""

    path: str
    reason: str


class RunScanEntry(Record):
    """One scan in ``run.json``: the summary row plus seconds per stage."""

    model_config = ConfigDict(frozen=True, extra="allow")

    scan_id: str
    status: ScanStatus
    stage_seconds: dict[str, float] = Field(default_factory=dict)


class RunRecord(Record):
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
        execution: Where the scans ran: this process's torch threads, or for a Dask
            cluster its scheduler, workers, threads and each worker's peak memory.
        models: One entry per ensemble.
        counts: Scans per status.
        scans: One entry per scan, in processing order.
        skipped: Files left out, with the reason.
    """

    medres_version: str
    software: dict[str, str] = Field(default_factory=dict)
    started: str = ""
    finished: bool = False
    seconds_total: float = 0.0
    peak_memory_mib: float = 0.0
    input: str
    options: dict[str, Any] = Field(default_factory=dict)
    execution: dict[str, Any] = Field(default_factory=dict)
    models: list[ModelProvenance]
    counts: dict[str, int] = Field(default_factory=dict)
    scans: list[RunScanEntry] = Field(default_factory=list)
    skipped: list[SkippedRecord] = Field(default_factory=list)

    @classmethod
    def read(cls, folder: RunFolder) -> RunRecord:
        """Read and validate ``run.json``.

        Raises:
            OutputError: Missing, unreadable or not a run record (not a predict folder).
        """
        record: RunRecord = read_json_record(folder.run_json, cls, "predict run record")
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
    "FolderProvenance",
    "InputKindRecord",
    "MemberProvenance",
    "ModelProvenance",
    "RunRecord",
    "RunScanEntry",
    "ScanResult",
    "ScanStatus",
    "SkippedRecord",
    "read_summary",
    "write_summary",
]
