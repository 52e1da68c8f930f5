"""DICOM headers -> series plans -> :class:`~medres.io.volume.Volume`.

Three steps, each usable on its own:

1. :func:`read_slice_headers` reads one file's header (no pixel data) into
   :class:`SliceHeader` records (one per frame for enhanced multi-frame objects), or raises
   :class:`~medres.errors.UnsupportedDicomError` for objects that are not images (SR, SEG,
   RTSTRUCT, presentation states, DICOMDIR...).
2. :func:`plan_series` sorts slices along the slice normal, checks that they form one
   regular volume (orientation, size, pixel format, spacing, gaps, duplicates) and computes
   the RAS affine, all from headers.
3. :func:`load_dicom_series` decodes the pixels slice by slice straight into the output
   array (one slice in flight, so peak memory is the volume plus one slice), masks unused
   high bits, sign-extends, applies RescaleSlope/Intercept (CT in HU) or a Modality LUT.

Index order and affine follow :mod:`medres.io.volume`: the array is ``(C, x=column,
y=row, z=slice)`` and slice ``k`` is ``plan.slices[k]``; the affine maps to RAS+ mm.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import (
    CorruptFileError,
    DuplicateSlicesError,
    LoadError,
    MixedSeriesError,
    NotDicomError,
    PixelDecodeError,
    SeriesError,
    SliceGapError,
    UnsupportedDicomError,
)
from medres.io.volume import (
    LPS_TO_RAS,
    PatientInfo,
    ScanKind,
    SourceInfo,
    Volume,
    affine_from_dicom,
)
from medres.types import AffineRAS

logger = logging.getLogger(__name__)

#: Modalities that never carry an image to segment.
NON_IMAGE_MODALITIES = {
    "SR": "structured report",
    "PR": "presentation state",
    "KO": "key object selection",
    "RTSTRUCT": "RT structure set (contours, not an image)",
    "RTPLAN": "RT plan",
    "RTRECORD": "RT treatment record",
    "RTDOSE": "RT dose grid (not an image to segment)",
    "SEG": "segmentation object (a label map, not a source image)",
    "REG": "registration object",
    "DOC": "encapsulated document",
    "ECG": "waveform",
}
#: Words in a SOP class name that mark non-image storage.
NON_IMAGE_SOP_WORDS = {
    "SR Storage": "structured report",
    "Presentation State": "presentation state",
    "Structure Set": "RT structure set (contours, not an image)",
    "RT Plan": "RT plan",
    "RT Dose": "RT dose grid (not an image to segment)",
    "Segmentation Storage": "segmentation object (a label map, not a source image)",
    "Waveform": "waveform",
    "Encapsulated": "encapsulated document",
    "Key Object": "key object selection",
    "Raw Data": "raw data",
    "Registration": "registration object",
    "Media Storage Directory": "DICOMDIR index (the images it lists are discovered directly)",
}
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"

#: Two orientation cosines closer than this are the same orientation.
ORIENTATION_TOL = 1e-3
#: Positions along the normal closer than this (mm) are the same slice position.
POSITION_TOL_MM = 1e-2


@dataclass(frozen=True)
class SliceHeader:
    """Header facts of one slice (one file, or one frame of a multi-frame file).

    Positions and directions are DICOM patient coordinates (LPS, mm).
    """

    path: str
    frame: int | None
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    modality: str
    instance_number: int | None
    position_lps: tuple[float, float, float] | None
    orientation_lps: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    rescale_slope: float
    rescale_intercept: float
    has_modality_lut: bool
    number_of_frames: int
    split_keys: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    series_number: int | None = None
    series_description: str = ""
    study_date: str = ""
    manufacturer: str = ""
    patient: PatientInfo = field(default_factory=PatientInfo, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        """Short human name of this slice for error messages."""
        name = Path(self.path).name
        if self.frame is not None:
            name += f" frame {self.frame + 1}"
        if self.instance_number is not None:
            name += f" (instance {self.instance_number})"
        return name

    @property
    def geometry_key(self) -> tuple[Any, ...]:
        """Facts that must agree for slices to stack into one volume."""
        orient = (
            tuple(round(v / ORIENTATION_TOL) for v in self.orientation_lps)
            if self.orientation_lps
            else None
        )
        spacing = (
            tuple(round(v, 3) for v in self.pixel_spacing_mm) if self.pixel_spacing_mm else None
        )
        return (
            self.rows,
            self.columns,
            self.samples_per_pixel,
            self.bits_allocated,
            self.pixel_representation,
            self.photometric,
            orient,
            spacing,
        )


@dataclass(frozen=True)
class SeriesPlan:
    """Sorted, checked slices of one volume and the affine they imply (headers only)."""

    slices: tuple[SliceHeader, ...]
    affine: AffineRAS
    spatial_shape: tuple[int, ...]
    output_dtype: np.dtype[Any]
    samples_per_pixel: int
    gantry_tilt_deg: float = 0.0
    has_geometry: bool = True

    @property
    def first(self) -> SliceHeader:
        """The first slice (lowest position along the slice normal)."""
        return self.slices[0]


# --- reading headers -----------------------------------------------------------------


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    return str(value).strip()


def _float_or(ds: Any, keyword: str, default: float) -> float:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _vector(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n and all(np.isfinite(vals)) else None


def non_image_reason(ds: Any) -> str | None:
    """Why a DICOM data set is not an image medres loads, or ``None`` if it is one.

    Args:
        ds: A pydicom ``Dataset`` (header is enough).

    Returns:
        A short reason such as ``"structured report"``, or None.
    """
    media_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if media_sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        return NON_IMAGE_SOP_WORDS["Media Storage Directory"]
    sop_class = ds.get("SOPClassUID", None) or media_sop
    if sop_class:
        from pydicom.uid import UID

        name = UID(str(sop_class)).name
        for word, reason in NON_IMAGE_SOP_WORDS.items():
            if word in name:
                return reason
    modality = _text(ds, "Modality").upper()
    if modality in NON_IMAGE_MODALITIES:
        return NON_IMAGE_MODALITIES[modality]
    if "Rows" not in ds or "Columns" not in ds:
        return "no image (no Rows/Columns)"
    return None


def sniff_dicom(path: Path) -> bool:
    """True if the file starts with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dataset(path: str | Path, *, headers_only: bool = True) -> Any:
    """Read a DICOM file with pydicom, turning every failure into a medres error.

    Files without the 128-byte preamble (old ACR-NEMA style, "no meta") are accepted when
    they parse into a data set with image or SOP fields.

    Raises:
        NotDicomError: The bytes are not DICOM.
        CorruptFileError: The file is truncated or garbled.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    has_preamble = sniff_dicom(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=not has_preamble)
    except InvalidDicomError as exc:
        raise NotDicomError(f"{path}: not a DICOM file ({exc})") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise CorruptFileError(f"{path}: cannot read DICOM data set: {exc}") from exc
    except Exception as exc:  # pydicom raises assorted errors on garbage bytes
        raise CorruptFileError(f"{path}: cannot read DICOM data set: {exc!r}") from exc
    if not has_preamble:
        try:
            known = [tag in ds for tag in (0x00080016, 0x00280010, 0x00080060, 0x00200013)]
        except Exception as exc:
            raise NotDicomError(f"{path}: not a DICOM file ({exc!r})") from exc
        if not any(known):
            raise NotDicomError(f"{path}: not a DICOM file (no preamble and no DICOM fields)")
    return ds


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

    Args:
        path: The file.
        ds: An already-read header data set of ``path`` (saves a second read).

    Returns:
        Slice headers (frames of an enhanced multi-frame object carry their own position).

    Raises:
        NotDicomError, CorruptFileError: Unreadable file.
        UnsupportedDicomError: Not an image, or an image medres cannot place in space
            (Siemens mosaic, multi-frame without per-frame geometry).
    """
    path = Path(path)
    if ds is None:
        ds = read_dataset(path, headers_only=True)
    reason = non_image_reason(ds)
    if reason is not None:
        raise UnsupportedDicomError(f"{path}: not an image: {reason}")
    image_type = [str(v).upper() for v in (ds.get("ImageType", None) or [])]
    mosaic = _mosaic_geometry(ds, path) if "MOSAIC" in image_type else None
    try:
        rows = int(ds.Rows)
        columns = int(ds.Columns)
        bits_allocated = int(ds.get("BitsAllocated", 16))
        bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
        pixel_representation = int(ds.get("PixelRepresentation", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError, AttributeError) as exc:
        raise CorruptFileError(f"{path}: invalid image pixel description: {exc}") from exc
    if rows <= 0 or columns <= 0:
        raise CorruptFileError(f"{path}: image has {rows} rows and {columns} columns")

    common: dict[str, Any] = dict(
        path=str(path),
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        sop_class_uid=_text(ds, "SOPClassUID") or _media_text(ds, "MediaStorageSOPClassUID"),
        modality=_text(ds, "Modality").upper(),
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=pixel_representation,
        photometric=_text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2",
        has_modality_lut="ModalityLUTSequence" in ds,
        number_of_frames=n_frames,
        series_number=_int_or_none(ds.get("SeriesNumber", None)),
        series_description=_text(ds, "SeriesDescription"),
        study_date=_text(ds, "StudyDate"),
        manufacturer=_text(ds, "Manufacturer"),
        patient=_patient(ds),
        extra=_acquisition_extra(ds),
    )
    # some exporters leave the SOP UIDs empty in the data set and keep them in the file meta
    sop_uid = _text(ds, "SOPInstanceUID") or _media_text(ds, "MediaStorageSOPInstanceUID")
    instance = _int_or_none(ds.get("InstanceNumber", None))

    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if n_frames > 1 or per_frame:
        if not per_frame or len(per_frame) != n_frames:
            raise UnsupportedDicomError(
                f"{path}: multi-frame object ({n_frames} frames) without per-frame positions; "
                "medres cannot place its frames in space"
            )
        headers = []
        for index, group in enumerate(per_frame):
            spacing = _vector(_functional(ds, group, "PixelMeasuresSequence", "PixelSpacing"), 2)
            headers.append(
                SliceHeader(
                    frame=index,
                    sop_instance_uid=sop_uid,
                    instance_number=instance,
                    position_lps=_vector(  # type: ignore[arg-type]
                        _functional(ds, group, "PlanePositionSequence", "ImagePositionPatient"),
                        3,
                    ),
                    orientation_lps=_vector(  # type: ignore[arg-type]
                        _functional(
                            ds, group, "PlaneOrientationSequence", "ImageOrientationPatient"
                        ),
                        6,
                    ),
                    pixel_spacing_mm=spacing,  # type: ignore[arg-type]
                    rescale_slope=float(
                        _functional(ds, group, "PixelValueTransformationSequence", "RescaleSlope")
                        or _float_or(ds, "RescaleSlope", 1.0)
                    ),
                    rescale_intercept=float(
                        _functional(
                            ds, group, "PixelValueTransformationSequence", "RescaleIntercept"
                        )
                        or _float_or(ds, "RescaleIntercept", 0.0)
                    ),
                    split_keys={
                        "TemporalPositionIndex": _int_or_none(
                            _functional(ds, group, "FrameContentSequence", "TemporalPositionIndex")
                        ),
                        "StackID": str(
                            _functional(ds, group, "FrameContentSequence", "StackID") or ""
                        ),
                        "InStackPositionNumber": _int_or_none(
                            _functional(ds, group, "FrameContentSequence", "InStackPositionNumber")
                        ),
                    },
                    **common,
                )
            )
        return headers

    spacing = _vector(ds.get("PixelSpacing", None), 2) or _vector(
        ds.get("ImagerPixelSpacing", None), 2
    )
    if mosaic is not None:
        common["extra"] = {**common["extra"], "mosaic": mosaic}
    return [
        SliceHeader(
            frame=None,
            sop_instance_uid=sop_uid,
            instance_number=instance,
            position_lps=_vector(ds.get("ImagePositionPatient", None), 3),  # type: ignore[arg-type]
            orientation_lps=_vector(ds.get("ImageOrientationPatient", None), 6),  # type: ignore[arg-type]
            pixel_spacing_mm=spacing,  # type: ignore[arg-type]
            rescale_slope=_float_or(ds, "RescaleSlope", 1.0),
            rescale_intercept=_float_or(ds, "RescaleIntercept", 0.0),
            split_keys={
                "TemporalPositionIdentifier": _int_or_none(
                    ds.get("TemporalPositionIdentifier", None)
                ),
                "AcquisitionNumber": _int_or_none(ds.get("AcquisitionNumber", None)),
                "EchoNumbers": _text(ds, "EchoNumbers"),
                "TriggerTime": _text(ds, "TriggerTime"),
                "AcquisitionTime": _text(ds, "AcquisitionTime"),
            },
            **common,
        )
    ]


def _mosaic_geometry(ds: Any, path: Path) -> dict[str, Any]:
    """Shape and LPS affine of a Siemens mosaic, from its CSA header (nibabel's reader)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel.nicom warns on import that it is young
            from nibabel.nicom import dicomwrappers

            wrapper = dicomwrappers.wrapper_from_data(ds)
            if not isinstance(wrapper, dicomwrappers.MosaicWrapper):
                raise UnsupportedDicomError(
                    f"{path}: mosaic image without the Siemens CSA header needed to untile it"
                )
            shape = tuple(int(v) for v in wrapper.image_shape)
            affine_lps = np.asarray(wrapper.affine, dtype=np.float64)
    except UnsupportedDicomError:
        raise
    except Exception as exc:
        raise UnsupportedDicomError(
            f"{path}: cannot read the Siemens mosaic layout: {exc}"
        ) from exc
    return {"shape": shape, "affine_lps": affine_lps.tolist(), "n_images": shape[2]}


def _load_mosaic(s: SliceHeader, out_dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Untile a Siemens mosaic into ``(x, y, z)`` (nibabel's MosaicWrapper does the layout)."""
    ds = read_dataset(s.path, headers_only=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nibabel.nicom import dicomwrappers

            wrapper = dicomwrappers.wrapper_from_data(ds)
            data = np.asarray(wrapper.get_data())
    except Exception as exc:
        raise PixelDecodeError(f"{s.path}: cannot decode the mosaic pixel data: {exc}") from exc
    if data.dtype.kind in "iu":
        data = _fix_bits(data.astype(data.dtype.newbyteorder("=")), s)
    return data.astype(out_dtype, copy=False)


# --- planning ------------------------------------------------------------------------


def slice_normal(orientation_lps: Sequence[float]) -> npt.NDArray[np.float64]:
    """Unit normal (row direction x column direction) of a DICOM ImageOrientationPatient."""
    row = np.asarray(orientation_lps[:3], dtype=np.float64)
    col = np.asarray(orientation_lps[3:], dtype=np.float64)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else normal


def _series_name(slices: Sequence[SliceHeader]) -> str:
    first = slices[0]
    desc = f" '{first.series_description}'" if first.series_description else ""
    uid = first.series_uid or "(no SeriesInstanceUID)"
    return f"series {uid}{desc}"


def _list_labels(slices: Iterable[SliceHeader], limit: int = 6) -> str:
    labels = [s.label for s in slices]
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


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


def plan_series(slices: Sequence[SliceHeader], *, max_tilt_deg: float = 45.0) -> SeriesPlan:
    """Sort slices along their normal, check they form one regular volume, compute the affine.

    Args:
        slices: Headers of one series (one volume; see :func:`split_volumes` for several).
        max_tilt_deg: Largest angle between the slice step and the slice normal accepted
            (gantry tilt). The affine then carries the shear exactly.

    Returns:
        The plan: sorted slices, RAS affine, spatial shape ``(x, y, z)`` (or ``(x, y)`` for a
        single slice without position), output dtype.

    Raises:
        MixedSeriesError: Slices differ in size, orientation, spacing or pixel format.
        DuplicateSlicesError: Two slices share one position.
        SliceGapError: Missing slices or irregular spacing.
        SeriesError: Slices without position/orientation that would need stacking.
    """
    if not slices:
        raise SeriesError("empty series: no slices to load")
    name = _series_name(slices)
    _check_consistent(slices)
    first = slices[0]
    dtype = choose_output_dtype(slices)
    spacing = first.pixel_spacing_mm or (1.0, 1.0)
    mosaic = first.extra.get("mosaic")
    if mosaic is not None:
        if len(slices) > 1:
            raise MixedSeriesError(
                f"{name}: {len(slices)} mosaic files are separate volumes; load them one by one"
            )
        return SeriesPlan(
            slices=tuple(slices),
            affine=LPS_TO_RAS @ np.asarray(mosaic["affine_lps"]),
            spatial_shape=tuple(mosaic["shape"]),
            output_dtype=dtype,
            samples_per_pixel=1,
        )

    if (
        first.position_lps is None
        or first.orientation_lps is None
        or any(s.position_lps is None or s.orientation_lps is None for s in slices)
    ):
        if len(slices) > 1:
            raise SeriesError(
                f"{name}: {len(slices)} slices without ImagePositionPatient/"
                "ImageOrientationPatient cannot be stacked into a volume"
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
        )

    normal = slice_normal(first.orientation_lps)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise SeriesError(f"{name}: ImageOrientationPatient {first.orientation_lps} is degenerate")
    distance = np.array([np.dot(normal, s.position_lps) for s in slices])  # type: ignore[arg-type]
    order = np.argsort(distance, kind="stable")
    ordered = [slices[i] for i in order]
    distance = distance[order]
    steps = np.diff(distance)

    if len(ordered) > 1:
        dup = np.flatnonzero(steps < POSITION_TOL_MM)
        if dup.size:
            pairs = [(ordered[i], ordered[i + 1]) for i in dup[:3]]
            shown = "; ".join(f"{a.label} and {b.label}" for a, b in pairs)
            raise DuplicateSlicesError(
                f"{name}: {dup.size} slice position(s) occur more than once ({shown}) and the "
                "slices cannot be split into volumes by time point, echo or acquisition"
            )
        median = float(np.median(steps))
        gaps = np.flatnonzero(steps > 1.5 * median)
        if gaps.size:
            i = int(gaps[0])
            missing = round(float(steps[i]) / median) - 1
            raise SliceGapError(
                f"{name}: slice gap {steps[i]:.2f} mm where {median:.2f} mm expected between "
                f"{ordered[i].label} and {ordered[i + 1].label} "
                f"(about {missing} slice(s) missing, {gaps.size} gap(s) in all); "
                "re-export the complete series"
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
        step = (p1 - p0) / (len(ordered) - 1)
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
    else:
        thickness = first.extra.get("SpacingBetweenSlices") or first.extra.get("SliceThickness")
        step = normal * float(thickness or 1.0)

    cos_tilt = abs(float(np.dot(step, normal))) / max(float(np.linalg.norm(step)), 1e-12)
    tilt = float(np.degrees(np.arccos(min(1.0, cos_tilt))))
    if tilt > max_tilt_deg:
        raise SeriesError(
            f"{name}: slices are stacked {tilt:.1f} degrees off their normal; "
            "this is not a slice stack medres can place"
        )
    if tilt > 0.01:
        logger.warning("%s: gantry tilt %.2f degrees kept as a sheared affine", name, tilt)
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
    )


# --- splitting one series into volumes --------------------------------------------------


def _position_key(s: SliceHeader) -> tuple[int, ...] | None:
    if s.position_lps is None or s.orientation_lps is None:
        return None
    d = float(np.dot(slice_normal(s.orientation_lps), s.position_lps))
    return (round(d / POSITION_TOL_MM),)


def split_volumes(slices: Sequence[SliceHeader]) -> list[tuple[str, list[SliceHeader]]]:
    """Split the slices of one series into volumes.

    Slices first split by geometry (size, orientation, spacing, pixel format). When a group
    holds several slices per position (fMRI time points, echoes, repeated acquisitions), it
    splits by the first of TemporalPositionIdentifier / TemporalPositionIndex, EchoNumbers,
    AcquisitionNumber, TriggerTime that gives every part one slice per position; failing
    that, by the rank of InstanceNumber at each position when every position has the same
    count. Otherwise the group stays whole (and loading it reports the duplicates).

    Returns:
        ``(part_label, slices)`` pairs; ``part_label`` is ``""`` when nothing was split.
    """
    by_geometry: dict[tuple[Any, ...], list[SliceHeader]] = defaultdict(list)
    for s in slices:
        if s.position_lps is None and s.frame is None:
            # images without geometry never stack: one volume each
            key = s.geometry_key + (s.path,)  # noqa: RUF005 (star-unpack in [] needs 3.11)
            by_geometry[key].append(s)
        else:
            by_geometry[s.geometry_key].append(s)
    parts: list[tuple[str, list[SliceHeader]]] = []
    geo_groups = list(by_geometry.values())
    for g_index, group in enumerate(geo_groups):
        prefix = f"g{g_index + 1}" if len(geo_groups) > 1 else ""
        for label, volume in _split_by_time(group):
            parts.append(("_".join(p for p in (prefix, label) if p), volume))
    return parts


def _split_by_time(group: list[SliceHeader]) -> list[tuple[str, list[SliceHeader]]]:
    positions: dict[Any, list[SliceHeader]] = defaultdict(list)
    for s in group:
        positions[_position_key(s)].append(s)
    if None in positions or max(len(v) for v in positions.values()) == 1:
        return [("", group)]
    n_positions = len(positions)
    for key in (
        "TemporalPositionIdentifier",
        "TemporalPositionIndex",
        "EchoNumbers",
        "AcquisitionNumber",
        "TriggerTime",
        "StackID",
    ):
        values = [s.split_keys.get(key) for s in group]
        if any(v is None or v == "" for v in values):
            continue
        buckets: dict[Any, list[SliceHeader]] = defaultdict(list)
        for s, v in zip(group, values, strict=True):
            buckets[v].append(s)
        if len(buckets) > 1 and all(
            len(b) == n_positions and len({_position_key(s) for s in b}) == n_positions
            for b in buckets.values()
        ):
            ordered = sorted(buckets.items(), key=lambda kv: _sortable(kv[0]))
            return [(f"{_short(key)}{i + 1}", b) for i, (_, b) in enumerate(ordered)]
    counts = Counter(len(v) for v in positions.values())
    if len(counts) == 1:
        n_time = next(iter(counts))
        volumes: list[list[SliceHeader]] = [[] for _ in range(n_time)]
        for members in positions.values():
            ranked = sorted(
                members,
                key=lambda s: (
                    s.instance_number if s.instance_number is not None else 0,
                    s.split_keys.get("AcquisitionTime") or "",
                    s.path,
                    s.frame or 0,
                ),
            )
            for t, s in enumerate(ranked):
                volumes[t].append(s)
        return [(f"t{t + 1}", v) for t, v in enumerate(volumes)]
    return [("", group)]


def _short(key: str) -> str:
    return {
        "TemporalPositionIdentifier": "t",
        "TemporalPositionIndex": "t",
        "EchoNumbers": "echo",
        "AcquisitionNumber": "acq",
        "TriggerTime": "trig",
        "StackID": "stack",
    }[key]


def _sortable(value: Any) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


# --- decoding pixels -------------------------------------------------------------------


def _fix_bits(arr: npt.NDArray[Any], s: SliceHeader) -> npt.NDArray[Any]:
    """Mask bits above BitsStored and sign-extend signed values (12-bit data and the like)."""
    if arr.dtype.kind not in "iu" or s.bits_stored >= arr.dtype.itemsize * 8:
        return arr
    bits = s.bits_stored
    unsigned = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    masked = unsigned & np.array((1 << bits) - 1, dtype=unsigned.dtype)
    if not s.pixel_representation:
        result: npt.NDArray[Any] = masked
        return result
    signed: npt.NDArray[np.int64] = masked.astype(np.int64)
    signed[signed >= (1 << (bits - 1))] -= 1 << bits
    return signed


def _native_monochrome(ds: Any, ts: Any) -> npt.NDArray[Any] | None:
    """Uncompressed single-frame greyscale pixels read straight from the bytes (a view).

    The common CT/MR case; skips pydicom's generic decoder set-up, which costs more than
    the copy for small slices. Anything unusual returns None and takes pydicom's path.
    """
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if (
        bits not in (8, 16, 32)
        or int(ds.get("SamplesPerPixel", 1) or 1) != 1
        or int(ds.get("NumberOfFrames", 1) or 1) != 1
        or not str(ds.get("PhotometricInterpretation", "")).upper().startswith("MONOCHROME")
        or ts.is_deflated
    ):
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    kind = "i" if int(ds.get("PixelRepresentation", 0) or 0) else "u"
    order = "<" if ts.is_little_endian else ">"
    dtype = np.dtype(f"{order}{kind}{bits // 8}")
    arr = np.frombuffer(ds.PixelData, dtype=dtype, count=rows * columns).reshape(rows, columns)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def decode_pixels(ds: Any, path: str | Path) -> npt.NDArray[Any]:
    """Decoded stored pixel values of a full data set: ``(rows, cols[, samples])`` or with a
    leading frame axis. Colour data comes back as RGB; palette colour is expanded to RGB.

    Raises:
        CorruptFileError: Pixel data missing or shorter than the header promises.
        PixelDecodeError: The compressed stream could not be decoded.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise CorruptFileError(f"{path}: no pixel data in the file (truncated?)")
    ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if ts is not None and not ts.is_compressed and "PixelData" in ds:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422":
            samples = 2  # chroma subsampled horizontally: 2 values per pixel on average
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * samples
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.get("BitsAllocated", 16))
            + 7
        ) // 8
        got = len(ds.PixelData)
        if got < expected:
            raise CorruptFileError(
                f"{path}: pixel data truncated: {got} bytes where {expected} expected"
            )
        fast = _native_monochrome(ds, ts)
        if fast is not None:
            return fast
    try:
        arr = ds.pixel_array
    except Exception as exc:
        ts_name = ts.name if ts is not None else "unknown transfer syntax"
        raise PixelDecodeError(
            f"{path}: cannot decode pixel data ({ts_name}): {exc}".rstrip()
        ) from exc
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise PixelDecodeError(f"{path}: cannot apply the palette colour table: {exc}") from exc
    return arr  # type: ignore[no-any-return]


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
        CT in Hounsfield units, the source UIDs in slice order and patient fields apart.

    Raises:
        LoadError: A precise subclass naming the file or series and the problem.

    Example:
        >>> vol = load_dicom_series(sorted(Path("sample_data/ct_phantom_dicom").iterdir()))
        ... # doctest: +SKIP
    """
    if isinstance(source, SeriesPlan):
        plan = source
    else:
        headers: list[SliceHeader] = []
        for p in source:
            headers.extend(read_slice_headers(p))
        parts = split_volumes(headers)
        if len(parts) > 1:
            raise MixedSeriesError(
                f"{_series_name(headers)}: the {len(source)} files hold {len(parts)} volumes "
                f"({', '.join(label for label, _ in parts)}); load them one by one "
                "(medres.io.discover splits them)"
            )
        plan = plan_series(headers)

    first = plan.first
    samples = plan.samples_per_pixel
    color = samples > 1 or first.photometric == "PALETTE COLOR"
    n_channels = 3 if color else 1
    # Filled slice by slice in (C, z, y, x) memory order so each slice is one contiguous
    # write; the Volume gets the (C, x, y, z) view of it (NIfTI's own on-disk order).
    out = np.empty((n_channels, *plan.spatial_shape[::-1]), dtype=plan.output_dtype)
    total = len(plan.slices)
    cache: dict[str, npt.NDArray[Any]] = {}  # multi-frame files: decode once
    if "mosaic" in first.extra:
        out[0] = _load_mosaic(first, plan.output_dtype).T
    for k, s in enumerate(plan.slices if "mosaic" not in first.extra else ()):
        if s.frame is None:
            ds = read_dataset(s.path, headers_only=False)
            arr = decode_pixels(ds, s.path)
        else:
            if s.path not in cache:
                cache.clear()
                ds = read_dataset(s.path, headers_only=False)
                cache[s.path] = decode_pixels(ds, s.path)
            else:
                ds = None
            arr = cache[s.path][s.frame]
        expected = (s.rows, s.columns, 3) if color else (s.rows, s.columns)
        if arr.shape != expected:
            raise CorruptFileError(
                f"{s.path}: decoded pixels have shape {arr.shape}, header says {expected}"
            )
        if color:
            # (rows, cols, 3) -> (3, x=cols, y=rows)
            out_slice = np.moveaxis(arr, -1, 0)  # (rows, cols, 3) -> (3, y=rows, x=cols)
        else:
            values = _fix_bits(arr, s)
            if s.has_modality_lut and ds is not None:
                from pydicom.pixels.processing import apply_modality_lut

                values = apply_modality_lut(values, ds)
            elif s.rescale_slope != 1.0 or s.rescale_intercept != 0.0:
                if plan.output_dtype.kind == "f":
                    values = values.astype(np.float32) * np.float32(s.rescale_slope) + np.float32(
                        s.rescale_intercept
                    )
                else:
                    values = values.astype(plan.output_dtype) + plan.output_dtype.type(
                        int(s.rescale_intercept)
                    )
            out_slice = values[None]
        if out.ndim == 4:
            out[:, k] = out_slice
        else:
            out[...] = out_slice
        if on_progress is not None:
            on_progress(k + 1, total)

    extra = dict(first.extra)
    extra["has_patient_geometry"] = plan.has_geometry
    if plan.gantry_tilt_deg:
        extra["gantry_tilt_deg"] = plan.gantry_tilt_deg
    source_info = SourceInfo(
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
    return Volume(
        array=out.transpose(0, *range(out.ndim - 1, 0, -1)),
        affine=plan.affine,
        modality=first.modality,
        source=source_info,
        patient=first.patient,
        channel_names=("R", "G", "B") if color else (),
    )


__all__ = [
    "LoadError",
    "SeriesPlan",
    "SliceHeader",
    "choose_output_dtype",
    "decode_pixels",
    "load_dicom_series",
    "non_image_reason",
    "plan_series",
    "read_dataset",
    "read_slice_headers",
    "split_volumes",
]
