"""Shared fixtures: tiny synthetic scans with odd, anisotropic shapes, and the real data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medres.io.volume import Volume
from medres.pipeline import PipelineConfig, parse_pipeline

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DATA = REPO / "sample_data"


def rgb_lesion_pipeline(name: str, patch: int) -> PipelineConfig:
    """A tiny 2D pipeline of 3-channel images with one lesion label, 2 folds."""
    return parse_pipeline(
        {
            "name": name,
            "dims": 2,
            "channels": ["r", "g", "b"],
            "labels": ["background", "lesion"],
            "lesion_labels": ["lesion"],
            "model": {"name": "res_unet"},
            "training": {"patch_size": [patch, patch], "folds": 2},
        }
    )


def shared(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test when it is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def on_world_grid(
    array: np.ndarray, affine: np.ndarray, like_affine: np.ndarray, *, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Re-index a spatial array (flips/permutations only) onto the axis order of ``like_affine``.

    Returns the re-indexed array and its affine; a correct loader gives exactly the
    reference array and affine back. Used to compare with dcm2niix (which flips rows).
    """
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(like_affine)
    )
    out = nib.orientations.apply_orientation(array, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    return out, new_affine


def random_volume(shape: tuple[int, int, int], affine: np.ndarray, *, seed: int = 0) -> Volume:
    """A (1, x, y, z) int16 volume whose every voxel differs (so any swap or flip shows)."""
    rng = np.random.default_rng(seed)
    values = rng.permutation(np.arange(int(np.prod(shape))) % 3000 - 1000)
    return Volume(values.reshape(shape).astype(np.int16)[None], affine, modality="CT")


def oblique_affine(spacing: tuple[float, float, float], *, angle_deg: float = 23.0) -> np.ndarray:
    """A RAS affine rotated about two axes, with anisotropic voxels and an offset."""
    a = np.radians(angle_deg)
    b = np.radians(angle_deg / 2)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag(spacing)
    affine[:3, 3] = [-31.5, 12.25, 87.0]
    return affine


def images_loaded_in_chromium(page: Path) -> tuple[int, int]:
    """Open an HTML page in headless Chromium: ``(images that decoded, images)``.

    Skips the test where Chromium is not installed (Debian package ``chromium``; ``.ci/run``
    installs it). The page is copied beside itself with a script that counts, after the
    load event, the images that decoded, and writes the count into the title.
    """
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (Debian package chromium; .ci/run installs it)")
    probe = page.with_name(f".probe_{page.name}")
    probe.write_text(
        page.read_text(encoding="utf-8").replace(
            "</body>",
            "<script>window.addEventListener('load', () => { const i = [...document.images];"
            " document.title = 'loaded ' + i.filter(x => x.complete && x.naturalWidth > 0).length"
            " + ' of ' + i.length; });</script></body>",
        ),
        encoding="utf-8",
    )
    try:
        dom = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=5000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout
    finally:
        probe.unlink()
    title = re.search(r"<title>loaded (\d+) of (\d+)</title>", dom)
    assert title is not None, dom[:500]
    return int(title.group(1)), int(title.group(2))


def relabelled_model(source: Path, target: Path, old: str, new: str) -> Path:
    """A consistent copy of a model folder whose label ``old`` is called ``new``: its
    pipeline.yaml, model.json labels and pipeline checksum all agree (another model)."""
    import hashlib
    import json
    import shutil

    shutil.copytree(source, target)
    pipeline = target / "pipeline.yaml"
    pipeline.write_text(pipeline.read_text().replace(f"- {old}\n", f"- {new}\n"))
    manifest = json.loads((target / "model.json").read_text())
    for key in ("labels", "lesion_labels"):
        manifest[key] = [new if name == old else name for name in manifest[key]]
    manifest["pipeline_sha256"] = hashlib.sha256(pipeline.read_bytes()).hexdigest()
    (target / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


@pytest.fixture
def no_open_of(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Paths that must never be opened: any attempt fails the test instead of hanging."""
    import builtins
    import io
    import os
    from typing import Any

    forbidden: set[str] = set()
    real_open, real_os_open = io.open, os.open

    def check(file: Any) -> None:
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in forbidden:
            raise AssertionError(f"{file} was opened")

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        check(file)
        return real_open(file, *args, **kwargs)

    def guarded_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        check(path)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    return forbidden
