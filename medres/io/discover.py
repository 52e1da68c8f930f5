"""Find every scan in a folder tree, reading DICOM headers only.

:func:`discover` walks a folder and returns :class:`ScanRef` records (one per volume: a
DICOM series, or part of one when a series holds several volumes; a NIfTI file; a 2D
image with its mask) plus a :class:`SkippedFile` for every other file with the reason it
was not used. It never decodes pixel data, so it is fast on large PACS exports; the
geometry checks of :func:`medres.io.dicom.plan_series` (gaps, duplicates, mixed slices)
run here already and a broken series carries its error in ``ScanRef.problem``.

Example:
    >>> result = discover("sample_data")  # doctest: +SKIP
    >>> [ref.scan_id for ref in result.scans]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from medres.errors import LoadError, NotDicomError, UnsupportedDicomError
from medres.io.dicom import (
    SeriesPlan,
    SliceHeader,
    plan_series,
    read_dataset,
    read_slice_headers,
    split_volumes,
)
from medres.io.images2d import is_image2d_path
from medres.io.nifti import is_nifti_path, nifti_stem
from medres.io.volume import ScanKind, orientation_codes

logger = logging.getLogger(__name__)

#: Suffixes that are never scans (read nothing from them).
NOT_SCAN_SUFFIXES = {
    ".json",
    ".txt",
    ".md",
    ".csv",
    ".tsv",
    ".py",
    ".html",
    ".htm",
    ".pdf",
    ".xml",
    ".yaml",
    ".yml",
    ".zip",
    ".tar",
    ".dump",
    ".icc",
    ".log",
    ".sh",
    ".bat",
    ".exe",
    ".npy",
    ".npz",
    ".pkl",
    ".pt",
    ".pth",
    ".safetensors",
    ".bz2",
    ".xz",
    ".7z",
    ".mhd",
    ".raw",
    ".nrrd",
}
#: Suffixes that claim to be DICOM: failing to read them is an error, not a note.
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ".dc3"}

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


def iter_files(root: Path) -> Iterator[Path]:
    """Files under ``root`` in sorted order, skipping hidden files and folders.

    Linked folders are followed (a folder of links to case folders is a common way to
    assemble a batch); a folder reached twice (a link loop) is read once.
    """
    if root.is_file():
        yield root
        return
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _is_mask(stem: str, mask_suffix: str) -> bool:
    return bool(mask_suffix) and stem.endswith(mask_suffix) and len(stem) > len(mask_suffix)


def discover(
    root: str | Path,
    *,
    mask_suffix: str = "_mask",
    on_progress: Callable[[int, int, str], None] | None = None,
) -> DiscoveryResult:
    """Find the scans under ``root`` (DICOM any nesting, NIfTI, 2D images with masks).

    Args:
        root: A folder (searched recursively) or a single file.
        mask_suffix: Stem suffix that marks a mask: ``case_mask.png`` is the mask of
            ``case.png``, ``case_mask.nii.gz`` of ``case.nii.gz``. ``""`` disables pairing.
        on_progress: Called with ``(files_done, files_total, path)``.

    Returns:
        Scans in a stable order (DICOM by series, then NIfTI, then 2D, each sorted) and
        the files not used, each with its reason.

    Raises:
        LoadError: ``root`` does not exist.
    """
    root_path = Path(root)
    if not root_path.exists():
        raise LoadError(f"{root_path}: no such file or folder")
    files = list(iter_files(root_path))
    result = DiscoveryResult(root=str(root_path))
    dicom_slices: list[SliceHeader] = []
    seen_sops: dict[str, str] = {}
    nifti_files: list[Path] = []
    image_files: list[Path] = []

    for index, path in enumerate(files):
        if on_progress is not None:
            on_progress(index, len(files), str(path))
        suffix = path.suffix.lower()
        if is_nifti_path(path):
            nifti_files.append(path)
        elif is_image2d_path(path):
            image_files.append(path)
        elif suffix == ".gz":
            result.skipped.append(
                SkippedFile(str(path), "gzip file that is not .nii.gz; decompress it first")
            )
        elif suffix in NOT_SCAN_SUFFIXES:
            result.skipped.append(SkippedFile(str(path), f"not a scan format ({suffix})"))
        else:
            _add_dicom(path, result, dicom_slices, seen_sops)
    if on_progress is not None:
        on_progress(len(files), len(files), "")

    result.scans.extend(_dicom_scans(dicom_slices))
    result.scans.extend(_file_scans(nifti_files, ScanKind.NIFTI, mask_suffix, result))
    result.scans.extend(_file_scans(image_files, ScanKind.IMAGE2D, mask_suffix, result))
    _make_ids_unique(result.scans)
    logger.info(
        "%s: %d scans, %d files skipped (%d unreadable)",
        root_path,
        len(result.scans),
        len(result.skipped),
        len(result.failed),
    )
    return result


def _add_dicom(
    path: Path,
    result: DiscoveryResult,
    slices: list[SliceHeader],
    seen_sops: dict[str, str],
) -> None:
    suffix = path.suffix.lower()
    try:
        ds = read_dataset(path, headers_only=True)
        headers = read_slice_headers(path, ds=ds)
    except NotDicomError as exc:
        claimed = suffix in DICOM_SUFFIXES
        reason = str(exc) if claimed else "not a recognised scan format"
        result.skipped.append(SkippedFile(str(path), reason, failed=claimed))
        return
    except UnsupportedDicomError as exc:
        result.skipped.append(SkippedFile(str(path), str(exc).split(": ", 1)[-1]))
        return
    except LoadError as exc:
        result.skipped.append(SkippedFile(str(path), str(exc), failed=True))
        return
    sop = headers[0].sop_instance_uid
    if sop and sop in seen_sops:
        first_path = seen_sops[sop]
        if _same_bytes(Path(first_path), path):
            result.skipped.append(
                SkippedFile(str(path), f"duplicate file: identical copy of {first_path}")
            )
            return
        # the same instance encoded differently (another transfer syntax): load it apart
        copies = sum(1 for k in seen_sops if k.startswith(f"{sop}|")) + 2
        seen_sops[f"{sop}|{copies}"] = str(path)
        headers = [replace(h, split_keys={**h.split_keys, "copy": copies}) for h in headers]
    elif sop:
        seen_sops[sop] = str(path)
    slices.extend(headers)


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    except OSError:
        return False


def _dicom_scans(slices: list[SliceHeader]) -> list[ScanRef]:
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for s in slices:
        # enhanced multi-frame files, files without a series UID and re-encoded copies of
        # an instance are volumes of their own
        alone = s.frame is not None or "mosaic" in s.extra
        key = f"{s.series_uid}|{s.path}" if alone else s.series_uid
        if not s.series_uid and not alone:
            # anonymised exports sometimes drop the SeriesInstanceUID: group what else agrees
            key = "|".join(
                (
                    "no-series-uid",
                    s.study_uid,
                    s.frame_of_reference_uid,
                    str(s.series_number),
                    s.series_description,
                    str(Path(s.path).parent),
                )
            )
        if "copy" in s.split_keys:
            key = f"{s.series_uid}|copy{s.split_keys['copy']}"
        by_series[key].append(s)
    scans: list[ScanRef] = []
    for key in sorted(by_series, key=lambda k: (by_series[k][0].series_number or 0, k)):
        series = by_series[key]
        first = series[0]
        base = "_".join(
            p
            for p in (
                f"S{first.series_number}" if first.series_number is not None else "S",
                safe_name(first.series_description, max_length=40)
                if first.series_description
                else first.modality or "dicom",
                hashlib.sha1(key.encode()).hexdigest()[:8],
            )
            if p
        )
        for part, part_slices in split_volumes(series):
            scan_id = safe_name(f"{base}_{part}" if part else base, max_length=80)
            ref = ScanRef(
                scan_id=scan_id,
                kind=ScanKind.DICOM,
                paths=tuple(dict.fromkeys(s.path for s in part_slices)),
                description=first.series_description,
                modality=first.modality,
                series_uid=first.series_uid,
                part=part,
            )
            try:
                plan = plan_series(part_slices)
            except LoadError as exc:
                ref.problem = exc
            else:
                ref.plan = plan
                ref.paths = tuple(dict.fromkeys(s.path for s in plan.slices))
                ref.spatial_shape = plan.spatial_shape
                ref.spacing_mm = tuple(
                    float(v) for v in _norms(plan.affine)[: len(plan.spatial_shape)]
                )
                ref.orientation = orientation_codes(plan.affine) if plan.has_geometry else ""
            scans.append(ref)
    return scans


def _norms(affine: object) -> list[float]:
    import numpy as np

    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]


_DECATHLON_LABELS = {"labelsTr": "imagesTr", "labelsTs": "imagesTs"}


def _file_scans(
    files: list[Path], kind: ScanKind, mask_suffix: str, result: DiscoveryResult
) -> list[ScanRef]:
    stem_of = nifti_stem if kind is ScanKind.NIFTI else (lambda p: Path(p).stem)
    images: dict[tuple[Path, str], Path] = {}
    masks: dict[tuple[Path, str], Path] = {}
    for path in files:
        stem = stem_of(path)
        if path.parent.name in _DECATHLON_LABELS:
            # Decathlon / nnU-Net layout: labelsTr/case.nii.gz labels imagesTr/case.nii.gz
            images_dir = path.parent.parent / _DECATHLON_LABELS[path.parent.name]
            masks[(images_dir, stem)] = path
        elif _is_mask(stem, mask_suffix):
            masks[(path.parent, stem[: -len(mask_suffix)])] = path
        else:
            images[(path.parent, stem)] = path
    for parent, stem in list(images):
        # nnU-Net names the first channel case_0000: its label is labelsTr/case
        if parent.name in _DECATHLON_LABELS.values() and stem.endswith("_0000"):
            key = (parent, stem[:-5])
            if key in masks and key not in images:
                masks[(parent, stem)] = masks.pop(key)
    for key, orphan in masks.items():
        if key not in images:
            result.skipped.append(
                SkippedFile(str(orphan), f"mask without an image named '{key[1]}' beside it")
            )
    scans = []
    for (parent, stem), path in sorted(images.items(), key=lambda kv: str(kv[1])):
        mask = masks.get((parent, stem))
        scans.append(
            ScanRef(
                scan_id=safe_name(stem, max_length=80),
                kind=kind,
                paths=(str(path),),
                mask_path=str(mask) if mask else None,
                description=stem,
            )
        )
    return scans


def _make_ids_unique(scans: list[ScanRef]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for ref in scans:
        counts[ref.scan_id] += 1
    used: set[str] = set()
    for ref in scans:
        if counts[ref.scan_id] > 1:
            parent = safe_name(Path(ref.paths[0]).parent.name, max_length=30)
            candidate = f"{parent}_{ref.scan_id}"
            n = 2
            while candidate in used:
                candidate = f"{parent}_{ref.scan_id}_{n}"
                n += 1
            ref.scan_id = candidate
        used.add(ref.scan_id)
