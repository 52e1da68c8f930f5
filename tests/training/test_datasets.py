"""Training data sets: the three layouts, patient-grouped folds, and checks before training."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medres.errors import DatasetError
from medres.pipeline import parse_pipeline
from medres.training.datasets import (
    check_cases,
    exclude_groups,
    find_training_cases,
    make_folds,
    split_to_json,
)
from tests.conftest import SAMPLE_DATA, rgb_lesion_pipeline, shared

CFG_2D = rgb_lesion_pipeline("t2d", 32)
CFG_3D = parse_pipeline(
    {
        "name": "t3d",
        "dims": 3,
        "channels": ["a", "b"],
        "labels": ["background", "tumour"],
        "lesion_labels": ["tumour"],
        "label_map": {2: 1},
        "model": {"name": "res_unet"},
        "training": {"patch_size": [16, 16, 8], "folds": 2},
    }
)


def _pair(
    folder: Path,
    stem: str,
    *,
    size: tuple[int, int] = (40, 30),
    lesion: bool = True,
    mask_size: tuple[int, int] | None = None,
    mask_value: int = 255,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.fromarray(np.full((h, w, 3), 80, np.uint8)).save(folder / f"{stem}.tif")
    mw, mh = mask_size or size
    mask = np.zeros((mh, mw), np.uint8)
    if lesion:
        mask[5:9, 10:14] = mask_value
    Image.fromarray(mask).save(folder / f"{stem}_mask.tif")


def _nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (2.5, 0.8, 0.8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def test_2d_pairs_grouped_by_patient_folder(tmp_path: Path) -> None:
    for patient in ("P_A", "P_B", "P_C"):
        for n in (10, 2, 1):
            _pair(tmp_path / patient, f"{patient}_2001_{n}", lesion=n == 2)
    cases = find_training_cases(tmp_path)
    assert [c.case_id for c in cases[:3]] == ["P_A_2001_1", "P_A_2001_2", "P_A_2001_10"]
    assert {c.group for c in cases} == {"P_A", "P_B", "P_C"}
    check = check_cases(cases, CFG_2D)
    assert check.n_cases == 9 and check.n_groups == 3
    assert check.lesion_cases == {"P_A_2001_2", "P_B_2001_2", "P_C_2001_2"}
    assert check.label_voxels["lesion"] == 3 * 16


def test_flat_2d_pairs_group_by_name_without_slice_number(tmp_path: Path) -> None:
    for stem in ("pat1_3", "pat1_4", "pat2_1"):
        _pair(tmp_path, stem)
    cases = find_training_cases(tmp_path)
    assert [(c.group, c.order) for c in cases] == [("pat1", 3), ("pat1", 4), ("pat2", 1)]


def test_decathlon_folder_with_channel_files(tmp_path: Path) -> None:
    shape = (17, 15, 9)
    for case in ("c1", "c2"):
        for channel in (0, 1):
            _nifti(
                tmp_path / "imagesTr" / f"{case}_{channel:04d}.nii.gz", np.ones(shape, np.float32)
            )
        label = np.zeros(shape, np.uint8)
        label[3:6, 4:7, 2:4] = 2  # mapped to 1 by label_map
        _nifti(tmp_path / "labelsTr" / f"{case}.nii.gz", label)
    cases = find_training_cases(tmp_path)
    assert [c.case_id for c in cases] == ["c1", "c2"]
    assert [p.name for p in cases[0].image_paths] == ["c1_0000.nii.gz", "c1_0001.nii.gz"]
    check = check_cases(cases, CFG_3D)
    assert check.label_voxels["tumour"] == 2 * 18


def test_datalist_relative_to_data_root(tmp_path: Path) -> None:
    shape = (17, 15, 9)
    data = tmp_path / "data"
    label = np.zeros(shape, np.uint8)
    label[1, 1, 1] = 1
    for case in ("a", "b"):
        _nifti(data / case / "x.nii.gz", np.zeros((*shape, 2), np.float32))
        _nifti(data / case / "y.nii.gz", label)
    datalist = tmp_path / "list.json"
    datalist.write_text(
        json.dumps(
            {
                "training": [
                    {"image": f"{c}/x.nii.gz", "label": f"{c}/y.nii.gz", "patient": "P" + c}
                    for c in ("a", "b")
                ],
                "test": [],
            }
        )
    )
    cases = find_training_cases(datalist, base_dir=data)
    assert [c.group for c in cases] == ["Pa", "Pb"]
    assert check_cases(cases, CFG_3D).n_cases == 2  # one 4D file gives both channels
    with pytest.raises(DatasetError, match=r"list.json: no list under 'validation'"):
        from medres.training.datasets import read_datalist

        read_datalist(datalist, key="validation")


def test_folds_split_patients_deterministically() -> None:
    cases = find_training_cases(SAMPLE_DATA / "ct_train")
    folds = make_folds(cases, n_folds=3, seed=0)
    assert folds == make_folds(cases, n_folds=3, seed=0)
    assert folds != make_folds(cases, n_folds=3, seed=1)
    val = [g for f in folds for g in f.val_groups]
    assert sorted(val) == sorted({c.group for c in cases})  # every patient validated once
    for fold in folds:
        assert not set(fold.train_groups) & set(fold.val_groups)
        assert len(fold.val_groups) == 2
    split = split_to_json(folds, cases, [])
    assert split["folds"][0]["val_cases"] == list(folds[0].val_groups)
    with pytest.raises(DatasetError, match=r"6 patient group\(s\) cannot be split into 7 folds"):
        make_folds(cases, n_folds=7, seed=0)


def test_bad_data_fails_before_training_with_file_names(tmp_path: Path) -> None:
    _pair(tmp_path / "P1", "P1_1")
    _pair(tmp_path / "P1", "P1_2", mask_size=(30, 40))
    _pair(tmp_path / "P2", "P2_1", mask_value=7)
    _pair(tmp_path / "P2", "P2_2")
    (tmp_path / "P2" / "P2_2_mask.tif").unlink()
    cases = find_training_cases(tmp_path)
    with pytest.raises(DatasetError) as info:
        check_cases(cases, CFG_2D)
    message = str(info.value)
    assert "3 problem(s) in the training data; nothing was trained" in message
    assert "P1_2_mask.tif: mask is (30, 40) but its image P1_2.tif is (40, 30)" in message
    assert "P2_1_mask.tif: label value(s) [7] are not in the pipeline" in message
    assert "P2_2_mask.tif: mask file is missing (case P2_2)" in message


def test_channel_count_and_empty_data(tmp_path: Path) -> None:
    _nifti(tmp_path / "imagesTr" / "c1.nii.gz", np.ones((17, 15, 9), np.float32))
    _nifti(tmp_path / "labelsTr" / "c1.nii.gz", np.ones((17, 15, 9), np.uint8))
    with pytest.raises(DatasetError, match=r"c1.nii.gz: 1 channel\(s\) but the pipeline expects 2"):
        check_cases(find_training_cases(tmp_path), CFG_3D)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"empty: empty data set: no labelled cases found"):
        find_training_cases(empty)
    with pytest.raises(DatasetError, match=r"missing: training data not found"):
        find_training_cases(tmp_path / "missing")
    with pytest.raises(DatasetError, match=r"excluded group\(s\) \['nobody'\] are not in"):
        exclude_groups(find_training_cases(tmp_path), ["nobody"])


def test_no_lesion_anywhere_is_refused(tmp_path: Path) -> None:
    _pair(tmp_path / "P1", "P1_1", lesion=False)
    with pytest.raises(DatasetError, match=r"no case contains any of the lesion labels"):
        check_cases(find_training_cases(tmp_path), CFG_2D)


@pytest.mark.real_data
def test_real_lgg_and_brats_data_sets() -> None:
    from medres.pipeline import load_pipeline
    from tests.conftest import REPO

    lgg = find_training_cases(shared("lgg_flair_2d"))
    assert len(lgg) == 501 and len({c.group for c in lgg}) == 18
    test_groups = [
        line
        for line in (REPO / "pipelines/lgg_flair_2d.test_patients.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    train = exclude_groups(lgg, test_groups)
    check = check_cases(train, load_pipeline(REPO / "pipelines/lgg_flair_2d.yaml"))
    assert check.n_groups == 12 and len(check.lesion_cases) > 50

    brats_cfg = load_pipeline(REPO / "pipelines/brats_wt_3d.yaml")
    brats = find_training_cases(
        REPO / "pipelines/datalists/brats_3d.json", base_dir=shared("brats_3d")
    )
    assert check_cases(brats, brats_cfg).n_cases == 4
    # without label_map, BraTS labels 2-4 are not labels of a 2-label pipeline
    strict = brats_cfg.model_copy(update={"label_map": {}})
    with pytest.raises(DatasetError, match=r"OTMultiClass.nii.gz: label value\(s\) \[2, 3, 4\]"):
        check_cases(brats[:1], strict)


def test_nifti_label_on_another_grid(tmp_path: Path) -> None:
    image = np.ones((17, 15, 9, 2), np.float32)
    _nifti(tmp_path / "imagesTr" / "c1.nii.gz", image)
    _nifti(tmp_path / "labelsTr" / "c1.nii.gz", np.ones((17, 15, 8), np.uint8))
    _nifti(tmp_path / "imagesTr" / "c2.nii.gz", image)
    _nifti(tmp_path / "labelsTr" / "c2.nii.gz", np.ones((17, 15, 9), np.uint8), spacing=(1, 1, 1))
    with pytest.raises(DatasetError) as info:
        check_cases(find_training_cases(tmp_path), CFG_3D)
    assert "labelsTr/c1.nii.gz: label shape (17, 15, 8) differs from its image (17, 15, 9)" in str(
        info.value
    )
    assert "labelsTr/c2.nii.gz: label affine differs from its image's" in str(info.value)
