"""Slices of one volume -> a checked :class:`~medres.io.dicom.records.SeriesPlan` (headers only).

This module owns the rules that make slices one regular volume: they agree in size,
orientation, spacing and pixel format; every file is its own instance; they sort along
the slice normal without duplicates, gaps, irregular steps or slices off the line; a
gantry tilt stays within bounds and is kept as a sheared affine. It also owns the size
and memory checks made before anything is allocated, the choice of output dtype, the
single-slice thickness rule, and how a series is named in messages.

Geometry: positions are DICOM LPS mm; the plan's affine maps ``(x=column, y=row,
z=slice)`` indices to RAS+ mm, slice ``k`` being ``plan.slices[k]``.

Example:
    >>> plan = plan_series(headers)  # doctest: +SKIP
    >>> plan.spatial_shape, plan.affine  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import (
    DuplicateSlicesError,
    MixedSeriesError,
    SeriesError,
    SliceGapError,
    UnsupportedDicomError,
)
from medres.io.dicom.fields import ORIENTATION_TOL, POSITION_TOL_MM, one_line
from medres.io.dicom.records import MosaicGeometry, SeriesPlan, SliceHeader
from medres.io.volume import affine_from_dicom
from medres.limits import MAX_SLICES, MAX_VOXELS, check_allocation

logger = logging.getLogger(__name__)

#: Largest accepted slice thickness / spacing between slices of a single slice (mm).
MAX_SLICE_THICKNESS_MM = 1e3
#: The warning recorded when a single slice has no usable thickness.
SLICE_THICKNESS_ASSUMED = (
    "SliceThickness and SpacingBetweenSlices missing: 1 mm assumed for the single slice; "
    "volumes in ml are not physical"
)
_MAX_WARNINGS = 5


def slice_normal(orientation_lps: Sequence[float]) -> npt.NDArray[np.float64]:
    """Unit normal (row direction x column direction) of a DICOM ImageOrientationPatient."""
    row = np.asarray(orientation_lps[:3], dtype=np.float64)
    col = np.asarray(orientation_lps[3:], dtype=np.float64)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else normal


def series_folder(slices: Sequence[SliceHeader]) -> str:
    """The folder holding the slices (``"A and 2 other folder(s)"`` when they are spread)."""
    folders = sorted({str(Path(s.path).parent) for s in slices})
    if not folders:
        return "(no files)"
    if len(folders) == 1:
        return folders[0]
    return f"{folders[0]} and {len(folders) - 1} other folder(s)"


def _series_name(slices: Sequence[SliceHeader]) -> str:
    first = slices[0]
    desc = f" '{first.series_description}'" if first.series_description else ""
    uid = first.series_uid or "(no SeriesInstanceUID)"
    return f"{series_folder(slices)}: series {uid}{desc}"


def _list_labels(slices: Iterable[SliceHeader], limit: int = 6) -> str:
    labels = [s.label for s in slices]
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _merge_warnings(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """Distinct warnings in first-seen order, at most a few (then a count of the rest)."""
    unique = list(dict.fromkeys(w for group in groups for w in group))
    if len(unique) <= _MAX_WARNINGS:
        return tuple(unique)
    rest = len(unique) - (_MAX_WARNINGS - 1)
    return (*unique[: _MAX_WARNINGS - 1], f"and {rest} more warning(s) like these")


def _check_consistent(slices: Sequence[SliceHeader]) -> None:
    name = _series_name(slices)
    checks: list[tuple[str, Callable[[SliceHeader], Any]]] = [
        ("size (rows x columns)", lambda s: (s.rows, s.columns)),
        ("samples per pixel", lambda s: s.samples_per_pixel),
        ("bits allocated", lambda s: s.bits_allocated),
        ("pixel representation (signedness)", lambda s: s.pixel_representation),
        ("photometric interpretation", lambda s: s.photometric),
        (
            "orientation",
            lambda s: (
                tuple(round(v / ORIENTATION_TOL) for v in s.orientation_lps)
                if s.orientation_lps
                else None
            ),
        ),
        (
            "pixel spacing",
            lambda s: (
                tuple(round(v, 3) for v in s.pixel_spacing_mm) if s.pixel_spacing_mm else None
            ),
        ),
    ]
    for what, key in checks:
        groups: dict[Any, list[SliceHeader]] = defaultdict(list)
        for s in slices:
            groups[key(s)].append(s)
        if len(groups) > 1:
            majority = max(groups.values(), key=len)
            odd = [s for g in groups.values() if g is not majority for s in g]
            raise MixedSeriesError(
                f"{name}: slices differ in {what}: {len(odd)} of {len(slices)} slices "
                f"({_list_labels(odd)}) do not match the others; the folder mixes several "
                "series or the export is broken"
            )


def _check_unique_instances(slices: Sequence[SliceHeader]) -> None:
    """Distinct files of one volume must be distinct instances (their own SOPInstanceUID)."""
    by_uid: dict[str, list[SliceHeader]] = defaultdict(list)
    for s in slices:
        if s.frame is None and s.sop_instance_uid:
            by_uid[s.sop_instance_uid].append(s)
    shared = {uid: group for uid, group in by_uid.items() if len({s.path for s in group}) > 1}
    if shared:
        uid, group = max(shared.items(), key=lambda kv: len(kv[1]))
        n_files = sum(len(g) for g in shared.values())
        raise DuplicateSlicesError(
            f"{_series_name(slices)}: {n_files} files share {len(shared)} SOPInstanceUID(s) "
            f"({_list_labels(group, limit=4)} all carry {uid}); every slice needs its own UID, "
            "so the export is broken: re-export the series"
        )


def _check_size(slices: Sequence[SliceHeader], dtype: np.dtype[Any]) -> None:
    """Slice count, voxel count and memory of the volume, before anything is allocated."""
    name = _series_name(slices)
    first = slices[0]
    if len(slices) > MAX_SLICES:
        raise SeriesError(
            f"{name}: {len(slices):,} slices, more than the {MAX_SLICES:,} medres stacks into "
            "one volume (medres.limits.MAX_SLICES); split the series"
        )
    n_voxels = first.rows * first.columns * len(slices)
    shape = f"{first.columns} x {first.rows} x {len(slices)}"
    if n_voxels > MAX_VOXELS:
        raise UnsupportedDicomError(
            f"{name}: {shape} = {n_voxels:,} voxels, more than the {MAX_VOXELS:,} medres "
            "accepts for one scan (medres.limits.MAX_VOXELS)"
        )
    color = first.samples_per_pixel > 1 or first.photometric == "PALETTE COLOR"
    n_bytes = n_voxels * (3 if color else 1) * dtype.itemsize
    too_big = check_allocation(f"the {shape} volume", n_bytes)
    if too_big is not None:
        raise UnsupportedDicomError(f"{name}: {too_big}")


def choose_output_dtype(slices: Sequence[SliceHeader]) -> np.dtype[Any]:
    """The smallest dtype that holds every rescaled value exactly (float32 if none does)."""
    first = slices[0]
    if first.samples_per_pixel > 1 or first.photometric == "PALETTE COLOR":
        return np.dtype(np.uint8) if first.bits_allocated <= 8 else np.dtype(np.uint16)
    if any(s.has_modality_lut for s in slices):
        return np.dtype(np.float32)
    if first.bits_allocated > 16 and first.bits_stored > 16:
        integral = False
    else:
        integral = all(
            s.rescale_slope == 1.0 and float(s.rescale_intercept).is_integer() for s in slices
        )
    if not integral:
        return np.dtype(np.float32)
    bits = min(first.bits_stored, first.bits_allocated)
    lo, hi = (
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if first.pixel_representation
        else (
            0,
            2**bits - 1,
        )
    )
    intercepts = [int(s.rescale_intercept) for s in slices]
    lo, hi = lo + min(intercepts), hi + max(intercepts)
    for candidate in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(candidate)
        if info.min <= lo and hi <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.float32)


def _damaged_hint(damaged_files: Sequence[tuple[str, str]]) -> str:
    shown = "; ".join(
        f"{Path(path).name} ({one_line(reason.removeprefix(f'{path}: '), limit=120)})"
        for path, reason in damaged_files[:3]
    )
    more = f" and {len(damaged_files) - 3} more" if len(damaged_files) > 3 else ""
    return (
        f"the damaged file(s) {shown}{more} in the same folder are probably the missing "
        "slice(s): replace them with good copies or re-export the series"
    )


def _single_slice_step(first: SliceHeader) -> tuple[float, tuple[str, ...]]:
    """Thickness (mm) of a lone slice: SpacingBetweenSlices, else SliceThickness, else 1."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = first.extra.get(keyword)
        if isinstance(value, (int, float)) and 0 < abs(value) <= MAX_SLICE_THICKNESS_MM:
            return abs(float(value)), ()
    return 1.0, (SLICE_THICKNESS_ASSUMED,)


def plan_series(
    slices: Sequence[SliceHeader],
    *,
    max_tilt_deg: float = 45.0,
    damaged_files: Sequence[tuple[str, str]] = (),
) -> SeriesPlan:
    """Sort slices along their normal, check they form one regular volume, compute the affine.

    Args:
        slices: Headers of one series (one volume; see :func:`split_volumes` for several).
        max_tilt_deg: Largest angle between the slice step and the slice normal accepted
            (gantry tilt). The affine then carries the shear exactly.
        damaged_files: ``(path, reason)`` of files beside these slices that could not be
            read; a slice gap then names them as the probable missing slices.

    Returns:
        The plan: sorted slices, RAS affine, spatial shape ``(x, y, z)`` (or ``(x, y)`` for a
        single slice without position), output dtype, and the warnings of what was assumed.

    Raises:
        MixedSeriesError: Slices differ in size, orientation, spacing or pixel format.
        DuplicateSlicesError: Two slices share one position, or two files one SOP UID.
        SliceGapError: Missing slices or irregular spacing.
        SeriesError: Slices without position/orientation that would need stacking, or
            more slices than :data:`~medres.limits.MAX_SLICES`.
        UnsupportedDicomError: The volume exceeds the voxel limit or the memory budget.
    """
    if not slices:
        raise SeriesError("empty series: no slices to load")
    name = _series_name(slices)
    _check_consistent(slices)
    first = slices[0]
    dtype = choose_output_dtype(slices)
    _check_size(slices, dtype)
    _check_unique_instances(slices)
    notes = _merge_warnings(s.warnings for s in slices)
    spacing = first.pixel_spacing_mm or (1.0, 1.0)
    if first.mosaic is not None:
        return _mosaic_plan(name, slices, first.mosaic, dtype, notes)
    if (
        first.position_lps is None
        or first.orientation_lps is None
        or any(s.position_lps is None or s.orientation_lps is None for s in slices)
    ):
        return _flat_plan(name, slices, spacing, dtype, notes)

    normal = slice_normal(first.orientation_lps)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise SeriesError(f"{name}: ImageOrientationPatient {first.orientation_lps} is degenerate")
    distance = np.array([np.dot(normal, s.position_lps) for s in slices])  # type: ignore[arg-type]
    order = np.argsort(distance, kind="stable")
    ordered = [slices[i] for i in order]
    if len(ordered) > 1:
        step = _stack_step(name, ordered, distance[order], damaged_files)
    else:
        thickness, thickness_notes = _single_slice_step(first)
        notes = _merge_warnings((notes, thickness_notes))
        step = normal * thickness
    tilt = _tilt_deg(name, step, normal, max_tilt_deg)
    affine = affine_from_dicom(
        image_position_lps=ordered[0].position_lps,
        row_direction_lps=first.orientation_lps[:3],
        column_direction_lps=first.orientation_lps[3:],
        pixel_spacing_mm=spacing,
        slice_step_lps=step,
    )
    return SeriesPlan(
        slices=tuple(ordered),
        affine=affine,
        spatial_shape=(first.columns, first.rows, len(ordered)),
        output_dtype=dtype,
        samples_per_pixel=first.samples_per_pixel,
        gantry_tilt_deg=tilt if tilt > 0.01 else 0.0,
        warnings=notes,
    )


def _mosaic_plan(
    name: str,
    slices: Sequence[SliceHeader],
    mosaic: MosaicGeometry,
    dtype: np.dtype[Any],
    notes: tuple[str, ...],
) -> SeriesPlan:
    """The plan of one Siemens mosaic file: its own grid and affine (nibabel's order)."""
    if len(slices) > 1:
        raise MixedSeriesError(
            f"{name}: {len(slices)} mosaic files are separate volumes; load them one by one"
        )
    return SeriesPlan(
        slices=tuple(slices),
        affine=mosaic.affine_ras(),
        spatial_shape=mosaic.shape_ijk,
        output_dtype=dtype,
        samples_per_pixel=1,
        warnings=notes,
    )


def _flat_plan(
    name: str,
    slices: Sequence[SliceHeader],
    spacing: tuple[float, float],
    dtype: np.dtype[Any],
    notes: tuple[str, ...],
) -> SeriesPlan:
    """A lone image without patient geometry (projection, secondary capture): 2D, ``(x, y)``.

    Raises:
        SeriesError: More than one slice lacks position/orientation (they cannot stack).
    """
    first = slices[0]
    if len(slices) > 1:
        lacking = [s for s in slices if s.position_lps is None or s.orientation_lps is None]
        raise SeriesError(
            f"{name}: {len(slices)} slices without ImagePositionPatient/"
            f"ImageOrientationPatient ({_list_labels(lacking, limit=4)}) cannot be stacked "
            "into a volume"
        )
    # A projection or secondary-capture image: 2D, no patient geometry.
    affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
    return SeriesPlan(
        slices=tuple(slices),
        affine=affine,
        spatial_shape=(first.columns, first.rows),
        output_dtype=dtype,
        samples_per_pixel=first.samples_per_pixel,
        has_geometry=False,
        warnings=notes,
    )


def _stack_step(
    name: str,
    ordered: Sequence[SliceHeader],
    distance: npt.NDArray[np.float64],
    damaged_files: Sequence[tuple[str, str]],
) -> npt.NDArray[np.float64]:
    """The LPS step (mm) from one slice to the next of a sorted stack of 2 or more slices.

    Args:
        name: The series, for messages.
        ordered: The slices sorted along the normal.
        distance: Their positions along the normal (mm), ascending.
        damaged_files: Unreadable files beside the slices, named when a gap shows.

    Raises:
        DuplicateSlicesError: Two slices at one position.
        SliceGapError: A gap, irregular spacing, or a slice off the line of the others.
    """
    steps = np.diff(distance)
    dup = np.flatnonzero(steps < POSITION_TOL_MM)
    if dup.size:
        pairs = [(ordered[i], ordered[i + 1]) for i in dup[:3]]
        shown = "; ".join(f"{a.label} and {b.label}" for a, b in pairs)
        everything = (
            f"all {len(ordered)} slices lie at one position; " if dup.size == steps.size else ""
        )
        raise DuplicateSlicesError(
            f"{name}: {everything}{dup.size} slice position(s) occur more than once "
            f"({shown}) and the slices cannot be split into volumes by time point, echo "
            "or acquisition"
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * median)
    if gaps.size:
        i = int(gaps[0])
        missing = round(float(steps[i]) / median) - 1
        advice = _damaged_hint(damaged_files) if damaged_files else "re-export the complete series"
        raise SliceGapError(
            f"{name}: slice gap {steps[i]:.2f} mm where {median:.2f} mm expected between "
            f"{ordered[i].label} and {ordered[i + 1].label} "
            f"(about {missing} slice(s) missing, {gaps.size} gap(s) in all); {advice}"
        )
    tol = max(POSITION_TOL_MM * 5, 0.02 * median)
    irregular = np.flatnonzero(np.abs(steps - median) > tol)
    if irregular.size:
        i = int(irregular[0])
        raise SliceGapError(
            f"{name}: irregular slice spacing: {steps[i]:.3f} mm between {ordered[i].label} "
            f"and {ordered[i + 1].label} where {median:.3f} mm is typical; a volume needs "
            "evenly spaced slices"
        )
    p0 = np.asarray(ordered[0].position_lps)
    p1 = np.asarray(ordered[-1].position_lps)
    step: npt.NDArray[np.float64] = (p1 - p0) / (len(ordered) - 1)
    # every slice must sit on the line p0 + k * step
    positions = np.array([s.position_lps for s in ordered], dtype=np.float64)
    expected = p0 + np.arange(len(ordered))[:, None] * step
    off = np.linalg.norm(positions - expected, axis=1)
    if off.max() > max(0.1, 0.1 * float(np.linalg.norm(step))):
        k = int(off.argmax())
        raise SliceGapError(
            f"{name}: {ordered[k].label} lies {off[k]:.2f} mm off the line through the "
            "other slice positions; the series is not one regular volume"
        )
    return step


def _tilt_deg(
    name: str,
    step: npt.NDArray[np.float64],
    normal: npt.NDArray[np.float64],
    max_tilt_deg: float,
) -> float:
    """Angle (degrees) between the slice step and the slice normal (gantry tilt), checked.

    Raises:
        SeriesError: The tilt exceeds ``max_tilt_deg``.
    """
    cos_tilt = abs(float(np.dot(step, normal))) / max(float(np.linalg.norm(step)), 1e-12)
    tilt = float(np.degrees(np.arccos(min(1.0, cos_tilt))))
    if tilt > max_tilt_deg:
        raise SeriesError(
            f"{name}: slices are stacked {tilt:.1f} degrees off their normal; "
            "this is not a slice stack medres can place"
        )
    if tilt > 0.01:
        logger.warning("%s: gantry tilt %.2f degrees kept as a sheared affine", name, tilt)
    return tilt
