"""The NIfTI-1/2 header: parsed on its own, then every value checked.

Owns the raw header record (:class:`_Header`, read by :func:`_read_header`), the data
layout it declares (:class:`_Layout` from :func:`_data_layout`: axes, datatype, scaling,
data offset) and the check of the declared sizes against the file, the limits of
:mod:`medres.limits` and the memory budget (:func:`_check_sizes`), all before any image
data is read or allocated. Each failure is one :class:`~medres.errors.NiftiError` line
naming the file and the field; what had to be assumed goes to the caller's ``notes``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medres.errors import NiftiError
from medres.limits import MAX_CHANNELS, MAX_GZIP_RATIO, MAX_VOXELS, check_allocation

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


@dataclass(frozen=True)
class _Header:
    """A raw NIfTI-1/2 header record, nothing in it checked yet."""

    record: np.void
    version: int
    n_bytes: int
    endian: Literal["<", ">"]  # from sizeof_hdr

    def field(self, name: str) -> Any:
        """The raw value of header field ``name``."""
        return self.record[name]

    def number(self, name: str) -> float:
        """Header field ``name`` as a float."""
        return float(self.record[name])

    def integer(self, name: str) -> int:
        """Header field ``name`` as an int."""
        return int(self.record[name])


def _read_header(stream: io.BufferedIOBase, path: Path) -> _Header:
    """The NIfTI-1 or NIfTI-2 header at the start of ``stream`` (byte order: ``sizeof_hdr``).

    Raises:
        NiftiError: Too short, an unknown ``sizeof_hdr``, a ``.hdr``/``.img`` pair or a bad
            magic.
    """
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
        """Channels of the output array: 4th x 5th axis x colour components (at most 3)."""
        return self.n_t * self.n_u * min(self.components, 3)

    @property
    def n_voxels(self) -> int:
        """Voxels of one spatial volume."""
        return math.prod(self.spatial)

    @property
    def data_bytes(self) -> int:
        """Bytes of image data the header declares."""
        return self.n_voxels * self.n_t * self.n_u * self.components * self.file_dtype.itemsize

    @property
    def out_bytes(self) -> int:
        """Bytes of the output array."""
        return self.n_voxels * self.n_channels * self.out_dtype.itemsize

    @property
    def description(self) -> str:
        """The declared shape and datatype, e.g. ``"96 x 80 x 40 int16"``."""
        return " x ".join(str(s) for s in self.shape) + f" {self.datatype_name}"


def _data_layout(header: _Header, path: Path, notes: list[str]) -> _Layout:
    """The checked data layout: axes (2D to 5D), datatype, scaling and data offset.

    Raises:
        NiftiError: A dimension, datatype, scaling or offset medres cannot use.
    """
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
    """Where the image data start (``vox_offset``), refused inside the header or too far.

    Raises:
        NiftiError: Not a whole number, inside the header, or above
            :data:`MAX_VOX_OFFSET_BYTES`.
    """
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
    """``n_bytes`` as ``"1.5 MiB"`` (or ``"12 bytes"``)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} bytes"
