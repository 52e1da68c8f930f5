"""2D images (PNG, TIFF, BMP, JPEG) and their masks as :class:`Volume` objects.

A 2D image becomes a volume with array ``(C, x, y)``: ``x`` is the column index and ``y``
the row index, as for DICOM slices (so ``array[c, x, y] == image[y, x, c]``). There is no
patient geometry: the affine is ``diag(spacing_x, spacing_y, 1, 1)`` with 1 mm pixels
unless a spacing is given.

Masks: single-channel images whose non-zero pixels are labels. Binary masks stored as
0/255 (the common export) are read as 0/1; an RGB mask whose three channels are equal is
read as one channel.

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
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import ImageReadError, MaskMismatchError
from medres.io.files import open_regular
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


def _imread(path: Path) -> tuple[npt.NDArray[Any], tuple[str, ...]]:
    """Decode one 2D image as ``(rows, columns[, channels])``, and what had to be assumed.

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
        return _decode(path)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _decode(path: Path) -> tuple[npt.NDArray[Any], tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    with open_regular(path, error=ImageReadError, what="image") as handle:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(handle) as opened:
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
    spacing_mm: tuple[float, float] = (1.0, 1.0),
) -> Volume:
    """Read a 2D image into a channel-first :class:`Volume` ``(C, x, y)``.

    Args:
        path: PNG, TIFF, BMP or JPEG file.
        spacing_mm: Pixel size ``(x, y)`` in mm when known; 1 mm otherwise.

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
    return Volume(
        array=np.ascontiguousarray(chw),
        affine=np.diag([spacing_mm[0], spacing_mm[1], 1.0, 1.0]),
        source=SourceInfo(kind=ScanKind.IMAGE2D, paths=(str(path),), series_description=path.stem),
        channel_names=names,
        warnings=notes,
    )


def read_mask2d(path: str | Path, *, like: Volume | None = None) -> Volume:
    """Read a 2D label mask: one channel, uint8 labels (0/255 binary masks become 0/1).

    Args:
        path: Mask image.
        like: The image the mask belongs to; its shape must match and its affine is reused.

    Raises:
        ImageReadError: Unreadable file, or a colour mask with differing channels.
        MaskMismatchError: Mask shape differs from ``like``.
    """
    path = Path(path)
    arr, notes = _imread(path)
    if arr.ndim == 3:
        if not (
            np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
        ):
            raise ImageReadError(
                f"{path}: colour mask with different channels; masks must hold one label per pixel"
            )
        arr = arr[..., 0]
    values = np.unique(arr)
    if values.size <= 2 and set(values.tolist()) <= {0, 255}:
        arr = (arr > 0).astype(np.uint8)
    elif arr.dtype != np.uint8 and values.max() <= 255 and values.min() >= 0:
        arr = arr.astype(np.uint8)
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
    )
