"""``medres evaluate`` end to end: the demo ensemble on the sample phantoms, bad truth
inputs reported one by one, and the real LGG layout (masks next to their images)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medres.cli.app import app
from medres.errors import EvaluationError
from medres.evaluation.run import EvaluateOptions, evaluate_predictions
from medres.evaluation.truth import TruthIndex
from medres.inference.batch import PredictOptions, open_ensembles, predict_batch
from tests.conftest import REPO, SAMPLE_DATA, images_loaded_in_chromium, shared

DEMO = REPO / "models" / "demo_ct_3d"
runner = CliRunner()


@pytest.fixture(scope="module")
def phantom_predictions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pred")
    options = PredictOptions(keep_members=True, save_probabilities=True)
    ensembles = open_ensembles([DEMO], options=options)
    predict_batch(
        SAMPLE_DATA / "ct_train" / "imagesTr", [], out, options=options, ensembles=ensembles
    )
    return out


def test_members_and_ensemble_on_the_training_phantoms(
    phantom_predictions: Path, tmp_path: Path
) -> None:
    truth = SAMPLE_DATA / "ct_train" / "labelsTr"
    result = runner.invoke(
        app, ["evaluate", str(phantom_predictions), "--truth", str(truth), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    for name in ("metrics.csv", "lesions.csv", "summary.json", "evaluation.html"):
        assert (tmp_path / name).is_file()
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "froc_lesion.png",
        "cases_lesion.png",
        "reliability_lesion.png",
    }
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_cases"] == 6 and summary["failed"] == []
    results = summary["results"]["lesion"]
    assert list(results) == [f"demo_ct_3d.fold_{i}" for i in range(3)] + ["ensemble"]
    ensemble = results["ensemble"]
    dice = ensemble["segmentation"]["dice"]
    assert 0.8 < dice["mean"] <= 1.0 and dice["ci_low"] <= dice["mean"] <= dice["ci_high"]
    assert ensemble["detection"]["sensitivity"]["value"] > 0.8
    assert 0 <= ensemble["calibration"]["ece"] < 0.05
    assert set(results["demo_ct_3d.fold_0"]["vs_ensemble"]) == {"dice", "hd95_mm", "nsd", "f1"}
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 * 4  # 6 cases x (3 members + ensemble)
    # sizes name their unit: volumes on these 3D phantoms, the area columns stay empty
    assert all(r["volume_error_abs_ml"] != "" and r["area_error_abs_mm2"] == "" for r in rows)
    with (tmp_path / "lesions.csv").open() as handle:
        lesions = list(csv.DictReader(handle))
    assert {x["kind"] for x in lesions} <= {"tp", "fp", "fn"}
    assert all(x["true_volume_ml"] != "" for x in lesions if x["kind"] == "tp")
    assert all(x["true_area_mm2"] == "" for x in lesions)
    # a figure in the table equals a direct computation from the files
    row = next(r for r in rows if r["case"] == "phantom_001" and r["model"] == "ensemble")
    seg = np.asarray(nib.load(phantom_predictions / "phantom_001" / "seg.nii.gz").dataobj) == 1
    true = np.asarray(nib.load(truth / "phantom_001.nii.gz").dataobj) == 1
    direct = 2 * (seg & true).sum() / (seg.sum() + true.sum())
    assert float(row["dice"]) == pytest.approx(direct, rel=1e-5)
    html = (tmp_path / "evaluation.html").read_text()
    assert "froc_lesion.png" in html and "Research use only" in html
    loaded, total = images_loaded_in_chromium(tmp_path / "evaluation.html")
    assert loaded == total == 3  # the linked PNG plots load


def test_bad_truth_is_reported_and_the_rest_is_scored(
    phantom_predictions: Path, tmp_path: Path
) -> None:
    truth = tmp_path / "truth"
    shutil.copytree(SAMPLE_DATA / "ct_train" / "labelsTr", truth)
    (truth / "phantom_001.nii.gz").unlink()  # missing
    moved = nib.load(truth / "phantom_002.nii.gz")
    affine = moved.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), affine), truth / "phantom_002.nii.gz")
    odd = nib.load(truth / "phantom_003.nii.gz")
    data = np.asarray(odd.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, odd.affine), truth / "phantom_003.nii.gz")
    small = nib.load(truth / "phantom_004.nii.gz")
    nib.save(
        nib.Nifti1Image(np.asarray(small.dataobj)[:-1], small.affine), truth / "phantom_004.nii.gz"
    )
    out = tmp_path / "eval"
    result = runner.invoke(
        app, ["evaluate", str(phantom_predictions), "--truth", str(truth), "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "summary.json").read_text())
    problems = {f["scan_id"]: f["error"] for f in summary["failed"]}
    assert "no ground truth" in problems["phantom_001"]
    assert "another affine than the scan" in problems["phantom_002"]
    assert "label value(s) [7] are not in the pipeline" in problems["phantom_003"]
    assert "not the same grid" in problems["phantom_004"]
    assert summary["n_cases"] == 2  # phantoms 5 and 6 are still scored
    skipped = evaluate_predictions(
        phantom_predictions,
        truth,
        tmp_path / "eval2",
        options=EvaluateOptions(skip_missing_truth=True, members=False),
    )
    assert skipped.summary["without_truth"] == ["phantom_001"]
    assert skipped.models == ["ensemble"]


def test_truth_lookup_rules(tmp_path: Path) -> None:
    (tmp_path / "case_a").mkdir()
    (tmp_path / "case_a" / "labels.nii.gz").write_bytes(b"")
    (tmp_path / "b.nii.gz").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "c_mask.png").write_bytes(b"")
    index = TruthIndex(tmp_path)
    assert index.find("b").name == "b.nii.gz"
    assert index.find("c").name == "c_mask.png"  # the mask, not the image beside it
    with pytest.raises(EvaluationError, match="case_a: no ground truth"):
        index.find("case_a")
    assert TruthIndex(tmp_path, truth_name="labels.nii.gz").find("case_a").parent.name == "case_a"
    datalist = tmp_path / "list.json"
    datalist.write_text(
        json.dumps({"test": [{"id": "p1", "image": "x.nii.gz", "label": "y.nii.gz"}]})
    )
    assert (
        TruthIndex(datalist, data_root=tmp_path / "root").find("p1")
        == tmp_path / "root" / "y.nii.gz"
    )
    decathlon = tmp_path / "dataset.json"  # no ids: the label's own name is the case's
    entry = {"image": "./imagesTr/c7.nii.gz", "label": "./labelsTr/c7.nii.gz"}
    decathlon.write_text(json.dumps({"training": [entry]}))
    assert TruthIndex(decathlon).find("c7").name == "c7.nii.gz"
    with pytest.raises(EvaluationError, match="no such truth folder"):
        TruthIndex(tmp_path / "missing")
    with pytest.raises(EvaluationError, match="not a medres predict folder"):
        evaluate_predictions(tmp_path, tmp_path)


def test_lgg_patients_pool_their_slices(tmp_path: Path) -> None:
    """Real LGG slices: masks found beside the images, a patient's slices pooled."""
    patient = shared("lgg_flair_2d", "TCGA_CS_6186_20000601")
    scans = tmp_path / "scans" / patient.name
    scans.mkdir(parents=True)
    images = sorted(p for p in patient.glob("*.tif") if not p.stem.endswith("_mask"))[:8]
    for path in images:
        (scans / path.name).symlink_to(path)
        mask = path.with_name(f"{path.stem}_mask.tif")
        (scans / mask.name).symlink_to(mask)
    # a stand-in 2D model is not bundled: predict with "truth" copied as the prediction
    from medres.io import discover
    from medres.io.images2d import read_image2d, read_mask2d
    from medres.io.nifti import write_nifti
    from medres.predictions import records as rec
    from medres.predictions.layout import RunFolder

    out = RunFolder(tmp_path / "pred")
    out.path.mkdir()
    folder = rec.FolderProvenance(path="lgg", pipeline="lgg", members=[], config=_lgg_config())
    takes = rec.InputKindRecord(dims=2, channels=["pre_contrast", "flair", "post_contrast"])
    model = rec.ModelProvenance(
        ensemble="lgg", mode="mean", takes=takes, labels=["background", "tumour"], folders=[folder]
    )
    rec.RunRecord(medres_version="test", input=str(scans.parent), models=[model]).write(out)
    found = discover(scans)
    assert found.scans
    for ref in found.scans:
        image = read_image2d(ref.paths[0])
        mask = read_mask2d(ref.mask_path, like=image).array[0]
        scan_dir = out.scan(ref.scan_id)
        scan_dir.path.mkdir()
        write_nifti(scan_dir.seg, mask, image.affine)
        rec.ScanRecord(
            medres_version="test",
            scan_id=ref.scan_id,
            fingerprint="",
            source=rec.SourceRecord(
                kind="image2d", files=[f"{patient.name}/{Path(ref.paths[0]).name}"], n_files=1
            ),
            grid=rec.GridRecord(
                shape=image.spatial_shape,
                affine=image.affine.tolist(),
                spacing_mm=(1.0, 1.0),
                orientation="",
            ),
            ensemble=rec.EnsembleRecord(pipelines=["lgg"], members=[], mode="mean", tta=[]),
            labels=["background", "tumour"],
            lesion_labels=["tumour"],
            n_lesions=0,
            total_volume_ml=None,
            total_area_mm2=0.0,
            lesions=[],
        ).write(scan_dir)
    out = out.path
    result = evaluate_predictions(
        out, scans.parent, tmp_path / "eval", options=EvaluateOptions(group_by="folder")
    )
    assert result.summary["n_cases"] == 1 and result.summary["n_scans"] == len(found.scans)
    (row,) = result.rows
    assert row["case"] == patient.name and row["dice"] == 1.0 and row["fp"] == 0


def _lgg_config() -> dict[str, object]:
    import yaml

    return yaml.safe_load((REPO / "pipelines" / "lgg_flair_2d.yaml").read_text())
