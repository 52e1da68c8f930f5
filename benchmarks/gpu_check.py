"""GPU check of ``medres train`` / ``medres predict`` with ``--device cuda``, against the CPU.

Run by ``scripts/gpu_check.sh`` (which finds or installs a CUDA build of torch first);
directly, from the repository root::

    python benchmarks/gpu_check.py                         # on a GPU machine (--device cuda)
    python benchmarks/gpu_check.py --device cpu --dry-run  # small sizes, proves the code runs

Stages, each in a fresh subprocess that runs the medres CLI in-process (so that
``torch.cuda.max_memory_allocated`` sees its work; the peak is reset per stage), in order
of importance, each skipped when the time budget (``--deadline-s``) is spent:

1. ``train LGG``: ``medres train pipelines/lgg_flair_2d.yaml --data DATA/lgg_flair_2d
   --folds 0 --max-minutes 1 --exclude-groups <the 6 canonical test patients>``;
2. ``predict LGG`` on the device and on the CPU: the 6 test patients' slices with that
   member (``--no-report``); the two sets of masks must agree (pooled Dice >= 0.99);
3. ``synthetic CT``: a 512x512x300 phantom at 0.8 x 0.8 x 1 mm (``medres.synthetic``, as
   ``benchmarks/bench_predict.py`` makes it), written as uncompressed NIfTI;
4. ``predict CT`` on the device and on the CPU with the bundled 3-member
   ``models/demo_ct_3d`` ensemble: loading to written mask; Dice >= 0.99 again;
5. ``train BraTS``: ``medres train pipelines/brats_wt_3d.yaml --data
   pipelines/datalists/brats_3d.json --data-root DATA/brats_3d --folds 0 --max-minutes 1``;
6. ``GPU unit tests``: ``pytest tests/inference/test_gpu_path.py`` (its CUDA tests compare
   GPU and CPU results; they skip without a GPU), when pytest is installed.

Prints one table (seconds, peak GPU MiB, peak resident MiB, what came out) and exits 0 when
every stage ran and every check passed, 1 when a check failed or a stage failed or was cut
by the budget, 2 when CUDA (or the data) is not there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = REPO_ROOT / "models" / "demo_ct_3d"
LGG_TEST = REPO_ROOT / "pipelines" / "lgg_flair_2d.test_patients.txt"
MIN_DICE = 0.99


@dataclass
class Stage:
    """One row of the table: a child process running ``kind`` on ``device``."""

    name: str
    kind: str
    device: str
    timeout_s: float
    needs: tuple[str, ...] = ()
    role: str = "device"  # or "reference" (the CPU run a device run is compared with)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """Names the stage's log and outputs."""
        return f"{self.kind}_{self.role}"


def _groups(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _cli(argv: list[str]) -> int:
    """Run ``medres ARGV`` in this process; its exit code."""
    from medres.cli.app import main

    sys.argv = ["medres", *argv]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _measured(device: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()``'s record plus seconds, peak GPU MiB (reset first) and peak resident MiB."""
    import torch

    from medres.runtime import peak_rss_bytes

    cuda = device.startswith("cuda")
    if cuda:  # the CUDA context is made before the clock starts
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    record = work()
    if cuda:
        torch.cuda.synchronize(device)
    record["seconds"] = time.perf_counter() - start
    record["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    record["peak_rss_mib"] = peak_rss_bytes() / 2**20
    return record


def _train(args: argparse.Namespace, which: str) -> dict[str, Any]:
    import shutil

    from medres.models.folder import ModelFolder

    work, data = Path(args.work), Path(args.data)
    out = work / "models" / which
    shutil.rmtree(out, ignore_errors=True)  # medres train refuses a used folder
    minutes = str(args.minutes)
    if which == "lgg":
        excluded = _groups(LGG_TEST)
        if args.dry_run:  # train on 3 patients only
            patients = sorted(p.name for p in (data / "lgg_flair_2d").iterdir() if p.is_dir())
            excluded += [p for p in patients if p not in excluded][3:]
        exclude_file = work / "lgg_excluded.txt"
        exclude_file.write_text("\n".join(excluded) + "\n")
        argv = ["train", str(REPO_ROOT / "pipelines" / "lgg_flair_2d.yaml")]
        argv += ["--data", str(data / "lgg_flair_2d"), "--exclude-groups", f"@{exclude_file}"]
    else:
        argv = ["train", str(REPO_ROOT / "pipelines" / "brats_wt_3d.yaml")]
        argv += ["--data", str(REPO_ROOT / "pipelines" / "datalists" / "brats_3d.json")]
        argv += ["--data-root", str(data / "brats_3d")]
    argv += ["--out", str(out), "--folds", "0", "--max-minutes", minutes, "--device", args.device]
    rc = _cli(argv)
    if rc != 0:
        return {"ok": False, "note": f"medres train exited {rc}"}
    member = ModelFolder.open(out).members[0]
    dice = "-" if member.val_dice is None else f"{member.val_dice:.3f}"
    iterations = member.summary.get("iterations", "?")
    return {"ok": True, "note": f"{member.name}: {iterations} iterations, val Dice {dice}"}


def _predict(args: argparse.Namespace, which: str) -> dict[str, Any]:
    import shutil

    from medres.predictions.layout import RunFolder

    work = Path(args.work)
    model = work / "models" / "lgg" if which == "lgg" else DEMO
    out = work / "predictions" / f"{which}_{args.role}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["predict", str(work / "inputs" / which), "--model", str(model), "--out", str(out)]
    argv += ["--device", args.device, "--no-report"]
    rc = _cli(argv)
    scans = RunFolder(out).scans()
    ok = rc == 0 and bool(scans) and all(s.seg.is_file() for s in scans)
    return {"ok": ok, "out": str(out), "note": f"{len(scans)} scan(s), exit {rc}"}


def _make_ct(args: argparse.Namespace) -> dict[str, Any]:
    from medres.io.nifti import write_nifti
    from medres.io.volume import Volume
    from medres.synthetic import ct_phantom

    shape = (160, 144, 64) if args.dry_run else (512, 512, 300)
    folder = Path(args.work) / "inputs" / "ct"
    folder.mkdir(parents=True, exist_ok=True)
    ct, _ = ct_phantom(shape=shape, spacing_mm=(0.8, 0.8, 1.0), n_lesions=6, seed=3)
    name = "x".join(str(s) for s in shape)
    write_nifti(folder / f"ct_{name}.nii", Volume(ct.array, ct.affine))
    return {"ok": True, "note": f"{name} voxels, 0.8 x 0.8 x 1.0 mm"}


def _unit_tests(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return {"ok": True, "note": "skipped: pytest is not installed"}
    test = REPO_ROOT / "tests" / "inference" / "test_gpu_path.py"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    print(proc.stdout[-4000:], proc.stderr[-2000:], file=sys.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"ok": proc.returncode == 0, "note": lines[-1] if lines else f"exit {proc.returncode}"}


def child(args: argparse.Namespace) -> None:
    """One stage in this process: print ``RESULT <json>``."""
    import warnings

    warnings.filterwarnings("ignore")
    os.chdir(REPO_ROOT)
    kinds: dict[str, Callable[[], dict[str, Any]]] = {
        "train-lgg": lambda: _train(args, "lgg"),
        "train-brats": lambda: _train(args, "brats"),
        "predict-lgg": lambda: _predict(args, "lgg"),
        "predict-ct": lambda: _predict(args, "ct"),
        "make-ct": lambda: _make_ct(args),
        "unit-tests": lambda: _unit_tests(args),
    }
    # the unit tests run in a grandchild: this process's GPU peak would say nothing
    device = "cpu" if args.stage == "unit-tests" else args.device
    record = _measured(device, kinds[args.stage])
    print("RESULT " + json.dumps(record), flush=True)


def _dice(a_out: str, b_out: str) -> tuple[float, int, int]:
    """Pooled Dice of the foreground of two prediction folders' masks (same scan ids),
    and the foreground voxels of each."""
    import numpy as np

    from medres.io.nifti import read_nifti
    from medres.predictions.layout import RunFolder

    a_scans = {s.scan_id: s for s in RunFolder(a_out).scans()}
    b_scans = {s.scan_id: s for s in RunFolder(b_out).scans()}
    if not a_scans or set(a_scans) != set(b_scans):
        return 0.0, 0, 0
    both = a_count = b_count = 0
    for scan_id, a_folder in a_scans.items():
        a = np.asarray(read_nifti(a_folder.seg).array) > 0
        b = np.asarray(read_nifti(b_scans[scan_id].seg).array) > 0
        both += int((a & b).sum())
        a_count, b_count = a_count + int(a.sum()), b_count + int(b.sum())
    dice = 1.0 if a_count + b_count == 0 else 2.0 * both / (a_count + b_count)
    return dice, a_count, b_count


def _stages(device: str, dry_run: bool) -> list[Stage]:
    """The stages in the order they run (the Dice checks' inputs first)."""
    train_s, predict_s = (150.0, 150.0) if dry_run else (150.0, 90.0)
    lgg, ct, ref = ("train-lgg",), ("make-ct",), "reference"
    return [
        Stage("train LGG", "train-lgg", device, train_s),
        Stage("predict LGG", "predict-lgg", device, predict_s, needs=lgg),
        Stage("predict LGG (CPU reference)", "predict-lgg", "cpu", predict_s, lgg, role=ref),
        Stage("synthetic CT", "make-ct", "cpu", 90.0),
        Stage("predict CT, 3 members, end to end", "predict-ct", device, predict_s, needs=ct),
        Stage("predict CT (CPU reference)", "predict-ct", "cpu", predict_s, ct, role=ref),
        Stage("train BraTS", "train-brats", device, train_s),
        Stage("GPU unit tests", "unit-tests", device, 120.0),
    ]


def _run_stage(stage: Stage, args: argparse.Namespace, left_s: float) -> None:
    """Run one stage as a child process (its log in WORK/logs/), its record in ``result``."""
    log = Path(args.work) / "logs" / f"{stage.tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--stage", stage.kind, "--device", stage.device]
    cmd += ["--role", stage.role]
    cmd += ["--work", args.work, "--data", args.data, "--minutes", str(args.minutes)]
    cmd += ["--dry-run"] if args.dry_run else []
    timeout = min(stage.timeout_s, left_s)
    print(f"[gpu_check] {stage.name} on {stage.device} (at most {timeout:.0f} s)", flush=True)
    try:
        with log.open("w") as handle:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=handle, text=True, timeout=timeout, check=False
            )
    except subprocess.TimeoutExpired:
        stage.result = {"ok": False, "note": f"cut after {timeout:.0f} s (see {log})"}
        return
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        tail = log.read_text()[-1500:]
        stage.result = {"ok": False, "note": f"exit {proc.returncode}, see {log}"}
        print(tail, file=sys.stderr)
        return
    stage.result = json.loads(line[len("RESULT ") :])


def _table(stages: list[Stage], checks: list[tuple[str, float | None, str]]) -> str:
    def number(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [
        "| stage | device | s | peak GPU MiB | peak RSS MiB | result |",
        "|---|---|---|---|---|---|",
    ]
    for s in stages:
        r = s.result
        status = "ok" if r.get("ok") else "FAILED"
        rows.append(
            f"| {s.name} | {s.device} | {number(r.get('seconds'), '.1f')} | "
            f"{number(r.get('peak_gpu_mib'), '.0f')} | {number(r.get('peak_rss_mib'), '.0f')} | "
            f"{status}: {r.get('note', 'not run')} |"
        )
    for name, dice, note in checks:
        verdict = "ok" if dice is not None and dice >= MIN_DICE else "FAILED"
        rows.append(f"| {name} | | | | | {verdict}: Dice {number(dice, '.4f')} {note} |")
    return "\n".join(rows)


def _header(device: str) -> str | None:
    """One line about torch and the GPU; None when ``device`` is CUDA and CUDA is absent."""
    import torch

    from medres.runtime import amp_dtype

    line = f"torch {torch.__version__}, {os.cpu_count()} CPU cores"
    if not device.startswith("cuda"):
        return line + ", device cpu (a dry run: no GPU figures)"
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    return (
        f"{line}, CUDA {torch.version.cuda}, {props.name}, {props.total_memory / 2**30:.0f} GiB, "
        f"autocast {amp_dtype(device)}"
    )


def main() -> None:
    """Parse the arguments; run one stage (``--stage``) or all of them and the checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="small sizes, short budgets")
    parser.add_argument("--work", default=None, help="working folder [a new temporary one]")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--minutes", type=float, default=None, help="training budget [1]")
    parser.add_argument("--deadline-s", type=float, default=450.0, help="for all stages")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--role", default="device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minutes is None:
        args.minutes = 0.1 if args.dry_run else 1.0
    if args.stage:
        child(args)
        return
    start = time.perf_counter()
    header = _header(args.device)
    if header is None:
        print(
            f"[gpu_check] {args.device} requested but torch sees no CUDA GPU: install a CUDA "
            "build of torch (scripts/gpu_check.sh does) or run with --device cpu --dry-run",
            file=sys.stderr,
        )
        sys.exit(2)
    missing = [p for p in ("lgg_flair_2d", "brats_3d") if not (Path(args.data) / p).is_dir()]
    if missing:
        print(
            f"[gpu_check] no {', '.join(missing)} under {args.data}: pass --data", file=sys.stderr
        )
        sys.exit(2)
    if args.work is None:
        import tempfile

        args.work = tempfile.mkdtemp(prefix="medres_gpu_check_")
    work = Path(args.work)
    lgg_inputs = work / "inputs" / "lgg"
    lgg_inputs.mkdir(parents=True, exist_ok=True)
    for patient in _groups(LGG_TEST)[: 1 if args.dry_run else None]:
        link = lgg_inputs / patient
        if not link.exists():
            link.symlink_to(Path(args.data).resolve() / "lgg_flair_2d" / patient)
    print(f"[gpu_check] {header}; work folder {work}", flush=True)
    stages = _stages(args.device, args.dry_run)
    done: dict[str, bool] = {}
    for stage in stages:
        left = args.deadline_s - (time.perf_counter() - start)
        if not all(done.get(need) for need in stage.needs):
            stage.result = {"ok": False, "note": f"not run: {', '.join(stage.needs)} failed"}
        elif left < 20:
            stage.result = {"ok": False, "note": "not run: the time budget is spent"}
        else:
            _run_stage(stage, args, left)
        done[stage.kind] = done.get(stage.kind, True) and bool(stage.result.get("ok"))
    checks = []
    for which, label in (("lgg", "LGG test patients"), ("ct", "CT 3 members")):
        runs = [s for s in stages if s.kind == f"predict-{which}" and s.result.get("ok")]
        runs.sort(key=lambda s: s.role != "device")  # the device run first
        if len(runs) == 2:
            dice, a, b = _dice(runs[0].result["out"], runs[1].result["out"])
            note = f"({a} vs {b} foreground voxels)"
            checks.append((f"{label}: {runs[0].device} vs cpu masks", dice, note))
        else:
            checks.append((f"{label}: {args.device} vs cpu masks", None, "(not compared)"))
    print()
    print(_table(stages, checks))
    print(f"\ntotal {time.perf_counter() - start:.0f} s; logs in {work / 'logs'}")
    failed = [s.name for s in stages if not s.result.get("ok")]
    failed += [name for name, dice, _ in checks if dice is None or dice < MIN_DICE]
    if failed:
        print(f"[gpu_check] FAILED: {'; '.join(failed)}", file=sys.stderr)
        sys.exit(1)
    print("[gpu_check] all stages ran and every check passed")


if __name__ == "__main__":
    main()
