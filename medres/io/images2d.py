"""2D images (PNG, TIFF, BMP, JPEG) and their masks as :class:`Volume` objects.

A 2D image becomes a volume with array ``(C, x, y)``: ``x`` is the column index and ``y``
the row index, as for DICOM slices (so ``array[c, x, y] == image[y, x, c]``). There is no
patient geometry: the affine is ``diag(spacing_x, spacing_y, 1, 1)`` when the pixel size
is given, and steps one unit per pixel otherwise; such a volume's ``length_unit`` is
``"px"`` and every size measured on it is reported in pixels (:mod:`medres.io.units`).

Masks (:func:`read_mask2d`): one label per pixel, however the file stores it:

* 8/16-bit grey: the pixel value is the label; a binary mask stored as 0/255 (the common
  export) or 0/65535 is read as 0/1, so it needs no ``label_map``;
* 1-bit: 0/1;
* palette (``P``): the palette *index* is the label (index 0 background), whatever colour
  the palette gives it;
* RGB/RGBA: only when the three channels are equal (a grey mask saved in colour); a mask
  whose channels differ is refused naming the file, since colours are not labels.

Every file is distrusted: only regular files are opened (a FIFO or a link to a device is
refused without blocking); the size the header declares is checked against
:data:`~medres.limits.MAX_VOXELS`, Pillow's decompression-bomb limit (``MAX_IMAGE_PIXELS``,
89.5 M pixels, warning or error alike) and the memory budget before any pixel is decoded;
truncated or damaged files and float images with NaN or infinite pixels end as one
:class:`~medres.errors.ImageReadError` line naming the file. Pillow's other warnings
(e.g. corrupt EXIF) stop at the call and reach :attr:`Volume.warnings`.
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import ImageReadError, MaskMismatchError
from medres.io.files import open_regular
from medres.io.units import MM, PX
from medres.io.volume import ScanKind, SourceInfo, Volume
from medres.limits import MAX_VOXELS, check_allocation

logger = logging.getLogger(__name__)

IMAGE2D_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


def is_image2d_path(path: str | Path) -> bool:
    """True for PNG, TIFF, BMP and JPEG file names (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE2D_SUFFIXES


#: Pillow modes read as they are, and the modes others are converted to before reading.
_MODES_AS_IS = frozenset({"L", "RGB", "RGBA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_MODES_TO_GREY = frozenset({"1", "LA", "La"})
_MODES_TO_RGB = frozenset({"CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"})
#: What Pillow's parsers and decoders raise on damaged bytes (besides its own errors).
_DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)


def _target_mode(mode: str, has_transparency: bool, path: Path) -> str:
    if mode in _MODES_AS_IS:
        return mode
    if mode in ("P", "PA"):
        return "RGBA" if has_transparency or mode == "PA" else "RGB"
    if mode in _MODES_TO_GREY:
        return "L"
    if mode in _MODES_TO_RGB:
        return "RGB"
    raise ImageReadError(
        f"{path}: pixel format {mode!r} is not supported: save the image as 8/16-bit grey, "
        "RGB or 32-bit float"
    )


def _check_declared_size(size: tuple[int, int], mode: str, path: Path) -> None:
    """Refuse before decoding what the header declares beyond the limits or the budget."""
    from PIL import Image

    width, height = size
    if width < 1 or height < 1:
        raise ImageReadError(f"{path}: the image declares {width} x {height} pixels: damaged file")
    pixels = width * height
    if pixels > MAX_VOXELS:
        raise ImageReadError(
            f"{path}: the image declares {width} x {height} = {pixels:.3g} pixels, above "
            f"medres's limit of {MAX_VOXELS:.3g} (medres.limits.MAX_VOXELS)"
        )
    bands = Image.getmodebands(mode)
    item = 4 if mode in ("I", "F") else 2 if mode.startswith("I;16") else 1
    # decoded image + its numpy copy, then that copy + the channel-first array
    reason = check_allocation(f"the {width} x {height} {mode} image", 2 * pixels * bands * item)
    if reason is not None:
        raise ImageReadError(f"{path}: {reason}")


def _bomb_message(path: Path, exc: Exception) -> str:
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"{path}: the image declares {pixels}, above the decompression-bomb limit of "
        f"{Image.MAX_IMAGE_PIXELS or 0:,} pixels (Pillow's MAX_IMAGE_PIXELS): a damaged or "
        "hostile file, or an image too large for medres; downsample or tile it"
    )


def _non_finite_message(n_bad: int, n_total: int) -> str:
    share = 100.0 * n_bad / n_total
    percent = f"{share:.1f}" if share >= 0.1 else f"{share:.2g}"
    return (
        f"{n_bad} of {n_total} pixel values ({percent} %) are NaN or infinite; medres needs "
        "finite intensities: replace them (e.g. numpy.nan_to_num) and retry"
    )


def _imread(path: Path, *, palette_index: bool = False) -> tuple[npt.NDArray[Any], tuple[str, ...]]:
    """Decode one 2D image as ``(rows, columns[, channels])``, and what had to be assumed.

    ``palette_index``: a palette image gives its indices (a mask's labels), not its colours.

    The file must be a regular file; its declared size is checked against
    :data:`~medres.limits.MAX_VOXELS`, Pillow's decompression-bomb limit and the memory
    budget before any pixel is decoded. Pillow's warnings stop here: a decompression-bomb
    warning is an error, others become notes.
    """
    from PIL import ImageFile

    # a library may set this process-wide on import (WeasyPrint does); a truncated scan must
    # still be refused, so it is off for medres's own decoding and restored afterwards.
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        return _decode(path, palette_index)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _decode(path: Path, palette_index: bool) -> tuple[npt.NDArray[Any], tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    with open_regular(path, error=ImageReadError, what="image") as handle:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(handle) as opened:
                    if palette_index and opened.mode in ("P", "PA"):
                        target = opened.mode
                    else:
                        target = _target_mode(opened.mode, "transparency" in opened.info, path)
                    _check_declared_size(opened.size, target, path)
                    n_frames = getattr(opened, "n_frames", 1)
                    if n_frames > 1:
                        raise ImageReadError(
                            f"{path}: multi-page image ({n_frames} pages); medres reads single "
                            "2D images"
                        )
                    img = opened if target == opened.mode else opened.convert(target)
                    arr = np.asarray(img)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageReadError(_bomb_message(path, exc)) from exc
        except UnidentifiedImageError as exc:
            raise ImageReadError(
                f"{path}: not a readable image: Pillow recognises no PNG, TIFF, BMP or JPEG "
                "content (damaged file or another format)"
            ) from exc
        except _DECODE_ERRORS as exc:
            raise ImageReadError(f"{path}: image is truncated or corrupt: {exc}") from exc
    notes = tuple(dict.fromkeys(f"image decoder: {w.message}" for w in caught))
    for note in notes:
        logger.debug("%s: %s", path, note)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]  # drop alpha
    elif arr.ndim == 3 and arr.shape[2] == 2:
        arr = arr[:, :, 0]  # palette index (or grey) without its alpha
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImageReadError(f"{path}: unexpected image shape {arr.shape}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.kind == "f":
        n_bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise ImageReadError(f"{path}: {_non_finite_message(n_bad, arr.size)}")
    return arr, notes


def read_image2d(
    path: str | Path,
    *,
    spacing_mm: tuple[float, float] | None = None,
) -> Volume:
    """Read a 2D image into a channel-first :class:`Volume` ``(C, x, y)``.

    Args:
        path: PNG, TIFF, BMP or JPEG file.
        spacing_mm: Pixel size ``(x, y)`` in mm when known. None: the volume is measured
            in pixels (``length_unit == "px"``, one affine unit per pixel).

    Returns:
        Volume; grey images have 1 channel, colour images 3 (``R, G, B``).

    Raises:
        ImageReadError: Missing, not a regular file, unreadable, truncated, multi-page,
            larger than the limits, or float pixels that are NaN or infinite.

    Example:
        >>> vol = read_image2d("sample_data/images2d/disc_01.png")  # doctest: +SKIP
    """
    path = Path(path)
    arr, notes = _imread(path)
    chw = arr.T[None] if arr.ndim == 2 else np.transpose(arr, (2, 1, 0))
    names: tuple[str, ...] = ("R", "G", "B") if chw.shape[0] == 3 else ()
    step = (1.0, 1.0) if spacing_mm is None else check_pixel_size(spacing_mm)
    return Volume(
        array=np.ascontiguousarray(chw),
        affine=np.diag([step[0], step[1], 1.0, 1.0]),
        source=SourceInfo(kind=ScanKind.IMAGE2D, paths=(str(path),), series_description=path.stem),
        channel_names=names,
        warnings=notes,
        length_unit=PX if spacing_mm is None else MM,
    )


def with_pixel_size(volume: Volume, spacing_mm: tuple[float, ...] | None) -> Volume:
    """A pixel-measured 2D volume on a grid of the given pixel size (mm); others unchanged.

    Raises:
        ValueError: ``spacing_mm`` is not a valid pixel size (:func:`check_pixel_size`).
    """
    if spacing_mm is None or volume.length_unit != PX or volume.spatial_ndim != 2:
        return volume
    step = check_pixel_size(spacing_mm)
    affine = volume.affine.copy()
    affine[:3, 0] *= step[0]
    affine[:3, 1] *= step[1]
    return replace(volume, affine=affine, length_unit=MM)


def check_pixel_size(spacing_mm: tuple[float, ...]) -> tuple[float, float]:
    """A user-given pixel size as ``(x, y)`` mm: one value (square pixels) or two.

    Raises:
        ValueError: Not one or two finite sizes above 0 and at most 100 mm.
    """
    values = tuple(float(v) for v in spacing_mm)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(np.isfinite(v) and 0.0 < v <= 100.0 for v in values):
        raise ValueError(
            f"pixel size {spacing_mm!r}: give one or two sizes in mm above 0 and at most 100 "
            "(e.g. 0.05, or 0.05,0.06 for x,y)"
        )
    return values[0], values[1]


def read_mask2d(path: str | Path, *, like: Volume | None = None) -> Volume:
    """Read a 2D label mask: one channel of uint8 labels, however the file encodes them.

    See the module docstring for the encodings: 0/255 (and 0/65535) binary masks become
    0/1, 1-bit masks are 0/1, a palette mask gives its indices, an RGB mask must have three
    equal channels.

    Args:
        path: Mask image.
        like: The image the mask belongs to; its shape must match and its affine (and
            length unit) are reused.

    Raises:
        ImageReadError: Unreadable file, a colour mask whose channels differ, or labels
            that are negative, fractional or above 255.
        MaskMismatchError: Mask shape differs from ``like``.
    """
    path = Path(path)
    arr, notes = _imread(path, palette_index=True)
    if arr.ndim == 3:
        differ = np.any(arr[..., 0] != arr[..., 1]) or np.any(arr[..., 0] != arr[..., 2])
        if differ:
            colours = np.unique(arr.reshape(-1, arr.shape[2]), axis=0)
            raise ImageReadError(
                f"{path}: colour mask whose R, G and B channels differ ({len(colours)} "
                "colours): masks hold one label per pixel; save it as a grey (label value) "
                "or palette (label index) image"
            )
        arr = arr[..., 0]
    arr = _mask_labels(arr, path)
    mask = arr.T[None]
    if like is not None and mask.shape[1:] != tuple(like.spatial_shape):
        raise MaskMismatchError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} pixels but its image "
            f"{Path(like.source.paths[0]).name if like.source.paths else ''} is "
            f"{like.spatial_shape[0]}x{like.spatial_shape[1]}"
        )
    affine = like.affine if like is not None else np.eye(4)
    return Volume(
        array=np.ascontiguousarray(mask),
        affine=affine,
        source=SourceInfo(kind=ScanKind.IMAGE2D, paths=(str(path),), series_description=path.stem),
        warnings=notes,
        length_unit=like.length_unit if like is not None else PX,
    )


def _mask_labels(arr: npt.NDArray[Any], path: Path) -> npt.NDArray[np.uint8]:
    """Grey mask values as uint8 labels: a two-value 0/max binary mask becomes 0/1."""
    if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise ImageReadError(f"{path}: mask with fractional values; labels are integers")
    values = np.unique(arr)
    top = float(values[-1])
    found = set(values.tolist())
    if found and (found <= {0, 255} or found <= {0, 65535}) and top > 1:
        return (arr > 0).astype(np.uint8)
    if float(values[0]) < 0 or top > 255:
        raise ImageReadError(
            f"{path}: mask values run from {float(values[0]):g} to {top:g}; labels must be "
            "0..255 (0 background), or a binary mask stored as 0/255"
        )
    return arr.astype(np.uint8)


def looks_like_mask(volume: Volume) -> bool:
    """Whether an image read as a scan holds only two values, one of them 0 (binary)."""
    if volume.array.size > 50_000_000:
        return False
    values = np.unique(volume.array)
    return values.size <= 2 and float(values[0]) == 0.0
