"""One DICOM file's header -> :class:`~medres.io.dicom.records.SliceHeader` records.

This module owns what medres reads from a header: whether the object is an image at all,
its pixel layout (rows, columns, bits, signedness, samples, frames) checked against the
file size and the limits, and per slice (per frame for enhanced multi-frame objects) the
geometry (position and orientation in LPS mm, pixel spacing), the rescale values, the keys
that split a series into volumes, and the descriptive facts for the sidecar. Each value
goes through the checked readers of :mod:`medres.io.dicom.fields`; what had to be assumed
is recorded in ``SliceHeader.warnings``. No pixel data is read.

Example:
    >>> (header,) = read_slice_headers("sample_data/ct_phantom_dicom/IM0001")  # doctest: +SKIP
    >>> header.position_lps, header.pixel_spacing_mm  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medres.errors import CorruptFileError, LoadError, UnsupportedDicomError
from medres.io.dicom.dataset import (
    _declared_pixel_bytes,
    _encoding_syntax,
    _file_size,
    _has_pixel_data,
    _is_image_storage,
    non_image_reason,
    read_dataset,
    transfer_syntax,
)
from medres.io.dicom.fields import (
    _FIX,
    MAX_FRAMES,
    _describe,
    _float_or,
    _get,
    _int_field,
    _int_or_none,
    _orientation,
    _pixel_spacing,
    _position,
    _quiet_pydicom,
    _rescale,
    _text,
    _values,
)
from medres.io.dicom.mosaic import read_mosaic_geometry
from medres.io.dicom.records import MosaicGeometry, SliceHeader
from medres.io.volume import PatientInfo
from medres.limits import MAX_VOXELS

#: The warning recorded when neither PixelSpacing nor ImagerPixelSpacing is present.
PIXEL_SPACING_ASSUMED = "PixelSpacing missing: 1 mm assumed; sizes in mm are not physical"


def _patient(ds: Any) -> PatientInfo:
    return PatientInfo(
        name=_text(ds, "PatientName"),
        patient_id=_text(ds, "PatientID"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"),
    )


_NUMERIC_FIELDS = (
    "SliceThickness",
    "SpacingBetweenSlices",
    "RepetitionTime",
    "EchoTime",
    "FlipAngle",
    "MagneticFieldStrength",
    "KVP",
)
_TEXT_FIELDS = ("ConvolutionKernel", "BodyPartExamined", "ManufacturerModelName", "ProtocolName")


def _acquisition_extra(ds: Any) -> dict[str, Any]:
    """JSON-ready acquisition facts for sidecars (never patient fields)."""
    out: dict[str, Any] = {}
    for keyword in _NUMERIC_FIELDS:
        value = _float_or(ds, keyword, float("nan"))
        if np.isfinite(value):
            out[keyword] = value
    for keyword in _TEXT_FIELDS:
        text = _text(ds, keyword)
        if text:
            out[keyword] = text
    image_type = ds.get("ImageType", None)
    if image_type:
        out["ImageType"] = (
            [str(v) for v in image_type] if not isinstance(image_type, str) else [image_type]
        )
    return out


def _functional(ds: Any, frame_group: Any, sequence: str, keyword: str) -> Any:
    """Value from the per-frame group, falling back to the shared functional groups."""
    for group in (frame_group, _shared_group(ds)):
        if group is None:
            continue
        seq = group.get(sequence, None)
        if seq:
            value = seq[0].get(keyword, None)
            if value is not None:
                return value
    return None


def _shared_group(ds: Any) -> Any:
    shared = ds.get("SharedFunctionalGroupsSequence", None)
    return shared[0] if shared else None


def _media_text(ds: Any, keyword: str) -> str:
    """A file-meta text element (``MediaStorageSOPInstanceUID``...), "" when absent."""
    meta = getattr(ds, "file_meta", None)
    return str(meta.get(keyword, "") or "").strip() if meta is not None else ""


def read_slice_headers(path: str | Path, *, ds: Any = None) -> list[SliceHeader]:
    """Header records of one DICOM file: one for a single-frame file, one per frame otherwise.

    Every value that decides geometry, pixel layout or intensities is checked (see the
    module docstring); the declared pixel data must fit the file (uncompressed syntaxes)
    and the limits of :mod:`medres.limits`.

    Args:
        path: The file.
        ds: An already-read header data set of ``path`` (saves a second read).

    Returns:
        Slice headers (frames of an enhanced multi-frame object carry their own position).

    Raises:
        NotDicomError, CorruptFileError: Unreadable file or unusable header values (the
            message names the file and the field).
        PixelDecodeError: Unknown transfer syntax, or a compressed one without a decoder.
        UnsupportedDicomError: Not an image, or an image medres cannot place in space
            (Siemens mosaic, multi-frame without per-frame geometry).
    """
    path = Path(path)
    if ds is None:
        ds = read_dataset(path, headers_only=True)
    try:
        with _quiet_pydicom():
            return _slice_headers(path, ds)
    except LoadError:
        raise
    except Exception as exc:  # lazily raised by pydicom: unknown VR, bad lengths...
        raise CorruptFileError(
            f"{path}: damaged DICOM header: {_describe(exc)}; replace the file with a good "
            "copy or re-export the series"
        ) from exc


def _slice_headers(path: Path, ds: Any) -> list[SliceHeader]:
    """The records of :func:`read_slice_headers` (pydicom's warnings already quieted)."""
    _check_is_image(ds, path)
    notes: list[str] = []
    ts = transfer_syntax(ds, path)
    if ts is None:
        guessed = _encoding_syntax(ds)
        if guessed is not None:
            notes.append(
                f"TransferSyntaxUID missing: {guessed.name} assumed from how the header is encoded"
            )
    layout = _pixel_layout(ds, path, notes)
    _check_pixel_budget(path, layout, ts)
    image_type = [str(v).upper() for v in _values(ds.get("ImageType", None))]
    mosaic = read_mosaic_geometry(ds, path) if "MOSAIC" in image_type else None
    common = _common_fields(ds, path, layout)
    top = _TopLevel(
        # some exporters leave the SOP UIDs empty in the data set and keep them in the file meta
        sop_uid=_text(ds, "SOPInstanceUID") or _media_text(ds, "MediaStorageSOPInstanceUID"),
        instance=_int_or_none(ds.get("InstanceNumber", None)),
        spacing=_pixel_spacing(_get(ds, "PixelSpacing", path), "PixelSpacing", path)
        or _pixel_spacing(_get(ds, "ImagerPixelSpacing", path), "ImagerPixelSpacing", path),
        slope=_get(ds, "RescaleSlope", path),
        intercept=_get(ds, "RescaleIntercept", path),
        notes=tuple(notes),
    )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if layout.n_frames > 1 or per_frame:
        if not per_frame or len(per_frame) != layout.n_frames:
            raise UnsupportedDicomError(
                f"{path}: multi-frame object ({layout.n_frames} frames) without per-frame "
                "positions; medres cannot place its frames in space"
            )
        return [
            _frame_header(ds, path, index, group, top, common)
            for index, group in enumerate(per_frame)
        ]
    if mosaic is not None:
        common["extra"] = {**common["extra"], "mosaic": mosaic.as_json()}
    return [_single_header(ds, path, top, common, mosaic)]


def _check_is_image(ds: Any, path: Path) -> None:
    """Refuse objects that are not images; an image that lost Rows/Columns is damaged."""
    reason = non_image_reason(ds)
    if reason == "no image (no Rows/Columns)" and _is_image_storage(ds) and _has_pixel_data(path):
        missing = " and ".join(k for k in ("Rows", "Columns") if k not in ds)
        raise CorruptFileError(
            f"{path}: image with pixel data but no {missing} in its header; the header is "
            "damaged, replace the file with a good copy or re-export the series"
        )
    if reason is not None:
        raise UnsupportedDicomError(f"{path}: not an image: {reason}")


@dataclass(frozen=True)
class _PixelLayout:
    """The checked pixel layout of one file (sizes, bits, samples, frames)."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples: int
    n_frames: int
    photometric: str


def _pixel_layout(ds: Any, path: Path, notes: list[str]) -> _PixelLayout:
    """Rows, Columns, bits, signedness, samples and frames, each in its valid range.

    Appends to ``notes`` what had to be assumed (BitsAllocated missing).
    """
    rows = _int_field(ds, "Rows", path, default=None, allowed=range(1, 65536))
    columns = _int_field(ds, "Columns", path, default=None, allowed=range(1, 65536))
    if rows is None or columns is None:
        raise CorruptFileError(f"{path}: Rows or Columns is empty; {_FIX}")
    bits_allocated = _int_field(ds, "BitsAllocated", path, default=None, allowed=(1, 8, 16, 32, 64))
    if bits_allocated is None:
        bits_allocated = 16
        notes.append("BitsAllocated missing: 16 assumed")
    bits_stored = _int_field(
        ds,
        "BitsStored",
        path,
        default=bits_allocated,
        allowed=range(1, bits_allocated + 1),
        hint="at most BitsAllocated:",
    )
    pixel_representation = _int_field(ds, "PixelRepresentation", path, default=0, allowed=(0, 1))
    samples = _int_field(ds, "SamplesPerPixel", path, default=1, allowed=(1, 3))
    n_frames = _int_field(
        ds,
        "NumberOfFrames",
        path,
        default=1,
        allowed=range(1, MAX_FRAMES + 1),
        hint="medres.io.dicom.MAX_FRAMES:",
    )
    assert bits_stored is not None and pixel_representation is not None  # defaults given
    assert samples is not None and n_frames is not None
    return _PixelLayout(
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=pixel_representation,
        samples=samples,
        n_frames=n_frames,
        photometric=_text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2",
    )


def _check_pixel_budget(path: Path, layout: _PixelLayout, ts: Any) -> None:
    """The declared pixels must be within the voxel limit and (uncompressed) fit the file."""
    rows, columns, n_frames = layout.rows, layout.columns, layout.n_frames
    n_pixels = rows * columns * n_frames
    if n_pixels > MAX_VOXELS:
        raise CorruptFileError(
            f"{path}: header declares {rows} rows x {columns} columns x {n_frames} frame(s) "
            f"= {n_pixels:,} pixels, more than the {MAX_VOXELS:,} medres accepts for one scan "
            "(medres.limits.MAX_VOXELS); the header is probably damaged"
        )
    if ts is None or not (ts.is_compressed or ts.is_deflated):
        declared = _declared_pixel_bytes(
            rows, columns, layout.samples, n_frames, layout.bits_allocated, layout.photometric
        )
        size = _file_size(path)
        if size is not None and declared > size:
            raise CorruptFileError(
                f"{path}: header promises {declared:,} bytes of pixel data ({rows} rows x "
                f"{columns} columns x {layout.samples} sample(s) x {n_frames} frame(s) x "
                f"{layout.bits_allocated} bits) but the file holds {size:,} bytes in all; the "
                "file is truncated or its header is damaged: replace it or re-export the series"
            )


def _common_fields(ds: Any, path: Path, layout: _PixelLayout) -> dict[str, Any]:
    """The :class:`SliceHeader` fields every frame of the file shares (keyword arguments)."""
    return dict(
        path=str(path),
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        sop_class_uid=_text(ds, "SOPClassUID") or _media_text(ds, "MediaStorageSOPClassUID"),
        modality=_text(ds, "Modality").upper(),
        rows=layout.rows,
        columns=layout.columns,
        samples_per_pixel=layout.samples,
        bits_allocated=layout.bits_allocated,
        bits_stored=layout.bits_stored,
        pixel_representation=layout.pixel_representation,
        photometric=layout.photometric,
        has_modality_lut="ModalityLUTSequence" in ds,
        number_of_frames=layout.n_frames,
        series_number=_int_or_none(ds.get("SeriesNumber", None)),
        series_description=_text(ds, "SeriesDescription"),
        study_date=_text(ds, "StudyDate"),
        manufacturer=_text(ds, "Manufacturer"),
        patient=_patient(ds),
        extra=_acquisition_extra(ds),
    )


@dataclass(frozen=True)
class _TopLevel:
    """Top-level values a frame falls back to (raw rescale values, checked per frame)."""

    sop_uid: str
    instance: int | None
    spacing: tuple[float, float] | None
    slope: Any
    intercept: Any
    notes: tuple[str, ...]


def _frame_header(
    ds: Any, path: Path, index: int, group: Any, top: _TopLevel, common: dict[str, Any]
) -> SliceHeader:
    """Frame ``index`` of an enhanced multi-frame object, from its functional groups."""
    where = Path(f"{path} frame {index + 1}")
    spacing = (
        _pixel_spacing(
            _functional(ds, group, "PixelMeasuresSequence", "PixelSpacing"), "PixelSpacing", where
        )
        or top.spacing
    )
    orientation, orientation_notes = _orientation(
        _functional(ds, group, "PlaneOrientationSequence", "ImageOrientationPatient")
        or _get(ds, "ImageOrientationPatient", path),
        where,
    )
    slope_value = _functional(ds, group, "PixelValueTransformationSequence", "RescaleSlope")
    intercept_value = _functional(ds, group, "PixelValueTransformationSequence", "RescaleIntercept")
    slope, intercept = _rescale(
        top.slope if slope_value is None else slope_value,
        top.intercept if intercept_value is None else intercept_value,
        where,
    )
    frame_notes = (*top.notes, *orientation_notes)
    if spacing is None:
        frame_notes = (*frame_notes, PIXEL_SPACING_ASSUMED)
    position = _position(
        _functional(ds, group, "PlanePositionSequence", "ImagePositionPatient"),
        "ImagePositionPatient",
        where,
    )
    content = "FrameContentSequence"
    return SliceHeader(
        frame=index,
        sop_instance_uid=top.sop_uid,
        instance_number=top.instance,
        position_lps=position,
        orientation_lps=orientation,
        pixel_spacing_mm=spacing,
        rescale_slope=slope,
        rescale_intercept=intercept,
        split_keys={
            "TemporalPositionIndex": _int_or_none(
                _functional(ds, group, content, "TemporalPositionIndex")
            ),
            "StackID": str(_functional(ds, group, content, "StackID") or ""),
            "InStackPositionNumber": _int_or_none(
                _functional(ds, group, content, "InStackPositionNumber")
            ),
        },
        warnings=frame_notes,
        **common,
    )


def _single_header(
    ds: Any, path: Path, top: _TopLevel, common: dict[str, Any], mosaic: MosaicGeometry | None
) -> SliceHeader:
    """The one record of a single-frame file (a Siemens mosaic included)."""
    orientation, orientation_notes = _orientation(_get(ds, "ImageOrientationPatient", path), path)
    slope, intercept = _rescale(top.slope, top.intercept, path)
    slice_notes = (*top.notes, *orientation_notes)
    if top.spacing is None:
        slice_notes = (*slice_notes, PIXEL_SPACING_ASSUMED)
    return SliceHeader(
        frame=None,
        sop_instance_uid=top.sop_uid,
        instance_number=top.instance,
        position_lps=_position(
            _get(ds, "ImagePositionPatient", path), "ImagePositionPatient", path
        ),
        orientation_lps=orientation,
        pixel_spacing_mm=top.spacing,
        rescale_slope=slope,
        rescale_intercept=intercept,
        split_keys={
            "TemporalPositionIdentifier": _int_or_none(ds.get("TemporalPositionIdentifier", None)),
            "AcquisitionNumber": _int_or_none(ds.get("AcquisitionNumber", None)),
            "EchoNumbers": _text(ds, "EchoNumbers"),
            "TriggerTime": _text(ds, "TriggerTime"),
            "AcquisitionTime": _text(ds, "AcquisitionTime"),
        },
        warnings=slice_notes,
        mosaic=mosaic,
        **common,
    )
