"""Conformance on real scans in ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medres.errors import MedresError
from medres.io.discover import discover
from medres.io.load import load_scan
from tests.conftest import on_world_grid, shared

pytestmark = pytest.mark.real_data


@pytest.mark.parametrize("series", [4, 5, 6, 7], ids=lambda n: f"GE-series-{n}")
def test_dcm_qa_nih_ge_matches_dcm2niix_voxel_for_voxel(series):
    root = shared("dicom_conformance", "dcm_qa_nih")
    ref = nib.load(root / "Ref" / f"DCM2NIIX_regression_test_{series}.nii")
    ref_data = np.asanyarray(ref.dataobj)
    found = discover(root / "In" / "20180918GE" / f"mr_{series:04d}")
    assert [s.part for s in found.scans] == [f"t{t + 1}" for t in range(ref_data.shape[3])]
    for t, scan in enumerate(found.scans):
        vol = load_scan(scan)
        array, affine = on_world_grid(vol.array[0], vol.affine, ref.affine, shape=vol.spatial_shape)
        assert np.array_equal(array, ref_data[..., t]), f"time point {t + 1}"
        assert np.abs(affine - ref.affine).max() < 1e-3


@pytest.mark.parametrize("number", range(1, 10), ids=lambda n: f"ts-{n}")
def test_dcm_qa_ts_every_transfer_syntax_decodes_to_the_reference(number):
    root = shared("dicom_conformance", "dcm_qa_ts")
    ref = nib.load(root / "Ref" / f"{number}.nii")
    (scan,) = discover(root / "In" / f"{number}.dcm").scans
    vol = load_scan(scan)
    array, affine = on_world_grid(vol.array[0], vol.affine, ref.affine, shape=vol.spatial_shape)
    assert np.array_equal(array, np.asanyarray(ref.dataobj))
    assert np.abs(affine - ref.affine).max() < 1e-3


@pytest.mark.parametrize(
    ("name", "ref_number"),
    [("12bitUnsigned.dcm", 2), ("12bitUnsigned_0x0F0F.dcm", 3), ("12bitSigned_0x0F0F.dcm", 4)],
    ids=["unsigned", "unsigned-stripes", "signed-stripes"],
)
def test_dcm_qa_12bit_masks_and_sign_extends_like_the_reference(name, ref_number):
    root = shared("dicom_conformance", "dcm_qa_12bit")
    ref = nib.load(root / "Ref" / f"{ref_number}.nii")
    (scan,) = discover(root / "In" / name).scans
    vol = load_scan(scan)
    ref_data = np.asanyarray(ref.dataobj)
    if ref_data.ndim == 2:
        ref_data = ref_data[..., None]
    array, _ = on_world_grid(vol.array[0], vol.affine, ref.affine, shape=vol.spatial_shape)
    assert np.array_equal(array, ref_data)


def test_totalsegmentator_ct_loads_in_hu_on_the_reference_grid():
    root = shared("ct_dicom_totalseg")
    (scan,) = discover(root / "example_ct_dicom").scans
    vol = load_scan(scan)
    assert vol.modality == "CT"
    assert vol.array.dtype == np.int16
    assert int(vol.array.min()) == -1024 and int(vol.array.max()) == 1839
    ref = nib.load(root / "example_seg_dicom.nii.gz")
    array, affine = on_world_grid(vol.array[0], vol.affine, ref.affine, shape=vol.spatial_shape)
    assert array.shape == ref.shape
    assert np.abs(affine - ref.affine).max() < 1e-3
    # the organ labels sit on soft tissue, not on air: same grid, same anatomy
    labels = np.asanyarray(ref.dataobj)
    assert np.median(array[labels > 0]) > -200
    assert len(vol.source.sop_instance_uids) == 20


def test_every_pydicom_test_file_loads_or_fails_with_a_named_medres_error():
    root = shared("pydicom_testfiles")
    found = discover(root)
    listed = {s.path for s in found.skipped} | {p for s in found.scans for p in s.paths}
    all_files = {str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert listed == all_files  # nothing is silently lost
    for skipped in found.failed:
        assert skipped.path in skipped.reason
    loaded = failed = 0
    for scan in found.scans:
        try:
            vol = load_scan(scan)
        except MedresError as exc:
            failed += 1
            assert any(p in str(exc) for p in scan.paths) or scan.series_uid in str(exc), str(exc)
        else:
            loaded += 1
            assert vol.array.size > 0
    assert loaded > 50 and failed >= 3


def test_inspect_on_pydicom_test_files_lists_everything_and_exits_1():
    from typer.testing import CliRunner

    from medres.cli.app import app

    root = shared("pydicom_testfiles")
    result = CliRunner().invoke(app, ["inspect", str(root), "--json"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    report = json.loads(result.stdout)
    errors = [s for s in report["scans"] if s["status"] == "error"]
    assert errors and all(s["problem"] for s in errors)
    assert len(report["scans"]) + len(report["skipped"]) > 100
    assert "Traceback" not in result.output
