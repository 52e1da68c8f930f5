"""Transform presets: geometry is invertible, patches have the configured size, labels map."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medres.errors import DatasetError
from medres.pipeline import parse_pipeline
from medres.transforms.presets import (
    augmentation_transforms,
    map_labels,
    training_transforms,
    validation_transforms,
)
from tests.conftest import oblique_affine

BASE = {
    "name": "t",
    "dims": 3,
    "channels": ["ct"],
    "labels": ["background", "lesion"],
    "lesion_labels": ["lesion"],
    "label_map": {255: 1},
    "model": {"name": "res_unet"},
    "preprocessing": {
        "orientation": "RAS",
        "target_spacing_mm": [1.5, 1.5, 1.5],
        "intensity": {"kind": "ct_window", "window": [-100, 200]},
        "crop_foreground": True,
    },
    "training": {"patch_size": [16, 12, 8]},
}


def _scan(tmp_path: Path, affine: np.ndarray) -> dict[str, object]:
    shape = (17, 15, 9)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    image = np.where((x > 2) & (x < 15) & (y > 1), 50.0, 0.0).astype(np.float32)
    # off-centre, so a flipped or swapped axis would miss it
    label = (((x - 6) ** 2 + (y - 9) ** 2 + (z - 3) ** 2) <= 12).astype(np.uint8) * 255
    image[label > 0] = 150.0
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "lab.nii.gz"))
    return {"image": [str(tmp_path / "img.nii.gz")], "label": str(tmp_path / "lab.nii.gz")}


@pytest.mark.parametrize(
    "affine",
    [np.diag([2.5, 0.8, 0.8, 1.0]), oblique_affine((2.5, 0.8, 1.7))],
    ids=["anisotropic", "oblique"],
)
def test_preprocessing_resamples_and_inverts_to_the_input_grid(
    tmp_path: Path, affine: np.ndarray
) -> None:
    from monai.transforms import Invertd

    cfg = parse_pipeline(BASE)
    record = _scan(tmp_path, affine)
    prepare = validation_transforms(cfg)
    data = prepare(dict(record))
    image, label = data["image"], data["label"]
    spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, 1.5, atol=1e-4)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0  # CT window -> [0, 1]
    assert set(np.unique(np.asarray(label)).tolist()) <= {0, 1}  # 255 mapped to 1
    # invert the (label) prediction through crop, spacing and orientation
    pred = label.clone().float()
    back = Invertd(keys="pred", transform=prepare, orig_keys="label", nearest_interp=True)(
        {"label": label, "pred": pred}
    )["pred"]
    assert tuple(back.shape[1:]) == (17, 15, 9)
    np.testing.assert_allclose(np.asarray(back.affine), affine, atol=1e-4)
    original = np.asarray(nib.load(tmp_path / "lab.nii.gz").dataobj) > 0
    restored = np.asarray(back[0]) > 0.5
    dice = 2 * (original & restored).sum() / (original.sum() + restored.sum())
    assert dice > 0.75, dice


def test_training_patches_have_the_patch_size(tmp_path: Path) -> None:
    cfg = parse_pipeline(BASE)
    out = training_transforms(cfg)(dict(_scan(tmp_path, np.diag([2.5, 0.8, 0.8, 1.0]))))
    sample = out[0] if isinstance(out, list) else out
    assert tuple(sample["image"].shape) == (1, 16, 12, 8)
    assert tuple(sample["label"].shape) == (1, 16, 12, 8)
    assert set(np.unique(np.asarray(sample["label"])).tolist()) <= {0, 1}
    names = [type(t).__name__ for t in augmentation_transforms(cfg)]
    assert names[:2] == ["SpatialPadd", "RandCropByPosNegLabeld"]
    assert {"RandFlipd", "RandAffined", "RandGaussianNoised"} <= set(names)


def test_label_mapping() -> None:
    cfg = parse_pipeline(BASE)
    assert map_labels(np.array([[0, 255, 1]]), cfg, source="m").tolist() == [[0, 1, 1]]
    with pytest.raises(DatasetError, match=r"m: label value\(s\) \[3\] are not in the pipeline"):
        map_labels(np.array([0, 3]), cfg, source="m")
    with pytest.raises(DatasetError, match=r"m: label mask holds non-integer values"):
        map_labels(np.array([0.0, 0.5]), cfg, source="m")
    with pytest.raises(DatasetError, match=r"m: label mask holds negative values"):
        map_labels(np.array([0, -1]), cfg, source="m")


def test_cache_holds_the_preprocessed_scan(tmp_path: Path) -> None:
    """CacheDataset caches up to the first random step: the files are read once."""
    from monai.data import CacheDataset

    cfg = parse_pipeline(BASE)
    record = _scan(tmp_path, np.diag([2.5, 0.8, 0.8, 1.0]))
    dataset = CacheDataset([record], transform=training_transforms(cfg), progress=False)
    for path in (tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"):
        path.unlink()
    sample = dataset[0]
    sample = sample[0] if isinstance(sample, list) else sample
    assert tuple(sample["image"].shape) == (1, 16, 12, 8)  # served from the cache


BASE_2D = {
    "name": "t2d",
    "dims": 2,
    "channels": ["flair"],
    "labels": ["background", "lesion"],
    "lesion_labels": ["lesion"],
    "model": {"name": "res_unet"},
    "preprocessing": {"intensity": {"kind": "zscore"}},
    "training": {"patch_size": [16, 12]},
}


def _single_slice_case(tmp_path: Path, label_affine: np.ndarray) -> dict[str, object]:
    """A 2D image stored as an ``(x, y, 1)`` NIfTI with its label, also ``(x, y, 1)``."""
    affine = np.diag([0.8, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 25.0]
    shape = (17, 15, 1)
    x, y, _ = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    image = (x + 2.0 * y).astype(np.float32)
    label = ((x > 10) & (y < 5)).astype(np.uint8)  # off-centre: a swapped axis would miss it
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(label, label_affine(affine)), str(tmp_path / "lab.nii.gz"))
    return {"image": [str(tmp_path / "img.nii.gz")], "label": str(tmp_path / "lab.nii.gz")}


def test_single_slice_label_of_a_2d_image_is_squeezed_like_the_image(tmp_path: Path) -> None:
    """Bug: an ``(x, y, 1)`` NIfTI label of a 2D image ended in a raw ValueError."""
    record = _single_slice_case(tmp_path, lambda affine: affine)
    data = validation_transforms(parse_pipeline(BASE_2D))(dict(record))
    assert tuple(data["image"].shape) == (1, 17, 15)
    assert tuple(data["label"].shape) == (1, 17, 15)
    label = np.asarray(data["label"][0])
    assert label.sum() == 6 * 5 and label[11:, :5].all()


def test_single_slice_label_on_another_grid_names_the_file(tmp_path: Path) -> None:
    from medres.errors import MaskMismatchError
    from medres.transforms.presets import read_channels, read_label

    def shifted(affine: np.ndarray) -> np.ndarray:
        moved = affine.copy()
        moved[1, 3] += 0.5
        return moved

    record = _single_slice_case(tmp_path, shifted)
    image = read_channels(record["image"], dims=2)  # type: ignore[arg-type]
    with pytest.raises(MaskMismatchError, match=r"lab\.nii\.gz: label affine differs"):
        read_label(record["label"], image)  # type: ignore[arg-type]
