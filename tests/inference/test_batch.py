"""``medres predict`` over a mixed folder: outputs on each scan's grid, failures isolated.

The batch holds a DICOM series, an oblique anisotropic NIfTI, a 2D image no model takes,
a corrupt ``.dcm``, a truncated DICOM slice and a DICOM structured report. Good scans get
outputs whose grid equals the input's exactly; bad ones are reported by file; the exit
code says something failed; ``--resume`` skips finished scans.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medres.cli.app import app
from medres.errors import LoadError, ModelError
from medres.inference.batch import PredictOptions, open_ensembles, predict_batch
from medres.inference.inputs import assemble_inputs, load_input
from medres.io import discover, load_scan, write_nifti
from medres.io.volume import ScanKind, Volume
from medres.models.folder import ModelFolder
from medres.synthetic import ct_phantom
from tests.conftest import (
    REPO,
    SAMPLE_DATA,
    oblique_affine,
    on_world_grid,
    relabelled_model,
    shared,
)

DEMO = REPO / "models" / "demo_ct_3d"
runner = CliRunner()


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as handle:
        return {row["scan_id"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def mixed_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scans")
    shutil.copytree(SAMPLE_DATA / "ct_phantom_dicom", root / "dicom")
    ct, _ = ct_phantom(shape=(71, 59, 17), spacing_mm=(0.8, 1.2, 3.0), seed=5)
    write_nifti(root / "oblique.nii.gz", Volume(ct.array, oblique_affine((0.8, 1.2, 3.0))))
    shutil.copy(SAMPLE_DATA / "images2d" / "slice_01.png", root / "photo.png")
    broken = root / "broken"
    broken.mkdir()
    (broken / "corrupt.dcm").write_bytes(b"\x00" * 200 + b"this is not a DICOM file")
    first = sorted((root / "dicom").iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(broken / "whole.dcm")
    data = (broken / "whole.dcm").read_bytes()
    (broken / "truncated.dcm").write_bytes(data[: len(data) - 3000])
    (broken / "whole.dcm").unlink()
    ds = pydicom.dcmread(first)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "SR"
    del ds.PixelData
    ds.save_as(broken / "report.dcm")
    return root


@pytest.fixture(scope="module")
def predicted(mixed_batch: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    result = runner.invoke(
        app,
        [
            "predict",
            str(mixed_batch),
            "--model",
            str(DEMO),
            "--out",
            str(out),
            "--members",
            "--probabilities",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1, result.output  # some scans failed, the rest went on
    assert "failed" in result.output
    return out


def test_good_scans_get_outputs_on_their_own_grid(mixed_batch: Path, predicted: Path) -> None:
    rows = _rows(predicted)
    ok = {scan_id for scan_id, row in rows.items() if row["status"] == "ok"}
    assert "oblique" in ok and any(s.startswith("S3_Phantom") for s in ok) and len(ok) == 2
    found = discover(mixed_batch)
    for ref in found.scans:
        if ref.scan_id not in ok:
            continue
        scan = load_scan(ref)
        seg = nib.load(predicted / ref.scan_id / "seg.nii.gz")
        assert seg.shape == scan.spatial_shape
        np.testing.assert_allclose(seg.affine, scan.affine, atol=1e-5)
        assert seg.get_data_dtype() == np.uint8
        report = json.loads((predicted / ref.scan_id / "lesions.json").read_text())
        assert report["grid"]["shape"] == list(scan.spatial_shape)
        assert report["n_lesions"] == int(rows[ref.scan_id]["n_lesions"]) >= 1
        lesion = report["lesions"][0]
        assert lesion["members_detecting"] <= lesion["n_members"] == 3
        assert 0.0 < lesion["mean_probability"] <= lesion["max_probability"] <= 1.0
        probabilities = nib.load(predicted / ref.scan_id / "probabilities.nii.gz")
        assert probabilities.get_data_dtype() == np.uint8  # one byte per voxel
        values = probabilities.get_fdata()
        assert (
            values.shape == scan.spatial_shape and 0.0 <= values.min() <= values.max() < 1.0 + 1e-6
        )
        labels = np.asarray(seg.dataobj)
        assert np.all(values[labels == 1] > 0.45)  # the mask is the thresholded mean
        members = sorted((predicted / ref.scan_id / "members").iterdir())
        assert [m.name for m in members] == [f"demo_ct_3d.fold_{i}" for i in range(3)]


def test_bad_files_are_reported_by_name(predicted: Path) -> None:
    rows = _rows(predicted)
    failed = {scan_id: row["error"] for scan_id, row in rows.items() if row["status"] == "failed"}
    assert any("corrupt.dcm" in e and "not a DICOM file" in e for e in failed.values())
    assert any("truncated.dcm" in e for e in failed.values())
    assert (
        "photo" in failed
        and "no model takes this scan: 2D scan with 3 channel(s)" in failed["photo"]
    )
    run = json.loads((predicted / "run.json").read_text())
    assert any(
        s["path"].endswith("report.dcm") and "not an image" in s["reason"] for s in run["skipped"]
    )
    assert run["finished"] is True and run["counts"] == {"ok": 2, "failed": 3}
    manifest = json.loads((DEMO / "model.json").read_text())
    members = run["models"][0]["folders"][0]["members"]
    assert [m["weights_sha256"] for m in members] == [
        m["weights_sha256"] for m in manifest["members"]
    ]
    assert run["peak_memory_mib"] > 0 and "torch" in run["software"]


def test_resume_skips_finished_scans_and_reruns_on_other_options(
    mixed_batch: Path, predicted: Path
) -> None:
    seg = predicted / "oblique" / "seg.nii.gz"
    before = seg.stat().st_mtime_ns
    options = PredictOptions(
        keep_members=True, save_probabilities=True, resume=True, report=True, report_pdf=True
    )  # as the CLI ran it (reports are part of a complete scan)
    run = predict_batch(mixed_batch, [DEMO], predicted, options=options)
    statuses = {r.scan_id: r.status for r in run.results}
    assert statuses["oblique"] == "resumed" and seg.stat().st_mtime_ns == before
    assert statuses["photo"] == "failed"  # failures are tried again
    resumed = next(r for r in run.results if r.scan_id == "oblique")
    assert resumed.n_lesions is not None and resumed.shape == "71x59x17"
    # other options make other outputs: nothing is skipped
    vote = PredictOptions(ensemble="vote", resume=True)
    single = mixed_batch / "oblique.nii.gz"
    run = predict_batch(single, [DEMO], predicted, options=vote)
    assert [r.status for r in run.results] == ["ok"] and seg.stat().st_mtime_ns != before
    # the earlier run's extra outputs are gone, not left beside the new ones
    assert not (predicted / "oblique" / "members").exists()
    assert not (predicted / "oblique" / "probabilities.nii.gz").exists()


def test_model_folders_must_agree_on_labels(tmp_path: Path) -> None:
    other = relabelled_model(DEMO, tmp_path / "other", "lesion", "nodule")
    with pytest.raises(ModelError, match="labels differ"):
        open_ensembles([DEMO, other], options=PredictOptions())
    with pytest.raises(ModelError, match="given twice"):
        open_ensembles([DEMO, DEMO], options=PredictOptions())
    result = runner.invoke(
        app,
        [
            "predict",
            str(SAMPLE_DATA),
            "--model",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "not a medres model folder" in result.output


def test_channel_files_are_grouped_into_cases(tmp_path: Path) -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    rng = np.random.default_rng(0)

    def put(path: Path, like: np.ndarray = affine) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_nifti(path, Volume(rng.random((1, 6, 5, 4)).astype(np.float32), like))

    put(tmp_path / "case_a" / "Flair_norm.nii.gz")
    put(tmp_path / "case_a" / "T1c_norm.nii.gz")
    put(tmp_path / "case_a" / "brainmask.nii.gz")
    put(tmp_path / "nnunet" / "P1_0001.nii.gz")
    put(tmp_path / "nnunet" / "P1_0000.nii.gz")
    put(tmp_path / "single.nii.gz")
    shifted = affine.copy()
    shifted[0, 3] = 5.0
    put(tmp_path / "case_b" / "flair.nii.gz")
    put(tmp_path / "case_b" / "t1c.nii.gz", shifted)
    inputs, unused = assemble_inputs(discover(tmp_path), channel_sets=[("ct",), ("flair", "t1c")])
    by_id = {item.scan_id: item for item in inputs}
    assert set(by_id) == {"case_a", "case_b", "P1", "single"}
    assert [Path(r.paths[0]).name for r in by_id["case_a"].refs] == [
        "Flair_norm.nii.gz",
        "T1c_norm.nii.gz",
    ]
    assert [Path(r.paths[0]).name for r in by_id["P1"].refs] == ["P1_0000.nii.gz", "P1_0001.nii.gz"]
    assert [Path(u.path).name for u in unused] == ["brainmask.nii.gz"]
    stacked = load_input(by_id["case_a"])
    assert stacked.n_channels == 2 and stacked.spatial_shape == (6, 5, 4)
    with pytest.raises(LoadError, match="t1c.nii.gz: channel affine differs"):
        load_input(by_id["case_b"])


def test_real_ct_dicom_series_lands_on_the_reference_grid(tmp_path: Path) -> None:
    """The TotalSegmentator CT series: the mask's grid is the series' grid (dcm2niix's)."""
    series = shared("ct_dicom_totalseg", "example_ct_dicom")
    reference = nib.load(shared("ct_dicom_totalseg", "example_seg_dicom.nii.gz"))
    ensembles = open_ensembles([DEMO], options=PredictOptions())
    run = predict_batch(series, [], tmp_path, ensembles=ensembles)
    assert [r.status for r in run.results] == ["ok"]
    seg = nib.load(next(tmp_path.glob("*/seg.nii.gz")))
    labels, affine = on_world_grid(
        np.asarray(seg.dataobj), seg.affine, reference.affine, shape=seg.shape
    )
    assert labels.shape == reference.shape
    np.testing.assert_allclose(affine, reference.affine, atol=1e-3)
    report = json.loads(next(tmp_path.glob("*/lesions.json")).read_text())
    assert report["source"]["modality"] == "CT" and report["source"]["n_files"] == 20
    assert ModelFolder.open(DEMO).members[0].name in report["ensemble"]["members"][0]


def test_skip_unmatched_keeps_the_exit_code_clean(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["predict", str(SAMPLE_DATA / "images2d"), "--model", str(DEMO), "--out", str(out)]
    result = runner.invoke(app, [*args, "--skip-unmatched"])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert rows and all(row["status"] == "skipped" for row in rows.values())
    assert all("no model takes this scan" in row["error"] for row in rows.values())
    result = runner.invoke(app, [*args, "--ensemble", "median"])
    assert result.exit_code == 2 and "use mean or vote" in result.output


def test_dicom_text_cannot_steer_output_paths(tmp_path: Path) -> None:
    """A SeriesDescription with path characters still gives a folder inside --out."""
    scans = tmp_path / "scans"
    shutil.copytree(SAMPLE_DATA / "ct_phantom_dicom", scans)
    for path in scans.iterdir():
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "../../escaped/\x00evil"
        ds.save_as(path)
    out = tmp_path / "deep" / "out"
    run = predict_batch(scans, [DEMO], out, options=PredictOptions())
    (result,) = run.results
    assert result.status == "ok"
    assert "/" not in result.scan_id and ".." not in result.scan_id
    written = [p for p in tmp_path.rglob("*") if p.is_file() and scans not in p.parents]
    assert written and all(out in p.parents for p in written)


def test_scan_ids_stay_unique_and_single_slices_fit_2d_models() -> None:
    from medres.inference.inputs import assemble_inputs
    from medres.io.discover import DiscoveryResult, ScanRef
    from medres.transforms.presets import fit_dims

    refs = [
        ScanRef(scan_id=name, kind=ScanKind.NIFTI, paths=(f"/data/{n}/{name}.nii.gz",))
        for n, name in enumerate(["ct_2", "ct", "ct"])
    ]
    inputs, _ = assemble_inputs(DiscoveryResult(root="/data", scans=refs))
    assert sorted(item.scan_id for item in inputs) == ["ct", "ct_2", "ct_3"]
    one_slice = Volume(np.zeros((1, 4, 5, 1), np.float32), np.diag([0.5, 0.5, 3.0, 1.0]))
    assert fit_dims(one_slice, dims=2, source="x").spatial_shape == (4, 5)
