"""Key images drawn straight from arrays to PNG (Pillow), without a plotting library.

:func:`render` draws one :class:`~medres.report.images.View`: the windowed pixels at
their true aspect (each scan pixel becomes a block of screen pixels sized by its
spacing), each label's outline (the mask's marching-squares contour, a dark wide line
under a bright thin one), lesion ids, a detector's dashed boxes with their ``B<id>
<score>`` text, a scale bar of a round length in mm (in pixels for an image without a
pixel size), the patient-direction letters and a title strip. It costs a few
milliseconds per image, where a matplotlib figure per image cost about 0.1 s
(``benchmarks/bench_report.py``).

Fonts are the DejaVu faces matplotlib ships (matplotlib is a dependency for the
evaluation plots), so every machine draws the same letters.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.report.images import BOX_COLOUR, OUTLINE_COLOURS, View

#: Width of an image in screen pixels (the height follows the aspect).
IMAGE_WIDTH_PX = 440
#: A very tall view (a long sagittal) is drawn at most this many times its width.
MAX_ASPECT = 3.0
#: zlib level of the PNGs: 2 costs a third of level 6's time for 30 % more bytes.
PNG_COMPRESS_LEVEL = 2
TITLE_PX = 20
_DIRECTION_COLOUR = (255, 176, 0)


@functools.lru_cache(maxsize=8)
def _font(size: int, *, bold: bool = False) -> Any:
    """DejaVu Sans (bold) at ``size`` pixels, from matplotlib's font folder."""
    import matplotlib
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:  # a stripped matplotlib: Pillow's own scalable font
        return ImageFont.load_default(size)


def _rgb(colour: str) -> tuple[int, int, int]:
    value = colour.lstrip("#")
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


def _scale_bar_mm(width_mm: float) -> float:
    """The longest round length up to a quarter of the width (mm, or px: 1000 px and less)."""
    for candidate in (1000.0, 500.0, 200.0, 100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0):
        if candidate <= width_mm / 4:
            return candidate
    return 1.0


def _screen_size(
    view_shape: tuple[int, ...], row_mm: float, column_mm: float, width: int
) -> tuple[int, int]:
    """``(width, height)`` in screen pixels of a view of ``view_shape`` pixels."""
    height_mm = view_shape[0] * row_mm
    width_mm = view_shape[1] * column_mm
    height = round(width * min(height_mm / max(width_mm, 1e-6), MAX_ASPECT))
    return width, max(height, 8)


def _pixels(image: npt.NDArray[np.float32], size: tuple[int, int]) -> Any:
    """The 0..1 image (grey, or ``(rows, columns, 3)`` colour) as an RGB Pillow image of
    ``size``, scan pixels as blocks."""
    from PIL import Image

    levels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    rows = np.minimum((np.arange(size[1]) * levels.shape[0]) // size[1], levels.shape[0] - 1)
    cols = np.minimum((np.arange(size[0]) * levels.shape[1]) // size[0], levels.shape[1] - 1)
    block = levels[rows[:, None], cols[None, :]]
    if block.ndim == 2:
        block = np.repeat(block[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(block), mode="RGB")


def _outlines(draw: Any, label_map: npt.NDArray[np.uint8], scale: tuple[float, float]) -> None:
    """Every label's contour: black 3 px under its bright colour 1 px."""
    from skimage import measure

    row_scale, col_scale = scale
    for value in sorted(int(v) for v in np.unique(label_map) if v):
        colour = _rgb(OUTLINE_COLOURS[(value - 1) % len(OUTLINE_COLOURS)])
        padded = np.pad(label_map == value, 1).astype(np.float32)
        for contour in measure.find_contours(padded, 0.5):  # type: ignore[no-untyped-call]
            ys = (contour[:, 0] - 1 + 0.5) * row_scale
            xs = (contour[:, 1] - 1 + 0.5) * col_scale
            points = list(zip(xs.tolist(), ys.tolist(), strict=True))
            if len(points) < 2:
                continue
            draw.line(points, fill=(0, 0, 0), width=4, joint="curve")
            draw.line(points, fill=colour, width=2, joint="curve")


def _text(
    draw: Any,
    xy: tuple[float, float],
    text: str,
    *,
    size: int,
    fill: Any,
    anchor: str,
    bold: bool = True,
) -> None:
    """Text with a black rim, readable on bright and dark tissue."""
    draw.text(
        xy,
        text,
        font=_font(size, bold=bold),
        fill=fill,
        anchor=anchor,
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )


def _lesion_ids(
    draw: Any,
    lesions: Sequence[dict[str, Any]],
    corner: tuple[int, int],
    scale: tuple[float, float],
    size: tuple[int, int],
) -> None:
    """Each lesion's id on a dark rounded patch at its ``(row, column)``, when shown."""
    for lesion in lesions:
        y = (lesion["row"] - corner[0] + 0.5) * scale[0]
        x = (lesion["column"] - corner[1] + 0.5) * scale[1]
        if not (0 <= y <= size[1] and 0 <= x <= size[0]):
            continue
        text = str(lesion["lesion_id"])
        left, top, right, bottom = draw.textbbox(
            (x, y), text, font=_font(12, bold=True), anchor="mm"
        )
        draw.rounded_rectangle(
            (left - 3, top - 2, right + 3, bottom + 2), radius=3, fill=(0, 0, 0, 170)
        )
        draw.text((x, y), text, font=_font(12, bold=True), fill=(255, 255, 255), anchor="mm")


def _dashed_rectangle(
    draw: Any, box: tuple[float, float, float, float], colour: Any, width: int, dash: int = 6
) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay), (bx, by) in (
        ((x0, y0), (x1, y0)),
        ((x1, y0), (x1, y1)),
        ((x1, y1), (x0, y1)),
        ((x0, y1), (x0, y0)),
    ):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(int(length // dash), 1)
        for n in range(0, steps, 2):
            t0, t1 = n / steps, min((n + 1) / steps, 1.0)
            draw.line(
                (
                    ax + (bx - ax) * t0,
                    ay + (by - ay) * t0,
                    ax + (bx - ax) * t1,
                    ay + (by - ay) * t1,
                ),
                fill=colour,
                width=width,
            )


def _boxes(
    draw: Any, boxes: Sequence[dict[str, Any]], corner: tuple[int, int], scale: tuple[float, float]
) -> None:
    """A detector's boxes dashed (black under cyan) with ``B<id> <score>`` above them."""
    cyan = _rgb(BOX_COLOUR)
    for box in boxes:
        y0 = (box["row0"] - corner[0]) * scale[0]
        x0 = (box["col0"] - corner[1]) * scale[1]
        y1 = (box["row1"] - corner[0]) * scale[0]
        x1 = (box["col1"] - corner[1]) * scale[1]
        _dashed_rectangle(draw, (x0, y0, x1, y1), (0, 0, 0), 4)
        _dashed_rectangle(draw, (x0, y0, x1, y1), cyan, 2)
        _text(draw, (x0, y0 - 3), box["text"], size=11, fill=cyan, anchor="lb")


def _scale_bar(draw: Any, size: tuple[int, int], width_mm: float, unit: str = "mm") -> None:
    """A white bar of a round length in mm (or image pixels, ``unit="px"``) at the bottom
    right, its length above it."""
    bar_mm = _scale_bar_mm(width_mm)
    px_per_mm = size[0] / max(width_mm, 1e-6)
    x1 = size[0] * 0.95
    x0 = x1 - bar_mm * px_per_mm
    y0 = size[1] * 0.94
    draw.rectangle(
        (x0, y0, x1, y0 + max(size[1] * 0.012, 3)), fill=(255, 255, 255), outline=(0, 0, 0)
    )
    _text(
        draw,
        ((x0 + x1) / 2, y0 - 3),
        f"{bar_mm:g} {unit}",
        size=11,
        fill=(255, 255, 255),
        anchor="mb",
        bold=False,
    )


def _directions(draw: Any, letters: str, size: tuple[int, int]) -> None:
    """The patient-direction letters at the left, right, top and bottom edges."""
    width, height = size
    for letter, xy, anchor in (
        (letters[0], (width * 0.02, height / 2), "lm"),
        (letters[1], (width * 0.98, height / 2), "rm"),
        (letters[2], (width / 2, height * 0.02), "mt"),
        (letters[3], (width / 2, height * 0.98), "mb"),
    ):
        _text(draw, xy, letter, size=13, fill=_DIRECTION_COLOUR, anchor=anchor)


def render(
    view: View,
    *,
    lesions: Sequence[dict[str, Any]] = (),
    boxes: Sequence[dict[str, Any]] = (),
    label_names: Sequence[str] = (),
    crop: tuple[slice, slice] | None = None,
    width_px: int = IMAGE_WIDTH_PX,
) -> bytes:
    """PNG of a view with outlines, lesion ids, detector boxes, a scale bar and a title.

    Args:
        view: What to draw.
        lesions: Positions to label: dicts with ``lesion_id``, ``row`` and ``column`` in
            view pixels.
        boxes: A detector's boxes: dicts with ``text`` and the pixel-edge corners
            ``row0``, ``col0``, ``row1``, ``col1`` in view pixels (pixels 3..5 span 3 to 6).
        label_names: Label names by index (unused by the drawing; kept for callers).
        crop: Optional ``(rows, columns)`` window of the view.
        width_px: Width of the drawn image in screen pixels.
    """
    from PIL import Image, ImageDraw

    del label_names
    image, label_map = view.image, view.label_map
    corner = (0, 0)
    if crop is not None:
        image, label_map = image[crop], label_map[crop]
        corner = (crop[0].start or 0, crop[1].start or 0)
    size = _screen_size(image.shape, view.row_mm, view.column_mm, width_px)
    scale = (size[1] / image.shape[0], size[0] / image.shape[1])  # screen px per view px
    canvas = _pixels(image, size)
    draw = ImageDraw.Draw(canvas, "RGBA")
    _outlines(draw, label_map, scale)
    _lesion_ids(draw, lesions, corner, scale, size)
    _boxes(draw, boxes, corner, scale)
    _scale_bar(draw, size, image.shape[1] * view.column_mm, view.length_unit)
    if view.orientation:
        _directions(draw, view.orientation, size)
    page = Image.new("RGB", (size[0], size[1] + TITLE_PX), (255, 255, 255))
    page.paste(canvas, (0, TITLE_PX))
    ImageDraw.Draw(page).text(
        (size[0] / 2, TITLE_PX / 2), view.title, font=_font(12), fill=(0, 0, 0), anchor="mm"
    )
    return png_bytes(np.asarray(page))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(rgb: npt.NDArray[np.uint8]) -> bytes:
    """An 8-bit RGB PNG of ``(rows, columns, 3)`` pixels, every row "Up"-filtered.

    One vectorised filter instead of Pillow's per-row adaptive choice: 1.6x faster on
    these block-upscaled images for 5 % more bytes, and a stream that a PDF embeds as it
    is (:mod:`medres.report.pdf_writer`).
    """
    height, width, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, width * 3)
    raw = np.empty((height, width * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # PNG filter type "Up": each byte minus the one above (mod 256)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), PNG_COMPRESS_LEVEL))
        + _chunk(b"IEND", b"")
    )


__all__ = ["IMAGE_WIDTH_PX", "png_bytes", "render"]
