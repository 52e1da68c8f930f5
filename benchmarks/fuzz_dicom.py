"""Fuzz DICOM discovery and loading: seeded mutations of a CT series, every outcome counted.

Run from the repository root (with the project's environment active)::

    python benchmarks/fuzz_dicom.py                  # 200 cases, seed 0
    python benchmarks/fuzz_dicom.py --cases 1000 --seed 7 --show 40

Input: the sample CT series ``sample_data/ct_phantom_dicom`` (40 slices of 96x80), or,
when it is absent, a synthetic 12-slice series written with
:func:`medres.io.dicom_write.write_dicom_series`.

Each case copies the series into a fresh temporary folder and applies 1-3 seeded
mutations, the kind a damaged disk, a broken exporter or a hostile sender produces: byte
flips (in the header or anywhere), truncation, inserted or deleted bytes, a flipped value
representation (``ES``, ``UM``, ``DO``...), a hostile value in one header field (NaN, 0,
65535, ``0.9\\abc``...), a field deleted, pixel data of another length, another transfer
syntax UID, all slices at one position, one SOPInstanceUID for every file, a deleted slice,
and a FIFO, a link to ``/dev/zero``, a broken link or an empty ``.dcm`` dropped in the
folder. Then, in this process, :func:`medres.io.discover.discover` runs on the folder and
:func:`medres.io.load.load_scan` on every scan found, under a per-case time limit
(``signal.alarm``; the exception it raises derives from ``BaseException`` so no
``except Exception`` inside medres can swallow it).

Outcomes per case: **ok** (every scan loaded, no file failed), **clean MedresError** (a
scan raised a :class:`~medres.errors.MedresError` or a file was listed as unreadable, and
every such message is one line naming the file or the series folder), **other
exception** (anything else escaped, or a message did not name the file: must be 0),
**hang** (time limit hit: must be 0). Memory: ``MEDRES_MAX_MEMORY_GB`` is set (default 1)
so huge declared sizes are refused by the budget, the address space is capped with
``RLIMIT_AS`` (default 8 GiB) so a runaway allocation cannot take the machine down, and
the peak RSS (``resource.getrusage(...).ru_maxrss``) is printed. Volumes that load are
checked for sense: finite affine, positive spacing, no NaN voxels.

The distinct error kinds follow the table (numbers, quoted values and paths folded), with
their counts.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "ct_phantom_dicom"


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so medres's ``except Exception`` lets it pass."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise CaseTimeout


# --- the series to mutate ------------------------------------------------------------


def source_series() -> tuple[str, dict[str, bytes]]:
    """``(description, {file name: bytes})`` of the series every case starts from."""
    if SAMPLE.is_dir() and any(SAMPLE.iterdir()):
        files = {p.name: p.read_bytes() for p in sorted(SAMPLE.iterdir()) if p.is_file()}
        return f"{SAMPLE.relative_to(REPO)} ({len(files)} files)", files
    from medres.io.dicom_write import DicomSeriesInfo, write_dicom_series
    from medres.synthetic import ct_phantom

    ct, _ = ct_phantom(shape=(40, 32, 12), seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_dicom_series(
            ct, Path(tmp), DicomSeriesInfo(series_description="fuzz", rescale_intercept=-1024.0)
        )
        files = {p.name: p.read_bytes() for p in paths}
    return f"synthetic CT series ({len(files)} files; {SAMPLE} is absent)", files


# --- mutations -------------------------------------------------------------------------

HOSTILE_TEXT = [
    b"0",
    b"-1",
    b"65535",
    b"4294967295",
    b"NaN",
    b"inf",
    b"-inf",
    b"1e30",
    b"-1e30",
    b"/1024",
    b"0.9\\abc",
    b"0\\0",
    b"0.9",
    b"2\\0\\0\\0\\2\\0",
    b"1\\0\\0\\0.5\\0.8660254\\0",
    b"0\\0\\0",
    b"",
    b"\\\\\\",
    b"PALETTE COLOR",
    b"YBR_FULL_422",
]
#: The image pixel description fields, stored as unsigned shorts (US).
US_FIELDS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
)
FIELDS = [
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "NumberOfFrames",
    "SliceThickness",
    "InstanceNumber",
    "SOPInstanceUID",
    "SeriesInstanceUID",
]
VRS = ["US", "SS", "UL", "DS", "IS", "LO", "CS", "UN", "OB", "OW", "FD", "SQ", "ES", "UM", "DO"]
SYNTAXES = [
    b"1.2.3.4.5.6",
    b"1.2.840.10008.1.2",
    b"1.2.840.10008.1.2.2",
    b"1.2.840.10008.1.2.1.99",
    b"1.2.840.10008.1.2.4.50",
    b"1.2.840.10008.1.2.4.90",
    b"1.2.840.10008.1.2.5",
    b"1.2.840.10008.1.2.4.100",
    b"",
]


@dataclass
class Case:
    """One mutated copy of the series."""

    folder: Path
    rng: random.Random
    applied: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.is_symlink())

    def pick(self) -> Path:
        return self.rng.choice(self.files())


def _header_end(data: bytes) -> int:
    """Offset of the PixelData tag (explicit VR little endian), else the file length."""
    at = data.find(b"\xe0\x7f\x10\x00")
    return at if at > 0 else len(data)


def _put_raw(path: Path, keyword: str, vr: str, value: bytes) -> None:
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(path)
    tag = Tag(keyword)
    if len(value) % 2:
        value += b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    ds.save_as(path)


def m_flip_header(case: Case) -> None:
    path = case.pick()
    data = bytearray(path.read_bytes())
    end = _header_end(bytes(data))
    for _ in range(case.rng.randint(1, 4)):
        data[case.rng.randrange(0, max(1, end))] ^= case.rng.randint(1, 255)
    path.write_bytes(bytes(data))
    case.applied.append(f"flip header bytes of {path.name}")


def m_flip_any(case: Case) -> None:
    path = case.pick()
    data = bytearray(path.read_bytes())
    for _ in range(case.rng.randint(1, 16)):
        data[case.rng.randrange(0, len(data))] ^= case.rng.randint(1, 255)
    path.write_bytes(bytes(data))
    case.applied.append(f"flip bytes of {path.name}")


def m_truncate(case: Case) -> None:
    path = case.pick()
    data = path.read_bytes()
    path.write_bytes(data[: case.rng.randrange(0, len(data))])
    case.applied.append(f"truncate {path.name}")


def m_splice(case: Case) -> None:
    path = case.pick()
    data = bytearray(path.read_bytes())
    at = case.rng.randrange(0, _header_end(bytes(data)))
    if case.rng.random() < 0.5:
        data[at:at] = bytes(case.rng.randint(0, 255) for _ in range(case.rng.randint(1, 6)))
    else:
        del data[at : at + case.rng.randint(1, 6)]
    path.write_bytes(bytes(data))
    case.applied.append(f"insert/delete bytes in {path.name}")


def m_flip_vr(case: Case) -> None:
    from pydicom.tag import Tag

    path = case.pick()
    data = bytearray(path.read_bytes())
    keyword = case.rng.choice(FIELDS)
    tag = Tag(keyword)
    needle = tag.group.to_bytes(2, "little") + tag.elem.to_bytes(2, "little")
    at = data.find(needle, 132)
    if at < 0:
        return
    data[at + 4 : at + 6] = case.rng.choice([b"ES", b"UM", b"DO", b"QQ", b"\x00\x00"])
    path.write_bytes(bytes(data))
    case.applied.append(f"flip VR of {keyword} in {path.name}")


def m_field(case: Case) -> None:
    keyword = case.rng.choice(FIELDS)
    natural = "US" if keyword in US_FIELDS else "DS"
    vr = case.rng.choice(VRS) if case.rng.random() < 0.3 else natural
    if vr == "US" and case.rng.random() < 0.7:
        value = case.rng.choice([0, 1, 2, 3, 7, 64, 65535, case.rng.randrange(65536)]).to_bytes(
            2, "little"
        )
    else:
        value = case.rng.choice(HOSTILE_TEXT)
    targets = case.files() if case.rng.random() < 0.3 else [case.pick()]
    for path in targets:
        try:
            _put_raw(path, keyword, vr, value)
        except Exception:
            return
    case.applied.append(f"{keyword}={value[:20]!r} ({vr}) in {len(targets)} file(s)")


def m_delete_field(case: Case) -> None:
    import pydicom

    keyword = case.rng.choice(FIELDS)
    targets = case.files() if case.rng.random() < 0.3 else [case.pick()]
    for path in targets:
        ds = pydicom.dcmread(path)
        if keyword in ds:
            del ds[keyword]
            ds.save_as(path)
    case.applied.append(f"delete {keyword} in {len(targets)} file(s)")


def m_pixels(case: Case) -> None:
    path = case.pick()
    n = case.rng.choice([0, 1, 2, 100, case.rng.randrange(0, 20_000)])
    _put_raw(path, "PixelData", "OW", bytes(n))
    case.applied.append(f"PixelData of {n} bytes in {path.name}")


def m_syntax(case: Case) -> None:
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    path = case.pick()
    uid = case.rng.choice(SYNTAXES)
    raw = path.read_bytes()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = uid.decode()
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=False)
    path.write_bytes(raw[:132] + buffer.getvalue() + raw[meta_end:])
    case.applied.append(f"TransferSyntaxUID={uid.decode() or '(empty)'} in {path.name}")


def m_one_position(case: Case) -> None:
    for path in case.files():
        _put_raw(path, "ImagePositionPatient", "DS", b"0\\0\\0")
    case.applied.append("all slices at one position")


def m_one_uid(case: Case) -> None:
    import pydicom

    for path in case.files():
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.1"
        ds.save_as(path)
    case.applied.append("one SOPInstanceUID for every file")


def m_delete_file(case: Case) -> None:
    path = case.pick()
    path.unlink()
    case.applied.append(f"delete {path.name}")


def m_special(case: Case) -> None:
    kind = case.rng.choice(["fifo", "zero", "broken", "empty"])
    target = case.folder / f"IM9{case.rng.randrange(1000):03d}"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "zero":
        os.symlink("/dev/zero", target)
    elif kind == "broken":
        os.symlink(case.folder / "no-such-file", target)
    else:
        target.with_suffix(".dcm").write_bytes(b"")
    case.applied.append(f"add {kind}")


MUTATIONS: list[tuple[str, Callable[[Case], None], float]] = [
    ("flip header bytes", m_flip_header, 3.0),
    ("flip any bytes", m_flip_any, 1.5),
    ("truncate", m_truncate, 1.0),
    ("insert/delete bytes", m_splice, 1.0),
    ("flip VR", m_flip_vr, 1.5),
    ("hostile field value", m_field, 4.0),
    ("delete field", m_delete_field, 1.0),
    ("pixel data length", m_pixels, 1.0),
    ("transfer syntax", m_syntax, 1.0),
    ("one position", m_one_position, 0.3),
    ("one SOP UID", m_one_uid, 0.3),
    ("delete slice", m_delete_file, 0.5),
    ("special file", m_special, 0.7),
]


# --- running one case ------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # ok | error | other | hang
    detail: str = ""
    errors: list[str] = field(default_factory=list)
    n_scans: int = 0
    seconds: float = 0.0


def _fold(message: str, folder: Path) -> str:
    """An error message with its paths, numbers and quoted values folded, for counting."""
    text = message.replace(str(folder), "DIR")
    text = re.sub(r"DIR/[^\s:;,()]+", "FILE", text)
    text = re.sub(r"\b[A-Z]{1,3}\d{3,}\b", "FILE", text)  # IM0012 and the like
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\b\d[\d,.]*(e[+-]?\d+)?\b", "N", text)
    text = re.sub(r"\([^()]*\)", "(…)", text)
    text = re.sub(r"series N '…': ", "series: ", text)
    return text[:120]


def run_case(folder: Path, timeout_s: int) -> Outcome:
    from medres.errors import LoadError, MedresError
    from medres.io.discover import discover
    from medres.io.load import load_scan

    start = time.perf_counter()
    outcome = Outcome("ok")
    signal.alarm(timeout_s)
    try:
        found = discover(folder.parent)
        outcome.n_scans = len(found.scans)
        for item in found.failed:
            outcome.errors.append(f"(discovery) {_fold(item.reason, folder)}")
            if item.path not in item.reason or "\n" in item.reason:
                outcome.kind, outcome.detail = "other", f"unnamed failure: {item.reason}"
            elif outcome.kind == "ok":
                outcome.kind = "error"
        for ref in found.scans:
            try:
                vol = load_scan(ref)
            except MedresError as exc:
                message = str(exc)
                outcome.errors.append(f"{type(exc).__name__}: {_fold(message, folder)}")
                if not isinstance(exc, LoadError) or str(folder) not in message or "\n" in message:
                    outcome.kind, outcome.detail = "other", f"unnamed error: {message}"
                elif outcome.kind == "ok":
                    outcome.kind = "error"
                continue
            sane = (
                np.all(np.isfinite(vol.affine))
                and abs(float(np.linalg.det(vol.affine[:3, :3]))) > 0
                and all(s > 0 for s in vol.spacing_mm)
                and (vol.array.dtype.kind != "f" or bool(np.all(np.isfinite(vol.array))))
            )
            if not sane:
                outcome.kind, outcome.detail = "other", f"nonsense volume from {ref.scan_id}"
    except CaseTimeout:
        outcome.kind, outcome.detail = "hang", f"over {timeout_s} s"
    except Exception as exc:  # what the fuzzer is looking for
        outcome.kind, outcome.detail = "other", f"{type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
    outcome.seconds = time.perf_counter() - start
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=200, help="number of mutated series")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=30, help="seconds per case")
    parser.add_argument("--memory-gb", type=float, default=1.0, help="MEDRES_MAX_MEMORY_GB")
    parser.add_argument(
        "--address-space-gb", type=float, default=8.0, help="RLIMIT_AS cap (0: none)"
    )
    parser.add_argument("--show", type=int, default=30, help="error kinds listed")
    args = parser.parse_args(argv)

    os.environ["MEDRES_MAX_MEMORY_GB"] = str(args.memory_gb)
    if args.address_space_gb > 0:
        cap = int(args.address_space_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    signal.signal(signal.SIGALRM, _on_alarm)
    import logging
    import warnings

    logging.disable(logging.WARNING)  # pydicom logs every odd value it meets
    warnings.simplefilter("ignore")

    description, files = source_series()
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    names = [m[0] for m in MUTATIONS]
    weights = [m[2] for m in MUTATIONS]
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    used: Counter[str] = Counter()
    others: list[str] = []
    max_scans, max_seconds = 0, 0.0
    wall = time.perf_counter()
    for index in range(args.cases):
        rng = random.Random(args.seed * 1_000_003 + index)
        with tempfile.TemporaryDirectory(prefix="fuzz_dicom_") as tmp:
            folder = Path(tmp) / "series"
            folder.mkdir()
            for name, data in files.items():
                (folder / name).write_bytes(data)
            case = Case(folder, rng)
            for _ in range(rng.randint(1, 3)):
                (name,) = rng.choices(names, weights)
                used[name] += 1
                try:
                    dict((m[0], m[1]) for m in MUTATIONS)[name](case)
                except Exception as exc:  # a mutation pydicom refused to write: skip it
                    case.applied.append(f"{name} not applied ({type(exc).__name__})")
            outcome = run_case(folder, args.timeout)
            shutil.rmtree(tmp, ignore_errors=True)
        counts[outcome.kind] += 1
        kinds.update(set(outcome.errors))
        max_scans = max(max_scans, outcome.n_scans)
        max_seconds = max(max_seconds, outcome.seconds)
        if outcome.kind in ("other", "hang"):
            others.append(f"case {index}: {'; '.join(case.applied)} -> {outcome.detail}")
    wall = time.perf_counter() - wall
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    print(f"fuzz_dicom: {args.cases} cases, seed {args.seed}, source {description}")
    print(
        f"MEDRES_MAX_MEMORY_GB={args.memory_gb:g}, RLIMIT_AS="
        f"{args.address_space_gb:g} GiB, {args.timeout} s per case, {wall:.1f} s in all"
    )
    print()
    rows = [
        ("cases", args.cases),
        ("results ok", counts["ok"]),
        ("clean MedresError", counts["error"]),
        ("other exceptions", counts["other"]),
        ("hangs", counts["hang"]),
        ("max RSS (MiB)", f"{rss_peak / 1024:.0f} (at start {rss_start / 1024:.0f})"),
        ("slowest case (s)", f"{max_seconds:.2f}"),
        ("most scans in one case", max_scans),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'':{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for label, value in rows:
        print(f"| {label:{width}} | {value} |")
    print()
    print("mutations applied: " + ", ".join(f"{k} {v}" for k, v in used.most_common()))
    print()
    print(f"distinct error kinds: {len(kinds)} (cases in which each was seen)")
    for text, n in kinds.most_common(args.show):
        print(f"{n:5d}  {text}")
    if len(kinds) > args.show:
        print(f"  ... and {len(kinds) - args.show} more kinds (--show to list them)")
    for line in others:
        print("NOT CLEAN:", line[:400])
    return 1 if counts["other"] or counts["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
