"""The length unit of a scan's measurements: millimetres, or pixels when nothing says how
large a pixel is.

DICOM and NIfTI scans carry their voxel size, so medres measures them in mm (areas in
mm², volumes in ml). A photograph, a screenshot or an exported slice (PNG, TIFF, BMP,
JPEG) carries none: medres then measures it in **pixels** (px, px²) and says so in every
output, instead of assuming a size. A pixel size given by the user (``medres predict
--pixel-size-mm``, or the pipeline's ``data.pixel_size_mm``) turns such images into mm.

In memory every measurement keeps its ``_mm`` name (``area_mm2``, ``hd95_mm``) and holds
the scan's own unit; the files a person reads name the unit they hold: :func:`keys_in_unit`
renames ``area_mm2`` to ``area_px2`` in a pixel-measured scan's JSON and tables, and
:func:`keys_in_mm` reads them back.

Example:
    >>> keys_in_unit({"area_mm2": 12.0, "center_ras_mm": [1, 2, 0]}, "px")
    {'area_px2': 12.0, 'center_px': [1, 2, 0]}
    >>> area_unit("px"), length_label("mm")
    ('px²', 'mm')
"""

from __future__ import annotations

import re
from typing import Any, Literal

#: ``"mm"``: physical sizes; ``"px"``: pixel counts of an image without a pixel size.
LengthUnit = Literal["mm", "px"]
MM: LengthUnit = "mm"
PX: LengthUnit = "px"

#: Said once wherever a pixel-measured scan is shown.
NO_PIXEL_SIZE_NOTE = (
    "sizes in pixels (px): the image file gives no pixel size (medres predict "
    "--pixel-size-mm or the pipeline's preprocessing.pixel_size_mm sets one)"
)

#: Names whose pixel form is not the plain ``_mm`` -> ``_px`` rename.
_SPECIAL = {"center_ras_mm": "center_px", "centre_ras_mm": "centre_px"}
_SPECIAL_BACK = {v: k for k, v in _SPECIAL.items()}
_MM_TOKEN = re.compile(r"_mm(?=\d|_|$)")
_PX_TOKEN = re.compile(r"_px(?=\d|_|$)")


def check_unit(unit: str) -> LengthUnit:
    """``unit`` as a :data:`LengthUnit`.

    Raises:
        ValueError: Neither ``mm`` nor ``px``.
    """
    if unit == MM:
        return MM
    if unit == PX:
        return PX
    raise ValueError(f"length unit must be 'mm' or 'px', not {unit!r}")


def length_label(unit: str) -> str:
    """``mm`` or ``px``."""
    return check_unit(unit)


def area_unit(unit: str) -> str:
    """``mm²`` or ``px²``."""
    return f"{check_unit(unit)}²"


def volume_unit(unit: str) -> str:
    """``ml`` (physical volumes are given in millilitres) or ``px³``."""
    return "ml" if check_unit(unit) == MM else "px³"


def unit_key(key: str, unit: str) -> str:
    """The name of a measurement in ``unit``: ``hd95_mm`` -> ``hd95_px`` for pixels."""
    if check_unit(unit) == MM:
        return key
    if key in _SPECIAL:
        return _SPECIAL[key]
    return _MM_TOKEN.sub("_px", key)


def keys_in_unit(data: Any, unit: str) -> Any:
    """``data`` (dicts and lists, nested) with every measurement key named in ``unit``."""
    if check_unit(unit) == MM:
        return data
    return _rename(data, lambda key: unit_key(key, PX))


def _mm_key(key: str) -> str:
    if key in _SPECIAL_BACK:
        return _SPECIAL_BACK[key]
    return _PX_TOKEN.sub("_mm", key)


def keys_in_mm(data: Any) -> Any:
    """The inverse of :func:`keys_in_unit`: pixel names back to the in-memory ``_mm`` ones."""
    return _rename(data, _mm_key)


def _rename(data: Any, rename: Any) -> Any:
    if isinstance(data, dict):
        return {
            (rename(k) if isinstance(k, str) else k): _rename(v, rename) for k, v in data.items()
        }
    if isinstance(data, list):
        return [_rename(v, rename) for v in data]
    return data


__all__ = [
    "MM",
    "NO_PIXEL_SIZE_NOTE",
    "PX",
    "LengthUnit",
    "area_unit",
    "check_unit",
    "keys_in_mm",
    "keys_in_unit",
    "length_label",
    "unit_key",
    "volume_unit",
]
