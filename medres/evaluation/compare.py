"""Several prediction folders against one truth in one table: medres, nnU-Net, a second
reader, each a model, with paired confidence intervals of their differences.

Each folder is evaluated on its own (:func:`medres.evaluation.run.evaluate_predictions`
for a ``medres predict`` folder, :func:`medres.evaluation.label_maps.evaluate_label_maps`
for any folder of label maps), into ``OUT/<name>/``. The comparison takes each folder's
main model (the ensemble of a predict folder, the label maps of another) and, per label,
puts their Dice, HD95, NSD and lesion F1 side by side; every folder after the first is
compared with the first case by case on the cases both scored (mean difference, 95 %
bootstrap CI over cases, Wilcoxon p), written to ``OUT/comparison.json`` and
``OUT/comparison.csv``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medres.errors import EvaluationError
from medres.evaluation.run import EvaluationRun, csv_text, json_safe
from medres.evaluation.statistics import describe, paired_comparison
from medres.evaluation.summary import ENSEMBLE
from medres.io.atomic import write_text_atomic
from medres.io.order import natural_key
from medres.io.units import keys_in_unit, unit_key

#: The per-case figures compared (higher is better except HD95).
COMPARED = ("dice", "hd95_mm", "nsd", "f1")


@dataclass
class Compared:
    """One folder of a comparison: its name, its evaluation and its main model."""

    name: str
    evaluation: EvaluationRun
    model: str


def main_model(evaluation: EvaluationRun) -> str:
    """The ensemble of a medres predict folder, else the folder's one model."""
    return ENSEMBLE if ENSEMBLE in evaluation.models else evaluation.models[-1]


def unique_names(folders: Sequence[Path]) -> list[str]:
    """A name per folder: its own name, with its parent's when two are alike."""
    names = [f.resolve().name for f in folders]
    out = []
    for folder, name in zip(folders, names, strict=True):
        if names.count(name) > 1:
            name = f"{folder.resolve().parent.name}/{name}"
        while name in out:
            name += "'"
        out.append(name)
    return out


def _by_case(entry: Compared, label: str) -> dict[str, dict[str, Any]]:
    return {
        r["case"]: r
        for r in entry.evaluation.rows
        if r["model"] == entry.model and r["label"] == label
    }


def compare(entries: Sequence[Compared]) -> dict[str, Any]:
    """Per label: each folder's figures and its paired difference from the first folder.

    Raises:
        EvaluationError: Fewer than two folders, mixed units, or no label in common.
    """
    if len(entries) < 2:
        raise EvaluationError("a comparison needs two or more prediction folders")
    units = {e.evaluation.summary.get("length_unit", "mm") for e in entries}
    if len(units) > 1:
        raise EvaluationError(
            "the folders are measured in different units (mm and px): compare folders of one"
        )
    labels = [
        label
        for label in entries[0].evaluation.labels
        if all(label in e.evaluation.labels for e in entries[1:])
    ]
    if not labels:
        names = {e.name: e.evaluation.labels for e in entries}
        raise EvaluationError(f"the folders share no label: {names}")
    out: dict[str, Any] = {"length_unit": units.pop(), "folders": [], "labels": {}}
    out["folders"] = [{"name": e.name, "model": e.model} for e in entries]
    for label in labels:
        first = _by_case(entries[0], label)
        per_label = []
        for entry in entries:
            rows = _by_case(entry, label)
            item: dict[str, Any] = {
                "name": entry.name,
                "n_cases": len(rows),
                **{m: describe([r[m] for r in rows.values()]) for m in COMPARED},
            }
            if entry is not entries[0]:
                common = sorted(set(rows) & set(first), key=natural_key)
                item["minus_first"] = {
                    m: paired_comparison(
                        [rows[c][m] for c in common], [first[c][m] for c in common]
                    )
                    for m in COMPARED
                }
            per_label.append(item)
        out["labels"][label] = per_label
    return out


def write_comparison(out: Path, comparison: dict[str, Any]) -> list[Path]:
    """``comparison.json`` and ``comparison.csv`` (one row per label and folder)."""
    unit = comparison["length_unit"]
    rows = []
    for label, items in comparison["labels"].items():
        for item in items:
            row: dict[str, Any] = {"label": label, "name": item["name"], "cases": item["n_cases"]}
            for metric in COMPARED:
                name = unit_key(metric, unit)
                row[f"{name}_mean"] = item[metric]["mean"]
                row[f"{name}_ci_low"] = item[metric]["ci_low"]
                row[f"{name}_ci_high"] = item[metric]["ci_high"]
                paired = item.get("minus_first", {}).get(metric)
                row[f"{name}_minus_first"] = paired["mean_difference"] if paired else ""
                row[f"{name}_minus_first_ci_low"] = paired["ci_low"] if paired else ""
                row[f"{name}_minus_first_ci_high"] = paired["ci_high"] if paired else ""
            rows.append(row)
    data = keys_in_unit(json_safe(comparison), unit)
    return [
        write_text_atomic(out / "comparison.json", json.dumps(data, indent=1) + "\n"),
        write_text_atomic(out / "comparison.csv", csv_text(rows)),
    ]


__all__ = ["COMPARED", "Compared", "compare", "main_model", "unique_names", "write_comparison"]
