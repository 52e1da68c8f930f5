"""What a user sees when things go wrong: doctor, plain progress, exit codes, logs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medres import doctor
from medres.cli.app import app
from medres.cli.console import PlainProgress
from medres.inference.batch import PredictOptions, open_ensembles, predict_batch
from medres.inference.scan_step import AfterScanResult, ScanPrediction
from tests.conftest import SAMPLE_DATA

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_ct_3d"


def test_doctor_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = doctor.importlib.util.find_spec
    monkeypatch.setattr(
        doctor.importlib.util,
        "find_spec",
        lambda name: None if name in {"highdicom", "openvino"} else real(name),
    )
    monkeypatch.setattr(doctor.shutil, "which", lambda program: None)
    result = runner.invoke(app, ["doctor", "--no-gpu", "--json"])
    assert result.exit_code == 1, result.output  # highdicom is needed for reports
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["highdicom"]["ok"] is False and checks["highdicom"]["need"] == "reports"
    assert checks["openvino"]["install"] == "pip install 'medres[openvino]'"
    result = runner.invoke(app, ["doctor", "--no-gpu"])
    assert "apt-get install chromium poppler-utils" in result.stdout


def test_doctor_passes_when_only_optional_parts_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = doctor.importlib.util.find_spec
    monkeypatch.setattr(
        doctor.importlib.util,
        "find_spec",
        lambda name: None if name in {"onnxruntime", "openvino", "nncf"} else real(name),
    )
    monkeypatch.setattr(doctor.shutil, "which", lambda program: None)
    result = runner.invoke(app, ["doctor", "--no-gpu"])
    assert result.exit_code == 0, result.output
    assert "chromium" in result.stdout and "poppler-utils" in result.stdout
    checks = {c["name"]: c for c in json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)}
    assert checks["nncf"]["ok"] is False and checks["nncf"]["need"] == "recommended"


def test_plain_progress_lines_at_start_interval_and_end(capsys: pytest.CaptureFixture[str]) -> None:
    progress = PlainProgress(interval_s=0.0)
    task = progress.add_task("scans", total=None, item="")
    progress.update(task, completed=0, total=3, item="a load")
    progress.update(task, completed=1, total=3, item="b predict")
    progress.update(task, completed=3, total=3, item="")
    progress.update(task, completed=3, total=3, item="")  # the end is said once
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("scans 0/3 (0 %) a load")
    assert lines[1].startswith("scans 1/3 (33 %) b predict") and "eta" in lines[1]
    assert lines[2].startswith("scans done: 3/3 in") and len(lines) == 3


def test_plain_progress_respects_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    progress = PlainProgress(interval_s=3600.0)
    task = progress.add_task("fold 0", total=100, item="")
    for i in range(1, 100):
        progress.update(task, completed=i, item=f"epoch {i}")
    progress.update(task, completed=100)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("fold 0 1/100") and "done" in lines[1]


def test_predict_prints_progress_lines_when_not_a_terminal(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "predict",
            str(SAMPLE_DATA / "ct_phantom.nii.gz"),
            "--model",
            str(DEMO),
            "--out",
            str(tmp_path / "out"),
            "--no-report",
        ],
        env={"MEDRES_PROGRESS_INTERVAL": "0"},
    )
    assert result.exit_code == 0, result.output
    assert "scans 0/1 (0 %) ct_phantom load" in result.output
    assert "scans done: 1/1" in result.output


def test_no_scans_found_is_a_failure(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "notes.txt").write_text("not a scan")
    result = runner.invoke(
        app, ["predict", str(scans), "--model", str(DEMO), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1, result.output
    assert "no scans found in" in result.output and "every file was left out" in result.output


def test_a_failed_report_fails_the_scan_keeps_its_masks_and_resume_redoes_it(
    tmp_path: Path,
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SAMPLE_DATA / "ct_phantom.nii.gz", scans / "phantom.nii.gz")
    options = PredictOptions(device="cpu", report=True)
    ensembles = open_ensembles([DEMO], options=options)

    def broken_report(scan: ScanPrediction) -> AfterScanResult:
        raise KeyError("lesions")

    run = predict_batch(
        scans, [], tmp_path / "out", options=options, ensembles=ensembles, after_scan=broken_report
    )
    (result,) = run.results
    assert result.status == "failed"
    assert "phantom.nii.gz: report not written: KeyError" in result.error
    scan_dir = tmp_path / "out" / "phantom"
    assert (scan_dir / "seg.nii.gz").is_file()  # the prediction is not lost
    assert json.loads((scan_dir / "lesions.json").read_text())["complete"] is False

    def good_report(scan: ScanPrediction) -> AfterScanResult:
        scan.folder.report_html.write_text("<p>ok</p>")
        return AfterScanResult(files=("report.html",))

    resumed = PredictOptions(device="cpu", report=True, resume=True)
    run = predict_batch(
        scans, [], tmp_path / "out", options=resumed, ensembles=ensembles, after_scan=good_report
    )
    assert [r.status for r in run.results] == ["ok"]
    data = json.loads((scan_dir / "lesions.json").read_text())
    assert data["complete"] is True and set(data["outputs"]) == {"seg.nii.gz", "report.html"}
    run = predict_batch(
        scans, [], tmp_path / "out", options=resumed, ensembles=ensembles, after_scan=good_report
    )
    assert [r.status for r in run.results] == ["resumed"]
    (scan_dir / "report.html").unlink()  # an output gone: the scan is redone
    run = predict_batch(
        scans, [], tmp_path / "out", options=resumed, ensembles=ensembles, after_scan=good_report
    )
    assert [r.status for r in run.results] == ["ok"]


def test_third_party_tracebacks_stay_off_the_console(tmp_path: Path) -> None:
    from medres.cli.console import setup_logging

    log_file = tmp_path / "medres.log"
    setup_logging(0, log_file=str(log_file))
    try:
        try:
            raise RuntimeError("libjpeg error code -1038")
        except RuntimeError:
            logging.getLogger("pydicom.pixels.decoders.base").exception("decoder failed")
        logging.getLogger("medres.test").warning("medres speaks")
    finally:
        for handler in logging.getLogger().handlers:
            handler.close()
        logging.getLogger().handlers.clear()
    text = log_file.read_text()
    assert "Traceback" in text and "decoder failed" in text and "medres speaks" in text


def test_an_index_that_cannot_be_written_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medres.errors import OutputError
    from medres.report import build

    def refuse(out: Path) -> Path:
        raise OutputError(f"{out}/index.html: disk full")

    monkeypatch.setattr(build, "write_index", refuse)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SAMPLE_DATA / "ct_phantom.nii.gz", scans / "phantom.nii.gz")
    out = tmp_path / "out"
    args = ["predict", str(scans), "--model", str(DEMO), "--out", str(out), "--no-pdf"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert "index.html: disk full" in result.output
    assert (out / "phantom" / "seg.nii.gz").is_file()  # the predictions are kept
