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
    info = info or DicomSeriesInfo()
    if volume.n_channels != 1 or volume.spatial_ndim != 3:
        raise OutputError(
            f"DICOM series output needs a (1, x, y, z) volume, got {volume.array.shape}"
        )
    pixels = _stored_pixels(volume, info)
    geometry = _SeriesGeometry.of(volume)
    out = Path(out_dir)
    paths = []
    for k in range(volume.spatial_shape[2]):
        ds = _slice_dataset(volume, info, pixels, geometry, k)
        path = out / f"{file_prefix}{k + 1:04d}{extension}"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_bytes_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


@dataclass(frozen=True)
class _StoredPixels:
    """The volume's values as stored (``value - rescale_intercept``, 16 bits)."""

    stored: npt.NDArray[Any]  # (x, y, z), int16 or uint16
    signed: bool
    bits_stored: int


def _stored_pixels(volume: Volume, info: DicomSeriesInfo) -> _StoredPixels:
    """Round the values to 16-bit stored pixels; 12 bits stored when they fit, as CT does.

    Raises:
        OutputError: The values do not fit 16-bit pixels.
    """
    stored: npt.NDArray[Any] = np.rint(volume.array[0] - info.rescale_intercept)
    signed = bool(stored.min() < 0)
    dtype = np.int16 if signed else np.uint16
    info_range = np.iinfo(dtype)
    if stored.min() < info_range.min or stored.max() > info_range.max:
        raise OutputError("values do not fit 16-bit DICOM pixels; adjust rescale_intercept")
    stored = stored.astype(dtype)
    # 12 bits stored when the values allow it, as CT scanners do (so loaders can keep int16)
    fits_12 = (stored.min() >= -2048 and stored.max() <= 2047) if signed else stored.max() <= 4095
    return _StoredPixels(stored=stored, signed=signed, bits_stored=12 if fits_12 else 16)


@dataclass(frozen=True)
class _SeriesGeometry:
    """The series geometry in DICOM's LPS terms, from the volume's RAS affine.

    Attributes:
        lps: 4x4 voxel ``(x=column, y=row, z=slice)`` -> LPS mm.
        orientation: ImageOrientationPatient: unit direction of x (along a row), then of y
            (down a column), LPS.
        normal: Unit slice normal, LPS.
        spacing_x: Voxel size along x (between columns), mm.
        spacing_y: Voxel size along y (between rows), mm.
        slice_thickness: Slice spacing along the normal, mm.
    """

    lps: npt.NDArray[np.float64]
    orientation: list[float]
    normal: npt.NDArray[np.float64]
    spacing_x: float
    spacing_y: float
    slice_thickness: float

    @classmethod
    def of(cls, volume: Volume) -> _SeriesGeometry:
        """The geometry of ``volume`` (any affine, oblique included)."""
        lps = LPS_TO_RAS @ volume.affine
        col_step, row_step = lps[:3, 0], lps[:3, 1]
        spacing_x, spacing_y = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
        orientation = [*(col_step / spacing_x), *(row_step / spacing_y)]
        normal = np.cross(orientation[:3], orientation[3:])
        return cls(
            lps=lps,
            orientation=orientation,
            normal=normal,
            spacing_x=spacing_x,
            spacing_y=spacing_y,
            slice_thickness=float(abs(np.dot(lps[:3, 2], normal))),
        )


def _slice_dataset(
    volume: Volume,
    info: DicomSeriesInfo,
    pixels: _StoredPixels,
    geometry: _SeriesGeometry,
    k: int,
) -> Any:
    """The pydicom dataset (file meta included) of slice ``k``; UIDs derive from the seed."""
    from pydicom.dataset import Dataset as DicomDataset

    sop_class = _SOP_CLASS.get(info.modality, _SOP_CLASS["OT"])
    sop_uid = _uid(info.uid_seed, "instance", info.series_number, k)
    ds = DicomDataset()
    ds.file_meta = _file_meta(sop_class, sop_uid)
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
    ds.StudyInstanceUID = _uid(info.uid_seed, "study")
    ds.SeriesInstanceUID = _uid(info.uid_seed, "series", info.series_number)
    ds.StudyID = "1"
    ds.SeriesNumber = info.series_number
    ds.InstanceNumber = k + 1
    ds.FrameOfReferenceUID = _uid(info.uid_seed, "frame")
    ds.PositionReferenceIndicator = ""
    _set_image_plane(ds, geometry, k)
    _set_image_pixels(ds, volume, info, pixels, geometry, k)
    return ds


def _file_meta(sop_class: str, sop_uid: str) -> Any:
    """File meta information: explicit VR little endian, pydicom's implementation UID."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _set_image_plane(ds: Any, geometry: _SeriesGeometry, k: int) -> None:
    """Position (LPS mm), orientation, slice location and thickness of slice ``k``."""
    position = geometry.lps @ np.array([0.0, 0.0, float(k), 1.0])
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position[:3]]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in geometry.orientation]
    ds.SliceLocation = f"{float(np.dot(position[:3], geometry.normal)):.6f}"
    ds.SliceThickness = f"{geometry.slice_thickness:.6f}"


def _set_image_pixels(
    ds: Any,
    volume: Volume,
    info: DicomSeriesInfo,
    pixels: _StoredPixels,
    geometry: _SeriesGeometry,
    k: int,
) -> None:
    """Pixel module, pixel spacing, rescale (and a CT window) and the pixels of slice ``k``."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = volume.spatial_shape[1], volume.spatial_shape[0]
    ds.PixelSpacing = [f"{geometry.spacing_y:.6f}", f"{geometry.spacing_x:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = pixels.bits_stored
    ds.HighBit = pixels.bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.signed else 0
    ds.RescaleIntercept = f"{info.rescale_intercept:g}"
    ds.RescaleSlope = "1"
    if info.modality == "CT":
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = np.ascontiguousarray(pixels.stored[:, :, k].T).tobytes()
