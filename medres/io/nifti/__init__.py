"""NIfTI-1/2 reading and writing with the affine preserved.

The affine read is the one nibabel chooses (sform when ``sform_code`` > 0, else qform when
``qform_code`` > 0, else the pixdim-only Analyze default), which is already voxel -> RAS+
mm, the medres convention; writing stores it as both sform and qform (code 1, scanner) so
every viewer agrees. Files are written atomically and gzip output is byte-reproducible (no
timestamp).

Reading distrusts every header value (``docs/user-guide.md``, "Hostile input"): the header
is parsed on its own first and its dimensions, data type, data offset, scaling and
geometry are checked, and the declared data size is compared with the file size (or, for
``.nii.gz``, with what a gzip stream of that size can hold) and with the memory budget of
:mod:`medres.limits` before the one output array is allocated. The data are then streamed
into that array in chunks of a few MiB (no second full copy), a gzip stream is read to its
end so that its CRC and length are checked, and float intensities must be finite. Every
failure is one :class:`~medres.errors.NiftiError` line naming the file; what had to be
assumed (an out-of-range qfac, a non-finite ``scl_slope`` read as "no scaling"...) goes to
:attr:`Volume.warnings`.

This module owns opening a file and the order of the steps (:func:`read_nifti`,
:func:`read_nifti_grid`); each step lives in its own module:

* :mod:`~medres.io.nifti.names`: which paths are NIfTI, and their stems.
* :mod:`~medres.io.nifti.header`: the header record, the data layout it declares, sizes.
* :mod:`~medres.io.nifti.geometry`: the affine (sform, qform or pixdim) and its checks.
* :mod:`~medres.io.nifti.data`: streaming the image data into the output array.
* :mod:`~medres.io.nifti.write`: :func:`nifti_bytes` and :func:`write_nifti`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import NiftiError
from medres.io.files import open_regular
from medres.io.nifti.data import _non_finite_message, _read_data, _skip
from medres.io.nifti.geometry import (
    MAX_ORIGIN_MM,
    MAX_VOXEL_MM,
    MIN_AXIS_INDEPENDENCE,
    MIN_VOXEL_MM,
    _header_affine,
)
from medres.io.nifti.header import (
    DEFLATE_MAX_RATIO,
    GZIP_BOMB_MIN_BYTES,
    MAX_VOX_OFFSET_BYTES,
    TRAILING_SLACK_BYTES,
    _check_sizes,
    _data_layout,
    _Header,
    _human_bytes,
    _Layout,
    _read_header,
    _read_upto,
)
from medres.io.nifti.names import NIFTI_SUFFIXES, is_nifti_path, nifti_stem
from medres.io.nifti.write import nifti_bytes, write_nifti
from medres.io.volume import ScanKind, SourceInfo, Volume

logger = logging.getLogger(__name__)

#: Size of the chunks the image data are streamed in.
_CHUNK_BYTES = 8 << 20


def read_nifti(path: str | Path, *, channel_axis_from: int = 3) -> Volume:
    """Read a single-file NIfTI-1 or NIfTI-2 image (``.nii``/``.nii.gz``) into a :class:`Volume`.

    Nothing the header says is trusted: see the module docstring for the checks. The array
    is indexed ``(C, x, y, z)`` in the file's own voxel order and the affine maps ``(x, y,
    z)`` to RAS+ mm.

    Args:
        path: ``.nii`` or ``.nii.gz`` file (recognised by its content: a gzip stream or not).
        channel_axis_from: The axis that becomes the channel axis; only 3 is supported: a
            4th (and 5th) axis becomes the channels, 3D files get one channel, 2D files one
            channel and one slice. RGB24/RGBA32 voxels become channels ``R, G, B``.

    Returns:
        Volume with array ``(C, x, y, z)`` (C-contiguous, native byte order) on the file's
        own grid. Integer data without scaling keep their dtype (int16 stays int16); scaled
        data and float64 data become float32.

    Raises:
        NiftiError: The file is missing, not a regular file, not NIfTI, truncated, damaged,
            too large for the limits, or holds values medres cannot use; the one-line
            message names the file, the field and what to do.

    Example:
        >>> vol = read_nifti("sample_data/ct_phantom.nii.gz")  # doctest: +SKIP
        >>> vol.spatial_shape  # doctest: +SKIP
        (96, 80, 40)
    """
    if channel_axis_from != 3:
        raise ValueError(f"channel_axis_from must be 3 (the 4th axis); got {channel_axis_from}")
    path = Path(path)
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        stream, file_bytes, compressed = _open(stack, path, notes)
        try:
            header, layout, affine = _checked_header(
                stream, path, notes, file_bytes=file_bytes, compressed=compressed
            )
            _skip(stream, layout.offset - header.n_bytes, path, layout)
            array, n_bad = _read_data(stream, layout, path, chunk_bytes=_CHUNK_BYTES)
            if compressed:  # reading on to the end of the stream checks its CRC and length
                trailing_count = len(_read_upto(stream, TRAILING_SLACK_BYTES + 1))
            else:
                trailing_count = file_bytes - layout.offset - layout.data_bytes
        except (EOFError, OSError, zlib.error) as exc:
            raise _stream_error(path, exc, compressed=compressed) from exc
    _check_trailing(path, layout, trailing_count, notes, compressed=compressed)
    if n_bad:
        raise NiftiError(f"{path}: {_non_finite_message(n_bad, array.size, layout)}")
    for note in notes:
        logger.debug("%s: %s", path, note)
    return Volume(
        array=array,
        affine=affine,
        source=_source_info(path, header),
        channel_names=("R", "G", "B") if layout.components > 1 and array.shape[0] == 3 else (),
        warnings=tuple(notes),
    )


def read_nifti_grid(path: str | Path) -> tuple[tuple[int, ...], npt.NDArray[np.float64]]:
    """The spatial shape ``(x, y, z)`` and RAS affine of a NIfTI file, from its header alone.

    The same checks as :func:`read_nifti` apply to the header (axes, datatype, sizes against
    the file, geometry); no image data is read, so it is cheap even for large files.

    Raises:
        NiftiError: As :func:`read_nifti`, for anything the header gets wrong.

    Example:
        >>> shape, affine = read_nifti_grid("sample_data/ct_phantom.nii.gz")  # doctest: +SKIP
    """
    path = Path(path)
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        stream, file_bytes, compressed = _open(stack, path, notes)
        try:
            _, layout, affine = _checked_header(
                stream, path, notes, file_bytes=file_bytes, compressed=compressed
            )
        except (EOFError, OSError, zlib.error) as exc:
            raise NiftiError(f"{path}: cannot read the NIfTI header: {exc}") from exc
    return layout.spatial, affine


def _checked_header(
    stream: io.BufferedIOBase, path: Path, notes: list[str], *, file_bytes: int, compressed: bool
) -> tuple[_Header, _Layout, npt.NDArray[np.float64]]:
    """The header, its data layout and affine, every size checked against the file.

    Raises:
        NiftiError: Anything the header gets wrong (EOFError/OSError/zlib.error while
            reading the header itself pass through, for the caller to word).
    """
    header = _read_header(stream, path)
    layout = _data_layout(header, path, notes)
    affine = _header_affine(header, layout, path, notes)
    _check_sizes(layout, path, file_bytes=file_bytes, compressed=compressed)
    return header, layout, affine


def _open(
    stack: contextlib.ExitStack, path: Path, notes: list[str]
) -> tuple[io.BufferedIOBase, int, bool]:
    """Open ``path`` (a regular file only) on ``stack``, through gzip when its content is gzip.

    A name that says otherwise than the content (``.gz`` or not) is noted in ``notes``.

    Returns:
        The stream to read from, the size of the file on disk and whether it is gzip.

    Raises:
        NiftiError: The file is missing or not a regular file.
    """
    raw = stack.enter_context(open_regular(path, error=NiftiError, what="NIfTI file"))
    file_bytes = os.fstat(raw.fileno()).st_size
    compressed = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    if compressed != path.name.lower().endswith(".gz"):
        notes.append(
            "file content is gzip-compressed although the name does not end in .gz"
            if compressed
            else "file name ends in .gz but the content is not gzip-compressed; read as .nii"
        )
    stream: io.BufferedIOBase = raw
    if compressed:
        stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    return stream, file_bytes, compressed


def _stream_error(path: Path, exc: BaseException, *, compressed: bool) -> NiftiError:
    """The error for a read that failed inside the file (or its gzip stream)."""
    if not compressed:
        return NiftiError(f"{path}: cannot read the file: {exc}")
    return NiftiError(
        f"{path}: truncated or corrupt gzip stream ({exc}); re-export or re-download the file"
    )


def _check_trailing(
    path: Path, layout: _Layout, trailing_count: int, notes: list[str], *, compressed: bool
) -> None:
    """Refuse a gzip stream that goes on well past the image data; note a few bytes more.

    Raises:
        NiftiError: More than :data:`TRAILING_SLACK_BYTES` after the data of a gzip stream.
    """
    if compressed and trailing_count > TRAILING_SLACK_BYTES:
        raise NiftiError(
            f"{path}: the gzip stream holds more than {TRAILING_SLACK_BYTES} bytes after the "
            f"{_human_bytes(layout.data_bytes)} of image data the header declares "
            f"({layout.description}): a gzip bomb or a damaged file; re-export it"
        )
    if trailing_count > 0:
        notes.append(f"{trailing_count} bytes after the image data were ignored")


def _source_info(path: Path, header: _Header) -> SourceInfo:
    """Where the volume came from: the file, its stem and the header's ``descrip`` text."""
    description = bytes(header.field("descrip")).split(b"\x00", 1)[0]
    text = description.decode("latin-1", "replace").strip()
    extra: dict[str, Any] = {"nifti_description": text} if text else {}
    return SourceInfo(
        kind=ScanKind.NIFTI,
        paths=(str(path),),
        series_description=nifti_stem(path),
        extra=extra,
    )


__all__ = [
    "DEFLATE_MAX_RATIO",
    "GZIP_BOMB_MIN_BYTES",
    "MAX_ORIGIN_MM",
    "MAX_VOXEL_MM",
    "MAX_VOX_OFFSET_BYTES",
    "MIN_AXIS_INDEPENDENCE",
    "MIN_VOXEL_MM",
    "NIFTI_SUFFIXES",
    "TRAILING_SLACK_BYTES",
    "is_nifti_path",
    "nifti_bytes",
    "nifti_stem",
    "read_nifti",
    "read_nifti_grid",
    "write_nifti",
]
