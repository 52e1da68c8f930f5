"""Images without a pixel size are measured in pixels; 2D mask encodings read by rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medres.errors import ImageReadError
from medres.io.images2d import (
    check_pixel_size,
    looks_like_mask,
    read_image2d,
    read_mask2d,
    with_pixel_size,
)
from medres.io.units import area_unit, keys_in_mm, keys_in_unit, unit_key, volume_unit
from medres.predictions.records import GridRecord, MemberLesionsRecord


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_an_image_file_is_in_pixels_until_a_pixel_size_is_given(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (23, 37, 3), dtype=np.uint8)
    volume = read_image2d(_save(tmp_path / "photo.png", rgb))
    assert volume.length_unit == "px" and volume.spatial_shape == (37, 23)
    assert volume.channel_names == ("R", "G", "B") and volume.spacing_mm == (1.0, 1.0)
    measured = with_pixel_size(volume, (0.05, 0.08))
    assert measured.length_unit == "mm" and measured.spacing_mm == pytest.approx((0.05, 0.08))
    assert with_pixel_size(measured, (1.0, 1.0)) is measured  # a physical grid stays
    square = read_image2d(tmp_path / "photo.png", spacing_mm=(0.2, 0.2))
    assert square.length_unit == "mm" and square.spacing_mm == pytest.approx((0.2, 0.2))
    assert check_pixel_size((0.3,)) == (0.3, 0.3)
    for bad in ((0.0,), (-1.0, 1.0), (float("nan"),), (1.0, 2.0, 3.0), (500.0,)):
        with pytest.raises(ValueError, match="pixel size"):
            check_pixel_size(bad)


def test_measurement_names_follow_the_unit() -> None:
    data = {"area_mm2": 3.0, "hd95_mm": 2.0, "center_ras_mm": [1, 2, 0], "dice": 0.9}
    in_px = keys_in_unit(data, "px")
    assert in_px == {"area_px2": 3.0, "hd95_px": 2.0, "center_px": [1, 2, 0], "dice": 0.9}
    assert keys_in_mm(in_px) == data and keys_in_unit(data, "mm") == data
    assert unit_key("nsd_tolerance_mm", "px") == "nsd_tolerance_px"
    assert unit_key("true_diameter_mm", "px") == "true_diameter_px"
    assert (area_unit("px"), volume_unit("mm"), volume_unit("px")) == ("px²", "ml", "px³")
    with pytest.raises(ValueError, match="length unit"):
        unit_key("hd95_mm", "inch")


def test_a_pixel_record_round_trips_under_pixel_names() -> None:
    grid = GridRecord(
        shape=(37, 23),
        spacing_mm=(1.0, 1.0),
        orientation="",
        affine=np.eye(4).tolist(),
        length_unit="px",
    )
    assert grid.length_unit == "px"
    member = MemberLesionsRecord(member="m", n_lesions=0, lesions=[], length_unit="px")
    again = MemberLesionsRecord.model_validate(keys_in_unit(member.model_dump(), "px"))
    assert again == member
    old = GridRecord.model_validate(  # records of earlier versions have no unit: mm
        {"shape": [4, 4], "spacing_mm": [1, 1], "orientation": "RAS", "affine": np.eye(4).tolist()}
    )
    assert old.length_unit == "mm"


def test_binary_masks_need_no_label_map(tmp_path: Path) -> None:
    mask = np.zeros((23, 37), np.uint8)
    mask[5:12, 9:20] = 255
    read = read_mask2d(_save(tmp_path / "m255.png", mask)).array[0]
    assert read.dtype == np.uint8 and set(np.unique(read)) == {0, 1}
    assert int(read.sum()) == 7 * 11 and read[9, 5] == 1  # (x, y): column 9, row 5
    wide = _save(tmp_path / "m16.png", (mask.astype(np.uint16) * 257))
    assert set(np.unique(read_mask2d(wide).array)) == {0, 1}
    one_bit = Image.fromarray(mask > 0).convert("1")
    one_bit.save(tmp_path / "m1.png")
    assert int(read_mask2d(tmp_path / "m1.png").array.sum()) == 7 * 11
    labels = np.zeros((23, 37), np.uint8)
    labels[1:4, 1:4], labels[10:13, 10:13] = 1, 2  # a grey label map keeps its labels
    assert set(np.unique(read_mask2d(_save(tmp_path / "lab.png", labels)).array)) == {0, 1, 2}


def test_palette_masks_give_their_indices_not_their_colours(tmp_path: Path) -> None:
    indices = np.zeros((23, 37), np.uint8)
    indices[2:6, 3:9], indices[10:20, 20:30] = 1, 2
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.save(tmp_path / "palette.png")
    read = read_mask2d(tmp_path / "palette.png").array[0].T
    np.testing.assert_array_equal(read, indices)


def test_rgb_masks_must_be_grey(tmp_path: Path) -> None:
    grey = np.zeros((23, 37, 3), np.uint8)
    grey[4:9, 4:9] = 255
    assert int(read_mask2d(_save(tmp_path / "grey_rgb.png", grey)).array.sum()) == 25
    coloured = grey.copy()
    coloured[15:18, 15:18] = (255, 0, 0)
    with pytest.raises(ImageReadError, match=r"colour_rgb\.png: colour mask whose R, G and B"):
        read_mask2d(_save(tmp_path / "colour_rgb.png", coloured))
    too_big = np.zeros((23, 37), np.uint16)
    too_big[0, 0], too_big[1, 1] = 300, 7
    with pytest.raises(ImageReadError, match="labels must be 0..255"):
        read_mask2d(_save(tmp_path / "big.png", too_big))


def test_a_mask_taken_as_a_scan_is_recognised(tmp_path: Path) -> None:
    mask = np.zeros((23, 37), np.uint8)
    mask[3:7, 3:7] = 255
    assert looks_like_mask(read_image2d(_save(tmp_path / "x.png", mask)))
    photo = np.random.default_rng(1).integers(0, 255, (23, 37, 3), dtype=np.uint8)
    assert not looks_like_mask(read_image2d(_save(tmp_path / "y.png", photo)))


def test_detections_of_a_pixel_image_are_named_in_pixels(tmp_path: Path) -> None:
    from medres.predictions.detections import DetectionBox, DetectionsRecord
    from medres.predictions.layout import ScanFolder

    box = DetectionBox(
        box_id=1,
        label="lesion",
        score=0.9,
        box_ijk=(2.0, 3.0, 12.0, 9.0),
        box_ras_mm=(2.0, 3.0, 12.0, 9.0),
        center_ras_mm=(7.0, 6.0, 0.0),
        size_mm=(10.0, 6.0),
        members=["m/fold_0"],
        member_agreement=1.0,
        reported=True,
    )
    record = DetectionsRecord(
        scan_id="photo",
        pipelines=["p"],
        members=["m/fold_0"],
        tta_views=1,
        fusion_iou=0.4,
        score_threshold=0.05,
        report_score=0.5,
        n_reported=1,
        boxes=[box],
        length_unit="px",
    )
    folder = ScanFolder(tmp_path / "photo")
    folder.path.mkdir()
    record.write(folder)
    text = folder.detections_json.read_text()
    assert '"size_px"' in text and '"center_px"' in text and '"box_ras_px"' in text
    assert "_mm" not in text
    assert DetectionsRecord.read(folder) == record
