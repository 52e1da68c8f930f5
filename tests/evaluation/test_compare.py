"""Any folder of label maps is evaluated like a predict folder; several are compared with
paired intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from medres.cli.app import app
from medres.io import write_nifti
from medres.io.volume import Volume
from tests.conftest import REPO, SAMPLE_DATA, oblique_affine

runner = CliRunner()


def _sphere(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return (sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2).astype(
        np.uint8
    )


def _folders(root: Path) -> tuple[Path, Path, Path]:
    """Truth (3 cases, values 2 = lesion), an exact reader and a reader who misses some."""
    affine = oblique_affine((0.8, 1.1, 2.5))
    truth, exact, rough = root / "truth", root / "reader_a", root / "reader_b"
    for n in range(3):
        mask = _sphere((23, 19, 11), (11, 9, 5), 3 + n) * 2
        write_nifti(truth / f"case_{n}_mask.nii.gz", Volume(mask[None], affine))
        write_nifti(exact / f"case_{n}.nii.gz", Volume((mask > 0)[None].astype(np.uint8), affine))
        shrunk = _sphere((23, 19, 11), (11, 9, 5), 2 + n)
        shrunk[0:2, 0:2, 0:2] = 1  # a false lesion in a corner
        write_nifti(rough / f"case_{n}.nii.gz", Volume(shrunk[None], affine))
    return truth, exact, rough


def test_label_map_folders_are_scored_and_compared(tmp_path: Path) -> None:
    truth, exact, rough = _folders(tmp_path)
    out = tmp_path / "cmp"
    args = ["evaluate", str(exact), "-p", str(rough), "--truth", str(truth), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    first, second = comparison["labels"]["lesion"]
    assert first["name"] == "reader_a" and first["dice"]["mean"] == 1.0
    assert first["n_cases"] == 3 and second["n_cases"] == 3
    assert second["dice"]["mean"] < 0.9 and second["f1"]["mean"] < 1.0
    paired = second["minus_first"]["dice"]
    assert paired["n"] == 3 and paired["mean_difference"] < 0 and paired["ci_high"] < 0
    assert (out / "reader_b" / "metrics.csv").is_file()
    metrics = (out / "reader_b" / "metrics.csv").read_text()
    assert "hd95_mm" in metrics and "reader_b" in metrics
    assert "minus reader_a" in result.output and "reader_b" in result.output


def test_one_label_map_folder_alone(tmp_path: Path) -> None:
    truth, exact, _ = _folders(tmp_path)
    result = runner.invoke(app, ["evaluate", str(exact), "--truth", str(truth)])
    assert result.exit_code == 0, result.output
    summary = json.loads((exact / "evaluation" / "summary.json").read_text())
    assert summary["predictions_kind"] == "label maps"
    assert summary["results"]["lesion"]["reader_a"]["segmentation"]["dice"]["mean"] == 1.0


def test_bad_label_map_folders_are_one_line(tmp_path: Path) -> None:
    truth, exact, _ = _folders(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["evaluate", str(empty), "--truth", str(truth)])
    assert result.exit_code == 2 and "folder of label maps" in result.output
    (exact / "sub").mkdir()
    (exact / "sub" / "case_1.nii.gz").write_bytes((exact / "case_1.nii.gz").read_bytes())
    result = runner.invoke(app, ["evaluate", str(exact), "--truth", str(truth)])
    assert result.exit_code == 2 and "two label maps for scan case_1" in result.output
    result = runner.invoke(app, ["evaluate", "--truth", str(truth)])
    assert result.exit_code == 2 and "prediction folder" in result.output


def test_a_medres_folder_and_its_own_masks_as_label_maps_agree(tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    scan = SAMPLE_DATA / "ct_phantom.nii.gz"
    model = REPO / "models" / "demo_ct_3d"
    args = ["predict", str(scan), "--model", str(model), "--out", str(pred), "--no-report"]
    assert runner.invoke(app, args).exit_code == 0
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "ct_phantom.nii.gz").write_bytes((pred / "ct_phantom" / "seg.nii.gz").read_bytes())
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "ct_phantom_mask.nii.gz").write_bytes(
        (SAMPLE_DATA / "ct_phantom_mask.nii.gz").read_bytes()
    )
    out = tmp_path / "cmp"
    args = ["evaluate", str(pred), "-p", str(maps), "--truth", str(truth), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    medres, other = json.loads((out / "comparison.json").read_text())["labels"]["lesion"]
    assert medres["name"] == "pred" and other["name"] == "maps"
    assert other["dice"]["mean"] == medres["dice"]["mean"] and medres["dice"]["mean"] > 0.5
    assert other["minus_first"]["dice"]["mean_difference"] == 0.0
