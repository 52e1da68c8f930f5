"""Write a :class:`~medres.io.volume.Volume` as a DICOM series (one file per slice).

Used to generate the sample data and test fixtures, and to hand volumes to tools that only
read DICOM. The geometry is written exactly: ImagePositionPatient per slice,
ImageOrientationPatient and PixelSpacing from the RAS affine (converted to DICOM's LPS).
UIDs derive from ``uid_seed`` so the same input gives the same files.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import OutputError
from medres.io.atomic import write_bytes_atomic
from medres.io.volume import LPS_TO_RAS, PatientInfo, Volume

#: SOP classes by modality (single-frame storage).
_SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
}


@dataclass(frozen=True)
class DicomSeriesInfo:
    """What to write into the identifying fields of a generated series."""

    series_description: str = "medres series"
    series_number: int = 1
    modality: str = "CT"
    patient: PatientInfo = field(
        default_factory=lambda: PatientInfo(name="Phantom^Sample", patient_id="PHANTOM01")
    )
    study_date: str = "20260101"
    uid_seed: str = "medres"
    rescale_intercept: float = 0.0


def _uid(seed: str, *parts: object) -> str:
    """A deterministic UUID-derived UID (``2.25.<128-bit integer>``, PS3.5 B.2)."""
    text = "|".join([seed, *(str(p) for p in parts)])
    return "2.25." + str(int(hashlib.sha256(text.encode()).hexdigest()[:32], 16))


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    info: DicomSeriesInfo | None = None,
    *,
    file_prefix: str = "IM",
    extension: str = "",
) -> list[Path]:
    """Write a single-channel 3D integer volume as one DICOM file per ``z`` slice.

    Args:
        volume: ``(1, x, y, z)`` integer values (e.g. HU); any affine, oblique included.
        out_dir: Folder to write into (created).
        info: Identifying fields and deterministic UID seed.
        file_prefix: Files are ``<prefix><k+1:04d><extension>``.
        extension: ``""`` (as PACS exports often do) or ``".dcm"``.

    Returns:
        The written paths in slice order.

    Raises:
        OutputError: Unsupported volume (several channels, 2D, float values out of range).
    """
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    info = info or DicomSeriesInfo()
    if volume.n_channels != 1 or volume.spatial_ndim != 3:
        raise OutputError(
            f"DICOM series output needs a (1, x, y, z) volume, got {volume.array.shape}"
        )
    stored: npt.NDArray[Any] = np.rint(volume.array[0] - info.rescale_intercept)
    signed = bool(stored.min() < 0)
    dtype = np.int16 if signed else np.uint16
    info_range = np.iinfo(dtype)
    if stored.min() < info_range.min or stored.max() > info_range.max:
        raise OutputError("values do not fit 16-bit DICOM pixels; adjust rescale_intercept")
    stored = stored.astype(dtype)
    # 12 bits stored when the values allow it, as CT scanners do (so loaders can keep int16)
    fits_12 = (stored.min() >= -2048 and stored.max() <= 2047) if signed else stored.max() <= 4095
    bits_stored = 12 if fits_12 else 16

    lps = LPS_TO_RAS @ volume.affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    spacing_x, spacing_y = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    orientation = [*(col_step / spacing_x), *(row_step / spacing_y)]
    normal = np.cross(orientation[:3], orientation[3:])
    slice_thickness = float(abs(np.dot(lps[:3, 2], normal)))

    sop_class = _SOP_CLASS.get(info.modality, _SOP_CLASS["OT"])
    study_uid: Any = _uid(info.uid_seed, "study")
    series_uid = _uid(info.uid_seed, "series", info.series_number)
    frame_uid = _uid(info.uid_seed, "frame")
    out = Path(out_dir)
    paths = []
    for k in range(volume.spatial_shape[2]):
        sop_uid = _uid(info.uid_seed, "instance", info.series_number, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = DicomDataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = info.study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = info.modality
        ds.Manufacturer = "medres synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "medres sample study"
        ds.SeriesDescription = info.series_description
        ds.PatientName = info.patient.name
        ds.PatientID = info.patient.patient_id
        ds.PatientBirthDate = info.patient.birth_date
        ds.PatientSex = info.patient.sex
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = info.series_number
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        position = lps @ np.array([0.0, 0.0, float(k), 1.0])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position[:3]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.SliceLocation = f"{float(np.dot(position[:3], normal)):.6f}"
        ds.SliceThickness = f"{slice_thickness:.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.spatial_shape[1], volume.spatial_shape[0]
        ds.PixelSpacing = [f"{spacing_y:.6f}", f"{spacing_x:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = f"{info.rescale_intercept:g}"
        ds.RescaleSlope = "1"
        if info.modality == "CT":
            ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = out / f"{file_prefix}{k + 1:04d}{extension}"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_bytes_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths
