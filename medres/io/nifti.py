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
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from medres.errors import NiftiError
from medres.io.atomic import write_bytes_atomic
from medres.io.files import open_regular
from medres.io.volume import ScanKind, SourceInfo, Volume
from medres.limits import MAX_CHANNELS, MAX_GZIP_RATIO, MAX_VOXELS, check_allocation
from medres.types import AffineRAS

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: Smallest and largest voxel size (mm) accepted from pixdim or from an affine column.
MIN_VOXEL_MM = 1e-3
MAX_VOXEL_MM = 1e4
#: Largest distance (mm) of the affine's origin from the scanner origin (1 km).
MAX_ORIGIN_MM = 1e6
#: Smallest ``|det(A)| / (|a1| |a2| |a3|)`` of the affine's 3x3 ``A`` (1 for orthogonal axes,
#: cos(shear) for sheared grids, 0 when two axes are parallel).
MIN_AXIS_INDEPENDENCE = 1e-3
#: Largest header + extensions (the data offset ``vox_offset``) accepted, in bytes.
MAX_VOX_OFFSET_BYTES = 64 << 20
#: deflate cannot expand by more than 1032:1, so a gzip file of N bytes holds at most this
#: many times N bytes (plus a little for tiny files): a header declaring more is truncated.
DEFLATE_MAX_RATIO = 1032
#: Above this declared (decompressed) size, a ``.nii.gz`` compressed more than
#: :data:`medres.limits.MAX_GZIP_RATIO` : 1 is refused as a possible gzip bomb. Below it a
#: nearly constant image (an empty mask compresses ~1000:1) is read normally.
GZIP_BOMB_MIN_BYTES = 1 << 30
#: Bytes after the declared image data that are read (and ignored with a warning) before a
#: longer gzip stream is refused.
TRAILING_SLACK_BYTES = 1 << 16
#: Size of the chunks the image data are streamed in.
_CHUNK_BYTES = 8 << 20

_NIFTI1_BYTES = 348
_NIFTI2_BYTES = 540

#: NIfTI datatype code -> (name, numpy type, values per voxel) of the data medres reads.
_READABLE_DATATYPES: dict[int, tuple[str, str, int]] = {
    2: ("uint8", "u1", 1),
    4: ("int16", "i2", 1),
    8: ("int32", "i4", 1),
    16: ("float32", "f4", 1),
    64: ("float64", "f8", 1),
    128: ("RGB24", "u1", 3),
    256: ("int8", "i1", 1),
    512: ("uint16", "u2", 1),
    768: ("uint32", "u4", 1),
    1024: ("int64", "i8", 1),
    1280: ("uint64", "u8", 1),
    2304: ("RGBA32", "u1", 4),
}
#: NIfTI datatype codes medres refuses, with what to do instead.
_REFUSED_DATATYPES: dict[int, str] = {
    0: "datatype 0 (DT_UNKNOWN): the header does not say how voxels are stored; "
    "damaged header or not an image",
    1: "1-bit data (datatype 1, DT_BINARY) is not supported: save it as uint8",
    32: "complex64 data (datatype 32); medres needs real intensities: save the magnitude "
    "(numpy.abs) or the real part as float32 and retry",
    1536: "float128 data (datatype 1536) is not supported: save it as float32 or float64",
    1792: "complex128 data (datatype 1792); medres needs real intensities: save the "
    "magnitude (numpy.abs) or the real part as float32 and retry",
    2048: "complex256 data (datatype 2048); medres needs real intensities: save the "
    "magnitude (numpy.abs) or the real part as float32 and retry",
}
#: NIfTI xyzt_units spatial codes that are not millimetres.
_OTHER_UNITS = {1: "metres", 3: "micrometres"}


def is_nifti_path(path: str | Path) -> bool:
    """True for ``.nii`` and ``.nii.gz`` file names (case-insensitive)."""
    name = Path(path).name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


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
        try:
            header = _read_header(stream, path)
            layout = _data_layout(header, path, notes)
            affine = _header_affine(header, layout, path, notes)
            _check_sizes(layout, path, file_bytes=file_bytes, compressed=compressed)
            _skip(stream, layout.offset - header.n_bytes, path, layout)
            array, n_bad = _read_data(stream, layout, path)
            if compressed:  # reading on to the end of the stream checks its CRC and length
                trailing_count = len(_read_upto(stream, TRAILING_SLACK_BYTES + 1))
            else:
                trailing_count = file_bytes - layout.offset - layout.data_bytes
        except (EOFError, OSError, zlib.error) as exc:
            if not compressed:
                raise NiftiError(f"{path}: cannot read the file: {exc}") from exc
            raise NiftiError(
                f"{path}: truncated or corrupt gzip stream ({exc}); re-export or re-download "
                "the file"
            ) from exc
    if compressed and trailing_count > TRAILING_SLACK_BYTES:
        raise NiftiError(
            f"{path}: the gzip stream holds more than {TRAILING_SLACK_BYTES} bytes after the "
            f"{_human_bytes(layout.data_bytes)} of image data the header declares "
            f"({layout.description}): a gzip bomb or a damaged file; re-export it"
        )
    if trailing_count > 0:
        notes.append(f"{trailing_count} bytes after the image data were ignored")
    if n_bad:
        raise NiftiError(f"{path}: {_non_finite_message(n_bad, array.size, layout)}")
    description = bytes(header.field("descrip")).split(b"\x00", 1)[0]
    text = description.decode("latin-1", "replace").strip()
    source = SourceInfo(
        kind=ScanKind.NIFTI,
        paths=(str(path),),
        series_description=nifti_stem(path),
        extra={"nifti_description": text} if text else {},
    )
    for note in notes:
        logger.debug("%s: %s", path, note)
    return Volume(
        array=array,
        affine=affine,
        source=source,
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
        raw = stack.enter_context(open_regular(path, error=NiftiError, what="NIfTI file"))
        file_bytes = os.fstat(raw.fileno()).st_size
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: io.BufferedIOBase = raw
        if compressed:
            stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        try:
            header = _read_header(stream, path)
        except (EOFError, OSError, zlib.error) as exc:
            raise NiftiError(f"{path}: cannot read the NIfTI header: {exc}") from exc
    layout = _data_layout(header, path, notes)
    affine = _header_affine(header, layout, path, notes)
    _check_sizes(layout, path, file_bytes=file_bytes, compressed=compressed)
    return layout.spatial, affine


# --- opening -----------------------------------------------------------------------


def _read_upto(stream: io.BufferedIOBase, n_bytes: int) -> bytes:
    """Up to ``n_bytes`` from ``stream``, fewer only at its end."""
    parts: list[bytes] = []
    left = n_bytes
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _readinto_full(stream: io.BufferedIOBase, view: memoryview) -> int:
    """Fill ``view`` from ``stream``; returns the bytes read (fewer only at its end)."""
    done = 0
    total = len(view)
    while done < total:
        n = stream.readinto(view[done:])
        if not n:
            break
        done += n
    return done


# --- header ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    """A raw NIfTI-1/2 header record, nothing in it checked yet."""

    record: np.void
    version: int
    n_bytes: int
    endian: Literal["<", ">"]  # from sizeof_hdr

    def field(self, name: str) -> Any:
        return self.record[name]

    def number(self, name: str) -> float:
        return float(self.record[name])

    def integer(self, name: str) -> int:
        return int(self.record[name])


def _read_header(stream: io.BufferedIOBase, path: Path) -> _Header:
    from nibabel.nifti1 import header_dtype as nifti1_dtype
    from nibabel.nifti2 import header_dtype as nifti2_dtype

    block = _read_upto(stream, _NIFTI1_BYTES)
    if len(block) < 4:
        raise NiftiError(
            f"{path}: not a readable NIfTI file: {len(block)} bytes, shorter than a NIfTI header"
        )
    little, big = int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")
    if _NIFTI1_BYTES in (little, big):
        version, n_bytes, dtype = 1, _NIFTI1_BYTES, nifti1_dtype
    elif _NIFTI2_BYTES in (little, big):
        version, n_bytes, dtype = 2, _NIFTI2_BYTES, nifti2_dtype
        block += _read_upto(stream, _NIFTI2_BYTES - _NIFTI1_BYTES)
    else:
        raise NiftiError(
            f"{path}: not a readable NIfTI file: sizeof_hdr is {little} where NIfTI-1 has "
            f"{_NIFTI1_BYTES} and NIfTI-2 {_NIFTI2_BYTES}"
        )
    if len(block) < n_bytes:
        raise NiftiError(
            f"{path}: not a readable NIfTI file: it ends after {len(block)} bytes, inside the "
            f"{n_bytes}-byte NIfTI-{version} header (truncated)"
        )
    endian: Literal["<", ">"] = "<" if n_bytes == little else ">"
    record = np.frombuffer(block, dtype=dtype.newbyteorder(endian), count=1)[0]
    magic = bytes(record["magic"])[:3]
    if magic == f"ni{version}".encode():
        raise NiftiError(
            f"{path}: this is the header of a .hdr/.img pair (magic 'ni{version}'); medres reads "
            "single-file NIfTI: convert it (e.g. nibabel.save(nibabel.load('x.hdr'), 'x.nii.gz'))"
        )
    if magic != f"n+{version}".encode():
        raise NiftiError(
            f"{path}: not a readable NIfTI file: magic is {magic!r} where NIfTI-{version} has "
            f"'n+{version}' (damaged header, or an Analyze file)"
        )
    return _Header(record=record, version=version, n_bytes=n_bytes, endian=endian)


@dataclass(frozen=True)
class _Layout:
    """How the image data are stored, every value checked against the NIfTI rules."""

    shape: tuple[int, ...]  # the declared dims (trailing 1s beyond the 3rd axis dropped)
    spatial: tuple[int, int, int]  # x, y, z (z = 1 for 2D files)
    n_t: int  # 4th axis
    n_u: int  # 5th axis
    file_dtype: np.dtype[Any]  # byte order of the file
    out_dtype: np.dtype[Any]  # native
    components: int  # values per voxel in the file (3 RGB24, 4 RGBA32)
    slope: float | None  # None: no scaling
    inter: float
    check_finite: bool
    offset: int
    datatype_name: str

    @property
    def n_channels(self) -> int:
        return self.n_t * self.n_u * min(self.components, 3)

    @property
    def n_voxels(self) -> int:
        return math.prod(self.spatial)

    @property
    def data_bytes(self) -> int:
        return self.n_voxels * self.n_t * self.n_u * self.components * self.file_dtype.itemsize

    @property
    def out_bytes(self) -> int:
        return self.n_voxels * self.n_channels * self.out_dtype.itemsize

    @property
    def description(self) -> str:
        return " x ".join(str(s) for s in self.shape) + f" {self.datatype_name}"


def _data_layout(header: _Header, path: Path, notes: list[str]) -> _Layout:
    dim = [int(v) for v in header.field("dim")]
    n_dims = dim[0]
    if not 1 <= n_dims <= 7:
        raise NiftiError(
            f"{path}: dim[0] is {n_dims}; NIfTI allows 1 to 7 axes: damaged header or not NIfTI"
        )
    shape = dim[1 : n_dims + 1]
    for axis, size in enumerate(shape, start=1):
        if size < 1:
            raise NiftiError(
                f"{path}: dim[{axis}] is {size}; every axis needs at least one voxel: damaged "
                "header"
            )
    if n_dims == 1:
        raise NiftiError(
            f"{path}: 1-dimensional data (dim[0] = 1, {shape[0]} values) is not supported: "
            "medres reads 2D to 5D images"
        )
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 5:
        raise NiftiError(
            f"{path}: {len(shape)}-dimensional data ({' x '.join(map(str, shape))}) is not "
            "supported: medres reads 2D to 5D images"
        )
    padded = [*shape, 1, 1, 1][:5]
    spatial = (padded[0], padded[1], padded[2])
    code = header.integer("datatype")
    if code in _REFUSED_DATATYPES:
        raise NiftiError(f"{path}: {_REFUSED_DATATYPES[code]}")
    if code not in _READABLE_DATATYPES:
        raise NiftiError(
            f"{path}: unknown datatype code {code} (not in the NIfTI standard): damaged header "
            "or not NIfTI"
        )
    name, numpy_code, components = _READABLE_DATATYPES[code]
    file_dtype = np.dtype(numpy_code).newbyteorder(header.endian)
    bits = 8 * file_dtype.itemsize * components
    bitpix = header.integer("bitpix")
    if bitpix != bits:
        notes.append(f"bitpix is {bitpix} but datatype {name} has {bits} bits; used the datatype")
    slope, inter = _scaling(header, path, components, notes)
    out_dtype = np.dtype(numpy_code)
    is_float = file_dtype.kind == "f"
    if slope is not None or (file_dtype.itemsize == 8 and is_float):
        out_dtype = np.dtype(np.float32)
    check_finite = out_dtype.kind == "f"
    if slope is not None and not is_float:  # integers scaled by finite numbers stay finite
        info = np.iinfo(file_dtype)
        largest = abs(slope) * max(abs(int(info.min)), int(info.max)) + abs(inter)
        check_finite = not largest < float(np.finfo(np.float32).max)
    offset = _data_offset(header, path, notes)
    return _Layout(
        shape=tuple(shape),
        spatial=spatial,
        n_t=padded[3],
        n_u=padded[4],
        file_dtype=file_dtype,
        out_dtype=out_dtype,
        components=components,
        slope=slope,
        inter=inter,
        check_finite=check_finite,
        offset=offset,
        datatype_name=name,
    )


def _scaling(
    header: _Header, path: Path, components: int, notes: list[str]
) -> tuple[float | None, float]:
    """``(slope, inter)`` to apply, or ``(None, 0.0)``: the NIfTI rule, as nibabel reads it.

    NIfTI-1 says ``scl_slope`` 0 means "no scaling"; nibabel (and so medres) also reads a
    non-finite slope that way (with a warning here). A valid slope with a non-finite
    intercept is refused. RGB data are never scaled.
    """
    slope, inter = header.number("scl_slope"), header.number("scl_inter")
    if components > 1:
        if slope not in (0.0, 1.0) or inter != 0.0:
            notes.append(f"scl_slope {slope:g} / scl_inter {inter:g} ignored for RGB data")
        return None, 0.0
    if slope == 0.0:
        return None, 0.0
    if not math.isfinite(slope):
        notes.append(
            f"scl_slope is {slope:g}: read the stored values unscaled (NIfTI and nibabel treat "
            "a zero or non-finite slope as 'no scaling')"
        )
        return None, 0.0
    if not math.isfinite(inter):
        raise NiftiError(
            f"{path}: scl_inter is {inter:g} with scl_slope {slope:g}, so no intensity can be "
            "computed; set scl_inter to 0 (or scl_slope to 0 for no scaling) or re-export"
        )
    if slope == 1.0 and inter == 0.0:
        return None, 0.0
    return slope, inter


def _data_offset(header: _Header, path: Path, notes: list[str]) -> int:
    value = header.number("vox_offset")
    minimum = header.n_bytes + 4
    if not math.isfinite(value) or value != int(value):
        raise NiftiError(
            f"{path}: vox_offset is {value:g}; it must be a whole number of bytes, at least "
            f"{minimum}: damaged header"
        )
    offset = header.integer("vox_offset") if header.version == 2 else int(value)
    if offset < header.n_bytes:
        raise NiftiError(
            f"{path}: vox_offset {offset} points inside the {header.n_bytes}-byte header; the "
            f"image data of a .nii file start at byte {minimum} or later: damaged header"
        )
    if offset > MAX_VOX_OFFSET_BYTES:
        raise NiftiError(
            f"{path}: vox_offset {offset} puts {_human_bytes(offset)} of header extensions "
            f"before the image data, above the {_human_bytes(MAX_VOX_OFFSET_BYTES)} medres "
            "accepts: damaged header"
        )
    if offset < minimum:
        notes.append(
            f"vox_offset {offset} is below the {minimum} NIfTI requires; read the image data "
            f"from byte {offset}"
        )
    return offset


def _check_sizes(layout: _Layout, path: Path, *, file_bytes: int, compressed: bool) -> None:
    """Declared sizes against the limits, the file and the memory budget, before allocating."""
    if layout.n_voxels > MAX_VOXELS:
        raise NiftiError(
            f"{path}: the header declares {layout.description} = {layout.n_voxels:.3g} voxels, "
            f"above medres's limit of {MAX_VOXELS:.3g} (medres.limits.MAX_VOXELS): damaged "
            "header, or crop/downsample the image"
        )
    if layout.n_channels > MAX_CHANNELS:
        raise NiftiError(
            f"{path}: the header declares {layout.description}, i.e. {layout.n_channels} "
            f"channels (volumes), above medres's limit of {MAX_CHANNELS} "
            "(medres.limits.MAX_CHANNELS): split the series (e.g. fslsplit) and read the "
            "volumes you need"
        )
    declared = layout.offset + layout.data_bytes
    if not compressed and declared > file_bytes:
        there = max(file_bytes - layout.offset, 0)
        raise NiftiError(
            f"{path}: truncated: the header declares {_human_bytes(layout.data_bytes)} of image "
            f"data ({layout.description}) from byte {layout.offset}, but the file holds "
            f"{_human_bytes(there)} there; re-export or re-download the file"
        )
    if compressed and declared > DEFLATE_MAX_RATIO * file_bytes + 4096:
        raise NiftiError(
            f"{path}: truncated or corrupt gzip stream: the header declares "
            f"{_human_bytes(declared)} ({layout.description}) but a {_human_bytes(file_bytes)} "
            f"gzip file holds at most {DEFLATE_MAX_RATIO}x that; re-export or re-download the file"
        )
    reason = check_allocation(f"the image ({layout.description})", layout.out_bytes)
    if reason is not None:
        raise NiftiError(f"{path}: {reason}")
    if compressed and declared > GZIP_BOMB_MIN_BYTES and declared > MAX_GZIP_RATIO * file_bytes:
        raise NiftiError(
            f"{path}: the header declares {_human_bytes(declared)} ({layout.description}) in a "
            f"{_human_bytes(file_bytes)} gzip file ({declared / max(file_bytes, 1):.0f}:1, above "
            f"medres's {MAX_GZIP_RATIO}:1 limit for files over {_human_bytes(GZIP_BOMB_MIN_BYTES)}"
            "): a gzip bomb or a nearly constant image; if the file is genuine, decompress it "
            "(gunzip) and read the .nii"
        )


def _human_bytes(n_bytes: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} bytes"


# --- geometry ----------------------------------------------------------------------


def _header_affine(
    header: _Header, layout: _Layout, path: Path, notes: list[str]
) -> npt.NDArray[np.float64]:
    """The affine nibabel would choose, refused unless finite, non-degenerate and plausible."""
    pixdim = [float(v) for v in header.field("pixdim")]
    n_spatial = min(len(layout.shape), 3)
    for axis in range(1, n_spatial + 1):
        size = pixdim[axis]
        if not MIN_VOXEL_MM <= size <= MAX_VOXEL_MM:  # also False for NaN
            raise NiftiError(
                f"{path}: pixdim[{axis}] (voxel size along {'xyz'[axis - 1]}) is {size:g}; "
                f"voxel sizes must be finite and within {MIN_VOXEL_MM:g}..{MAX_VOXEL_MM:g} mm: "
                "fix the header (nibabel: header.set_zooms) or re-export"
            )
    for axis in range(n_spatial + 1, 4):
        if not MIN_VOXEL_MM <= pixdim[axis] <= MAX_VOXEL_MM:
            notes.append(
                f"pixdim[{axis}] of the missing {'xyz'[axis - 1]} axis is "
                f"{pixdim[axis]:g}; assumed 1 mm"
            )
            pixdim[axis] = 1.0
    sform_code, qform_code = header.integer("sform_code"), header.integer("qform_code")
    affine = np.eye(4)
    if sform_code != 0:
        source = "sform (srow_x, srow_y, srow_z)"
        for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
            values = np.asarray(header.field(name), dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise NiftiError(
                    f"{path}: sform field {name} is {values.tolist()}, not finite: fix the "
                    "header (or set sform_code 0 to use the qform) or re-export"
                )
            affine[row] = values
        if not 0 < sform_code <= 5:
            notes.append(f"sform_code {sform_code} is not a NIfTI code; used the sform")
    elif qform_code != 0:
        source = "qform (quatern_b/c/d, qoffset_x/y/z, pixdim)"
        affine = _qform(header, pixdim, path, notes)
        if not 0 < qform_code <= 5:
            notes.append(f"qform_code {qform_code} is not a NIfTI code; used the qform")
    else:
        from nibabel.volumeutils import shape_zoom_affine

        source = "pixdim (qform_code and sform_code are 0)"
        with np.errstate(all="ignore"):
            affine = np.asarray(
                shape_zoom_affine(layout.spatial, pixdim[1:4], True), dtype=np.float64
            )
        notes.append(
            "qform_code and sform_code are 0: the file stores no orientation; assumed "
            "nibabel's default (x flipped, origin at the image centre)"
        )
    _check_affine(affine, source, path)
    units = header.integer("xyzt_units") & 0x07
    if units in _OTHER_UNITS:
        notes.append(
            f"xyzt_units says {_OTHER_UNITS[units]}; the affine is read as millimetres, as "
            "nibabel does"
        )
    return affine


def _qform(
    header: _Header, pixdim: list[float], path: Path, notes: list[str]
) -> npt.NDArray[np.float64]:
    """Affine from the qform fields, as NIfTI's reference library builds it."""
    names = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
    values = {name: header.number(name) for name in names}
    for name, value in values.items():
        if not math.isfinite(value):
            raise NiftiError(
                f"{path}: qform field {name} is {value:g}, not finite: fix the header (or set "
                "qform_code 0) or re-export"
            )
    b, c, d = values["quatern_b"], values["quatern_c"], values["quatern_d"]
    norm2 = b * b + c * c + d * d
    if norm2 > 1.0 + 1e-4:
        raise NiftiError(
            f"{path}: qform quaternion (quatern_b, quatern_c, quatern_d) = ({b:g}, {c:g}, "
            f"{d:g}) has b²+c²+d² = {norm2:.4g} > 1, not a rotation: fix the header or re-export"
        )
    if norm2 > 1.0:  # rounding: renormalise as nifti1_io does
        scale = 1.0 / math.sqrt(norm2)
        b, c, d, a = b * scale, c * scale, d * scale, 0.0
    else:
        a = math.sqrt(1.0 - norm2)
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    qfac = pixdim[0]
    if qfac not in (1.0, -1.0):
        notes.append(
            f"pixdim[0] (qfac) is {qfac:g}, not 1 or -1; read as {-1 if qfac < 0 else 1} as "
            "the NIfTI reference library does"
        )
        qfac = -1.0 if qfac < 0 else 1.0
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([pixdim[1], pixdim[2], pixdim[3] * qfac])
    affine[:3, 3] = [values["qoffset_x"], values["qoffset_y"], values["qoffset_z"]]
    return affine


def _check_affine(affine: npt.NDArray[np.float64], source: str, path: Path) -> None:
    if not np.all(np.isfinite(affine)):
        raise NiftiError(f"{path}: the {source} holds non-finite values: fix the header")
    with np.errstate(all="ignore"):
        norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        for axis, size in enumerate(norms):
            if not MIN_VOXEL_MM <= size <= MAX_VOXEL_MM:
                raise NiftiError(
                    f"{path}: the {source} gives a voxel size of {size:g} mm along "
                    f"{'xyz'[axis]}; voxel sizes must be within {MIN_VOXEL_MM:g}..{MAX_VOXEL_MM:g}"
                    " mm: fix the header or re-export"
                )
        independence = abs(float(np.linalg.det(affine[:3, :3]))) / float(np.prod(norms))
    if not independence >= MIN_AXIS_INDEPENDENCE:
        raise NiftiError(
            f"{path}: the {source} is degenerate (|det| / product of voxel sizes = "
            f"{independence:.2g}): two voxel axes are (nearly) parallel; fix the header"
        )
    origin = float(np.abs(affine[:3, 3]).max())
    if origin > MAX_ORIGIN_MM:
        raise NiftiError(
            f"{path}: the {source} puts the first voxel {origin:g} mm from the origin, beyond "
            f"the {MAX_ORIGIN_MM:g} mm medres accepts: fix the header"
        )


# --- data --------------------------------------------------------------------------


def _skip(stream: io.BufferedIOBase, n_bytes: int, path: Path, layout: _Layout) -> None:
    """Read past the header extensions up to ``vox_offset``."""
    while n_bytes > 0:
        part = stream.read(min(n_bytes, 1 << 20))
        if not part:
            raise NiftiError(
                f"{path}: truncated: the file ends before vox_offset {layout.offset}, where the "
                "image data should start; re-export or re-download the file"
            )
        n_bytes -= len(part)


def _blocks(shape: tuple[int, int, int], per_chunk: int) -> Iterator[tuple[slice, slice, slice]]:
    """Consecutive file-order pieces of one volume as ``(x, y, z)`` slices of its grid.

    NIfTI stores x fastest, then y, then z; a piece is whole slices, whole rows of one
    slice, or part of one row, of at most ``per_chunk`` voxels.
    """
    nx, ny, nz = shape
    everything = slice(None)
    if nx * ny <= per_chunk:
        step = per_chunk // (nx * ny)
        for z in range(0, nz, step):
            yield everything, everything, slice(z, min(z + step, nz))
    elif nx <= per_chunk:
        step = per_chunk // nx
        for z in range(nz):
            for y in range(0, ny, step):
                yield everything, slice(y, min(y + step, ny)), slice(z, z + 1)
    else:
        for z in range(nz):
            for y in range(ny):
                for x in range(0, nx, per_chunk):
                    yield slice(x, min(x + per_chunk, nx)), slice(y, y + 1), slice(z, z + 1)


def _read_data(
    stream: io.BufferedIOBase, layout: _Layout, path: Path
) -> tuple[npt.NDArray[Any], int]:
    """Stream the image data into one ``(C, x, y, z)`` array; also count non-finite values."""
    item = layout.file_dtype.itemsize * layout.components
    per_chunk = max(1, min(_CHUNK_BYTES // item, layout.n_voxels))
    buffer = np.empty(per_chunk * item, dtype=np.uint8)
    view = buffer.data
    scratch = np.empty(per_chunk, np.float32) if layout.out_dtype.kind == "f" else None
    out = np.empty((layout.n_channels, *layout.spatial), dtype=layout.out_dtype)
    n_bad = 0
    n_read = 0
    width = min(layout.components, 3)
    for volume in range(layout.n_t * layout.n_u):
        t, u = volume % layout.n_t, volume // layout.n_t
        channel = (t * layout.n_u + u) * width  # a 5th axis follows the 4th, as numpy reshape
        for xs, ys, zs in _blocks(layout.spatial, per_chunk):
            dest = out[channel : channel + width, xs, ys, zs]
            block = dest.shape[1:]
            count = block[0] * block[1] * block[2]
            got = _readinto_full(stream, view[: count * item])
            n_read += got
            if got < count * item:
                raise NiftiError(
                    f"{path}: truncated: the image data end after {_human_bytes(n_read)} of the "
                    f"{_human_bytes(layout.data_bytes)} the header declares ({layout.description});"
                    " re-export or re-download the file"
                )
            raw = buffer[: count * item].view(layout.file_dtype)
            if layout.components > 1:
                voxels = raw.reshape(block[2], block[1], block[0], layout.components)
                dest[...] = voxels[..., :width].transpose(3, 2, 1, 0)
                continue
            values: npt.NDArray[Any] = raw
            if scratch is not None and (layout.slope is not None or raw.dtype != scratch.dtype):
                values = scratch[:count]
                with np.errstate(all="ignore"):
                    if layout.slope is None:
                        np.copyto(values, raw, casting="unsafe")
                    else:
                        np.multiply(raw, layout.slope, out=values, casting="unsafe")
                        if layout.inter:
                            values += np.float32(layout.inter)
            if layout.check_finite:
                n_bad += count - int(np.count_nonzero(np.isfinite(values)))
            dest[0] = values.reshape(block[2], block[1], block[0]).T
    return out, n_bad


def _non_finite_message(n_bad: int, n_total: int, layout: _Layout) -> str:
    share = 100.0 * n_bad / n_total
    percent = f"{share:.1f}" if share >= 0.1 else f"{share:.2g}"
    cause = ""
    if layout.slope is not None:
        cause = f" after scaling (scl_slope {layout.slope:g}, scl_inter {layout.inter:g})"
    elif layout.file_dtype.kind == "f" and layout.file_dtype.itemsize == 8:
        cause = " (float64 values beyond the float32 range count as infinite)"
    return (
        f"{n_bad} of {n_total} voxels ({percent} %) are NaN or infinite{cause}; medres needs "
        "finite intensities: replace them (e.g. numpy.nan_to_num) and retry"
    )


def nifti_bytes(
    array: npt.NDArray[Any],
    affine: AffineRAS,
    *,
    compress: bool = True,
    scale: float | None = None,
) -> bytes:
    """Serialise a spatial ``(x, y[, z][, t])`` array and its RAS affine to NIfTI-1 bytes.

    gzip output carries no timestamp, so the same input gives the same bytes.

    Args:
        array: Values to store, in the dtype to store them in.
        affine: 4x4 voxel -> RAS mm.
        compress: gzip the bytes.
        scale: NIfTI ``scl_slope``: readers see ``stored * scale`` (e.g. uint8 with
            ``1/255`` stores probabilities in one byte per voxel).
    """
    import nibabel as nib

    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if scale is not None:
        img.header.set_slope_inter(scale, 0.0)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def write_nifti(
    path: str | Path,
    volume_or_array: Volume | npt.NDArray[Any],
    affine: AffineRAS | None = None,
) -> Path:
    """Write a volume (or a spatial array + affine) as NIfTI, atomically.

    Single-channel volumes are written 3D; several channels become the 4th axis.

    Args:
        path: Destination ending in ``.nii`` or ``.nii.gz``.
        volume_or_array: A :class:`Volume`, or a spatial array ``(x, y, z)``.
        affine: Required with an array; must not be given with a Volume.

    Returns:
        The written path.

    Raises:
        NiftiError: Bad arguments. OutputError: The file cannot be written.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise NiftiError(f"{path}: NIfTI output must end in .nii or .nii.gz")
    if isinstance(volume_or_array, Volume):
        if affine is not None:
            raise NiftiError("pass either a Volume or an array with an affine, not both")
        vol = volume_or_array
        if vol.n_channels == 1:
            data = vol.array[0]
        else:  # channels on the 4th axis; a 2D image gets a unit z axis first
            spatial = vol.array if vol.spatial_ndim == 3 else vol.array[..., None]
            data = np.moveaxis(spatial, 0, -1)
        aff = vol.affine
    else:
        if affine is None:
            raise NiftiError(f"{path}: an affine is needed to write an array")
        data, aff = volume_or_array, affine
    compress = path.name.lower().endswith(".gz")
    return write_bytes_atomic(path, nifti_bytes(np.asarray(data), aff, compress=compress))
