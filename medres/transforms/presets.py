"""MONAI dictionary-transform presets built from a :class:`~medres.pipeline.PipelineConfig`.

Three stages, applied to records ``{"image": [paths...], "label": path}``:

* :func:`preprocessing_transforms`: deterministic and cacheable. Loads with medres's own
  readers (so geometry is the loader's, never re-guessed), reorients, resamples, crops
  to the foreground and normalises intensities. Every geometric step is a MONAI
  invertible transform, so a prediction can be mapped back onto the scan's own grid with
  ``monai.transforms.Invertd``.
* :func:`augmentation_transforms`: random patch sampling (lesion-centred with the
  configured probability), flips, rotation/zoom, intensity changes and noise.
* :func:`training_transforms` / :func:`validation_transforms`: the two composed.

Arrays are channel-first ``(C, x, y[, z])`` MetaTensors whose ``affine`` is RAS mm.

Example:
    >>> from medres.pipeline import load_pipeline  # doctest: +SKIP
    >>> cfg = load_pipeline("pipelines/demo_ct_3d.yaml")  # doctest: +SKIP
    >>> prepare = validation_transforms(cfg)  # doctest: +SKIP
    >>> record = prepare({"image": ["ct.nii.gz"], "label": "mask.nii.gz"})  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from monai.transforms import Transform

from medres.errors import DatasetError, LoadError, MedresError
from medres.io.grid import GRID_TOLERANCE_MM, Grid, squeeze_single_slice_volume
from medres.io.images2d import is_image2d_path, read_image2d, read_mask2d
from medres.io.nifti import is_nifti_path, read_nifti
from medres.io.volume import Volume
from medres.pipeline import IntensityKind, PipelineConfig

IMAGE = "image"
LABEL = "label"
#: A training record's truth boxes (voxel corners on the image) and their classes (positions
#: in ``lesion_labels``), when the truth came as boxes instead of a mask.
BOXES = "boxes"
BOX_CLASSES = "box_classes"


def fit_dims(volume: Volume, *, dims: int, source: str) -> Volume:
    """``volume`` as a ``dims``-D image: a single-slice 3D scan becomes 2D for a 2D pipeline.

    Raises:
        LoadError: The scan has other spatial dimensions than the pipeline.
    """
    if dims == 2:
        volume = squeeze_single_slice_volume(volume)
    if volume.spatial_ndim != dims:
        raise LoadError(
            f"{source}: {volume.spatial_ndim}D image {volume.spatial_shape} but the "
            f"pipeline is {dims}D"
        )
    return volume


def read_channels(paths: Sequence[str | Path], *, dims: int) -> Volume:
    """Read one or several files and stack their channels into one :class:`Volume`.

    Args:
        paths: NIfTI files (3D, or 4D with channels) or 2D images, all on one grid.
        dims: Spatial dimensions the pipeline expects (2 or 3).

    Raises:
        LoadError: Unreadable file, unsupported format, or channels on different grids.
    """
    volumes: list[Volume] = []
    for path in paths:
        p = Path(path)
        if is_nifti_path(p):
            vol = read_nifti(p)
        elif is_image2d_path(p):
            vol = read_image2d(p)
        else:
            raise LoadError(f"{p}: unsupported file type for training (use NIfTI or 2D images)")
        vol = fit_dims(vol, dims=dims, source=str(p))
        if volumes:
            first = volumes[0]
            if not Grid.of(vol).same_grid(Grid.of(first)):
                raise LoadError(
                    f"{p}: channel grid {vol.spatial_shape} differs from {paths[0]} "
                    f"{first.spatial_shape} (shape or affine)"
                )
        volumes.append(vol)
    if not volumes:
        raise LoadError("no image files given")
    if len(volumes) == 1:
        return volumes[0]
    array = np.concatenate([v.array.astype(np.float32, copy=False) for v in volumes], axis=0)
    return volumes[0].with_array(array)


def read_label(path: str | Path, image: Volume) -> Volume:
    """Read a label mask for ``image`` (same grid required).

    A single-slice label ``(x, y, 1)`` of a 2D image is read as 2D, like the image (see
    :func:`fit_dims`). Grids match when every voxel corner lies within
    :data:`~medres.io.grid.GRID_TOLERANCE_MM` (RAS mm).

    Raises:
        MaskMismatchError: Shape or affine differ from the image.
        LoadError: Unreadable file.
    """
    from medres.errors import MaskMismatchError

    p = Path(path)
    if is_image2d_path(p):
        return read_mask2d(p, like=image)
    label = read_nifti(p)
    if image.spatial_ndim == 2:
        label = squeeze_single_slice_volume(label)
    if label.spatial_shape != image.spatial_shape:
        raise MaskMismatchError(
            f"{p}: label shape {label.spatial_shape} differs from its image {image.spatial_shape}"
        )
    label_grid, image_grid = Grid.of(label), Grid.of(image)
    if not label_grid.same_grid(image_grid):
        raise MaskMismatchError(
            f"{p}: label affine differs from its image's (different grid: voxel corners up to "
            f"{label_grid.corner_distance_mm(image_grid):.3f} mm apart, more than "
            f"{GRID_TOLERANCE_MM} mm)"
        )
    return label


def label_lookup(cfg: PipelineConfig, max_value: int) -> npt.NDArray[np.int64]:
    """A lookup table raw mask value -> label index (-1 where the value is not allowed)."""
    table = np.full(max(max_value, 0) + 1, -1, dtype=np.int64)
    for value in range(min(len(cfg.labels), table.size)):
        table[value] = value
    for raw, target in cfg.label_map.items():
        if raw < table.size:
            table[raw] = target
    return table


def map_labels(
    array: npt.NDArray[Any], cfg: PipelineConfig, *, source: str
) -> npt.NDArray[np.uint8]:
    """Map raw mask values to label indices.

    Raises:
        DatasetError: A value that is neither a label index nor in ``label_map``.
    """
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and (
        not np.all(np.isfinite(array)) or not np.array_equal(array, np.rint(array))
    ):
        raise DatasetError(f"{source}: label mask holds non-integer values")
    values = np.unique(array)
    if values[0] < 0:
        raise DatasetError(f"{source}: label mask holds negative values ({values[0]})")
    table = label_lookup(cfg, int(values[-1]))
    bad = [int(v) for v in values if table[int(v)] < 0]
    if bad:
        raise DatasetError(
            f"{source}: label value(s) {bad} are not in the pipeline (labels "
            f"{list(cfg.labels)}, label_map {cfg.label_map or '{}'}); add them to label_map"
        )
    return table[array.astype(np.int64)].astype(np.uint8)


def _nonzero_any_channel(x: Any) -> Any:
    return (x != 0).any(0, keepdims=True)


def _compact(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Pixels in a dtype the transforms take without a full-size float32 copy.

    Small integer types (CT's int16, 8-bit images) stay as they are: reorienting copies
    them at their own size and resampling converts only what it produces; everything else
    becomes float32. The intensity step and a final ``EnsureTyped`` give float32 anyway.
    """
    if array.dtype in (np.uint8, np.int8, np.int16, np.uint16):
        return array
    return array.astype(np.float32, copy=False)


class LoadCased(Transform):  # type: ignore[misc]
    """MONAI dictionary transform: paths -> channel-first MetaTensors with RAS affines.

    Reads ``record["image"]`` (a path or list of paths, one per channel group) with medres's
    readers, or takes it as is when it is an already loaded :class:`Volume` (then
    ``record["source"]`` names it in messages), and ``record["label"]`` when present,
    mapped to label indices. It is a MONAI ``Transform`` (deterministic), so
    ``CacheDataset`` caches its output and everything after it up to the first random
    step: scans are decoded once, not every epoch.
    """

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg

    def __call__(self, record: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        out = dict(record)
        given = record[IMAGE]
        if isinstance(given, Volume):  # already loaded (medres predict: DICOM, NIfTI, 2D)
            image = fit_dims(given, dims=self.cfg.dims, source=str(record.get("source", "scan")))
            paths: list[str | Path] = [str(record.get("source", "scan"))]
        else:
            paths = [given] if isinstance(given, (str, Path)) else list(given)
            image = read_channels(paths, dims=self.cfg.dims)
        if image.array.shape[0] != len(self.cfg.channels):
            raise DatasetError(
                f"{paths[0]}: {image.array.shape[0]} channel(s) but the pipeline expects "
                f"{len(self.cfg.channels)} ({', '.join(self.cfg.channels)})"
            )
        affine = image.affine.copy()

        def meta() -> dict[str, Any]:
            return {"filename_or_obj": str(paths[0]), "original_affine": affine.copy()}

        out[IMAGE] = MetaTensor(
            np.ascontiguousarray(_compact(image.array)), affine=affine.copy(), meta=meta()
        )
        if record.get(LABEL):
            label = read_label(record[LABEL], image)
            mapped = map_labels(label.array, self.cfg, source=str(record[LABEL]))
            out[LABEL] = MetaTensor(mapped, affine=affine.copy(), meta=meta())
        elif record.get(BOXES) is not None:  # detection truth given as voxel boxes
            from medres.transforms.instances import INSTANCE_LABELS, paint_boxes

            ids, labels = paint_boxes(
                np.asarray(record[BOXES], np.float64),
                [self.cfg.lesion_indices[int(c)] for c in record[BOX_CLASSES]],
                shape=image.spatial_shape,
            )
            out[LABEL] = MetaTensor(ids[None], affine=affine.copy(), meta=meta())
            out[INSTANCE_LABELS] = labels
        return out


def medres_error_from(exc: BaseException) -> MedresError | None:
    """The :class:`MedresError` that MONAI wrapped in ``RuntimeError("applying transform")``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MedresError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def unwrap_transform_errors() -> Iterator[None]:
    """Re-raise medres errors (bad file, bad label) that MONAI's ``Compose`` wrapped."""
    try:
        yield
    except RuntimeError as exc:
        inner = medres_error_from(exc)
        if inner is not None:
            raise inner from None
        raise


def preprocessing_transforms(cfg: PipelineConfig, *, with_label: bool = True) -> list[Any]:
    """Deterministic steps (load, orientation, spacing, crop, intensity), in order."""
    from monai import transforms as mt

    keys = [IMAGE, LABEL] if with_label else [IMAGE]
    pre = cfg.preprocessing
    steps: list[Any] = [LoadCased(cfg)]
    if pre.orientation and cfg.dims == 3:
        steps.append(mt.Orientationd(keys=keys, axcodes=pre.orientation.upper(), labels=None))
    if pre.target_spacing_mm is not None:
        modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
        steps.append(
            mt.Spacingd(keys=keys, pixdim=pre.target_spacing_mm, mode=modes, dtype=np.float32)
        )
    if pre.crop_foreground:
        steps.append(
            mt.CropForegroundd(
                keys=keys,
                source_key=IMAGE,
                select_fn=_nonzero_any_channel,
                allow_smaller=True,
                margin=2,
            )
        )
    intensity = pre.intensity
    if intensity.kind == IntensityKind.CT_WINDOW:
        assert intensity.window is not None
        low, high = intensity.window
        steps.append(
            mt.ScaleIntensityRanged(
                keys=IMAGE, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True
            )
        )
    elif intensity.kind == IntensityKind.ZSCORE:
        steps.append(
            mt.NormalizeIntensityd(keys=IMAGE, nonzero=intensity.foreground_only, channel_wise=True)
        )
    elif intensity.kind == IntensityKind.PERCENTILE:
        steps.append(
            mt.ScaleIntensityRangePercentilesd(
                keys=IMAGE,
                lower=0.5,
                upper=99.5,
                b_min=0.0,
                b_max=1.0,
                clip=True,
                channel_wise=True,
            )
        )
    steps.append(mt.EnsureTyped(keys=IMAGE, dtype=np.float32, track_meta=True))
    if with_label:
        steps.append(mt.EnsureTyped(keys=LABEL, dtype=np.uint8, track_meta=True))
    if with_label and cfg.is_detection:  # one id per lesion, boxes taken after augmentation
        from medres.transforms.instances import InstanceLabelsd

        steps.append(
            InstanceLabelsd(cfg.lesion_indices, min_size=cfg.postprocessing.min_lesion_size)
        )
    return steps


def augmentation_transforms(cfg: PipelineConfig) -> list[Any]:
    """Random steps for training: patch sampling, flips, rotation/zoom, intensity, noise."""
    from monai import transforms as mt

    keys = [IMAGE, LABEL]
    patch = list(cfg.training.patch_size)
    aug = cfg.augmentation
    p = cfg.training.positive_fraction
    steps: list[Any] = [
        mt.SpatialPadd(keys=keys, spatial_size=patch),
        mt.RandCropByPosNegLabeld(
            keys=keys,
            label_key=LABEL,
            spatial_size=patch,
            pos=p,
            neg=1.0 - p,
            num_samples=1,
            allow_smaller=True,
        ),
    ]
    steps += [mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in aug.flip_axes]
    if aug.affine_prob > 0 and (aug.rotate_deg > 0 or aug.scale != (1.0, 1.0)):
        angle = math.radians(aug.rotate_deg)
        rotate = (angle,) if cfg.dims == 2 else (angle, angle, angle)
        zoom = (aug.scale[0] - 1.0, aug.scale[1] - 1.0)
        steps.append(
            mt.RandAffined(
                keys=keys,
                prob=aug.affine_prob,
                rotate_range=rotate,
                scale_range=[zoom] * cfg.dims,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            )
        )
    if aug.intensity_prob > 0 and aug.intensity_scale > 0:
        steps.append(
            mt.RandScaleIntensityd(keys=IMAGE, factors=aug.intensity_scale, prob=aug.intensity_prob)
        )
    if aug.intensity_prob > 0 and aug.intensity_shift > 0:
        steps.append(
            mt.RandShiftIntensityd(keys=IMAGE, offsets=aug.intensity_shift, prob=aug.intensity_prob)
        )
    if aug.noise_prob > 0 and aug.noise_std > 0:
        steps.append(mt.RandGaussianNoised(keys=IMAGE, prob=aug.noise_prob, std=aug.noise_std))
    steps.append(mt.EnsureTyped(keys=keys, track_meta=False))
    return steps


def training_transforms(cfg: PipelineConfig) -> Any:
    """Preprocessing + augmentation as one ``Compose`` (cache stops at the first random step)."""
    from monai.transforms import Compose

    return Compose(preprocessing_transforms(cfg) + augmentation_transforms(cfg))


def validation_transforms(cfg: PipelineConfig, *, with_label: bool = True) -> Any:
    """Preprocessing only, as one ``Compose`` (invertible with ``Invertd``)."""
    from monai.transforms import Compose

    return Compose(preprocessing_transforms(cfg, with_label=with_label))


__all__ = [
    "BOXES",
    "BOX_CLASSES",
    "IMAGE",
    "LABEL",
    "LoadCased",
    "augmentation_transforms",
    "fit_dims",
    "label_lookup",
    "map_labels",
    "medres_error_from",
    "preprocessing_transforms",
    "read_channels",
    "read_label",
    "training_transforms",
    "unwrap_transform_errors",
    "validation_transforms",
]
