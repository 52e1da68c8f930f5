"""Deterministic synthetic scans with known lesions: the sample data and test fixtures.

``python -m medres.synthetic sample_data`` regenerates the project's ``sample_data/``
folder byte for byte (fixed seeds, fixed UIDs, gzip without timestamps) and writes its
README with sha256 sums.

Example:
    >>> ct, mask = ct_phantom(shape=(40, 32, 12), seed=1)
    >>> ct.array.dtype.name, int(mask.array.max())
    ('int16', 1)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from medres.io.atomic import write_bytes_atomic, write_text_atomic
from medres.io.dicom_write import DicomSeriesInfo, write_dicom_series
from medres.io.nifti import write_nifti
from medres.io.volume import ScanKind, SourceInfo, Volume


def _grid(shape: tuple[int, ...]) -> list[npt.NDArray[np.float64]]:
    return [
        g.astype(np.float64) for g in np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ]


def ct_phantom(
    *,
    shape: tuple[int, int, int] = (96, 80, 40),
    spacing_mm: tuple[float, float, float] = (0.9, 0.9, 2.5),
    n_lesions: int = 3,
    seed: int = 0,
) -> tuple[Volume, Volume]:
    """A CT-like abdomen phantom in HU with spherical lesions, and its lesion mask.

    Body: an elliptic cylinder of soft tissue (~40 HU) under a fat rim (~-100 HU), a
    vertebra (~700 HU) at the back, air (-1000 HU) outside, Gaussian noise (sd 12 HU).
    Lesions: spheres of radius 4-9 mm at 90-120 HU inside the soft tissue.

    Args:
        shape: ``(x, y, z)`` voxels (x: right-to-left, y: anterior-to-posterior).
        spacing_mm: Voxel size.
        n_lesions: Number of spheres (they never touch).
        seed: Random seed: same seed, same phantom.

    Returns:
        ``(ct, mask)``: int16 HU volume ``(1, x, y, z)`` with an LPS-ordered axial affine
        (as a DICOM axial stack loads), and a uint8 mask (1 = lesion) on the same grid.
    """
    rng = np.random.default_rng(seed)
    sx, sy, sz = spacing_mm
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (shape[0] - 1) / 2, sy * (shape[1] - 1) / 2, -sz * (shape[2] - 1) / 2]
    x, y, z = _grid(shape)
    xm = (x - (shape[0] - 1) / 2) * sx
    ym = (y - (shape[1] - 1) / 2) * sy
    zm = z * sz
    a, b = 0.45 * shape[0] * sx, 0.40 * shape[1] * sy
    r = np.sqrt((xm / a) ** 2 + (ym / b) ** 2)
    hu = np.full(shape, -1000.0)
    hu[r <= 1.0] = -100.0
    hu[r <= 0.9] = 40.0
    spine = ((xm / 9.0) ** 2 + ((ym - 0.62 * b) / 8.0) ** 2) <= 1.0
    hu[spine] = 700.0
    mask = np.zeros(shape, np.uint8)
    centres: list[tuple[float, float, float, float]] = []
    attempts = 0
    while len(centres) < n_lesions and attempts < 1000:
        attempts += 1
        radius = float(rng.uniform(4.0, 9.0))
        cx = float(rng.uniform(-0.55, 0.55) * a)
        cy = float(rng.uniform(-0.55, 0.35) * b)
        cz = float(rng.uniform(radius + sz, shape[2] * sz - radius - sz))
        if ((cx / a) ** 2 + (cy / b) ** 2) ** 0.5 > 0.9 - radius / min(a, b):
            continue
        if ((cx / 9.0) ** 2 + ((cy - 0.62 * b) / 8.0) ** 2) <= 4.0:
            continue
        if any(
            np.hypot(np.hypot(cx - c[0], cy - c[1]), cz - c[2]) < radius + c[3] + 4 for c in centres
        ):
            continue
        centres.append((cx, cy, cz, radius))
    for index, (cx, cy, cz, radius) in enumerate(centres):
        inside = (xm - cx) ** 2 + (ym - cy) ** 2 + (zm - cz) ** 2 <= radius**2
        hu[inside] = 90.0 + 10.0 * index
        mask[inside] = 1
    hu += rng.normal(0.0, 12.0, shape)
    ct_array = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)[None]
    source = SourceInfo(kind=ScanKind.NIFTI, series_description="synthetic CT phantom")
    ct = Volume(ct_array, affine, modality="CT", source=source)
    return ct, Volume(mask[None], affine, source=source)


def disc_image(
    *, size: tuple[int, int] = (96, 80), n_discs: int = 2, seed: int = 0
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """A 3-channel MR-like slice (rows, cols, 3) with bright discs, and its 0/255 mask.

    Channels mimic pre-contrast, FLAIR and post-contrast: a head-shaped ellipse, discs
    bright on FLAIR. ``n_discs=0`` gives a lesion-free slice (empty mask).
    """
    rng = np.random.default_rng(seed)
    rows, cols = size
    yy, xx = _grid((rows, cols))
    head = ((yy - rows / 2) / (0.42 * rows)) ** 2 + ((xx - cols / 2) / (0.40 * cols)) ** 2 <= 1
    base = np.where(head, 90.0, 5.0)
    channels = [base * f for f in (0.9, 1.0, 1.1)]
    mask = np.zeros((rows, cols), np.uint8)
    for _ in range(n_discs):
        radius = float(rng.uniform(4, 9))
        cy = float(rng.uniform(0.3, 0.7) * rows)
        cx = float(rng.uniform(0.3, 0.7) * cols)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        mask[disc] = 255
        channels[1] = np.where(disc, 200.0, channels[1])
        channels[2] = np.where(disc, 150.0, channels[2])
    image = np.stack(channels, axis=-1) + rng.normal(0, 4.0, (rows, cols, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def skin_photo(
    *, size: tuple[int, int] = (77, 101), seed: int = 0
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """A dermoscopy-like colour photograph (rows, cols, 3) of one lesion, and its 0/255 mask.

    Skin-toned background with uneven lighting and a few dark hairs; one brown lesion
    with a wavy border (a randomly perturbed ellipse), darker in its centre. The image
    carries no pixel size, as a photograph does.
    """
    rng = np.random.default_rng(seed)
    rows, cols = size
    yy, xx = _grid((rows, cols))
    light = 1.0 - 0.25 * (((yy - rows * 0.4) / rows) ** 2 + ((xx - cols * 0.6) / cols) ** 2)
    skin = np.array([224.0, 172.0, 150.0]) * rng.uniform(0.9, 1.05)
    image = light[..., None] * skin[None, None, :]
    cy, cx = rng.uniform(0.35, 0.65) * rows, rng.uniform(0.35, 0.65) * cols
    ry, rx = rng.uniform(0.15, 0.3) * rows, rng.uniform(0.15, 0.3) * cols
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1.0 + sum(
        rng.uniform(0.03, 0.09) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (3, 5, 7)
    )
    radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    lesion = radius <= wobble
    brown = np.array([120.0, 70.0, 45.0]) * rng.uniform(0.8, 1.1)
    depth = np.clip(1.0 - radius / wobble, 0.0, 1.0)[..., None]
    image = np.where(lesion[..., None], brown * (1.0 - 0.35 * depth), image)
    for _ in range(int(rng.integers(1, 4))):  # hairs: thin dark lines across the photo
        slope, offset = rng.uniform(-1.5, 1.5), rng.uniform(0, rows)
        hair = np.abs(yy - (slope * (xx - cols / 2) + offset)) < 0.6
        image = np.where(hair[..., None], image * 0.45, image)
    image = image + rng.normal(0.0, 5.0, image.shape)
    mask = np.where(lesion, 255, 0).astype(np.uint8)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def write_photo_set(out_dir: str | Path, *, n_cases: int = 12) -> list[Path]:
    """A photograph data set as many exports lay it out: ``images/lesion_NN.png`` (RGB,
    odd sizes) and their masks of the same name in ``masks/`` (0/255), no pixel size."""
    out = Path(out_dir)
    written: list[Path] = []
    for index in range(1, n_cases + 1):
        size = (71 + 6 * (index % 4), 97 + 4 * (index % 3))
        image, mask = skin_photo(size=size, seed=500 + index)
        name = f"lesion_{index:02d}.png"
        written.append(write_bytes_atomic(out / "images" / name, _png_bytes(image)))
        written.append(write_bytes_atomic(out / "masks" / name, _png_bytes(mask)))
    return written


def _png_bytes(array: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_sample_data(out_dir: str | Path) -> list[Path]:
    """(Re)generate the sample data set and its README. Returns the data files written."""
    out = Path(out_dir)
    written: list[Path] = []
    ct, mask = ct_phantom(seed=7)
    written += write_dicom_series(
        ct,
        out / "ct_phantom_dicom",
        DicomSeriesInfo(
            series_description="Phantom abdomen 2.5mm",
            series_number=3,
            modality="CT",
            uid_seed="medres-sample-ct",
            rescale_intercept=-1024.0,
        ),
    )
    written.append(write_nifti(out / "ct_phantom.nii.gz", ct))
    written.append(write_nifti(out / "ct_phantom_mask.nii.gz", mask))
    for index, n_discs in enumerate((2, 1, 0, 3), start=1):
        image, disc_mask = disc_image(n_discs=n_discs, seed=100 + index)
        written.append(
            write_bytes_atomic(out / "images2d" / f"slice_{index:02d}.png", _png_bytes(image))
        )
        written.append(
            write_bytes_atomic(
                out / "images2d" / f"slice_{index:02d}_mask.png", _png_bytes(disc_mask)
            )
        )
    written += write_ct_training_set(out / "ct_train")
    write_text_atomic(out / "README.md", _readme(out, written))
    return written


def write_ct_training_set(out_dir: str | Path, *, n_cases: int = 6) -> list[Path]:
    """Small CT phantoms in Decathlon layout (``imagesTr/``, ``labelsTr/``, ``dataset.json``).

    They train the bundled demo model; each case has its own seed, size and pixel
    spacing, none equals the sample phantom (seed 7) it is later tested on.
    """
    out = Path(out_dir)
    written: list[Path] = []
    entries = []
    for index in range(n_cases):
        spacing = 1.1 + 0.1 * (index % 3)
        shape = (round(72 * 1.1 / spacing), round(62 * 1.1 / spacing), 24)
        ct, mask = ct_phantom(
            shape=shape,
            spacing_mm=(spacing, spacing, 2.5),
            n_lesions=2 + index % 3,
            seed=20 + index,
        )
        name = f"phantom_{index + 1:03d}"
        written.append(write_nifti(out / "imagesTr" / f"{name}.nii.gz", ct))
        written.append(write_nifti(out / "labelsTr" / f"{name}.nii.gz", mask))
        entries.append({"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"})
    dataset = {
        "name": "medres CT phantoms",
        "description": "synthetic CT phantoms with spherical lesions (medres.synthetic)",
        "labels": {"0": "background", "1": "lesion"},
        "training": entries,
    }
    written.append(write_text_atomic(out / "dataset.json", json.dumps(dataset, indent=2) + "\n"))
    return written


def _readme(root: Path, files: list[Path]) -> str:
    rows = []
    for path in sorted(files):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append(
            f"| `{path.relative_to(root).as_posix()}` | {path.stat().st_size} | `{digest}` |"
        )
    total = sum(p.stat().st_size for p in files)
    table = "\n".join(rows)
    return f"""# medres sample data

Small synthetic scans with known lesions, written by medres's own generator. No patient
data: every pixel comes from `medres/synthetic.py` with fixed seeds.

Regenerate (byte-identical) with:

```
python -m medres.synthetic sample_data
```

| what | files |
|---|---|
| CT-like abdomen phantom, 96x80x40 voxels, 0.9x0.9x2.5 mm, in HU (-1024..~800), 3 spherical lesions (90-120 HU, radius 4-9 mm) | `ct_phantom_dicom/IM0001`... (40 DICOM files without extension, CT Image Storage, stored unsigned with RescaleIntercept -1024) |
| the same phantom as NIfTI with its lesion mask (1 = lesion) | `ct_phantom.nii.gz`, `ct_phantom_mask.nii.gz` |
| 2D MR-like slices (96x80, 3 channels: pre-contrast, FLAIR, post-contrast) with 2, 1, 0 and 3 bright discs, masks 0/255 | `images2d/slice_NN.png`, `images2d/slice_NN_mask.png` |
| 6 smaller CT phantoms (61-72 x 52-62 x 24 voxels, 1.1-1.3 mm pixels, 2.5 mm slices, 2-4 lesions each, seeds 20-25) in Decathlon layout: the demo model's training data (`pipelines/demo_ct_3d.yaml`) | `ct_train/imagesTr/phantom_NNN.nii.gz`, `ct_train/labelsTr/phantom_NNN.nii.gz`, `ct_train/dataset.json` |

The DICOM phantom's patient fields are fake (`Phantom^Sample`, `PHANTOM01`).
Total size: {total} bytes.

## sha256

| file | bytes | sha256 |
|---|---|---|
{table}
"""


def main(argv: list[str] | None = None) -> None:
    """``python -m medres.synthetic OUT``: write the sample data set into OUT;
    ``--photos``: a colour photograph set (``images/`` + ``masks/``) instead."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="output folder, e.g. sample_data")
    parser.add_argument(
        "--photos",
        type=int,
        metavar="N",
        default=0,
        help="write N dermoscopy-like photographs with their masks in masks/ instead",
    )
    args = parser.parse_args(argv)
    files = (
        write_photo_set(args.out, n_cases=args.photos)
        if args.photos
        else write_sample_data(args.out)
    )
    print(f"wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    main()
