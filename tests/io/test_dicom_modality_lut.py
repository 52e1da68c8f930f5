"""Modality LUT Sequence: every frame of a multi-frame object goes through the LUT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medres.io.dicom import load_dicom_series, plan_series, read_slice_headers

#: Stored values 0..7 map to distinct outputs no slope/intercept could give.
LUT = np.array([7, 130, 45, 3000, 12, 901, 40000, 2], dtype=np.uint16)
ROWS, COLUMNS, SLICE_STEP_MM = 3, 5, 2.5


def _multiframe_with_lut(path: Path, stored: np.ndarray, frame_order: list[int]) -> None:
    """Write ``stored`` ``(frames, rows, cols)`` as one multi-frame file with a Modality LUT.

    Frame ``j`` of the file holds ``stored[frame_order[j]]`` at z = frame_order[j] * 2.5 mm
    (LPS, identity orientation); no RescaleSlope/RescaleIntercept anywhere.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    sop_class = "1.2.840.10008.5.1.4.1.1.7.3"  # multi-frame grayscale word secondary capture
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.9.7.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, "1.2.826.0.9.7.1"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = "1.2.826.0.9.7.2", "1.2.826.0.9.7.3"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 3, 1
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.NumberOfFrames = len(frame_order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    lut_item = Dataset()
    lut_item.add_new("LUTDescriptor", "US", [len(LUT), 0, 16])
    lut_item.add_new("LUTData", "US", [int(v) for v in LUT])
    lut_item.ModalityLUTType = "US"  # unspecified
    ds.ModalityLUTSequence = Sequence([lut_item])
    shared_group = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.6]
    shared_group.PlaneOrientationSequence = Sequence([orient])
    shared_group.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared_group])
    frames = []
    for k in frame_order:
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, k * SLICE_STEP_MM]
        group.PlanePositionSequence = Sequence([position])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([stored[k] for k in frame_order]).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    "frame_order", [[0, 1, 2], [2, 0, 1]], ids=["frames-in-order", "frames-shuffled"]
)
def test_every_frame_of_a_multiframe_goes_through_the_modality_lut(tmp_path, frame_order):
    rng = np.random.default_rng(11)
    # each frame uses every stored value, in its own arrangement
    values = np.arange(ROWS * COLUMNS) % len(LUT)
    stored = np.stack([rng.permutation(values).reshape(ROWS, COLUMNS) for _ in range(3)])
    stored = stored.astype(np.uint16)
    path = tmp_path / "multiframe_lut.dcm"
    _multiframe_with_lut(path, stored, frame_order)
    plan = plan_series(read_slice_headers(path))
    assert [s.frame for s in plan.slices] == [frame_order.index(k) for k in range(3)]

    loaded = load_dicom_series([path])

    assert loaded.spatial_shape == (COLUMNS, ROWS, 3)  # (x=column, y=row, z=slice)
    for z in range(3):
        expected = LUT[stored[z]].astype(np.float32)  # (rows, cols)
        got = loaded.array[0][:, :, z].T
        assert np.array_equal(got, expected), f"slice {z} (file frame {plan.slices[z].frame})"
