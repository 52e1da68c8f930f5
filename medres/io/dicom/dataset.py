"""Opening a file as a pydicom data set, and telling what kind of object it holds.

This module owns the first contact with a file: only regular files within
:data:`~medres.limits.MAX_DICOM_FILE_BYTES` are opened (a FIFO or ``/dev/zero`` is never
read), every pydicom failure becomes a medres error naming the file, objects that are not
images (SR, SEG, RTSTRUCT, presentation states, DICOMDIR...) are recognised, and the
transfer syntax is checked (known, and decodable with the installed plugins). It also
knows how many pixel bytes a header promises, so callers can compare that with the file.

Example:
    >>> regular_file_problem("/dev/null")
    'not a regular file (character device)'
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from medres.errors import CorruptFileError, NotDicomError, PixelDecodeError, UnsupportedDicomError
from medres.io.dicom.fields import _describe, _quiet_pydicom, _show, _text, one_line
from medres.limits import MAX_DICOM_FILE_BYTES, check_allocation

#: Modalities that never carry an image to segment.
NON_IMAGE_MODALITIES = {
    "SR": "structured report",
    "PR": "presentation state",
    "KO": "key object selection",
    "RTSTRUCT": "RT structure set (contours, not an image)",
    "RTPLAN": "RT plan",
    "RTRECORD": "RT treatment record",
    "RTDOSE": "RT dose grid (not an image to segment)",
    "SEG": "segmentation object (a label map, not a source image)",
    "REG": "registration object",
    "DOC": "encapsulated document",
    "ECG": "waveform",
}
#: Words in a SOP class name that mark non-image storage.
NON_IMAGE_SOP_WORDS = {
    "SR Storage": "structured report",
    "Presentation State": "presentation state",
    "Structure Set": "RT structure set (contours, not an image)",
    "RT Plan": "RT plan",
    "RT Dose": "RT dose grid (not an image to segment)",
    "Segmentation Storage": "segmentation object (a label map, not a source image)",
    "Waveform": "waveform",
    "Encapsulated": "encapsulated document",
    "Key Object": "key object selection",
    "Raw Data": "raw data",
    "Registration": "registration object",
    "Media Storage Directory": "DICOMDIR index (the images it lists are discovered directly)",
}
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"


def regular_file_problem(path: str | Path) -> str | None:
    """Why ``path`` must not be opened as a scan file, or None when it may be.

    Follows links (``os.stat``); never opens the file, so a FIFO, a device such as
    ``/dev/zero`` or a socket cannot hang or flood the reader.

    Example:
        >>> regular_file_problem("/dev/null")
        'not a regular file (character device)'
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken link or vanished file (no such file)"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    kind = (
        "folder"
        if stat.S_ISDIR(mode)
        else "FIFO"
        if stat.S_ISFIFO(mode)
        else "character device"
        if stat.S_ISCHR(mode)
        else "block device"
        if stat.S_ISBLK(mode)
        else "socket"
        if stat.S_ISSOCK(mode)
        else "special file"
    )
    return f"not a regular file ({kind})"


def _file_size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def transfer_syntax(ds: Any, path: str | Path) -> Any:
    """The data set's transfer syntax UID (None for files without file meta), checked.

    Raises:
        PixelDecodeError: The UID is not a transfer syntax pydicom knows, or it is a
            compressed syntax no installed decoder reads.
    """
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    raw = meta.get("TransferSyntaxUID", None) if meta is not None else None
    text = str(raw or "").strip(" \x00")
    if not text:
        return None
    uid = UID(text)
    if not uid.is_transfer_syntax:
        raise PixelDecodeError(
            f"{path}: unknown transfer syntax UID {_show(text)} (0002,0010); medres cannot "
            "tell how the pixel data are encoded; re-export the file with a standard transfer "
            "syntax (e.g. Explicit VR Little Endian)"
        )
    if uid.is_compressed:
        from pydicom.pixels.decoders.base import get_decoder

        try:
            available = bool(get_decoder(uid).is_available)
        except NotImplementedError:
            available = False
        if not available:
            raise PixelDecodeError(
                f"{path}: pixel data compressed as {uid.name} ({uid}), which no installed "
                "decoder reads; install the pylibjpeg plugins (see the README) or re-export "
                "the series uncompressed"
            )
    return uid


def _encoding_syntax(ds: Any) -> Any:
    """The native transfer syntax matching how pydicom found the data set encoded."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _declared_pixel_bytes(
    rows: int, columns: int, samples: int, frames: int, bits: int, photometric: str
) -> int:
    """Bytes of uncompressed pixel data a header promises (YBR_FULL_422 is subsampled)."""
    if photometric == "YBR_FULL_422":
        samples = 2  # chroma subsampled horizontally: 2 values per pixel on average
    return (rows * columns * samples * frames * bits + 7) // 8


def _is_image_storage(ds: Any) -> bool:
    from pydicom.uid import UID

    media_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    sop_class = str(ds.get("SOPClassUID", None) or media_sop).strip(" \x00")
    return bool(sop_class) and "Image Storage" in UID(sop_class).name


def non_image_reason(ds: Any) -> str | None:
    """Why a DICOM data set is not an image medres loads, or ``None`` if it is one.

    Args:
        ds: A pydicom ``Dataset`` (header is enough).

    Returns:
        A short reason such as ``"structured report"``, or None.
    """
    media_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if media_sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        return NON_IMAGE_SOP_WORDS["Media Storage Directory"]
    sop_class = ds.get("SOPClassUID", None) or media_sop
    if sop_class:
        from pydicom.uid import UID

        name = UID(str(sop_class)).name
        for word, reason in NON_IMAGE_SOP_WORDS.items():
            if word in name:
                return reason
    modality = _text(ds, "Modality").upper()
    if modality in NON_IMAGE_MODALITIES:
        return NON_IMAGE_MODALITIES[modality]
    if "Rows" not in ds or "Columns" not in ds:
        return "no image (no Rows/Columns)"
    return None


def sniff_dicom(path: Path) -> bool:
    """True if the file starts with the DICOM preamble (``DICM`` at byte 128).

    Only regular files are opened (a FIFO would block).
    """
    if regular_file_problem(path) is not None:
        return False
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dataset(path: str | Path, *, headers_only: bool = True) -> Any:
    """Read a DICOM file with pydicom, turning every failure into a medres error.

    Files without the 128-byte preamble (old ACR-NEMA style, "no meta") are accepted when
    they parse into a data set with image or SOP fields. Only regular files of at most
    :data:`~medres.limits.MAX_DICOM_FILE_BYTES` are opened; a full read (pixels included)
    must also fit the memory budget.

    Raises:
        NotDicomError: The bytes are not DICOM, or the path is not a regular file.
        CorruptFileError: The file is truncated or garbled.
        UnsupportedDicomError: The file is larger than medres reads.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    problem = regular_file_problem(path)
    if problem is not None:
        raise NotDicomError(f"{path}: {problem}; not read")
    size = _file_size(path) or 0
    if size > MAX_DICOM_FILE_BYTES:
        raise UnsupportedDicomError(
            f"{path}: {size / 2**30:.1f} GiB file, larger than the "
            f"{MAX_DICOM_FILE_BYTES / 2**30:.1f} GiB medres reads as one DICOM file "
            "(medres.limits.MAX_DICOM_FILE_BYTES); not read"
        )
    if not headers_only:
        too_big = check_allocation(f"reading {path}", size)
        if too_big is not None:
            raise UnsupportedDicomError(f"{path}: {too_big}")
    has_preamble = sniff_dicom(path)
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=not has_preamble)
    except InvalidDicomError as exc:
        raise NotDicomError(f"{path}: not a DICOM file ({one_line(str(exc))})") from exc
    except MemoryError as exc:
        raise CorruptFileError(
            f"{path}: cannot read DICOM data set: an element length asks for more memory than "
            "there is; the file is damaged"
        ) from exc
    except Exception as exc:  # pydicom raises assorted errors on garbage bytes
        raise CorruptFileError(f"{path}: cannot read DICOM data set: {_describe(exc)}") from exc
    if not has_preamble:
        try:
            known = [tag in ds for tag in (0x00080016, 0x00280010, 0x00080060, 0x00200013)]
        except Exception as exc:
            raise NotDicomError(f"{path}: not a DICOM file ({_describe(exc)})") from exc
        if not any(known):
            raise NotDicomError(f"{path}: not a DICOM file (no preamble and no DICOM fields)")
    return ds


def _has_pixel_data(path: Path) -> bool:
    """Whether the file holds a pixel data element (large values are not read)."""
    import pydicom

    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path, defer_size=256, force=True)
        return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:
        return False
