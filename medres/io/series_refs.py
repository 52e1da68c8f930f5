"""DICOM slice headers -> one :class:`~medres.io.scan_refs.ScanRef` per volume.

Slices are grouped into series (by SeriesInstanceUID; multi-frame files, mosaics and
re-encoded copies of an instance stand alone; slices without a series UID are grouped by
what else agrees), each series is divided into its volumes
(:func:`~medres.io.dicom.split_volumes`) and every volume is planned from headers
(:func:`~medres.io.dicom.plan_series`): a volume that cannot be loaded carries its error
in ``ScanRef.problem``, and files of the same folder that could not be read are named as
its probable missing slices.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path

from medres.errors import LoadError, SeriesError
from medres.io.dicom import SliceHeader, one_line, plan_series, series_folder, split_volumes
from medres.io.scan_refs import ScanRef, SkippedFile, safe_name
from medres.io.volume import ScanKind, orientation_codes

logger = logging.getLogger(__name__)


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
    """One ScanRef per volume of every series in ``slices``, in series-number order.

    ``damaged`` lists, by folder, files that could not be read (see
    :func:`_damaged_by_folder`); a series in such a folder names them in its messages.
    """
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
    """Lengths of the affine's three voxel axes (the voxel size, mm)."""
    import numpy as np

    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]
