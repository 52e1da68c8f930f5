"""Benchmark the training loop: medres against a plain MONAI loop, same network/data/batch.

Run from the repository root (with the project's environment active)::

    python benchmarks/bench_training.py                 # 60 timed iterations per method
    python benchmarks/bench_training.py --iterations 20 # quick check

Inputs (each skipped with a note when its folder is missing):

* ``lgg 2D``: 4 training patients of ``../shared/data/lgg_flair_2d`` with
  ``pipelines/lgg_flair_2d.yaml`` (res-UNet 16-256, batch 8, 224x224 patches);
* ``brats 3D``: the 4 training cases of ``../shared/data/brats_3d`` with
  ``pipelines/brats_wt_3d.yaml`` (res-UNet 16-128, batch 2, 64^3 patches at 2 mm);
* ``phantom 3D``: ``sample_data/ct_train`` with ``pipelines/demo_ct_3d.yaml``.

Methods, each in a fresh subprocess (so memory peaks do not mix):

* ``medres``: :func:`medres.training.loop.train_member` as ``medres train`` runs it
  (allocator tuned with :func:`medres.runtime.tune_allocator`, cached preprocessing with
  uint8 labels, patient-weighted sampling, the config's augmentation);
* ``medres, default allocator``: the same without the allocator tuning;
* ``plain MONAI``: the textbook loop: ``LoadImaged`` + ``EnsureChannelFirstd`` + the same
  preprocessing and augmentation transforms, ``CacheDataset``, ``DataLoader(shuffle=True)``,
  the same network, ``DiceCELoss`` and ``AdamW``.

Iterations per second are timed after 5 warm-up iterations (caching excluded, reported
apart); peak memory is the child's ``VmHWM`` (peak resident set) at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared" / "data"
WARMUP = 5


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (see medres.runtime.peak_rss_bytes)."""
    from medres.runtime import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def _inputs() -> list[dict[str, Any]]:
    inputs = []
    lgg = SHARED / "lgg_flair_2d"
    if lgg.is_dir():
        inputs.append(
            {
                "name": "lgg 2D",
                "pipeline": "pipelines/lgg_flair_2d.yaml",
                "data": str(lgg),
                "groups": [
                    "TCGA_CS_4941_19960909",
                    "TCGA_DU_5849_19950405",
                    "TCGA_FG_5964_20010511",
                    "TCGA_HT_7473_19970826",
                ],
            }
        )
    else:
        print(f"note: {lgg} missing, lgg 2D skipped")
    brats = SHARED / "brats_3d"
    if brats.is_dir():
        inputs.append(
            {
                "name": "brats 3D",
                "pipeline": "pipelines/brats_wt_3d.yaml",
                "data": "pipelines/datalists/brats_3d.json",
                "data_root": str(brats),
            }
        )
    else:
        print(f"note: {brats} missing, brats 3D skipped")
    inputs.append(
        {
            "name": "phantom 3D",
            "pipeline": "pipelines/demo_ct_3d.yaml",
            "data": "sample_data/ct_train",
        }
    )
    return inputs


def _cases(spec: dict[str, Any]) -> list[Any]:
    from medres.training.datasets import find_training_cases

    cases = find_training_cases(spec["data"], base_dir=spec.get("data_root"))
    if spec.get("groups"):
        cases = [c for c in cases if c.group in set(spec["groups"])]
    return cases


def run_medres(spec: dict[str, Any], iterations: int, *, tune: bool) -> dict[str, Any]:
    from medres.pipeline import load_pipeline
    from medres.runtime import tune_allocator
    from medres.training.datasets import check_cases
    from medres.training.loop import TrainingProgress, train_member

    if tune:
        tune_allocator()
    cfg = load_pipeline(spec["pipeline"])
    training = cfg.training.model_copy(
        update={"epochs": 1, "iterations_per_epoch": iterations + WARMUP, "max_minutes": None}
    )
    cfg = cfg.model_copy(update={"training": training})
    cases = _cases(spec)
    check = check_cases(cases, cfg)
    marks: dict[int, float] = {}
    t0 = time.perf_counter()

    def on_progress(event: TrainingProgress) -> None:
        if event.kind == "iteration":
            marks[event.iteration] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        train_member(
            cfg,
            cases=cases,
            train_groups=sorted({c.group for c in cases}),
            val_groups=[],
            lesion_cases=check.lesion_cases,
            member_dir=tmp,
            fold=0,
            on_progress=on_progress,
        )
    first = min(marks)
    seconds = marks[WARMUP + first - 1 + iterations] - marks[WARMUP + first - 1]
    return {
        "it_per_s": iterations / seconds,
        "cache_s": marks[first] - t0,
        "peak_mib": peak_rss_mib(),
    }


def run_monai(spec: dict[str, Any], iterations: int) -> dict[str, Any]:
    import torch
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss

    from medres.models.registry import build_pipeline_network
    from medres.pipeline import load_pipeline
    from medres.transforms.presets import augmentation_transforms

    cfg = load_pipeline(spec["pipeline"])
    cases = _cases(spec)
    records = [
        {
            "image": [str(p) for p in c.image_paths]
            if len(c.image_paths) > 1
            else str(c.image_paths[0]),
            "label": str(c.label_path),
        }
        for c in cases
    ]
    keys = ["image", "label"]
    pre = cfg.preprocessing
    steps: list[Any] = [
        mt.LoadImaged(keys=keys, image_only=True, reader="PILReader" if cfg.dims == 2 else None),
        mt.EnsureChannelFirstd(keys=keys),
    ]
    if cfg.dims == 2:
        steps.append(mt.Lambdad(keys="label", func=lambda x: x[:1]))
    if pre.orientation and cfg.dims == 3:
        steps.append(mt.Orientationd(keys=keys, axcodes=pre.orientation, labels=None))
    if pre.target_spacing_mm:
        steps.append(
            mt.Spacingd(keys=keys, pixdim=pre.target_spacing_mm, mode=["bilinear", "nearest"])
        )
    if pre.crop_foreground:
        steps.append(
            mt.CropForegroundd(keys=keys, source_key="image", select_fn=lambda x: x != 0, margin=2)
        )
    if pre.intensity.kind == "ct_window":
        low, high = pre.intensity.window
        steps.append(
            mt.ScaleIntensityRanged(
                keys="image", a_min=low, a_max=high, b_min=0, b_max=1, clip=True
            )
        )
    else:
        steps.append(mt.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    steps.append(mt.Lambdad(keys="label", func=lambda x: (x > 0).float()))
    transform = mt.Compose(steps + augmentation_transforms(cfg))
    t0 = time.perf_counter()
    ds = CacheDataset(records, transform=transform, cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(ds, batch_size=cfg.training.batch_size, shuffle=True, num_workers=0)
    net = build_pipeline_network(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.training.optimizer.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    cache_s = time.perf_counter() - t0
    done, start = 0, None
    net.train()
    while done < iterations + WARMUP:
        for batch in loader:
            if done == WARMUP:
                start = time.perf_counter()
            opt.zero_grad()
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            done += 1
            if done == iterations + WARMUP:
                break
    assert start is not None
    seconds = time.perf_counter() - start
    return {"it_per_s": iterations / seconds, "cache_s": cache_s, "peak_mib": peak_rss_mib()}


METHODS = ("medres", "medres, default allocator", "plain MONAI")


def child(method: str, spec_json: str, iterations: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(spec_json)
    if method == "medres":
        result = run_medres(spec, iterations, tune=True)
    elif method == "medres, default allocator":
        result = run_medres(spec, iterations, tune=False)
    else:
        result = run_monai(spec, iterations)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SPEC"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.iterations)
        return
    os.chdir(REPO_ROOT)
    rows = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for spec in _inputs():
        for method in METHODS:
            cmd = [
                sys.executable,
                __file__,
                "--iterations",
                str(args.iterations),
                "--child",
                method,
                json.dumps(spec),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{spec['name']} / {method} failed:\n{proc.stderr[-2000:]}")
                continue
            result = json.loads(line[7:])
            rows.append((spec["name"], method, result))
            print(f"  {spec['name']:11s} {method:27s} {result['it_per_s']:.2f} it/s", flush=True)
    print()
    print("| input | method | iterations/s | s per iteration | peak MiB | caching s |")
    print("|---|---|---|---|---|---|")
    for name, method, r in rows:
        per = 1.0 / r["it_per_s"] if r["it_per_s"] else math.nan
        cells = [name, method, f"{r['it_per_s']:.2f}", f"{per:.3f}", f"{r['peak_mib']:.0f}"]
        print("| " + " | ".join([*cells, f"{r['cache_s']:.1f}"]) + " |")


if __name__ == "__main__":
    main()
