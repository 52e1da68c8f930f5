"""SIGKILL at seeded points of a batch (prediction, mask writing, report, PDF) and resume:
every scan ends complete, with the outputs of an uninterrupted run, and at most the scan
in flight is redone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medres.inference.resume import is_complete

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATA = ROOT / "sample_data"
DEMO = ROOT / "models" / "demo_ct_3d"
DRIVER = Path(__file__).with_name("kill_driver.py")
#: The second scan (index 1) is in flight when the kill comes: scan 0 must be "resumed".
KILL_POINTS = ["predict:1", "mask_file:1", "lesions_json:1", "pdf:0"]


def _run(
    scans: Path, out: Path, point: str, *, resume: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, str(DRIVER), str(scans), str(DEMO), str(out), point]
    return subprocess.run(
        [*args, *(["--resume"] if resume else [])],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def _statuses(out: Path) -> dict[str, str]:
    import csv

    with (out / "summary.csv").open(encoding="utf-8") as handle:
        return {row["scan_id"]: row["status"] for row in csv.DictReader(handle)}


def _comparable(lesions_json: Path) -> dict[str, object]:
    data = json.loads(lesions_json.read_text(encoding="utf-8"))
    data.pop("seconds")
    data["outputs"] = sorted(data["outputs"])  # names; PDF sizes can differ by a byte or two
    return data


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kill_scans")
    shutil.copytree(SAMPLE_DATA / "ct_phantom_dicom", folder / "dicom")
    shutil.copy(SAMPLE_DATA / "ct_phantom.nii.gz", folder / "phantom.nii.gz")
    return folder


@pytest.fixture(scope="module")
def reference(scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kill_reference")
    done = _run(scans, out, "none")
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.mark.parametrize("point", KILL_POINTS, ids=[p.replace(":", "_scan") for p in KILL_POINTS])
def test_sigkill_then_resume_gives_the_uninterrupted_outputs(
    point: str, scans: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed = _run(scans, out, point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    index = point.partition(":")[2]
    scan_ids = sorted(p.parent.name for p in reference.glob("*/lesions.json"))
    # the scan in flight is not complete, whatever the kill left behind
    in_flight = out / list(_statuses(reference))[int(index)]  # processing order
    fingerprint = json.loads((reference / in_flight.name / "lesions.json").read_text())[
        "fingerprint"
    ]
    assert is_complete(in_flight, fingerprint) is None

    resumed = _run(scans, out, "none", resume=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    statuses = _statuses(out)
    assert set(statuses.values()) <= {"ok", "resumed"}
    redone = [s for s, status in statuses.items() if status == "ok"]
    assert len(redone) == len(scan_ids) - int(index), statuses  # only the scans not yet done
    for scan_id in scan_ids:
        new, old = out / scan_id, reference / scan_id
        assert (new / "seg.nii.gz").read_bytes() == (old / "seg.nii.gz").read_bytes()
        assert _comparable(new / "lesions.json") == _comparable(old / "lesions.json")
        assert (new / "report.html").is_file() and (new / "report.pdf").is_file()
        for png in (old / "overlays").iterdir():
            assert (new / "overlays" / png.name).read_bytes() == png.read_bytes(), png.name
        assert not list(new.rglob(".*.tmp")), "a cut atomic write left its temporary file"
