"""DICOM Segmentation and Structured Report (TID 1500) for scans that came from DICOM.

* ``seg.dcm``: a binary DICOM SEG (highdicom) with one segment per lesion label, coded as
  SCT "Morphologically abnormal structure" / "Neoplasm" (or "Lesion"), whose frames
  reference the source series' SOP instances, so viewers (OHIF, 3D Slicer) put every
  frame on its slice.
* ``sr.dcm``: a Comprehensive 3D SR measurement report (TID 1500): per lesion a
  volumetric ROI group (TID 1411) with a tracking identifier ``lesion N``, a reference to
  its label's segment in ``seg.dcm``, and its volume (ml; area in mm2 for a single-slice
  scan) and longest axial diameter (mm), plus the detection score as a probability.

Both objects carry the source's patient and study modules (DICOM requires it for objects
of the same patient); keep them with the source images.

Only single-frame slice series are exported (the source instances are read back for
their identifiers); other sources get a reason instead of a file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres._version import __version__
from medres.errors import OutputError
from medres.io.atomic import write_bytes_atomic
from medres.predictions.detections import DetectionBox
from medres.predictions.records import Lesion


def _dicom_bytes(dataset: Any) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _source_datasets(paths: Sequence[str]) -> list[Any]:
    import pydicom

    datasets = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        # some exporters leave these empty in the data set and keep them in the file meta
        if not getattr(ds, "SOPClassUID", "") and meta is not None:
            ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
        if not getattr(ds, "SOPInstanceUID", "") and meta is not None:
            ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID", "")
        datasets.append(ds)
    return datasets


def export_problem(paths: Sequence[str], datasets: Sequence[Any] | None = None) -> str | None:
    """Why a series cannot carry a SEG/SR (None when it can)."""
    if not paths:
        return "the scan is not a DICOM series"
    if datasets is not None:
        if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
            return "multi-frame source objects are not supported for DICOM SEG export yet"
        if any(
            "MOSAIC" in [str(v).upper() for v in getattr(ds, "ImageType", [])] for ds in datasets
        ):
            return "Siemens mosaic sources are not supported for DICOM SEG export yet"
        if any("PixelSpacing" not in ds for ds in datasets):
            return (
                "the source series has no PixelSpacing, and a DICOM SEG must give the pixel "
                "size of its frames (see the report's notes)"
            )
    return None


def _segment_code(name: str) -> tuple[Any, Any]:
    from highdicom.sr.coding import CodedConcept

    category = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
    if any(word in name.lower() for word in ("tumour", "tumor", "neoplasm", "glioma")):
        return category, CodedConcept("108369006", "SCT", "Neoplasm")
    return category, CodedConcept("52988006", "SCT", "Lesion")


def write_seg(
    path: Path,
    labels: npt.NDArray[np.uint8],
    *,
    source_paths: Sequence[str],
    label_names: Sequence[str],
    lesion_indices: Sequence[int],
    series_number: int = 9901,
) -> Any:
    """Write ``labels`` (``(x, y, z)`` on the series grid, ``z`` in ``source_paths`` order)
    as a DICOM SEG; returns the dataset.

    Raises:
        OutputError: The source cannot carry a SEG, or highdicom refuses it.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    datasets = _source_datasets(source_paths)
    problem = export_problem(source_paths, datasets)
    if problem:
        raise OutputError(f"{path}: {problem}")
    if labels.ndim != 3 or labels.shape[2] != len(datasets):
        raise OutputError(
            f"{path}: mask of shape {labels.shape} does not match {len(datasets)} source slices"
        )
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="medres", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    frames = np.zeros((len(datasets), labels.shape[1], labels.shape[0]), dtype=np.uint8)
    for number, index in enumerate(lesion_indices, start=1):
        category, kind = _segment_code(label_names[index])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label_names[index][:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
        # (x, y, z) -> frames (z, rows = y, columns = x)
        frames[np.transpose(labels == index, (2, 1, 0))] = number
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medres",
        manufacturer_model_name="medres predict",
        software_versions=__version__,
        device_serial_number="0",
        series_description="medres lesions (research use only)",
        omit_empty_frames=bool(frames.any()),  # an empty mask keeps its frames
    )
    write_bytes_atomic(path, _dicom_bytes(seg))
    return seg


def _measurements(lesion: Lesion) -> list[Any]:
    """The TID 1500 measurements of one lesion: volume (or area), long axis, probability."""
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept

    if lesion.volume_ml is not None:
        size = hd.sr.Measurement(
            name=CodedConcept("118565006", "SCT", "Volume"),
            value=float(lesion.volume_ml),
            unit=CodedConcept("ml", "UCUM", "milliliter"),
        )
    else:  # a lesion of a single-slice scan has an area, not a volume
        size = hd.sr.Measurement(
            name=CodedConcept("42798000", "SCT", "Area"),
            value=float(lesion.area_mm2 or 0.0),
            unit=CodedConcept("mm2", "UCUM", "square millimeter"),
        )
    measurements = [
        size,
        hd.sr.Measurement(
            name=CodedConcept("103339001", "SCT", "Long axis"),
            value=float(lesion.longest_axial_diameter_mm),
            unit=CodedConcept("mm", "UCUM", "millimeter"),
        ),
    ]
    if lesion.max_probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=CodedConcept("113011", "DCM", "Probability"),
                value=float(lesion.max_probability),
                unit=CodedConcept("1", "UCUM", "no units"),
            )
        )
    return measurements


def _box_group(box: DetectionBox, affine: npt.NDArray[np.float64], frame_of_reference: str) -> Any:
    """A detector box as a planar ROI group: the box's rectangle on its central axial plane
    (SCOORD3D polygon, LPS mm in the series' frame of reference), its score and edges."""
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept
    from pydicom.uid import generate_uid

    dims = box.dims
    low, high = np.asarray(box.box_ijk[:dims]) - 0.5, np.asarray(box.box_ijk[dims:]) - 0.5
    k = (low[2] + high[2]) / 2.0 if dims == 3 else 0.0
    corners = [(low[0], low[1]), (high[0], low[1]), (high[0], high[1]), (low[0], high[1])]
    ijk = np.array([[i, j, k, 1.0] for i, j in [*corners, corners[0]]]).T
    ras = (affine @ ijk)[:3].T
    lps = ras * np.array([-1.0, -1.0, 1.0])
    region = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
        graphic_data=lps.astype(np.float64),
        frame_of_reference_uid=frame_of_reference,
    )
    mm = CodedConcept("mm", "UCUM", "millimeter")
    measurements = [
        hd.sr.Measurement(
            name=CodedConcept("113011", "DCM", "Probability"),
            value=float(box.score),
            unit=CodedConcept("1", "UCUM", "no units"),
        ),
        hd.sr.Measurement(
            name=CodedConcept("103339001", "SCT", "Long axis"), value=max(box.size_mm), unit=mm
        ),
    ]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"detector box B{box.box_id}"
        ),
        referenced_region=region,
        finding_type=_segment_code(box.label)[1],
        measurements=measurements,
    )


def write_sr(
    path: Path,
    seg: Any,
    lesions: Sequence[Lesion],
    *,
    source_paths: Sequence[str],
    lesion_indices: Sequence[int],
    label_names: Sequence[str],
    series_number: int = 9902,
    boxes: Sequence[DetectionBox] = (),
    grid_affine: npt.NDArray[np.float64] | None = None,
) -> Any:
    """Write the TID 1500 measurement report of ``lesions`` referencing ``seg``, and of a
    detector's ``boxes`` (planar regions in the series' frame of reference; ``seg`` may
    be None when only a detector predicted the scan).

    Raises:
        OutputError: highdicom refuses the content.
    """
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept
    from pydicom.uid import generate_uid

    datasets = _source_datasets(source_paths)
    observer = hd.sr.ObserverContext(
        observer_type=CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="medres", manufacturer_name="medres", model_name=__version__
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=observer)
    segment_numbers = {index: number for number, index in enumerate(lesion_indices, start=1)}
    groups: list[Any] = []
    for lesion in lesions if seg is not None else ():
        label_index = label_names.index(lesion.label)
        measurements = _measurements(lesion)
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier=f"lesion {lesion.lesion_id}"
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=segment_numbers[label_index],
                    source_series=hd.sr.SourceSeriesForSegmentation(datasets[0].SeriesInstanceUID),
                ),
                finding_type=_segment_code(lesion.label)[1],
                measurements=measurements,
            )
        )
    frame = str(getattr(datasets[0], "FrameOfReferenceUID", ""))
    if boxes and grid_affine is not None and frame:
        groups += [_box_group(b, np.asarray(grid_affine, np.float64), frame) for b in boxes]
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=groups or None,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*datasets, *([seg] if seg is not None else [])],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medres",
        series_description="medres lesion measurements (research use only)",
    )
    write_bytes_atomic(path, _dicom_bytes(sr))
    return sr


def read_sr_measurements(path: str | Path) -> dict[str, dict[str, float]]:
    """Measurements per tracking identifier (``lesion N``) from an ``sr.dcm``.

    Returns:
        ``{"lesion 1": {"Volume": ml, "Long axis": mm, "Probability": p}, ...}`` (``Area``
        in mm2 instead of ``Volume`` for single-slice scans), and
        ``{"detector box B1": {"Probability": score, "Long axis": mm}}`` per box.
    """
    import highdicom as hd

    sr = hd.sr.srread(str(path))
    content: Any = sr.content
    out: dict[str, dict[str, float]] = {}
    groups = [
        *content.get_volumetric_roi_measurement_groups(),
        *content.get_planar_roi_measurement_groups(),
    ]
    for group in groups:
        values = {m.name.meaning: float(m.value) for m in group.get_measurements()}
        out[str(group.tracking_identifier)] = values
    return out


__all__ = ["export_problem", "read_sr_measurements", "write_seg", "write_sr"]
