"""A detector's boxes in the report: drawn key images, the box table, the detector score of
each lesion, and a TID 1500 SR region per box for DICOM input (an oracle detector)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from medres.cli.app import app
from medres.inference import detector as detector_module
from medres.predictions.detections import DetectionsRecord
from medres.predictions.layout import ScanFolder
from medres.report.dicom_export import read_sr_measurements
from tests.conftest import REPO, SAMPLE_DATA
from tests.inference.test_detection_geometry import _model_folder, _oracle


def _predict(tmp_path: Path, *models: Path) -> ScanFolder:
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(SAMPLE_DATA / "ct_phantom_dicom"),
            *[arg for m in models for arg in ("--model", str(m))],
            "--out",
            str(out),
            "--no-pdf",
        ],
    )
    assert result.exit_code == 0, result.output
    return ScanFolder(next(p for p in out.iterdir() if p.is_dir()))


def test_detector_only_dicom_scan_gets_boxes_in_report_and_sr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detector_module, "detect", _oracle)
    scan = _predict(tmp_path, _model_folder(tmp_path, None))
    record = DetectionsRecord.read(scan)
    reported = record.reported_boxes
    assert reported and not scan.seg.exists() and not scan.seg_dcm.exists()
    page = scan.report_html.read_text()
    assert f"Detector boxes: {len(reported)} with score" in page and "box B1" in page
    first = Image.open(scan.overlay("box_01.png")).convert("RGB")
    pixels = np.asarray(first).reshape(-1, 3)
    cyan = (pixels[:, 0] < 60) & (pixels[:, 1] > 180) & (pixels[:, 2] > 200)
    assert cyan.sum() > 50  # the dashed box is drawn
    measured = read_sr_measurements(scan.sr_dcm)
    assert measured["detector box B1"]["Probability"] == pytest.approx(reported[0].score)
    assert measured["detector box B1"]["Long axis"] == pytest.approx(max(reported[0].size_mm))
    sr = pydicom.dcmread(scan.sr_dcm)
    text = str(sr)
    assert "SCOORD3D" in text and "POLYGON" in text
    # the polygon's corners lie on the box's edges in LPS mm (RAS x and y negated)
    found = re.findall(r"Graphic Data\s+FL:\s+\[([^\]]+)\]", text)
    assert found
    points = np.array([float(v) for v in found[0].split(",")]).reshape(-1, 3)
    ras = points * np.array([-1.0, -1.0, 1.0])
    low, high = np.array(reported[0].box_ras_mm[:3]), np.array(reported[0].box_ras_mm[3:])
    assert np.all(ras[:, :2] >= low[:2] - 1e-3) and np.all(ras[:, :2] <= high[:2] + 1e-3)
    assert np.allclose(points[0], points[-1])  # a closed polygon
    scan.report_html.unlink()
    again = CliRunner().invoke(app, ["report", str(scan.path.parent), "--no-pdf"])
    assert again.exit_code == 0, again.output  # medres report rebuilds it without a mask
    assert f"Detector boxes: {len(reported)} with score" in scan.report_html.read_text()


def test_segmented_lesions_carry_the_detector_score_in_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detector_module, "detect", _oracle)
    scan = _predict(tmp_path, REPO / "models" / "demo_ct_3d", _model_folder(tmp_path, None))
    page = scan.report_html.read_text()
    assert "<th>box</th>" in page and "Segmentation: ensemble of 3 member(s)" in page
    assert scan.seg_dcm.exists()
    measured = read_sr_measurements(scan.sr_dcm)
    assert any(k.startswith("lesion ") for k in measured)
    assert any(k.startswith("detector box ") for k in measured)
