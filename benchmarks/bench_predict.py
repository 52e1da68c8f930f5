"""Benchmark prediction: medres against a plain MONAI inference script, same network/input.

Run from the repository root (with the project's environment active)::

    python benchmarks/bench_predict.py                          # CT 512x512x300 (+ BraTS)
    python benchmarks/bench_predict.py --brats-model MODEL_DIR  # a brats_wt_3d model folder

Inputs (each skipped with a note when missing):

* ``CT 512x512x300``: a synthetic abdomen phantom (``medres.synthetic.ct_phantom``,
  0.8 x 0.8 x 1.0 mm, LPS like a DICOM series) with the bundled ``models/demo_ct_3d``;
* ``BraTS pat0001`` / ``pat0002``: the two BraTS test cases of ``../shared/data/brats_3d``
  (240x240x155, FLAIR + T1c) with a model trained by ``pipelines/brats_wt_3d.yaml``.

Methods, each in a fresh subprocess (memory peaks do not mix), with 1 member and with
all members (3 for the demo model, 4 for BraTS), TTA off for both:

* ``medres``: :class:`medres.inference.predictor.Ensemble` as ``medres predict`` runs it:
  load, the model's own preprocessing, Gaussian sliding windows, running sums on the
  model grid, per-axis mapping onto the scan grid in float16/uint8, small-lesion removal,
  lesion instances, then ``seg.nii.gz`` written;
* ``plain MONAI``: the tutorial way: ``LoadImaged`` + ``EnsureChannelFirstd`` + the same
  preprocessing transforms, ``sliding_window_inference`` (same roi, overlap, batch,
  Gaussian) per member, softmax, mean over members, ``Invertd`` back to the input grid,
  argmax, ``SaveImage``.

Seconds cover the whole scan (loading to written mask), after the networks are loaded.
"peak MiB" is the child's peak resident memory (``VmHWM``) over the scan, counted from a
reset after loading the networks; "baseline" is the memory held before the scan. The
Dice column compares the two methods' masks (same models, so it should be near 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared" / "data"
DEMO = REPO_ROOT / "models" / "demo_ct_3d"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _memory() -> tuple[float, float]:
    from bench_dicom_load import current_rss_bytes

    from medres.runtime import peak_rss_bytes

    return current_rss_bytes() / 2**20, peak_rss_bytes() / 2**20


def _reset_peak() -> None:
    from bench_dicom_load import reset_peak_rss

    reset_peak_rss()


def run_medres(spec: dict[str, Any], n_members: int, out: Path) -> dict[str, Any]:
    from medres.inference.inputs import assemble_inputs, load_input
    from medres.inference.predictor import Ensemble
    from medres.inference.writer import scan_lesions as _scan_lesions
    from medres.io import discover
    from medres.io.nifti import write_nifti
    from medres.models.folder import ModelFolder

    folder = ModelFolder.open(spec["model"])
    folder = ModelFolder(
        path=folder.path,
        pipeline=folder.pipeline,
        members=folder.members[:n_members],
        manifest=folder.manifest,
    )
    ensemble = Ensemble([folder], tta=False)
    baseline, _ = _memory()
    _reset_peak()
    start = time.perf_counter()
    found = discover(spec["input"])
    inputs, _ = assemble_inputs(found, channel_sets=[folder.pipeline.channels])
    volume = load_input(inputs[0])
    prediction = ensemble.predict(volume)
    lesions = _scan_lesions(ensemble, prediction)
    write_nifti(out, prediction.label_map, prediction.affine)
    seconds = time.perf_counter() - start
    _, peak = _memory()
    return {
        "seconds": seconds,
        "peak_mib": peak,
        "baseline_mib": baseline,
        "lesions": len(lesions),
        "stages": prediction.seconds,
    }


def run_monai(spec: dict[str, Any], n_members: int, out: Path) -> dict[str, Any]:
    import nibabel as nib
    import torch
    from monai import transforms as mt
    from monai.inferers import sliding_window_inference

    from medres.models.folder import ModelFolder

    folder = ModelFolder.open(spec["model"])
    cfg = folder.pipeline
    nets = [folder.load_network(m) for m in folder.members[:n_members]]
    pre = cfg.preprocessing
    steps: list[Any] = [
        mt.LoadImaged(keys="image", image_only=False),
        mt.EnsureChannelFirstd(keys="image"),
    ]
    if pre.orientation:
        steps.append(mt.Orientationd(keys="image", axcodes=pre.orientation))
    if pre.target_spacing_mm:
        steps.append(mt.Spacingd(keys="image", pixdim=pre.target_spacing_mm, mode="bilinear"))
    if pre.crop_foreground:
        steps.append(
            mt.CropForegroundd(
                keys="image",
                source_key="image",
                select_fn=lambda x: (x != 0).any(0, keepdims=True),
                allow_smaller=True,
                margin=2,
            )
        )
    if pre.intensity.kind == "ct_window":
        low, high = pre.intensity.window
        steps.append(
            mt.ScaleIntensityRanged(
                keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True
            )
        )
    elif pre.intensity.kind == "zscore":
        steps.append(
            mt.NormalizeIntensityd(
                keys="image", nonzero=pre.intensity.foreground_only, channel_wise=True
            )
        )
    preprocess = mt.Compose(steps)
    post = mt.Compose(
        [
            mt.Invertd(
                keys="pred",
                transform=preprocess,
                orig_keys="image",
                nearest_interp=False,
                to_tensor=True,
            ),
            mt.AsDiscreted(keys="pred", argmax=True),
        ]
    )
    baseline, _ = _memory()
    _reset_peak()
    start = time.perf_counter()
    data = preprocess({"image": spec["files"]})
    image = data["image"]
    with torch.inference_mode():
        total = None
        for net in nets:
            logits = sliding_window_inference(
                image[None].float(),
                roi_size=cfg.roi_size,
                sw_batch_size=cfg.inference.sw_batch_size,
                predictor=net,
                overlap=cfg.inference.overlap,
                mode="gaussian",
            )
            probs = torch.softmax(logits, 1)
            total = probs if total is None else total + probs
        assert total is not None
        data["pred"] = (total / len(nets))[0]
        result = post(data)
    labels = result["pred"]
    array = labels.numpy()[0].astype(np.uint8)
    nib.save(nib.Nifti1Image(array, np.asarray(labels.affine, dtype=np.float64)), str(out))
    seconds = time.perf_counter() - start
    _, peak = _memory()
    return {"seconds": seconds, "peak_mib": peak, "baseline_mib": baseline}


def child(method: str, spec_json: str, n_members: int, out: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from medres.runtime import tune_allocator

    tune_allocator()  # as the CLI does; the plain script gets the same allocator
    spec = json.loads(spec_json)
    runner = run_medres if method == "medres" else run_monai
    print("RESULT " + json.dumps(runner(spec, n_members, Path(out))))


def _inputs(work: Path, brats_model: Path | None) -> list[dict[str, Any]]:
    from medres.io.nifti import write_nifti
    from medres.io.volume import Volume
    from medres.synthetic import ct_phantom

    specs = []
    ct_path = work / "ct_512x512x300.nii.gz"
    ct, _ = ct_phantom(shape=(512, 512, 300), spacing_mm=(0.8, 0.8, 1.0), n_lesions=6, seed=3)
    write_nifti(ct_path, Volume(ct.array, ct.affine))
    specs.append(
        {
            "name": "CT 512x512x300",
            "model": str(DEMO),
            "input": str(ct_path),
            "files": str(ct_path),
            "members": 3,
        }
    )
    brats = SHARED / "brats_3d" / "test"
    if brats_model is None or not brats.is_dir():
        print(f"BraTS skipped: {'no --brats-model' if brats_model is None else brats} ")
        return specs
    for case in sorted(brats.iterdir()):
        files = [
            str(case / "Flair_subtrMeanDivStd.nii.gz"),
            str(case / "T1c_subtrMeanDivStd.nii.gz"),
        ]
        case_dir = work / case.name
        case_dir.mkdir()
        for f in files:
            os.symlink(f, case_dir / Path(f).name)
        specs.append(
            {
                "name": f"BraTS {case.name.split('_')[2]}",
                "model": str(brats_model),
                "input": str(case_dir),
                "files": files,
                "members": 4,
            }
        )
    return specs


def _dice(a: Path, b: Path) -> float:
    import nibabel as nib

    x = np.asarray(nib.load(a).dataobj) > 0
    y = np.asarray(nib.load(b).dataobj).reshape(x.shape) > 0
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats-model", type=Path, default=None)
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "SPEC", "MEMBERS", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return
    os.chdir(REPO_ROOT)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for spec in _inputs(work, args.brats_model):
            for n_members in sorted({1, spec["members"]}):
                outs = {}
                for method in ("medres", "plain MONAI"):
                    out = work / f"{method.replace(' ', '_')}_{n_members}_{len(rows)}.nii.gz"
                    cmd = [
                        sys.executable,
                        __file__,
                        "--child",
                        method,
                        json.dumps(spec),
                        str(n_members),
                        str(out),
                    ]
                    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    line = next(
                        (ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None
                    )
                    if line is None:
                        print(f"{spec['name']} / {method} failed:\n{proc.stderr[-3000:]}")
                        continue
                    result = json.loads(line[7:])
                    outs[method] = out
                    rows.append((spec["name"], n_members, method, result))
                    print(
                        f"  {spec['name']:15s} {n_members} member(s) {method:12s} "
                        f"{result['seconds']:.1f} s, peak {result['peak_mib']:.0f} MiB",
                        flush=True,
                    )
                if len(outs) == 2:
                    agreement = _dice(outs["medres"], outs["plain MONAI"])
                    rows.append((spec["name"], n_members, "agreement", {"dice": agreement}))
    print()
    print("| input | members | method | s per scan | peak MiB over the scan | baseline MiB |")
    print("|---|---|---|---|---|---|")
    for name, n, method, r in rows:
        if method == "agreement":
            print(f"| {name} | {n} | Dice medres vs MONAI masks | {r['dice']:.4f} | | |")
            continue
        print(
            f"| {name} | {n} | {method} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | "
            f"{r['baseline_mib']:.0f} |"
        )
    for name, n, method, r in rows:
        if method == "medres":
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items())
            print(f"medres stages, {name}, {n} member(s): {stages}")


if __name__ == "__main__":
    main()
