"""Score every member of a model folder, and their mean ensemble, on held-out test cases.

Per-patient Dice on the input grid (predictions inverted through the model's
preprocessing): the voxels of a patient's slices or volume are counted together, Dice is
averaged over the lesion labels, and empty truth with an empty prediction counts as 1.0.

    python scripts/score_test_set.py MODEL_DIR --data DATA/lgg_flair_2d \
        --groups @pipelines/lgg_flair_2d.test_patients.txt
    python scripts/score_test_set.py MODEL_DIR --data pipelines/datalists/brats_3d.json \
        --data-root DATA/brats_3d --datalist-key test

Prints a table and writes ``MODEL_DIR/test_scores.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medres.inference.postprocess import remove_small_lesions
from medres.inference.predictor import Predictor
from medres.models.folder import ModelFolder
from medres.training.datasets import (
    TrainingCase,
    find_training_cases,
    read_datalist,
    read_group_list,
)
from medres.training.loop import dice_counts, dice_from_counts
from medres.transforms.presets import map_labels, read_channels, read_label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--datalist-key", default=None, help="e.g. test")
    parser.add_argument("--groups", default=None, help="test patients: a,b or @file")
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    folder = ModelFolder.open(args.model_dir)
    cfg = folder.pipeline
    cases: list[TrainingCase]
    if args.datalist_key:
        cases = read_datalist(args.data, base_dir=args.data_root, key=args.datalist_key)
    else:
        cases = find_training_cases(args.data, base_dir=args.data_root)
    if args.groups:
        wanted = set(read_group_list(args.groups))
        cases = [c for c in cases if c.group in wanted]
    predictor = Predictor(folder, tta=False if args.no_tta else None)
    names = [m.name for m in folder.members] + ["ensemble"]
    variants = names + [f"{n}+pp" for n in names]
    counts: dict[str, dict[str, dict[int, np.ndarray]]] = {n: {} for n in variants}
    min_size = cfg.postprocessing.min_lesion_size
    t0 = time.perf_counter()
    for case in cases:
        image = read_channels(case.image_paths, dims=cfg.dims)
        raw_truth = read_label(case.label_path, image).array
        truth = map_labels(raw_truth, cfg, source=str(case.label_path))[0]
        pred = predictor.predict(case.record() | {"label": None}, keep_members=True)
        maps = [p.argmax(0) for p in pred.member_probabilities] + [pred.labels]
        for name, labels in zip(names, maps, strict=True):
            assert labels.shape == truth.shape, (labels.shape, truth.shape)
            cleaned = remove_small_lesions(
                labels,
                spacing_mm=image.spacing_mm,
                min_size=min_size,
                lesion_indices=cfg.lesion_indices,
            )
            for variant, result_map in ((name, labels), (f"{name}+pp", cleaned)):
                group = counts[variant].setdefault(case.group, {})
                for label in cfg.lesion_indices:
                    group.setdefault(label, np.zeros(3, np.int64))
                    group[label] += dice_counts(result_map, truth, label)
    seconds = time.perf_counter() - t0
    groups = sorted({c.group for c in cases})
    per_model: dict[str, dict[str, float]] = {
        name: {
            g: float(np.mean([dice_from_counts(*map(int, c)) for c in counts[name][g].values()]))
            for g in groups
        }
        for name in variants
    }
    print(f"{len(cases)} cases, {len(groups)} patients, TTA {predictor.tta}, {seconds:.0f} s")
    for title, shown in (
        ("raw argmax", names),
        (f"after removing lesions < {min_size:g} mm^{cfg.dims}", [f"{n}+pp" for n in names]),
    ):
        print(f"\nper-patient Dice, {title}")
        print(f"{'patient':28s}" + "".join(f"{n.removesuffix('+pp'):>10s}" for n in shown))
        for g in groups:
            print(f"{g:28s}" + "".join(f"{per_model[n][g]:10.3f}" for n in shown))
        for stat, fn in (("mean", np.mean), ("median", np.median)):
            values = [fn(list(per_model[n].values())) for n in shown]
            print(f"{stat:28s}" + "".join(f"{v:10.3f}" for v in values))
    result = {
        "model": str(args.model_dir),
        "n_cases": len(cases),
        "tta": predictor.tta,
        "min_lesion_size": min_size,
        "seconds": round(seconds, 1),
        "per_model": {
            name: {
                "per_patient": per_model[name],
                "mean": float(np.mean(list(per_model[name].values()))),
                "median": float(np.median(list(per_model[name].values()))),
            }
            for name in variants
        },
    }
    out = args.json or args.model_dir / "test_scores.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {out} ('+pp': after post-processing)")


if __name__ == "__main__":
    main()
