"""Discovery and loading of scans: DICOM series, NIfTI files, 2D images.

Example:
    >>> from medres.io import discover, load_scan
    >>> found = discover("sample_data")  # doctest: +SKIP
    >>> volume = load_scan(found.scans[0])  # doctest: +SKIP
"""

from medres.io.atomic import atomic_write, write_bytes_atomic, write_text_atomic
from medres.io.convert import ConvertedScan, convert_scan, sidecar
from medres.io.dicom import load_dicom_series, plan_series, read_slice_headers, split_volumes
from medres.io.discover import DiscoveryResult, ScanRef, SkippedFile, discover, safe_name
from medres.io.grid import GRID_TOLERANCE_MM, Grid, voxel_to_world, world_to_voxel
from medres.io.images2d import read_image2d, read_mask2d
from medres.io.load import load_mask, load_scan
from medres.io.nifti import read_nifti, write_nifti
from medres.io.volume import (
    PatientInfo,
    ScanKind,
    SourceInfo,
    Volume,
    orientation_codes,
)

__all__ = [
    "GRID_TOLERANCE_MM",
    "ConvertedScan",
    "DiscoveryResult",
    "Grid",
    "PatientInfo",
    "ScanKind",
    "ScanRef",
    "SkippedFile",
    "SourceInfo",
    "Volume",
    "atomic_write",
    "convert_scan",
    "discover",
    "load_dicom_series",
    "load_mask",
    "load_scan",
    "orientation_codes",
    "plan_series",
    "read_image2d",
    "read_mask2d",
    "read_nifti",
    "read_slice_headers",
    "safe_name",
    "sidecar",
    "split_volumes",
    "voxel_to_world",
    "world_to_voxel",
    "write_bytes_atomic",
    "write_nifti",
    "write_text_atomic",
]
