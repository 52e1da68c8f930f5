"""A checked :class:`~medres.io.dicom.records.SeriesPlan` -> a :class:`~medres.io.volume.Volume`.

This module owns the loading loop: the output array is allocated once (after the memory
budget allows it) and filled slice by slice, one decoded file in flight (a multi-frame
file is decoded once and its frames taken in plan order, each with the same data set, so
every frame gets the Modality LUT), and the source record (UIDs in slice order, sidecar
facts) is assembled. Any failure ends as a medres error naming the file or the series.

Index order and affine follow :mod:`medres.io.volume`: the array is ``(C, x=column,
y=row, z=slice)`` and slice ``k`` is ``plan.slices[k]``; the affine maps to RAS+ mm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import (
    CorruptFileError,
    LoadError,
    MixedSeriesError,
    PixelDecodeError,
    SeriesError,
    UnsupportedDicomError,
)
from medres.io.dicom.dataset import read_dataset
from medres.io.dicom.fields import _describe
from medres.io.dicom.headers import read_slice_headers
from medres.io.dicom.mosaic import load_mosaic
from medres.io.dicom.pixels import decode_pixels, modality_values
from medres.io.dicom.plan import _series_name, plan_series
from medres.io.dicom.records import SeriesPlan, SliceHeader
from medres.io.dicom.split import split_volumes
from medres.io.volume import ScanKind, SourceInfo, Volume
from medres.limits import check_allocation

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass
class _DecodedFile:
    """The multi-frame file decoded last: its frames and its data set (pixel bytes dropped).

    The data set is kept for the per-frame Modality LUT; its pixel elements are deleted
    once decoded so the raw bytes do not stay in memory beside the decoded frames.
    """

    path: str = ""
    ds: Any = None
    frames: npt.NDArray[Any] | None = None

    def load(self, path: str) -> tuple[Any, npt.NDArray[Any]]:
        """``(data set, decoded frames)`` of ``path``, decoding it unless it is the last one."""
        if self.frames is None or self.path != path:
            self.path, self.ds, self.frames = "", None, None
            ds = read_dataset(path, headers_only=False)
            frames = decode_pixels(ds, path)
            for keyword in _PIXEL_KEYWORDS:
                if keyword in ds:
                    delattr(ds, keyword)
            self.path, self.ds, self.frames = path, ds, frames
        return self.ds, self.frames


def _slice_values(
    s: SliceHeader,
    plan: SeriesPlan,
    *,
    color: bool,
    cache: _DecodedFile,
) -> npt.NDArray[Any]:
    """One slice as ``(C, y=rows, x=cols)`` values of ``plan.output_dtype`` (rescaled)."""
    if s.frame is None:
        ds = read_dataset(s.path, headers_only=False)
        arr = decode_pixels(ds, s.path)
    else:
        ds, frames = cache.load(s.path)
        if frames.ndim < 3 or s.frame >= frames.shape[0]:
            raise CorruptFileError(
                f"{s.path}: decoded pixels have shape {frames.shape}, too few for frame "
                f"{s.frame + 1} of {s.number_of_frames}; the file is damaged"
            )
        arr = frames[s.frame]
    expected = (s.rows, s.columns, 3) if color else (s.rows, s.columns)
    if arr.shape != expected:
        raise CorruptFileError(
            f"{s.path}: decoded pixels have shape {arr.shape}, header says {expected}"
        )
    if color:
        return np.moveaxis(arr, -1, 0)  # (rows, cols, 3) -> (3, y=rows, x=cols)
    return modality_values(arr, s, ds=ds, output_dtype=plan.output_dtype)[None]


def load_dicom_series(
    source: Sequence[str | Path] | SeriesPlan,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> Volume:
    """Load one DICOM volume (files of one series, or a checked :class:`SeriesPlan`).

    Args:
        source: The files of one volume (any order), or a plan from :func:`plan_series`.
        on_progress: Called with ``(slices_done, slices_total)`` while decoding.

    Returns:
        A :class:`Volume` with array ``(C, x, y, z)`` (``C`` = 3 for colour), RAS affine,
        CT in Hounsfield units, the source UIDs in slice order and patient fields apart;
        ``Volume.warnings`` lists the values that had to be assumed.

    Raises:
        LoadError: A precise subclass naming the file or series and the problem.

    Example:
        >>> vol = load_dicom_series(sorted(Path("sample_data/ct_phantom_dicom").iterdir()))
        ... # doctest: +SKIP
    """
    plan = source if isinstance(source, SeriesPlan) else _plan_files(source)
    first = plan.first
    color = plan.samples_per_pixel > 1 or first.photometric == "PALETTE COLOR"
    n_channels = 3 if color else 1
    name = _series_name(plan.slices)
    n_bytes = n_channels * math.prod(plan.spatial_shape) * plan.output_dtype.itemsize
    too_big = check_allocation(f"the {plan.spatial_shape} volume", n_bytes)
    if too_big is not None:
        raise UnsupportedDicomError(f"{name}: {too_big}")
    # Filled slice by slice in (C, z, y, x) memory order so each slice is one contiguous
    # write; the Volume gets the (C, x, y, z) view of it (NIfTI's own on-disk order).
    try:
        out = np.empty((n_channels, *plan.spatial_shape[::-1]), dtype=plan.output_dtype)
    except MemoryError as exc:
        raise UnsupportedDicomError(
            f"{name}: not enough memory for the {plan.spatial_shape} volume"
        ) from exc
    if first.mosaic is not None:
        _fill_mosaic(out, first, plan)
    else:
        _fill_slices(out, plan, color=color, on_progress=on_progress)
    return Volume(
        array=out.transpose(0, *range(out.ndim - 1, 0, -1)),
        affine=plan.affine,
        modality=first.modality,
        source=_source_info(plan),
        patient=first.patient,
        channel_names=("R", "G", "B") if color else (),
        warnings=plan.warnings,
    )


def _plan_files(source: Sequence[str | Path]) -> SeriesPlan:
    """The plan of the files of one volume (any order).

    Raises:
        SeriesError: No slices. MixedSeriesError: The files hold several volumes.
    """
    headers: list[SliceHeader] = []
    for p in source:
        headers.extend(read_slice_headers(p))
    if not headers:
        raise SeriesError("empty series: no slices to load")
    parts = split_volumes(headers)
    if len(parts) > 1:
        raise MixedSeriesError(
            f"{_series_name(headers)}: the {len(source)} files hold {len(parts)} volumes "
            f"({', '.join(label for label, _ in parts)}); load them one by one "
            "(medres.io.discover splits them)"
        )
    return plan_series(headers)


def _fill_mosaic(out: npt.NDArray[Any], first: SliceHeader, plan: SeriesPlan) -> None:
    """Untile the one mosaic file of ``plan`` into ``out`` ``(1, k, j, i)``."""
    try:
        out[0] = load_mosaic(first, plan.output_dtype).T
    except LoadError:
        raise
    except Exception as exc:
        raise PixelDecodeError(
            f"{first.path}: cannot load the mosaic pixels: {_describe(exc)}"
        ) from exc


def _fill_slices(
    out: npt.NDArray[Any],
    plan: SeriesPlan,
    *,
    color: bool,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Decode every slice of ``plan`` into ``out`` ``(C, z, y, x)``, one file in flight."""
    total = len(plan.slices)
    cache = _DecodedFile()  # multi-frame files: decode once
    for k, s in enumerate(plan.slices):
        try:
            out_slice = _slice_values(s, plan, color=color, cache=cache)
            if out.ndim == 4:
                out[:, k] = out_slice
            else:
                out[...] = out_slice
        except LoadError:
            raise
        except MemoryError as exc:
            raise UnsupportedDicomError(
                f"{s.path}: not enough memory to decode this slice"
            ) from exc
        except Exception as exc:
            raise PixelDecodeError(
                f"{s.path}: cannot load the pixels of {s.label}: {_describe(exc)}"
            ) from exc
        if on_progress is not None:
            on_progress(k + 1, total)


def _source_info(plan: SeriesPlan) -> SourceInfo:
    """Where the volume came from: UIDs in slice order, sidecar facts, geometry flags."""
    first = plan.first
    extra = dict(first.extra)
    extra["has_patient_geometry"] = plan.has_geometry
    if plan.gantry_tilt_deg:
        extra["gantry_tilt_deg"] = plan.gantry_tilt_deg
    return SourceInfo(
        kind=ScanKind.DICOM,
        paths=tuple(dict.fromkeys(s.path for s in plan.slices)),
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        sop_instance_uids=tuple(s.sop_instance_uid for s in plan.slices),
        sop_class_uid=first.sop_class_uid,
        series_number=first.series_number,
        series_description=first.series_description,
        study_date=first.study_date,
        manufacturer=first.manufacturer,
        extra=extra,
    )
