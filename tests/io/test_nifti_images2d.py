"""NIfTI and 2D image reading: geometry kept, bad files reported by name."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from medres.errors import ImageReadError, MaskMismatchError, NiftiError
from medres.io.discover import discover
from medres.io.images2d import read_image2d, read_mask2d
from medres.io.load import load_mask, load_scan
from medres.io.nifti import read_nifti, write_nifti
from medres.io.volume import Volume
from tests.conftest import oblique_affine, random_volume


def test_nifti_roundtrip_keeps_array_and_oblique_affine(tmp_path):
    vol = random_volume((17, 15, 9), oblique_affine((2.5, 0.8, 0.8)))
    path = write_nifti(tmp_path / "x.nii.gz", vol)
    back = read_nifti(path)
    assert back.array.dtype == np.int16
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.affine, vol.affine, atol=1e-6)
    assert back.spacing_mm == pytest.approx((2.5, 0.8, 0.8))


def test_nifti_bytes_are_reproducible(tmp_path):
    vol = random_volume((5, 4, 3), np.eye(4))
    a = write_nifti(tmp_path / "a.nii.gz", vol).read_bytes()
    b = write_nifti(tmp_path / "b.nii.gz", vol).read_bytes()
    assert a == b


def test_4d_nifti_becomes_channels(tmp_path):
    data = np.arange(7 * 5 * 3 * 2, dtype=np.float32).reshape(7, 5, 3, 2)
    path = write_nifti(tmp_path / "two.nii", data, np.eye(4))
    vol = read_nifti(path)
    assert vol.array.shape == (2, 7, 5, 3)
    assert np.array_equal(vol.array[1], data[..., 1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage", "not a readable NIfTI file"),
        (None, "truncated or corrupt"),
    ],
    ids=["garbage", "truncated-gzip"],
)
def test_broken_nifti_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.nii.gz"
    if content is None:
        good = write_nifti(tmp_path / "good.nii.gz", random_volume((30, 30, 30), np.eye(4)))
        raw = gzip.decompress(good.read_bytes())
        path.write_bytes(gzip.compress(raw)[: len(raw) // 4])
    else:
        path.write_bytes(content)
    with pytest.raises(NiftiError, match=f"bad.nii.gz: .*{message}"):
        read_nifti(path)


def test_2d_image_axes_are_column_then_row(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (15, 17, 3), dtype=np.uint8)  # rows=15, cols=17
    Image.fromarray(rgb).save(tmp_path / "img.png")
    vol = read_image2d(tmp_path / "img.png")
    assert vol.array.shape == (3, 17, 15)
    assert vol.array[2, 16, 3] == rgb[3, 16, 2]  # array[c, x, y] == image[y, x, c]
    assert vol.channel_names == ("R", "G", "B")


def test_binary_mask_0_255_reads_as_labels_and_must_match_image(tmp_path):
    Image.fromarray(np.zeros((15, 17), np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((15, 17), np.uint8)
    mask[2:5, 3:9] = 255
    Image.fromarray(mask).save(tmp_path / "img_mask.png")
    Image.fromarray(np.zeros((16, 17), np.uint8)).save(tmp_path / "other_mask.png")
    image = read_image2d(tmp_path / "img.png")
    labels = read_mask2d(tmp_path / "img_mask.png", like=image)
    assert set(np.unique(labels.array).tolist()) == {0, 1}
    assert int(labels.array.sum()) == 18
    with pytest.raises(MaskMismatchError, match="other_mask.png: mask is 17x16 pixels"):
        read_mask2d(tmp_path / "other_mask.png", like=image)


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image2d(tmp_path / "broken.png")


def test_discovery_pairs_masks_by_suffix_and_reports_orphans(tmp_path):
    for name in ("a.png", "a_seg.png", "b.png", "c_seg.png"):
        Image.fromarray(np.zeros((6, 7), np.uint8)).save(tmp_path / name)
    found = discover(tmp_path, mask_suffix="_seg")
    by_id = {s.scan_id: s for s in found.scans}
    assert set(by_id) == {"a", "b"}
    assert by_id["a"].mask_path.endswith("a_seg.png")
    assert by_id["b"].mask_path is None
    assert any("c_seg.png" in s.path and "mask without an image" in s.reason for s in found.skipped)


def test_nifti_mask_on_another_grid_is_refused(tmp_path):
    vol = random_volume((6, 5, 4), np.diag([1.0, 1.0, 2.0, 1.0]))
    write_nifti(tmp_path / "case.nii.gz", vol)
    shifted = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted[0, 3] = 0.5
    write_nifti(tmp_path / "case_mask.nii.gz", Volume(np.zeros((1, 6, 5, 4), np.uint8), shifted))
    ref = discover(tmp_path).scans[0]
    image = load_scan(ref)
    with pytest.raises(MaskMismatchError, match="case_mask.nii.gz: mask affine differs"):
        load_mask(ref, image)
