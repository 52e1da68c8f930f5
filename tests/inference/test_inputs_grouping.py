"""Channel files (``CASE_0000``...) are stacked only as many as a model takes, and only
when their headers show one grid; the row says why files were or were not grouped."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medres.inference.inputs import assemble_inputs, header_grid
from medres.io.discover import DiscoveryResult, ScanRef, safe_name
from medres.io.nifti import nifti_stem
from medres.io.volume import ScanKind

AFFINE = np.diag([2.5, 0.8, 0.8, 1.0])


def _write(path: Path, shape: tuple[int, ...] = (5, 4, 3), affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), affine), path)
    return path


def _found(paths: list[Path]) -> DiscoveryResult:
    refs = [
        ScanRef(scan_id=safe_name(nifti_stem(p)), kind=ScanKind.NIFTI, paths=(str(p),))
        for p in sorted(paths)
    ]
    return DiscoveryResult(root=str(paths[0].parent), scans=refs)


def test_sixteen_ct_files_stay_sixteen_scans_for_a_one_channel_model(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"ct_{i:04d}.nii.gz") for i in range(16)]
    inputs, _ = assemble_inputs(_found(paths), channel_sets=[("ct",)])
    assert len(inputs) == 16 and all(len(item.refs) == 1 for item in inputs)
    assert (
        "16 files, but the models take 1 channel(s), so they are separate scans" in inputs[3].note
    )


def test_six_hundred_files_are_never_one_six_hundred_channel_scan(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"soak_{i:04d}.nii", shape=(2, 2, 2)) for i in range(600)]
    inputs, _ = assemble_inputs(_found(paths), channel_sets=[("ct",), ("flair", "t1", "t2")])
    assert len(inputs) == 600
    assert "600 files, but the models take 1, 3 channel(s)" in inputs[0].note


def test_files_on_one_grid_become_the_channels_a_model_takes(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"P1_{i:04d}.nii.gz") for i in range(3)]
    (item,), _ = assemble_inputs(_found(paths), channel_sets=[("flair", "t1", "t2")])
    assert item.scan_id == "P1" and item.grouped_by == "_0000 suffix"
    assert [Path(r.paths[0]).name for r in item.refs] == [p.name for p in paths]
    assert (
        item.note
        == "3 files P1_0000..P1_0002 stacked as the 3 input channels (nnU-Net _0000 naming)"
    )


@pytest.mark.parametrize(
    ("shape", "affine", "reason"),
    [
        ((5, 4, 4), AFFINE, "P1_0002.nii.gz has shape (5, 4, 4), not (5, 4, 3)"),
        ((5, 4, 3), np.diag([1.0, 1.0, 1.0, 1.0]), "P1_0002.nii.gz lies on another grid"),
    ],
    ids=["other-shape", "other-affine"],
)
def test_unrelated_files_are_not_stacked(
    tmp_path: Path, shape: tuple[int, ...], affine: np.ndarray, reason: str
) -> None:
    paths = [_write(tmp_path / f"P1_{i:04d}.nii.gz") for i in range(2)]
    paths.append(_write(tmp_path / "P1_0002.nii.gz", shape=shape, affine=affine))
    inputs, _ = assemble_inputs(_found(paths), channel_sets=[("a", "b", "c")])
    assert len(inputs) == 3
    assert all(reason in item.note for item in inputs)


def test_a_damaged_header_is_not_grouped_and_not_read_past_the_header(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"P1_{i:04d}.nii.gz") for i in range(2)]
    paths[1].write_bytes(b"\x1f\x8b garbage")
    assert header_grid(str(paths[1])) is None
    inputs, _ = assemble_inputs(_found(paths), channel_sets=[("a", "b")])
    assert len(inputs) == 2 and "cannot be read" in inputs[0].note


def test_channel_number_gap_keeps_separate_scans(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"P1_{i:04d}.nii.gz") for i in (0, 2)]
    inputs, _ = assemble_inputs(_found(paths), channel_sets=[("a", "b")])
    assert len(inputs) == 2 and "gap" in inputs[0].note
