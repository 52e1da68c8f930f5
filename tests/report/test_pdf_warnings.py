"""A PDF library warning (WeasyPrint without HarfBuzz-Subset) never fails a report, never
reaches the console as noise, and is shown once per process with what to install."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from medres.inference.batch import PredictOptions, open_ensembles, predict_batch
from medres.report import pdf
from medres.report.build import report_hook
from tests.conftest import SAMPLE_DATA

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_ct_3d"
HARFBUZZ_DEPRECATION = (
    "HarfBuzz-Subset will be required by future versions of WeasyPrint. "
    "Please install this library with your package manager."
)


@pytest.fixture
def harfbuzz_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make WeasyPrint behave as it does without libharfbuzz-subset0 on every PDF."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its import-time warning, when it is imported first here
        import weasyprint

    monkeypatch.setattr(pdf, "_seen", set())
    real_write_pdf = weasyprint.HTML.write_pdf

    def write_pdf(self: Any, *args: Any, **kwargs: Any) -> bytes:
        warnings.warn(HARFBUZZ_DEPRECATION, category=DeprecationWarning, stacklevel=1)
        logging.getLogger("weasyprint").warning(
            'Using fontTools instead of HarfBuzz-Subset for font "%s". This will be '
            "unsupported in future versions of WeasyPrint.",
            "DejaVu Sans",
        )
        return bytes(real_write_pdf(self, *args, **kwargs))

    monkeypatch.setattr(weasyprint.HTML, "write_pdf", write_pdf)


def _pdf_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "medres.report.pdf"]


def test_render_pdf_survives_the_warning_and_says_it_once(
    harfbuzz_missing: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what `pytest -W error` does outside the call site
        first = pdf.render_pdf("<p>one</p>", base_url=".")
        second = pdf.render_pdf("<p>two</p>", base_url=".")
    assert first.startswith(b"%PDF") and second.startswith(b"%PDF")
    (record,) = _pdf_warnings(caplog)
    assert "libharfbuzz-subset0" in record.getMessage()
    assert "medres doctor" in record.getMessage()
    assert not [r for r in caplog.records if r.name == "weasyprint"]  # stopped at the call


def test_batch_reports_written_with_the_warning(
    harfbuzz_missing: None, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING)
    scans = tmp_path / "scans"
    shutil.copytree(SAMPLE_DATA / "ct_phantom_dicom", scans / "dicom")
    shutil.copy(SAMPLE_DATA / "ct_phantom.nii.gz", scans / "phantom.nii.gz")
    options = PredictOptions(device="cpu", report=True, report_pdf=True)
    ensembles = open_ensembles([DEMO], options=options)
    run = predict_batch(
        scans,
        [],
        tmp_path / "out",
        options=options,
        ensembles=ensembles,
        after_scan=report_hook(ensembles, pdf=True),
    )
    assert [r.status for r in run.results] == ["ok", "ok"], [r.error for r in run.results]
    for result in run.results:
        assert (tmp_path / "out" / result.scan_id / "report.pdf").is_file()
    assert len(_pdf_warnings(caplog)) == 1  # two PDFs, one message
