"""Per-patient Dice of a ``medres predict`` run, for the ensemble and each member.

Until ``medres evaluate`` lands, this scores a prediction folder written with
``--members`` against the ground truth next to the input scans:

* 2D images: the paired ``<image>_mask.<ext>`` (as discovery pairs them);
* NIfTI / case folders: ``--truth-name FILE`` in the scan's folder (e.g.
  ``OTMultiClass.nii.gz`` for BraTS), any non-zero value counting as lesion.

A patient is the scan's folder: the voxels of all its slices (2D) or of its volume are
counted together; empty truth with an empty prediction counts as 1.0.

    python scripts/score_predictions.py OUT --input SCANS [--truth-name OTMultiClass.nii.gz]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from medres.io.images2d import read_image2d, read_mask2d
from medres.io.nifti import read_nifti


def dice(tp: int, fp: int, fn: int) -> float:
    """Dice from counts; 1.0 when both masks are empty."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def truth_for(source: Path, truth_name: str | None) -> np.ndarray | None:
    """The ground-truth lesion mask of one scan (None when there is none)."""
    if truth_name:
        path = source.parent / truth_name
        return read_nifti(path).array[0] > 0 if path.is_file() else None
    mask = source.with_name(f"{source.stem}_mask{source.suffix}")
    if not mask.is_file():
        return None
    return read_mask2d(mask, like=read_image2d(source)).array[0] > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="medres predict output folder (with --members)")
    parser.add_argument("--input", type=Path, required=True, help="the folder predict read")
    parser.add_argument("--truth-name", default=None, help="truth file in each case folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    counts: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    n_scans = 0
    for lesions_path in sorted(args.out.glob("*/lesions.json")):
        report = json.loads(lesions_path.read_text())
        source = args.input / report["source"]["files"][0]
        seg = read_nifti(lesions_path.parent / "seg.nii.gz").array[0]
        truth = truth_for(source, args.truth_name)
        if truth is not None and truth.ndim == 2 and seg.ndim == 3:  # a 2D NIfTI reads (x, y, 1)
            seg = seg[..., 0]
        if truth is None:
            continue
        if truth.shape != seg.shape:
            raise SystemExit(f"{source}: truth {truth.shape} vs prediction {seg.shape}")
        n_scans += 1
        patient = source.parent.name
        maps = {"ensemble": seg > 0}
        for member_dir in sorted((lesions_path.parent / "members").glob("*")):
            member = read_nifti(member_dir / "seg.nii.gz").array[0]
            maps[member_dir.name] = (member.reshape(seg.shape)) > 0
        for name, predicted in maps.items():
            tally = counts[name].setdefault(patient, np.zeros(3, np.int64))
            tally += [
                int((predicted & truth).sum()),
                int((predicted & ~truth).sum()),
                int((~predicted & truth).sum()),
            ]
    if not counts:
        raise SystemExit("no scan with ground truth found")
    names = [*sorted(n for n in counts if n != "ensemble"), "ensemble"]
    patients = sorted(counts["ensemble"])
    scores = {n: {p: dice(*map(int, counts[n][p])) for p in patients} for n in names}
    print(f"{n_scans} scans, {len(patients)} patients (per-patient Dice)")
    print(f"{'patient':28s}" + "".join(f"{n[-10:]:>11s}" for n in names))
    for p in patients:
        print(f"{p:28s}" + "".join(f"{scores[n][p]:11.3f}" for n in names))
    for stat, fn in (("mean", np.mean), ("median", np.median)):
        print(f"{stat:28s}" + "".join(f"{fn(list(scores[n].values())):11.3f}" for n in names))
    member_means = [float(np.mean(list(scores[n].values()))) for n in names[:-1]]
    if member_means:
        print(f"{'mean of members':28s}{np.mean(member_means):11.3f}")
    if args.json:
        args.json.write_text(json.dumps({"n_scans": n_scans, "per_patient": scores}, indent=2))


if __name__ == "__main__":
    main()
