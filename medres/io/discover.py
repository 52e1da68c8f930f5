"""Find every scan in a folder tree, reading DICOM headers only.

:func:`discover` walks a folder and returns :class:`ScanRef` records (one per volume: a
DICOM series, or part of one when a series holds several volumes; a NIfTI file; a 2D
image with its mask) plus a :class:`SkippedFile` for every other file with the reason it
was not used. It never decodes pixel data, so it is fast on large PACS exports; the
geometry checks of :func:`medres.io.dicom.plan_series` (gaps, duplicates, mixed slices)
run here already and a broken series carries its error in ``ScanRef.problem``.

Discovery isolates every file: only regular files are opened (a FIFO or a link to
``/dev/zero`` is skipped unopened), files above
:data:`~medres.limits.MAX_DICOM_FILE_BYTES` are not read, and any exception while one
file's header is read or interpreted becomes that file's :class:`SkippedFile` reason, so
one damaged file never stops the batch. When a series has a slice gap and files in its
folder could not be read, the gap message names them as the probable missing slices.

Example:
    >>> result = discover("sample_data")  # doctest: +SKIP
    >>> [ref.scan_id for ref in result.scans]  # doctest: +SKIP
"""

from __future__ import annotations

import filecmp
import hashlib
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from medres.errors import LoadError, NotDicomError, SeriesError, UnsupportedDicomError
from medres.io.dicom import (
    SeriesPlan,
    SliceHeader,
    one_line,
    plan_series,
    read_dataset,
    read_slice_headers,
    regular_file_problem,
    series_folder,
    sniff_dicom,
    split_volumes,
)
from medres.io.images2d import is_image2d_path
from medres.io.nifti import is_nifti_path, nifti_stem
from medres.io.volume import ScanKind, orientation_codes
from medres.limits import MAX_DICOM_FILE_BYTES

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
    assemble a batch); a folder reached twice (a link loop) is read once. Entries are only
    listed, never opened: FIFOs, devices and broken links come out too, and
    :func:`discover` skips them with their reason. A ``root`` that is not a folder is
    yielded as it is.
    """
    if not root.is_dir():
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
    seen_sops: dict[str, tuple[str, SliceHeader]] = {}
    nifti_files: list[Path] = []
    image_files: list[Path] = []

    for index, path in enumerate(files):
        if on_progress is not None:
            on_progress(index, len(files), str(path))
        suffix = path.suffix.lower()
        not_regular = regular_file_problem(path)
        if not_regular is not None:
            # never opened: a FIFO blocks, /dev/zero never ends
            result.skipped.append(SkippedFile(str(path), not_regular))
        elif is_nifti_path(path):
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

    result.scans.extend(_dicom_scans(dicom_slices, _damaged_by_folder(result.skipped)))
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
    seen_sops: dict[str, tuple[str, SliceHeader]],
) -> None:
    suffix = path.suffix.lower()
    claimed = suffix in DICOM_SUFFIXES
    try:
        size = path.stat().st_size
    except OSError as exc:
        result.skipped.append(
            SkippedFile(str(path), f"{path}: cannot be examined ({exc})", failed=True)
        )
        return
    if size == 0 or size > MAX_DICOM_FILE_BYTES:
        reason = (
            "empty file (0 bytes)"
            if size == 0
            else f"{size / 2**30:.1f} GiB, larger than the {MAX_DICOM_FILE_BYTES / 2**30:.1f} "
            "GiB medres reads as one DICOM file (medres.limits.MAX_DICOM_FILE_BYTES); not read"
        )
        result.skipped.append(
            SkippedFile(str(path), f"{path}: {reason}" if claimed else reason, failed=claimed)
        )
        return
    claimed = claimed or sniff_dicom(path)
    try:
        ds = read_dataset(path, headers_only=True)
        headers = read_slice_headers(path, ds=ds)
    except NotDicomError as exc:
        reason = str(exc) if claimed else "not a recognised scan format"
        result.skipped.append(SkippedFile(str(path), reason, failed=claimed))
        return
    except UnsupportedDicomError as exc:
        result.skipped.append(SkippedFile(str(path), str(exc).split(": ", 1)[-1]))
        return
    except LoadError as exc:
        result.skipped.append(SkippedFile(str(path), str(exc), failed=True))
        return
    except Exception as exc:  # isolation: nothing one file does may stop the batch
        result.skipped.append(
            SkippedFile(
                str(path),
                f"{path}: cannot read the DICOM header: {type(exc).__name__}: "
                f"{one_line(str(exc), limit=200)}",
                failed=True,
            )
        )
        return
    if not headers:
        result.skipped.append(SkippedFile(str(path), f"{path}: no image in the file", failed=True))
        return
    first = headers[0]
    sop = first.sop_instance_uid
    if sop and sop in seen_sops:
        first_path, first_header = seen_sops[sop]
        if _same_bytes(Path(first_path), path):
            result.skipped.append(
                SkippedFile(str(path), f"duplicate file: identical copy of {first_path}")
            )
            return
        if _same_instance(first_header, first):
            # the same instance encoded differently (another transfer syntax): load it apart
            copies = sum(1 for k in seen_sops if k.startswith(f"{sop}|")) + 2
            seen_sops[f"{sop}|{copies}"] = (str(path), first)
            headers = [replace(h, split_keys={**h.split_keys, "copy": copies}) for h in headers]
        # else: another slice carrying the same UID (a broken export): it stays in its
        # series, whose plan then refuses the shared UID naming the files
    elif sop:
        seen_sops[sop] = (str(path), first)
    slices.extend(headers)


def _same_instance(a: SliceHeader, b: SliceHeader) -> bool:
    """Whether two files with one SOPInstanceUID hold the same image (a re-encoded copy)."""
    return (
        a.series_uid == b.series_uid
        and a.instance_number == b.instance_number
        and a.position_lps == b.position_lps
        and a.orientation_lps == b.orientation_lps
        and (a.rows, a.columns, a.number_of_frames) == (b.rows, b.columns, b.number_of_frames)
    )


def _same_bytes(a: Path, b: Path) -> bool:
    """Byte-identical files (compared in chunks, never read whole into memory)."""
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _damaged_by_folder(skipped: list[SkippedFile]) -> dict[str, list[tuple[str, str]]]:
    """``(path, reason)`` of the files that may be damaged slices, by folder.

    Files that failed to read, and files without a suffix that were not recognised at all
    (a DICOM slice whose preamble was destroyed looks like that).
    """
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item in skipped:
        path = Path(item.path)
        unrecognised = item.reason == "not a recognised scan format" and not path.suffix
        if item.failed or unrecognised:
            out[str(path.parent)].append((item.path, item.reason))
    return out


def _dicom_scans(
    slices: list[SliceHeader], damaged: dict[str, list[tuple[str, str]]] | None = None
) -> list[ScanRef]:
    damaged = damaged or {}
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for s in slices:
        # enhanced multi-frame files, files without a series UID and re-encoded copies of
        # an instance are volumes of their own
        alone = s.frame is not None or s.mosaic is not None
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
        try:
            parts = split_volumes(series)
        except Exception as exc:  # never let one series stop discovery
            parts = [("", series)]
            logger.debug("%s: cannot split series: %r", series_folder(series), exc)
        for part, part_slices in parts:
            scans.append(_series_ref(base, part, part_slices, damaged))
    return scans


def _series_ref(
    base: str,
    part: str,
    part_slices: list[SliceHeader],
    damaged: dict[str, list[tuple[str, str]]],
) -> ScanRef:
    """The ScanRef of one volume, with its plan or the problem loading it will raise."""
    first = part_slices[0]
    ref = ScanRef(
        scan_id=safe_name(f"{base}_{part}" if part else base, max_length=80),
        kind=ScanKind.DICOM,
        paths=tuple(dict.fromkeys(s.path for s in part_slices)),
        description=first.series_description,
        modality=first.modality,
        series_uid=first.series_uid,
        part=part,
    )
    folders = sorted({str(Path(s.path).parent) for s in part_slices})
    nearby = [item for folder in folders for item in damaged.get(folder, [])]
    try:
        plan = plan_series(part_slices, damaged_files=nearby)
    except LoadError as exc:
        ref.problem = exc
        return ref
    except Exception as exc:  # a bug must not stop the batch: report it on this scan
        ref.problem = SeriesError(
            f"{series_folder(part_slices)}: series {first.series_uid or '(no UID)'}: cannot "
            f"plan the volume: {type(exc).__name__}: {one_line(str(exc), limit=200)}"
        )
        return ref
    ref.plan = plan
    ref.paths = tuple(dict.fromkeys(s.path for s in plan.slices))
    ref.spatial_shape = plan.spatial_shape
    ref.spacing_mm = tuple(float(v) for v in _norms(plan.affine)[: len(plan.spatial_shape)])
    ref.orientation = orientation_codes(plan.affine) if plan.has_geometry else ""
    notes = list(plan.warnings)
    if nearby and len(ref.paths) > 1:  # a lone file is no series to be missing slices of
        names = ", ".join(Path(p).name for p, _ in nearby[:3])
        more = f" and {len(nearby) - 3} more" if len(nearby) > 3 else ""
        notes.append(
            f"{len(nearby)} file(s) in the same folder could not be read ({names}{more}); "
            "if they are slices of this series, the volume is incomplete"
        )
    ref.warnings = tuple(notes)
    return ref


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
