"""Run ``predict_batch`` (reports on) and SIGKILL this process at a chosen point.

Used by ``test_kill_resume.py`` and ``benchmarks/bench_kill_resume.py``; not a test itself.

Usage: ``python kill_driver.py SCANS MODEL OUT POINT [--resume]`` where POINT is
``STAGE:SCAN_INDEX`` (``none`` runs to the end). Stages: ``load``, ``preprocess``,
``predict`` (a member's windows), ``lesions``, ``write`` (before the masks), ``mask_file``
(half of ``seg.nii.gz`` written to its temporary file), ``lesions_json`` (before the
complete ``lesions.json``), ``report`` (before the report step), ``overlay`` (after the
first overlay PNG), ``pdf`` (inside the PDF layout).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

PROGRESS_STAGES = ("load", "preprocess", "predict", "lesions", "write", "report")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    scans, model, out, point = argv[:4]
    resume = "--resume" in argv
    stage, _, index_text = point.partition(":")
    index = int(index_text or 0)

    from medres.inference import batch, writer
    from medres.predictions import records
    from medres.report import build

    state = {"scan": -1}

    def on_progress(done: int, total: int, scan_id: str, current: str) -> None:
        state["scan"] = done
        if stage in PROGRESS_STAGES and done == index and current.startswith(stage):
            _die()

    if stage == "mask_file":
        original_bytes = writer.write_bytes_atomic

        def cut_mask(path: Any, data: bytes) -> Path:
            if state["scan"] == index and Path(path).name == "seg.nii.gz":
                from medres.io.atomic import atomic_write

                with atomic_write(path) as handle:
                    handle.write(data[: len(data) // 2])  # type: ignore[arg-type]
                    handle.flush()
                    _die()
            return original_bytes(path, data)

        writer.write_bytes_atomic = cut_mask  # type: ignore[assignment]
    if stage == "lesions_json":
        original_text = records.write_text_atomic

        def cut_json(path: Any, text: str) -> Path:
            if (
                state["scan"] == index
                and Path(path).name == "lesions.json"
                and ('"complete": true' in text)
            ):
                _die()
            return original_text(path, text)

        records.write_text_atomic = cut_json  # type: ignore[assignment]
    if stage == "overlay":
        original_overlay = build.write_bytes_atomic

        def cut_overlay(path: Any, data: bytes) -> Path:
            written = original_overlay(path, data)
            if state["scan"] == index and Path(path).parent.name == "overlays":
                _die()
            return written

        build.write_bytes_atomic = cut_overlay  # type: ignore[assignment]
    if stage == "pdf":
        original_pdf = build.scan_pdf

        def cut_pdf(facts: Any) -> bytes:
            if state["scan"] == index:
                _die()
            return original_pdf(facts)

        build.scan_pdf = cut_pdf  # type: ignore[assignment]

    from medres.inference.batch import PredictOptions, open_ensembles
    from medres.report.build import report_hook

    options = PredictOptions(device="cpu", resume=resume, report=True, report_pdf=True)
    ensembles = open_ensembles([model], options=options)
    run = batch.predict_batch(
        scans,
        [],
        out,
        options=options,
        ensembles=ensembles,
        on_progress=on_progress,
        after_scan=report_hook(ensembles, pdf=True),
    )
    for result in run.results:
        print(result.scan_id, result.status, result.error)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
