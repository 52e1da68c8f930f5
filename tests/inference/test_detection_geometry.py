"""Boxes land on the right voxels and world coordinates after predict, on anisotropic,
LPS and oblique grids, with and without resampling (an oracle detector that boxes the
bright voxels of the model grid stands in for a trained one)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medres.cli.app import app
from medres.inference import detector as detector_module
from medres.inference.boxes import boxes_from_label_map, boxes_to_ras_mm
from medres.inference.detect import DetectorView
from medres.models.folder import PIPELINE, WEIGHTS, write_manifest
from medres.models.registry import build_pipeline_network
from medres.pipeline import parse_pipeline
from medres.predictions.detections import DetectionsRecord
from medres.predictions.layout import ScanFolder
from tests.conftest import oblique_affine

#: The bright cuboid: voxel corners on the scan grid, x 10..20, y 5..15, z 4..8.
CUBOID = np.array([10.0, 5.0, 4.0, 20.0, 15.0, 8.0])

PIPELINE_3D = {
    "name": "oracle_det",
    "task": "detection",
    "dims": 3,
    "channels": ["ct"],
    "labels": ["background", "lesion"],
    "lesion_labels": ["lesion"],
    "preprocessing": {
        "orientation": "RAS",
        "intensity": {"kind": "ct_window", "window": [-160, 240]},
    },
    "augmentation": {"flip_axes": [0]},
    "model": {"name": "retinanet", "params": {"block_inplanes": [4, 8, 16, 32]}},
    "training": {"folds": 2, "patch_size": [32, 32, 16]},
    "inference": {"tta": True},
    "detection": {"anchor_shapes": [[8, 8, 4]], "report_score": 0.5},
}

GRIDS = {
    "anisotropic": np.diag([0.7, 1.3, 3.0, 1.0]),
    "lps": np.array([[-0.9, 0, 0, 40.0], [0, -0.9, 0, 25.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1.0]]),
    "oblique": oblique_affine((0.8, 1.1, 2.5)),
}


def _oracle(net, image, cfg, *, device, flips=(), overlap=None, source="scan"):
    """Boxes each bright blob (above half the window) of the model grid, once per view."""
    mask = (image[0].cpu().numpy() > 0.5).astype(np.uint8)
    boxes, _ = boxes_from_label_map(mask, labels=[1])
    dims = boxes.shape[1] // 2
    boxes = boxes[((boxes[:, dims:] - boxes[:, :dims]) >= 2).all(axis=1)]  # no noise specks
    views = [()] + [(a,) for a in flips]
    scores, labels = np.full(len(boxes), 0.9), np.ones(len(boxes), np.int64)
    return [DetectorView(boxes, scores, labels, tuple(view)) for view in views]


def _model_folder(tmp_path: Path, spacing: list[float] | None) -> Path:
    data = yaml.safe_load(yaml.safe_dump(PIPELINE_3D))
    if spacing is not None:
        data["preprocessing"]["target_spacing_mm"] = spacing
    cfg = parse_pipeline(data)
    folder = tmp_path / f"model_{'resampled' if spacing else 'native'}"
    folder.mkdir()
    (folder / PIPELINE).write_text(cfg.to_yaml())
    members = []
    for fold in range(2):
        (folder / f"fold_{fold}").mkdir()
        torch.save(build_pipeline_network(cfg).state_dict(), folder / f"fold_{fold}" / WEIGHTS)
        members.append({"name": f"fold_{fold}", "fold": fold, "val_dice": None, "summary": {}})
    write_manifest(folder, cfg, members)
    return folder


def _scans(tmp_path: Path) -> Path:
    scans = tmp_path / "scans"
    scans.mkdir()
    for name, affine in GRIDS.items():
        image = np.full((40, 30, 12), -1000, np.int16)
        image[10:20, 5:15, 4:8] = 200
        nib.save(nib.Nifti1Image(image, affine), scans / f"{name}.nii.gz")
    return scans


@pytest.mark.parametrize("spacing", [None, [2.0, 2.0, 2.0]])
def test_boxes_land_on_the_scan_grid_after_predict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spacing: list[float] | None
) -> None:
    monkeypatch.setattr(detector_module, "detect", _oracle)
    model = _model_folder(tmp_path, spacing)
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app,
        ["predict", str(_scans(tmp_path)), "--model", str(model), "--out", str(out), "--no-report"],
    )
    assert result.exit_code == 0, result.output
    for name, affine in GRIDS.items():
        record = DetectionsRecord.read(ScanFolder(out / name))
        assert len(record.boxes) == 1  # two members x two flip views fused into one box
        box = record.boxes[0]
        assert box.members == ["oracle_det/fold_0", "oracle_det/fold_1"]
        assert box.member_agreement == 1.0 and box.score == pytest.approx(0.9)
        assert box.reported
        found = np.asarray(box.box_ijk)
        true_ras = boxes_to_ras_mm(CUBOID[None], affine)[0]
        if spacing is None:  # the model grid is the scan grid, permuted: exact
            assert found.tolist() == pytest.approx(CUBOID.tolist(), abs=1e-3), name
            assert list(box.box_ras_mm) == pytest.approx(true_ras.tolist(), abs=1e-3), name
        else:  # resampled to 2 mm: the edges within one model voxel
            steps = np.sqrt((affine[:3, :3] ** 2).sum(0))
            assert np.all(np.abs(found - CUBOID) <= np.tile(2.0 / steps, 2) + 1e-6), name
            assert np.all(np.abs(np.asarray(box.box_ras_mm) - true_ras) <= 2.0 * 1.8), name
        centre = np.zeros(3)
        centre[:3] = (CUBOID[:3] + CUBOID[3:]) / 2 - 0.5
        expected_centre = affine[:3, :3] @ centre + affine[:3, 3]
        tolerance = 1e-3 if spacing is None else 2.0
        assert np.allclose(box.center_ras_mm, expected_centre, atol=tolerance), name
    again = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path / "scans"),
            "--model",
            str(model),
            "--out",
            str(out),
            "--no-report",
            "--resume",
        ],
    )
    assert again.exit_code == 0, again.output
    rows = (out / "summary.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all(",resumed," in row for row in rows)  # boxes are complete
