"""Every CLI path through typer's CliRunner: exit codes, outputs, messages."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from medres import __version__
from medres.cli.app import app
from tests.conftest import SAMPLE_DATA

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"medres {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "inspect" in result.stdout and "convert" in result.stdout


def test_help_does_not_import_torch_or_monai():
    code = "import sys, medres.cli.app as a; assert 'torch' not in sys.modules and 'monai' not in sys.modules and 'pydicom' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inspect_sample_data_json_lists_every_scan_ok():
    result = runner.invoke(app, ["inspect", str(SAMPLE_DATA), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["scans"]) == 12
    assert all(s["status"] == "ok" for s in report["scans"])
    dicom = next(s for s in report["scans"] if s["kind"] == "dicom")
    assert dicom["shape"] == [96, 80, 40] and dicom["spacing_mm"] == [0.9, 0.9, 2.5]
    assert dicom["modality"] == "CT" and dicom["orientation"] == "LPS"
    assert dicom["value_range"][0] >= -1024


def test_inspect_table_output_and_missing_folder_message(tmp_path):
    result = runner.invoke(app, ["inspect", str(SAMPLE_DATA)])
    assert result.exit_code == 0 and "12 scan(s): 12 ok" in result.stdout
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.output
    assert "Traceback" not in result.output


def test_inspect_exits_1_when_a_scan_is_broken_and_still_lists_the_others(tmp_path):
    import shutil

    shutil.copytree(SAMPLE_DATA / "ct_phantom_dicom", tmp_path / "ct")
    (tmp_path / "ct" / "IM0020").unlink()  # a gap
    (tmp_path / "corrupt.dcm").write_bytes(b"rubbish")
    result = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["scans"][0]["status"] == "error" and "slice gap" in report["scans"][0]["problem"]
    assert any(
        s["status"] == "error" and s["path"].endswith("corrupt.dcm") for s in report["skipped"]
    )


def test_convert_writes_nifti_and_sidecar_without_phi(tmp_path):
    out = tmp_path / "nifti"
    result = runner.invoke(app, ["convert", str(SAMPLE_DATA), str(out)])
    assert result.exit_code == 0, result.output
    (nii,) = out.glob("*.nii.gz")
    (sidecar,) = out.glob("*.json")
    img = nib.load(nii)
    reference = nib.load(SAMPLE_DATA / "ct_phantom.nii.gz")
    assert np.array_equal(np.asanyarray(img.dataobj), np.asanyarray(reference.dataobj))
    assert np.allclose(img.affine, reference.affine, atol=1e-4)
    meta = json.loads(sidecar.read_text())
    assert meta["Modality"] == "CT" and len(meta["SOPInstanceUIDs"]) == 40
    text = sidecar.read_text() + nii.name
    assert "Phantom^Sample" not in text and "PHANTOM01" not in text
    assert not list(out.glob(".*tmp"))  # no temp files left behind


def test_convert_show_phi_includes_patient_fields(tmp_path):
    result = runner.invoke(
        app, ["convert", str(SAMPLE_DATA / "ct_phantom_dicom"), str(tmp_path), "--show-phi"]
    )
    assert result.exit_code == 0
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["PatientName"] == "Phantom^Sample"
