"""``medres report`` pairs each scan folder with the source its record names, never by
scan id or discovery order, and says so when that source is gone or changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medres.cli.app import app
from medres.predictions.layout import RunFolder
from medres.predictions.records import ScanRecord
from tests.conftest import SAMPLE_DATA

runner = CliRunner()


def _said(output: str) -> str:
    """The console output with the terminal's line wrapping undone."""
    return " ".join(output.split())


DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_ct_3d"


@pytest.fixture()
def two_same_named_scans(tmp_path: Path) -> tuple[Path, RunFolder]:
    """``p/x/scan.nii.gz`` and ``q/x/scan.nii.gz``: scan ids ``x_scan`` and ``x_scan_2``
    (the order of discovery decides which gets the suffix)."""
    scans = tmp_path / "scans"
    for folder in ("p", "q"):
        (scans / folder / "x").mkdir(parents=True)
        shutil.copy(SAMPLE_DATA / "ct_phantom.nii.gz", scans / folder / "x" / "scan.nii.gz")
    out = tmp_path / "out"
    args = ["predict", str(scans), "--model", str(DEMO), "--out", str(out), "--no-report"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = RunFolder(out)
    names = {f.scan_id: ScanRecord.read(f).source.name for f in run.scans()}
    assert names == {"x_scan": "p/x/scan.nii.gz", "x_scan_2": "q/x/scan.nii.gz"}
    return scans, run


def test_a_new_scan_in_the_folder_does_not_shift_the_pairing(
    two_same_named_scans: tuple[Path, RunFolder],
) -> None:
    scans, run = two_same_named_scans
    # o/x/scan.nii.gz sorts first: discovery now calls it x_scan, p's scan x_scan_2...
    (scans / "o" / "x").mkdir(parents=True)
    other = sorted((SAMPLE_DATA / "ct_train" / "imagesTr").glob("*.nii.gz"))[0]
    shutil.copy(other, scans / "o" / "x" / "scan.nii.gz")
    result = runner.invoke(app, ["report", str(run.path), "--no-pdf"])
    assert result.exit_code == 0, result.output  # ...but each folder keeps its own source
    assert "2 report(s) written" in _said(result.output)
    for scan_id in ("x_scan", "x_scan_2"):
        assert run.scan(scan_id).report_html.is_file()


def test_a_removed_source_is_not_replaced_by_another_scan(
    two_same_named_scans: tuple[Path, RunFolder],
) -> None:
    scans, run = two_same_named_scans
    shutil.rmtree(scans / "p")
    result = runner.invoke(app, ["report", str(run.path), "--no-pdf"])
    assert result.exit_code == 1, result.output
    assert "x_scan: its source p/x/scan.nii.gz is no longer in" in _said(result.output)
    assert not run.scan("x_scan").report_html.exists()  # nothing drawn from another scan
    assert run.scan("x_scan_2").report_html.is_file()  # q's folder still finds q


def test_a_changed_source_is_refused_by_name(
    two_same_named_scans: tuple[Path, RunFolder],
) -> None:
    scans, run = two_same_named_scans
    changed = scans / "q" / "x" / "scan.nii.gz"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    result = runner.invoke(app, ["report", str(run.path), "--no-pdf"])
    assert result.exit_code == 1, result.output
    assert "x_scan_2: its source q/x/scan.nii.gz changed since medres predict read it" in _said(
        result.output
    )
    assert run.scan("x_scan").report_html.is_file()
    assert not run.scan("x_scan_2").report_html.exists()


def test_a_folder_without_a_source_record_says_to_predict_again(
    two_same_named_scans: tuple[Path, RunFolder],
) -> None:
    _, run = two_same_named_scans
    folder = run.scan("x_scan")
    record = ScanRecord.read(folder)
    old = record.model_copy(update={"source": record.source.model_copy(update={"key": ""})})
    old.write(folder)
    result = runner.invoke(app, ["report", str(run.path), "--no-pdf"])
    assert result.exit_code == 1, result.output
    assert "x_scan: its record does not say which source it came from" in _said(result.output)


def test_an_unexpected_failure_of_one_report_does_not_end_the_run(
    two_same_named_scans: tuple[Path, RunFolder], monkeypatch: pytest.MonkeyPatch
) -> None:
    from medres.report import run as report_run

    _, run = two_same_named_scans
    real = report_run.report_scan

    def flaky(scan: object, **options: object) -> object:
        if scan.folder.scan_id == "x_scan":  # type: ignore[attr-defined]
            raise KeyError(0)
        return real(scan, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(report_run, "report_scan", flaky)
    result = runner.invoke(app, ["report", str(run.path), "--no-pdf"])
    assert result.exit_code == 1, result.output
    assert "x_scan: KeyError: 0" in _said(result.output)
    assert run.scan("x_scan_2").report_html.is_file()
