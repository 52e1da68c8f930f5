"""Hostile and damaged DICOM input: every case ends as a sensible result or one LoadError.

Explicit cases, one per finding of the mutation tester (isolation of lazily failing
headers, FIFOs and devices, declared sizes, corrupt values, duplicates, blame), then
property-based tests: random header mutations and random byte damage of a small synthetic
series must never make :func:`discover` raise, and :func:`load_scan` must return a
:class:`Volume` or raise a :class:`LoadError` whose one-line message names the file or the
series folder, within the memory budget.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import UID, ImplicitVRLittleEndian

from medres.errors import (
    CorruptFileError,
    DuplicateSlicesError,
    LoadError,
    MedresError,
    PixelDecodeError,
    SliceGapError,
    UnsupportedDicomError,
)
from medres.io.dicom import (
    PIXEL_SPACING_ASSUMED,
    decode_pixels,
    load_dicom_series,
    read_dataset,
)
from medres.io.dicom_write import DicomSeriesInfo, write_dicom_series
from medres.io.discover import DiscoveryResult, discover
from medres.io.load import load_scan
from medres.io.volume import Volume
from tests.conftest import random_volume

SHAPE = (7, 5, 6)  # x = columns, y = rows, z = slices: odd and anisotropic
AFFINE = np.diag([-0.8, -0.6, 2.5, 1.0])


def _series(root: Path, *, name: str = "series", n_slices: int = SHAPE[2]) -> list[Path]:
    vol = random_volume((SHAPE[0], SHAPE[1], n_slices), AFFINE, seed=4)
    info = DicomSeriesInfo(series_description="hostile", rescale_intercept=-1024.0)
    return write_dicom_series(vol, root / name, info)


def _put_raw(path: Path, keyword: str | int, vr: str, value: bytes) -> None:
    """Write one element's bytes exactly as given (any VR, any value), bypassing pydicom checks."""
    ds = pydicom.dcmread(path)
    tag = Tag(keyword)
    if len(value) % 2:
        value += b"\x00" if vr in ("OB", "OW", "UN", "US", "SS", "UI") else b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    ds.save_as(path)


def _set_transfer_syntax(path: Path, uid: bytes) -> None:
    """Rewrite only the file meta with another TransferSyntaxUID (the data set bytes stay)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    raw = path.read_bytes()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")  # (0002,0000) group length
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = uid.decode("latin-1")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=False)
    path.write_bytes(raw[:132] + buffer.getvalue() + raw[meta_end:])


def _edit(path: Path, change: Callable[[Any], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _delete(keyword: str) -> Callable[[Any], None]:
    def change(ds: Any) -> None:
        if keyword in ds:
            del ds[keyword]

    return change


def _failed(found: DiscoveryResult) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in found.failed}


def _bounded(function: Callable[[], Any], *, seconds: float = 30.0) -> Any:
    """Run ``function`` in a thread; fail (instead of hanging the suite) if it does not end."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = function()
        except BaseException as exc:  # re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s (hang)"
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- finding 1: one bad file never takes down the batch ---------------------------------


@pytest.mark.parametrize("vr", ["ES", "UM", "DO"], ids=["ES", "UM", "DO"])
def test_unknown_vr_read_lazily_is_that_files_failure_only(tmp_path, vr):
    paths = _series(tmp_path)
    _put_raw(paths[2], "RescaleIntercept", vr, b"-1024")
    found = discover(tmp_path)
    failed = _failed(found)
    assert set(failed) == {"IM0003"}
    assert str(paths[2]) in failed["IM0003"]
    assert re.search(
        rf"RescaleIntercept cannot be read .*Unknown Value Representation '{vr}'", failed["IM0003"]
    )
    assert len(found.scans) == 1  # the other five slices are still one scan


def test_unknown_vr_in_a_field_medres_only_describes_is_isolated_too(tmp_path):
    paths = _series(tmp_path, n_slices=2)
    _put_raw(paths[0], "SeriesDescription", "UM", b"hostile")
    found = discover(tmp_path)
    assert re.search(
        r"IM0001: damaged DICOM header: NotImplementedError: Unknown Value Representation 'UM'",
        _failed(found)["IM0001"],
    )


def test_any_exception_while_decoding_becomes_a_load_error_naming_the_file(tmp_path, monkeypatch):
    paths = _series(tmp_path, n_slices=2)
    (ref,) = discover(tmp_path).scans

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr("medres.io.dicom.pixels._native_monochrome", explode)
    with pytest.raises(
        PixelDecodeError,
        match=rf"{re.escape(str(paths[0]))}: cannot decode pixel data: RuntimeError: decoder exploded",
    ):
        load_scan(ref)


# --- finding 2: FIFOs, devices, links: never opened ----------------------------------


def test_fifo_device_socket_and_broken_links_are_skipped_without_being_opened(tmp_path):
    _series(tmp_path, n_slices=3)
    folder = tmp_path / "series"
    os.mkfifo(folder / "IM0099")
    os.symlink("/dev/zero", folder / "zero.dcm")
    os.symlink(folder / "nothing-here", folder / "IM0098")
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # AF_UNIX paths: ~100 bytes
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(os.path.join(short, "s"))
            os.symlink(os.path.join(short, "s"), folder / "IM0097")
            found = _bounded(lambda: discover(tmp_path))
        finally:
            sock.close()
    reasons = {Path(s.path).name: s.reason for s in found.skipped}
    assert reasons["IM0099"] == "not a regular file (FIFO)"
    assert reasons["zero.dcm"] == "not a regular file (character device)"
    assert reasons["IM0098"].startswith("broken link")
    assert reasons["IM0097"] == "not a regular file (socket)"
    assert [len(s.paths) for s in found.scans] == [3]
    assert found.scans[0].problem is None


def test_a_fifo_given_as_root_or_file_is_refused_not_read(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    found = _bounded(lambda: discover(fifo))
    assert [s.reason for s in found.skipped] == ["not a regular file (FIFO)"]
    with pytest.raises(LoadError, match=r"pipe.dcm: not a regular file \(FIFO\); not read"):
        _bounded(lambda: read_dataset(fifo))
    os.symlink("/dev/zero", tmp_path / "zero")
    with pytest.raises(LoadError, match=r"zero: not a regular file \(character device\)"):
        _bounded(lambda: load_dicom_series([tmp_path / "zero"]))


def test_files_above_the_size_cap_and_empty_files_are_skipped_with_a_reason(tmp_path, monkeypatch):
    _series(tmp_path, n_slices=2)
    (tmp_path / "series" / "empty.dcm").write_bytes(b"")
    monkeypatch.setattr(sys.modules["medres.io.discover"], "MAX_DICOM_FILE_BYTES", 1000)
    found = discover(tmp_path)
    reasons = {Path(s.path).name: s.reason for s in found.skipped}
    assert re.search(
        r"0.0 GiB, larger than the 0.0 GiB medres reads as one DICOM file \(medres.limits.MAX_DICOM_FILE_BYTES\)",
        reasons["IM0001"],
    )
    assert reasons["empty.dcm"].endswith("empty.dcm: empty file (0 bytes)")
    assert found.scans == []


# --- finding 3: declared sizes are checked before anything is allocated ----------------


def test_huge_rows_and_columns_on_short_pixel_data_are_refused_from_the_header(tmp_path):
    paths = _series(tmp_path, n_slices=1)
    _put_raw(paths[0], "Rows", "US", (40000).to_bytes(2, "little"))
    _put_raw(paths[0], "Columns", "US", (40000).to_bytes(2, "little"))
    failed = _failed(discover(tmp_path))
    assert re.search(
        r"IM0001: header promises 3,200,000,000 bytes of pixel data \(40000 rows x 40000 columns x 1 sample\(s\) x 1 frame\(s\) x 16 bits\) but the file holds [\d,]+ bytes",
        failed["IM0001"],
    )


def test_rows_and_columns_65535_exceed_the_voxel_cap(tmp_path):
    paths = _series(tmp_path, n_slices=1)
    _put_raw(paths[0], "Rows", "US", b"\xff\xff")
    _put_raw(paths[0], "Columns", "US", b"\xff\xff")
    failed = _failed(discover(tmp_path))
    assert re.search(
        r"IM0001: header declares 65535 rows x 65535 columns x 1 frame\(s\) = 4,294,836,225 pixels, more than the 2,500,000,000",
        failed["IM0001"],
    )


@pytest.mark.parametrize(
    ("pixel_data", "error", "message"),
    [
        (
            b"\x01",
            CorruptFileError,
            r"pixel data truncated: 2 bytes where 70 expected \(the header promises 70 bytes of pixel data but the file holds 2\)",
        ),
        (b"", CorruptFileError, r"the PixelData element is empty \(0 bytes\)"),
    ],
    ids=["one-byte", "empty"],
)
def test_short_or_empty_pixel_data_is_a_clear_error_at_load(tmp_path, pixel_data, error, message):
    paths = _series(tmp_path, n_slices=3)
    _put_raw(paths[1], "PixelData", "OW", pixel_data)
    (ref,) = discover(tmp_path).scans
    with pytest.raises(error, match=rf"{re.escape(str(paths[1]))}: {message}"):
        load_scan(ref)


def test_unknown_transfer_syntax_is_named(tmp_path):
    paths = _series(tmp_path, n_slices=2)
    _edit(paths[0], lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", UID("1.2.3.4.5.6")))
    assert re.search(
        r"IM0001: unknown transfer syntax UID '1.2.3.4.5.6' \(0002,0010\)",
        _failed(discover(tmp_path))["IM0001"],
    )
    ds = pydicom.dcmread(paths[0])
    with pytest.raises(
        PixelDecodeError, match=r"IM0001: unknown transfer syntax UID '1.2.3.4.5.6'"
    ):
        decode_pixels(ds, paths[0])


def test_compressed_syntax_without_a_decoder_is_named(tmp_path):
    paths = _series(tmp_path, n_slices=1)
    _set_transfer_syntax(paths[0], b"1.2.840.10008.1.2.4.100")
    assert re.search(
        r"IM0001: pixel data compressed as MPEG2 .*\(1.2.840.10008.1.2.4.100\), which no installed decoder reads",
        _failed(discover(tmp_path))["IM0001"],
    )


def test_deleted_rows_is_a_damaged_header_not_a_non_image(tmp_path):
    paths = _series(tmp_path, n_slices=2)
    _edit(paths[0], _delete("Rows"))
    assert re.search(
        r"IM0001: image with pixel data but no Rows in its header; the header is damaged",
        _failed(discover(tmp_path))["IM0001"],
    )


def test_number_of_frames_above_the_cap_is_refused(tmp_path):
    paths = _series(tmp_path, n_slices=1)
    _put_raw(paths[0], "NumberOfFrames", "IS", b"1000000")
    assert re.search(
        r"IM0001: NumberOfFrames 1000000 is not a valid value \(medres.io.dicom.MAX_FRAMES: 1..20000\)",
        _failed(discover(tmp_path))["IM0001"],
    )


def test_a_volume_above_the_memory_budget_is_refused_before_allocation(tmp_path, monkeypatch):
    _series(tmp_path)
    monkeypatch.setenv("MEDRES_MAX_MEMORY_GB", "0.0000001")  # ~107 bytes
    (ref,) = discover(tmp_path).scans
    assert isinstance(ref.problem, UnsupportedDicomError)
    with pytest.raises(
        UnsupportedDicomError,
        match=r"series: series .* 'hostile': the 7 x 5 x 6 volume needs 0.0 GiB, above the 0.0 GiB memory budget \(set MEDRES_MAX_MEMORY_GB",
    ):
        load_scan(ref)


# --- finding 4: corrupt values are refused, absent ones defaulted (with a warning) ------


@pytest.mark.parametrize(
    ("keyword", "raw", "message"),
    [
        ("RescaleSlope", b"NaN", r"RescaleSlope 'NaN' is not finite"),
        (
            "RescaleSlope",
            b"0",
            r"RescaleSlope '0' is not a usable scale factor \(a positive number from 1e-08 to 10000",
        ),
        ("RescaleSlope", b"inf", r"RescaleSlope 'inf' is not finite"),
        ("RescaleSlope", b"-1", r"RescaleSlope '-1' is not a usable scale factor"),
        ("RescaleSlope", b"1e30", r"RescaleSlope '1e30' is not a usable scale factor"),
        ("RescaleIntercept", b"NaN", r"RescaleIntercept 'NaN' is not finite"),
        ("RescaleIntercept", b"/1024", r"RescaleIntercept '/1024' is not a number"),
        ("RescaleIntercept", b"1e9", r"RescaleIntercept '1e9' is not a usable offset"),
        (
            "RescaleIntercept",
            b"1\\2",
            r"RescaleIntercept '1\\2' has 2 value\(s\) where 1 are required",
        ),
        ("PixelSpacing", b"NaN\\0.8", r"PixelSpacing 'NaN\\0.8' is not finite"),
        (
            "PixelSpacing",
            b"0\\0",
            r"PixelSpacing '0\\0' is not two pixel sizes in mm \(each > 0 and at most 1000\)",
        ),
        ("PixelSpacing", b"-0.6\\0.8", r"PixelSpacing '-0.6\\0.8' is not two pixel sizes in mm"),
        ("PixelSpacing", b"0.9", r"PixelSpacing '0.9' has 1 value\(s\) where 2 are required"),
        ("PixelSpacing", b"0.9\\abc", r"PixelSpacing '0.9\\abc' is not a number"),
        (
            "ImageOrientationPatient",
            b"2\\0\\0\\0\\2\\0",
            r"ImageOrientationPatient '2\\0\\0\\0\\2\\0' is not two perpendicular unit vectors \(lengths 2 and 2, cosine 0",
        ),
        (
            "ImageOrientationPatient",
            b"1\\0\\0\\0.5\\0.8660254\\0",
            r"ImageOrientationPatient '1\\0\\0\\0.5\\0.8660254\\0' is not two perpendicular unit vectors \(lengths 1 and 1, cosine 0.5 between them\)",
        ),
        (
            "ImageOrientationPatient",
            b"1\\0\\0\\0\\1",
            r"ImageOrientationPatient '1\\0\\0\\0\\1' has 5 value\(s\) where 6 are required",
        ),
        ("ImagePositionPatient", b"0\\0\\nan", r"ImagePositionPatient '0\\0\\nan' is not finite"),
    ],
    ids=[
        "slope-nan",
        "slope-0",
        "slope-inf",
        "slope-negative",
        "slope-1e30",
        "intercept-nan",
        "intercept-slash",
        "intercept-huge",
        "intercept-two-values",
        "spacing-nan",
        "spacing-zero",
        "spacing-negative",
        "spacing-one-value",
        "spacing-abc",
        "iop-scaled",
        "iop-oblique-axes",
        "iop-five-values",
        "ipp-nan",
    ],
)
def test_present_but_unusable_values_are_refused_naming_file_and_field(
    tmp_path, keyword, raw, message
):
    paths = _series(tmp_path)
    _put_raw(paths[3], keyword, "DS", raw)
    found = discover(tmp_path)
    failed = _failed(found)
    assert set(failed) == {"IM0004"}
    assert re.search(rf"^{re.escape(str(paths[3]))}: {message}", failed["IM0004"]), failed["IM0004"]
    with pytest.raises(CorruptFileError, match=rf"IM0004: {message}"):
        load_dicom_series(paths)


def test_absent_rescale_values_take_the_standard_default_silently(tmp_path):
    paths = _series(tmp_path, n_slices=2)
    for path in paths:
        _edit(path, _delete("RescaleSlope"))
        _edit(path, _delete("RescaleIntercept"))
    (ref,) = discover(tmp_path).scans
    vol = load_scan(ref)
    assert ref.warnings == () and vol.warnings == ()
    assert int(vol.array.min()) >= 0  # stored values, no -1024 applied


def test_missing_pixel_spacing_defaults_to_1mm_with_a_warning_on_scan_and_volume(tmp_path):
    paths = _series(tmp_path, n_slices=3)
    for path in paths:
        _edit(path, _delete("PixelSpacing"))
    (ref,) = discover(tmp_path).scans
    vol = load_scan(ref)
    assert (
        PIXEL_SPACING_ASSUMED == "PixelSpacing missing: 1 mm assumed; sizes in mm are not physical"
    )
    assert ref.warnings == (PIXEL_SPACING_ASSUMED,)
    assert vol.warnings == (PIXEL_SPACING_ASSUMED,)
    assert vol.spacing_mm == pytest.approx((1.0, 1.0, 2.5))


def test_orientation_rounded_to_two_decimals_is_normalised_with_a_warning(tmp_path):
    paths = _series(tmp_path, n_slices=3)
    for path in paths:
        _put_raw(path, "ImageOrientationPatient", "DS", b"1.004\\0\\0\\0\\1\\0")
    (ref,) = discover(tmp_path).scans
    vol = load_scan(ref)
    assert re.fullmatch(
        r"ImageOrientationPatient '1.004\\0\\0\\0\\1\\0' was not two perpendicular unit vectors \(lengths 1.004 and 1, cosine 0 between them\): normalised",
        vol.warnings[0],
    )
    assert vol.spacing_mm == pytest.approx((0.8, 0.6, 2.5))


def test_orientation_rounding_within_tolerance_is_used_as_written(tmp_path):
    paths = _series(tmp_path, n_slices=3)
    for path in paths:
        _put_raw(path, "ImageOrientationPatient", "DS", b"0.9999\\0\\0\\0\\1\\0")
    (ref,) = discover(tmp_path).scans
    assert ref.warnings == ()
    assert load_scan(ref).warnings == ()


# --- finding 5: all slices at one position are one broken scan, not N scans ------------


def test_all_slices_at_one_position_are_one_scan_with_a_duplicate_error(tmp_path):
    paths = _series(tmp_path)
    for path in paths:
        _put_raw(path, "ImagePositionPatient", "DS", b"0\\0\\0")
    found = discover(tmp_path)
    assert len(found.scans) == 1
    with pytest.raises(
        DuplicateSlicesError,
        match=rf"{re.escape(str(tmp_path / 'series'))}: series .* 'hostile': all 6 slices lie at one position; 5 slice position\(s\) occur more than once \(IM0001 \(instance 1\) and IM0002",
    ):
        load_scan(found.scans[0])


def test_one_sop_instance_uid_for_all_files_is_one_scan_with_a_duplicate_error(tmp_path):
    paths = _series(tmp_path)
    for path in paths:
        _edit(
            path,
            lambda ds: (
                setattr(ds, "SOPInstanceUID", "1.2.3.4"),
                setattr(ds.file_meta, "MediaStorageSOPInstanceUID", "1.2.3.4"),
            ),
        )
    found = discover(tmp_path)
    assert len(found.scans) == 1
    with pytest.raises(
        DuplicateSlicesError,
        match=r"'hostile': 6 files share 1 SOPInstanceUID\(s\) \(IM0001 \(instance 1\), IM0002 \(instance 2\), IM0003 \(instance 3\), IM0004 \(instance 4\) and 2 more all carry 1.2.3.4\)",
    ):
        load_scan(found.scans[0])


def test_the_same_instance_in_another_transfer_syntax_is_still_a_scan_of_its_own(tmp_path):
    paths = _series(tmp_path, n_slices=1)
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "series" / "implicit", enforce_file_format=True)
    found = discover(tmp_path)
    assert len(found.scans) == 2
    assert all(isinstance(load_scan(ref), Volume) for ref in found.scans)


# --- finding 6: messages blame the damaged file, not its neighbours ----------------------


def test_a_gap_left_by_a_damaged_slice_names_the_damaged_file(tmp_path):
    paths = _series(tmp_path)
    _put_raw(paths[2], "RescaleIntercept", "DS", b"/1024")
    (ref,) = discover(tmp_path).scans
    with pytest.raises(
        SliceGapError,
        match=r"slice gap 5.00 mm where 2.50 mm expected between IM0002 \(instance 2\) and IM0004 \(instance 4\) \(about 1 slice\(s\) missing, 1 gap\(s\) in all\); the damaged file\(s\) IM0003 \(RescaleIntercept '/1024' is not a number; .*\) in the same folder are probably the missing slice\(s\)",
    ):
        load_scan(ref)


def test_a_damaged_slice_whose_preamble_is_gone_is_named_too(tmp_path):
    paths = _series(tmp_path)
    paths[3].write_bytes(b"\x00" * 400)
    (ref,) = discover(tmp_path).scans
    with pytest.raises(
        SliceGapError,
        match=r"the damaged file\(s\) IM0004 \(not a recognised scan format\) in the same folder",
    ):
        load_scan(ref)


def test_a_damaged_edge_slice_leaves_a_warning_on_the_scan(tmp_path):
    paths = _series(tmp_path)
    _put_raw(paths[-1], "PixelSpacing", "DS", b"0\\0")
    (ref,) = discover(tmp_path).scans
    vol = load_scan(ref)
    assert vol.spatial_shape == (7, 5, 5)
    expected = "1 file(s) in the same folder could not be read (IM0006); if they are slices of this series, the volume is incomplete"
    assert ref.warnings == (expected,) and vol.warnings == (expected,)


# --- property-based: random header mutations and byte damage ---------------------------

_BASE: dict[str, bytes] = {}


def _base_series() -> dict[str, bytes]:
    """Bytes of a 4-slice synthetic series (built once, copied for each example)."""
    if not _BASE:
        with tempfile.TemporaryDirectory() as tmp:
            vol = random_volume((6, 5, 4), np.diag([-0.9, -0.7, 2.0, 1.0]), seed=11)
            info = DicomSeriesInfo(series_description="prop", rescale_intercept=-1024.0)
            for path in write_dicom_series(vol, Path(tmp), info):
                _BASE[path.name] = path.read_bytes()
    return _BASE


def _check_outcome(root: Path, folder: Path) -> str:
    """discover + load_scan under the invariants; returns a short outcome label."""
    found = discover(root)  # must never raise for an existing root
    for item in found.failed:
        assert item.path in item.reason, item.reason
        assert "\n" not in item.reason
    outcome = "ok"
    for ref in found.scans:
        try:
            vol = load_scan(ref)
        except LoadError as exc:
            message = str(exc)
            assert str(folder) in message, message  # names the file or the series folder
            assert "\n" not in message, message
            outcome = type(exc).__name__
        else:
            assert isinstance(vol, Volume)
            assert np.all(np.isfinite(vol.affine))
            assert all(s > 0 and np.isfinite(s) for s in vol.spacing_mm)
            assert abs(np.linalg.det(vol.affine[:3, :3])) > 0
            if vol.array.dtype.kind == "f":
                assert np.all(np.isfinite(vol.array))
    return outcome


_KEYWORDS = [
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "PixelData",
]
_VRS = ["US", "SS", "UL", "DS", "IS", "LO", "CS", "UN", "OB", "OW", "FD", "ES", "UM", "DO"]
_TEXTS = [
    b"0",
    b"1",
    b"-1",
    b"65535",
    b"4294967295",
    b"1e30",
    b"-1e30",
    b"NaN",
    b"inf",
    b"-inf",
    b"0.5",
    b"/1024",
    b"-1024",
    b"0.9\\abc",
    b"0\\0",
    b"1\\0\\0\\0\\1\\0",
    b"2\\0\\0\\0\\2\\0",
    b"1\\1\\1\\1\\1\\1",
    b"0\\0\\0",
    b"1e308\\1e308\\1e308",
    b"",
    b"\\\\\\",
    b"MONOCHROME2",
    b"RGB",
    b"PALETTE COLOR",
    b"YBR_FULL_422",
    b"12",
    b"16",
    b"3",
]
_value = st.one_of(
    st.sampled_from(_TEXTS),
    st.binary(max_size=12),
    st.integers(min_value=0, max_value=2**32 - 1).map(lambda v: v.to_bytes(4, "little")),
    st.integers(min_value=0, max_value=2**16 - 1).map(lambda v: v.to_bytes(2, "little")),
)
_header_mutation = st.one_of(
    st.tuples(st.just("raw"), st.sampled_from(_KEYWORDS), st.sampled_from(_VRS), _value),
    st.tuples(st.just("delete"), st.sampled_from(_KEYWORDS), st.just(""), st.just(b"")),
    st.tuples(
        st.just("syntax"),
        st.just("TransferSyntaxUID"),
        st.just("UI"),
        st.sampled_from(
            [
                b"1.2.3.4.5.6",
                b"1.2.840.10008.1.2.4.50",
                b"1.2.840.10008.1.2.5",
                b"1.2.840.10008.1.2.2",
                b"",
                b"\xff\xfe",
            ]
        ),
    ),
    st.tuples(
        st.just("pixels"),
        st.just("PixelData"),
        st.just("OW"),
        st.integers(0, 200).map(lambda n: bytes(n)),
    ),
)
_PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _write_base(root: Path) -> Path:
    folder = root / "series"
    folder.mkdir()
    for name, data in _base_series().items():
        (folder / name).write_bytes(data)
    return folder


def _apply(path: Path, kind: str, keyword: str, vr: str, value: bytes) -> None:
    try:
        if kind == "delete":
            _edit(path, _delete(keyword))
        elif kind == "syntax":
            _set_transfer_syntax(path, value)
        else:
            _put_raw(path, keyword, vr, value)
    except Exception:  # pydicom could not write this mutation: leave the file as it is
        pass


@_PROPERTY_SETTINGS
@given(
    mutations=st.lists(
        st.tuples(st.one_of(st.integers(0, 3), st.just(-1)), _header_mutation),
        min_size=1,
        max_size=3,
    )
)
def test_random_header_mutations_end_as_a_volume_or_one_load_error(monkeypatch, mutations):
    monkeypatch.setenv("MEDRES_MAX_MEMORY_GB", "0.05")  # a huge declared size is refused
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = _write_base(root)
        files = sorted(folder.iterdir())
        for index, (kind, keyword, vr, value) in mutations:
            for path in files if index == -1 else [files[index]]:
                _apply(path, kind, keyword, vr, value)
        _check_outcome(root, folder)


_damage = st.one_of(
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=8),
    ),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(
        st.just("insert"), st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
    ),
    st.tuples(st.just("delete"), st.tuples(st.integers(0, 10_000), st.integers(1, 8))),
)


def _damaged(data: bytes, kind: str, spec: Any) -> bytes:
    buf = bytearray(data)
    if not buf:
        return data
    if kind == "flip":
        for offset, mask in spec:
            buf[offset % len(buf)] ^= mask
    elif kind == "truncate":
        del buf[spec % len(buf) :]
    elif kind == "insert":
        offset, extra = spec
        buf[offset % len(buf) : offset % len(buf)] = extra
    else:
        offset, count = spec
        del buf[offset % len(buf) : offset % len(buf) + count]
    return bytes(buf)


@_PROPERTY_SETTINGS
@given(damage=st.lists(st.tuples(st.integers(0, 3), _damage), min_size=1, max_size=3))
def test_random_byte_damage_ends_as_a_volume_or_one_load_error(monkeypatch, damage):
    monkeypatch.setenv("MEDRES_MAX_MEMORY_GB", "0.05")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = _write_base(root)
        files = sorted(folder.iterdir())
        for index, (kind, spec) in damage:
            files[index].write_bytes(_damaged(files[index].read_bytes(), kind, spec))
        _check_outcome(root, folder)


def test_a_missing_root_is_the_only_error_discover_raises(tmp_path):
    with pytest.raises(LoadError, match=r"nothing: no such file or folder"):
        discover(tmp_path / "nothing")
    assert issubclass(LoadError, MedresError)
