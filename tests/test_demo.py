"""The newcomer path: ``medres demo`` in a clone-like folder, and every documented example.

``make demo`` installs and then runs ``medres demo``; here the second part runs in a
temporary folder holding copies of ``sample_data/`` and ``models/`` (as a fresh clone
has them), with the console script of the environment under test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

MEDRES = Path(sys.executable).parent / "medres"


def test_demo_runs_end_to_end_in_a_clone_like_folder(tmp_path: Path) -> None:
    shutil.copytree(REPO / "sample_data", tmp_path / "sample_data")
    shutil.copytree(REPO / "models", tmp_path / "models")
    proc = subprocess.run(
        [str(MEDRES), "demo", "--out", "demo_out", "--no-pdf"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "demo_out/predictions/index.html" in proc.stdout
    out = tmp_path / "demo_out"
    assert (out / "predictions" / "index.html").is_file()
    assert (out / "evaluation" / "evaluation.html").is_file()
    # the copies in the clone-like folder were used, not the repository's
    run = json.loads((out / "predictions" / "run.json").read_text())
    assert run["input"].startswith(str(tmp_path))
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["n_cases"] == 2  # the held-out phantom as NIfTI and as a DICOM series
    ensemble = summary["results"]["lesion"]["ensemble"]
    assert ensemble["segmentation"]["dice"]["mean"] > 0.85
    assert ensemble["detection"]["sensitivity"]["value"] == 1.0
    assert ensemble["detection_counts"]["tp"] == 6  # 3 lesions in each copy
    series = [p for p in (out / "predictions").glob("S*/") if p.is_dir()]
    assert series and (series[0] / "seg.dcm").is_file() and (series[0] / "sr.dcm").is_file()


def test_every_documented_example_runs() -> None:
    """README.md and docs/: each concrete command and Python example works as written."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_doc_commands.py"), "--quick-train"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " 0 failed" in proc.stdout
