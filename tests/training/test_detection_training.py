"""Detection members: instance maps through augmentation, anchors from the boxes, box
datalists and their bad input, and a tiny detector trained and predicted end to end."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medres.cli.app import app
from medres.errors import ConfigError, DatasetError
from medres.models.folder import ModelFolder
from medres.pipeline import PipelineConfig, parse_pipeline
from medres.predictions.detections import DetectionsRecord
from medres.predictions.layout import ScanFolder
from medres.training.datasets import check_cases, read_datalist, with_voxel_boxes
from medres.training.detection import batch_targets, derive_anchor_shapes
from medres.training.run import train_pipeline
from medres.transforms.instances import INSTANCE_LABELS, instance_boxes, lesion_instances
from medres.transforms.presets import training_transforms, validation_transforms
from tests.conftest import SAMPLE_DATA

TINY_DET_3D = {
    "name": "tiny_ct_det",
    "task": "detection",
    "dims": 3,
    "channels": ["ct"],
    "labels": ["background", "lesion"],
    "lesion_labels": ["lesion"],
    "preprocessing": {
        "orientation": "RAS",
        "target_spacing_mm": [2.4, 2.4, 2.5],
        "intensity": {"kind": "ct_window", "window": [-160, 240]},
    },
    "augmentation": {"flip_axes": [0]},
    "model": {
        "name": "retinanet",
        "params": {"block_inplanes": [4, 8, 16, 32], "fpn_channels": 8},
    },
    "training": {
        "folds": 2,
        "epochs": 2,
        "iterations_per_epoch": 2,
        "batch_size": 2,
        "patch_size": [32, 32, 16],
    },
    "inference": {"overlap": 0.0, "tta": True},
}

TINY_DET_2D = {
    "name": "tiny_2d_det",
    "task": "detection",
    "dims": 2,
    "channels": ["grey"],
    "labels": ["background", "lesion"],
    "lesion_labels": ["lesion"],
    "preprocessing": {"intensity": {"kind": "none"}},
    "augmentation": {"flip_axes": [0, 1], "affine_prob": 0.0},
    "model": {"name": "retinanet", "params": {"block_inplanes": [4, 8, 16, 32]}},
    "training": {"folds": 2, "epochs": 1, "iterations_per_epoch": 1, "patch_size": [32, 32]},
}


def _cfg(data: dict, **changes: object) -> PipelineConfig:
    merged = yaml.safe_load(yaml.safe_dump(data))
    merged.update(changes)
    return parse_pipeline(merged)


def test_detection_pipelines_are_checked() -> None:
    cfg = _cfg(TINY_DET_3D)
    assert cfg.is_detection and cfg.detection is not None  # defaults filled in
    assert cfg.detection.anchor_shapes is None
    with pytest.raises(ConfigError, match="needs a detection model"):
        _cfg(TINY_DET_3D, model={"name": "res_unet"})
    segmentation = {k: v for k, v in TINY_DET_3D.items() if k != "task"}
    with pytest.raises(ConfigError, match="set task: detection"):
        _cfg(segmentation)
    with pytest.raises(ConfigError, match="anchor_shapes"):
        _cfg(TINY_DET_3D, detection={"anchor_shapes": [[8, 8]]})
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg(TINY_DET_3D, detection={"anchors": [[8, 8, 8]]})


def test_instance_boxes_follow_flips_and_crops() -> None:
    label = np.zeros((20, 12), np.uint8)
    label[2:5, 3:9] = 1  # lesion 1: x 2..4, y 3..8
    label[14:18, 1:3] = 1  # lesion 2
    ids, per_id = lesion_instances(label, lesion_indices=[1])
    boxes, labels = instance_boxes(ids, per_id)
    assert boxes.tolist() == [[2, 3, 5, 9], [14, 1, 18, 3]] and labels.tolist() == [1, 1]
    flipped, _ = instance_boxes(ids[::-1], per_id)  # mirrored along x: x -> 20 - x
    assert sorted(flipped.tolist()) == [[2, 1, 6, 3], [15, 3, 18, 9]]
    cropped, _ = instance_boxes(ids[3:16], per_id)  # both cut by the crop
    assert cropped.tolist() == [[0, 3, 2, 9], [11, 1, 13, 3]]


def test_targets_of_an_augmented_batch_are_the_lesions_left_in_each_patch(
    tmp_path: Path,
) -> None:
    cfg = _cfg(TINY_DET_3D)
    cases = read_datalist(SAMPLE_DATA / "ct_train" / "dataset.json")[:2]
    transform = training_transforms(cfg)
    transform.set_random_state(seed=3)
    import torch

    patches = [transform(c.record())[0] for c in cases]
    batch = {
        "label": torch.stack([torch.as_tensor(p["label"]) for p in patches]),
        INSTANCE_LABELS: torch.stack([torch.as_tensor(p[INSTANCE_LABELS]) for p in patches]),
    }
    targets = batch_targets(batch, cfg, device="cpu")
    for patch, target in zip(patches, targets, strict=True):
        ids = np.asarray(patch["label"])[0]
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            assert label == 0  # the detector's first (only) class
            low, high = np.floor(box[:3]).astype(int), np.ceil(box[3:]).astype(int)
            inside = ids[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
            assert (inside > 0).any()  # a box holds its lesion's voxels
        assert len(target["boxes"]) == len(np.unique(ids[ids > 0]))


def test_anchor_shapes_cover_the_training_boxes() -> None:
    edges = [[10.0, 10.0, 5.0]] * 5 + [[40.0, 40.0, 20.0]] * 5
    shapes = derive_anchor_shapes(edges, dims=3, n_levels=3)
    assert len(shapes) == 3
    # the anisotropy of the boxes (z half of x and y) is kept
    assert all(s[0] == pytest.approx(2 * s[2], rel=0.01) for s in shapes)
    largest = max(shapes[-1]) * 2 ** (3 - 1)
    assert min(shapes[0]) <= 10.0 * 0.8 and largest >= 40.0
    assert derive_anchor_shapes([], dims=2, n_levels=3)[0] == (8.0, 8.0)


def _box_dataset(tmp_path: Path, entries: list[dict], **top: object) -> Path:
    folder = tmp_path / "boxes"
    folder.mkdir(exist_ok=True)
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    for n in range(4):
        image = np.zeros((40, 36), np.float32)
        image[10 + n : 18 + n, 5:11] = 100.0
        nib.save(nib.Nifti1Image(image[..., None], affine), folder / f"img{n}.nii.gz")
    datalist = {**top, "training": entries}
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist))
    return path


def _entries(box_of: dict[int, list[float]] | None = None) -> list[dict]:
    box_of = box_of or {}
    return [
        {
            "image": f"img{n}.nii.gz",
            "box": [box_of.get(n, [10 + n, 5, 8, 6])],  # xywh
            "label": [0],
            "patient": f"p{n}",
        }
        for n in range(4)
    ]


def test_boxes_of_a_datalist_train_a_detector(tmp_path: Path) -> None:
    path = _box_dataset(tmp_path, _entries(), box_mode="xywh")
    cfg = _cfg(TINY_DET_2D)
    cases = read_datalist(path)
    check = check_cases(cases, cfg)
    assert len(check.lesion_cases) == 4
    converted = with_voxel_boxes(cases, cfg)
    assert converted[1].boxes is not None
    assert converted[1].boxes.boxes == ((11.0, 5.0, 19.0, 11.0),)  # xywh -> corners
    item = validation_transforms(cfg)(converted[1].record())
    boxes, _ = instance_boxes(np.asarray(item["label"])[0], item[INSTANCE_LABELS])
    assert boxes.tolist() == [[11, 5, 19, 11]]  # painted and read back, the same box
    run = train_pipeline(cfg, data=path, out=tmp_path / "model", folds=[0])
    assert run.members[0]["summary"]["val_metric"] == "cpm"
    saved = ModelFolder.open(tmp_path / "model").pipeline
    assert saved.detection is not None and saved.detection.anchor_shapes is not None


def test_world_boxes_in_lps_land_on_the_right_voxels(tmp_path: Path) -> None:
    # voxel corners x 11..19, y 5..11 on a 0.8 mm grid: x -> -(mm) in LPS
    lps = [-(11 - 0.5) * 0.8, -(5 - 0.5) * 0.8, -(19 - 0.5) * 0.8, -(11 - 0.5) * 0.8]
    world = [[lps[2], lps[3], lps[0], lps[1]]]
    entries = _entries()
    entries[1] |= {"box": world, "box_mode": "xyxy", "box_space": "lps_mm"}  # this entry's own
    path = _box_dataset(tmp_path, entries, box_mode="xywh")
    cfg = _cfg(TINY_DET_2D)
    cases = read_datalist(path)
    converted = with_voxel_boxes(cases, cfg)
    assert converted[1].boxes is not None
    assert np.allclose(converted[1].boxes.boxes[0], [11, 5, 19, 11], atol=1e-6)


@pytest.mark.parametrize(
    ("change", "top", "message"),
    [
        ({1: [30, 5, 20, 6]}, {"box_mode": "xywh"}, "case img1: box 1 .* outside the image"),
        ({2: [10, 5, -3, 6]}, {"box_mode": "xywh"}, "case img2: box 1 .* negative or zero"),
        ({}, {"box_mode": "xyhw"}, "case img0: unknown box_mode 'xyhw'"),
        ({}, {}, "unknown box_mode ''"),
        ({}, {"box_mode": "xywh", "box_space": "pixels"}, "unknown box_space 'pixels'"),
    ],
)
def test_bad_datalist_boxes_are_refused_before_training(
    tmp_path: Path, change: dict, top: dict, message: str
) -> None:
    path = _box_dataset(tmp_path, _entries(change), **top)
    with pytest.raises(DatasetError, match=message) as caught:
        train_pipeline(_cfg(TINY_DET_2D), data=path, out=tmp_path / "model")
    assert "datalist.json" in str(caught.value)
    assert not (tmp_path / "model").exists()  # nothing was trained or written


def test_an_unknown_class_and_boxes_for_a_segmentation_pipeline_are_refused(
    tmp_path: Path,
) -> None:
    entries = _entries()
    entries[3]["label"] = [2]
    path = _box_dataset(tmp_path, entries, box_mode="xywh")
    with pytest.raises(DatasetError, match="case img3: box class 2 is not a lesion class 0..0"):
        train_pipeline(_cfg(TINY_DET_2D), data=path, out=tmp_path / "model")
    segmentation = {k: v for k, v in TINY_DET_2D.items() if k != "task"}
    segmentation["model"] = {"name": "res_unet", "params": {"channels": [4, 8], "strides": [2]}}
    with pytest.raises(DatasetError, match="boxes train a detector"):
        train_pipeline(_cfg(segmentation), data=path, out=tmp_path / "seg")


def test_a_tiny_detector_trains_and_predicts_detections_json(tmp_path: Path) -> None:
    pipeline = tmp_path / "det.yaml"
    pipeline.write_text(yaml.safe_dump(TINY_DET_3D))
    model = tmp_path / "model"
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["train", str(pipeline), "--data", str(SAMPLE_DATA / "ct_train"), "--out", str(model)],
    )
    assert trained.exit_code == 0, trained.output
    assert "val CPM" in trained.output
    predicted = runner.invoke(
        app,
        [
            "predict",
            str(SAMPLE_DATA / "ct_phantom.nii.gz"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "pred"),
            "--members",
            "--no-report",
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    scan = ScanFolder(next(p for p in (tmp_path / "pred").iterdir() if p.is_dir()))
    record = DetectionsRecord.read(scan)
    assert record.members == ["tiny_ct_det/fold_0", "tiny_ct_det/fold_1"]
    assert record.tta_views == 2 and set(record.member_boxes) == set(record.members)
    shape = nib.load(SAMPLE_DATA / "ct_phantom.nii.gz").shape
    for box in record.boxes:
        assert all(0 <= v <= s for v, s in zip(box.box_ijk, shape * 2, strict=False))
        assert 0 < box.member_agreement <= 1
    scores = [b.score for b in record.boxes]
    assert scores == sorted(scores, reverse=True)
    assert not scan.seg.exists()  # a detector writes boxes, not masks
