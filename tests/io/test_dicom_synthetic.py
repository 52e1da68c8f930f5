"""DICOM loading on synthetic series with known answers: odd shapes, oblique, broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medres.errors import (
    CorruptFileError,
    DuplicateSlicesError,
    MixedSeriesError,
    NotDicomError,
    SliceGapError,
)
from medres.io.dicom import load_dicom_series
from medres.io.dicom_write import DicomSeriesInfo, write_dicom_series
from medres.io.discover import discover, safe_name
from medres.io.grid import voxel_to_world
from medres.io.load import load_scan
from medres.io.volume import Volume
from tests.conftest import oblique_affine, on_world_grid, random_volume

GEOMETRIES = {
    "axial-aniso": ((17, 15, 9), np.diag([-0.8, -0.6, 2.5, 1.0])),
    "ras-order": ((11, 13, 7), np.diag([0.7, 0.9, 3.0, 1.0])),
    "oblique": ((17, 15, 9), oblique_affine((0.8, 0.6, 2.5))),
    "sagittal": (
        (9, 17, 15),
        np.array([[0, 0, -2.0, 40], [0.9, 0, 0, -60], [0, -0.7, 0, 80], [0, 0, 0, 1.0]]),
    ),
    "tilted": (
        (13, 11, 6),
        np.array([[-0.8, 0, 0, 0], [0, -0.8, 0.4, 0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]]),
    ),
}


def _write(tmp_path: Path, vol: Volume, **info) -> list[Path]:
    return write_dicom_series(vol, tmp_path / "series", DicomSeriesInfo(**info))


@pytest.mark.parametrize("name", list(GEOMETRIES), ids=list(GEOMETRIES))
def test_roundtrip_keeps_every_voxel_on_its_world_position(tmp_path, name):
    shape, affine = GEOMETRIES[name]
    vol = random_volume(shape, affine, seed=3)
    _write(tmp_path, vol)
    loaded = load_scan(discover(tmp_path).scans[0])
    assert loaded.modality == "CT"
    # Bring the loaded array onto the written axis order (flips/permutations only) ...
    array, aff = on_world_grid(loaded.array[0], loaded.affine, affine, shape=loaded.spatial_shape)
    # ... then every voxel and the affine must match exactly: no swap, no flipped sign.
    assert array.shape == shape
    assert np.array_equal(array, vol.array[0])
    assert np.allclose(aff, affine, atol=1e-4)
    # and a voxel's world position is the same whichever array you read it from
    idx = np.unravel_index(int(np.argmax(loaded.array[0])), loaded.spatial_shape)
    src = np.argwhere(vol.array[0] == loaded.array[0][idx])[0]
    assert np.allclose(voxel_to_world(loaded.affine, idx), voxel_to_world(affine, src), atol=1e-3)


def test_slices_are_sorted_by_position_not_by_file_name(tmp_path):
    vol = random_volume((7, 5, 6), np.diag([-1.0, -1.0, 2.0, 1.0]))
    paths = _write(tmp_path, vol)
    # shuffle file names: IM0001 <-> IM0006 etc.
    for i, p in enumerate(paths):
        p.rename(p.with_name(f"tmp{i}"))
    for i, p in enumerate(reversed(paths)):
        (p.parent / f"tmp{len(paths) - 1 - i}").rename(p.parent / f"X{i:02d}")
    loaded = load_dicom_series(sorted((tmp_path / "series").iterdir()))
    assert np.array_equal(loaded.array, vol.array)


def test_missing_slice_is_reported_as_a_gap_naming_the_neighbours(tmp_path):
    vol = random_volume((7, 5, 8), np.diag([-1.0, -1.0, 2.5, 1.0]))
    paths = _write(tmp_path, vol, series_description="gappy")
    paths[4].unlink()
    ref = discover(tmp_path).scans[0]
    assert isinstance(ref.problem, SliceGapError)
    with pytest.raises(
        SliceGapError,
        match=r"'gappy': slice gap 5.00 mm where 2.50 mm expected between IM0004 \(instance 4\) and IM0006",
    ):
        load_scan(ref)


def test_irregular_spacing_is_refused(tmp_path):
    vol = random_volume((5, 4, 6), np.diag([-1.0, -1.0, 2.0, 1.0]))
    paths = _write(tmp_path, vol)
    ds = pydicom.dcmread(paths[3])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.7
    ds.save_as(paths[3])
    with pytest.raises(SliceGapError, match="irregular slice spacing"):
        load_dicom_series(paths)


def test_duplicate_position_that_cannot_be_split_is_reported(tmp_path):
    vol = random_volume((5, 4, 6), np.diag([-1.0, -1.0, 2.0, 1.0]))
    paths = _write(tmp_path, vol)
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.InstanceNumber = 99
    ds.save_as(tmp_path / "series" / "extra")
    ref = discover(tmp_path).scans[0]
    with pytest.raises(DuplicateSlicesError, match="occur more than once"):
        load_scan(ref)


def test_repeated_time_points_split_into_volumes_in_order(tmp_path):
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    first = random_volume((6, 5, 4), affine, seed=1)
    second = random_volume((6, 5, 4), affine, seed=2)
    info = dict(series_description="fmri", uid_seed="same")
    a = write_dicom_series(first, tmp_path / "a", DicomSeriesInfo(**info))
    b = write_dicom_series(second, tmp_path / "b", DicomSeriesInfo(**info), file_prefix="T2_")
    for k, path in enumerate(b):  # new SOP UIDs, later instance numbers: time point 2
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.{k + 1}"
        ds.InstanceNumber = 100 + k
        ds.save_as(path)
    found = discover(tmp_path)
    assert [s.part for s in found.scans] == ["t1", "t2"]
    assert np.array_equal(load_scan(found.scans[0]).array, first.array)
    assert np.array_equal(load_scan(found.scans[1]).array, second.array)
    with pytest.raises(MixedSeriesError, match="hold 2 volumes"):
        load_dicom_series(a + b)


def test_series_with_two_sizes_is_split_at_discovery_and_refused_as_one(tmp_path):
    small = random_volume((6, 5, 3), np.diag([-1.0, -1.0, 3.0, 1.0]))
    big = random_volume((8, 5, 3), np.diag([-1.0, -1.0, 3.0, 1.0]))
    a = write_dicom_series(small, tmp_path / "a", DicomSeriesInfo(uid_seed="x"))
    b = write_dicom_series(big, tmp_path / "b", DicomSeriesInfo(uid_seed="x"), file_prefix="B")
    for k, path in enumerate(b):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.2.{k + 1}"
        ds.save_as(path)
    found = discover(tmp_path)
    assert sorted(s.spatial_shape for s in found.scans) == [(6, 5, 3), (8, 5, 3)]
    from medres.io.dicom import plan_series, read_slice_headers

    headers = [h for p in a + b for h in read_slice_headers(p)]
    with pytest.raises(MixedSeriesError, match=r"slices differ in size \(rows x columns\): 3 of 6"):
        plan_series(headers)


@pytest.mark.parametrize(
    ("bits_stored", "signed", "raw", "expected"),
    [
        (12, False, [0xF0FF, 0x0FFF, 0x0001], [0x0FF, 4095, 1]),
        (12, True, [0xFFFF, 0x0F0F, 0x0800, 0x07FF], [-1, -241, -2048, 2047]),
    ],
    ids=["unsigned-12bit-garbage-high-bits", "signed-12bit-sign-extension"],
)
def test_bits_stored_masking_and_sign_extension(tmp_path, bits_stored, signed, raw, expected):
    vol = random_volume((len(raw), 1, 1), np.diag([-1.0, -1.0, 1.0, 1.0]))
    (path,) = _write(tmp_path, vol)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleIntercept = "0"
    ds.PixelData = np.array(raw, dtype=np.uint16).tobytes()
    ds.Columns = len(raw)
    ds.save_as(path)
    loaded = load_dicom_series([path])
    assert loaded.array[0, :, 0, 0].tolist() == expected


def test_ct_rescale_gives_hounsfield_units_in_int16(tmp_path):
    vol = random_volume((9, 7, 3), np.diag([-0.7, -0.7, 1.5, 1.0]))
    _write(tmp_path, vol, rescale_intercept=-1024.0)
    ds = pydicom.dcmread(tmp_path / "series" / "IM0001")
    assert ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) == -1024
    loaded = load_scan(discover(tmp_path).scans[0])
    assert loaded.array.dtype == np.int16
    assert np.array_equal(loaded.array, vol.array)


def test_truncated_file_fails_with_corrupt_file_error(tmp_path):
    vol = random_volume((16, 16, 2), np.diag([-1.0, -1.0, 1.0, 1.0]))
    paths = _write(tmp_path, vol)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) - 100])
    with pytest.raises(
        CorruptFileError, match=r"IM0001: pixel data truncated: \d+ bytes where 512 expected"
    ):
        load_dicom_series(paths)


def test_garbage_dcm_file_is_listed_as_failed_and_others_still_found(tmp_path):
    vol = random_volume((6, 5, 3), np.diag([-1.0, -1.0, 3.0, 1.0]))
    _write(tmp_path, vol)
    (tmp_path / "broken.dcm").write_bytes(b"\x00" * 50 + b"not dicom at all")
    (tmp_path / "notes.txt").write_text("hello")
    found = discover(tmp_path)
    assert len(found.scans) == 1
    failed = {Path(s.path).name: s.reason for s in found.failed}
    assert "broken.dcm" in failed and "not a DICOM file" in failed["broken.dcm"]
    assert any(Path(s.path).name == "notes.txt" and not s.failed for s in found.skipped)
    from medres.io.dicom import read_dataset

    with pytest.raises(NotDicomError, match="broken.dcm: not a DICOM file"):
        read_dataset(tmp_path / "broken.dcm")


def test_structured_report_is_skipped_with_its_reason(tmp_path):
    vol = random_volume((4, 4, 1), np.diag([-1.0, -1.0, 1.0, 1.0]))
    (path,) = _write(tmp_path, vol)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.Modality = "SR"
    del ds.PixelData
    ds.save_as(path)
    found = discover(tmp_path)
    assert found.scans == []
    assert found.skipped[0].reason == "not an image: structured report"
    assert not found.skipped[0].failed


@pytest.mark.parametrize(
    "description",
    ["../../etc/passwd", "a/b\\c", "evil\x00name", "..", "   "],
    ids=["dotdot", "separators", "nul", "only-dots", "blank"],
)
def test_scan_ids_from_dicom_text_are_safe_file_names(tmp_path, description):
    vol = random_volume((4, 4, 2), np.diag([-1.0, -1.0, 1.0, 1.0]))
    _write(tmp_path, vol, series_description=description)
    scan_id = discover(tmp_path).scans[0].scan_id
    assert "/" not in scan_id and "\\" not in scan_id and "\x00" not in scan_id
    assert ".." not in scan_id and not scan_id.startswith(".")
    assert safe_name(description) == safe_name(safe_name(description))


def test_patient_fields_are_kept_apart_from_source_identifiers(tmp_path):
    vol = random_volume((4, 4, 2), np.diag([-1.0, -1.0, 1.0, 1.0]))
    _write(tmp_path, vol)
    loaded = load_scan(discover(tmp_path).scans[0])
    assert loaded.patient.name == "Phantom^Sample"
    assert "Phantom" not in repr(loaded.source)
    assert len(loaded.source.sop_instance_uids) == 2
    assert loaded.source.series_uid and loaded.source.frame_of_reference_uid


def test_copy_of_a_whole_series_is_not_a_second_scan(tmp_path):
    vol = random_volume((4, 4, 3), np.diag([-1.0, -1.0, 1.0, 1.0]))
    _write(tmp_path, vol)
    shutil.copytree(tmp_path / "series", tmp_path / "copy")
    found = discover(tmp_path)
    assert len(found.scans) == 1
    assert sum("identical copy" in s.reason for s in found.skipped) == 3


def _enhanced_ct(path: Path, vol: Volume, frame_order: list[int]) -> None:
    """Write ``vol`` as one enhanced multi-frame CT file, frames in ``frame_order``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    from medres.io.volume import LPS_TO_RAS

    lps = LPS_TO_RAS @ vol.affine
    sx, sy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.9.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2.1", "1.2.826.0.9.1"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = "1.2.826.0.9.2", "1.2.826.0.9.3"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 9, 1
    ds.Rows, ds.Columns = vol.spatial_shape[1], vol.spatial_shape[0]
    ds.NumberOfFrames = len(frame_order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared_group = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [*(lps[:3, 0] / sx), *(lps[:3, 1] / sy)]
    measures = Dataset()
    measures.PixelSpacing = [sy, sx]
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 1, -1000
    shared_group.PlaneOrientationSequence = Sequence([orient])
    shared_group.PixelMeasuresSequence = Sequence([measures])
    shared_group.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared_group])
    frames = []
    for k in frame_order:
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = list((lps @ [0, 0, k, 1])[:3])
        group.PlanePositionSequence = Sequence([position])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stored = (vol.array[0] + 1000).astype(np.int16)
    ds.PixelData = np.stack([stored[:, :, k].T for k in frame_order]).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_frames_are_sorted_by_their_own_positions(tmp_path):
    shape, affine = GEOMETRIES["oblique"]
    vol = random_volume(shape, affine, seed=5)
    _enhanced_ct(tmp_path / "enhanced.dcm", vol, frame_order=[3, 0, 8, 1, 5, 2, 7, 4, 6])
    (ref,) = discover(tmp_path).scans
    loaded = load_scan(ref)
    array, aff = on_world_grid(loaded.array[0], loaded.affine, affine, shape=loaded.spatial_shape)
    assert np.array_equal(array, vol.array[0])  # rescale intercept -1000 applied per frame
    assert np.allclose(aff, affine, atol=1e-4)


@pytest.mark.parametrize("name", list(GEOMETRIES), ids=list(GEOMETRIES))
def test_a_valid_series_loads_without_warnings(tmp_path, name):
    # orientation written with 8 decimals, spacing and rescale present: nothing is assumed
    shape, affine = GEOMETRIES[name]
    _write(tmp_path, random_volume(shape, affine, seed=2))
    found = discover(tmp_path)
    (ref,) = found.scans
    assert ref.warnings == () and found.failed == []
    assert load_scan(ref).warnings == ()
