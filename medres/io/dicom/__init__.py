"""DICOM headers -> series plans -> :class:`~medres.io.volume.Volume`.

Three steps, each usable on its own:

1. :func:`read_slice_headers` reads one file's header (no pixel data) into
   :class:`SliceHeader` records (one per frame for enhanced multi-frame objects), or raises
   :class:`~medres.errors.UnsupportedDicomError` for objects that are not images (SR, SEG,
   RTSTRUCT, presentation states, DICOMDIR...).
2. :func:`plan_series` sorts slices along the slice normal, checks that they form one
   regular volume (orientation, size, pixel format, spacing, gaps, duplicates) and computes
   the RAS affine, all from headers. :func:`split_volumes` first divides a series that
   holds several volumes (time points, echoes, acquisitions).
3. :func:`load_dicom_series` decodes the pixels slice by slice straight into the output
   array (one decoded file in flight), masks unused high bits, sign-extends, applies
   RescaleSlope/Intercept (CT in HU) or a Modality LUT.

Index order and affine follow :mod:`medres.io.volume`: the array is ``(C, x=column,
y=row, z=slice)`` and slice ``k`` is ``plan.slices[k]``; the affine maps to RAS+ mm.

Every header value is distrusted (``docs/user-guide.md``, "Hostile input"): sizes,
spacing, orientation, position and rescale values must parse, be finite, lie in physical
ranges and agree with the bytes in the file before anything is allocated. A value that is
present but unusable is refused with a :class:`~medres.errors.LoadError` naming the file
and the field; a value that is absent takes the standard default, and the defaults that
change physical sizes (pixel spacing, slice thickness) are recorded in
``SeriesPlan.warnings`` / ``Volume.warnings``. Any exception pydicom raises while a field
is read (an unknown value representation after a flipped byte, say) ends as one
:class:`~medres.errors.CorruptFileError` naming the file.

Modules, one job each:

* :mod:`~medres.io.dicom.fields`: one header value at a time, its tolerance and range.
* :mod:`~medres.io.dicom.dataset`: opening a file, non-image objects, transfer syntax.
* :mod:`~medres.io.dicom.records`: :class:`SliceHeader` and :class:`SeriesPlan`.
* :mod:`~medres.io.dicom.headers`: one file's header -> slice records.
* :mod:`~medres.io.dicom.mosaic`: Siemens mosaic geometry and untiling.
* :mod:`~medres.io.dicom.split`: one series -> several volumes.
* :mod:`~medres.io.dicom.plan`: slices of one volume -> a checked plan and affine.
* :mod:`~medres.io.dicom.pixels`: decoding, bit masking, Modality LUT / rescale.
* :mod:`~medres.io.dicom.loader`: plan -> Volume.

Example:
    >>> from pathlib import Path
    >>> from medres.io.dicom import load_dicom_series
    >>> vol = load_dicom_series(sorted(Path("sample_data/ct_phantom_dicom").iterdir()))
    ... # doctest: +SKIP
"""

from __future__ import annotations

from medres.errors import LoadError
from medres.io.dicom.dataset import (
    NON_IMAGE_MODALITIES,
    NON_IMAGE_SOP_WORDS,
    non_image_reason,
    read_dataset,
    regular_file_problem,
    sniff_dicom,
    transfer_syntax,
)
from medres.io.dicom.fields import (
    MAX_FRAMES,
    MAX_PIXEL_SPACING_MM,
    MAX_POSITION_MM,
    MAX_RESCALE_INTERCEPT,
    ORIENTATION_REPAIR_TOL,
    ORIENTATION_TOL,
    POSITION_TOL_MM,
    RESCALE_SLOPE_RANGE,
    one_line,
)
from medres.io.dicom.headers import PIXEL_SPACING_ASSUMED, read_slice_headers
from medres.io.dicom.loader import load_dicom_series
from medres.io.dicom.pixels import decode_pixels
from medres.io.dicom.plan import (
    MAX_SLICE_THICKNESS_MM,
    SLICE_THICKNESS_ASSUMED,
    choose_output_dtype,
    plan_series,
    series_folder,
    slice_normal,
)
from medres.io.dicom.records import MosaicGeometry, SeriesPlan, SliceHeader
from medres.io.dicom.split import split_volumes

__all__ = [
    "MAX_FRAMES",
    "MAX_PIXEL_SPACING_MM",
    "MAX_POSITION_MM",
    "MAX_RESCALE_INTERCEPT",
    "MAX_SLICE_THICKNESS_MM",
    "NON_IMAGE_MODALITIES",
    "NON_IMAGE_SOP_WORDS",
    "ORIENTATION_REPAIR_TOL",
    "ORIENTATION_TOL",
    "PIXEL_SPACING_ASSUMED",
    "POSITION_TOL_MM",
    "RESCALE_SLOPE_RANGE",
    "SLICE_THICKNESS_ASSUMED",
    "LoadError",
    "MosaicGeometry",
    "SeriesPlan",
    "SliceHeader",
    "choose_output_dtype",
    "decode_pixels",
    "load_dicom_series",
    "non_image_reason",
    "one_line",
    "plan_series",
    "read_dataset",
    "read_slice_headers",
    "regular_file_problem",
    "series_folder",
    "slice_normal",
    "sniff_dicom",
    "split_volumes",
    "transfer_syntax",
]
