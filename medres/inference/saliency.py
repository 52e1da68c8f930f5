"""Why the model found a lesion: occlusion sensitivity of the ensemble's lesion score.

For one lesion, the *lesion score* is the ensemble's mean logit of the lesion's label over
the lesion's own voxels (its log-odds against the other classes of the softmax): the
target MONAI's :class:`~monai.visualize.OcclusionSensitivity` needs for a segmentation
network, whose default class score assumes a classifier. Each
region of the image around the lesion is blurred away in turn (MONAI's Gaussian
occlusion) and the drop of the score is recorded: where hiding the image lowers the
score most is what the networks looked at. The map is computed on the first model
folder's grid: the networks see a patch-sized window around the lesion (the context they
were trained with), the region analysed is the lesion's box and :data:`MARGIN_VOXELS`
beyond; it is brought back onto the scan's grid, score drops scaled to 0..1 (1: the most
important region; negative drops, where hiding the image raised the score, are 0).

Cost grows with the crop and the number of members; :func:`lesion_saliency` returns the
seconds it took (``benchmarks/bench_saliency.py`` measures them per lesion).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.inference.predictor import Ensemble
from medres.inference.resample import resample_to_grid
from medres.io.volume import Volume
from medres.predictions.records import Lesion

#: Voxels of context around the lesion's box on the model grid.
MARGIN_VOXELS = 16
#: Occluded positions per lesion (2D, 3D): the occluding Gaussian grows with the crop so
#: that the cost per lesion stays bounded (each position is one pass of every member).
MAX_POSITIONS = {2: 144, 3: 64}
#: Networks of the res_unet family need sizes divisible by their total stride.
_MULTIPLE = 16


@dataclass
class SaliencyMap:
    """One lesion's occlusion sensitivity on the scan grid (0..1, NaN outside the crop)."""

    lesion_id: int
    heat: npt.NDArray[np.float32]
    seconds: float
    score: float  # the lesion score without occlusion (mean logit)


class _LesionScore:
    """``image (B, C, ...) -> (B, 1)``: the members' mean logit (log-odds of ``label``
    against the other classes of the softmax) over ``mask``."""

    def __init__(self, networks: list[Any], label: int, mask: Any) -> None:
        import torch

        self.networks = networks
        self.label = label
        self.mask = mask.float()  # (1, ...) on the (padded) crop
        self.voxels = torch.clamp(self.mask.sum(), min=1.0)

    def __call__(self, x: Any) -> Any:
        import torch

        with torch.inference_mode():
            total: Any = 0
            for net in self.networks:
                logits = net(x)
                others = torch.cat([logits[:, : self.label], logits[:, self.label + 1 :]], 1)
                odds = logits[:, self.label] - torch.logsumexp(others, 1)  # the label's logit
                total = total + (odds * self.mask).flatten(1).sum(1) / self.voxels
            return (total / len(self.networks))[:, None]

    def eval(self) -> _LesionScore:  # MONAI switches its module to eval mode
        return self


def _boxes(
    mask: npt.NDArray[np.bool_], shape: tuple[int, ...], patch: tuple[int, ...]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The networks' window (a patch around the lesion, the whole image when smaller; the
    context the networks were trained with: their normalisation sees the whole window)
    and, inside it, the region analysed (the lesion's box and :data:`MARGIN_VOXELS`)."""
    where = np.argwhere(mask)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    window, region = [], []
    for axis, size in enumerate(shape):
        want = min(max(patch[axis], high[axis] - low[axis] + 2 * MARGIN_VOXELS), size)
        start = int(np.clip((low[axis] + high[axis] - want) // 2, 0, size - want))
        window.append(slice(start, start + want))
        first = max(int(low[axis]) - MARGIN_VOXELS, start)
        last = min(int(high[axis]) + MARGIN_VOXELS, start + want)
        region.append(slice(first - start, last - start))  # relative to the window
    return tuple(window), tuple(region)


def _mask_size(crop: tuple[int, ...], dims: int) -> tuple[int, ...]:
    """Per axis, twice the step that leaves at most :data:`MAX_POSITIONS` positions at 50 %
    overlap (at least 4 voxels, at most the crop)."""
    per_axis = MAX_POSITIONS[dims] ** (1.0 / dims)
    return tuple(min(max(2 * int(np.ceil(n / per_axis)), 4), n) for n in crop)


def lesion_saliency(
    ensemble: Ensemble, volume: Volume, label_map: npt.NDArray[np.uint8], lesion: Lesion
) -> SaliencyMap:
    """The occlusion sensitivity of one lesion (see the module docstring).

    Args:
        ensemble: The segmentation ensemble that predicted the scan.
        volume: The scan as loaded.
        label_map: The ensemble's label map on the scan grid.
        lesion: The lesion (its ``label`` and ``center_ijk`` pick the component).
    """
    import torch
    from monai.visualize import OcclusionSensitivity

    from medres.inference.postprocess import label_components

    start = time.perf_counter()
    runner = ensemble.runners[0]
    cfg = runner.folder.pipeline
    label = cfg.labels.index(lesion.label)
    components, _ = label_components(label_map == label)
    centre = tuple(round(c) for c in lesion.center_ijk)
    ids = components[tuple(slice(max(c - 1, 0), c + 2) for c in centre)]
    own = int(np.bincount(ids[ids > 0].ravel()).argmax()) if (ids > 0).any() else 0
    scan_mask = components == own if own else label_map == label
    tensor, model_affine = ensemble._preprocess(runner, volume, "saliency")
    model_shape = tuple(int(s) for s in tensor.shape[1:])
    mask = resample_to_grid(
        scan_mask[None].astype(np.uint8),
        volume.affine,
        model_affine,
        model_shape,
        nearest=True,
        dtype=np.uint8,
    )[0].astype(bool)
    if not mask.any():
        mask = np.zeros(model_shape, bool)
        mask[tuple(s // 2 for s in model_shape)] = True
    box, region = _boxes(mask, model_shape, tuple(cfg.roi_size))
    networks = [runner.folder.load_network(m, device="cpu") for m in runner.members]
    image = tensor[:, box[0], box[1]] if len(box) == 2 else tensor[:, box[0], box[1], box[2]]
    crop_shape = tuple(int(s) for s in image.shape[1:])
    region_shape = tuple(r.stop - r.start for r in region)
    pad = [(-n) % _MULTIPLE for n in crop_shape]  # the networks' stride divides the sizes
    flat_pad = [p for size in reversed(pad) for p in (0, size)]
    image = torch.nn.functional.pad(image[None].float(), flat_pad)
    target = torch.nn.functional.pad(torch.as_tensor(mask[box])[None, None].float(), flat_pad)[0]
    scorer = _LesionScore(networks, label, target)
    baseline = float(scorer(image)[0, 0])
    occlusion = OcclusionSensitivity(
        scorer,
        mask_size=_mask_size(region_shape, cfg.dims),
        n_batch=8,
        verbose=False,
        mode="gaussian",
        overlap=0.5,
        activate=False,
    )
    b_box = [v for r in region for v in (r.start, r.stop - 1)]  # MONAI's: inclusive
    with warnings.catch_warnings():  # MONAI's own indexing, deprecated in torch 2.9
        warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidim.*")
        occluded, _ = occlusion(image, b_box=b_box)
    scores = occluded[0, 0].cpu().numpy()  # (..., N) with N classes; N = 1 may be squeezed
    scores = scores[..., 0] if scores.ndim == cfg.dims + 1 else scores
    drop = np.clip(baseline - scores, 0.0, None)
    drop = drop / drop.max() if drop.max() > 0 else drop
    full = np.full((1, *model_shape), np.nan, np.float32)
    placed = tuple(
        slice(w.start + r.start, w.start + r.start + n)
        for w, r, n in zip(box, region, drop.shape, strict=True)
    )
    full[0][placed] = drop
    heat = resample_to_grid(
        np.nan_to_num(full, nan=-1.0), model_affine, volume.affine, volume.spatial_shape
    )[0]
    heat = np.where(heat < 0, np.nan, heat).astype(np.float32)
    return SaliencyMap(lesion.lesion_id, heat, time.perf_counter() - start, baseline)


__all__ = ["MARGIN_VOXELS", "MAX_POSITIONS", "SaliencyMap", "lesion_saliency"]
