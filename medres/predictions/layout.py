"""Where ``medres predict`` puts each file: the paths of a prediction folder.

A prediction folder (``OUT``) holds the run's files and one folder per scan::

    OUT/
      summary.csv          one row per scan (RunFolder.summary_csv)
      run.json             versions, models, options, timings (RunFolder.run_json)
      index.html           every scan, linking to its report (RunFolder.index_html)
      <scan_id>/           ScanFolder
        seg.nii.gz         label map on the scan's own grid
        probabilities.nii.gz
        lesions.json       the scan's record (ScanRecord); written last
        members/<member>/  MemberFolder: seg.nii.gz, probabilities.nii.gz, lesions.json
        report.html, report.pdf, overlays/*.png, seg.dcm, sr.dcm

These classes are the only place that spells those names: every reader and writer (the
batch, ``--resume``, the report, ``medres evaluate``, the CLI) asks them for a path.

Example:
    >>> folder = RunFolder("out").scan("brain_01")
    >>> str(folder.seg), str(folder.member("lgg.fold0").lesions_json)
    ('out/brain_01/seg.nii.gz', 'out/brain_01/members/lgg.fold0/lesions.json')
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from medres.io.discover import safe_name
from medres.io.order import natural_key

_SEG = "seg.nii.gz"
_PROBABILITIES = "probabilities.nii.gz"
_LESIONS = "lesions.json"
_DETECTIONS = "detections.json"
_MEMBERS = "members"
_REPORT_HTML = "report.html"
_REPORT_PDF = "report.pdf"
_OVERLAYS = "overlays"
_SEG_DCM = "seg.dcm"
_SR_DCM = "sr.dcm"
_SUMMARY = "summary.csv"
_RUN = "run.json"
_INDEX = "index.html"
_EVALUATION = "evaluation"

#: Every name medres writes into a scan folder (what a re-run clears first).
_SCAN_OUTPUTS = (
    _SEG,
    _PROBABILITIES,
    _LESIONS,
    _DETECTIONS,
    _MEMBERS,
    _REPORT_HTML,
    _REPORT_PDF,
    _OVERLAYS,
    _SEG_DCM,
    _SR_DCM,
)


def member_folder_name(member: str) -> str:
    """Folder name of a member's outputs: ``<pipeline>/<fold>`` -> ``<pipeline>.<fold>``."""
    return safe_name(member.replace("/", "."))


def relative_to_input(path: str | Path, root: str | Path) -> str:
    """A source file as the records name it: relative to the run's input folder (or the
    folder of the input file); just its name when it lies elsewhere. Linked folders keep
    their own names (no symlink resolution)."""
    base = Path(os.path.abspath(root))
    if base.is_file():
        base = base.parent
    try:
        return Path(os.path.abspath(path)).relative_to(base).as_posix()
    except ValueError:
        return Path(path).name


@dataclass(frozen=True)
class _MapsFolder:
    """A folder holding one model's maps: a label map, probabilities, lesions."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def seg(self) -> Path:
        """The label map on the scan's own grid (``seg.nii.gz``)."""
        return self.path / _SEG

    @property
    def probabilities(self) -> Path:
        """The 1-byte probability map (``probabilities.nii.gz``)."""
        return self.path / _PROBABILITIES

    @property
    def lesions_json(self) -> Path:
        """The lesion record (``lesions.json``): a ScanRecord in a scan folder, a
        MemberLesionsRecord in a member folder."""
        return self.path / _LESIONS


@dataclass(frozen=True)
class MemberFolder(_MapsFolder):
    """``OUT/<scan_id>/members/<member>/``: one ensemble member's own outputs."""

    @property
    def name(self) -> str:
        """The folder's name (``<pipeline>.<fold>``)."""
        return self.path.name


@dataclass(frozen=True)
class ScanFolder(_MapsFolder):
    """``OUT/<scan_id>/``: every output path of one scan (the ensemble's maps, the
    members, the report files)."""

    @property
    def scan_id(self) -> str:
        """The scan id (the folder's name)."""
        return self.path.name

    @property
    def members_dir(self) -> Path:
        """The folder holding one MemberFolder per member."""
        return self.path / _MEMBERS

    def member(self, member: str) -> MemberFolder:
        """The folder of a member, by its name (``<pipeline>/<fold>`` or folder name)."""
        return MemberFolder(self.members_dir / member_folder_name(member))

    def members(self) -> list[MemberFolder]:
        """Member folders that hold a label map, sorted by name."""
        if not self.members_dir.is_dir():
            return []
        found = (MemberFolder(p) for p in sorted(self.members_dir.iterdir()))
        return [m for m in found if m.seg.is_file()]

    @property
    def detections_json(self) -> Path:
        """A detector ensemble's boxes (``detections.json``, a DetectionsRecord)."""
        return self.path / _DETECTIONS

    @property
    def report_html(self) -> Path:
        """The self-contained HTML report."""
        return self.path / _REPORT_HTML

    @property
    def report_pdf(self) -> Path:
        """The PDF report."""
        return self.path / _REPORT_PDF

    @property
    def overlays_dir(self) -> Path:
        """The folder of key-image PNGs."""
        return self.path / _OVERLAYS

    def overlay(self, name: str) -> Path:
        """A key image (``overview.png``, ``lesion_01.png``)."""
        return self.overlays_dir / name

    @property
    def seg_dcm(self) -> Path:
        """The DICOM SEG (DICOM input only)."""
        return self.path / _SEG_DCM

    @property
    def sr_dcm(self) -> Path:
        """The DICOM TID 1500 SR (DICOM input only)."""
        return self.path / _SR_DCM

    def relative(self, path: Path) -> str:
        """``path`` relative to the scan folder, with ``/`` (how ScanRecord lists outputs)."""
        return path.relative_to(self.path).as_posix()

    def clear(self) -> None:
        """Remove what an earlier run wrote here (only medres's own names), so a re-run
        that fails or writes less never leaves stale results beside new ones; leftover
        ``.*.tmp`` files of atomic writes cut short by a kill go too."""
        if not self.path.is_dir():
            return
        for leftover in self.path.rglob(".*.tmp"):
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink()
        for name in _SCAN_OUTPUTS:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


@dataclass(frozen=True)
class RunFolder:
    """``OUT/``: the run's files and its scan folders.

    Attributes:
        path: The prediction folder.
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def summary_csv(self) -> Path:
        """One row per scan (SummaryRow)."""
        return self.path / _SUMMARY

    @property
    def run_json(self) -> Path:
        """The run's record (RunRecord)."""
        return self.path / _RUN

    @property
    def index_html(self) -> Path:
        """The page listing every scan with a link to its report."""
        return self.path / _INDEX

    @property
    def evaluation_dir(self) -> Path:
        """Where ``medres evaluate`` writes by default."""
        return self.path / _EVALUATION

    def scan(self, scan_id: str) -> ScanFolder:
        """The folder of one scan."""
        return ScanFolder(self.path / scan_id)

    def scans(self) -> list[ScanFolder]:
        """Scan folders holding a scan record, in the natural order of their scan ids."""
        return sorted(
            (ScanFolder(p.parent) for p in self.path.glob(f"*/{_LESIONS}")),
            key=lambda f: natural_key(f.scan_id),
        )


__all__ = ["MemberFolder", "RunFolder", "ScanFolder", "member_folder_name", "relative_to_input"]
