"""Benchmark discovering + loading a DICOM series: medres against MONAI, pydicom and SimpleITK.

Run from the repository root (with the project's environment active)::

    python benchmarks/bench_dicom_load.py                # 300 generated slices, 3 repeats
    python benchmarks/bench_dicom_load.py --slices 40 --repeats 1   # quick check

Inputs:

* the real CT series in ``../shared/data/ct_dicom_totalseg/example_ct_dicom/`` (relative to
  the repository root; 20 slices of 512x512, JPEG 2000 lossless), skipped with a note when
  the folder is missing;
* a generated series of ``--slices`` axial 512x512 CT slices (0.7 mm pixels, 1.0 mm
  slices, rescale intercept -1024), written once into a temporary folder with
  :func:`medres.io.dicom_write.write_dicom_series`.

Methods, each in a fresh subprocess per repeat so that memory peaks do not mix:

* ``medres``: :func:`medres.io.discover.discover` then :func:`medres.io.load.load_scan`;
* ``monai``: ``LoadImage(reader="PydicomReader", image_only=True)`` on the folder;
* ``pydicom loop``: ``dcmread`` every file, sort along the slice normal, ``np.stack`` the
  pixel arrays, apply RescaleSlope/Intercept (to float32);
* ``SimpleITK``: ``ImageSeriesReader`` with ``GetGDCMSeriesFileNames`` (skipped when
  SimpleITK is not installed; it is in the ``bench`` extra).

Each child imports what its method needs and builds its reader objects, then records its
RSS (on Linux the peak RSS is reset there through ``/proc/self/clear_refs``, so import-time
peaks do not hide the load's), times the load alone and reads its peak RSS (``VmHWM`` on
Linux, see :func:`medres.runtime.peak_rss_bytes` for why not ``ru_maxrss``; ``ru_maxrss``
elsewhere). The
table shows medians over the repeats; "output MiB" is the size of the returned array, the
least memory any loader needs. The parent checks that every method returns the same voxel
values as medres (same multiset of values, i.e. the same value histogram, and the same
per-slice sums, possibly in reversed slice order), since the methods order their axes
differently. All files are read once before timing, so every method sees a warm page cache.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.runtime import peak_rss_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_SERIES = REPO_ROOT / ".." / "shared" / "data" / "ct_dicom_totalseg" / "example_ct_dicom"

#: Prefix of the one stdout line through which a child reports its result.
RESULT_MARKER = "BENCH_RESULT "
#: Longest a single child may run, in seconds.
CHILD_TIMEOUT_S = 900
MIB = 2**20

#: A loaded volume: the pixel array and the index of its slice axis.
Loaded = tuple[npt.NDArray[Any], int]
#: Loads the series in a folder.
Loader = Callable[[Path], Loaded]


# --------------------------------------------------------------------------- methods
# Each ``prepare_*`` runs in the child before the measurement: it imports the method's
# libraries, builds its reader objects and returns the loader that is timed.


def prepare_medres() -> Loader:
    """discover() then load_scan() of the one scan found."""
    import pydicom  # noqa: F401  (medres imports it lazily; keep it out of the timing)

    from medres.io.discover import discover
    from medres.io.load import load_scan

    def load(folder: Path) -> Loaded:
        scans = discover(folder).scans
        if len(scans) != 1:
            raise RuntimeError(f"discover() found {len(scans)} scans, expected 1")
        volume = load_scan(scans[0])
        return volume.array[0], 2  # (x, y, z) of the single channel

    return load


def prepare_monai() -> Loader:
    """MONAI LoadImage with the PydicomReader."""
    import logging
    import warnings

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    from monai.transforms import LoadImage

    loader = LoadImage(reader="PydicomReader", image_only=True)

    def load(folder: Path) -> Loaded:
        image = loader(str(folder))
        return image.as_tensor().numpy(), 2  # (x, y, z), memory shared with the tensor

    return load


def prepare_pydicom_loop() -> Loader:
    """The plain way: dcmread everything, sort along the slice normal, stack, rescale."""
    import pydicom

    def load(folder: Path) -> Loaded:
        paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        datasets = [pydicom.dcmread(p) for p in paths]
        row_dir, col_dir = np.split(np.asarray(datasets[0].ImageOrientationPatient, float), 2)
        normal = np.cross(row_dir, col_dir)
        datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient), normal)))
        volume = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
        rescales = [
            (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0)))
            for ds in datasets
        ]
        if len(set(rescales)) == 1:
            slope, intercept = rescales[0]
            volume *= slope
            volume += intercept
        else:
            for k, (slope, intercept) in enumerate(rescales):
                volume[k] *= slope
                volume[k] += intercept
        return volume, 0  # (z, row, column)

    return load


def prepare_simpleitk() -> Loader:
    """SimpleITK ImageSeriesReader on the files GDCM groups into the folder's series."""
    import SimpleITK

    def load(folder: Path) -> Loaded:
        reader = SimpleITK.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        image = reader.Execute()
        return SimpleITK.GetArrayFromImage(image), 0  # (z, row, column)

    return load


@dataclass(frozen=True)
class Method:
    """A loading method: its table name, how to set it up, and the module it needs."""

    name: str
    prepare: Callable[[], Loader]
    requires: str


METHODS = (
    Method("medres", prepare_medres, "medres"),
    Method("monai", prepare_monai, "monai"),
    Method("pydicom loop", prepare_pydicom_loop, "pydicom"),
    Method("SimpleITK", prepare_simpleitk, "SimpleITK"),
)
METHODS_BY_NAME = {m.name: m for m in METHODS}


# --------------------------------------------------------------------------- child side


def reset_peak_rss() -> bool:
    """Make the peak RSS restart from the current RSS (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import psutil

    return int(psutil.Process().memory_info().rss)


def value_histogram_digest(array: npt.NDArray[Any]) -> str:
    """A digest of the multiset of values: equal for equal values in any axis order."""
    rows = array.reshape(array.shape[0], -1)
    low, high = float(array.min()), float(array.max())
    integral = bool(np.issubdtype(array.dtype, np.integer)) or all(
        np.array_equal(row, np.rint(row)) for row in rows
    )
    if not integral:
        flat = np.sort(array.astype(np.float64), axis=None)
        return "sorted:" + hashlib.sha256(flat.tobytes()).hexdigest()
    counts = np.zeros(int(high - low) + 1, np.int64)
    for row in rows:
        counts += np.bincount((row.astype(np.int64) - int(low)), minlength=counts.size)
    return f"hist:{int(low)}:" + hashlib.sha256(counts.tobytes()).hexdigest()


def describe_volume(array: npt.NDArray[Any], slice_axis: int) -> dict[str, Any]:
    """Shape, size and value summaries the parent compares across methods."""
    other_axes = tuple(a for a in range(array.ndim) if a != slice_axis)
    return {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "nbytes": int(array.nbytes),
        "min": float(array.min()),
        "max": float(array.max()),
        "histogram": value_histogram_digest(array),
        "slice_sums": array.sum(axis=other_axes, dtype=np.float64).tolist(),
    }


def run_child(method_name: str, folder: Path) -> None:
    """Measure one load in this process and print the result as one JSON line."""
    result: dict[str, Any]
    try:
        load = METHODS_BY_NAME[method_name].prepare()
        gc.collect()
        peak_was_reset = reset_peak_rss()
        rss_after_imports = current_rss_bytes()
        start = time.perf_counter()
        array, slice_axis = load(folder)
        seconds = time.perf_counter() - start
        peak = peak_rss_bytes()
        result = {
            "seconds": seconds,
            "peak_above_imports": peak - rss_after_imports,
            "peak_was_reset": peak_was_reset,
            **describe_volume(array, slice_axis),
        }
    except Exception as exc:  # reported in the table, not raised
        message = str(exc).strip().splitlines()
        result = {"error": f"{type(exc).__name__}: {message[0] if message else ''}"}
    print(RESULT_MARKER + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent side


@dataclass
class Row:
    """The measured repeats of one method on one input."""

    input_name: str
    method: str
    runs: list[dict[str, Any]]
    error: str = ""

    @property
    def first(self) -> dict[str, Any]:
        return self.runs[0]


def run_in_subprocess(method: Method, folder: Path) -> dict[str, Any]:
    """One measurement of ``method`` on ``folder`` in a fresh Python process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", method.name, str(folder)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=CHILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARKER) :])
            return result
    stderr_lines = done.stderr.strip().splitlines()
    last = stderr_lines[-1] if stderr_lines else "no output"
    return {"error": f"child exited with code {done.returncode}: {last}"}


def measure(input_name: str, folder: Path, method: Method, repeats: int) -> Row:
    """All repeats of one method on one input; stops at the first error."""
    if importlib.util.find_spec(method.requires) is None:
        return Row(input_name, method.name, [], error=f"skipped: {method.requires} not installed")
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        print(f"  {input_name} / {method.name}: run {repeat + 1}/{repeats}", file=sys.stderr)
        result = run_in_subprocess(method, folder)
        if "error" in result:
            return Row(input_name, method.name, runs, error=result["error"])
        runs.append(result)
    return Row(input_name, method.name, runs)


def compare_values(row: Row, reference: Row) -> str:
    """Whether ``row`` holds the same voxel values as ``reference``, in any axis order."""
    if row.error or reference.error:
        return "n/a"
    if row is reference:
        return "reference"
    mine, theirs = row.first, reference.first
    if sorted(mine["shape"]) != sorted(theirs["shape"]):
        return f"no (shape {mine['shape']} vs {theirs['shape']})"
    if mine["histogram"] != theirs["histogram"]:
        return f"no (values differ: min/max {mine['min']:g}/{mine['max']:g})"
    sums, reference_sums = np.asarray(mine["slice_sums"]), np.asarray(theirs["slice_sums"])
    if np.allclose(sums, reference_sums, rtol=1e-9, atol=1e-6):
        return "yes"
    if np.allclose(sums[::-1], reference_sums, rtol=1e-9, atol=1e-6):
        return "yes (slice order reversed)"
    return "no (same values, different slice order)"


def warm_page_cache(folder: Path) -> None:
    """Read every file once so no method pays for cold disk reads."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


def generate_series(out_dir: Path, n_slices: int, *, seed: int = 0) -> None:
    """Write a seeded CT-like axial series of ``n_slices`` 512x512 slices into ``out_dir``.

    Body (soft tissue under a fat rim, a vertebra) whose size and a lesion change from
    slice to slice, so slice order matters, plus Gaussian noise; HU in [-1024, 3071].
    """
    from medres.io.dicom_write import DicomSeriesInfo, write_dicom_series
    from medres.io.volume import Volume

    size, pixel_mm, slice_mm = 512, 0.7, 1.0
    rng = np.random.default_rng(seed)
    centre = (size - 1) / 2
    rows_mm, cols_mm = np.meshgrid(
        (np.arange(size) - centre) * pixel_mm, (np.arange(size) - centre) * pixel_mm, indexing="ij"
    )
    hu = np.empty((1, size, size, n_slices), np.int16)  # (C, x=column, y=row, z)
    for k in range(n_slices):
        phase = k / max(n_slices - 1, 1)
        half_width, half_depth = 150.0 + 20.0 * np.sin(np.pi * phase), 110.0 + 10.0 * phase
        radius = np.hypot(cols_mm / half_width, rows_mm / half_depth)
        image = np.full((size, size), -1000.0)  # (row, column)
        image[radius <= 1.0] = -100.0
        image[radius <= 0.9] = 40.0
        image[np.hypot(cols_mm / 15.0, (rows_mm - 0.6 * half_depth) / 14.0) <= 1.0] = 700.0
        lesion_mm = 25.0 * np.sin(np.pi * phase)
        image[np.hypot(cols_mm + 40.0, rows_mm + 20.0) <= lesion_mm] = 110.0
        image += rng.normal(0.0, 12.0, image.shape)
        hu[0, :, :, k] = np.clip(np.rint(image), -1024, 3071).T
    affine = np.diag([-pixel_mm, -pixel_mm, slice_mm, 1.0])
    affine[:3, 3] = [pixel_mm * centre, pixel_mm * centre, -slice_mm * (n_slices - 1) / 2]
    info = DicomSeriesInfo(
        series_description="bench generated CT",
        uid_seed="bench-dicom-load",
        rescale_intercept=-1024,
    )
    write_dicom_series(Volume(hu, affine, modality="CT"), out_dir, info)


def format_table(rows: list[Row], agreements: list[str]) -> str:
    """The results as a markdown table."""
    header = [
        "input",
        "method",
        "seconds (median)",
        "peak MiB above imports",
        "output MiB",
        "values agree",
    ]
    lines = [header]
    for row, agreement in zip(rows, agreements, strict=True):
        if row.error:
            lines.append([row.input_name, row.method, row.error, "", "", agreement])
            continue
        seconds = statistics.median(r["seconds"] for r in row.runs)
        peak = statistics.median(r["peak_above_imports"] for r in row.runs) / MIB
        output = f"{row.first['nbytes'] / MIB:.1f} ({row.first['dtype']})"
        lines.append(
            [row.input_name, row.method, f"{seconds:.3f}", f"{peak:.1f}", output, agreement]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)


def run_benchmark(n_slices: int, repeats: int) -> None:
    """Measure every method on every input and print the table."""
    notes: list[str] = []
    rows: list[Row] = []
    agreements: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_dicom_load_") as tmp:
        inputs: list[tuple[str, Path]] = []
        real = REAL_SERIES.resolve()
        if real.is_dir():
            n_real = sum(1 for p in real.iterdir() if p.is_file())
            inputs.append((f"real CT ({n_real} slices, J2K)", real))
        else:
            notes.append(f"real CT series not found at {REAL_SERIES}; skipped")
        generated = Path(tmp) / "generated"
        print(f"writing {n_slices} generated slices ...", file=sys.stderr)
        generate_series(generated, n_slices)
        inputs.append((f"generated ({n_slices} slices)", generated))

        for input_name, folder in inputs:
            warm_page_cache(folder)
            input_rows = [measure(input_name, folder, method, repeats) for method in METHODS]
            reference = input_rows[0]
            if reference.error:
                fallback = next((r for r in input_rows[1:] if not r.error), None)
                notes.append(
                    f"{input_name}: medres failed ({reference.error}); values compared with "
                    f"{fallback.method if fallback else 'nothing'} instead"
                )
                reference = fallback or reference
            rows.extend(input_rows)
            agreements.extend(compare_values(row, reference) for row in input_rows)

    if any(not r.get("peak_was_reset", True) for row in rows for r in row.runs):
        notes.append(
            "peak RSS could not be reset after imports: import-time peaks may hide load peaks"
        )
    print(f"\nDICOM discover + load, {repeats} repeat(s) per method, each in a fresh process\n")
    print(format_table(rows, agreements))
    for note in notes:
        print(f"\nNote: {note}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=300, help="slices of the generated series")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per method")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.slices < 2 or args.repeats < 1:
        parser.error("--slices must be at least 2 and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        method_name, folder = args.child
        run_child(method_name, Path(folder))
    else:
        run_benchmark(args.slices, args.repeats)


if __name__ == "__main__":
    main()
