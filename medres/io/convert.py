"""Scans -> NIfTI + JSON sidecar (the ``medres convert`` command)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medres._version import __version__
from medres.io.atomic import write_text_atomic
from medres.io.discover import ScanRef
from medres.io.load import load_scan
from medres.io.nifti import write_nifti
from medres.io.volume import Volume


@dataclass(frozen=True)
class ConvertedScan:
    """Where one converted scan went."""

    scan_id: str
    nifti_path: Path
    sidecar_path: Path


def sidecar(volume: Volume, *, include_patient: bool = False) -> dict[str, Any]:
    """JSON-ready description of a volume: geometry, acquisition, identifiers, provenance.

    Patient name, ID, birth date and sex are included only with ``include_patient=True``.
    """
    src = volume.source
    out: dict[str, Any] = {
        "Modality": volume.modality,
        "SourceKind": str(src.kind),
        "SeriesDescription": src.series_description,
        "SeriesNumber": src.series_number,
        "Manufacturer": src.manufacturer,
        "StudyDate": src.study_date,
        "StudyInstanceUID": src.study_uid,
        "SeriesInstanceUID": src.series_uid,
        "FrameOfReferenceUID": src.frame_of_reference_uid,
        "SOPClassUID": src.sop_class_uid,
        "SOPInstanceUIDs": list(src.sop_instance_uids),
        "ShapeXYZ": list(volume.spatial_shape),
        "Channels": volume.n_channels,
        "ChannelNames": list(volume.channel_names),
        "SpacingMM": [round(v, 6) for v in volume.spacing_mm],
        "Orientation": volume.orientation,
        "AffineRAS": [[float(v) for v in row] for row in volume.affine],
        "DataType": str(volume.array.dtype),
        "ConversionSoftware": "medres",
        "ConversionSoftwareVersion": __version__,
    }
    out.update(src.extra)
    out = {k: v for k, v in out.items() if v not in ("", None, [])}
    if include_patient:
        out["PatientName"] = volume.patient.name
        out["PatientID"] = volume.patient.patient_id
        out["PatientBirthDate"] = volume.patient.birth_date
        out["PatientSex"] = volume.patient.sex
    return out


def convert_scan(
    ref: ScanRef, out_dir: str | Path, *, include_patient: bool = False, compress: bool = True
) -> ConvertedScan:
    """Load one scan and write ``<scan_id>.nii.gz`` and ``<scan_id>.json`` atomically.

    Raises:
        LoadError: The scan cannot be loaded. OutputError: Files cannot be written.
    """
    volume = load_scan(ref)
    out = Path(out_dir)
    nii = out / f"{ref.scan_id}.nii{'.gz' if compress else ''}"
    write_nifti(nii, volume)
    meta = sidecar(volume, include_patient=include_patient)
    js = write_text_atomic(out / f"{ref.scan_id}.json", json.dumps(meta, indent=2) + "\n")
    return ConvertedScan(ref.scan_id, nii, js)
