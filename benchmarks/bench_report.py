"""Benchmark the per-scan report: medres's against the plain way, same scans and pages.

Run from the repository root::

    pip install weasyprint   # the plain way's PDF (and its Debian packages, see below)
    python benchmarks/bench_report.py [--lgg-model DIR] [--brats-model DIR]

Each input is predicted once (torch, TTA off), then its report is written by

* ``medres``: :func:`medres.report.build.report_scan`: key images drawn straight to PNG
  (:mod:`medres.report.drawing`), ``report.html``, ``report.pdf`` written directly
  (:mod:`medres.report.pdf_report`), DICOM SEG and SR for DICOM input;
* ``plain``: what a report script usually does: one matplotlib figure per key image
  (``imshow`` + ``contour`` + a title, saved as PNG at 110 dpi) and the same HTML page
  (``report.html``, its images embedded) turned into PDF by WeasyPrint (needs Debian's
  libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b libfontconfig1; the PDF column says
  "-" without it). SEG/SR are left
  out of the plain way, so its figure is a lower bound.

Seconds are medians over ``--repeats`` reports of the same scan, after two warm-ups
(imports and font loading excluded on both sides), next to the prediction seconds of
the same scan (``predict``), which the issue asks the report to stay below.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    found = []
    lgg = SHARED / "lgg_flair_2d" / "TCGA_CS_6186_20000601" / "TCGA_CS_6186_20000601_12.tif"
    if args.lgg_model is not None and lgg.is_file():
        found.append(("LGG slice", args.lgg_model, lgg))
    brats = SHARED / "brats_3d" / "test"
    if args.brats_model is not None and brats.is_dir():
        found.append(("BraTS case", args.brats_model, sorted(brats.iterdir())[0]))
    found.append(
        (
            "CT phantom (DICOM)",
            REPO_ROOT / "models" / "demo_ct_3d",
            REPO_ROOT / "sample_data" / "ct_phantom_dicom",
        )
    )
    real_ct = SHARED / "ct_dicom_totalseg" / "example_ct_dicom"
    if real_ct.is_dir():
        found.append(("real CT series (DICOM)", REPO_ROOT / "models" / "demo_ct_3d", real_ct))
    return found


def _plain_png(view: Any) -> bytes:
    """One matplotlib figure per key image: the plain way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = view.image.shape[0] * view.row_mm
    width = view.image.shape[1] * view.column_mm
    figure, axis = plt.subplots(figsize=(4.2, 4.2 * height / max(width, 1e-6)))
    axis.imshow(view.image, cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
    if view.label_map.any():
        axis.contour(
            view.label_map > 0,
            levels=[0.5],
            colors="yellow",
            extent=(0, width, 0, height),
            origin="upper",
        )
    axis.set_title(view.title, fontsize=9)
    axis.set_axis_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _median(call: Any, repeats: int) -> float:
    """Median seconds of ``call`` (bench_runtime's timer: two warm-ups, then ``repeats``)."""
    from bench_runtime import _median_ms

    return _median_ms(call, repeats) / 1000.0


def main() -> None:
    """Long: predict each input once, then time both reports of it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lgg-model", type=Path, default=None)
    parser.add_argument("--brats-model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from medres.inference.batch import PredictOptions, open_ensembles, predict_batch
    from medres.inference.scan_step import AfterScanResult, ScanPrediction
    from medres.report.build import report_scan
    from medres.report.images import display_channel, image_view, orthogonal_views, to_ras
    from medres.report.images import window as display_window

    try:
        import weasyprint
    except (ImportError, OSError):
        weasyprint = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, source in _inputs(args):
            kept: list[ScanPrediction] = []

            def keep(scan: ScanPrediction, kept: list = kept) -> AfterScanResult:
                kept.append(scan)
                return AfterScanResult()

            options = PredictOptions(device="cpu", tta=False, runtime="torch")
            ensembles = open_ensembles([model], options=options)
            out = Path(tmp) / name.replace(" ", "_")
            start = time.perf_counter()
            run = predict_batch(
                source, [], out, options=options, ensembles=ensembles, after_scan=keep
            )
            predict = (time.perf_counter() - start) / max(len(run.results), 1)
            scan = kept[0]
            ours = _median(lambda scan=scan: report_scan(scan), args.repeats)
            volume = scan.volume
            labels = scan.label_map.reshape(volume.spatial_shape)
            shown = display_window(
                display_channel(volume.array, scan.cfg.channels),
                modality=volume.modality or "",
                ct_window=(-160.0, 240.0) if (volume.modality or "").upper() == "CT" else None,
            )
            if shown.ndim == 3 and shown.shape[2] > 1:
                image, lab = to_ras(shown, volume.affine)[0], to_ras(labels, volume.affine)[0]
                views = orthogonal_views(image, lab, to_ras(shown, volume.affine)[1], None)
                views += views[:1] * min(len(scan.record.lesions), 12)
            else:
                views = [
                    image_view(
                        shown.reshape(shown.shape[:2]),
                        labels.reshape(shown.shape[:2]),
                        volume.spacing_mm[:2],
                    )
                ]
                views += views[:1] * min(len(scan.record.lesions), 12)
            pngs = _median(lambda views=views: [_plain_png(v) for v in views], args.repeats)
            page = scan.folder.report_html.read_text(encoding="utf-8")  # images included
            pdf = (
                _median(lambda page=page: weasyprint.HTML(string=page).write_pdf(), args.repeats)
                if weasyprint is not None
                else None
            )
            rows.append((name, predict, ours, pngs, pdf, len(views)))
            print(f"  {name}: predict {predict:.2f} s, medres report {ours:.3f} s", flush=True)
    print()
    print(
        "| input | predict s | medres report s | plain: matplotlib key images s | "
        "plain: WeasyPrint PDF s | plain total s | key images |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, predict, ours, pngs, pdf, n in rows:
        total = f"{pngs + pdf:.3f}" if pdf is not None else "-"
        shown_pdf = f"{pdf:.3f}" if pdf is not None else "-"
        print(f"| {name} | {predict:.2f} | {ours:.3f} | {pngs:.3f} | {shown_pdf} | {total} | {n} |")


if __name__ == "__main__":
    main()
