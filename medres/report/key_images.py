"""Key images of a scan report: the overview and one crop per lesion, as PNG bytes.

3D scans are turned to RAS once and shown in the radiological convention (patient right
on the image left); 2D images as stored (first row at the top). Lesion centres come from
the scan's :class:`~medres.predictions.records.Lesion` (``center_ijk`` in array
order ``(x, y[, z])``, ``center_ras_mm`` in RAS+ mm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from medres.io.grid import boxes_between_grids
from medres.io.units import PX
from medres.io.volume import Volume
from medres.pipeline import IntensityKind, PipelineConfig
from medres.predictions.detections import DetectionBox
from medres.predictions.records import Lesion
from medres.report.drawing import render
from medres.report.images import (
    View,
    colour_image,
    display_channel,
    heat_overlay,
    image_view,
    lesion_crop,
    orthogonal_views,
    ras_index,
    to_ras,
    window,
)

#: Lesions that get their own key image (all are in the table).
MAX_KEY_IMAGES = 12


def _ct_window(cfg: PipelineConfig | None) -> tuple[float, float] | None:
    if cfg is not None and cfg.preprocessing.intensity.kind == IntensityKind.CT_WINDOW:
        low, high = cfg.preprocessing.intensity.window or (-160.0, 240.0)
        return (float(low), float(high))
    return None


def _box_text(box: DetectionBox) -> str:
    return f"B{box.box_id} {box.score:.2f}"


def _boxes_2d(boxes: Sequence[DetectionBox]) -> list[dict[str, object]]:
    """Boxes on a 2D image view (rows: y, columns: x)."""
    return [
        {
            "row0": b.box_ijk[1],
            "col0": b.box_ijk[0],
            "row1": b.box_ijk[3],
            "col1": b.box_ijk[2],
            "text": _box_text(b),
        }
        for b in boxes
    ]


def _boxes_3d(
    view_name: str,
    index: Sequence[int],
    ras_boxes: Sequence[tuple[DetectionBox, npt.NDArray[np.float64]]],
    shape: Sequence[int],
) -> list[dict[str, object]]:
    """Boxes (voxel corners of the RAS-turned grid) on one plane through ``index``."""
    ni, nj, nk = shape
    plane = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}[view_name]
    across, col_axis, row_axis = plane
    sizes = (ni, nj, nk)
    out = []
    for box, ras in ras_boxes:
        if not ras[across] <= index[across] + 0.5 < ras[across + 3]:
            continue  # the plane does not cut this box
        out.append(
            {
                "row0": sizes[row_axis] - ras[row_axis + 3],
                "row1": sizes[row_axis] - ras[row_axis],
                "col0": sizes[col_axis] - ras[col_axis + 3],
                "col1": sizes[col_axis] - ras[col_axis],
                "text": _box_text(box),
            }
        )
    return out


def key_images(
    volume: Volume,
    labels: npt.NDArray[np.uint8],
    lesions: Sequence[Lesion],
    cfg: PipelineConfig | None,
    boxes: Sequence[DetectionBox] = (),
    heats: dict[int, npt.NDArray[np.float32]] | None = None,
) -> tuple[list[tuple[str, bytes]], str]:
    """Overview, per-lesion and per-box PNGs: ``[(file name, png)]`` and the orientation
    note. ``boxes`` (a detector's reported boxes) are drawn on every image they cross;
    each also gets its own key image (``box_NN.png``) when no lesion was segmented.
    ``heats``: lesion id -> its saliency map on the scan grid
    (:mod:`medres.inference.saliency`), drawn as ``saliency_NN.png`` beside its key image."""
    channel_names = cfg.channels if cfg is not None else volume.channel_names
    colour = colour_image(volume.array, channel_names or ())  # the pipeline names them
    if colour is not None:  # a photograph: shown in its own colours
        labels = labels.reshape(colour.shape[:2])
        images = _images_2d(colour, labels, volume, lesions, boxes, heats or {})
        return images, _note_2d(volume, colour=True)
    shown = display_channel(volume.array, channel_names or ())
    modality = volume.modality or ("CT" if _ct_window(cfg) else "")
    shown = window(shown, modality=modality, ct_window=_ct_window(cfg))
    labels = labels.reshape(shown.shape)
    if shown.ndim == 2:
        images = _images_2d(shown, labels, volume, lesions, boxes, heats or {})
        return images, _note_2d(volume, colour=False)
    note = (
        "Radiological convention: patient right on the image left; axial views anterior "
        "at the top; coronal and sagittal views superior at the top."
    )
    return _images_3d(shown, labels, volume, lesions, boxes, heats or {}), note


def _note_2d(volume: Volume, *, colour: bool) -> str:
    """How a 2D image is shown, and in which unit its scale bar is."""
    note = (
        f"2D image shown as stored{' in its own colours' if colour else ''} (first row at the top)."
    )
    if volume.length_unit == PX:
        note += " The image gives no pixel size: sizes and the scale bar are in pixels (px)."
    return note


def _images_2d(
    shown: npt.NDArray[np.floating],
    labels: npt.NDArray[np.uint8],
    volume: Volume,
    lesions: Sequence[Lesion],
    boxes: Sequence[DetectionBox],
    heats: dict[int, npt.NDArray[np.float32]],
) -> list[tuple[str, bytes]]:
    """Overview, per-lesion (and saliency) and per-box PNGs of a 2D image."""
    images: list[tuple[str, bytes]] = []
    view = image_view(shown, labels, volume.spacing_mm, length_unit=volume.length_unit)
    marks = [
        {"lesion_id": x.lesion_id, "row": round(x.center_ijk[1]), "column": round(x.center_ijk[0])}
        for x in lesions
    ]
    drawn = _boxes_2d(boxes)
    images.append(("overview.png", render(view, lesions=marks, boxes=drawn, width_px=520)))
    for lesion in lesions[:MAX_KEY_IMAGES]:
        row, column = round(lesion.center_ijk[1]), round(lesion.center_ijk[0])
        crop = lesion_crop(view, row, column, half_mm=max(lesion.longest_axial_diameter_mm, 15.0))
        mark = [{"lesion_id": lesion.lesion_id, "row": row, "column": column}]
        image = render(view, lesions=mark, boxes=drawn, crop=crop)
        images.append((f"lesion_{lesion.lesion_id:02d}.png", image))
        heat = heats.get(lesion.lesion_id)
        if heat is not None:
            shown_heat = np.swapaxes(heat, 0, 1)  # (x, y) -> rows, columns, as the view
            hot = replace(view, image=heat_overlay(view.image, shown_heat), title="saliency")
            images.append(
                (f"saliency_{lesion.lesion_id:02d}.png", render(hot, lesions=mark, crop=crop))
            )
    for box in [] if lesions else boxes[:MAX_KEY_IMAGES]:
        i0, j0, i1, j1 = box.box_ijk
        half = max((i1 - i0) * view.column_mm, (j1 - j0) * view.row_mm, 30.0)
        crop = lesion_crop(view, round((j0 + j1) / 2), round((i0 + i1) / 2), half_mm=half)
        image = render(view, boxes=_boxes_2d([box]), crop=crop)
        images.append((f"box_{box.box_id:02d}.png", image))
    return images


def _images_3d(
    shown: npt.NDArray[np.floating],
    labels: npt.NDArray[np.uint8],
    volume: Volume,
    lesions: Sequence[Lesion],
    boxes: Sequence[DetectionBox],
    heats: dict[int, npt.NDArray[np.float32]],
) -> list[tuple[str, bytes]]:
    """Orthogonal overviews, per-lesion (and saliency) and per-box axial PNGs of a volume.

    Long: the three kinds of image share the RAS-turned arrays and the box mapping.
    """
    images: list[tuple[str, bytes]] = []
    # turned to RAS once (flips and transposes: views, no copies); every view reads it
    img_ras, ras_affine = to_ras(shown, volume.affine)
    lab_ras, _ = to_ras(labels, volume.affine)
    ras_shape = img_ras.shape
    in_ras = boxes_between_grids(
        np.asarray([b.box_ijk for b in boxes]).reshape(-1, 6), volume.affine, ras_affine
    )
    ras_boxes = list(zip(boxes, in_ras, strict=True))

    def through(point: Sequence[float] | None) -> list[int]:
        if point is None:
            return [n // 2 for n in ras_shape]
        index = ras_index(ras_affine, point)
        return [min(max(v, 0), n - 1) for v, n in zip(index, ras_shape, strict=True)]

    center = lesions[0].center_ras_mm if lesions else boxes[0].center_ras_mm if boxes else None
    for view in orthogonal_views(img_ras, lab_ras, ras_affine, center):
        placed = [_mark(view, x, ras_affine, ras_shape) for x in lesions]
        plane = view.title.split(",")[0]
        drawn = _boxes_3d(plane, through(center), ras_boxes, ras_shape)
        image = render(view, lesions=[m for m in placed if m], boxes=drawn, width_px=380)
        images.append((f"overview_{plane}.png", image))
    for lesion in lesions[:MAX_KEY_IMAGES]:
        (view,) = orthogonal_views(img_ras, lab_ras, ras_affine, lesion.center_ras_mm, only="axial")
        centre = _mark(view, lesion, ras_affine, ras_shape)
        if centre is None:
            continue
        crop = lesion_crop(
            view,
            centre["row"],
            centre["column"],
            half_mm=max(lesion.longest_axial_diameter_mm, 20.0),
        )
        drawn = _boxes_3d("axial", through(lesion.center_ras_mm), ras_boxes, ras_shape)
        image = render(view, lesions=[centre], boxes=drawn, crop=crop)
        images.append((f"lesion_{lesion.lesion_id:02d}.png", image))
        heat = heats.get(lesion.lesion_id)
        if heat is not None:
            heat_ras, _ = to_ras(heat, volume.affine)
            (heat_view,) = orthogonal_views(
                heat_ras, lab_ras, ras_affine, lesion.center_ras_mm, only="axial"
            )
            hot = replace(view, image=heat_overlay(view.image, heat_view.image), title="saliency")
            images.append(
                (f"saliency_{lesion.lesion_id:02d}.png", render(hot, lesions=[centre], crop=crop))
            )
    for box, ras in [] if lesions else ras_boxes[:MAX_KEY_IMAGES]:
        (view,) = orthogonal_views(img_ras, lab_ras, ras_affine, box.center_ras_mm, only="axial")
        drawn = _boxes_3d("axial", through(box.center_ras_mm), [(box, ras)], ras_shape)
        if not drawn:
            continue
        d = drawn[0]
        row, column = round((d["row0"] + d["row1"]) / 2), round((d["col0"] + d["col1"]) / 2)  # type: ignore[operator]
        half = max(box.size_mm[:2]) if box.size_mm else 20.0
        crop = lesion_crop(view, row, column, half_mm=max(half, 20.0))
        images.append((f"box_{box.box_id:02d}.png", render(view, boxes=drawn, crop=crop)))
    return images


def _mark(
    view: View, lesion: Lesion, ras_affine: npt.NDArray[np.float64], shape: Sequence[int]
) -> dict[str, int] | None:
    """Where a lesion's centre falls in a view (None when it is not near that plane)."""
    i, j, k = ras_index(ras_affine, lesion.center_ras_mm)
    ni, nj, nk = shape
    plane = view.title.split(",")[0]
    if plane == "axial":
        row, column = nj - 1 - j, ni - 1 - i
    elif plane == "coronal":
        row, column = nk - 1 - k, ni - 1 - i
    else:
        row, column = nk - 1 - k, nj - 1 - j
    rows, columns = view.label_map.shape
    if not (0 <= row < rows and 0 <= column < columns):
        return None
    near = view.label_map[max(row - 3, 0) : row + 4, max(column - 3, 0) : column + 4]
    if not near.any():
        return None
    return {"lesion_id": lesion.lesion_id, "row": int(row), "column": int(column)}


__all__ = ["MAX_KEY_IMAGES", "key_images"]
