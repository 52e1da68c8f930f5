"""2D (and NIfTI) image/mask layouts: masks beside images, in a masks/ folder, in case_mask/.

Each layout is built in tmp_path with odd sizes (37x23 RGB images, grey masks) and found
the same way by discovery (:func:`medres.io.discover.discover`) and by training
(:func:`medres.training.datasets.find_training_cases`), both through
:mod:`medres.io.pairing`.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medres.cli.app import app
from medres.io.discover import discover
from medres.io.pairing import is_mask_folder
from medres.training.datasets import check_cases, find_training_cases
from tests.conftest import rgb_lesion_pipeline

SIZE = (37, 23)  # (width x, height y): odd and unequal, so a transposed mask fails
CFG_2D = rgb_lesion_pipeline("layouts2d", 16)
runner = CliRunner()


def _image(path: Path, *, seed: int = 0) -> Path:
    """An RGB noise image (many values: never taken for a mask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = SIZE
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _mask(path: Path) -> Path:
    """A grey 0/255 mask with a 4x3 lesion."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = SIZE
    mask = np.zeros((h, w), np.uint8)
    mask[5:8, 10:14] = 255
    Image.fromarray(mask).save(path)
    return path


def _pairs(root: Path) -> dict[str, str | None]:
    """Discovered scans as ``{image path: mask path}``, both relative to ``root``."""
    found = discover(root)
    return {
        str(Path(s.paths[0]).relative_to(root)): (
            str(Path(s.mask_path).relative_to(root)) if s.mask_path else None
        )
        for s in found.scans
    }


def _skipped(root: Path) -> dict[str, str]:
    return {str(Path(s.path).relative_to(root)): s.reason for s in discover(root).skipped}


@pytest.mark.parametrize(
    "masks",
    ["masks", "Masks", "labels", "label", "mask", "annotations", "GT", "ground_truth"],
    ids=lambda name: name,
)
def test_flat_images_and_masks_folders(tmp_path: Path, masks: str) -> None:
    for n, stem in enumerate(("pat1_3", "pat1_4", "pat2_1")):
        _image(tmp_path / "images" / f"{stem}.png", seed=n)
    _mask(tmp_path / masks / "pat1_3.png")
    _mask(tmp_path / masks / "pat1_4_mask.png")  # the mask suffix may stay on
    _mask(tmp_path / masks / "pat2_1.png")
    assert _pairs(tmp_path) == {
        "images/pat1_3.png": f"{masks}/pat1_3.png",
        "images/pat1_4.png": f"{masks}/pat1_4_mask.png",
        "images/pat2_1.png": f"{masks}/pat2_1.png",
    }
    assert _skipped(tmp_path) == {}
    cases = find_training_cases(tmp_path)
    # images/ is a role, not a patient: the group comes from the file name
    assert [(c.case_id, c.group, c.order) for c in cases] == [
        ("pat1_3", "pat1", 3),
        ("pat1_4", "pat1", 4),
        ("pat2_1", "pat2", 1),
    ]
    assert [c.label_path.relative_to(tmp_path).as_posix() for c in cases] == [
        f"{masks}/pat1_3.png",
        f"{masks}/pat1_4_mask.png",
        f"{masks}/pat2_1.png",
    ]
    check = check_cases(cases, CFG_2D)
    assert check.n_groups == 2 and check.label_voxels["lesion"] == 3 * 12


def test_nested_images_and_masks_pair_at_the_same_depth(tmp_path: Path) -> None:
    # both patients have an x.png: each mask pairs with its own patient's image
    for n, patient in enumerate(("a", "b")):
        _image(tmp_path / "data" / "images" / patient / "x.png", seed=n)
    _mask(tmp_path / "data" / "segmentations" / "a" / "x.png")
    _mask(tmp_path / "data" / "segmentations" / "b" / "x_mask.png")
    root = tmp_path / "data"
    assert _pairs(root) == {
        "images/a/x.png": "segmentations/a/x.png",
        "images/b/x.png": "segmentations/b/x_mask.png",
    }
    cases = find_training_cases(root)
    assert [(c.case_id, c.group) for c in cases] == [("a_x", "a"), ("b_x", "b")]
    assert check_cases(cases, CFG_2D).n_groups == 2


def test_case_image_and_case_mask_folders(tmp_path: Path) -> None:
    _image(tmp_path / "case1" / "case1_image" / "case1.bmp")
    _mask(tmp_path / "case1" / "case1_mask" / "case1_mask.bmp")
    _image(tmp_path / "case2" / "case2-image" / "x.bmp", seed=1)
    _mask(tmp_path / "case2" / "case2-Labels" / "x.bmp")
    assert _pairs(tmp_path) == {
        "case1/case1_image/case1.bmp": "case1/case1_mask/case1_mask.bmp",
        "case2/case2-image/x.bmp": "case2/case2-Labels/x.bmp",
    }
    cases = find_training_cases(tmp_path)
    assert [(c.case_id, c.group) for c in cases] == [("case1", "case1"), ("case2_x", "case2")]
    assert check_cases(cases, CFG_2D).n_groups == 2


def test_mask_beside_image_and_decathlon_still_pair(tmp_path: Path) -> None:
    _image(tmp_path / "flat" / "P1" / "s_2.png")
    _mask(tmp_path / "flat" / "P1" / "s_2_mask.png")
    assert _pairs(tmp_path / "flat") == {"P1/s_2.png": "P1/s_2_mask.png"}
    assert [c.group for c in find_training_cases(tmp_path / "flat")] == ["P1"]

    grid = np.diag([2.5, 0.8, 0.8, 1.0])
    for name in ("imagesTr/c1", "labelsTr/c1", "imagesTr/c2_0000", "labelsTr/c2"):
        path = tmp_path / "dec" / f"{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((17, 15, 9), np.int16), grid), str(path))
    assert _pairs(tmp_path / "dec") == {
        "imagesTr/c1.nii.gz": "labelsTr/c1.nii.gz",
        "imagesTr/c2_0000.nii.gz": "labelsTr/c2.nii.gz",
    }


def test_nifti_images_and_labels_folders(tmp_path: Path) -> None:
    for name in ("images/c1", "labels/c1"):
        path = tmp_path / f"{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((17, 15, 9), np.int16), np.eye(4)), str(path))
    assert _pairs(tmp_path) == {"images/c1.nii.gz": "labels/c1.nii.gz"}


def test_masks_with_no_image_or_several_are_skipped_with_the_reason(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "x.png")
    _image(tmp_path / "other" / "x.png", seed=1)  # a second x: the mask is ambiguous
    _mask(tmp_path / "masks" / "x.png")
    _mask(tmp_path / "masks" / "z.png")  # no image z
    _image(tmp_path / "images" / "y.png", seed=2)
    _mask(tmp_path / "images" / "y_mask.png")  # y's mask beside it ...
    _mask(tmp_path / "masks" / "y.png")  # ... and another one in masks/
    _mask(tmp_path / "loose_mask.png")  # the mask suffix, no image beside it
    assert _pairs(tmp_path) == {
        "images/x.png": None,
        "images/y.png": "images/y_mask.png",
        "other/x.png": None,
    }
    reasons = _skipped(tmp_path)
    assert reasons == {
        "loose_mask.png": "mask without an image named 'loose' beside it",
        "masks/x.png": (
            "mask with several images: 'x' is in more than one folder beside masks/ "
            "(images/x.png, other/x.png); the mask is not used (rename or move one)"
        ),
        "masks/y.png": (
            "second mask of y.png, which already has y_mask.png; the mask is not used "
            "(keep one mask per image)"
        ),
        "masks/z.png": (
            "mask without an image: no image named 'z' in a folder beside masks/ "
            "(looked in images/, other/)"
        ),
    }


def test_training_names_the_missing_mask_in_the_masks_folder(tmp_path: Path) -> None:
    from medres.errors import DatasetError

    _image(tmp_path / "images" / "w_1.png")
    _mask(tmp_path / "masks" / "w_1.png")
    _image(tmp_path / "images" / "x_1.png", seed=1)  # its mask is missing
    _mask(tmp_path / "masks" / "z_1.png")  # no image z_1: not a case
    cases = find_training_cases(tmp_path)
    assert [(c.case_id, c.label_path) for c in cases] == [
        ("w_1", tmp_path / "masks" / "w_1.png"),
        ("x_1", tmp_path / "masks" / "x_1.png"),
    ]
    with pytest.raises(DatasetError, match=r"masks/x_1.png: mask file is missing \(case x_1\)"):
        check_cases(cases, CFG_2D)


def test_a_mask_folder_searched_itself_lists_its_files_as_scans(tmp_path: Path) -> None:
    _mask(tmp_path / "masks" / "x.png")
    assert _pairs(tmp_path / "masks") == {"x.png": None}
    assert _pairs(tmp_path) == {}
    assert list(_skipped(tmp_path)) == ["masks/x.png"]


@pytest.mark.parametrize(
    ("name", "is_masks"),
    [
        ("masks", True),
        ("LABELS", True),
        ("case_masks", True),
        ("case-label", True),
        ("labelsTr", True),
        ("images", False),
        ("_mask", False),
        ("maskless", False),
        ("TCGA_CS_4941_19960909", False),
    ],
    ids=lambda v: str(v),
)
def test_mask_folder_names(name: str, is_masks: bool) -> None:
    assert is_mask_folder(name) is is_masks


def test_inspect_shows_the_mask_column_and_warns_of_a_mask_taken_as_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medres.cli.console import console

    _image(tmp_path / "images" / "x.png")
    _mask(tmp_path / "masks" / "x.png")
    _image(tmp_path / "images" / "y.png", seed=1)
    _mask(tmp_path / "stray" / "y.png")  # not a mask folder: taken as a scan
    monkeypatch.setattr(console, "_width", 250)  # one table row per line

    result = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["scan_id"]: r for r in json.loads(result.stdout)["scans"]}
    assert set(rows) == {"images_y", "stray_y", "x"}
    assert rows["x"]["mask"] == str(tmp_path / "masks" / "x.png")
    assert all(r["length_unit"] == "px" for r in rows.values())
    warning = (
        "holds only 0 and 255: this looks like a mask taken as a scan; name it y_mask.png "
        "beside its image, or put masks in a masks/ folder beside images/"
    )
    assert warning in rows["stray_y"]["warnings"]
    assert not any("looks like a mask" in w for w in rows["images_y"]["warnings"])
    assert not any("looks like a mask" in w for w in rows["x"]["warnings"])

    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "scan id" in line)
    columns = [cell.strip() for cell in header.split("┃")[1:-1]]
    assert columns == [
        "scan id", "kind", "mod", "shape", "spacing (mm)", "orient", "mask", "status"
    ]  # fmt: skip
    cells = {
        row[0]: dict(zip(columns, row, strict=True))
        for line in result.stdout.splitlines()
        if "image2d" in line and (row := [cell.strip() for cell in line.split("│")[1:-1]])
    }
    assert cells["x"]["mask"] == "../masks/x.png" and cells["x"]["spacing (mm)"] == "- (px)"
    assert cells["images_y"]["mask"] == "-" and cells["images_y"]["status"] == "ok"
    assert cells["stray_y"]["status"] == f"ok: {warning}"


def test_inspect_quick_and_nifti_keep_their_unit(tmp_path: Path) -> None:
    path = tmp_path / "c1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((17, 15, 9), np.int16), np.diag([2.5, 0.8, 0.8, 1])), path)
    _mask(tmp_path / "y.png")
    result = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    rows = {r["scan_id"]: r for r in json.loads(result.stdout)["scans"]}
    assert rows["c1"]["length_unit"] == "mm" and rows["c1"]["mask"] is None
    assert any("looks like a mask" in w for w in rows["y"]["warnings"])
    result = runner.invoke(app, ["inspect", str(tmp_path), "--json", "--quick"])
    rows = {r["scan_id"]: r for r in json.loads(result.stdout)["scans"]}
    assert rows["y"]["length_unit"] == "px"
    assert not any("looks like a mask" in w for w in rows["y"]["warnings"])  # no pixels read
