"""Benchmark segmentation metrics: medres against calling MONAI's metric functions.

Run from the repository root (with the project's environment active)::

    python benchmarks/bench_evaluate.py

Inputs (synthetic, seeded; the same pairs for both methods):

* ``2D slices``: 175 pairs of 256x256 masks (the size of the LGG test set), lesions as
  random discs, 40 % of slices empty on one or both sides;
* ``3D volumes``: 4 pairs of 240x240x155 masks at 1 mm (BraTS size), lesions as random
  spheres of 10-30 mm, the prediction shifted and resized.

Methods:

* ``medres``: :func:`medres.evaluation.segmentation.overlap_stats` (MONAI boundary
  distances computed once per pair, inside the box around both masks) then
  :func:`segmentation_metrics` (Dice, IoU, HD95, mean surface distance, NSD, volumes);
* ``plain MONAI``: ``compute_dice``, ``compute_hausdorff_distance(percentile=95)``,
  ``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` on
  the one-hot tensors, as the MONAI tutorials call them (each finds the boundaries and
  distances again).

Prints seconds per pair, peak memory (``VmHWM`` over the run, from a reset) and the
largest difference between the two methods' HD95, mean surface distance and NSD over
pairs where both masks are non-empty (MONAI returns NaN/inf for empty masks; medres
applies its documented conventions there).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _balls(
    shape: tuple[int, ...], rng: np.random.Generator, count: int, radius: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    truth = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for _ in range(count):
        centre = [rng.uniform(0.25 * n, 0.75 * n) for n in shape]
        r = rng.uniform(*radius)
        shift = rng.normal(0, r * 0.2, size=len(shape))
        truth |= sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= r**2
        pred |= (
            sum((g - c - s) ** 2 for g, c, s in zip(grids, centre, shift, strict=True))
            <= (r * rng.uniform(0.8, 1.2)) ** 2
        )
    return pred, truth


def make_pairs() -> dict[str, list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]]:
    rng = np.random.default_rng(0)
    slices = []
    for index in range(175):
        pred, truth = _balls((256, 256), rng, int(rng.integers(1, 3)), (6, 25))
        if index % 5 == 0:
            pred[:] = False
        if index % 5 == 1:
            truth[:] = False
        if index % 5 == 2:
            pred[:] = truth[:] = False
        slices.append((pred, truth, (1.0, 1.0)))
    volumes = [(*_balls((240, 240, 155), rng, 3, (10, 30)), (1.0, 1.0, 1.0)) for _ in range(4)]
    return {"2D slices (175 x 256^2)": slices, "3D volumes (4 x 240x240x155)": volumes}


def run_medres(pairs: list[Any]) -> list[dict[str, float]]:
    from medres.evaluation.segmentation import overlap_stats, segmentation_metrics

    out = []
    for pred, truth, spacing in pairs:
        stats = overlap_stats(pred, truth, spacing_mm=spacing)
        out.append(segmentation_metrics(stats, tolerance_mm=max(spacing)))
    return out


def run_monai(pairs: list[Any]) -> list[dict[str, float]]:
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    out = []
    for pred, truth, spacing in pairs:
        p = torch.from_numpy(pred[None, None].astype(np.float32))
        t = torch.from_numpy(truth[None, None].astype(np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(
                {
                    "dice": float(compute_dice(p, t, include_background=True)),
                    "hd95_mm": float(
                        compute_hausdorff_distance(p, t, percentile=95, spacing=spacing)
                    ),
                    "mean_surface_distance_mm": float(
                        compute_average_surface_distance(p, t, symmetric=True, spacing=spacing)
                    ),
                    "nsd": float(
                        compute_surface_dice(
                            p,
                            t,
                            class_thresholds=[max(spacing)],
                            spacing=spacing,
                            include_background=True,
                        )
                    ),
                }
            )
    return out


def main() -> None:
    import torch
    from bench_dicom_load import reset_peak_rss

    from medres.runtime import peak_rss_bytes

    torch.set_num_threads(2)
    pairs_by_input = make_pairs()
    rows = []
    for name, pairs in pairs_by_input.items():
        results = {}
        for method, runner in (("medres", run_medres), ("plain MONAI", run_monai)):
            runner(pairs[:1])  # warm-up (imports, first-call setup)
            reset_peak_rss()
            start = time.perf_counter()
            results[method] = runner(pairs)
            seconds = time.perf_counter() - start
            rows.append((name, method, seconds, seconds / len(pairs), peak_rss_bytes() / 2**20))
            print(f"  {name:30s} {method:12s} {seconds:.2f} s", flush=True)
        both = [i for i, (p, t, _) in enumerate(pairs) if p.any() and t.any()]
        diffs = {
            k: max(abs(results["medres"][i][k] - results["plain MONAI"][i][k]) for i in both)
            for k in ("dice", "hd95_mm", "mean_surface_distance_mm", "nsd")
        }
        rows.append((name, "agreement", diffs, len(both), 0.0))
    print()
    print("| input | method | seconds | seconds per pair | peak MiB |")
    print("|---|---|---|---|---|")
    for name, method, a, b, c in rows:
        if method == "agreement":
            text = ", ".join(f"{k} {v:.2g}" for k, v in a.items())
            print(f"| {name} | largest difference over {b} non-empty pairs | {text} | | |")
        else:
            print(f"| {name} | {method} | {a:.2f} | {b:.4f} | {c:.0f} |")


if __name__ == "__main__":
    main()
