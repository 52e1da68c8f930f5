"""Benchmark prediction on every runtime, against plain MONAI, same networks and inputs.

Run from the repository root (with the extras ``medres[onnx,openvino]`` installed)::

    python benchmarks/bench_predict.py [--lgg-model DIR] [--brats-model DIR] [--quick]

Inputs (each skipped with a note when its data or model is missing):

* ``LGG patient``: the 25 slices (256x256, 3 channels) of test patient TCGA_CS_6186 of
  ``../shared/data/lgg_flair_2d`` with an ``lgg_flair_2d`` model (``--lgg-model``);
  seconds are given per slice;
* ``BraTS pat0001``: a BraTS test case (240x240x155, FLAIR + T1c) with a
  ``brats_wt_3d`` model (``--brats-model``);
* ``CT 512x512x300``: a synthetic abdomen phantom (0.8 x 0.8 x 1.0 mm) with the bundled
  ``models/demo_ct_3d`` (``--quick`` leaves it out);
* ``real CT series``: the DICOM series of ``../shared/data/ct_dicom_totalseg`` with
  ``models/demo_ct_3d`` (its networks' speed on a real grid; its lesions mean nothing).

Each model is first exported into a temporary copy (``medres export --format onnx
--format openvino --int8``, calibrated on its training data; the export seconds are
printed). Methods, each in a fresh subprocess (memory peaks do not mix), with 1 member
and with all members, TTA off for all, after the networks are loaded and have run once
(a warm-up on the first scan: OpenVINO and ONNX Runtime set up their kernels on the first
call of each shape, which a batch pays once):

* ``medres <runtime>``: :class:`medres.inference.predictor.Ensemble` on ``torch``,
  ``onnx``, ``openvino``, ``onnx-int8`` and ``openvino-int8``: the model's own
  preprocessing, sliding windows (or the one-window batch), mapping to the scan grid,
  lesions, ``seg.nii.gz`` written; ``network share`` is its ``inference`` stage (the
  networks, with the windows' cutting and blending) over the whole of it;
* ``plain MONAI``: the tutorial way on the same PyTorch networks: the medres-loaded
  image through the same preprocessing transforms, ``sliding_window_inference`` (same
  roi, overlap, batch, Gaussian) per member, softmax, mean, ``Invertd`` back to the
  input grid, argmax.

The scans are loaded before the clock starts (the same for every method). "Dice vs
torch" compares each method's mask with ``medres torch``'s on the same input
(over every slice of the LGG patient). "peak MiB" is the child's peak resident memory
(``VmHWM``) over the scan, counted from a reset after loading the networks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
RUNTIMES = ("torch", "onnx", "openvino", "onnx-int8", "openvino-int8")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO_ROOT))


def _memory() -> tuple[float, float]:
    from bench_dicom_load import current_rss_bytes

    from medres.runtime import peak_rss_bytes

    return current_rss_bytes() / 2**20, peak_rss_bytes() / 2**20


def _reset_peak() -> None:
    from bench_dicom_load import reset_peak_rss

    reset_peak_rss()


def _folder(spec: dict[str, Any], n_members: int) -> Any:
    from medres.models.folder import ModelFolder

    folder = ModelFolder.open(spec["model"])
    return ModelFolder(
        path=folder.path,
        pipeline=folder.pipeline,
        members=folder.members[:n_members],
        manifest=folder.manifest,
    )


def _volumes(spec: dict[str, Any], channels: Any) -> list[Any]:
    from medres.inference.inputs import assemble_inputs, load_input
    from medres.io import discover

    inputs, _ = assemble_inputs(discover(spec["input"]), channel_sets=[channels])
    return [load_input(item) for item in inputs]


def run_medres(spec: dict[str, Any], n_members: int, out: Path, runtime: str) -> dict[str, Any]:
    from medres.inference.predictor import Ensemble
    from medres.inference.writer import scan_lesions
    from medres.io.nifti import write_nifti

    folder = _folder(spec, n_members)
    ensemble = Ensemble([folder], tta=False, runtime=runtime)
    volumes = _volumes(spec, folder.pipeline.channels)
    ensemble.predict(volumes[0])  # warm-up: first-call kernel set-up is not per scan
    baseline, _ = _memory()
    _reset_peak()
    start = time.perf_counter()
    stages: dict[str, float] = {}
    masks = []
    for n, volume in enumerate(volumes):
        prediction = ensemble.predict(volume)
        scan_lesions(ensemble, prediction)
        write_nifti(out.with_suffix(f".{n}.nii.gz"), prediction.label_map, prediction.affine)
        masks.append(np.asarray(prediction.label_map).ravel())
        for stage, seconds in prediction.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    seconds = time.perf_counter() - start
    _, peak = _memory()
    np.save(out, np.concatenate(masks))
    return {
        "seconds": seconds / len(masks),
        "peak_mib": peak,
        "baseline_mib": baseline,
        "network_share": stages.get("inference", 0.0) / seconds,
        "stages": {k: v / len(masks) for k, v in stages.items()},
    }


def run_monai(spec: dict[str, Any], n_members: int, out: Path) -> dict[str, Any]:
    """Long: the plain MONAI script, step by step as a tutorial writes it."""
    import torch
    from monai import transforms as mt
    from monai.inferers import sliding_window_inference

    from medres.transforms.presets import preprocessing_transforms

    folder = _folder(spec, n_members)
    cfg = folder.pipeline
    nets = [folder.load_network(m) for m in folder.members]
    preprocess = mt.Compose(preprocessing_transforms(cfg, with_label=False))
    post = mt.Invertd(
        keys="pred", transform=preprocess, orig_keys="image", nearest_interp=False, to_tensor=True
    )
    volumes = _volumes(spec, cfg.channels)
    with torch.inference_mode():  # warm-up, as for medres
        nets[0](torch.zeros((1, len(cfg.channels), *cfg.roi_size)))
    baseline, _ = _memory()
    _reset_peak()
    start = time.perf_counter()
    masks = []
    for volume in volumes:
        data = preprocess({"image": volume, "source": spec["name"]})
        with torch.inference_mode():
            total = None
            for net in nets:
                logits = sliding_window_inference(
                    data["image"][None].float(),
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
            inverted = post(data)["pred"]
        fg = np.asarray(inverted[1:].sum(0)) >= cfg.inference.threshold
        masks.append(fg.astype(np.uint8).ravel())
    seconds = time.perf_counter() - start
    _, peak = _memory()
    np.save(out, np.concatenate(masks))
    return {"seconds": seconds / len(masks), "peak_mib": peak, "baseline_mib": baseline}


def child(method: str, spec_json: str, n_members: int, out: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from medres.runtime import tune_allocator

    tune_allocator()  # as the CLI does; the plain script gets the same allocator
    spec = json.loads(spec_json)
    if method == "plain MONAI":
        result = run_monai(spec, n_members, Path(out))
    else:
        result = run_medres(spec, n_members, Path(out), method.split(" ")[1])
    print("RESULT " + json.dumps(result))


def _export(model: Path, work: Path, calibration: list[str]) -> Path:
    copy = work / f"export_{model.name}"
    shutil.copytree(model, copy)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "medres",
            "export",
            str(copy),
            "--format",
            "onnx",
            "--format",
            "openvino",
            "--int8",
            "--calibration",
            *calibration,
        ],
        check=True,
        capture_output=True,
    )
    print(f"exported {model} in {time.perf_counter() - start:.1f} s", flush=True)
    return copy


def _inputs(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Long: one block per input, each skipped with a note when its data is missing."""
    from medres.io.nifti import write_nifti
    from medres.io.volume import Volume
    from medres.synthetic import ct_phantom

    specs = []
    lgg = SHARED / "lgg_flair_2d" / "TCGA_CS_6186_20000601"
    if args.lgg_model is not None and lgg.is_dir():
        model = _export(args.lgg_model, work, [str(SHARED / "lgg_flair_2d")])
        specs.append(
            {
                "name": "LGG patient (per slice)",
                "model": str(model),
                "input": str(lgg),
                "members": 3,
            }
        )
    else:
        print("LGG skipped: give --lgg-model (and ../shared/data/lgg_flair_2d)")
    brats = SHARED / "brats_3d" / "test"
    if args.brats_model is not None and brats.is_dir():
        model = _export(
            args.brats_model,
            work,
            [
                str(REPO_ROOT / "pipelines/datalists/brats_3d.json"),
                "--data-root",
                str(SHARED / "brats_3d"),
            ],
        )
        case = sorted(brats.iterdir())[0]
        case_dir = work / case.name
        case_dir.mkdir()
        for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
            os.symlink(case / name, case_dir / name)
        specs.append(
            {
                "name": f"BraTS {case.name.split('_')[2]}",
                "model": str(model),
                "input": str(case_dir),
                "members": 2,
            }
        )
    else:
        print("BraTS skipped: give --brats-model (and ../shared/data/brats_3d)")
    demo = _export(DEMO, work, [str(REPO_ROOT / "sample_data" / "ct_train")])
    if not args.quick:
        ct_path = work / "ct_512x512x300.nii.gz"
        ct, _ = ct_phantom(shape=(512, 512, 300), spacing_mm=(0.8, 0.8, 1.0), n_lesions=6, seed=3)
        write_nifti(ct_path, Volume(ct.array, ct.affine))
        specs.append(
            {"name": "CT 512x512x300", "model": str(demo), "input": str(ct_path), "members": 3}
        )
    real_ct = SHARED / "ct_dicom_totalseg" / "example_ct_dicom"
    if real_ct.is_dir():
        specs.append(
            {"name": "real CT series", "model": str(demo), "input": str(real_ct), "members": 3}
        )
    return specs


def _dice(a: Path, b: Path) -> float:
    x, y = np.load(a) > 0, np.load(b) > 0
    if not x.any() and not y.any():
        return 1.0
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


def main() -> None:
    """Long: the loop over inputs x members x methods, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lgg-model", type=Path, default=None)
    parser.add_argument("--brats-model", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="leave out the 512x512x300 CT")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "SPEC", "MEMBERS", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return
    os.chdir(REPO_ROOT)
    methods = [f"medres {r}" for r in RUNTIMES] + ["plain MONAI"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for spec in _inputs(work, args):
            for n_members in sorted({1, spec["members"]}):
                outs: dict[str, Path] = {}
                for method in methods:
                    out = work / f"{method.replace(' ', '_')}_{n_members}_{len(rows)}.npy"
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
                    reference = outs.get("medres torch")
                    result["dice"] = _dice(reference, out) if reference is not None else None
                    rows.append((spec["name"], n_members, method, result))
                    print(
                        f"  {spec['name']:24s} {n_members} member(s) {method:20s} "
                        f"{result['seconds']:.3f} s, peak {result['peak_mib']:.0f} MiB",
                        flush=True,
                    )
    print()
    print("| input | members | method | s per scan | network share | peak MiB | Dice vs torch |")
    print("|---|---|---|---|---|---|---|")
    for name, n, method, r in rows:
        share = f"{100 * r['network_share']:.0f} %" if "network_share" in r else "-"
        dice = f"{r['dice']:.4f}" if r["dice"] is not None else "-"
        print(
            f"| {name} | {n} | {method} | {r['seconds']:.3f} | {share} | "
            f"{r['peak_mib']:.0f} | {dice} |"
        )
    for name, n, method, r in rows:
        if method in ("medres torch", "medres openvino-int8"):
            stages = ", ".join(f"{k} {v:.3f} s" for k, v in r["stages"].items())
            print(f"{method} stages, {name}, {n} member(s): {stages}")


if __name__ == "__main__":
    main()
