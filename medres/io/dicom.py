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

Every header value is distrusted (``docs/user-guide.md``, "Hostile input"): sizes,
spacing, orientation, position and rescale values must parse, be finite, lie in physical
ranges and agree with the bytes in the file before anything is allocated. A value that is
present but unusable is refused with a :class:`~medres.errors.LoadError` naming the file
and the field; a value that is absent takes the standard default, and the defaults that
change physical sizes (pixel spacing, slice thickness) are recorded in
``SeriesPlan.warnings`` / ``Volume.warnings``. Any exception pydicom raises while a field
is read (an unknown value representation after a flipped byte, say) ends as one
:class:`~medres.errors.CorruptFileError` naming the file.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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
from medres.limits import (
    MAX_DICOM_FILE_BYTES,
    MAX_SLICES,
    MAX_VOXELS,
    check_allocation,
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

#: Two orientation cosines closer than this are the same orientation. It is also how far
#: the two ImageOrientationPatient vectors may be from unit length (and their cosine from
#: 0) to be used exactly as written: the rounding of 4 or more printed decimals.
ORIENTATION_TOL = 1e-3
#: ImageOrientationPatient vectors off unit length or perpendicularity by more than
#: ORIENTATION_TOL but at most this (2-3 printed decimals) are normalised, with a warning;
#: beyond it the file is refused: a vector of length 2 would scale the image (and every
#: lesion volume) by 2 along that axis. dcm2niix likewise accepts small rounding only.
ORIENTATION_REPAIR_TOL = 1e-2
#: Positions along the normal closer than this (mm) are the same slice position.
POSITION_TOL_MM = 1e-2
#: Largest NumberOfFrames accepted in one file.
MAX_FRAMES = MAX_SLICES
#: Accepted RescaleSlope range (a slope of 0, a negative one or 1e30 is a damaged header).
RESCALE_SLOPE_RANGE = (1e-8, 1e4)
#: Largest accepted |RescaleIntercept|.
MAX_RESCALE_INTERCEPT = 1e6
#: Largest accepted pixel size (mm); PixelSpacing values must be > 0 and at most this.
MAX_PIXEL_SPACING_MM = 1e3
#: Largest accepted |ImagePositionPatient| coordinate (mm, 1 km).
MAX_POSITION_MM = 1e6
#: Largest accepted slice thickness / spacing between slices of a single slice (mm).
MAX_SLICE_THICKNESS_MM = 1e3
#: The warning recorded when neither PixelSpacing nor ImagerPixelSpacing is present.
PIXEL_SPACING_ASSUMED = "PixelSpacing missing: 1 mm assumed; sizes in mm are not physical"
#: The warning recorded when a single slice has no usable thickness.
SLICE_THICKNESS_ASSUMED = (
    "SliceThickness and SpacingBetweenSlices missing: 1 mm assumed for the single slice; "
    "volumes in ml are not physical"
)
_MAX_WARNINGS = 5


@dataclass(frozen=True)
class SliceHeader:
    """Header facts of one slice (one file, or one frame of a multi-frame file).

    Positions and directions are DICOM patient coordinates (LPS, mm). ``warnings`` lists
    what reading the header had to assume (a default pixel spacing...).
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
    warnings: tuple[str, ...] = field(default=(), compare=False)

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
    """Sorted, checked slices of one volume and the affine they imply (headers only).

    ``warnings`` lists the values that had to be assumed (a default pixel spacing...);
    the loaded :class:`Volume` repeats them.
    """

    slices: tuple[SliceHeader, ...]
    affine: AffineRAS
    spatial_shape: tuple[int, ...]
    output_dtype: np.dtype[Any]
    samples_per_pixel: int
    gantry_tilt_deg: float = 0.0
    has_geometry: bool = True
    warnings: tuple[str, ...] = ()

    @property
    def first(self) -> SliceHeader:
        """The first slice (lowest position along the slice normal)."""
        return self.slices[0]


# --- distrusting header values ----------------------------------------------------------


def one_line(text: str, *, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def _describe(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, on one line."""
    message = one_line(str(exc), limit=200)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings about odd values go to the debug log, not to the user's console.

    medres checks the values itself and refuses the ones it cannot use, naming the file.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        logger.debug("pydicom: %s", one_line(str(item.message)))


def regular_file_problem(path: str | Path) -> str | None:
    """Why ``path`` must not be opened as a scan file, or None when it may be.

    Follows links (``os.stat``); never opens the file, so a FIFO, a device such as
    ``/dev/zero`` or a socket cannot hang or flood the reader.

    Example:
        >>> regular_file_problem("/dev/null")
        'not a regular file (character device)'
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken link or vanished file (no such file)"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    kind = (
        "folder"
        if stat.S_ISDIR(mode)
        else "FIFO"
        if stat.S_ISFIFO(mode)
        else "character device"
        if stat.S_ISCHR(mode)
        else "block device"
        if stat.S_ISBLK(mode)
        else "socket"
        if stat.S_ISSOCK(mode)
        else "special file"
    )
    return f"not a regular file ({kind})"


def _file_size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _get(ds: Any, keyword: str, path: Path) -> Any:
    """``ds.get(keyword)``; a value pydicom cannot convert is a damaged header."""
    try:
        return ds.get(keyword, None)
    except Exception as exc:
        raise CorruptFileError(
            f"{path}: {keyword} cannot be read ({_describe(exc)}); the header is damaged, "
            "replace the file with a good copy or re-export the series"
        ) from exc


def _values(value: Any) -> list[Any]:
    """The individual values of an element value (a backslash-separated string included)."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if isinstance(value, str):
        text = value.strip(" \x00")
        return [v.strip(" \x00") for v in text.split("\\")] if text else []
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def _show(value: Any) -> str:
    """A header value as the user would read it in a DICOM dump (short)."""
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value)[:40].decode("latin-1")
    elif isinstance(value, str):
        text = value
    elif isinstance(value, Sequence):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text.replace("\x00", ""))
    return f"'{text}'" if len(text) <= 40 else f"'{text[:37]}...'"


def _as_float(value: Any) -> float:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if isinstance(value, str):
        value = value.strip(" \x00")
    return float(value)


_FIX = "fix the header or re-export the file"


def _numbers(value: Any, n: int, keyword: str, path: Path) -> tuple[float, ...] | None:
    """Exactly ``n`` finite numbers, or None when the element is absent or empty.

    Raises:
        CorruptFileError: Present but with another count, unparsable or not finite.
    """
    items = _values(value)
    if not items:
        return None
    if len(items) != n:
        raise CorruptFileError(
            f"{path}: {keyword} {_show(value)} has {len(items)} value(s) where {n} are "
            f"required; {_FIX}"
        )
    try:
        numbers = tuple(_as_float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: {keyword} {_show(value)} is not a number; {_FIX}") from exc
    if not all(math.isfinite(v) for v in numbers):
        raise CorruptFileError(f"{path}: {keyword} {_show(value)} is not finite; {_FIX}")
    return numbers


def _int_field(
    ds: Any,
    keyword: str,
    path: Path,
    *,
    default: int | None,
    allowed: Iterable[int] | range,
    hint: str = "",
) -> int | None:
    """A whole-number header field inside ``allowed``; ``default`` when absent."""
    value = _get(ds, keyword, path)
    items = _values(value)
    if not items:
        return default
    try:
        if len(items) != 1:
            raise ValueError(f"{len(items)} values")
        number = _as_float(items[0])
        if not number.is_integer():
            raise ValueError("not whole")
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptFileError(
            f"{path}: {keyword} {_show(value)} is not a whole number; {_FIX}"
        ) from exc
    result = int(number)
    allowed_values = allowed if isinstance(allowed, range) else set(allowed)
    if result not in allowed_values:
        expected = (
            f"{allowed.start}..{allowed.stop - 1}"
            if isinstance(allowed, range)
            else ", ".join(str(v) for v in sorted(allowed_values))
        )
        raise CorruptFileError(
            f"{path}: {keyword} {result} is not a valid value ({hint or 'expected'} "
            f"{expected}); {_FIX}"
        )
    return result


def _pixel_spacing(value: Any, keyword: str, path: Path) -> tuple[float, float] | None:
    numbers = _numbers(value, 2, keyword, path)
    if numbers is None:
        return None
    if not all(0.0 < v <= MAX_PIXEL_SPACING_MM for v in numbers):
        raise CorruptFileError(
            f"{path}: {keyword} {_show(value)} is not two pixel sizes in mm "
            f"(each > 0 and at most {MAX_PIXEL_SPACING_MM:g}); a zero or negative pixel size "
            f"has no physical meaning; {_FIX}"
        )
    return (numbers[0], numbers[1])


def _orientation(
    value: Any, path: Path
) -> tuple[tuple[float, float, float, float, float, float] | None, tuple[str, ...]]:
    """ImageOrientationPatient as two unit vectors, and the warning when it was normalised.

    Tolerances: :data:`ORIENTATION_TOL` (used as written), :data:`ORIENTATION_REPAIR_TOL`
    (normalised with a warning), refused beyond.
    """
    numbers = _numbers(value, 6, "ImageOrientationPatient", path)
    if numbers is None:
        return None, ()
    row = np.asarray(numbers[:3], dtype=np.float64)
    col = np.asarray(numbers[3:], dtype=np.float64)
    n_row, n_col = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    cosine = float(np.dot(row, col)) / (n_row * n_col) if n_row > 0 and n_col > 0 else 0.0
    off = max(abs(n_row - 1.0), abs(n_col - 1.0))
    facts = f"lengths {n_row:.4g} and {n_col:.4g}, cosine {cosine:.3g} between them"
    if off > ORIENTATION_REPAIR_TOL or abs(cosine) > ORIENTATION_REPAIR_TOL:
        raise CorruptFileError(
            f"{path}: ImageOrientationPatient {_show(value)} is not two perpendicular unit "
            f"vectors ({facts}); medres does not guess the geometry (a scaled vector would "
            f"scale the image); {_FIX}"
        )
    if off <= ORIENTATION_TOL and abs(cosine) <= ORIENTATION_TOL:
        return numbers, ()  # type: ignore[return-value]
    row = row / n_row
    col = col - float(np.dot(col, row)) * row
    col = col / float(np.linalg.norm(col))
    fixed = tuple(float(v) for v in (*row, *col))
    note = (
        f"ImageOrientationPatient {_show(value)} was not two perpendicular unit vectors "
        f"({facts}): normalised"
    )
    return fixed, (note,)  # type: ignore[return-value]


def _position(value: Any, keyword: str, path: Path) -> tuple[float, float, float] | None:
    numbers = _numbers(value, 3, keyword, path)
    if numbers is None:
        return None
    if not all(abs(v) <= MAX_POSITION_MM for v in numbers):
        raise CorruptFileError(
            f"{path}: {keyword} {_show(value)} lies more than {MAX_POSITION_MM:g} mm from "
            f"the origin; {_FIX}"
        )
    return (numbers[0], numbers[1], numbers[2])


def _rescale(slope_value: Any, intercept_value: Any, path: Path) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept: (1, 0) when absent, refused when unusable."""
    slope_numbers = _numbers(slope_value, 1, "RescaleSlope", path)
    intercept_numbers = _numbers(intercept_value, 1, "RescaleIntercept", path)
    slope = slope_numbers[0] if slope_numbers else 1.0
    intercept = intercept_numbers[0] if intercept_numbers else 0.0
    lo, hi = RESCALE_SLOPE_RANGE
    if not lo <= slope <= hi:
        raise CorruptFileError(
            f"{path}: RescaleSlope {_show(slope_value)} is not a usable scale factor "
            f"(a positive number from {lo:g} to {hi:g} is expected); {_FIX}"
        )
    if abs(intercept) > MAX_RESCALE_INTERCEPT:
        raise CorruptFileError(
            f"{path}: RescaleIntercept {_show(intercept_value)} is not a usable offset "
            f"(at most {MAX_RESCALE_INTERCEPT:g} in magnitude is expected); {_FIX}"
        )
    return slope, intercept


def transfer_syntax(ds: Any, path: str | Path) -> Any:
    """The data set's transfer syntax UID (None for files without file meta), checked.

    Raises:
        PixelDecodeError: The UID is not a transfer syntax pydicom knows, or it is a
            compressed syntax no installed decoder reads.
    """
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    raw = meta.get("TransferSyntaxUID", None) if meta is not None else None
    text = str(raw or "").strip(" \x00")
    if not text:
        return None
    uid = UID(text)
    if not uid.is_transfer_syntax:
        raise PixelDecodeError(
            f"{path}: unknown transfer syntax UID {_show(text)} (0002,0010); medres cannot "
            "tell how the pixel data are encoded; re-export the file with a standard transfer "
            "syntax (e.g. Explicit VR Little Endian)"
        )
    if uid.is_compressed:
        from pydicom.pixels.decoders.base import get_decoder

        try:
            available = bool(get_decoder(uid).is_available)
        except NotImplementedError:
            available = False
        if not available:
            raise PixelDecodeError(
                f"{path}: pixel data compressed as {uid.name} ({uid}), which no installed "
                "decoder reads; install the pylibjpeg plugins (see the README) or re-export "
                "the series uncompressed"
            )
    return uid


def _encoding_syntax(ds: Any) -> Any:
    """The native transfer syntax matching how pydicom found the data set encoded."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _declared_pixel_bytes(
    rows: int, columns: int, samples: int, frames: int, bits: int, photometric: str
) -> int:
    """Bytes of uncompressed pixel data a header promises (YBR_FULL_422 is subsampled)."""
    if photometric == "YBR_FULL_422":
        samples = 2  # chroma subsampled horizontally: 2 values per pixel on average
    return (rows * columns * samples * frames * bits + 7) // 8


# --- reading headers -----------------------------------------------------------------


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    return str(value).strip()


def _float_or(ds: Any, keyword: str, default: float) -> float:
    """A lenient number for descriptive fields only (sidecar facts, never geometry)."""
    try:
        value = ds.get(keyword, None)
        if value is None or value == "":
            return default
        return float(value)
    except Exception:
        return default


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _is_image_storage(ds: Any) -> bool:
    from pydicom.uid import UID

    media_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    sop_class = str(ds.get("SOPClassUID", None) or media_sop).strip(" \x00")
    return bool(sop_class) and "Image Storage" in UID(sop_class).name


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
    """True if the file starts with the DICOM preamble (``DICM`` at byte 128).

    Only regular files are opened (a FIFO would block).
    """
    if regular_file_problem(path) is not None:
        return False
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dataset(path: str | Path, *, headers_only: bool = True) -> Any:
    """Read a DICOM file with pydicom, turning every failure into a medres error.

    Files without the 128-byte preamble (old ACR-NEMA style, "no meta") are accepted when
    they parse into a data set with image or SOP fields. Only regular files of at most
    :data:`~medres.limits.MAX_DICOM_FILE_BYTES` are opened; a full read (pixels included)
    must also fit the memory budget.

    Raises:
        NotDicomError: The bytes are not DICOM, or the path is not a regular file.
        CorruptFileError: The file is truncated or garbled.
        UnsupportedDicomError: The file is larger than medres reads.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    problem = regular_file_problem(path)
    if problem is not None:
        raise NotDicomError(f"{path}: {problem}; not read")
    size = _file_size(path) or 0
    if size > MAX_DICOM_FILE_BYTES:
        raise UnsupportedDicomError(
            f"{path}: {size / 2**30:.1f} GiB file, larger than the "
            f"{MAX_DICOM_FILE_BYTES / 2**30:.1f} GiB medres reads as one DICOM file "
            "(medres.limits.MAX_DICOM_FILE_BYTES); not read"
        )
    if not headers_only:
        too_big = check_allocation(f"reading {path}", size)
        if too_big is not None:
            raise UnsupportedDicomError(f"{path}: {too_big}")
    has_preamble = sniff_dicom(path)
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=not has_preamble)
    except InvalidDicomError as exc:
        raise NotDicomError(f"{path}: not a DICOM file ({one_line(str(exc))})") from exc
    except MemoryError as exc:
        raise CorruptFileError(
            f"{path}: cannot read DICOM data set: an element length asks for more memory than "
            "there is; the file is damaged"
        ) from exc
    except Exception as exc:  # pydicom raises assorted errors on garbage bytes
        raise CorruptFileError(f"{path}: cannot read DICOM data set: {_describe(exc)}") from exc
    if not has_preamble:
        try:
            known = [tag in ds for tag in (0x00080016, 0x00280010, 0x00080060, 0x00200013)]
        except Exception as exc:
            raise NotDicomError(f"{path}: not a DICOM file ({_describe(exc)})") from exc
        if not any(known):
            raise NotDicomError(f"{path}: not a DICOM file (no preamble and no DICOM fields)")
    return ds


def _has_pixel_data(path: Path) -> bool:
    """Whether the file holds a pixel data element (large values are not read)."""
    import pydicom

    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path, defer_size=256, force=True)
        return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:
        return False


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
    reason = non_image_reason(ds)
    if reason == "no image (no Rows/Columns)" and _is_image_storage(ds) and _has_pixel_data(path):
        missing = " and ".join(k for k in ("Rows", "Columns") if k not in ds)
        raise CorruptFileError(
            f"{path}: image with pixel data but no {missing} in its header; the header is "
            "damaged, replace the file with a good copy or re-export the series"
        )
    if reason is not None:
        raise UnsupportedDicomError(f"{path}: not an image: {reason}")
    notes: list[str] = []
    ts = transfer_syntax(ds, path)
    if ts is None:
        guessed = _encoding_syntax(ds)
        if guessed is not None:
            notes.append(
                f"TransferSyntaxUID missing: {guessed.name} assumed from how the header is encoded"
            )
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
    photometric = _text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2"
    n_pixels = rows * columns * n_frames
    if n_pixels > MAX_VOXELS:
        raise CorruptFileError(
            f"{path}: header declares {rows} rows x {columns} columns x {n_frames} frame(s) "
            f"= {n_pixels:,} pixels, more than the {MAX_VOXELS:,} medres accepts for one scan "
            "(medres.limits.MAX_VOXELS); the header is probably damaged"
        )
    if ts is None or not (ts.is_compressed or ts.is_deflated):
        declared = _declared_pixel_bytes(
            rows, columns, samples, n_frames, bits_allocated, photometric
        )
        size = _file_size(path)
        if size is not None and declared > size:
            raise CorruptFileError(
                f"{path}: header promises {declared:,} bytes of pixel data ({rows} rows x "
                f"{columns} columns x {samples} sample(s) x {n_frames} frame(s) x "
                f"{bits_allocated} bits) but the file holds {size:,} bytes in all; the file is "
                "truncated or its header is damaged: replace it or re-export the series"
            )
    image_type = [str(v).upper() for v in _values(ds.get("ImageType", None))]
    mosaic = _mosaic_geometry(ds, path) if "MOSAIC" in image_type else None

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
        photometric=photometric,
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
    top_spacing = _pixel_spacing(_get(ds, "PixelSpacing", path), "PixelSpacing", path)
    if top_spacing is None:
        top_spacing = _pixel_spacing(
            _get(ds, "ImagerPixelSpacing", path), "ImagerPixelSpacing", path
        )
    top_slope = _get(ds, "RescaleSlope", path)
    top_intercept = _get(ds, "RescaleIntercept", path)

    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if n_frames > 1 or per_frame:
        if not per_frame or len(per_frame) != n_frames:
            raise UnsupportedDicomError(
                f"{path}: multi-frame object ({n_frames} frames) without per-frame positions; "
                "medres cannot place its frames in space"
            )
        headers = []
        for index, group in enumerate(per_frame):
            where = f"{path} frame {index + 1}"
            spacing = (
                _pixel_spacing(
                    _functional(ds, group, "PixelMeasuresSequence", "PixelSpacing"),
                    "PixelSpacing",
                    Path(where),
                )
                or top_spacing
            )
            orientation, orientation_notes = _orientation(
                _functional(ds, group, "PlaneOrientationSequence", "ImageOrientationPatient")
                or _get(ds, "ImageOrientationPatient", path),
                Path(where),
            )
            slope_value = _functional(ds, group, "PixelValueTransformationSequence", "RescaleSlope")
            intercept_value = _functional(
                ds, group, "PixelValueTransformationSequence", "RescaleIntercept"
            )
            slope, intercept = _rescale(
                top_slope if slope_value is None else slope_value,
                top_intercept if intercept_value is None else intercept_value,
                Path(where),
            )
            frame_notes = (*notes, *orientation_notes)
            if spacing is None:
                frame_notes = (*frame_notes, PIXEL_SPACING_ASSUMED)
            headers.append(
                SliceHeader(
                    frame=index,
                    sop_instance_uid=sop_uid,
                    instance_number=instance,
                    position_lps=_position(
                        _functional(ds, group, "PlanePositionSequence", "ImagePositionPatient"),
                        "ImagePositionPatient",
                        Path(where),
                    ),
                    orientation_lps=orientation,
                    pixel_spacing_mm=spacing,
                    rescale_slope=slope,
                    rescale_intercept=intercept,
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
                    warnings=frame_notes,
                    **common,
                )
            )
        return headers

    if mosaic is not None:
        common["extra"] = {**common["extra"], "mosaic": mosaic}
    orientation, orientation_notes = _orientation(_get(ds, "ImageOrientationPatient", path), path)
    slope, intercept = _rescale(top_slope, top_intercept, path)
    slice_notes = (*notes, *orientation_notes)
    if top_spacing is None:
        slice_notes = (*slice_notes, PIXEL_SPACING_ASSUMED)
    return [
        SliceHeader(
            frame=None,
            sop_instance_uid=sop_uid,
            instance_number=instance,
            position_lps=_position(
                _get(ds, "ImagePositionPatient", path), "ImagePositionPatient", path
            ),
            orientation_lps=orientation,
            pixel_spacing_mm=top_spacing,
            rescale_slope=slope,
            rescale_intercept=intercept,
            split_keys={
                "TemporalPositionIdentifier": _int_or_none(
                    ds.get("TemporalPositionIdentifier", None)
                ),
                "AcquisitionNumber": _int_or_none(ds.get("AcquisitionNumber", None)),
                "EchoNumbers": _text(ds, "EchoNumbers"),
                "TriggerTime": _text(ds, "TriggerTime"),
                "AcquisitionTime": _text(ds, "AcquisitionTime"),
            },
            warnings=slice_notes,
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
            f"{path}: cannot read the Siemens mosaic layout: {_describe(exc)}"
        ) from exc
    if (
        len(shape) != 3
        or min(shape) < 1
        or math.prod(shape) > MAX_VOXELS
        or affine_lps.shape != (4, 4)
        or not np.all(np.isfinite(affine_lps))
        or abs(float(np.linalg.det(affine_lps[:3, :3]))) < 1e-9
    ):
        raise CorruptFileError(
            f"{path}: the Siemens mosaic header gives an unusable shape {shape} or affine; "
            "the header is damaged, re-export the series"
        )
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
        raise PixelDecodeError(
            f"{s.path}: cannot decode the mosaic pixel data: {_describe(exc)}"
        ) from exc
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
            warnings=notes,
        )

    if (
        first.position_lps is None
        or first.orientation_lps is None
        or any(s.position_lps is None or s.orientation_lps is None for s in slices)
    ):
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
            advice = (
                _damaged_hint(damaged_files) if damaged_files else "re-export the complete series"
            )
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
        thickness, thickness_notes = _single_slice_step(first)
        notes = _merge_warnings((notes, thickness_notes))
        step = normal * thickness

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
        warnings=notes,
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
    count. Otherwise the group stays whole (and loading it reports the duplicates). Slices
    that all lie at one position split into one-slice volumes only by time point, echo or
    trigger time, never by acquisition number or instance rank (that is a broken export).

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
    # Volumes of one slice each are real only for time points or echoes that say so; all
    # slices at one position without such a key is a broken export, not N scans.
    single_ok = {
        "TemporalPositionIdentifier",
        "TemporalPositionIndex",
        "EchoNumbers",
        "TriggerTime",
    }
    for key in (
        "TemporalPositionIdentifier",
        "TemporalPositionIndex",
        "EchoNumbers",
        "AcquisitionNumber",
        "TriggerTime",
        "StackID",
    ):
        values = [s.split_keys.get(key) for s in group]
        if n_positions == 1 and key not in single_ok:
            continue
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
    if len(counts) == 1 and n_positions > 1:
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


def _native_monochrome(
    ds: Any, ts: Any, *, rows: int, columns: int, bits: int, signed: int, photometric: str
) -> npt.NDArray[Any] | None:
    """Uncompressed single-frame greyscale pixels read straight from the bytes (a view).

    The common CT/MR case; skips pydicom's generic decoder set-up, which costs more than
    the copy for small slices. The caller has checked the header values and that the bytes
    suffice. Anything unusual returns None and takes pydicom's path.
    """
    if (
        bits not in (8, 16, 32)
        or not photometric.startswith("MONOCHROME")
        or ts.is_deflated
        or "PixelData" not in ds
    ):
        return None
    kind = "i" if signed else "u"
    order = "<" if ts.is_little_endian else ">"
    dtype = np.dtype(f"{order}{kind}{bits // 8}")
    arr = np.frombuffer(ds.PixelData, dtype=dtype, count=rows * columns).reshape(rows, columns)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def decode_pixels(ds: Any, path: str | Path) -> npt.NDArray[Any]:
    """Decoded stored pixel values of a full data set: ``(rows, cols[, samples])`` or with a
    leading frame axis. Colour data comes back as RGB; palette colour is expanded to RGB.

    The declared size is checked against the pixel bytes (uncompressed syntaxes), the
    limits and the memory budget before anything is decoded; any failure of the decoder
    becomes a :class:`~medres.errors.PixelDecodeError` naming the file.

    Raises:
        CorruptFileError: Pixel data missing, empty, or shorter than the header promises.
        PixelDecodeError: Unknown transfer syntax, no decoder, or a broken stream.
        UnsupportedDicomError: The decoded pixels would exceed the memory budget.
    """
    path = Path(path)
    try:
        with _quiet_pydicom():
            return _decode_pixels(ds, path)
    except LoadError:
        raise
    except MemoryError as exc:
        raise UnsupportedDicomError(
            f"{path}: not enough memory to decode the pixel data; free memory or lower "
            "the batch size"
        ) from exc
    except Exception as exc:
        raise PixelDecodeError(f"{path}: cannot decode pixel data: {_describe(exc)}") from exc


def _decode_pixels(ds: Any, path: Path) -> npt.NDArray[Any]:
    keys = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    present = [k for k in keys if k in ds]
    if not present:
        raise CorruptFileError(f"{path}: no pixel data in the file (truncated?)")
    ts = transfer_syntax(ds, path)
    if ts is None:
        # no file meta (old ACR-NEMA style) or its UID lost: the data set was read as a
        # native encoding, so its pixel data are native too (compressed data need the UID)
        ts = _encoding_syntax(ds)
        if ts is not None:
            from pydicom.dataset import FileMetaDataset

            if getattr(ds, "file_meta", None) is None:
                ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ts
    rows = _int_field(ds, "Rows", path, default=None, allowed=range(1, 65536))
    columns = _int_field(ds, "Columns", path, default=None, allowed=range(1, 65536))
    if rows is None or columns is None:
        raise CorruptFileError(f"{path}: image with pixel data but no Rows/Columns; {_FIX}")
    samples = _int_field(ds, "SamplesPerPixel", path, default=1, allowed=(1, 3)) or 1
    frames = (
        _int_field(ds, "NumberOfFrames", path, default=1, allowed=range(1, MAX_FRAMES + 1)) or 1
    )
    bits = _int_field(ds, "BitsAllocated", path, default=16, allowed=(1, 8, 16, 32, 64)) or 16
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    n_pixels = rows * columns * frames
    if n_pixels > MAX_VOXELS:
        raise CorruptFileError(
            f"{path}: header declares {n_pixels:,} pixels, more than the {MAX_VOXELS:,} "
            "medres accepts for one scan (medres.limits.MAX_VOXELS)"
        )
    decoded_bytes = n_pixels * (3 if samples > 1 else 1) * max(1, bits // 8)
    too_big = check_allocation(f"decoding {rows} x {columns} x {frames} pixels", decoded_bytes)
    if too_big is not None:
        raise UnsupportedDicomError(f"{path}: {too_big}")
    value = ds[present[0]].value
    if value is None or (isinstance(value, (bytes, bytearray)) and len(value) == 0):
        raise CorruptFileError(
            f"{path}: the {present[0]} element is empty (0 bytes); the file is damaged, "
            "replace it with a good copy or re-export the series"
        )
    if not isinstance(value, (bytes, bytearray)):
        vr = getattr(ds[present[0]], "VR", "?")
        raise CorruptFileError(
            f"{path}: {present[0]} has value representation {vr}, not binary pixel data; "
            "the header is damaged, replace the file with a good copy or re-export the series"
        )
    native = ts is None or not ts.is_compressed
    if native:
        expected = _declared_pixel_bytes(rows, columns, samples, frames, bits, photometric)
        got = len(value)
        if got < expected:
            raise CorruptFileError(
                f"{path}: pixel data truncated: {got} bytes where {expected} expected (the "
                f"header promises {expected:,} bytes of pixel data but the file holds {got:,}); "
                "replace the file with a good copy or re-export the series"
            )
        if ts is not None and samples == 1 and frames == 1:
            signed = _int_field(ds, "PixelRepresentation", path, default=0, allowed=(0, 1))
            fast = _native_monochrome(
                ds,
                ts,
                rows=rows,
                columns=columns,
                bits=bits,
                signed=signed or 0,
                photometric=photometric,
            )
            if fast is not None:
                return fast
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        ts_name = f"{ts.name}" if ts is not None else "unknown transfer syntax"
        raise PixelDecodeError(
            f"{path}: cannot decode pixel data ({ts_name}): {one_line(str(exc))}".rstrip()
        ) from exc
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise PixelDecodeError(
                f"{path}: cannot apply the palette colour table: {_describe(exc)}"
            ) from exc
    return arr  # type: ignore[no-any-return]


def _slice_values(
    s: SliceHeader,
    plan: SeriesPlan,
    *,
    color: bool,
    cache: dict[str, npt.NDArray[Any]],
) -> npt.NDArray[Any]:
    """One slice as ``(C, y=rows, x=cols)`` values of ``plan.output_dtype`` (rescaled)."""
    ds: Any = None
    if s.frame is None:
        ds = read_dataset(s.path, headers_only=False)
        arr = decode_pixels(ds, s.path)
    else:
        if s.path not in cache:
            cache.clear()
            ds = read_dataset(s.path, headers_only=False)
            cache[s.path] = decode_pixels(ds, s.path)
        frames = cache[s.path]
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
    values = _fix_bits(arr, s)
    if s.has_modality_lut and ds is not None:
        from pydicom.pixels.processing import apply_modality_lut

        with _quiet_pydicom():
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
    return values[None]


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
    if isinstance(source, SeriesPlan):
        plan = source
    else:
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
        plan = plan_series(headers)

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
    total = len(plan.slices)
    cache: dict[str, npt.NDArray[Any]] = {}  # multi-frame files: decode once
    if "mosaic" in first.extra:
        try:
            out[0] = _load_mosaic(first, plan.output_dtype).T
        except LoadError:
            raise
        except Exception as exc:
            raise PixelDecodeError(
                f"{first.path}: cannot load the mosaic pixels: {_describe(exc)}"
            ) from exc
    for k, s in enumerate(plan.slices if "mosaic" not in first.extra else ()):
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
        warnings=plan.warnings,
    )


__all__ = [
    "LoadError",
    "SeriesPlan",
    "SliceHeader",
    "choose_output_dtype",
    "decode_pixels",
    "load_dicom_series",
    "non_image_reason",
    "one_line",
    "plan_series",
    "read_dataset",
    "read_slice_headers",
    "regular_file_problem",
    "series_folder",
    "split_volumes",
    "transfer_syntax",
]
