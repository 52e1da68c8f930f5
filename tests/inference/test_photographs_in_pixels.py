"""A colour photograph data set from inspect to report: masks in their own folder, every
size in pixels, colours kept; a given pixel size turns the pixels into mm.

The data are the sample generator's dermoscopy-like photographs (``images/`` +
``masks/``, odd sizes, no pixel size), trained for a few seconds with the shipped
``pipelines/photo_lesion_2d.yaml``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medres.cli.app import app
from medres.synthetic import write_photo_set
from tests.conftest import REPO

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("photos")
    data = root / "data"
    write_photo_set(data, n_cases=8)
    model = root / "model"
    pipeline = REPO / "pipelines" / "photo_lesion_2d.yaml"
    result = runner.invoke(app, ["train", str(pipeline), "--data", str(data), "--out", str(model)])
    assert result.exit_code == 0, result.output
    return data, model


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_inspect_pairs_the_masks_folder_and_says_px(trained: tuple[Path, Path]) -> None:
    data, _ = trained
    result = runner.invoke(app, ["inspect", str(data), "--json"])
    assert result.exit_code == 0, result.output
    scans = json.loads(result.stdout)["scans"]
    assert len(scans) == 8  # the masks are not listed as scans
    for scan in scans:
        assert Path(scan["mask"]).parent.name == "masks"
        assert Path(scan["mask"]).name == Path(scan["path"]).name
        assert scan["length_unit"] == "px" and scan["channels"] == 3


def test_predict_evaluate_report_in_pixels(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    out = tmp_path / "pred"
    args = ["predict", str(data / "images"), "--model", str(model), "--out", str(out)]
    result = runner.invoke(app, [*args, "--members"])
    assert result.exit_code == 0, result.output
    assert "area px²" in result.output and "8 scans: sizes in pixels" in result.output
    rows = _rows(out / "summary.csv")
    assert all(r["lesion_area_px2"] and not r["lesion_area_mm2"] for r in rows)
    assert all(r["spacing_mm"] == "" for r in rows)
    record = json.loads((out / "lesion_01" / "lesions.json").read_text())
    assert record["grid"]["length_unit"] == "px" and record["grid"]["orientation"] == ""
    lesion = record["lesions"][0]
    assert {"area_px2", "longest_axial_diameter_px", "center_px"} <= set(lesion)
    assert not any(key.endswith(("_mm", "_mm2")) for key in lesion)
    assert lesion["area_px2"] == lesion["voxel_count"]  # one px² per pixel
    html = (out / "lesion_01" / "report.html").read_text()
    assert "area (px²)" in html and "centre (x, y px)" in html and "RAS mm" not in html
    assert "mm²" not in html and "assume" not in html
    assert "calibrated by temperature scaling" in html  # the tuning is stated
    run = json.loads((out / "run.json").read_text())
    members = run["models"][0]["folders"][0]["members"]
    assert all(m["temperature"] > 0 for m in members)
    overview = np.asarray(
        Image.open(out / "lesion_01" / "overlays" / "overview.png").convert("RGB")
    )
    body = overview[40:-40, 20:-20].reshape(-1, 3).astype(int)
    assert np.mean(np.abs(body[:, 0] - body[:, 2])) > 30  # skin and lesion in colour, not grey

    result = runner.invoke(app, ["evaluate", str(out), "--truth", str(data)])
    assert result.exit_code == 0, result.output
    assert "HD95 px" in result.output and "fold_0" in result.output
    metrics = _rows(out / "evaluation" / "metrics.csv")
    assert "hd95_px" in metrics[0] and "hd95_mm" not in metrics[0]
    ensemble = [r for r in metrics if r["model"] == "ensemble"]
    assert len(ensemble) == 8 and np.mean([float(r["dice"]) for r in ensemble]) > 0.8
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["length_unit"] == "px"
    assert "< 10 px" in summary["results"]["lesion"]["ensemble"]["sensitivity_by_size"]
    page = (out / "evaluation" / "evaluation.html").read_text()
    assert "hd95_px" in page and "in pixels (px)" in page


def test_a_given_pixel_size_measures_in_mm(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    out_px, out_mm = tmp_path / "px", tmp_path / "mm"
    base = ["predict", str(data / "images"), "--model", str(model), "--no-report"]
    assert runner.invoke(app, [*base, "--out", str(out_px)]).exit_code == 0
    result = runner.invoke(app, [*base, "--out", str(out_mm), "--pixel-size-mm", "0.1,0.2"])
    assert result.exit_code == 0, result.output
    for row in _rows(out_mm / "summary.csv"):
        assert row["spacing_mm"] == "0.1x0.2" and not row["lesion_area_px2"]
        assert row["lesion_area_mm2"] != ""
    # the smallest lesion cross-validation chose is in px²: it stays in pixels, so the
    # same lesions are found in both units
    tuned = json.loads((model / "model.json").read_text())["cross_validation"]
    assert tuned["size_unit"] == "px²"
    for scan in sorted(out_mm.glob("lesion_*/lesions.json")):
        record = json.loads(scan.read_text())
        assert record["grid"]["length_unit"] == "mm"
        for lesion in record["lesions"]:
            assert lesion["area_mm2"] == pytest.approx(lesion["voxel_count"] * 0.02, abs=1e-3)
            assert lesion["voxel_count"] >= tuned["chosen"]["min_lesion_size"]
        in_px = json.loads((out_px / scan.parent.name / "lesions.json").read_text())
        assert [x["voxel_count"] for x in record["lesions"]] == [
            x["voxel_count"] for x in in_px["lesions"]
        ]
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--pixel-size-mm", "0,-1"])
    assert bad.exit_code == 2 and "--pixel-size-mm 0,-1" in bad.output


def test_saliency_points_at_the_lesion(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from medres.inference.batch import PredictOptions, open_ensembles
    from medres.inference.saliency import lesion_saliency
    from medres.inference.writer import scan_lesions
    from medres.io import read_image2d

    data, model = trained
    (ensemble,) = open_ensembles([model], options=PredictOptions(runtime="torch"))
    volume = read_image2d(data / "images" / "lesion_03.png")
    prediction = ensemble.predict(volume)
    lesion = scan_lesions(ensemble, prediction)[0]
    found = lesion_saliency(ensemble, volume, prediction.label_map, lesion)
    inside = prediction.label_map == 1
    heat = found.heat
    assert heat.shape == volume.spatial_shape and np.nanmax(heat) == pytest.approx(1.0)
    assert found.score > 0 and found.seconds > 0
    assert np.isfinite(heat[inside]).all()  # the analysed region covers the lesion
    outside = np.isfinite(heat) & ~inside
    assert np.nanmean(heat[inside]) > np.nanmean(heat[outside])

    out = tmp_path / "pred"
    args = ["predict", str(data / "images"), "--model", str(model), "--out", str(out)]
    assert runner.invoke(app, [*args, "--no-pdf"]).exit_code == 0
    assert not list(out.glob("*/overlays/saliency_*.png"))  # off by default
    result = runner.invoke(app, ["report", str(out), "--explain", "--no-pdf"])
    assert result.exit_code == 0, result.output
    assert "s per lesion" in result.output
    assert (out / "lesion_03" / "overlays" / "saliency_01.png").is_file()
    assert "what the model looked at" in (out / "lesion_03" / "report.html").read_text()
