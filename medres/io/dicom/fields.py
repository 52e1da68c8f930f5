"""One header value at a time: parse it, distrust it, say what is wrong with it.

This module owns the tolerances and physical ranges a header value must meet (orientation
cosines, pixel spacing, positions, rescale slope and intercept, frame counts) and the
readers that enforce them. A value that is present but unusable raises a
:class:`~medres.errors.CorruptFileError` naming the file, the field and the value as a
DICOM dump would show it; an absent value returns ``None`` (or the given default) and the
caller decides what to assume. It also owns how medres describes odd values and
exceptions in one-line messages, and where pydicom's own warnings go (the debug log).

Lenient readers (:func:`_text`, :func:`_float_or`, :func:`_int_or_none`) are for
descriptive fields only (series description, sidecar facts), never for geometry.

Example:
    >>> from pathlib import Path
    >>> _numbers("0.5\\\\0.5", 2, "PixelSpacing", Path("IM0001"))
    (0.5, 0.5)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from medres.errors import CorruptFileError
from medres.limits import MAX_SLICES

logger = logging.getLogger(__name__)

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


# --- lenient readers for descriptive fields (never geometry) ----------------------------


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
