"""The records :func:`medres.io.discover.discover` returns, and file-name-safe scan ids.

:class:`ScanRef` is one scan found on disk before its pixels are read, :class:`SkippedFile`
a file that did not become one (and why), :class:`DiscoveryResult` everything found under
one root. :func:`safe_name` turns DICOM or file-name text into an id that cannot steer
where outputs go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medres.errors import LoadError
from medres.io.dicom import SeriesPlan
from medres.io.volume import ScanKind

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, *, max_length: int = 60) -> str:
    """A file-name-safe version of ``text``: letters, digits, ``._-`` only, no leading dot.

    Path separators, ``..`` and NUL can never survive, so DICOM text cannot steer where
    outputs go.

    Example:
        >>> safe_name("../T1 axial/\\x00post")
        'T1_axial_post'
    """
    cleaned = _UNSAFE.sub("_", text).strip("._-")
    cleaned = re.sub(r"_{2,}", "_", cleaned)
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return cleaned[:max_length].strip("._-") or "scan"


@dataclass
class ScanRef:
    """One scan found on disk, before its pixels are read.

    Attributes:
        scan_id: Unique, file-name-safe identifier (used for output folders).
        kind: DICOM series, NIfTI file or 2D image.
        paths: Source files; for DICOM in slice order when the series plan succeeded.
        mask_path: Paired mask (2D ``X_mask.png`` or NIfTI ``X_mask.nii.gz``), if any.
        description: SeriesDescription or file name.
        modality: DICOM modality ("" for other formats).
        series_uid: DICOM SeriesInstanceUID ("" for other formats).
        part: Which part of a split DICOM series (``"t3"``, ``"echo2"``...), or "".
        spatial_shape: ``(x, y[, z])`` when known from headers.
        spacing_mm: Voxel size when known from headers.
        orientation: RAS axis codes when known from headers.
        problem: The error that loading this scan will raise, found from headers.
        plan: The checked DICOM series plan (sorted slices, affine), when headers allowed it.
        warnings: What reading the headers had to assume (a default pixel spacing...);
            loading the scan repeats them in :attr:`Volume.warnings`.
    """

    scan_id: str
    kind: ScanKind
    paths: tuple[str, ...]
    mask_path: str | None = None
    description: str = ""
    modality: str = ""
    series_uid: str = ""
    part: str = ""
    spatial_shape: tuple[int, ...] | None = None
    spacing_mm: tuple[float, ...] | None = None
    orientation: str = ""
    problem: LoadError | None = field(default=None, repr=False)
    plan: SeriesPlan | None = field(default=None, repr=False)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkippedFile:
    """A file discovery did not turn into a scan, and why.

    ``failed`` is True when the file looked like a scan but could not be read (a corrupt
    ``.dcm``, a truncated header): those make ``medres inspect`` exit non-zero.
    """

    path: str
    reason: str
    failed: bool = False


@dataclass
class DiscoveryResult:
    """Everything :func:`discover` found under one root."""

    root: str
    scans: list[ScanRef] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def failed(self) -> list[SkippedFile]:
        """Skipped files that are errors (unreadable scans)."""
        return [s for s in self.skipped if s.failed]
