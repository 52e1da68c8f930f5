"""Reports: DICOM SEG/SR that decode back to the prediction, pages that render, no PHI.

The batch holds the sample CT phantom as a DICOM series whose headers carry a fake
patient (name, ID, birth date) and a series description with path characters, plus the
same phantom as NIfTI. ``medres predict`` writes the reports by default.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medres.cli.app import app
from medres.io import discover, load_scan
from medres.report.dicom_export import read_sr_measurements
from tests.conftest import REPO, SAMPLE_DATA, images_loaded_in_chromium, shared

DEMO = REPO / "models" / "demo_ct_3d"
runner = CliRunner()
PHI = ("Doe^Jane", "PID-31415", "19700101")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    scans = tmp_path_factory.mktemp("scans")
    series = scans / "dicom"
    shutil.copytree(SAMPLE_DATA / "ct_phantom_dicom", series)
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI
        ds.SeriesDescription = "../../x/\x00evil"
        ds.save_as(path)
    shutil.copy(SAMPLE_DATA / "ct_phantom.nii.gz", scans / "phantom.nii.gz")
    out = tmp_path_factory.mktemp("out")
    result = runner.invoke(
        app, ["predict", str(scans), "--model", str(DEMO), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return scans, out


def _dicom_dir(out: Path) -> Path:
    (scan_dir,) = [p.parent for p in out.glob("*/seg.dcm")]
    return scan_dir


def test_reports_overlays_and_index_exist(reported: tuple[Path, Path]) -> None:
    _, out = reported
    index = (out / "index.html").read_text()
    for scan_dir in (p.parent for p in out.glob("*/lesions.json")):
        assert (scan_dir / "report.html").is_file() and (scan_dir / "report.pdf").is_file()
        overlays = sorted(p.name for p in (scan_dir / "overlays").iterdir())
        n_lesions = json.loads((scan_dir / "lesions.json").read_text())["n_lesions"]
        assert (
            overlays[:3] == ["lesion_01.png", "lesion_02.png", "lesion_03.png"][: min(3, n_lesions)]
        )
        assert {"overview_axial.png", "overview_coronal.png", "overview_sagittal.png"} <= set(
            overlays
        )
        assert f"{scan_dir.name}/report.html" in index
        page = (scan_dir / "report.html").read_text()
        assert "Research use only" in page and "Radiological convention" in page
    nifti_page = (out / "phantom" / "report.html").read_text()
    assert "DICOM SEG/SR skipped: the scan is not a DICOM series" in nifti_page
    assert not (out / "phantom" / "seg.dcm").exists()


def test_seg_decodes_to_the_predicted_mask_on_the_same_slices(reported: tuple[Path, Path]) -> None:
    scans, out = reported
    scan_dir = _dicom_dir(out)
    (ref,) = [r for r in discover(scans).scans if r.kind == "dicom"]
    volume = load_scan(ref)
    seg = hd.seg.segread(scan_dir / "seg.dcm")
    assert seg.SeriesInstanceUID != volume.source.series_uid
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.source.sop_instance_uids), segment_numbers=[1]
    )
    decoded = np.transpose(frames[..., 0], (2, 1, 0)) > 0  # (slices, rows, cols) -> (x, y, z)
    predicted = np.asarray(nib.load(scan_dir / "seg.nii.gz").dataobj) == 1
    assert predicted.any()
    np.testing.assert_array_equal(decoded, predicted)
    description = seg.SegmentSequence[0]
    assert description.SegmentLabel == "lesion"
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"


def test_sr_gives_back_the_lesion_measurements(reported: tuple[Path, Path]) -> None:
    _, out = reported
    scan_dir = _dicom_dir(out)
    lesions = json.loads((scan_dir / "lesions.json").read_text())["lesions"]
    measured = read_sr_measurements(scan_dir / "sr.dcm")
    assert set(measured) == {f"lesion {x['lesion_id']}" for x in lesions}
    for lesion in lesions:
        values = measured[f"lesion {lesion['lesion_id']}"]
        assert values["Volume"] == pytest.approx(lesion["volume_ml"])
        assert values["Long axis"] == pytest.approx(lesion["longest_axial_diameter_mm"])
        assert values["Probability"] == pytest.approx(lesion["max_probability"])


def test_pdf_pages_convert_to_png_and_hold_the_findings(
    reported: tuple[Path, Path], tmp_path: Path
) -> None:
    if shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None:
        pytest.skip("pdftoppm / pdftotext not installed (Debian package poppler-utils)")
    _, out = reported
    scan_dir = _dicom_dir(out)
    document = (scan_dir / "report.pdf").read_bytes()
    expected = document.count(b"/Type /Page ")
    subprocess.run(
        ["pdftoppm", "-r", "40", "-png", str(scan_dir / "report.pdf"), str(tmp_path / "page")],
        check=True,
        capture_output=True,
    )
    assert expected >= 1 and len(list(tmp_path.glob("page*.png"))) == expected
    text = subprocess.run(
        ["pdftotext", "-layout", str(scan_dir / "report.pdf"), "-"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    record = json.loads((scan_dir / "lesions.json").read_text())
    assert f"Lesion report: {record['scan_id']}" in text
    assert f"Findings: {len(record['lesions'])} lesion(s)" in text
    assert "Research use only" in text and "lesion 1" in text


def test_report_renders_in_headless_chromium(reported: tuple[Path, Path]) -> None:
    _, out = reported
    loaded, total = images_loaded_in_chromium(_dicom_dir(out) / "report.html")
    assert loaded == total and total >= 6


def test_no_phi_in_any_output_by_default(reported: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = reported
    for path in out.rglob("*"):
        assert not any(part in str(path.relative_to(out)) for part in (*PHI, ".."))
        assert out in path.parents
        if not path.is_file() or path.suffix == ".dcm":  # SEG/SR carry the patient module
            continue
        data = path.read_bytes()
        words: tuple[str, ...] = PHI  # long enough never to occur by chance in binary data
        if path.suffix == ".html":  # the text without its embedded images
            data = re.sub(rb"data:image/png;base64,[A-Za-z0-9+/=]+", b"", data)
            words = (*PHI, "Doe", "Jane", "31415")
        if path.suffix == ".pdf" and shutil.which("pdftotext"):
            text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True)
            data += text.stdout
        for value in words:
            assert value.encode() not in data, f"{value} in {path}"
    # asked for, the patient fields appear in the reports
    result = runner.invoke(app, ["report", str(out), "--show-phi", "--no-pdf", "--no-dicom"])
    assert result.exit_code == 0, result.output
    page = (_dicom_dir(out) / "report.html").read_text()
    assert "Doe^Jane" in page and "PID-31415" in page


def test_real_ct_series_report_and_seg(tmp_path: Path) -> None:
    series = shared("ct_dicom_totalseg", "example_ct_dicom")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(series), "--model", str(DEMO), "--out", str(out), "--no-pdf"]
    )
    assert result.exit_code == 0, result.output
    scan_dir = _dicom_dir(out)
    volume = load_scan(discover(series).scans[0])
    seg = hd.seg.segread(scan_dir / "seg.dcm")
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.source.sop_instance_uids), segment_numbers=[1]
    )
    predicted = np.asarray(nib.load(scan_dir / "seg.nii.gz").dataobj) == 1
    np.testing.assert_array_equal(np.transpose(frames[..., 0], (2, 1, 0)) > 0, predicted)
    assert (scan_dir / "report.html").is_file() and (scan_dir / "sr.dcm").is_file()
