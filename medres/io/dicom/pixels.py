"""Pixel data -> stored values -> modality values (HU for CT), for one data set.

This module owns decoding (checked against the header, the limits and the memory budget
before anything is decoded; every decoder failure becomes a medres error naming the
file), the BitsStored mask and sign extension, and the Modality LUT / rescale step.

What pydicom 3's pixel API does and what stays hand-written:

* Decoding: ``Dataset.pixel_array`` (pydicom's decoders and plugins) for everything but
  the commonest case, uncompressed single-frame greyscale, which
  :func:`_native_monochrome` reads straight from the bytes (a view, no decoder set-up).
* Modality LUT Sequence: pydicom's ``apply_modality_lut``.
* BitsStored mask and sign extension: hand-written (:func:`_fix_bits`), see its comment.
* RescaleSlope/Intercept: hand-written, see :func:`modality_values`.

Array order: decoded arrays are pydicom's ``([frames,] rows, cols[, samples])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medres.errors import CorruptFileError, LoadError, PixelDecodeError, UnsupportedDicomError
from medres.io.dicom.dataset import _declared_pixel_bytes, _encoding_syntax, transfer_syntax
from medres.io.dicom.fields import (
    _FIX,
    MAX_FRAMES,
    _describe,
    _int_field,
    _quiet_pydicom,
    one_line,
)
from medres.limits import MAX_VOXELS, check_allocation

if TYPE_CHECKING:
    from medres.io.dicom.records import SliceHeader


def _fix_bits(arr: npt.NDArray[Any], s: SliceHeader) -> npt.NDArray[Any]:
    """Mask bits above BitsStored and sign-extend signed values (12-bit data and the like)."""
    # Hand-written on purpose, applied after every decoder (idempotent on values pydicom
    # already corrected): pydicom 3 masks unused high bits (``correct_unused_bits``) only
    # inside its own native/RLE/JPEG decoding, not for JPEG-LS or JPEG 2000 (it applies a
    # sign correction instead), not for the bytes :func:`_native_monochrome` reads
    # itself, and not for the mosaic pixels nibabel decodes. dcm_qa_12bit (high-bit
    # stripes, signed and unsigned) pins the result.
    if arr.dtype.kind not in "iu" or s.bits_stored >= arr.dtype.itemsize * 8:
        return arr
    bits = s.bits_stored
    unsigned = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    masked = unsigned & np.array((1 << bits) - 1, dtype=unsigned.dtype)
    if not s.pixel_representation:
        result: npt.NDArray[Any] = masked
        return result
    signed: npt.NDArray[np.int64] = masked.astype(np.int64)
    signed[signed >= (1 << (bits - 1))] -= 1 << bits
    return signed


def _native_monochrome(
    ds: Any, ts: Any, *, rows: int, columns: int, bits: int, signed: int, photometric: str
) -> npt.NDArray[Any] | None:
    """Uncompressed single-frame greyscale pixels read straight from the bytes (a view).

    The common CT/MR case; skips pydicom's generic decoder set-up, which costs more than
    the copy for small slices. The caller has checked the header values and that the bytes
    suffice. Anything unusual returns None and takes pydicom's path.
    """
    if (
        bits not in (8, 16, 32)
        or not photometric.startswith("MONOCHROME")
        or ts.is_deflated
        or "PixelData" not in ds
    ):
        return None
    kind = "i" if signed else "u"
    order = "<" if ts.is_little_endian else ">"
    dtype = np.dtype(f"{order}{kind}{bits // 8}")
    arr = np.frombuffer(ds.PixelData, dtype=dtype, count=rows * columns).reshape(rows, columns)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def decode_pixels(ds: Any, path: str | Path) -> npt.NDArray[Any]:
    """Decoded stored pixel values of a full data set: ``(rows, cols[, samples])`` or with a
    leading frame axis. Colour data comes back as RGB; palette colour is expanded to RGB.

    The declared size is checked against the pixel bytes (uncompressed syntaxes), the
    limits and the memory budget before anything is decoded; any failure of the decoder
    becomes a :class:`~medres.errors.PixelDecodeError` naming the file.

    Raises:
        CorruptFileError: Pixel data missing, empty, or shorter than the header promises.
        PixelDecodeError: Unknown transfer syntax, no decoder, or a broken stream.
        UnsupportedDicomError: The decoded pixels would exceed the memory budget.
    """
    path = Path(path)
    try:
        with _quiet_pydicom():
            return _decode_pixels(ds, path)
    except LoadError:
        raise
    except MemoryError as exc:
        raise UnsupportedDicomError(
            f"{path}: not enough memory to decode the pixel data; free memory or lower "
            "the batch size"
        ) from exc
    except Exception as exc:
        raise PixelDecodeError(f"{path}: cannot decode pixel data: {_describe(exc)}") from exc


@dataclass(frozen=True)
class _DecodeLayout:
    """The checked header values the decoder relies on."""

    rows: int
    columns: int
    samples: int
    frames: int
    bits: int
    photometric: str


def _decode_pixels(ds: Any, path: Path) -> npt.NDArray[Any]:
    """The work of :func:`decode_pixels` (pydicom's warnings already quieted)."""
    keys = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    present = [k for k in keys if k in ds]
    if not present:
        raise CorruptFileError(f"{path}: no pixel data in the file (truncated?)")
    ts = _transfer_syntax_or_native(ds, path)
    layout = _decode_layout(ds, path)
    value = _pixel_bytes(ds, present[0], path)
    native = ts is None or not ts.is_compressed
    if native:
        expected = _declared_pixel_bytes(
            layout.rows,
            layout.columns,
            layout.samples,
            layout.frames,
            layout.bits,
            layout.photometric,
        )
        got = len(value)
        if got < expected:
            raise CorruptFileError(
                f"{path}: pixel data truncated: {got} bytes where {expected} expected (the "
                f"header promises {expected:,} bytes of pixel data but the file holds {got:,}); "
                "replace the file with a good copy or re-export the series"
            )
        if ts is not None and layout.samples == 1 and layout.frames == 1:
            signed = _int_field(ds, "PixelRepresentation", path, default=0, allowed=(0, 1))
            fast = _native_monochrome(
                ds,
                ts,
                rows=layout.rows,
                columns=layout.columns,
                bits=layout.bits,
                signed=signed or 0,
                photometric=layout.photometric,
            )
            if fast is not None:
                return fast
    return _pydicom_pixels(ds, path, ts, photometric=layout.photometric)


def _transfer_syntax_or_native(ds: Any, path: Path) -> Any:
    """The checked transfer syntax, or the native one the header was read as (set on ``ds``).

    Files without file meta (old ACR-NEMA style) or that lost the UID were read as a native
    encoding, so their pixel data are native too (compressed data need the UID).
    """
    ts = transfer_syntax(ds, path)
    if ts is None:
        ts = _encoding_syntax(ds)
        if ts is not None:
            from pydicom.dataset import FileMetaDataset

            if getattr(ds, "file_meta", None) is None:
                ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ts
    return ts


def _decode_layout(ds: Any, path: Path) -> _DecodeLayout:
    """Sizes, samples, frames and bits, checked against the limits and the memory budget."""
    rows = _int_field(ds, "Rows", path, default=None, allowed=range(1, 65536))
    columns = _int_field(ds, "Columns", path, default=None, allowed=range(1, 65536))
    if rows is None or columns is None:
        raise CorruptFileError(f"{path}: image with pixel data but no Rows/Columns; {_FIX}")
    samples = _int_field(ds, "SamplesPerPixel", path, default=1, allowed=(1, 3)) or 1
    frames = (
        _int_field(ds, "NumberOfFrames", path, default=1, allowed=range(1, MAX_FRAMES + 1)) or 1
    )
    bits = _int_field(ds, "BitsAllocated", path, default=16, allowed=(1, 8, 16, 32, 64)) or 16
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    n_pixels = rows * columns * frames
    if n_pixels > MAX_VOXELS:
        raise CorruptFileError(
            f"{path}: header declares {n_pixels:,} pixels, more than the {MAX_VOXELS:,} "
            "medres accepts for one scan (medres.limits.MAX_VOXELS)"
        )
    decoded_bytes = n_pixels * (3 if samples > 1 else 1) * max(1, bits // 8)
    too_big = check_allocation(f"decoding {rows} x {columns} x {frames} pixels", decoded_bytes)
    if too_big is not None:
        raise UnsupportedDicomError(f"{path}: {too_big}")
    return _DecodeLayout(rows, columns, samples, frames, bits, photometric)


def _pixel_bytes(ds: Any, keyword: str, path: Path) -> bytes | bytearray:
    """The value of the pixel data element ``keyword``: present, binary and not empty."""
    value = ds[keyword].value
    if value is None or (isinstance(value, (bytes, bytearray)) and len(value) == 0):
        raise CorruptFileError(
            f"{path}: the {keyword} element is empty (0 bytes); the file is damaged, "
            "replace it with a good copy or re-export the series"
        )
    if not isinstance(value, (bytes, bytearray)):
        vr = getattr(ds[keyword], "VR", "?")
        raise CorruptFileError(
            f"{path}: {keyword} has value representation {vr}, not binary pixel data; "
            "the header is damaged, replace the file with a good copy or re-export the series"
        )
    return value


def _pydicom_pixels(ds: Any, path: Path, ts: Any, *, photometric: str) -> npt.NDArray[Any]:
    """Every frame through pydicom's decoders; palette colour expanded to RGB."""
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        ts_name = f"{ts.name}" if ts is not None else "unknown transfer syntax"
        raise PixelDecodeError(
            f"{path}: cannot decode pixel data ({ts_name}): {one_line(str(exc))}".rstrip()
        ) from exc
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise PixelDecodeError(
                f"{path}: cannot apply the palette colour table: {_describe(exc)}"
            ) from exc
    return arr  # type: ignore[no-any-return]


def modality_values(
    stored: npt.NDArray[Any], s: SliceHeader, *, ds: Any, output_dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    """Stored values of one greyscale slice -> modality values (HU for CT).

    BitsStored mask and sign extension first (:func:`_fix_bits`), then the Modality LUT
    Sequence when the file has one, else RescaleSlope/Intercept (the per-frame values of
    ``s``) when they change anything. The result is cast to ``output_dtype`` by the caller.

    Args:
        stored: Decoded stored values ``(rows, cols)`` of slice (or frame) ``s``.
        s: The slice's header record.
        ds: The full data set ``s`` came from (its Modality LUT Sequence is read); the same
            one for every frame of a multi-frame file.
        output_dtype: The plan's output dtype (integer rescale stays integer).
    """
    values = _fix_bits(stored, s)
    if s.has_modality_lut:
        from pydicom.pixels.processing import apply_modality_lut

        with _quiet_pydicom():
            mapped: npt.NDArray[Any] = apply_modality_lut(values, ds)
        return mapped
    # Rescale stays hand-written: pydicom's apply_rescale (apply_modality_lut) reads only the
    # top-level RescaleSlope/Intercept, not an enhanced object's per-frame
    # PixelValueTransformationSequence, applies them unchecked, and always returns float64;
    # medres uses the checked per-frame values of ``s`` and keeps integer CT as integers.
    if s.rescale_slope == 1.0 and s.rescale_intercept == 0.0:
        return values
    rescaled: npt.NDArray[Any]
    if output_dtype.kind == "f":
        rescaled = values.astype(np.float32) * np.float32(s.rescale_slope) + np.float32(
            s.rescale_intercept
        )
    else:
        rescaled = values.astype(output_dtype) + output_dtype.type(int(s.rescale_intercept))
    return rescaled
