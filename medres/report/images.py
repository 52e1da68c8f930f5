"""Key images of a scan: lesion close-ups and orthogonal overviews with mask outlines.

Display conventions (stated on every report):

* 3D scans are shown in the **radiological convention**: the volume is first turned to
  the closest RAS axes; axial and coronal views have the patient's right on the image's
  left, axial views anterior at the top, coronal and sagittal views superior at the
  top, sagittal views anterior on the left. Pixels are drawn with their true aspect
  (spacing), so thick slices are not squashed.
* 2D images are shown as stored (first row at the top).
* Windowing: CT with the pipeline's CT window (soft tissue -160..240 HU when it has
  none); other modalities from the 1st to the 99th percentile of the non-zero voxels.
* Outlines are drawn twice, a dark wide line under a bright thin one, so they stay
  visible on bright and dark tissue; every lesion carries its id; a scale bar gives mm.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.io.grid import Grid, world_to_voxel

#: Default CT window (soft tissue), HU.
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
#: Outline colours per lesion label (bright), drawn over a dark line.
OUTLINE_COLOURS = ("#ffd400", "#00e5ff", "#ff5ad1", "#7dff4d")
#: A detector's boxes: dashed, so they stay apart from a second label's cyan outline.
BOX_COLOUR = "#00e5ff"


@dataclass(frozen=True)
class View:
    """One 2D view ready to draw.

    Attributes:
        image: Display-ordered pixels (rows top to bottom, columns left to right).
        label_map: The label map on the same pixels.
        row_mm / column_mm: Pixel size along rows and columns on screen (mm).
        title: e.g. ``axial, z -16.0 mm`` (the plane's RAS coordinate).
        orientation: Letters at the left, right, top and bottom edges (e.g. ``"RLAP"``).
    """

    image: npt.NDArray[np.float32]
    label_map: npt.NDArray[np.uint8]
    row_mm: float
    column_mm: float
    title: str
    orientation: str


def display_channel(array: npt.NDArray[Any], channel_names: Sequence[str]) -> npt.NDArray[Any]:
    """The channel to show: FLAIR when there is one, else the first."""
    names = [n.lower() for n in channel_names]
    index = names.index("flair") if "flair" in names else 0
    channel: npt.NDArray[Any] = array[min(index, array.shape[0] - 1)]
    return channel


def window(
    image: npt.NDArray[Any], *, modality: str, ct_window: tuple[float, float] | None
) -> npt.NDArray[np.float32]:
    """Scale to 0..1 for display (CT window, or 1st-99th percentile of non-zero voxels)."""
    data = np.asarray(image, dtype=np.float32)
    if modality.upper() == "CT" or ct_window is not None:
        low, high = ct_window or SOFT_TISSUE_WINDOW
    else:
        values = data[data != 0]
        if values.size == 0:
            values = data.ravel()
        low, high = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    if high <= low:
        high = low + 1.0
    scaled: npt.NDArray[np.float32] = np.clip((data - low) / (high - low), 0.0, 1.0)
    return scaled


def to_ras(
    array: npt.NDArray[Any], affine: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """Flip/permute a 3D array to the closest RAS axes; returns it and its new affine."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    target = nio.axcodes2ornt(("R", "A", "S"))
    transform = nio.ornt_transform(ornt, target)
    out = nio.apply_orientation(array, transform)
    new_affine = affine @ nio.inv_ornt_aff(transform, array.shape)
    return out, new_affine


def ras_index(affine_ras: npt.NDArray[np.float64], world: Sequence[float]) -> list[int]:
    """Voxel index ``(i, j, k)`` (rounded) of a RAS+ mm point on a RAS-ordered grid.

    Args:
        affine_ras: 4x4 voxel -> RAS+ mm affine of the grid (from :func:`to_ras`).
        world: The point ``(x, y, z)`` in RAS+ mm.
    """
    ijk = world_to_voxel(affine_ras, world)
    return [int(v) for v in np.rint(ijk)]


def orthogonal_views(
    img: npt.NDArray[Any],
    lab: npt.NDArray[np.uint8],
    ras_affine: npt.NDArray[np.float64],
    center_ras_mm: Sequence[float] | None,
    *,
    only: str | None = None,
) -> list[View]:
    """Axial, coronal and sagittal views of a 3D scan through a point (RAS mm).

    Args:
        img: Windowed scan turned to the closest RAS axes (:func:`to_ras`), ``(x, y, z)``.
        lab: Label map on the same RAS-ordered grid.
        ras_affine: Voxel -> RAS mm of that grid.
        center_ras_mm: Point the views go through (None: the centre of the scan).
        only: ``axial``, ``coronal`` or ``sagittal`` for a single view.
    """
    grid = Grid(img.shape, ras_affine)
    spacing = grid.spacing_mm
    if center_ras_mm is None:
        index = [n // 2 for n in img.shape]
    else:
        index = ras_index(ras_affine, center_ras_mm)
    index = [min(max(v, 0), n - 1) for v, n in zip(index, img.shape, strict=True)]
    i, j, k = index
    views = []
    # in every plane: screen rows from the highest second axis down, screen columns from
    # the highest first axis down (patient right / anterior on the left)
    x_mm, y_mm, z_mm = grid.voxel_to_world([i, j, k])
    planes = {
        "axial": (
            img[:, :, k],
            lab[:, :, k],
            spacing[1],
            spacing[0],
            f"axial, z {z_mm:.1f} mm",
            "RLAP",
        ),
        "coronal": (
            img[:, j, :],
            lab[:, j, :],
            spacing[2],
            spacing[0],
            f"coronal, y {y_mm:.1f} mm",
            "RLSI",
        ),
        "sagittal": (
            img[i, :, :],
            lab[i, :, :],
            spacing[2],
            spacing[1],
            f"sagittal, x {x_mm:.1f} mm",
            "APSI",
        ),
    }
    for name, (plane, plane_labels, row_mm, col_mm, title, letters) in planes.items():
        if only is not None and name != only:
            continue
        views.append(
            View(
                image=np.ascontiguousarray(plane[::-1, ::-1].T),
                label_map=np.ascontiguousarray(plane_labels[::-1, ::-1].T),
                row_mm=float(row_mm),
                column_mm=float(col_mm),
                title=title,
                orientation=letters,
            )
        )
    return views


def image_view(
    image: npt.NDArray[Any], label_map: npt.NDArray[np.uint8], spacing: Sequence[float]
) -> View:
    """A 2D image as stored: ``(x, y)`` arrays shown with ``y`` down the screen."""
    return View(
        image=np.ascontiguousarray(np.asarray(image, dtype=np.float32).T),
        label_map=np.ascontiguousarray(label_map.T),
        row_mm=float(spacing[1]),
        column_mm=float(spacing[0]),
        title="image",
        orientation="",
    )


def _scale_bar_mm(width_mm: float) -> float:
    for candidate in (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0):
        if candidate <= width_mm / 4:
            return candidate
    return 1.0


def _draw_outlines(axis: Any, label_map: npt.NDArray[np.uint8], view: View) -> None:
    """Outline every label of ``label_map`` (view pixels): a dark wide line, a bright thin one."""
    from skimage import measure

    for value in sorted(int(v) for v in np.unique(label_map) if v):
        colour = OUTLINE_COLOURS[(value - 1) % len(OUTLINE_COLOURS)]
        padded = np.pad(label_map == value, 1).astype(np.float32)
        for contour in measure.find_contours(padded, 0.5):  # type: ignore[no-untyped-call]
            ys = (contour[:, 0] - 1 + 0.5) * view.row_mm
            xs = (contour[:, 1] - 1 + 0.5) * view.column_mm
            axis.plot(xs, ys, color="black", linewidth=2.6, alpha=0.8)
            axis.plot(xs, ys, color=colour, linewidth=1.1)


def _draw_lesion_ids(
    axis: Any,
    lesions: Sequence[dict[str, Any]],
    view: View,
    corner: tuple[int, int],
    size_mm: tuple[float, float],
) -> None:
    """Each lesion's id at its ``(row, column)``, when inside the shown window.

    Args:
        axis: The matplotlib axes (mm coordinates, rows down).
        lesions: Dicts with ``lesion_id``, ``row`` and ``column`` in view pixels.
        view: The view the positions refer to.
        corner: ``(row, column)`` of the view pixel at the window's top left.
        size_mm: ``(height, width)`` of the shown window in mm.
    """
    height_mm, width_mm = size_mm
    for lesion in lesions:
        y = (lesion["row"] - corner[0] + 0.5) * view.row_mm
        x = (lesion["column"] - corner[1] + 0.5) * view.column_mm
        if 0 <= y <= height_mm and 0 <= x <= width_mm:
            axis.text(
                x,
                y,
                str(lesion["lesion_id"]),
                color="white",
                fontsize=9,
                fontweight="bold",
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.65, "lw": 0},
            )


def _draw_scale_bar(axis: Any, height_mm: float, width_mm: float, outline: list[Any]) -> None:
    """A white bar of a round length in mm at the bottom right, with its length above."""
    from matplotlib.patches import Rectangle

    bar = _scale_bar_mm(width_mm)
    x0, y0 = width_mm * 0.95 - bar, height_mm * 0.94
    axis.add_patch(
        Rectangle(
            (x0, y0),
            bar,
            height_mm * 0.012 + 0.5,
            facecolor="white",
            edgecolor="black",
            linewidth=0.8,
        )
    )
    axis.text(
        x0 + bar / 2,
        y0 - height_mm * 0.015,
        f"{bar:g} mm",
        color="white",
        ha="center",
        va="bottom",
        fontsize=8,
        path_effects=outline,
    )


def _draw_orientation(
    axis: Any, letters: str, height_mm: float, width_mm: float, outline: list[Any]
) -> None:
    """The patient-direction letters at the left, right, top and bottom edges."""
    left, right, top, bottom = (letters[n] for n in range(4))
    for text, x, y, ha, va in (
        (left, width_mm * 0.02, height_mm / 2, "left", "center"),
        (right, width_mm * 0.98, height_mm / 2, "right", "center"),
        (top, width_mm / 2, height_mm * 0.03, "center", "top"),
        (bottom, width_mm / 2, height_mm * 0.98, "center", "bottom"),
    ):
        axis.text(
            x,
            y,
            text,
            ha=ha,
            va=va,
            color="#ffb000",
            fontsize=9,
            fontweight="bold",
            path_effects=outline,
        )


def _draw_boxes(
    axis: Any, boxes: Sequence[dict[str, Any]], view: View, corner: tuple[int, int], outline: Any
) -> None:
    """A detector's boxes as dashed cyan rectangles with ``B<id> <score>`` above them.

    Args:
        axis: The matplotlib axes (mm coordinates, rows down).
        boxes: Dicts with ``text`` and the pixel-edge corners ``row0``, ``col0``, ``row1``,
            ``col1`` in view pixels (a box of pixels 3..5 spans 3 to 6).
        view: The view the corners refer to.
        corner: ``(row, column)`` of the view pixel at the window's top left.
        outline: Path effects that keep the text readable.
    """
    from matplotlib.patches import Rectangle

    for box in boxes:
        y0 = (box["row0"] - corner[0]) * view.row_mm
        x0 = (box["col0"] - corner[1]) * view.column_mm
        height = (box["row1"] - box["row0"]) * view.row_mm
        width = (box["col1"] - box["col0"]) * view.column_mm
        for colour, line in (("black", 2.4), (BOX_COLOUR, 1.2)):
            axis.add_patch(
                Rectangle((x0, y0), width, height, fill=False, edgecolor=colour, lw=line, ls="--")
            )
        axis.text(
            x0,
            y0 - 0.8 * view.row_mm,
            box["text"],
            color=BOX_COLOUR,
            fontsize=8,
            fontweight="bold",
            ha="left",
            va="bottom",
            path_effects=outline,
            clip_on=True,
        )


def render(
    view: View,
    *,
    lesions: Sequence[dict[str, Any]] = (),
    boxes: Sequence[dict[str, Any]] = (),
    label_names: Sequence[str] = (),
    crop: tuple[slice, slice] | None = None,
    size_inches: float = 4.2,
) -> bytes:
    """PNG of a view with outlines, lesion ids, detector boxes and a scale bar.

    Args:
        view: What to draw.
        lesions: ``(lesion_id, row, column)`` positions to label, as dicts with keys
            ``lesion_id``, ``row`` and ``column`` in view pixels.
        boxes: A detector's boxes in view pixels (see :func:`_draw_boxes`).
        label_names: Label names by index (legend colours).
        crop: Optional ``(rows, columns)`` window of the view.
        size_inches: Width of the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects

    image, label_map = view.image, view.label_map
    row0 = col0 = 0
    if crop is not None:
        image, label_map = image[crop], label_map[crop]
        row0, col0 = crop[0].start or 0, crop[1].start or 0
    height_mm = image.shape[0] * view.row_mm
    width_mm = image.shape[1] * view.column_mm
    figure, axis = plt.subplots(
        figsize=(size_inches, size_inches * height_mm / max(width_mm, 1e-6))
    )
    axis.imshow(
        image,
        cmap="gray",
        vmin=0.0,
        vmax=1.0,
        extent=(0, width_mm, height_mm, 0),
        interpolation="nearest",
    )
    _draw_outlines(axis, label_map, view)
    _draw_lesion_ids(axis, lesions, view, (row0, col0), (height_mm, width_mm))
    outline = [patheffects.withStroke(linewidth=2.2, foreground="black")]  # readable on white
    _draw_boxes(axis, boxes, view, (row0, col0), outline)
    axis.set_xlim(0, width_mm)
    axis.set_ylim(height_mm, 0)
    _draw_scale_bar(axis, height_mm, width_mm, outline)
    if view.orientation:
        _draw_orientation(axis, view.orientation, height_mm, width_mm, outline)
    axis.set_title(view.title, fontsize=9)
    axis.set_axis_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def lesion_crop(view: View, row: int, column: int, *, half_mm: float) -> tuple[slice, slice]:
    """A square window of ``2 * half_mm`` around a point of the view."""
    half_rows = max(int(half_mm / view.row_mm), 8)
    half_cols = max(int(half_mm / view.column_mm), 8)
    rows, cols = view.image.shape
    r0 = min(max(row - half_rows, 0), max(rows - 2 * half_rows, 0))
    c0 = min(max(column - half_cols, 0), max(cols - 2 * half_cols, 0))
    return slice(r0, min(r0 + 2 * half_rows, rows)), slice(c0, min(c0 + 2 * half_cols, cols))


__all__ = [
    "BOX_COLOUR",
    "OUTLINE_COLOURS",
    "SOFT_TISSUE_WINDOW",
    "View",
    "display_channel",
    "image_view",
    "lesion_crop",
    "orthogonal_views",
    "render",
    "to_ras",
    "window",
]
