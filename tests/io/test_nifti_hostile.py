"""Hostile and damaged NIfTI files: a sensible Volume or one NiftiError line naming the file.

One explicit test per finding of the NIfTI robustness review (dims, dim[0], pixdim, affine,
datatype, vox_offset, scaling, non-finite values, gzip bombs and truncation, non-regular
files), then property-based tests (hypothesis) that mutate the header of a tiny valid file,
flip and cut its bytes, and check that ``read_nifti`` never raises anything else.
"""

from __future__ import annotations

import gzip
import os
import re
import time
import tracemalloc
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from medres.errors import NiftiError
from medres.io.nifti import read_nifti
from medres.io.volume import Volume

SHAPE = (6, 5, 4)  # x, y, z: odd and anisotropic so axis mix-ups show
AFFINE = np.array(
    [[0.8, 0.0, 0.1, -20.0], [0.0, -0.9, 0.0, 15.0], [0.0, 0.05, 2.5, 7.5], [0.0, 0.0, 0.0, 1.0]]
)


def nifti_raw(
    data: np.ndarray | None = None,
    *,
    header: dict[str, Any] | None = None,
    nifti2: bool = False,
) -> bytes:
    """Bytes of a single-file NIfTI (sform and qform code 1), then header fields overwritten."""
    if data is None:
        data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = klass(data, AFFINE, dtype=data.dtype)
    img.set_sform(AFFINE, code=1)
    img.set_qform(AFFINE, code=1)
    raw = bytearray(img.to_bytes())
    if header:
        dtype = img.header.structarr.dtype
        record = np.frombuffer(bytes(raw[: dtype.itemsize]), dtype=dtype).copy()
        for name, value in header.items():
            record[0][name] = value
        raw[: dtype.itemsize] = record.tobytes()
    return bytes(raw)


def write(tmp_path: Path, name: str, raw: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw, mtime=0) if name.endswith(".gz") else raw)
    return path


def refused(path: Path, pattern: str) -> str:
    """read_nifti(path) raises one NiftiError line that names the file and matches pattern."""
    with pytest.raises(NiftiError, match=f"{re.escape(path.name)}: .*{pattern}") as info:
        read_nifti(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- findings: tracebacks ------------------------------------------------------------


def test_dims_claiming_30000_cubed_voxels_are_refused_before_allocating(tmp_path):
    path = write(
        tmp_path, "huge.nii", nifti_raw(header={"dim": [3, 30000, 30000, 30000, 1, 1, 1, 1]})
    )
    refused(path, r"30000 x 30000 x 30000 int16 = 2\.7e\+13 voxels, above .*MAX_VOXELS")


@pytest.mark.parametrize("n_dims", [0, 8, 9, -1], ids=["zero", "eight", "nine", "negative"])
def test_dim0_outside_1_to_7_is_refused(tmp_path, n_dims):
    path = write(tmp_path, "dims.nii", nifti_raw(header={"dim": [n_dims, 6, 5, 4, 1, 1, 1, 1]}))
    refused(path, rf"dim\[0\] is {n_dims}; NIfTI allows 1 to 7 axes")


@pytest.mark.parametrize("axis_size", [0, -3], ids=["zero", "negative"])
def test_empty_or_negative_axis_is_refused(tmp_path, axis_size):
    path = write(tmp_path, "axis.nii", nifti_raw(header={"dim": [3, 6, axis_size, 4, 1, 1, 1, 1]}))
    refused(path, rf"dim\[2\] is {axis_size}; every axis needs at least one voxel")


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_pixdim_of_the_qform_names_the_field(tmp_path, value):
    pixdim = [1.0, 0.8, value, 2.5, 1, 1, 1, 1]
    path = write(tmp_path, "q.nii", nifti_raw(header={"pixdim": pixdim, "sform_code": 0}))
    refused(path, rf"pixdim\[2\] \(voxel size along y\) is {value}; voxel sizes must be finite")


@pytest.mark.parametrize("field", ["srow_x", "srow_z"])
def test_nan_affine_is_refused(tmp_path, field):
    path = write(tmp_path, "nan.nii", nifti_raw(header={field: [np.nan, 0.0, 0.0, 1.0]}))
    refused(path, rf"sform field {field} is \[nan, 0\.0, 0\.0, 1\.0\], not finite")


def test_nan_qoffset_is_refused(tmp_path):
    path = write(tmp_path, "nanq.nii", nifti_raw(header={"sform_code": 0, "qoffset_y": np.nan}))
    refused(path, "qform field qoffset_y is nan, not finite")


def test_rgb24_becomes_three_channels(tmp_path):
    rgb_type = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    values = np.arange(np.prod(SHAPE) * 3, dtype=np.uint8).reshape(*SHAPE, 3)
    data = np.zeros(SHAPE, dtype=rgb_type)
    for k, name in enumerate("RGB"):
        data[name] = values[..., k]
    path = write(tmp_path, "rgb.nii.gz", nifti_raw(data))
    vol = read_nifti(path)
    assert vol.array.shape == (3, *SHAPE)
    assert vol.channel_names == ("R", "G", "B")
    assert np.array_equal(vol.array[1], values[..., 1])


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (1536, "float128 data .* save it as float32 or float64"),
        (32, r"complex64 data .* save the magnitude \(numpy\.abs\)"),
        (1792, "complex128 data"),
        (1, "1-bit data"),
        (0, r"datatype 0 \(DT_UNKNOWN\)"),
        (999, "unknown datatype code 999"),
        (-7, "unknown datatype code -7"),
    ],
    ids=["float128", "complex64", "complex128", "binary", "dt-unknown", "code-999", "negative"],
)
def test_unsupported_datatypes_are_refused_clearly(tmp_path, code, message):
    path = write(tmp_path, "dt.nii", nifti_raw(header={"datatype": code}))
    refused(path, message)


def test_complex64_written_by_nibabel_is_refused(tmp_path):
    data = (np.ones(SHAPE) + 1j * np.ones(SHAPE)).astype(np.complex64)
    path = write(tmp_path, "complex.nii", nifti_raw(data))
    refused(path, "complex64 data")


@pytest.mark.parametrize("offset", [-352.0, 0.0, 100.0], ids=["negative", "zero", "inside-header"])
def test_vox_offset_before_the_data_area_is_refused(tmp_path, offset):
    path = write(tmp_path, "off.nii", nifti_raw(header={"vox_offset": offset}))
    refused(path, f"vox_offset {int(offset)} points inside the 348-byte header")


@pytest.mark.parametrize("offset", [np.nan, 352.5, 1e30], ids=["nan", "fraction", "huge"])
def test_vox_offset_nan_fraction_or_huge_is_refused(tmp_path, offset):
    path = write(tmp_path, "off.nii", nifti_raw(header={"vox_offset": offset}))
    refused(path, "vox_offset")


@pytest.mark.parametrize("slope", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_scl_slope_means_no_scaling_with_a_warning(tmp_path, slope):
    path = write(tmp_path, "slope.nii", nifti_raw(header={"scl_slope": slope, "scl_inter": 5.0}))
    vol = read_nifti(path)
    assert vol.array.dtype == np.int16
    assert np.array_equal(vol.array[0], np.arange(120, dtype=np.int16).reshape(SHAPE))
    assert any(f"scl_slope is {slope}" in w and "no scaling" in w for w in vol.warnings)


def test_zero_scl_slope_means_no_scaling_silently(tmp_path):
    path = write(tmp_path, "slope0.nii", nifti_raw(header={"scl_slope": 0.0, "scl_inter": 5.0}))
    vol = read_nifti(path)
    assert vol.array.dtype == np.int16
    assert vol.warnings == ()


def test_non_finite_scl_inter_with_a_valid_slope_is_refused(tmp_path):
    path = write(tmp_path, "inter.nii", nifti_raw(header={"scl_slope": 2.0, "scl_inter": np.nan}))
    refused(path, "scl_inter is nan with scl_slope 2")


def test_scaling_keeps_float32_and_values(tmp_path):
    path = write(tmp_path, "scaled.nii.gz", nifti_raw(header={"scl_slope": 0.5, "scl_inter": -3}))
    vol = read_nifti(path)
    assert vol.array.dtype == np.float32
    assert np.allclose(vol.array[0], np.arange(120).reshape(SHAPE) * 0.5 - 3)


def test_scaling_that_overflows_float32_is_refused(tmp_path):
    path = write(tmp_path, "over.nii", nifti_raw(header={"scl_slope": 3e38}))
    refused(path, r"118 of 120 voxels \(98\.3 %\) are NaN or infinite after scaling")


# --- findings: hang and memory ---------------------------------------------------------


def gzip_of_zeros(n_mib: int) -> bytes:
    """A valid multi-member gzip stream of n_mib MiB of zeros, built in milliseconds."""
    return gzip.compress(bytes(1 << 20), mtime=0) * n_mib


def header_bytes(shape: tuple[int, ...], dtype: type = np.uint8) -> bytes:
    return nifti_raw(
        np.zeros((1, 1, 1), dtype), header={"dim": [len(shape), *shape] + [1] * (7 - len(shape))}
    )[:352]


def test_gzip_bomb_declaring_gigabytes_fails_fast_with_bounded_memory(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(header_bytes((1024, 1024, 2048)), mtime=0) + gzip_of_zeros(2048))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        refused(path, r"2\.0 GiB .* gzip bomb or a nearly constant image; .*gunzip")
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5.0
    assert peak < 16 << 20


def test_gzip_bomb_after_a_small_image_stops_after_the_slack(tmp_path):
    path = tmp_path / "tailbomb.nii.gz"
    raw = header_bytes((8, 8, 8)) + bytes(512)
    path.write_bytes(gzip.compress(raw, mtime=0) + gzip_of_zeros(200))
    tracemalloc.start()
    try:
        refused(path, "holds more than 65536 bytes after the 512 bytes of image data")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_gzip_declaring_more_than_deflate_can_hold_is_truncated(tmp_path):
    path = write(tmp_path, "short.nii.gz", header_bytes((512, 512, 300), np.int16))
    refused(path, "truncated or corrupt gzip stream: the header declares 150.0 MiB")


def test_declared_2000_cubed_is_refused(tmp_path):
    path = write(tmp_path, "cube.nii", header_bytes((2000, 2000, 2000), np.int16))
    refused(path, r"2000 x 2000 x 2000 int16 = 8e\+09 voxels, above")


def test_5000x5000x100_in_a_small_file_is_truncated(tmp_path):
    path = write(tmp_path, "wide.nii", header_bytes((5000, 5000, 100), np.int16))
    refused(
        path, r"truncated: the header declares 4\.7 GiB of image data \(5000 x 5000 x 100 int16\)"
    )


def test_4d_with_30000_volumes_is_refused(tmp_path):
    path = write(tmp_path, "fmri.nii.gz", header_bytes((64, 64, 30, 30000), np.int16))
    refused(path, "30000 channels .* above medres's limit of 64 .* split the series")


def test_declared_size_above_the_memory_budget_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDRES_MAX_MEMORY_GB", "0.002")
    data = np.zeros((64, 64, 300), np.int16)  # 2.3 MiB, budget 2.0 MiB
    path = write(tmp_path, "budget.nii", nifti_raw(data))
    refused(path, "needs 0.0 GiB, above the 0.0 GiB memory budget .*MEDRES_MAX_MEMORY_GB")


# --- findings: silent acceptance -------------------------------------------------------


@pytest.mark.parametrize(
    "value", [0.0, -0.8, 1e-30, 1e30], ids=["zero", "negative", "1e-30", "1e30"]
)
@pytest.mark.parametrize("sform_code", [0, 1], ids=["qform", "sform"])
def test_implausible_pixdim_is_refused_with_the_field(tmp_path, value, sform_code):
    pixdim = [1.0, 0.8, 0.9, value, 1, 1, 1, 1]
    path = write(
        tmp_path, "pix.nii", nifti_raw(header={"pixdim": pixdim, "sform_code": sform_code})
    )
    refused(path, rf"pixdim\[3\] \(voxel size along z\) is {re.escape(f'{value:g}')}")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[np.inf, 0, 0, 0]], "sform field srow_x is .*inf.*not finite"),
        ([[1e30, 0, 0, 0]], "voxel size of 1e\\+30 mm along x"),
        ([[1, 0, 0, 1e30]], "puts the first voxel 1e\\+30 mm from the origin"),
        ([[1e-30, 0, 0, 0]], "voxel size of 1e-30 mm along x"),
        ([[1, 1, 0, 0], [1, 1, 0, 0]], "degenerate .* two voxel axes are \\(nearly\\) parallel"),
    ],
    ids=["inf", "1e30-scale", "1e30-origin", "1e-30-scale", "parallel-axes"],
)
def test_implausible_sform_is_refused(tmp_path, rows, message):
    header = {
        "srow_x": rows[0],
        "srow_y": rows[1] if len(rows) > 1 else [0, 1, 0, 0],
        "srow_z": [0, 0, 2.5, 0],
    }
    path = write(tmp_path, "aff.nii", nifti_raw(header=header))
    refused(path, message)


def test_quaternion_longer_than_one_is_refused(tmp_path):
    header = {"sform_code": 0, "quatern_b": 0.9, "quatern_c": 0.9, "quatern_d": 0.0}
    path = write(tmp_path, "quat.nii", nifti_raw(header=header))
    refused(path, r"b²\+c²\+d² = 1\.62 > 1, not a rotation")


def test_qfac_zero_is_read_as_one_with_a_warning(tmp_path):
    path = write(
        tmp_path,
        "qfac.nii",
        nifti_raw(header={"sform_code": 0, "pixdim": [0, 0.8, 0.9, 2.5, 1, 1, 1, 1]}),
    )
    vol = read_nifti(path)
    assert np.linalg.det(vol.affine[:3, :3]) != 0
    assert any("qfac" in w for w in vol.warnings)


def test_no_orientation_codes_warn(tmp_path):
    path = write(tmp_path, "codes.nii", nifti_raw(header={"sform_code": 0, "qform_code": 0}))
    vol = read_nifti(path)
    assert np.allclose(vol.affine, nib.load(path).affine)
    assert any("stores no orientation" in w for w in vol.warnings)


def test_complex_data_is_refused_not_accepted(tmp_path):
    data = np.zeros(SHAPE, np.complex64)
    path = write(tmp_path, "cplx.nii.gz", nifti_raw(data))
    refused(path, "complex64 data .* medres needs real intensities")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_all_non_finite_image_is_refused(tmp_path, value):
    path = write(tmp_path, "allbad.nii", nifti_raw(np.full(SHAPE, value, np.float32)))
    refused(path, r"120 of 120 voxels \(100\.0 %\) are NaN or infinite; medres needs finite")


def test_block_of_nan_in_the_body_is_refused_with_count_and_fraction(tmp_path):
    data = np.ones((48, 48, 48), np.float32)
    data[10:26, 20:36, 5:21] = np.nan
    path = write(tmp_path, "holes.nii.gz", nifti_raw(data))
    refused(path, r"4096 of 110592 voxels \(3\.7 %\) are NaN or infinite; .*numpy\.nan_to_num")


def test_float64_beyond_float32_range_is_refused(tmp_path):
    data = np.ones(SHAPE, np.float64)
    data[0, 0, 0] = 1e300
    path = write(tmp_path, "f64.nii", nifti_raw(data))
    refused(path, r"1 of 120 voxels \(0\.8 %\) .*beyond the float32 range")


def gz_of_sample(tmp_path: Path) -> bytes:
    raw = nifti_raw(np.arange(30 * 30 * 30, dtype=np.int16).reshape(30, 30, 30))
    return gzip.compress(raw, mtime=0)


@pytest.mark.parametrize(
    "damage",
    ["last-byte-missing", "bad-crc", "bad-length", "half", "no-end-marker"],
)
def test_damaged_gzip_stream_is_truncated_or_corrupt(tmp_path, damage):
    blob = bytearray(gz_of_sample(tmp_path))
    if damage == "last-byte-missing":
        blob = blob[:-1]
    elif damage == "bad-crc":
        blob[-8] ^= 0xFF
    elif damage == "bad-length":
        blob[-2] ^= 0x01
    elif damage == "half":
        blob = blob[: len(blob) // 2]
    else:
        blob = blob[:-8]
    path = tmp_path / "damaged.nii.gz"
    path.write_bytes(bytes(blob))
    refused(path, "truncated")


def test_truncated_plain_nii_is_refused(tmp_path):
    path = tmp_path / "cut.nii"
    path.write_bytes(nifti_raw()[:-10])
    refused(path, r"truncated: the header declares 240 bytes of image data \(6 x 5 x 4 int16\)")


# --- files that are not regular files --------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.nii.gz"
    os.mkfifo(path)
    refused(path, r"a FIFO \(named pipe\), not a regular file")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_link_to_dev_zero_is_refused(tmp_path):
    path = tmp_path / "zero.nii"
    path.symlink_to("/dev/zero")
    refused(path, "a character device, not a regular file")


def test_directory_and_missing_file_are_refused(tmp_path):
    (tmp_path / "dir.nii").mkdir()
    refused(tmp_path / "dir.nii", "a directory, not a regular file")
    refused(tmp_path / "missing.nii", "file not found")


# --- valid but unusual files -----------------------------------------------------------


def test_big_endian_header_and_data(tmp_path):
    data = np.arange(120, dtype=">i2").reshape(SHAPE)
    hdr = nib.Nifti1Header(endianness=">")
    hdr.set_data_dtype(np.int16)
    img = nib.Nifti1Image(data, AFFINE, header=hdr)
    img.set_sform(AFFINE, code=1)
    path = tmp_path / "be.nii"
    path.write_bytes(img.to_bytes())
    assert img.header.endianness == ">"
    vol = read_nifti(path)
    assert vol.array.dtype == np.dtype("=i2")
    assert np.array_equal(vol.array[0], data)


def test_nifti2_and_extensions_and_trailing_bytes(tmp_path):
    img = nib.Nifti2Image(np.arange(120, dtype=np.int16).reshape(SHAPE), AFFINE)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"hello medres" * 10))
    path = tmp_path / "n2.nii"
    path.write_bytes(img.to_bytes() + b"\x00" * 7)
    vol = read_nifti(path)
    assert np.array_equal(vol.array[0], np.arange(120).reshape(SHAPE))
    assert np.allclose(vol.affine, AFFINE)
    assert vol.warnings == ("7 bytes after the image data were ignored",)


def test_bitpix_mismatch_uses_the_datatype_with_a_warning(tmp_path):
    vol = read_nifti(write(tmp_path, "bitpix.nii", nifti_raw(header={"bitpix": 8})))
    assert vol.array.dtype == np.int16
    assert vol.warnings == ("bitpix is 8 but datatype int16 has 16 bits; used the datatype",)


def test_header_of_a_pair_is_refused(tmp_path):
    path = write(tmp_path, "pair.nii", nifti_raw(header={"magic": b"ni1"}))
    refused(path, r"header of a \.hdr/\.img pair")


def test_2d_nifti_keeps_a_unit_slice_axis(tmp_path):
    path = write(tmp_path, "flat.nii", nifti_raw(np.arange(30, dtype=np.uint8).reshape(6, 5)))
    vol = read_nifti(path)
    assert vol.array.shape == (1, 6, 5, 1)


@pytest.mark.parametrize(
    "chunk_bytes", [64, 20, 6, 1 << 20], ids=["slices", "rows", "part-rows", "one-chunk"]
)
@pytest.mark.parametrize(
    "data",
    [
        np.arange(6 * 5 * 4, dtype=np.int16).reshape(SHAPE),
        np.linspace(-1, 1, 6 * 5 * 4 * 3, dtype=np.float64).reshape(*SHAPE, 3),
        np.arange(6 * 5 * 4 * 2 * 3, dtype=np.uint16).reshape(*SHAPE, 2, 3),
    ],
    ids=["3d-int16", "4d-float64", "5d-uint16"],
)
def test_chunked_reading_matches_nibabel(tmp_path, monkeypatch, chunk_bytes, data):
    monkeypatch.setattr("medres.io.nifti._CHUNK_BYTES", chunk_bytes)
    path = write(tmp_path, "chunks.nii.gz", nifti_raw(data))
    vol = read_nifti(path)
    expected = np.asanyarray(nib.load(path).dataobj)
    if expected.ndim == 5:
        expected = expected.reshape(*expected.shape[:3], -1)
    expected = np.moveaxis(expected, 3, 0) if expected.ndim == 4 else expected[None]
    assert vol.array.flags.c_contiguous
    assert vol.array.dtype == (np.float32 if data.dtype == np.float64 else data.dtype)
    assert np.array_equal(vol.array, expected.astype(vol.array.dtype))


def test_sample_phantom_reads_as_nibabel_does():
    path = Path(__file__).resolve().parents[2] / "sample_data" / "ct_phantom.nii.gz"
    if not path.is_file():
        pytest.skip("sample_data/ct_phantom.nii.gz missing")
    vol, img = read_nifti(path), nib.load(path)
    assert vol.array.dtype == np.int16 and vol.warnings == ()
    assert np.array_equal(vol.array[0], np.asanyarray(img.dataobj))
    assert np.allclose(vol.affine, img.affine)


# --- property-based: mutated headers, flipped and cut bytes ---------------------------


def check_sensible(path: Path) -> Volume | None:
    """read_nifti gives a finite, non-degenerate Volume or one NiftiError naming the file."""
    try:
        vol = read_nifti(path)
    except NiftiError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ")
        assert "\n" not in message
        text = re.sub(r"0x[0-9a-f]+|b'[^']*'|\(.*?\)", "#", message[len(str(path)) + 2 :])
        event("error: " + re.sub(r"-?\d[\d.e+-]*|\[.*?\]", "#", text)[:60])
        return None
    event("ok")
    assert vol.array.ndim == 4
    if vol.array.dtype.kind == "f":
        assert np.isfinite(vol.array).all()
    assert np.isfinite(vol.affine).all()
    assert abs(np.linalg.det(vol.affine[:3, :3])) > 0
    return vol


FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
INT16 = st.integers(-(2**15), 2**15 - 1)
SMALL_DIM = st.one_of(st.integers(-2, 12), st.sampled_from([0, 1, 2, 255, 30000, 32767, -32768]))
DATATYPES = st.one_of(
    st.sampled_from(
        [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304]
    ),
    INT16,
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "dim": st.lists(SMALL_DIM, min_size=8, max_size=8),
    "pixdim": st.lists(
        st.one_of(FLOAT32, st.sampled_from([0.0, -1.0, 1e-30, 1e30, 0.8])), min_size=8, max_size=8
    ),
    "datatype": DATATYPES,
    "bitpix": INT16,
    "vox_offset": st.one_of(FLOAT32, st.sampled_from([0.0, -352.0, 348.0, 352.0, 356.0, 1e9])),
    "scl_slope": st.one_of(FLOAT32, st.sampled_from([0.0, 1.0, 3e38])),
    "scl_inter": FLOAT32,
    "qform_code": st.integers(-3, 9),
    "sform_code": st.integers(-3, 9),
    "quatern_b": FLOAT32,
    "quatern_c": FLOAT32,
    "quatern_d": FLOAT32,
    "qoffset_x": FLOAT32,
    "srow_x": st.lists(FLOAT32, min_size=4, max_size=4),
    "srow_z": st.lists(FLOAT32, min_size=4, max_size=4),
    "xyzt_units": st.integers(0, 255),
}
MUTATIONS = st.dictionaries(
    st.sampled_from(sorted(FIELD_VALUES)), st.none(), min_size=1, max_size=4
).flatmap(lambda keys: st.fixed_dictionaries({k: FIELD_VALUES[k] for k in keys}))
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@FUZZ
@given(mutations=MUTATIONS)
def test_mutated_header_gives_volume_or_nifti_error(tmp_path, suffix, mutations):
    float_data = np.linspace(-5, 5, 120, dtype=np.float32).reshape(SHAPE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDRES_MAX_MEMORY_GB", "0.25")
        for data in (None, float_data):
            with np.errstate(all="ignore"):
                raw = nifti_raw(data, header=mutations)
            check_sensible(write(tmp_path, "mutant" + suffix, raw))


BASE_RAW = nifti_raw(np.linspace(-5, 5, 120, dtype=np.float32).reshape(SHAPE))
BASE_GZ = gzip.compress(BASE_RAW, mtime=0)


@pytest.mark.parametrize("compressed", [False, True], ids=["nii", "nii.gz"])
@FUZZ
@given(data=st.data())
def test_flipped_and_cut_bytes_give_volume_or_nifti_error(tmp_path, compressed, data):
    blob = bytearray(BASE_GZ if compressed else BASE_RAW)
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=6)
    )
    for position, value in flips:
        blob[position] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    if cut is not None:
        blob = blob[:cut]
    path = tmp_path / ("flipped.nii.gz" if compressed else "flipped.nii")
    path.write_bytes(bytes(blob))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDRES_MAX_MEMORY_GB", "0.25")
        check_sensible(path)


def test_big_endian_float_with_scaling(tmp_path):
    hdr = nib.Nifti1Header(endianness=">")
    hdr.set_data_dtype(np.float32)
    img = nib.Nifti1Image(
        np.linspace(0, 1, 120, dtype=np.float32).reshape(SHAPE), AFFINE, header=hdr
    )
    img.header.set_slope_inter(2.0, 1.0)
    path = write(tmp_path, "bef.nii.gz", img.to_bytes())
    assert np.allclose(read_nifti(path).array[0], np.asanyarray(nib.load(path).dataobj))
