"""Memory over a long batch: does resident memory stay flat from scan 50 to scan 1000?

Run from the repository root (with the project's environment active)::

    python benchmarks/bench_batch_memory.py              # 1000 scans
    python benchmarks/bench_batch_memory.py --scans 200  # shorter

Input: ``--scans`` small synthetic CT phantoms (``medres.synthetic.ct_phantom``, 40 x 36 x 16
voxels, 1.8 x 1.8 x 2.5 mm, one lesion each, written as NIfTI) and the bundled
``models/demo_ct_3d`` (3 members).

Methods, side by side on the same files, each a separate process whose resident memory
(``VmRSS``) is sampled every second:

* ``medres predict``: the command as a user runs it (``--no-report``): discovery, the
  ensemble, masks and lesions per scan, ``summary.csv`` after every scan;
* ``plain MONAI loop``: a tutorial-style loop over the files: ``LoadImaged`` + the same
  preprocessing, ``sliding_window_inference`` per member, mean softmax, ``Invertd``,
  argmax, ``nib.save``.

The table gives RSS when 50, 500 and the last scan were done, the peak, and the growth
from scan 50 to the end (what a leak would show), plus scans per second.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = REPO_ROOT / "models" / "demo_ct_3d"

PLAIN_LOOP = r"""
import sys, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
import nibabel as nib, numpy as np, torch
from monai import transforms as mt
from monai.inferers import sliding_window_inference
from medres.models.folder import ModelFolder
from medres.runtime import tune_allocator

tune_allocator()
torch.set_num_threads(2)
scans, model, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
folder = ModelFolder.open(model)
cfg = folder.pipeline
nets = [folder.load_network(m) for m in folder.members]
low, high = cfg.preprocessing.intensity.window
pre = mt.Compose([
    mt.LoadImaged(keys="image", image_only=False),
    mt.EnsureChannelFirstd(keys="image"),
    mt.Orientationd(keys="image", axcodes=cfg.preprocessing.orientation, labels=None),
    mt.Spacingd(keys="image", pixdim=cfg.preprocessing.target_spacing_mm, mode="bilinear"),
    mt.ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
])
post = mt.Compose([
    mt.Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
    mt.AsDiscreted(keys="pred", argmax=True),
])
out.mkdir(parents=True, exist_ok=True)
done = out / "done.csv"
done.write_text("scan\n")
for path in sorted(scans.glob("*.nii.gz")):
    data = pre({"image": str(path)})
    with torch.inference_mode():
        total = None
        for net in nets:
            logits = sliding_window_inference(
                data["image"][None].float(), roi_size=cfg.roi_size,
                sw_batch_size=cfg.inference.sw_batch_size, predictor=net,
                overlap=cfg.inference.overlap, mode="gaussian")
            probs = torch.softmax(logits, 1)
            total = probs if total is None else total + probs
        data["pred"] = (total / len(nets))[0]
        labels = post(data)["pred"]
    nib.save(nib.Nifti1Image(labels.numpy()[0].astype(np.uint8),
                             np.asarray(labels.affine, dtype=np.float64)),
             str(out / (path.name.replace(".nii.gz", "_seg.nii.gz"))))
    with done.open("a") as handle:
        handle.write(path.name + "\n")
"""


def make_scans(folder: Path, n: int) -> None:
    """``n`` small phantoms as ``scan_0000.nii.gz`` ... (seeded: the same every run)."""
    from medres.io.nifti import write_nifti
    from medres.synthetic import ct_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"scan_{i:04d}.nii.gz"
        if not path.exists():
            ct, _ = ct_phantom(shape=(40, 36, 16), spacing_mm=(1.8, 1.8, 2.5), n_lesions=1, seed=i)
            write_nifti(path, ct)


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _rows(path: Path) -> int:
    try:
        with path.open(encoding="utf-8") as handle:
            return max(0, sum(1 for _ in csv.reader(handle)) - 1)
    except OSError:
        return 0


def sample(command: list[str], progress_file: Path) -> tuple[list[tuple[float, int, float]], int]:
    """Run ``command``; every second, (seconds, scans done, RSS MiB). Returns samples, rc."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    samples: list[tuple[float, int, float]] = []
    while process.poll() is None:
        rss = _rss_mib(process.pid)
        if rss is not None:
            samples.append((time.perf_counter() - start, _rows(progress_file), rss))
        time.sleep(1.0)
    samples.append((time.perf_counter() - start, _rows(progress_file), samples[-1][2]))
    return samples, process.returncode


def _at(samples: list[tuple[float, int, float]], scans: int) -> float:
    for _, done, rss in samples:
        if done >= scans:
            return rss
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=None, help="folder for inputs/outputs")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="medres_batch_memory_"))
    scans = work / "scans"
    print(f"generating {args.scans} phantoms in {scans} ...", flush=True)
    make_scans(scans, args.scans)
    runs = {
        "medres predict": (
            [
                sys.executable,
                "-m",
                "medres.cli.app",
                "predict",
                str(scans),
                "--model",
                str(DEMO),
                "--out",
                str(work / "medres"),
                "--no-report",
                "--device",
                "cpu",
            ],
            work / "medres" / "summary.csv",
        ),
        "plain MONAI loop": (
            [sys.executable, "-c", PLAIN_LOOP, str(scans), str(DEMO), str(work / "plain")],
            work / "plain" / "done.csv",
        ),
    }
    marks = [m for m in (50, 500) if m < args.scans] + [args.scans]
    header = (
        ["method", "rc", "scans", "scans/s"]
        + [f"RSS MiB @{m}" for m in marks]
        + ["peak MiB", f"growth {marks[0]}->{marks[-1]} MiB"]
    )
    table = []
    for name, (command, progress_file) in runs.items():
        print(f"running {name} ...", flush=True)
        samples, rc = sample(command, progress_file)
        seconds, done, _ = samples[-1]
        at = [_at(samples, m) for m in marks]
        table.append(
            [name, str(rc), str(done), f"{done / max(seconds, 1e-9):.1f}"]
            + [f"{v:.0f}" for v in at]
            + [f"{max(s[2] for s in samples):.0f}", f"{at[-1] - at[0]:+.0f}"]
        )
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    print()
    for row in [header, *table]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(f"\ninputs and outputs: {work}")


if __name__ == "__main__":
    main()
