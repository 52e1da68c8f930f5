"""Benchmark detector inference against the segmentation ensemble, side by side in one run.

Run from the repository root (with the project's environment active)::

    python benchmarks/bench_detection.py --lgg-det DET --lgg-seg SEG \\
        [--brats-det DET3D --brats-seg SEG3D] [--slices 40]

Inputs (each skipped with a note when its data or model is missing):

* ``LGG slice``: the first ``--slices`` slices of the 6 canonical LGG test patients
  (``../shared/data/lgg_flair_2d``, 256x256, 3 channels);
* ``BraTS case``: the two BraTS test cases (240x240x155, FLAIR + T1c).

Methods, each in a fresh subprocess (memory peaks do not mix), all members of the model
folder, each pipeline's own TTA setting:

* ``medres detector``: :class:`medres.inference.detector.DetectionEnsemble` as
  ``medres predict`` runs it: the model's preprocessing, every member on every flip view,
  boxes mapped back to the scan grid and fused (weighted box fusion);
* ``plain MONAI detector``: MONAI's ``RetinaNetDetector`` forward, one member, no flips
  and no fusion, on the same preprocessed image (the least a detector costs);
* ``medres segmentation``: :class:`medres.inference.predictor.Ensemble` of the
  segmentation folder: sliding windows, TTA, mapping, lesions (what the detector is
  compared with in the lesion tables).

Seconds are per scan (slice or volume), after the networks are loaded and one warm-up
scan; "peak MiB" is the child's peak resident memory (``VmHWM``) above what it held
before the first timed scan.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

TEST_PATIENTS = [
    line.strip()
    for line in (REPO_ROOT / "pipelines" / "lgg_flair_2d.test_patients.txt")
    .read_text()
    .splitlines()
    if line.strip() and not line.startswith("#")
]


def _lgg_inputs(n: int) -> list[Path]:
    root = SHARED / "lgg_flair_2d"
    slices = []
    for patient in TEST_PATIENTS:
        slices += sorted(
            (p for p in (root / patient).glob("*.tif") if not p.stem.endswith("_mask")),
            key=lambda p: int(p.stem.rsplit("_", 1)[1]),
        )
    return slices[:: max(1, len(slices) // n)][:n]


def _brats_inputs() -> list[list[Path]]:
    root = SHARED / "brats_3d" / "test"
    return [
        [case / "Flair_subtrMeanDivStd.nii.gz", case / "T1c_subtrMeanDivStd.nii.gz"]
        for case in sorted(root.iterdir())
        if case.is_dir()
    ]


def _child(method: str, model: str, inputs: list[list[str]]) -> dict[str, Any]:
    """Run one method over ``inputs`` in this process; seconds per scan and peak memory."""
    import torch
    from bench_dicom_load import current_rss_bytes, reset_peak_rss

    from medres.inference.batch import PredictOptions, open_ensembles
    from medres.inference.detect import detect
    from medres.runtime import peak_rss_bytes
    from medres.transforms.presets import read_channels

    ensemble = open_ensembles([model], options=PredictOptions())[0]
    volumes = [read_channels(paths, dims=ensemble.cfg.dims) for paths in inputs]

    def run(volume: Any) -> int:
        if method == "medres detector":
            return len(ensemble.predict_boxes(volume).boxes)  # type: ignore[attr-defined]
        if method == "plain MONAI detector":
            runner = ensemble.runners[0]
            tensor, _ = ensemble._preprocess(runner, volume, "scan")
            return len(
                detect(runner.networks[0], tensor, runner.folder.pipeline, device="cpu")[0].boxes
            )
        return int(ensemble.predict(volume).label_map.max())

    with torch.inference_mode():
        run(volumes[0])  # warm-up
        before = current_rss_bytes()
        reset_peak_rss()
        start = time.perf_counter()
        for volume in volumes:
            run(volume)
        seconds = (time.perf_counter() - start) / len(volumes)
    return {
        "seconds": seconds,
        "peak_mib": max(0.0, (peak_rss_bytes() - before) / 2**20),
        "members": ensemble.n_members,
        "tta": bool(ensemble._flips(ensemble.runners[0])),
    }


def _measure(method: str, model: Path, inputs: list[list[Path]]) -> dict[str, Any]:
    payload = json.dumps([method, str(model), [[str(p) for p in i] for i in inputs]])
    out = subprocess.run(
        [sys.executable, __file__, "--child", payload],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lgg-det", type=Path)
    parser.add_argument("--lgg-seg", type=Path)
    parser.add_argument("--brats-det", type=Path)
    parser.add_argument("--brats-seg", type=Path)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*json.loads(args.child))))
        return
    rows = []
    plans = [
        ("LGG slice", args.lgg_det, args.lgg_seg, lambda: [[p] for p in _lgg_inputs(args.slices)]),
        ("BraTS case", args.brats_det, args.brats_seg, _brats_inputs),
    ]
    for name, det, seg, inputs_of in plans:
        if det is None and seg is None:
            print(f"{name}: no model given, skipped")
            continue
        try:
            inputs = inputs_of()
        except OSError as exc:
            print(f"{name}: data missing ({exc}), skipped")
            continue
        for method, model in (
            ("medres detector", det),
            ("plain MONAI detector", det),
            ("medres segmentation", seg),
        ):
            if model is not None:
                rows.append((name, method, len(inputs), _measure(method, model, inputs)))
    print(
        f"{'input':<11} {'method':<22} {'n':>3} {'members':>7} {'TTA':>4} "
        f"{'s/scan':>7} {'peak MiB':>8}"
    )
    for name, method, n, r in rows:
        if "error" in r:
            print(f"{name:<11} {method:<22} {n:>3}  failed: {r['error']}")
            continue
        members = 1 if method == "plain MONAI detector" else r["members"]
        tta = "no" if method == "plain MONAI detector" else ("yes" if r["tta"] else "no")
        print(
            f"{name:<11} {method:<22} {n:>3} {members:>7} {tta:>4} "
            f"{r['seconds']:>7.3f} {r['peak_mib']:>8.0f}"
        )


if __name__ == "__main__":
    main()
