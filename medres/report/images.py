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
  visible on bright and dark tissue; every lesion carries its id; a scale bar gives mm
  (the drawing itself is :mod:`medres.report.drawing`'s).
"""

from __future__ import annotations

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
        image: Display-ordered pixels (rows top to bottom, columns left to right), 0..1:
            ``(rows, columns)`` grey or ``(rows, columns, 3)`` colour.
        label_map: The label map on the same pixels.
        row_mm / column_mm: Pixel size along rows and columns on screen (in ``length_unit``).
        title: e.g. ``axial, z -16.0 mm`` (the plane's RAS coordinate).
        orientation: Letters at the left, right, top and bottom edges (e.g. ``"RLAP"``).
        length_unit: ``mm``, or ``px`` for an image without a pixel size (the scale bar's).
    """

    image: npt.NDArray[np.float32]
    label_map: npt.NDArray[np.uint8]
    row_mm: float
    column_mm: float
    title: str
    orientation: str
    length_unit: str = "mm"


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
    image: npt.NDArray[Any],
    label_map: npt.NDArray[np.uint8],
    spacing: Sequence[float],
    *,
    length_unit: str = "mm",
) -> View:
    """A 2D image as stored: ``(x, y)`` arrays (``(x, y, 3)`` in colour) shown with ``y``
    down the screen."""
    pixels = np.asarray(image, dtype=np.float32)
    shown = np.swapaxes(pixels, 0, 1) if pixels.ndim == 3 else pixels.T
    return View(
        image=np.ascontiguousarray(shown),
        label_map=np.ascontiguousarray(label_map.T),
        row_mm=float(spacing[1]),
        column_mm=float(spacing[0]),
        title="image",
        orientation="",
        length_unit=length_unit,
    )


def heat_overlay(
    image: npt.NDArray[Any], heat: npt.NDArray[Any], *, alpha: float = 0.6
) -> npt.NDArray[np.float32]:
    """A saliency map over a 0..1 image, ``(rows, columns, 3)``: black-red-yellow-white
    by importance (0..1) where the map is defined (NaN elsewhere: the image alone)."""
    base = np.asarray(image, dtype=np.float32)
    rgb = base if base.ndim == 3 else np.repeat(base[..., None], 3, axis=-1)
    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0), 0.0, 1.0)
    colour = np.stack(
        [np.clip(3 * h, 0, 1), np.clip(3 * h - 1, 0, 1), np.clip(3 * h - 2, 0, 1)], -1
    )
    weight = np.where(np.isfinite(heat), alpha * np.sqrt(h), 0.0)[..., None]
    out: npt.NDArray[np.float32] = (rgb * (1 - weight) + colour * weight).astype(np.float32)
    return out


def colour_image(array: npt.NDArray[Any], channel_names: Sequence[str]) -> npt.NDArray[Any] | None:
    """A colour photograph's ``(x, y, 3)`` pixels scaled to 0..1, or None when ``array``
    ``(C, x, y)`` is not an RGB image (channels named R, G, B: by the pipeline, so three
    MR sequences stored in one RGB file, as the LGG slices, are shown as MR).

    8-bit images keep their colours exactly (divided by 255); others are scaled by the
    1st-99th percentile of all three channels together, so the hues stay as they are.
    """
    if array.ndim != 3 or array.shape[0] != 3:
        return None
    if [n.upper() for n in channel_names] != ["R", "G", "B"]:
        return None
    rgb = np.moveaxis(np.asarray(array), 0, -1)
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) / 255.0
    low, high = (float(v) for v in np.percentile(rgb, [1.0, 99.0]))
    scaled: npt.NDArray[np.float32] = np.clip(
        (rgb.astype(np.float32) - low) / max(high - low, 1e-6), 0.0, 1.0
    )
    return scaled


def lesion_crop(view: View, row: int, column: int, *, half_mm: float) -> tuple[slice, slice]:
    """A square window of ``2 * half_mm`` around a point of the view."""
    half_rows = max(int(half_mm / view.row_mm), 8)
    half_cols = max(int(half_mm / view.column_mm), 8)
    rows, cols = view.image.shape[:2]
    r0 = min(max(row - half_rows, 0), max(rows - 2 * half_rows, 0))
    c0 = min(max(column - half_cols, 0), max(cols - 2 * half_cols, 0))
    return slice(r0, min(r0 + 2 * half_rows, rows)), slice(c0, min(c0 + 2 * half_cols, cols))


__all__ = [
    "BOX_COLOUR",
    "OUTLINE_COLOURS",
    "SOFT_TISSUE_WINDOW",
    "View",
    "colour_image",
    "display_channel",
    "heat_overlay",
    "image_view",
    "lesion_crop",
    "orthogonal_views",
    "to_ras",
    "window",
]
