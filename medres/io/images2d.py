"""2D images (PNG, TIFF, BMP, JPEG) and their masks as :class:`Volume` objects.

A 2D image becomes a volume with array ``(C, x, y)``: ``x`` is the column index and ``y``
the row index, as for DICOM slices (so ``array[c, x, y] == image[y, x, c]``). There is no
patient geometry: the affine is ``diag(spacing_x, spacing_y, 1, 1)`` with 1 mm pixels
unless a spacing is given.

Masks: single-channel images whose non-zero pixels are labels. Binary masks stored as
0/255 (the common export) are read as 0/1; an RGB mask whose three channels are equal is
read as one channel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import ImageReadError, MaskMismatchError
from medres.io.volume import ScanKind, SourceInfo, Volume

logger = logging.getLogger(__name__)

IMAGE2D_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


def is_image2d_path(path: str | Path) -> bool:
    """True for PNG, TIFF, BMP and JPEG file names (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE2D_SUFFIXES


def _imread(path: Path) -> npt.NDArray[Any]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > 1:
                raise ImageReadError(
                    f"{path}: multi-page image ({n_frames} pages); medres reads single 2D images"
                )
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode in ("1", "LA", "CMYK", "YCbCr"):
                img = img.convert("L" if img.mode in ("1", "LA") else "RGB")
            arr = np.asarray(img)
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: image is truncated or corrupt: {exc}") from exc
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]  # drop alpha
    if arr.ndim not in (2, 3):
        raise ImageReadError(f"{path}: unexpected image shape {arr.shape}")
    return arr


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
        ImageReadError: Unreadable, truncated or multi-page file.

    Example:
        >>> vol = read_image2d("sample_data/images2d/disc_01.png")  # doctest: +SKIP
    """
    path = Path(path)
    arr = _imread(path)
    chw = arr.T[None] if arr.ndim == 2 else np.transpose(arr, (2, 1, 0))
    names: tuple[str, ...] = ("R", "G", "B") if chw.shape[0] == 3 else ()
    return Volume(
        array=np.ascontiguousarray(chw),
        affine=np.diag([spacing_mm[0], spacing_mm[1], 1.0, 1.0]),
        source=SourceInfo(kind=ScanKind.IMAGE2D, paths=(str(path),), series_description=path.stem),
        channel_names=names,
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
    arr = _imread(path)
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
    )
