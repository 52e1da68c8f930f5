"""SIGKILL a batch at many points, resume it, and compare with an uninterrupted run.

Run from the repository root (with the project's environment active)::

    python benchmarks/bench_kill_resume.py               # every stage x every scan + timed kills
    python benchmarks/bench_kill_resume.py --timed 20    # more kills at seeded random moments

Input: three scans of ``sample_data`` (the CT phantom DICOM series, the CT phantom NIfTI
and one training phantom), the bundled ``models/demo_ct_3d``, reports and PDFs on.

Each case runs ``tests/inference/kill_driver.py`` (``predict_batch`` as ``medres predict``
runs it), kills it with SIGKILL at a stage of one scan (``predict``, half-written mask,
``lesions.json``, overlay PNG, PDF...) or after a seeded random delay, then runs the same
batch with ``resume``. The table says, per case, whether the process was killed, how many
scans the resumed run redid (at most the scans not finished before the kill), and whether
every output equals the uninterrupted run: masks and overlay PNGs byte for byte,
``lesions.json`` without its timings, report HTML/PDF present, no temporary files left.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DRIVER = REPO_ROOT / "tests" / "inference" / "kill_driver.py"
DEMO = REPO_ROOT / "models" / "demo_ct_3d"
SAMPLE = REPO_ROOT / "sample_data"
STAGES = ("load", "predict", "write", "mask_file", "lesions_json", "report", "overlay", "pdf")


def _command(scans: Path, out: Path, point: str, resume: bool) -> list[str]:
    return [sys.executable, str(DRIVER), str(scans), str(DEMO), str(out), point] + (
        ["--resume"] if resume else []
    )


def _run(scans: Path, out: Path, point: str, *, resume: bool = False) -> int:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(_command(scans, out, point, resume), capture_output=True, env=env)
    return done.returncode


def _timed_kill(scans: Path, out: Path, delay: float) -> int:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        _command(scans, out, "none", False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return process.returncode


def _statuses(out: Path) -> dict[str, str]:
    with (out / "summary.csv").open(encoding="utf-8") as handle:
        return {row["scan_id"]: row["status"] for row in csv.DictReader(handle)}


def _same_as(reference: Path, out: Path) -> str:
    problems = []
    for lesions in sorted(reference.glob("*/lesions.json")):
        old, new = lesions.parent, out / lesions.parent.name
        if (new / "seg.nii.gz").read_bytes() != (old / "seg.nii.gz").read_bytes():
            problems.append(f"{old.name}: mask differs")
        a = json.loads((old / "lesions.json").read_text())
        b = json.loads((new / "lesions.json").read_text())
        for data in (a, b):
            data.pop("seconds")
            data["outputs"] = sorted(data["outputs"])
        if a != b:
            problems.append(f"{old.name}: lesions.json differs")
        if not (new / "report.html").is_file() or not (new / "report.pdf").is_file():
            problems.append(f"{old.name}: report missing")
        for png in (old / "overlays").iterdir():
            if (new / "overlays" / png.name).read_bytes() != png.read_bytes():
                problems.append(f"{old.name}: {png.name} differs")
        if list(new.rglob(".*.tmp")):
            problems.append(f"{old.name}: temporary file left")
    return "yes" if not problems else "; ".join(problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timed", type=int, default=10, help="kills at random moments")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medres_kill_"))
    scans = work / "scans"
    shutil.copytree(SAMPLE / "ct_phantom_dicom", scans / "dicom")
    shutil.copy(SAMPLE / "ct_phantom.nii.gz", scans / "phantom.nii.gz")
    first_train = sorted((SAMPLE / "ct_train" / "imagesTr").glob("*.nii.gz"))[0]
    shutil.copy(first_train, scans / "train_case.nii.gz")
    reference = work / "reference"
    start = time.perf_counter()
    assert _run(scans, reference, "none") == 0, "the uninterrupted run failed"
    full_seconds = time.perf_counter() - start
    order = list(_statuses(reference))
    cases: list[tuple[str, str | float]] = [
        (f"{stage}:{i}", f"{stage}:{i}") for stage in STAGES for i in range(len(order))
    ]
    rng = random.Random(args.seed)
    delays = [rng.uniform(1.0, full_seconds) for _ in range(args.timed)]
    cases += [(f"after {d:.1f} s", d) for d in delays]
    rows = [["kill point", "killed", "scans done before", "redone", "outputs identical"]]
    for name, point in cases:
        out = work / f"case_{len(rows)}"
        rc = _timed_kill(scans, out, point) if isinstance(point, float) else _run(scans, out, point)
        killed = rc == -signal.SIGKILL
        before = 0
        if (out / "summary.csv").is_file():
            before = sum(s == "ok" for s in _statuses(out).values())
        resumed_rc = _run(scans, out, "none", resume=True)
        statuses = _statuses(out)
        redone = sum(s == "ok" for s in statuses.values())
        verdict = _same_as(reference, out) if resumed_rc == 0 else f"resume exit {resumed_rc}"
        rows.append([name, "yes" if killed else "no (finished)", str(before), str(redone), verdict])
        shutil.rmtree(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    identical = sum(r[4] == "yes" for r in rows[1:])
    print(
        f"\n{identical}/{len(rows) - 1} cases resumed to outputs identical to the uninterrupted "
        f"run ({full_seconds:.1f} s for {len(order)} scans uninterrupted)"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
