"""Fuzz medres's NIfTI reader: N seeded hostile variants of a phantom, each in a fresh process.

Run from the repository root (with the project's environment active)::

    python benchmarks/fuzz_nifti.py                  # 100 variants, seed 0
    python benchmarks/fuzz_nifti.py -n 300 --seed 7  # more, another seed

Input: ``sample_data/ct_phantom.nii.gz`` (``--input``), or a generated 48x40x20 int16
phantom when that file is missing. Each variant is one of these kinds, chosen and filled in
from the seed:

* ``header``: 1-4 header fields (dim, pixdim, datatype, bitpix, vox_offset, scl_slope,
  scl_inter, qform/sform codes, quaternion, qoffset, srow rows, xyzt_units, magic) set to
  hostile values (NaN, inf, 0, negatives, 1e-30, 1e30, huge dims, unknown codes);
* ``header-bytes``: 1-8 random bytes of the 352-byte header (and extension flag) replaced;
* ``gz-bytes``: 1-8 random bytes of the compressed file replaced (CRC, deflate, trailer);
* ``gz-cut`` / ``data-cut``: the compressed file cut anywhere, or the decompressed file cut
  and recompressed (a valid gzip stream that ends early);
* ``non-finite``: the image as float32 with a random block (or all) of NaN / inf;
* ``gzip-bomb``: a header declaring 0.1-40 GiB followed by up to 2 GiB of zeros, or a small
  image followed by hundreds of MiB of zeros;
* ``plain``: a ``header`` variant written as uncompressed ``.nii``.

Every variant goes through :func:`medres.io.nifti.read_nifti` in a fresh Python process with
a wall-clock limit (``--timeout``), an address-space limit (``--max-memory-gb``, also given to
medres as ``MEDRES_MAX_MEMORY_GB``) and its peak RSS (``VmHWM``, which includes the ~50 MiB of
Python, numpy and nibabel) recorded. The table counts the outcomes: ``ok`` (a Volume with
finite values and a finite, non-degenerate affine), ``NiftiError`` (one line naming the file),
``other exception`` and ``hang``/``crash`` (both must be 0), then lists the distinct error
messages with their counts (numbers replaced by ``#``).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "ct_phantom.nii.gz"

CHILD = r"""
import json, resource, sys, time
limit = int(float(sys.argv[2]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
from medres.errors import NiftiError
from medres.io.nifti import read_nifti
from medres.runtime import peak_rss_bytes
path = sys.argv[1]
started = time.perf_counter()
try:
    vol = read_nifti(path)
    sane = (vol.array.dtype.kind != "f" or bool(np.isfinite(vol.array).all())) and bool(
        np.isfinite(vol.affine).all()) and abs(float(np.linalg.det(vol.affine[:3, :3]))) > 0
    out = {"outcome": "ok" if sane else "other exception",
           "message": "" if sane else "Volume with non-finite values or a degenerate affine",
           "warnings": list(vol.warnings)}
except NiftiError as exc:
    one_line = "\n" not in str(exc) and str(exc).startswith(path + ": ")
    out = {"outcome": "NiftiError" if one_line else "other exception", "message": str(exc)}
except BaseException as exc:
    out = {"outcome": "other exception", "message": f"{type(exc).__name__}: {exc}"}
out["seconds"] = time.perf_counter() - started
out["peak_rss_mib"] = peak_rss_bytes() / 2**20
print(json.dumps(out))
"""

FLOAT_HOSTILE = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-30, 1e30, -1e30, 3e38, 0.5, 2.0]
HEADER_FIELDS: dict[str, Any] = {
    "dim": "dims",
    "pixdim": "pixdim",
    "datatype": [
        0,
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        768,
        1024,
        1280,
        1536,
        1792,
        2048,
        2304,
        999,
        -1,
        32767,
    ],
    "bitpix": [0, 1, 8, 16, 32, 64, 128, -16, 32767],
    "vox_offset": [np.nan, np.inf, -352.0, 0.0, 100.0, 348.0, 352.5, 356.0, 1e9, 1e30],
    "scl_slope": FLOAT_HOSTILE,
    "scl_inter": FLOAT_HOSTILE,
    "qform_code": [-1, 0, 1, 2, 4, 5, 7, 300],
    "sform_code": [-1, 0, 1, 2, 4, 5, 7, 300],
    "quatern_b": FLOAT_HOSTILE,
    "quatern_c": FLOAT_HOSTILE,
    "quatern_d": FLOAT_HOSTILE,
    "qoffset_x": FLOAT_HOSTILE,
    "srow_x": "row",
    "srow_y": "row",
    "srow_z": "row",
    "xyzt_units": [0, 1, 2, 3, 10, 255],
    "magic": [b"ni1", b"n+2", b"xyz", b""],
}
KINDS = [
    "header",
    "header-bytes",
    "gz-bytes",
    "gz-cut",
    "data-cut",
    "non-finite",
    "gzip-bomb",
    "plain",
]


@dataclass
class Variant:
    name: str
    kind: str
    detail: str


def phantom_bytes(input_path: Path) -> bytes:
    """The decompressed bytes of the input phantom (generated when the file is missing)."""
    if input_path.is_file():
        return gzip.decompress(input_path.read_bytes())
    import nibabel as nib

    x, y, z = np.mgrid[:48, :40, :20]
    inside = ((x - 24) / 20) ** 2 + ((y - 20) / 16) ** 2 <= 1
    data = np.where(inside, 40, -1000).astype(np.int16) + (z % 3).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.9, 0.9, 2.5, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return bytes(img.to_bytes())


def header_view(raw: bytes) -> np.ndarray:
    from nibabel.nifti1 import header_dtype

    return np.frombuffer(raw[: header_dtype.itemsize], dtype=header_dtype).copy()


def hostile_value(rng: np.random.Generator, field: str, header: np.ndarray) -> Any:
    choice = HEADER_FIELDS[field]
    if choice == "dims":
        dims = header[0]["dim"].copy()
        axis = int(rng.integers(0, 8))
        dims[axis] = int(rng.choice([-1, 0, 1, 2, 9, 1000, 2000, 5000, 30000, 32767]))
        return dims
    if choice == "pixdim":
        pixdim = header[0]["pixdim"].copy()
        pixdim[int(rng.integers(0, 4))] = float(rng.choice(FLOAT_HOSTILE))
        return pixdim
    if choice == "row":
        row = header[0][field].copy()
        row[int(rng.integers(0, 4))] = float(rng.choice(FLOAT_HOSTILE))
        return row
    return choice[int(rng.integers(0, len(choice)))]


def mutate_header(rng: np.random.Generator, raw: bytes) -> tuple[bytes, str]:
    header = header_view(raw)
    fields = rng.choice(sorted(HEADER_FIELDS), size=int(rng.integers(1, 5)), replace=False)
    details = []
    with np.errstate(all="ignore"):
        for field in fields:
            value = hostile_value(rng, str(field), header)
            header[0][field] = value
            details.append(f"{field}={np.asarray(value).tolist()}")
    return header.tobytes() + raw[header.itemsize :], ", ".join(details)


def zeros_gzip(n_mib: int) -> bytes:
    return gzip.compress(bytes(1 << 20), mtime=0) * n_mib


def make_variant(rng: np.random.Generator, raw: bytes, kind: str, path: Path) -> str:
    """Write one variant of ``kind`` to ``path``; returns what was done."""
    compressed = gzip.compress(raw, compresslevel=6, mtime=0)
    if kind in ("header", "plain"):
        mutated, detail = mutate_header(rng, raw)
        path.write_bytes(mutated if kind == "plain" else gzip.compress(mutated, mtime=0))
        return detail
    if kind == "header-bytes":
        blob = bytearray(raw)
        positions = rng.integers(0, 352, size=int(rng.integers(1, 9)))
        for position in positions:
            blob[position] = int(rng.integers(0, 256))
        path.write_bytes(gzip.compress(bytes(blob), mtime=0))
        return f"header bytes {sorted(positions.tolist())}"
    if kind == "gz-bytes":
        blob = bytearray(compressed)
        positions = rng.integers(0, len(blob), size=int(rng.integers(1, 9)))
        for position in positions:
            blob[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(blob))
        return f"{len(positions)} gzip bytes"
    if kind == "gz-cut":
        cut = int(rng.integers(0, len(compressed)))
        path.write_bytes(compressed[:cut])
        return f"gzip cut at {cut} of {len(compressed)}"
    if kind == "data-cut":
        cut = int(rng.integers(0, len(raw)))
        path.write_bytes(gzip.compress(raw[:cut], mtime=0))
        return f"data cut at {cut} of {len(raw)}"
    if kind == "non-finite":
        import nibabel as nib

        img = nib.Nifti1Image.from_bytes(raw)
        data = np.asarray(img.dataobj, dtype=np.float32)
        value = float(rng.choice([np.nan, np.inf, -np.inf]))
        if rng.random() < 0.2:
            data[...] = value
            detail = f"all {value}"
        else:
            size = [int(rng.integers(1, s + 1)) for s in data.shape]
            start = [int(rng.integers(0, s - k + 1)) for s, k in zip(data.shape, size, strict=True)]
            data[tuple(slice(a, a + k) for a, k in zip(start, size, strict=True))] = value
            detail = f"block {size} of {value}"
        out = nib.Nifti1Image(data, img.affine, header=img.header)
        out.header.set_data_dtype(np.float32)
        path.write_bytes(gzip.compress(out.to_bytes(), mtime=0))
        return detail
    if kind == "gzip-bomb":
        header = header_view(raw)
        if rng.random() < 0.5:
            side = int(rng.choice([512, 1024, 2048, 4096]))
            depth = int(rng.choice([100, 500, 2000, 10000]))
            header[0]["dim"] = [3, side, side, depth, 1, 1, 1, 1]
            header[0]["datatype"], header[0]["bitpix"] = 2, 8
            declared = side * side * depth
            n_mib = min(declared >> 20, 2048)
            gib = declared / 2**30
            detail = f"declares {side}x{side}x{depth} uint8 ({gib:.1f} GiB), {n_mib} MiB of zeros"
        else:
            header[0]["dim"] = [3, 8, 8, 8, 1, 1, 1, 1]
            header[0]["datatype"], header[0]["bitpix"] = 2, 8
            n_mib = int(rng.choice([64, 256, 1024]))
            detail = f"8x8x8 uint8 image then {n_mib} MiB of zeros"
        head = header.tobytes() + b"\x00" * 4 + (b"" if "then" not in detail else bytes(512))
        path.write_bytes(gzip.compress(head, mtime=0) + zeros_gzip(n_mib))
        return detail
    raise ValueError(kind)


def run_child(path: Path, timeout_s: float, max_memory_gb: float) -> dict[str, Any]:
    env = {"MEDRES_MAX_MEMORY_GB": str(max_memory_gb / 2), "PATH": "/usr/bin:/bin"}
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(max_memory_gb)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=REPO,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {
            "outcome": "hang",
            "message": f"no answer after {timeout_s:g} s",
            "seconds": time.perf_counter() - started,
            "peak_rss_mib": float("nan"),
        }
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {
            "outcome": "crash",
            "message": f"exit {proc.returncode}: {proc.stderr[-300:]}",
            "seconds": time.perf_counter() - started,
            "peak_rss_mib": float("nan"),
        }
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def template(message: str, path: Path) -> str:
    text = message.replace(str(path), "FILE")
    text = re.sub(r"b'[^']*'", "b'…'", text)
    text = re.sub(r"0x[0-9a-f]+", "#", text)
    text = re.sub(
        r"(?<![A-Za-z_\d])[-+]?(\d+(\.\d+)?(e[-+]?\d+)?|nan|inf)(?![A-Za-z_\d])", "#", text
    )
    text = re.sub(r"\[[^\]]*#[^\]]*\]", "[…]", text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=100, help="number of variants [100]")
    parser.add_argument("--seed", type=int, default=0, help="random seed [0]")
    parser.add_argument("--input", type=Path, default=SAMPLE, help="phantom .nii.gz")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per variant [20]")
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=4.0,
        help="address-space limit per child; medres's budget is half of it [4]",
    )
    parser.add_argument("--keep", type=Path, help="folder to keep the variants in")
    args = parser.parse_args(argv)

    raw = phantom_bytes(args.input)
    rng = np.random.default_rng(args.seed)
    rows: list[tuple[Variant, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="fuzz_nifti_") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        baseline = folder / "baseline.nii.gz"
        baseline.write_bytes(gzip.compress(raw, mtime=0))
        base = run_child(baseline, args.timeout, args.max_memory_gb)
        for index in range(args.n):
            kind = KINDS[int(rng.integers(0, len(KINDS)))]
            path = folder / f"variant_{index:04d}{'.nii' if kind == 'plain' else '.nii.gz'}"
            detail = make_variant(rng, raw, kind, path)
            result = run_child(path, args.timeout, args.max_memory_gb)
            result["message"] = template(result.get("message", ""), path)
            rows.append((Variant(path.name, kind, detail), result))
            if result["outcome"] in ("other exception", "hang", "crash"):
                print(
                    f"!! {path.name} ({kind}: {detail}): {result['outcome']}: {result['message']}"
                )
            if not args.keep:
                path.unlink()

    source = args.input if args.input.is_file() else "generated 48x40x20 phantom"
    print(
        f"read_nifti on {args.n} variants of {source} (seed {args.seed}); baseline: "
        f"{base['outcome']} in {base['seconds'] * 1000:.0f} ms, "
        f"peak RSS {base['peak_rss_mib']:.0f} MiB"
    )
    print()
    outcomes = ["ok", "NiftiError", "other exception", "hang", "crash"]
    header = (
        f"{'kind':<14}" + "".join(f"{o:>17}" for o in outcomes) + f"{'max s':>8}{'max RSS MiB':>13}"
    )
    print(header)
    print("-" * len(header))
    for kind in [*KINDS, "all"]:
        picked = [r for v, r in rows if kind in ("all", v.kind)]
        if not picked:
            continue
        counts = collections.Counter(r["outcome"] for r in picked)
        rss = [r["peak_rss_mib"] for r in picked if r["peak_rss_mib"] == r["peak_rss_mib"]]
        if kind == "all":
            print("-" * len(header))
        print(
            f"{kind:<14}"
            + "".join(f"{counts.get(o, 0):>17}" for o in outcomes)
            + f"{max(r['seconds'] for r in picked):>8.2f}{max(rss, default=float('nan')):>13.0f}"
        )
    print()
    errors = collections.Counter(r["message"] for _, r in rows if r["outcome"] == "NiftiError")
    print(f"{len(errors)} distinct NiftiError messages (numbers shown as #):")
    for message, count in errors.most_common():
        print(f"{count:>5}  {message}")
    warned = collections.Counter(
        template(w, Path("FILE"))
        for _, r in rows
        if r["outcome"] == "ok"
        for w in r.get("warnings", [])
    )
    if warned:
        print()
        print(f"{len(warned)} distinct warnings on Volumes read ok:")
        for message, count in warned.most_common():
            print(f"{count:>5}  {message}")
    bad = sum(r["outcome"] in ("other exception", "hang", "crash") for _, r in rows)
    if bad:
        sys.exit(f"{bad} variants ended in another exception, a hang or a crash")


if __name__ == "__main__":
    main()
