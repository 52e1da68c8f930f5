"""After cross-validation: calibrate each member's probabilities and choose the
post-processing from the out-of-fold predictions, as nnU-Net chooses its post-processing.

Every member predicts the cases of its own validation fold (cases it never trained on),
on the pipeline's grid, with the flip views ``medres predict`` averages (``inference.tta``).
From those out-of-fold logits:

* **temperature scaling**: one temperature ``T`` per member minimises the negative
  log-likelihood of the truth under the mean over the flip views of ``softmax(logits /
  T)``, the probability predict computes (a golden-section search over ``log T``; up to
  :data:`MAX_FIT_VOXELS` voxels sampled per member). It changes no
  decision at ``argmax`` and makes the probabilities honest: the expected calibration
  error (ECE, 15 equal-width bins of the lesion probability) is measured before and after,
  over all voxels and over the **lesion region** (truth or prediction, dilated by
  :data:`LESION_REGION_VOXELS` voxels), where the background's easy zeros do not hide it.
* **post-processing**: every combination of threshold (binary tasks), smallest lesion
  and keeping only the largest lesion is scored on the calibrated out-of-fold
  probabilities by the mean of per-patient Dice and lesion F1 (lesions matched at IoU
  0.1). The best at the pipeline's threshold is taken, another threshold only when it
  adds more than :data:`MIN_GAIN` on top (thresholds overfit a few out-of-fold patients
  most easily), and the result replaces the pipeline's own settings only when it beats
  them by more than :data:`MIN_GAIN`.

The result is a :class:`~medres.models.manifest.CrossValidationEntry` in ``model.json``;
``medres predict`` applies it (the temperatures before the softmax, the post-processing to
the ensemble's map) and the report states it. Sizes are measured on the pipeline's grid
(``target_spacing_mm`` when it resamples), in px² for image files without a pixel size.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.evaluation.calibration import ReliabilityBins, lesion_region
from medres.io.atomic import write_text_atomic
from medres.io.grid import Grid
from medres.io.images2d import is_image2d_path
from medres.models.folder import ModelFolder
from medres.models.manifest import (
    MANIFEST,
    CrossValidationEntry,
    PostprocessingChoice,
    parse_manifest,
)
from medres.pipeline import PipelineConfig
from medres.training.datasets import TrainingCase

logger = logging.getLogger(__name__)

#: Voxels sampled per member to fit its temperature.
MAX_FIT_VOXELS = 2_000_000
#: How much better (mean of Dice and F1) a candidate must be than the pipeline's settings.
MIN_GAIN = 0.005
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
#: Smallest-lesion candidates, as multiples of the pipeline's own (plus 0).
SIZE_FACTORS = (0.0, 0.5, 1.0, 2.0, 4.0)


@dataclass
class OutOfFold:
    """One case predicted by the member that did not train on it."""

    case_id: str
    group: str
    member: str
    logits: npt.NDArray[np.float32]  # (V, K, ...): per flip view, flipped back
    truth: npt.NDArray[np.uint8]  # (...)
    voxel_measure: float


def out_of_fold_logits(
    folder: ModelFolder,
    cases: Sequence[TrainingCase],
    *,
    device: str = "cpu",
    on_case: Callable[[int, int], None] | None = None,
) -> list[OutOfFold]:
    """Each member's logits on the validation cases of its fold (``split.json``)."""
    from monai.data import Dataset

    from medres.transforms.presets import unwrap_transform_errors, validation_transforms

    cfg = folder.pipeline
    split = json.loads((folder.path / "split.json").read_text(encoding="utf-8"))
    by_id = {c.case_id: c for c in cases}
    jobs = [
        (member, [by_id[i] for i in fold["val_cases"] if i in by_id])
        for member in folder.members
        for fold in split["folds"]
        if fold["fold"] == member.fold
    ]
    total, done = sum(len(c) for _, c in jobs), 0
    found: list[OutOfFold] = []
    for member, val_cases in jobs:
        net = folder.load_network(member, device=device)
        with unwrap_transform_errors():
            items = Dataset([c.record() for c in val_cases], transform=validation_transforms(cfg))
            for case, item in zip(val_cases, items, strict=True):
                found.append(
                    OutOfFold(
                        case.case_id,
                        case.group,
                        member.name,
                        _view_logits(net, item["image"], cfg, device),
                        np.asarray(item["label"])[0].astype(np.uint8),
                        _voxel_measure(cfg, item["image"], case),
                    )
                )
                done += 1
                if on_case is not None:
                    on_case(done, total)
    return found


def _view_logits(net: Any, image: Any, cfg: PipelineConfig, device: str) -> npt.NDArray[np.float32]:
    """Logits ``(V, K, ...)`` of the image and of each flip predict averages, flipped back."""
    import torch

    from medres.inference.sliding import predict_logits

    axes = [a + 1 for a in cfg.augmentation.flip_axes] if cfg.inference.tta else []
    flips = [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]
    views = [predict_logits(net, image, cfg, device=device).float().cpu()]
    for dims in flips:
        flipped = predict_logits(net, torch.flip(torch.as_tensor(image), dims), cfg, device=device)
        views.append(torch.flip(flipped.float().cpu(), dims))
    return torch.stack(views).numpy()


def _voxel_measure(cfg: PipelineConfig, image: Any, case: TrainingCase) -> float:
    """One voxel's size on the pipeline grid: mm³, mm², or 1 px² for an image file."""
    if cfg.dims == 2 and is_image2d_path(case.image_paths[0]):
        size = cfg.preprocessing.pixel_size_mm
        return float(size[0] * size[1]) if size else 1.0
    affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
    return Grid(tuple(image.shape[1:]), affine).voxel_measure


def _softmax(logits: npt.NDArray[np.float32], temperature: float) -> npt.NDArray[np.float32]:
    """Probabilities ``(K, ...)``: the mean over the views of ``softmax(logits / T)``;
    ``logits`` is ``(V, K, ...)``."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    out: npt.NDArray[np.float32] = (exp / exp.sum(axis=1, keepdims=True)).mean(axis=0)
    return out.astype(np.float32)


def fit_temperature(logits: npt.NDArray[np.float32], truth: npt.NDArray[np.integer[Any]]) -> float:
    """The temperature minimising the NLL of ``truth`` (N,) under ``logits`` (N, K), or
    ``(V, N, K)`` for several views whose probabilities are averaged."""
    views = logits[None] if logits.ndim == 2 else logits
    shifted = views - views.max(axis=2, keepdims=True)
    rows = np.arange(len(truth))
    labels = truth.astype(np.int64)

    def nll(log_t: float) -> float:
        exp = np.exp(shifted / math.exp(log_t))
        picked = (exp[:, rows, labels] / exp.sum(axis=2)).mean(axis=0)
        return float(-np.mean(np.log(np.maximum(picked, 1e-12))))

    low, high = math.log(0.05), math.log(20.0)
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = high - golden * (high - low), low + golden * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(40):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - golden * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + golden * (high - low)
            fb = nll(b)
    return round(math.exp((low + high) / 2.0), 4)


def _fit_member(cases: Sequence[OutOfFold], *, seed: int = 0) -> float:
    """One member's temperature from a sample of the voxels of its out-of-fold cases."""
    n_views, n_classes = cases[0].logits.shape[:2]
    flat = [c.logits.reshape(n_views, n_classes, -1) for c in cases]
    truth = np.concatenate([c.truth.ravel() for c in cases])
    logits = np.concatenate(flat, axis=2).transpose(0, 2, 1)  # (V, N, K)
    if len(truth) > MAX_FIT_VOXELS:
        pick = np.random.default_rng(seed).choice(len(truth), MAX_FIT_VOXELS, replace=False)
        logits, truth = logits[:, pick], truth[pick]
    return fit_temperature(logits, np.minimum(truth, n_classes - 1))


def _ece(
    cases: Sequence[OutOfFold], temperatures: dict[str, float], lesion_indices: Sequence[int]
) -> tuple[float, float]:
    """ECE of the lesion probability over all voxels and over the lesion region."""
    everything, region = ReliabilityBins(), ReliabilityBins()
    for case in cases:
        probs = _softmax(case.logits, temperatures.get(case.member, 1.0))
        lesion = probs[list(lesion_indices)].sum(axis=0)
        truth = np.isin(case.truth, list(lesion_indices))
        everything.add(lesion, truth)
        near = lesion_region(truth, lesion > 0.5)
        if near.any():
            region.add(lesion[near], truth[near])
    return everything.ece(), region.ece()


@dataclass
class _CaseComponents:
    """One case at one threshold: its predicted components against the truth's."""

    group: str
    sizes: npt.NDArray[np.float64]  # per predicted component, in size units
    voxels: npt.NDArray[np.int64]  # voxels per predicted component
    overlap: npt.NDArray[np.int64]  # their voxels inside the truth
    matched: npt.NDArray[np.bool_]  # (pred, truth): IoU >= 0.1
    truth_voxels: int
    n_truth: int


def _components(
    mask: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_], measure: float, group: str
) -> _CaseComponents:
    from medres.inference.postprocess import label_components

    pred_ids, n_pred = label_components(mask)
    true_ids, n_true = label_components(truth)
    joint = np.bincount(
        pred_ids.ravel().astype(np.int64) * (n_true + 1) + true_ids.ravel(),
        minlength=(n_pred + 1) * (n_true + 1),
    ).reshape(n_pred + 1, n_true + 1)
    pred_sizes, true_sizes = joint.sum(axis=1)[1:], joint.sum(axis=0)[1:]
    inter = joint[1:, 1:]
    union = pred_sizes[:, None] + true_sizes[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return _CaseComponents(
        group=group,
        sizes=pred_sizes * measure,
        voxels=pred_sizes,
        overlap=inter.sum(axis=1),
        matched=iou >= 0.1,
        truth_voxels=int(true_sizes.sum()),
        n_truth=int(n_true),
    )


def _score(found: Sequence[_CaseComponents], choice: PostprocessingChoice) -> tuple[float, float]:
    """Mean per-patient Dice and pooled lesion F1 of one candidate."""
    counts: dict[str, list[int]] = {}
    kept_total = kept_tp = truth_total = truth_found = 0
    for case in found:
        keep = case.sizes >= choice.min_lesion_size
        if choice.max_lesions is not None and keep.sum() > choice.max_lesions:
            order = np.argsort(-np.where(keep, case.voxels, -1), kind="stable")
            keep = np.zeros_like(keep)
            keep[order[: choice.max_lesions]] = True
        tp = int(case.overlap[keep].sum())
        fp = int(case.voxels[keep].sum()) - tp
        group = counts.setdefault(case.group, [0, 0, 0])
        group[0] += tp
        group[1] += fp
        group[2] += case.truth_voxels - tp
        kept_total += int(keep.sum())
        kept_tp += int(case.matched[keep].any(axis=1).sum()) if case.n_truth else 0
        truth_total += case.n_truth
        truth_found += int(case.matched[keep].any(axis=0).sum()) if keep.any() else 0
    dice = [1.0 if 2 * t + f + n == 0 else 2 * t / (2 * t + f + n) for t, f, n in counts.values()]
    precision = kept_tp / kept_total if kept_total else 1.0
    recall = truth_found / truth_total if truth_total else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(np.mean(dice)), float(f1)


def choose_postprocessing(
    cases: Sequence[OutOfFold],
    temperatures: dict[str, float],
    cfg: PipelineConfig,
) -> tuple[PostprocessingChoice, PostprocessingChoice, dict[str, float], list[dict[str, Any]]]:
    """The pipeline's post-processing, the best candidate (or the pipeline's when none
    beats it by :data:`MIN_GAIN`), their scores and the best candidates tried."""
    configured = PostprocessingChoice(
        threshold=cfg.inference.threshold,
        min_lesion_size=cfg.postprocessing.min_lesion_size,
        max_lesions=cfg.postprocessing.max_lesions,
    )
    lesion = list(cfg.lesion_indices)
    binary = len(cfg.labels) == 2
    thresholds = sorted({*THRESHOLDS, configured.threshold}) if binary else [configured.threshold]
    measure = float(np.median([c.voxel_measure for c in cases]))
    sizes = {configured.min_lesion_size * f for f in SIZE_FACTORS}
    sizes |= {measure * n for n in (10, 25, 50, 100, 200)} | {0.0}
    probabilities = [(c, _softmax(c.logits, temperatures.get(c.member, 1.0))) for c in cases]
    scored: list[tuple[float, float, PostprocessingChoice]] = []
    for threshold in thresholds:
        found = []
        for case, probs in probabilities:
            mask = probs[1] > threshold if binary else np.isin(probs.argmax(axis=0), lesion)
            truth = np.isin(case.truth, lesion)
            found.append(_components(mask, truth, case.voxel_measure, case.group))
        for size, most in itertools.product(sorted(sizes), (configured.max_lesions, 1)):
            choice = PostprocessingChoice(
                threshold=threshold, min_lesion_size=round(size, 4), max_lesions=most
            )
            scored.append((*_score(found, choice), choice))
    scored.sort(key=lambda s: -(s[0] + s[1]))

    def gain(a: tuple[float, float, PostprocessingChoice], b: tuple[float, float, Any]) -> float:
        return (a[0] + a[1]) / 2 - (b[0] + b[1]) / 2

    own = next(s for s in scored if s[2] == configured)
    # the pipeline's threshold first: another only when it adds MIN_GAIN on top of that
    # (out-of-fold thresholds are noisy; lesion size and count are the robust choices)
    at_own = next(s for s in scored if s[2].threshold == configured.threshold)
    best = scored[0] if gain(scored[0], at_own) > MIN_GAIN else at_own
    chosen = best[2] if gain(best, own) > MIN_GAIN else configured
    final = next(s for s in scored if s[2] == chosen)
    scores = {
        "dice_configured": own[0],
        "f1_configured": own[1],
        "dice_chosen": final[0],
        "f1_chosen": final[1],
    }
    top = [{**s[2].model_dump(), "dice": s[0], "lesion_f1": s[1]} for s in scored[:10]]
    return configured, chosen, scores, top


def tune_model(
    model_dir: str | Path,
    cases: Sequence[TrainingCase],
    *,
    device: str = "cpu",
    on_case: Callable[[int, int], None] | None = None,
) -> CrossValidationEntry:
    """Fit the temperatures, choose the post-processing and record both in ``model.json``.

    Raises:
        ModelError: The model folder cannot be opened, or its manifest not rewritten.
    """
    folder = ModelFolder.open(model_dir)
    from medres.pipeline import load_pipeline

    cfg = load_pipeline(folder.path / "pipeline.yaml")  # the pipeline's own settings
    oof = out_of_fold_logits(folder, cases, device=device, on_case=on_case)
    if not oof:
        raise ValueError(f"{folder.path}: no out-of-fold case to tune on")
    temperatures = {
        m.name: _fit_member([c for c in oof if c.member == m.name])
        for m in folder.members
        if any(c.member == m.name for c in oof)
    }
    before = _ece(oof, {}, cfg.lesion_indices)
    after = _ece(oof, temperatures, cfg.lesion_indices)
    configured, chosen, scores, top = choose_postprocessing(oof, temperatures, cfg)
    two_d_file = cfg.dims == 2 and is_image2d_path(cases[0].image_paths[0])
    in_px = two_d_file and not cfg.preprocessing.pixel_size_mm
    entry = CrossValidationEntry(
        weights_sha256={m.name: m.weights_sha256 for m in folder.manifest.members},
        temperatures=temperatures,
        configured=configured,
        chosen=chosen,
        scores=scores,
        ece={
            "all_before": before[0],
            "all_after": after[0],
            "lesion_before": before[1],
            "lesion_after": after[1],
        },
        candidates=top,
        n_cases=len(oof),
        length_unit="px" if in_px else "mm",
        size_unit="px²" if in_px else "mm²" if cfg.dims == 2 else "mm³",
    )
    record_cross_validation(folder.path, entry)
    return entry


def record_cross_validation(model_dir: Path, entry: CrossValidationEntry) -> None:
    """Put ``entry`` into ``model.json`` (atomically, validated first)."""
    path = model_dir / MANIFEST
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["cross_validation"] = entry.model_dump(mode="json")
    text = json.dumps(raw, indent=2, allow_nan=False) + "\n"
    parse_manifest(text.encode("utf-8"), source=str(path))
    write_text_atomic(path, text)


__all__ = [
    "OutOfFold",
    "choose_postprocessing",
    "fit_temperature",
    "out_of_fold_logits",
    "record_cross_validation",
    "tune_model",
]
