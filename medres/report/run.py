"""``medres report OUT``: (re)build the reports of a prediction folder.

The scans are found again where ``run.json`` says they came from (the same discovery and
channel grouping as ``medres predict``, so the scan ids match), loaded, and passed to
:func:`~medres.report.build.report_scan` with the pipeline that predicted them; then
``index.html`` is written. A scan whose source is gone or unreadable is reported and the
others go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medres.errors import MedresError, OutputError
from medres.inference.batch import refresh_outputs, run_pipelines
from medres.inference.inputs import assemble_inputs, load_input
from medres.io import discover
from medres.report.build import ScanReport, report_scan, write_index


@dataclass
class ReportRun:
    """What ``medres report`` did."""

    reports: list[ScanReport] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    index: Path | None = None


def report_predictions(
    out: str | Path,
    *,
    show_phi: bool = False,
    pdf: bool = True,
    dicom: bool = True,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> ReportRun:
    """Write every scan's report and the index of a ``medres predict`` folder.

    Raises:
        OutputError: ``out`` is not a predict folder, or its input folder is gone.
    """
    out = Path(out)
    try:
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"{out}: not a medres predict folder (run.json: {exc})") from None
    configs = run_pipelines(run)
    root = Path(run["input"])
    if not root.exists():
        raise OutputError(
            f"{out}: the scans were read from {root}, which no longer exists; the report "
            "needs the source images"
        )
    inputs, _ = assemble_inputs(discover(root), channel_sets=[c.channels for c in configs.values()])
    by_id = {item.scan_id: item for item in inputs}
    scan_dirs = sorted(p.parent for p in out.glob("*/lesions.json"))
    result = ReportRun()
    for done, scan_dir in enumerate(scan_dirs):
        scan_id = scan_dir.name
        if on_progress is not None:
            on_progress(done, len(scan_dirs), scan_id)
        item = by_id.get(scan_id)
        if item is None:
            result.failed.append(
                {"scan_id": scan_id, "error": f"{scan_id}: source scan not found in {root}"}
            )
            continue
        try:
            lesions = json.loads((scan_dir / "lesions.json").read_text(encoding="utf-8"))
            cfg = configs.get(lesions["ensemble"]["pipelines"][0])
            volume = load_input(item)
            written = report_scan(
                scan_dir, volume, cfg=cfg, run=run, show_phi=show_phi, pdf=pdf, dicom=dicom
            )
            refresh_outputs(scan_dir, written.files)
            result.reports.append(written)
        except (MedresError, OSError, ValueError, KeyError) as exc:
            result.failed.append({"scan_id": scan_id, "error": f"{scan_id}: {exc}"})
    if (out / "summary.csv").is_file():
        result.index = write_index(out)
    return result


__all__ = ["ReportRun", "report_predictions"]
