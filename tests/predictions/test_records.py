"""The typed records of a prediction folder: round trips, foreign files, resume keys."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medres.errors import OutputError
from medres.inference.resume import is_complete
from medres.predictions import records as rec
from medres.predictions.layout import RunFolder, ScanFolder


def _record(**changes: object) -> rec.ScanRecord:
    affine = np.diag([2.5, 0.8, 0.8, 1.0])
    affine[0, 1] = 0.3  # sheared
    record = rec.ScanRecord(
        medres_version="test",
        scan_id="s1",
        fingerprint="f" * 16,
        source=rec.SourceRecord(kind="nifti", name="a/s1.nii.gz", key="k1", files=[], n_files=1),
        grid=rec.GridRecord(
            shape=(17, 15, 9),
            spacing_mm=(2.5, 0.85, 0.8),
            orientation="RAS",
            affine=affine.tolist(),
        ),
        ensemble=rec.EnsembleRecord(pipelines=["p"], members=["p/fold_0"], mode="mean", tta=[True]),
        labels=["background", "lesion"],
        lesion_labels=["lesion"],
        n_lesions=0,
        total_volume_ml=0.0,
        total_area_mm2=None,
        lesions=[],
    )
    return record.model_copy(update=changes)


def test_a_scan_record_round_trips_with_its_grid(tmp_path: Path) -> None:
    folder = ScanFolder(tmp_path / "s1")
    folder.path.mkdir()
    _record().write(folder)
    back = rec.ScanRecord.read(folder)
    assert back == _record()
    assert back.grid.grid.voxel_measure == pytest.approx(2.5 * 0.8 * 0.8)  # |det|, sheared


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "not a medres scan record"),
        ('{"scan_id": "s1"}', "not a medres scan record"),
        ("\xff\xfe", "not a medres scan record"),
    ],
    ids=["a-list", "missing-fields", "not-utf8"],
)
def test_a_foreign_record_is_one_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    folder = ScanFolder(tmp_path / "s1")
    folder.path.mkdir()
    folder.lesions_json.write_bytes(text.encode("latin-1"))
    with pytest.raises(OutputError, match=rf"lesions.json: {message}"):
        rec.ScanRecord.read(folder)


def test_a_record_whose_grid_is_not_a_grid_is_refused(tmp_path: Path) -> None:
    folder = ScanFolder(tmp_path / "s1")
    folder.path.mkdir()
    text = _record().model_dump_json().replace('"affine":[[2.5,0.3', '"affine":[[0.0,0.0')
    folder.lesions_json.write_text(text.replace("0.8,0.0,0.0]", "0.0,0.0,0.0]"))
    with pytest.raises(OutputError, match="lesions.json: not a medres scan record.*grid"):
        rec.ScanRecord.read(folder)


def test_a_fifo_record_is_refused_without_blocking(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    os.mkfifo(run.run_json)
    with pytest.raises(OutputError, match="FIFO"):
        rec.RunRecord.read(run)


def test_resume_refuses_a_complete_record_of_another_source(tmp_path: Path) -> None:
    folder = ScanFolder(tmp_path / "s1")
    folder.path.mkdir()
    folder.seg.write_bytes(b"mask")
    _record(complete=True, outputs={"seg.nii.gz": 4}).write(folder)
    assert is_complete(folder, "f" * 16, source="k1") is not None
    assert is_complete(folder, "f" * 16, source="another series") is None
    old = _record(complete=True, outputs={"seg.nii.gz": 4})
    old.model_copy(update={"source": old.source.model_copy(update={"key": ""})}).write(folder)
    assert is_complete(folder, "f" * 16, source="k1") is None  # an earlier medres's record


def test_scan_status_is_a_string_at_every_boundary() -> None:
    result = rec.ScanResult(scan_id="s", status="resumed")
    assert result.status is rec.ScanStatus.RESUMED and result.row()["status"] == "resumed"
    assert str(rec.ScanStatus.OK) == "ok"
    with pytest.raises(ValueError, match="'done' is not a valid ScanStatus"):
        rec.ScanResult(scan_id="s", status="done")
