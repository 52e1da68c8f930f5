"""NIfTI and 2D image reading: geometry kept, bad files reported by name."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
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


# --- hostile and damaged 2D images ---------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit grey pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("size", "pixels"),
    [((10000, 10000), "100,000,000"), ((20000, 20000), "400,000,000")],
    ids=["bomb-warning", "bomb-error"],
)
def test_decompression_bomb_ends_as_image_read_error_with_pixel_count(tmp_path, size, pixels):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(*size))
    with pytest.raises(
        ImageReadError,
        match=f"bomb.png: the image declares {pixels} pixels, above the decompression-bomb limit",
    ):
        read_image2d(path)


def test_declared_size_is_checked_against_the_budget_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDRES_MAX_MEMORY_GB", "0.01")
    path = tmp_path / "wide.png"
    path.write_bytes(png_declaring(5000, 5000))  # decoding would fail: almost no pixel data
    with pytest.raises(
        ImageReadError,
        match="wide.png: the 5000 x 5000 L image needs 0.0 GiB, above the 0.0 GiB memory budget",
    ):
        read_image2d(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncated_image_is_refused(tmp_path, fmt):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "full", fmt)
    data = (tmp_path / "full").read_bytes()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match=f"cut.{fmt.lower()}: image is truncated or corrupt"):
        read_image2d(path)


def test_truncated_image_is_refused_after_weasyprint_made_pillow_lenient(tmp_path):
    from PIL import ImageFile

    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "f.png")
    data = (tmp_path / "f.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # what importing weasyprint does
    try:
        with pytest.raises(ImageReadError, match="cut.png: image is truncated or corrupt"):
            read_image2d(tmp_path / "cut.png")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for the PDF library
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def test_non_finite_float_tiff_is_refused_with_count(tmp_path):
    values = np.ones((4, 5), np.float32)
    values[1, 1:4] = np.nan
    Image.fromarray(values).save(tmp_path / "float.tif")
    with pytest.raises(
        ImageReadError,
        match=r"float.tif: 3 of 20 pixel values \(15.0 %\) are NaN or infinite; .*nan_to_num",
    ):
        read_image2d(tmp_path / "float.tif")
    values[1, 1:4] = 2.5
    Image.fromarray(values).save(tmp_path / "float.tif")
    assert read_image2d(tmp_path / "float.tif").array.dtype == np.float32


def test_16_bit_grey_png_keeps_its_values(tmp_path):
    values = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    vol = read_image2d(tmp_path / "deep.png")
    assert np.array_equal(vol.array[0], values.T)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this platform")
def test_image_fifo_and_device_link_are_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(
        ImageReadError, match=r"pipe.png: image is a FIFO \(named pipe\), not a regular file"
    ):
        read_image2d(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(
        ImageReadError, match="zero.png: image is a character device, not a regular file"
    ):
        read_mask2d(tmp_path / "zero.png")


def _small_image_bytes(fmt: str) -> bytes:
    import io

    rng = np.random.default_rng(2)
    buffer = io.BytesIO()
    if fmt == "TIFF-F":
        Image.fromarray(rng.normal(size=(9, 11)).astype(np.float32)).save(buffer, "TIFF")
    else:
        Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


SMALL_IMAGES = {fmt: _small_image_bytes(fmt) for fmt in ("PNG", "JPEG", "BMP", "TIFF-F")}


@pytest.mark.parametrize("fmt", sorted(SMALL_IMAGES))
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_flipped_and_cut_image_bytes_give_volume_or_image_read_error(tmp_path, fmt, data):
    blob = bytearray(SMALL_IMAGES[fmt])
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=6)
    )
    for position, value in flips:
        blob[position] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    path = tmp_path / f"fuzz.{fmt.split('-')[0].lower()}"
    path.write_bytes(bytes(blob if cut is None else blob[:cut]))
    try:
        vol = read_image2d(path)
    except ImageReadError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        event("error: " + str(exc)[len(str(path)) + 2 :][:40])
        return
    event("ok")
    assert vol.array.ndim == 3 and vol.array.size > 0
    if vol.array.dtype.kind == "f":
        assert np.isfinite(vol.array).all()
