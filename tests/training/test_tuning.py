"""Temperature scaling and post-processing chosen from out-of-fold predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medres.inference.postprocess import remove_small_lesions
from medres.models.folder import ModelFolder
from medres.models.manifest import PostprocessingChoice
from medres.pipeline import parse_pipeline
from medres.training.tuning import OutOfFold, choose_postprocessing, fit_temperature
from tests.conftest import REPO

CFG = parse_pipeline(
    {
        "name": "discs",
        "dims": 2,
        "channels": ["grey"],
        "labels": ["background", "lesion"],
        "lesion_labels": ["lesion"],
        "model": {"name": "res_unet", "params": {"channels": [4, 8], "strides": [2]}},
        "training": {"folds": 2, "patch_size": [32, 32]},
        "postprocessing": {"min_lesion_size": 0},
    }
)


def test_the_fitted_temperature_is_the_one_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, (200_000, 2)).astype(np.float32)
    for true_t in (0.5, 2.0, 3.0):
        scaled = logits / true_t
        p1 = np.exp(scaled[:, 1]) / np.exp(scaled).sum(axis=1)
        labels = (rng.random(len(p1)) < p1).astype(np.int64)
        assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_max_lesions_keeps_the_largest() -> None:
    label_map = np.zeros((31, 17), np.uint8)
    label_map[1:4, 1:4] = 1  # 9 px
    label_map[10:20, 5:12] = 1  # 70 px
    label_map[25:30, 10:15] = 1  # 25 px
    one = remove_small_lesions(
        label_map, voxel_measure=1.0, min_size=0, lesion_indices=[1], max_lesions=1
    )
    assert int(one.sum()) == 70 and one[15, 8] == 1
    two = remove_small_lesions(
        label_map, voxel_measure=1.0, min_size=0, lesion_indices=[1], max_lesions=2
    )
    assert int(two.sum()) == 95
    sized = remove_small_lesions(label_map, voxel_measure=0.5, min_size=10, lesion_indices=[1])
    assert int(sized.sum()) == 95  # the 9 px lesion is 4.5 units: dropped
    with pytest.raises(ValueError, match="max_lesions"):
        remove_small_lesions(
            label_map, voxel_measure=1.0, min_size=0, lesion_indices=[1], max_lesions=0
        )


def _case(index: int, *, blobs: int, seed: int) -> OutOfFold:
    """One true disc, predicted well, plus small confident false blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:41, :37]
    truth = ((yy - 20) ** 2 + (xx - 18) ** 2 <= 64).astype(np.uint8)
    logit = np.where(truth > 0, 4.0, -4.0) + rng.normal(0, 0.5, truth.shape)
    for b in range(blobs):
        y, x = 3 + 4 * b, 3
        logit[y : y + 2, x : x + 2] = 5.0  # 4 px false positives
    logits = np.stack([np.zeros_like(logit), logit])[None].astype(np.float32)  # one view
    return OutOfFold(f"c{index}", f"p{index}", "fold_0", logits, truth, voxel_measure=1.0)


def test_small_false_lesions_choose_a_minimum_size_or_the_largest_only() -> None:
    cases = [_case(i, blobs=1 + i % 3, seed=i) for i in range(6)]
    configured, chosen, scores, top = choose_postprocessing(cases, {}, CFG)
    assert configured == PostprocessingChoice(threshold=0.5, min_lesion_size=0.0)
    assert chosen != configured
    assert chosen.max_lesions == 1 or 4 < chosen.min_lesion_size <= 200
    assert scores["f1_chosen"] == pytest.approx(1.0) and scores["f1_configured"] < 0.6
    assert scores["dice_chosen"] > scores["dice_configured"]
    assert top[0]["lesion_f1"] == pytest.approx(1.0) and len(top) == 10
    clean = [_case(i, blobs=0, seed=i) for i in range(4)]
    _, kept, _, _ = choose_postprocessing(clean, {}, CFG)
    assert kept.min_lesion_size == 0.0 and kept.max_lesions is None  # nothing to gain: kept


def test_a_stale_tuning_is_not_applied(tmp_path: Path) -> None:
    source = REPO / "models" / "demo_ct_3d"
    folder = ModelFolder.open(source)
    assert folder.tuned is None and folder.temperature(folder.members[0].name) == 1.0
    copy = tmp_path / "model"
    shutil.copytree(source, copy)
    manifest = json.loads((copy / "model.json").read_text())
    entry = {
        "weights_sha256": {m["name"]: m["weights_sha256"] for m in manifest["members"]},
        "temperatures": {m["name"]: 1.7 for m in manifest["members"]},
        "configured": {"threshold": 0.5, "min_lesion_size": 0.0},
        "chosen": {"threshold": 0.4, "min_lesion_size": 12.5, "max_lesions": 1},
        "n_cases": 3,
    }
    (copy / "model.json").write_text(json.dumps({**manifest, "cross_validation": entry}))
    tuned = ModelFolder.open(copy)
    name = tuned.members[0].name
    assert tuned.temperature(name) == 1.7 and tuned.pipeline.inference.threshold == 0.4
    assert tuned.pipeline.postprocessing.max_lesions == 1
    assert tuned.pipeline.postprocessing.min_lesion_size == 12.5
    entry["weights_sha256"][name] = "0" * 64  # as after retraining one member
    (copy / "model.json").write_text(json.dumps({**manifest, "cross_validation": entry}))
    stale = ModelFolder.open(copy)
    assert stale.tuned is None and stale.temperature(name) == 1.0
    assert stale.pipeline.inference.threshold == folder.pipeline.inference.threshold
    assert any("fitted for other weights" in note for note in stale.unverified)
    entry["temperatures"][name] = -1.0
    (copy / "model.json").write_text(json.dumps({**manifest, "cross_validation": entry}))
    with pytest.raises(Exception, match="temperatures"):
        ModelFolder.open(copy)
