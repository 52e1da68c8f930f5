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

from medres.inference.predictor import Predictor
from medres.models.folder import ModelFolder
from medres.training.datasets import TrainingCase, find_training_cases, read_datalist
from medres.training.loop import dice_counts, dice_from_counts
from medres.transforms.presets import map_labels, read_channels, read_label


def _groups(text: str) -> list[str]:
    if text.startswith("@"):
        lines = Path(text[1:]).read_text(encoding="utf-8").splitlines()
        return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    return [g for g in text.split(",") if g]


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
        wanted = set(_groups(args.groups))
        cases = [c for c in cases if c.group in wanted]
    predictor = Predictor(folder, tta=False if args.no_tta else None)
    names = [m.name for m in folder.members] + ["ensemble"]
    counts: dict[str, dict[str, dict[int, np.ndarray]]] = {n: {} for n in names}
    t0 = time.perf_counter()
    for case in cases:
        image = read_channels(case.image_paths, dims=cfg.dims)
        truth = map_labels(
            read_label(case.label_path, image).array, cfg, source=str(case.label_path)
        )[0]
        pred = predictor.predict(case.record() | {"label": None}, keep_members=True)
        maps = [p.argmax(0) for p in pred.member_probabilities] + [pred.labels]
        for name, labels in zip(names, maps, strict=True):
            assert labels.shape == truth.shape, (labels.shape, truth.shape)
            group = counts[name].setdefault(case.group, {})
            for label in cfg.lesion_indices:
                group.setdefault(label, np.zeros(3, np.int64))
                group[label] += dice_counts(labels, truth, label)
    seconds = time.perf_counter() - t0
    result = {
        "model": str(args.model_dir),
        "n_cases": len(cases),
        "tta": predictor.tta,
        "seconds": round(seconds, 1),
        "per_model": {},
    }
    groups = sorted({c.group for c in cases})
    print(f"{len(cases)} cases, {len(groups)} patients, TTA {predictor.tta}, {seconds:.0f} s")
    header = f"{'patient':28s}" + "".join(f"{n:>10s}" for n in names)
    print(header)
    per_model: dict[str, dict[str, float]] = {}
    for name in names:
        per_model[name] = {
            g: float(np.mean([dice_from_counts(*map(int, c)) for c in counts[name][g].values()]))
            for g in groups
        }
    for g in groups:
        print(f"{g:28s}" + "".join(f"{per_model[n][g]:10.3f}" for n in names))
    print(f"{'mean':28s}" + "".join(f"{np.mean(list(per_model[n].values())):10.3f}" for n in names))
    print(
        f"{'median':28s}"
        + "".join(f"{np.median(list(per_model[n].values())):10.3f}" for n in names)
    )
    for name in names:
        values = list(per_model[name].values())
        result["per_model"][name] = {
            "per_patient": per_model[name],
            "mean": float(np.mean(values)),
            "median": float(np.median(values)),
        }
    out = args.json or args.model_dir / "test_scores.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
