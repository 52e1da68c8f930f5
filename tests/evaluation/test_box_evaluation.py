"""Box-level detection figures with known answers, and ``medres evaluate`` on a predict
folder with a detector (the oracle of test_detection_geometry) and a segmentation model."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medres.cli.app import app
from medres.evaluation.boxes import (
    BoxScoring,
    _case_arrays,
    average_precision,
    match_boxes,
    pooled_figures,
    truth_boxes,
)
from medres.evaluation.detection import cpm, froc
from medres.inference import detector as detector_module
from medres.predictions.detections import DetectionsRecord
from medres.predictions.layout import ScanFolder
from medres.predictions.records import ScanRecord
from medres.transforms.instances import lesion_instances
from tests.conftest import REPO, SAMPLE_DATA
from tests.inference.test_detection_geometry import _model_folder, _oracle

TRUTH = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
FOUND = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 31, 31], [0, 0, 3, 3]], dtype=float)
SCORES = np.array([0.9, 0.8, 0.7, 0.6])


def test_box_matches_ap_and_froc_by_hand() -> None:
    matches = match_boxes(FOUND, SCORES, TRUTH, iou_threshold=0.1)
    kinds = [(str(m.kind), m.predicted_id, m.truth_id) for m in matches]
    assert kinds == [("tp", 1, 1), ("fp", 2, None), ("tp", 3, 2), ("fp", 4, None)]
    assert matches[2].iou == pytest.approx(81 / 119)
    # precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1: AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision(matches) == pytest.approx(0.5 + 0.5 * 2 / 3)
    strict = match_boxes(FOUND, SCORES, TRUTH, iou_threshold=0.7)  # 0.68 no longer counts
    assert average_precision(strict) == pytest.approx(0.5)
    fps, sens, _ = froc(matches, 1)
    score, at = cpm(fps, sens)
    assert at == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert score == pytest.approx(5.5 / 7)
    missed = match_boxes(np.zeros((0, 4)), [], TRUTH)
    assert [str(m.kind) for m in missed] == ["fn", "fn"] and average_precision(missed) == 0.0


def test_the_bootstrap_figures_equal_the_reference_ones() -> None:
    rng = np.random.default_rng(0)
    cases, arrays = [], []
    for _ in range(5):
        truth = np.tile(rng.uniform(0, 80, (3, 2)), 2) + np.array([0.0, 0.0, 12.0, 12.0])
        found = np.concatenate([truth + rng.normal(0, 3, truth.shape), rng.uniform(0, 90, (4, 4))])
        found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 1)
        scores = np.round(rng.uniform(0, 1, len(found)), 1)  # ties on purpose
        matches = match_boxes(found, scores, truth)
        cases.append(matches)
        arrays.append(_case_arrays(matches))
    pooled = [m for c in cases for m in c]
    fps, sens, _ = froc(pooled, len(cases))
    score, at = cpm(fps, sens)
    assert pooled_figures(arrays) == pytest.approx([score, at[3], average_precision(pooled)])


def test_small_true_lesions_can_be_left_out_without_making_false_positives() -> None:
    truth = np.zeros((40, 40), np.uint8)
    truth[2:12, 2:12] = 1  # 100 mm^2
    truth[30:32, 30:32] = 1  # 4 mm^2, a speck
    found = [[2.0, 2.0, 12.0, 12.0], [30.0, 30.0, 32.0, 32.0]]
    for min_size, kinds in ((0.0, ["tp", "tp"]), (10.0, ["tp"])):
        scoring = BoxScoring(min_size=min_size)
        scoring._add("m", "lesion", "c", found, [0.9, 0.8], truth_boxes(truth, 1), 1.0)
        matches = scoring.models["m"]["lesion"].by_case["c"][0.1]
        assert [str(m.kind) for m in matches] == kinds  # the speck's box: neither TP nor FP


def test_instances_smaller_than_the_minimum_are_not_lesions_to_find() -> None:
    label = np.zeros((20, 20), np.uint8)
    label[1:6, 1:6] = 1
    label[15, 15] = 1
    ids, per_id = lesion_instances(label, lesion_indices=[1], min_voxels=4)
    assert int(ids.max()) == 1 and ids[15, 15] == 0 and per_id[1] == 1


def test_truth_boxes_and_sizes_from_a_mask() -> None:
    mask = np.zeros((12, 10, 6), np.uint8)
    mask[1:4, 2:5, 0:2] = 1
    mask[8:10, 7:9, 3:6] = 1
    boxes, counts = truth_boxes(mask, 1)
    assert boxes.tolist() == [[1, 2, 0, 4, 5, 2], [8, 7, 3, 10, 9, 6]]
    assert counts.tolist() == [18, 12]


def test_evaluate_scores_the_detector_beside_the_segmentation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detector_module, "detect", _oracle)
    detector = _model_folder(tmp_path, None)
    scans, truth = tmp_path / "scans", tmp_path / "truth"
    scans.mkdir()
    truth.mkdir()
    for n, name in enumerate(("phantom_001", "phantom_002")):
        image = nib.load(SAMPLE_DATA / "ct_train" / "imagesTr" / f"{name}.nii.gz")
        mask = nib.load(SAMPLE_DATA / "ct_train" / "labelsTr" / f"{name}.nii.gz")
        bright = np.asarray(mask.dataobj) > 0
        data = np.where(bright, 200, -1000).astype(np.int16)  # the oracle boxes what is bright
        if n == 1:
            data[:3, :3, :3] = 200  # a false positive in a corner (truth there is empty)
        nib.save(nib.Nifti1Image(data, image.affine), scans / f"{name}.nii.gz")
        nib.save(mask, truth / f"{name}.nii.gz")
    out = tmp_path / "pred"
    runner = CliRunner()
    predicted = runner.invoke(
        app,
        [
            "predict",
            str(scans),
            "--model",
            str(detector),
            "--model",
            str(REPO / "models" / "demo_ct_3d"),
            "--out",
            str(out),
            "--no-report",
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    record = ScanRecord.read(ScanFolder(out / "phantom_001"))
    lesions_001 = truth_boxes(np.asarray(nib.load(truth / "phantom_001.nii.gz").dataobj), 1)[0]
    assert record.n_detections == len(lesions_001) and record.n_lesions >= 1
    boxes = DetectionsRecord.read(ScanFolder(out / "phantom_001"))
    linked = [x for x in record.lesions if x.detection_score is not None]
    assert linked  # each linked lesion and its box name each other: which model said what
    by_id = {b.box_id: b for b in boxes.boxes}
    assert all(by_id[x.detection_box_id].lesion_id == x.lesion_id for x in linked)
    assert all(by_id[x.detection_box_id].score == x.detection_score for x in linked)
    evaluated = runner.invoke(app, ["evaluate", str(out), "--truth", str(truth)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "lesion boxes" in evaluated.output
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    figures = summary["boxes"]["results"]["lesion"]
    assert set(figures) >= {"detector", "segmentation"}
    truth_count = sum(
        len(truth_boxes(np.asarray(nib.load(p).dataobj), 1)[0]) for p in truth.iterdir()
    )
    oracle = figures["detector"]
    # the oracle boxes every true lesion exactly, plus the corner blob: one FP in 2 cases
    assert oracle["true_lesions"] == truth_count and oracle["predicted"] == truth_count + 1
    assert oracle["sensitivity_at_fp"]["0.5"] == 1.0 and oracle["ap_0.1"] > 0.7
    assert oracle["map_0.1_0.5"] == pytest.approx(oracle["ap_0.1"])  # exact boxes: IoU 1
    assert 0.0 <= figures["segmentation"]["cpm"] <= 1.0
    paired = summary["boxes"]["detector_minus_segmentation"]["lesion"]["cpm"]
    assert paired["value"] == pytest.approx(oracle["cpm"] - figures["segmentation"]["cpm"])
    assert paired["ci_low"] <= paired["value"] <= paired["ci_high"]
    assert "detector minus segmentation, CPM" in evaluated.output
    assert summary["results"]["lesion"]["ensemble"]["segmentation"]["dice"]["mean"] > 0.5
