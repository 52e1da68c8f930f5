"""Plots (PNG) and the ``evaluation.html`` page of an evaluation.

Plots: FROC curves of every model, per-case box plots of Dice and HD95, and the
reliability diagram of the saved probabilities. The page shows the summary table (mean
with 95 % CI per model), member-versus-ensemble comparisons, sensitivity by lesion size,
the plots and the failed cases; it links to ``metrics.csv`` and ``lesions.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medres.io.atomic import write_bytes_atomic, write_text_atomic


def _png(figure: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _save_png(out: Path, name: str, figure: Any) -> str:
    """Write ``figure`` to ``out/name``, close it and return ``name``."""
    import matplotlib.pyplot as plt

    write_bytes_atomic(out / name, _png(figure))
    plt.close(figure)
    return name


def _froc_plot(
    title: str,
    ylabel: str,
    curves: list[tuple[str, dict[str, Any], bool]],
    *,
    max_fp: float | None = None,
) -> Any:
    """FROC curves ``(name, curve, bold)`` on one figure: ``curve`` holds ``fp_per_case``
    and ``sensitivity`` (and ``dashed``: draw a thin curve dashed); bold ones (ensembles)
    are drawn thicker."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4))
    for name, curve, bold in curves:
        axis.step(
            curve["fp_per_case"],
            curve["sensitivity"],
            where="post",
            label=name,
            linewidth=2.2 if bold else 1.2,
            linestyle="-" if bold or not curve.get("dashed") else "--",
        )
    axis.set_xscale("symlog", linthresh=0.125)
    if max_fp is not None:  # a detector's low-score tail runs to thousands of FPs
        axis.set_xlim(0, max_fp)
    axis.set_xlabel("false positives per case")
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7 if len(curves) > 4 else 8, loc="lower right")
    return figure


def _froc_figure(label: str, by_model: dict[str, Any]) -> Any:
    """FROC curve of every model (the ensemble drawn thicker)."""
    curves = [
        (
            f"{model} (CPM {entry['detection']['cpm']['value']:.2f})",
            entry["froc"],
            model == "ensemble",
        )
        for model, entry in by_model.items()
    ]
    return _froc_plot(f"FROC: {label}", "lesion sensitivity", curves)


def _cases_figure(
    label: str, by_model: dict[str, Any], rows: Sequence[dict[str, Any]], unit: str
) -> Any:
    """Box plots of Dice and HD95 per case, one box per model (HD95 in ``unit``)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for axis, metric, title in (
        (axes[0], "dice", "Dice per case"),
        (axes[1], "hd95_mm", f"HD95 per case ({unit})"),
    ):
        data = [
            [r[metric] for r in rows if r["model"] == m and r["label"] == label] for m in by_model
        ]
        axis.boxplot(data, showmeans=True)
        axis.set_xticks(range(1, len(by_model) + 1), list(by_model), rotation=30, fontsize=8)
        axis.set_title(title)
        axis.grid(alpha=0.3, axis="y")
    return figure


def _reliability_figure(label: str, calibrated: dict[str, Any]) -> Any:
    """Reliability diagram of the models with saved probabilities."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.2))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for model, calibration in calibrated.items():
        points = [
            (b["mean_probability"], b["lesion_frequency"])
            for b in calibration["bins"]
            if b["voxels"] > 0
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, marker="o", label=f"{model} (ECE {calibration['ece']:.4f})")
    axis.set_xlabel("mean predicted probability")
    axis.set_ylabel("observed lesion frequency")
    axis.set_title(f"Reliability: {label}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def _box_froc_figure(label: str, by_model: dict[str, Any]) -> Any:
    """Box-level FROC of every model (ensembles thicker, members dashed)."""
    curves = [
        (f"{model} (CPM {entry['cpm']:.2f})", {**entry["froc"], "dashed": True}, "/" not in model)
        for model, entry in by_model.items()
    ]
    return _froc_plot(f"FROC of boxes: {label}", "lesion sensitivity (boxes)", curves, max_fp=16)


def write_plots(out: Path, summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Write the PNG plots into ``out``; returns their file names.

    Per label: ``froc_<label>.png``, ``cases_<label>.png`` and, when probabilities were
    saved, ``reliability_<label>.png`` (the label with every character other than
    letters, digits, ``-`` and ``_`` replaced by ``_``).

    Args:
        out: The evaluation folder.
        summary: ``summary.json``'s content (``results`` per label and model).
        rows: The per-case rows of ``metrics.csv``.
    """
    import matplotlib

    matplotlib.use("Agg")

    written: list[str] = []
    for label, by_model in summary.get("boxes", {}).get("results", {}).items():
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        figure = _box_froc_figure(label, by_model)
        written.append(_save_png(out, f"froc_boxes_{safe}.png", figure))
    for label, by_model in summary["results"].items():
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        written.append(_save_png(out, f"froc_{safe}.png", _froc_figure(label, by_model)))
        written.append(
            _save_png(
                out,
                f"cases_{safe}.png",
                _cases_figure(label, by_model, rows, summary.get("length_unit", "mm")),
            )
        )
        calibrated = {m: e["calibration"] for m, e in by_model.items() if "calibration" in e}
        if calibrated:
            figure = _reliability_figure(label, calibrated)
            written.append(_save_png(out, f"reliability_{safe}.png", figure))
    return written


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>medres evaluation</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
tr.ensemble td { font-weight: bold; background: #f7fbff; }
.ci { color: #666; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; margin: 0.5em 1em 1em 0; border: 1px solid #eee; }
.failed td { color: #a00; text-align: left; }
</style></head><body>
<h1>Evaluation</h1>
<p class="note">{{ n_cases }} case(s) ({{ group_by }}), {{ n_scans }} scan(s) scored in {{ seconds }} s;
predictions <code>{{ predictions }}</code>, truth <code>{{ truth }}</code>.
Per-case figures: <a href="metrics.csv">metrics.csv</a>; every lesion match:
<a href="lesions.csv">lesions.csv</a>; everything: <a href="summary.json">summary.json</a>.
Means with 95&nbsp;% bootstrap confidence intervals over cases.{% if unit == 'px' %}
Sizes and distances are in pixels (px): the images give no pixel size.{% endif %} Research use only.</p>
{% for label, by_model in results.items() %}
<h2>{{ label }}</h2>
<h3>Segmentation</h3>
<table><tr><th>model</th>{% for m in seg_metrics %}<th>{{ named(m) }}</th>{% endfor %}</tr>
{% for model, entry in by_model.items() %}
<tr class="{{ 'ensemble' if model == 'ensemble' else '' }}"><td>{{ model }}</td>
{% for m in seg_metrics %}{% set d = entry.segmentation[m] %}
<td>{{ fmt(d.mean) }} <span class="ci">[{{ fmt(d.ci_low) }}, {{ fmt(d.ci_high) }}]</span></td>
{% endfor %}</tr>{% endfor %}</table>
<h3>Lesion detection (IoU &ge; {{ iou }})</h3>
<table><tr><th>model</th><th>TP</th><th>FP</th><th>FN</th>
{% for m in det_metrics %}<th>{{ m }}</th>{% endfor %}</tr>
{% for model, entry in by_model.items() %}
<tr class="{{ 'ensemble' if model == 'ensemble' else '' }}"><td>{{ model }}</td>
<td>{{ entry.detection_counts.tp }}</td><td>{{ entry.detection_counts.fp }}</td><td>{{ entry.detection_counts.fn }}</td>
{% for m in det_metrics %}{% set d = entry.detection[m] %}
<td>{{ fmt(d.value) }} <span class="ci">[{{ fmt(d.ci_low) }}, {{ fmt(d.ci_high) }}]</span></td>
{% endfor %}</tr>{% endfor %}</table>
{% set members = by_model.items() | selectattr('1.vs_ensemble', 'defined') | list %}
{% if members %}
<h3>Each member against the ensemble (member minus ensemble, paired over cases)</h3>
<table><tr><th>member</th>{% for m in paired_metrics %}<th>{{ named(m) }}</th>{% endfor %}</tr>
{% for model, entry in members %}<tr><td>{{ model }}</td>
{% for m in paired_metrics %}{% set d = entry.vs_ensemble[m] %}
<td>{{ fmt(d.mean_difference) }} <span class="ci">[{{ fmt(d.ci_low) }}, {{ fmt(d.ci_high) }}] p={{ fmt(d.p_value) }}</span></td>
{% endfor %}</tr>{% endfor %}</table>
{% endif %}
<h3>Sensitivity by true lesion size (equivalent diameter)</h3>
<table><tr><th>model</th>{% for b in size_bins %}<th>{{ b }}</th>{% endfor %}</tr>
{% for model, entry in by_model.items() %}<tr><td>{{ model }}</td>
{% for b in size_bins %}{% set d = entry.sensitivity_by_size[b] %}
<td>{{ fmt(d.sensitivity) }} <span class="ci">({{ d.detected }}/{{ d.true_lesions }})</span></td>
{% endfor %}</tr>{% endfor %}</table>
{% endfor %}
{% if boxes %}
<h2>Boxes: IoU &ge; {{ boxes.iou_threshold }}, false positives per case over {{ boxes.n_cases }} case(s)</h2>
<p>Detectors' boxes (detections.json) and the bounding boxes of segmented lesions, each matched to the true lesions' boxes the same way.</p>
{% for label, by_model in boxes.results.items() %}
<h3>{{ label }}</h3>
<table><tr><th>model</th><th>CPM</th><th>sensitivity at 1 FP</th><th>AP at IoU 0.1</th><th>mAP 0.1-0.5</th><th>true</th><th>boxes</th>
{% for b in size_bins %}<th>{{ b }}</th>{% endfor %}</tr>
{% for model, e in by_model.items() %}<tr class="{{ 'ensemble' if '/' not in model else '' }}"><td>{{ model }}</td>
{% for m in ['cpm', 'sensitivity_at_1fp', 'ap_0.1'] %}<td>{{ fmt(e[m]) }} <span class="ci">[{{ fmt(e.ci[m][0]) }}, {{ fmt(e.ci[m][1]) }}]</span></td>{% endfor %}
<td>{{ fmt(e['map_0.1_0.5']) }}</td><td>{{ e.true_lesions }}</td><td>{{ e.predicted }}</td>
{% for b in size_bins %}{% set d = e.by_size[b] %}<td>{{ fmt(d.sensitivity) }} <span class="ci">({{ d.detected }}/{{ d.true_lesions }})</span></td>{% endfor %}
</tr>{% endfor %}</table>
{% set paired = boxes.get('detector_minus_segmentation', {}).get(label) %}
{% if paired %}<p>Detector minus segmentation (paired bootstrap over cases):
{% for m, d in paired.items() %}{{ m }} {{ fmt(d.value) }} <span class="ci">[{{ fmt(d.ci_low) }}, {{ fmt(d.ci_high) }}]</span>{% if not loop.last %}; {% endif %}{% endfor %}</p>{% endif %}
{% endfor %}
{% endif %}
<h2>Plots</h2>
{% for plot in plots %}<img src="{{ plot }}" alt="{{ plot }}">{% endfor %}
{% if failed %}<h2>Cases not scored</h2>
<table class="failed"><tr><th>scan</th><th>problem</th></tr>
{% for f in failed %}<tr><td>{{ f.scan_id }}</td><td>{{ f.error }}</td></tr>{% endfor %}</table>
{% endif %}
</body></html>
"""


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def write_html(
    out: Path, summary: dict[str, Any], failed: Sequence[dict[str, str]], plots: list[str]
) -> Path:
    """Write ``out/evaluation.html`` (plots linked by relative path)."""
    import jinja2

    from medres.evaluation.detection import DETECTION_METRICS, size_bins
    from medres.evaluation.segmentation import SEGMENTATION_METRICS
    from medres.io.units import unit_key

    unit = summary.get("length_unit", "mm")

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(_PAGE)
    page = template.render(
        results=summary["results"],
        seg_metrics=list(SEGMENTATION_METRICS),
        det_metrics=list(DETECTION_METRICS),
        paired_metrics=["dice", "hd95_mm", "nsd", "f1"],
        size_bins=list(size_bins(unit)),
        unit=unit,
        named=lambda metric: unit_key(metric, unit),
        plots=plots,
        failed=failed,
        fmt=_fmt,
        n_cases=summary["n_cases"],
        n_scans=summary["n_scans"],
        group_by=summary["options"]["group_by"],
        iou=summary["options"]["iou_threshold"],
        seconds=summary["seconds"],
        predictions=summary["predictions"],
        truth=summary["truth"],
        boxes=summary.get("boxes"),
    )
    return write_text_atomic(out / "evaluation.html", page)


__all__ = ["write_html", "write_plots"]
