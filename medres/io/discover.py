"""Find every scan in a folder tree, reading DICOM headers only.

:func:`discover` walks a folder and returns :class:`ScanRef` records (one per volume: a
DICOM series, or part of one when a series holds several volumes; a NIfTI file; a 2D
image with its mask, paired by :mod:`medres.io.pairing`) plus a :class:`SkippedFile` for
every other file with the reason it was not used. It never decodes pixel data, so it is
fast on large PACS exports; the geometry checks of :func:`medres.io.dicom.plan_series`
(gaps, duplicates, mixed slices) run here already and a broken series carries its error
in ``ScanRef.problem``.

Discovery isolates every file: only regular files are opened (a FIFO or a link to
``/dev/zero`` is skipped unopened), files above
:data:`~medres.limits.MAX_DICOM_FILE_BYTES` are not read, and any exception while one
file's header is read or interpreted becomes that file's :class:`SkippedFile` reason, so
one damaged file never stops the batch. When a series has a slice gap and files in its
folder could not be read, the gap message names them as the probable missing slices.

This module owns the walk and what each file is (NIfTI, 2D image, DICOM header, or
skipped, with duplicates of a DICOM instance recognised); the records it returns live in
:mod:`medres.io.scan_refs` and the grouping of DICOM slices into one scan per volume in
:mod:`medres.io.series_refs` (both re-exported here).

Example:
    >>> result = discover("sample_data")  # doctest: +SKIP
    >>> [ref.scan_id for ref in result.scans]  # doctest: +SKIP
"""

from __future__ import annotations

import filecmp
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from medres.errors import LoadError, NotDicomError, UnsupportedDicomError
from medres.io.dicom import (
    SliceHeader,
    one_line,
    read_dataset,
    read_slice_headers,
    regular_file_problem,
    sniff_dicom,
)
from medres.io.images2d import is_image2d_path
from medres.io.nifti import is_nifti_path, nifti_stem
from medres.io.order import natural_key
from medres.io.pairing import pair_masks
from medres.io.scan_refs import DiscoveryResult, ScanRef, SkippedFile, safe_name
from medres.io.series_refs import _damaged_by_folder, _dicom_scans
from medres.io.volume import ScanKind
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


def iter_files(root: Path) -> Iterator[Path]:
    """Files under ``root`` in natural order (``s_2`` before ``s_10``), skipping hidden
    files and folders.

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
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        for name in sorted(filenames, key=natural_key):
            if not name.startswith("."):
                yield Path(dirpath) / name


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
            ``case.png``, ``case_mask.nii.gz`` of ``case.nii.gz``. ``""`` disables that
            rule; masks in mask folders (``images/x.png`` + ``masks/x.png``, ``labelsTr/``)
            pair by stem either way (:mod:`medres.io.pairing`).
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
    result.scans.extend(_file_scans(nifti_files, ScanKind.NIFTI, mask_suffix, result, root_path))
    result.scans.extend(_file_scans(image_files, ScanKind.IMAGE2D, mask_suffix, result, root_path))
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
    """Read one candidate DICOM file's headers into ``slices``, or skip it with its reason.

    A byte-identical copy of an instance already seen is skipped; the same instance
    encoded differently is kept as a copy of its own (``split_keys["copy"]``).
    """
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


def _file_scans(
    files: list[Path], kind: ScanKind, mask_suffix: str, result: DiscoveryResult, root: Path
) -> list[ScanRef]:
    """One ScanRef per NIfTI or 2D image file, paired with its mask; unused masks skipped.

    Masks are found by :func:`medres.io.pairing.pair_masks`: ``<stem><mask_suffix>`` beside
    the image, the same stem in a mask folder beside the image's folder (``masks/``,
    ``labels/``, ``case_mask/``...), or the Decathlon / nnU-Net ``labelsTr/<case>`` of
    ``imagesTr/<case>[_0000]``.
    """
    stem_of = nifti_stem if kind is ScanKind.NIFTI else (lambda p: Path(p).stem)
    found = pair_masks(files, root=root, mask_suffix=mask_suffix, stem_of=stem_of)
    result.skipped.extend(found.skipped)
    scans = []
    for pair in found.pairs:
        stem = stem_of(pair.image)
        scans.append(
            ScanRef(
                scan_id=safe_name(stem, max_length=80),
                kind=kind,
                paths=(str(pair.image),),
                mask_path=str(pair.mask) if pair.mask else None,
                description=stem,
            )
        )
    return scans


def _make_ids_unique(scans: list[ScanRef]) -> None:
    """Prefix scan ids that occur more than once with their parent folder name (in place)."""
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


__all__ = [
    "DICOM_SUFFIXES",
    "NOT_SCAN_SUFFIXES",
    "DiscoveryResult",
    "ScanRef",
    "SkippedFile",
    "discover",
    "iter_files",
    "safe_name",
]
