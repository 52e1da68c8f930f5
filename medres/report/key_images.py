"""Key images of a scan report: the overview and one crop per lesion, as PNG bytes.

3D scans are turned to RAS once and shown in the radiological convention (patient right
on the image left); 2D images as stored (first row at the top). Lesion centres come from
the scan's :class:`~medres.predictions.records.Lesion` (``center_ijk`` in array
order ``(x, y[, z])``, ``center_ras_mm`` in RAS+ mm).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from medres.io.volume import ScanKind, Volume
from medres.pipeline import IntensityKind, PipelineConfig
from medres.predictions.records import Lesion
from medres.report.images import (
    View,
    display_channel,
    image_view,
    lesion_crop,
    orthogonal_views,
    ras_index,
    render,
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


def key_images(
    volume: Volume,
    labels: npt.NDArray[np.uint8],
    lesions: Sequence[Lesion],
    cfg: PipelineConfig | None,
) -> tuple[list[tuple[str, bytes]], str]:
    """Overview and per-lesion PNGs: ``[(file name, png)]`` and the orientation note."""
    channel_names = cfg.channels if cfg is not None else volume.channel_names
    shown = display_channel(volume.array, channel_names or ())
    modality = volume.modality or ("CT" if _ct_window(cfg) else "")
    shown = window(shown, modality=modality, ct_window=_ct_window(cfg))
    images: list[tuple[str, bytes]] = []
    labels = labels.reshape(shown.shape)
    if shown.ndim == 2:
        view = image_view(shown, labels, volume.spacing_mm)
        marks = [
            {
                "lesion_id": x.lesion_id,
                "row": round(x.center_ijk[1]),
                "column": round(x.center_ijk[0]),
            }
            for x in lesions
        ]
        images.append(("overview.png", render(view, lesions=marks, size_inches=5.5)))
        for lesion in lesions[:MAX_KEY_IMAGES]:
            row, column = round(lesion.center_ijk[1]), round(lesion.center_ijk[0])
            crop = lesion_crop(
                view, row, column, half_mm=max(lesion.longest_axial_diameter_mm, 15.0)
            )
            mark = [{"lesion_id": lesion.lesion_id, "row": row, "column": column}]
            images.append(
                (f"lesion_{lesion.lesion_id:02d}.png", render(view, lesions=mark, crop=crop))
            )
        note = "2D image shown as stored (first row at the top)."
        if volume.source.kind is ScanKind.IMAGE2D:
            note += (
                " Image files carry no pixel spacing: sizes and the scale bar assume 1 mm pixels."
            )
        return images, note
    # turned to RAS once (flips and transposes: views, no copies); every view reads it
    img_ras, ras_affine = to_ras(shown, volume.affine)
    lab_ras, _ = to_ras(labels, volume.affine)
    ras_shape = img_ras.shape
    center = lesions[0].center_ras_mm if lesions else None
    for view in orthogonal_views(img_ras, lab_ras, ras_affine, center):
        placed = [_mark(view, x, ras_affine, ras_shape) for x in lesions]
        name = f"overview_{view.title.split(',')[0]}.png"
        images.append((name, render(view, lesions=[m for m in placed if m], size_inches=3.4)))
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
        images.append(
            (f"lesion_{lesion.lesion_id:02d}.png", render(view, lesions=[centre], crop=crop))
        )
    note = (
        "Radiological convention: patient right on the image left; axial views anterior "
        "at the top; coronal and sagittal views superior at the top."
    )
    return images, note


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
