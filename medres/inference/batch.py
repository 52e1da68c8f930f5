"""``medres predict`` as a library call: every scan of a folder through the ensembles.

:func:`predict_batch` discovers the scans, groups channel files, routes each scan to the
ensemble that takes its kind of input (dimensions and channel count), predicts, finds
lesion instances and writes, atomically, per scan ``OUT/<scan_id>/``:

* ``seg.nii.gz``: label map on the scan's own grid (same shape, same affine);
* ``probabilities.nii.gz`` (``save_probabilities``): mean probability of each foreground
  label, one byte per voxel (``scl_slope`` 1/255, so readers get 0..1 back);
* ``members/<member>/seg.nii.gz`` (``keep_members``): each member's own label map;
* ``lesions.json``: lesion instances with measurements, score, agreement, uncertainty,
  plus the scan's grid and the models used. Written once the masks are written, with
  ``"complete": false``; rewritten with ``"complete": true`` and the list of every output
  (with its size) once the report step has written its files too. Only that second
  version marks the scan complete, so a run killed in the report step redoes the scan.

and for the run ``summary.csv`` (one row per scan, rewritten after every scan) and
``run.json`` (versions, model checksums, options, device, inputs, timings, peak memory).

A scan that fails is recorded with its error and the batch goes on; ``--resume`` skips
scans whose ``lesions.json`` is complete, was written by the same models and options, and
whose listed outputs are all present with their recorded sizes. A requested output that
could not be written (a failed report) fails the scan; its masks are kept.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres._version import __version__
from medres.errors import MedresError, ModelError
from medres.inference.inputs import ScanInput, assemble_inputs, load_input
from medres.inference.lesions import Lesion, find_lesions
from medres.inference.predictor import Ensemble, EnsemblePrediction
from medres.io.atomic import write_bytes_atomic, write_text_atomic
from medres.io.discover import SkippedFile, discover, safe_name
from medres.io.nifti import nifti_bytes
from medres.io.volume import Volume
from medres.models.folder import ModelFolder, software_versions
from medres.pipeline import PipelineConfig
from medres.runtime import peak_rss_bytes

logger = logging.getLogger(__name__)

SEG = "seg.nii.gz"
PROBABILITIES = "probabilities.nii.gz"
LESIONS = "lesions.json"
SUMMARY = "summary.csv"
RUN = "run.json"
MEMBERS = "members"

SUMMARY_COLUMNS = (
    "scan_id",
    "status",
    "model",
    "kind",
    "modality",
    "shape",
    "spacing_mm",
    "n_lesions",
    "lesion_volume_ml",
    "lesion_area_mm2",
    "seconds",
    "error",
    "notes",
    "source",
)


@dataclass(frozen=True)
class PredictOptions:
    """What ``medres predict`` was asked for (None: the pipeline's own setting).

    Attributes:
        device: ``cpu`` or ``cuda[:N]`` (resolved, not ``auto``).
        tta: Flip test-time augmentation.
        ensemble: ``mean`` or ``vote``.
        overlap: Sliding-window overlap.
        keep_members: Also write each member's label map (for ``medres evaluate``).
        save_probabilities: Also write the compact probability map.
        resume: Skip scans whose outputs are complete.
        skip_unmatched: Scans no model takes are "skipped", not "failed".
        report: An after-scan step writes reports (part of what "complete" means).
        report_pdf: That step also writes ``report.pdf``.
    """

    device: str = "cpu"
    tta: bool | None = None
    ensemble: str | None = None
    overlap: float | None = None
    keep_members: bool = False
    save_probabilities: bool = False
    resume: bool = False
    skip_unmatched: bool = False
    report: bool = False
    report_pdf: bool = False


class NoModelForScanError(MedresError):
    """No ensemble of the run takes this scan (dimensions or channel count differ)."""


@dataclass
class ScanResult:
    """One row of ``summary.csv``."""

    scan_id: str
    status: str  # ok | resumed | failed | skipped
    model: str = ""
    kind: str = ""
    modality: str = ""
    shape: str = ""
    spacing_mm: str = ""
    n_lesions: int | None = None
    lesion_volume_ml: float | None = None
    lesion_area_mm2: float | None = None
    seconds: float = 0.0
    error: str = ""
    notes: str = ""
    source: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The CSV row (fixed columns)."""
        data = asdict(self)
        return {k: "" if data[k] is None else data[k] for k in SUMMARY_COLUMNS}


@dataclass
class BatchRun:
    """What a batch did."""

    out: Path
    results: list[ScanResult]
    skipped: list[SkippedFile]
    ensembles: list[Ensemble]

    @property
    def failed(self) -> list[ScanResult]:
        """Scans (or unreadable files) that produced no output."""
        return [r for r in self.results if r.status == "failed"]


#: Progress callback: ``(scans_done, scans_total, scan_id, stage)``.
ProgressCallback = Callable[[int, int, str, str], None]
#: Called after a scan's outputs are written: ``(scan_dir, volume, pipeline)``; returns
#: what it wrote (paths relative to ``scan_dir``) and the warnings for the scan's row. What
#: it raises fails the scan, keeping the masks already written (e.g. the report step).
AfterScanCallback = Callable[[Path, Volume, PipelineConfig], "AfterScanResult"]


@dataclass(frozen=True)
class AfterScanResult:
    """What an after-scan step (the report) wrote for one scan.

    Attributes:
        files: Written files, relative to the scan folder (``overlays/lesion_01.png``).
        notes: Notes for the scan's row (``DICOM SEG/SR skipped: ...``).
    """

    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def open_ensembles(model_dirs: Sequence[str | Path], *, options: PredictOptions) -> list[Ensemble]:
    """Open model folders and join those with the same kind of input into ensembles.

    Folders taking the same input (dimensions and channel count) vote together and must
    share their labels; folders taking other inputs form other ensembles, and each scan
    goes to the one that takes it (a 2D 3-channel MR model and a 3D CT model in one run).

    Raises:
        ModelError: A folder cannot be opened, or folders with the same input disagree
            on labels.
    """
    if not model_dirs:
        raise ModelError("give at least one model folder (--model)")
    groups: dict[tuple[int, int], list[ModelFolder]] = {}
    seen: set[Path] = set()
    for path in model_dirs:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ModelError(f"{path}: the same model folder is given twice")
        seen.add(resolved)
        folder = ModelFolder.open(path)
        key = (folder.pipeline.dims, len(folder.pipeline.channels))
        groups.setdefault(key, []).append(folder)
    return [
        Ensemble(
            folders,
            device=options.device,
            tta=options.tta,
            mode=options.ensemble,
            overlap=options.overlap,
        )
        for folders in groups.values()
    ]


def ensemble_name(ensemble: Ensemble) -> str:
    """``+``-joined pipeline names of an ensemble's folders."""
    return "+".join(f.pipeline.name for f in ensemble.folders)


def fingerprint(ensemble: Ensemble, options: PredictOptions, sources: Sequence[str] = ()) -> str:
    """What makes two predictions of a scan the same: medres version, weights, resolved
    pipelines, options, and the source files (names, sizes, modification times)."""
    parts = [__version__]
    parts += [m.weights_sha256 for f in ensemble.folders for m in f.members]
    parts += [f.pipeline.model_dump_json() for f in ensemble.folders]
    parts += [
        str(options.tta),
        str(ensemble.mode),
        str(options.overlap),
        str(options.keep_members),
        str(options.save_probabilities),
        str(options.report),
        str(options.report_pdf),
    ]
    for source in sources:
        try:
            stat = os.stat(source)
            parts.append(f"{os.path.basename(source)}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{os.path.basename(source)}:missing")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


#: What ``medres predict`` and the report step write into a scan's folder.
SCAN_OUTPUTS = (
    SEG,
    PROBABILITIES,
    LESIONS,
    MEMBERS,
    "report.html",
    "report.pdf",
    "overlays",
    "seg.dcm",
    "sr.dcm",
)


def clear_scan_outputs(scan_dir: Path) -> None:
    """Remove what an earlier run wrote for this scan (only medres's own file names), so a
    re-run that fails or writes less never leaves stale results beside new ones."""
    if not scan_dir.is_dir():
        return
    for leftover in scan_dir.rglob(".*.tmp"):  # an atomic write cut short by a kill
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink()
    for name in SCAN_OUTPUTS:
        path = scan_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _relative(path: str, root: Path) -> str:
    base = Path(os.path.abspath(root))  # not resolve(): keep linked folders' own names
    if base.is_file():
        base = base.parent
    try:
        return str(Path(os.path.abspath(path)).relative_to(base))
    except ValueError:
        return Path(path).name


def compact_json(data: Any) -> str:
    """Indented JSON with short lists of numbers or strings kept on one line."""
    text = json.dumps(data, indent=2)
    return (
        re.sub(
            r"\[\s+([^\[\]{}]*?)\s+\]",
            lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]",
            text,
        )
        + "\n"
    )


def _lesion_json(
    item: ScanInput,
    volume: Volume,
    ensemble: Ensemble,
    prediction: EnsemblePrediction,
    lesions: list[Lesion],
    *,
    root: Path,
    options: PredictOptions,
    seconds: dict[str, float],
) -> dict[str, Any]:
    ref = item.refs[0]
    three_d = prediction.labels.ndim == 3
    return {
        "medres_version": __version__,
        "scan_id": item.scan_id,
        "fingerprint": fingerprint(ensemble, options, item.paths),
        "source": {
            "kind": str(item.kind),
            "files": [_relative(p, root) for p in item.paths][:4]
            + ([f"... {len(item.paths) - 4} more"] if len(item.paths) > 4 else []),
            "n_files": len(item.paths),
            "grouped_by": item.grouped_by,
            "modality": volume.modality,
            "series_uid": volume.source.series_uid,
            "study_uid": volume.source.study_uid,
            "frame_of_reference_uid": volume.source.frame_of_reference_uid,
            "description": safe_name(ref.description, max_length=80) if ref.description else "",
        },
        "grid": {
            "shape": list(prediction.labels.shape),
            "spacing_mm": [round(s, 5) for s in volume.spacing_mm[: prediction.labels.ndim]],
            "orientation": volume.orientation,
            "affine": np.round(prediction.affine, 6).tolist(),
        },
        "ensemble": {
            "pipelines": [f.pipeline.name for f in ensemble.folders],
            "members": prediction.member_names,
            "mode": str(ensemble.mode),
            "tta": [
                f.pipeline.inference.tta if options.tta is None else options.tta
                for f in ensemble.folders
            ],
        },
        "labels": list(ensemble.labels),
        "lesion_labels": list(ensemble.cfg.lesion_labels),
        "n_lesions": len(lesions),
        "total_volume_ml": round(sum(x.volume_ml or 0.0 for x in lesions), 4) if three_d else None,
        "total_area_mm2": None if three_d else round(sum(x.area_mm2 or 0.0 for x in lesions), 3),
        "lesions": [x.to_json() for x in lesions],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def is_complete(scan_dir: Path, expected: str) -> dict[str, Any] | None:
    """The scan's ``lesions.json`` when every output of the scan is there for ``expected``.

    Complete means: ``lesions.json`` says ``"complete": true``, its fingerprint is
    ``expected``, and every output it lists exists with the size it had when written.
    """
    path = scan_dir / LESIONS
    if not path.is_file() or not (scan_dir / SEG).is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != expected:
        return None
    if data.get("complete") is not True or not isinstance(data.get("outputs"), dict):
        return None
    for name, size in data["outputs"].items():
        output = scan_dir / name
        if not _inside(output, scan_dir) or not output.is_file():
            return None
        if output.stat().st_size != size:
            return None
    return data


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def _output_sizes(scan_dir: Path, names: Sequence[str]) -> dict[str, int]:
    """Size in bytes of each written output (lesions.json itself excluded)."""
    return {name: (scan_dir / name).stat().st_size for name in sorted(set(names))}


def refresh_outputs(scan_dir: Path, files: Sequence[str]) -> None:
    """Record the sizes of files rewritten later (``medres report``) in a complete scan's
    ``lesions.json``, so ``--resume`` still sees the scan as complete."""
    path = scan_dir / LESIONS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return
    if not isinstance(data, dict) or data.get("complete") is not True:
        return
    outputs = dict(data.get("outputs") or {})
    outputs.update(_output_sizes(scan_dir, files))
    data["outputs"] = dict(sorted(outputs.items()))
    write_text_atomic(path, compact_json(data))


def _write_scan_outputs(
    scan_dir: Path,
    prediction: EnsemblePrediction,
    ensemble: Ensemble,
    options: PredictOptions,
) -> list[str]:
    """Write the masks (and probabilities, members); returns the written names."""
    labels = prediction.labels
    affine = prediction.affine
    written = [SEG]
    write_bytes_atomic(scan_dir / SEG, nifti_bytes(labels, affine))
    if options.save_probabilities:
        write_bytes_atomic(
            scan_dir / PROBABILITIES, _probability_nifti(prediction.probabilities, affine)
        )
        written.append(PROBABILITIES)
    for index, member in enumerate(prediction.member_labels):
        member_name = member_folder_name(prediction.member_names[index])
        member_dir = scan_dir / MEMBERS / member_name
        write_bytes_atomic(member_dir / SEG, nifti_bytes(member, affine))
        written.append(f"{MEMBERS}/{member_name}/{SEG}")
        probabilities = prediction.member_probabilities[index]
        if options.save_probabilities:
            write_bytes_atomic(
                member_dir / PROBABILITIES, _probability_nifti(probabilities, affine)
            )
            written.append(f"{MEMBERS}/{member_name}/{PROBABILITIES}")
        lesions: list[Lesion] = []
        for label in ensemble.cfg.lesion_indices:
            lesions += find_lesions(
                member,
                affine=affine,
                label_index=label,
                label_name=ensemble.labels[label],
                probabilities=probabilities[label - 1],
            )
        report = {
            "member": prediction.member_names[index],
            "n_lesions": len(lesions),
            "lesions": [x.to_json() for x in lesions],
        }
        write_text_atomic(member_dir / LESIONS, compact_json(report))
        written.append(f"{MEMBERS}/{member_name}/{LESIONS}")
    return written


def member_folder_name(member: str) -> str:
    """Folder of a member's outputs: ``<pipeline>/<fold>`` -> ``<pipeline>.<fold>``."""
    return safe_name(member.replace("/", "."))


def _probability_nifti(probabilities: npt.NDArray[Any], affine: npt.NDArray[np.float64]) -> bytes:
    """Foreground probabilities ``(C-1, ...)`` as 1-byte NIfTI (``scl_slope`` 1/255)."""
    quantised = np.rint(probabilities.astype(np.float32) * 255.0).astype(np.uint8)
    stored = quantised[0] if quantised.shape[0] == 1 else np.moveaxis(quantised, 0, -1)
    if probabilities.ndim == 3 and quantised.shape[0] > 1:  # 2D with several labels
        stored = stored[:, :, None, :]
    return nifti_bytes(stored, affine, scale=1 / 255)


def _scan_lesions(ensemble: Ensemble, prediction: EnsemblePrediction) -> list[Lesion]:
    lesions: list[Lesion] = []
    for index in ensemble.cfg.lesion_indices:
        found = find_lesions(
            prediction.labels,
            affine=prediction.affine,
            label_index=index,
            label_name=ensemble.labels[index],
            probabilities=prediction.probabilities[index - 1],
            member_hits=prediction.member_hits[index - 1],
            n_members=ensemble.n_members,
            uncertainty=prediction.uncertainty[index - 1],
        )
        lesions.extend(found)
    if len(ensemble.cfg.lesion_indices) > 1:  # one numbering over all lesion labels
        lesions.sort(key=lambda x: -x.voxel_count)
        lesions = [Lesion(**{**asdict(x), "lesion_id": n + 1}) for n, x in enumerate(lesions)]
    return lesions


def _describe(volume: Volume) -> tuple[str, str]:
    shape = "x".join(str(s) for s in volume.spatial_shape)
    spacing = "x".join(f"{s:.3g}" for s in volume.spacing_mm)
    return shape, spacing


def write_summary(out: Path, results: Sequence[ScanResult]) -> Path:
    """Write ``summary.csv`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow(result.row())
    return write_text_atomic(out / SUMMARY, buffer.getvalue())


def models_provenance(ensembles: Sequence[Ensemble]) -> list[dict[str, Any]]:
    """Per ensemble: its input, labels, and per folder the path, pipeline (resolved) and
    every member's weight checksum; what ``run.json`` and the reports show."""
    return [
        {
            "ensemble": ensemble_name(ensemble),
            "mode": str(ensemble.mode),
            "takes": {"dims": ensemble.cfg.dims, "channels": list(ensemble.cfg.channels)},
            "labels": list(ensemble.labels),
            "folders": [
                {
                    "path": str(folder.path),
                    "pipeline": folder.pipeline.name,
                    "unverified": list(folder.unverified),
                    "members": [
                        {"name": m.name, "weights_sha256": m.weights_sha256} for m in folder.members
                    ],
                    "config": folder.pipeline.model_dump(mode="json"),
                }
                for folder in ensemble.folders
            ],
        }
        for ensemble in ensembles
    ]


def run_pipelines(run: dict[str, Any]) -> dict[str, PipelineConfig]:
    """The resolved pipelines recorded in a ``run.json``, by pipeline name (parsed once).

    Raises:
        ConfigError: A recorded pipeline does not validate.
    """
    from medres.pipeline import parse_pipeline

    out: dict[str, PipelineConfig] = {}
    for model in run.get("models", []):
        for folder in model.get("folders", []):
            cfg = parse_pipeline(folder["config"], source="run.json")
            out[cfg.name] = cfg
    return out


def _run_json(
    run: BatchRun,
    *,
    root: Path,
    options: PredictOptions,
    started: datetime,
    seconds: float,
    finished: bool,
) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for result in run.results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return {
        "medres_version": __version__,
        "software": software_versions(),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished,
        "seconds_total": round(seconds, 2),
        "peak_memory_mib": round(peak_rss_bytes() / 2**20, 1),
        "input": str(root),
        "options": asdict(options),
        "models": models_provenance(run.ensembles),
        "counts": counts,
        "scans": [
            {**result.row(), "stage_seconds": result.stage_seconds} for result in run.results
        ],
        "skipped": [{"path": _relative(s.path, root), "reason": s.reason} for s in run.skipped],
    }


def predict_batch(
    input_dir: str | Path,
    model_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions | None = None,
    ensembles: Sequence[Ensemble] | None = None,
    on_progress: ProgressCallback | None = None,
    after_scan: AfterScanCallback | None = None,
) -> BatchRun:
    """Predict every scan under ``input_dir`` and write the outputs under ``out``.

    Args:
        input_dir: Folder of scans (DICOM any nesting, NIfTI, 2D images) or one file.
        model_dirs: Model folders (see :func:`open_ensembles`).
        out: Output folder (created).
        options: Run options.
        ensembles: Already opened ensembles (then ``model_dirs`` is ignored).
        on_progress: ``(done, total, scan_id, stage)`` as work proceeds.
        after_scan: Extra work per finished scan (the CLI writes the reports with it).

    Returns:
        Results per scan. Failed scans are in ``results`` with their errors.

    Raises:
        ModelError: Unusable model folders. LoadError: ``input_dir`` does not exist.
        KeyboardInterrupt: After writing ``summary.csv`` and ``run.json`` for what is done.
    """
    options = options or PredictOptions()
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    root = Path(input_dir)
    out_dir = Path(out)
    opened = (
        list(ensembles) if ensembles is not None else open_ensembles(model_dirs, options=options)
    )
    found = discover(root)
    inputs, unused = assemble_inputs(found, channel_sets=[e.cfg.channels for e in opened])
    skipped = [s for s in found.skipped if not s.failed] + unused
    out_dir.mkdir(parents=True, exist_ok=True)
    run = BatchRun(out=out_dir, results=[], skipped=skipped, ensembles=opened)
    for bad in found.failed:
        run.results.append(
            ScanResult(
                scan_id=safe_name(Path(bad.path).name),
                status="failed",
                error=f"{bad.path}: {bad.reason}" if bad.path not in bad.reason else bad.reason,
                source=_relative(bad.path, root),
            )
        )
    total = len(inputs)
    finished = False
    try:
        for done, item in enumerate(inputs):
            if on_progress is not None:
                on_progress(done, total, item.scan_id, "load")
            result = _predict_one(
                item, opened, out_dir, root, options, on_progress, done, total, after_scan
            )
            run.results.append(result)
            write_summary(out_dir, run.results)
        finished = True
        if on_progress is not None:
            on_progress(total, total, "", "done")
    finally:
        write_summary(out_dir, run.results)
        data = _run_json(
            run,
            root=root,
            options=options,
            started=started,
            seconds=time.perf_counter() - clock,
            finished=finished,
        )
        write_text_atomic(out_dir / RUN, compact_json(data))
    return run


def _predict_one(
    item: ScanInput,
    ensembles: Sequence[Ensemble],
    out_dir: Path,
    root: Path,
    options: PredictOptions,
    on_progress: ProgressCallback | None,
    done: int,
    total: int,
    after_scan: AfterScanCallback | None = None,
) -> ScanResult:
    start = time.perf_counter()
    result = ScanResult(
        scan_id=item.scan_id,
        status="failed",
        kind=str(item.kind),
        source=_relative(item.name, root),
    )
    scan_dir = out_dir / item.scan_id
    try:
        if options.resume:
            for ensemble in ensembles:
                previous = is_complete(scan_dir, fingerprint(ensemble, options, item.paths))
                if previous is not None:
                    result.status = "resumed"
                    result.model = ensemble_name(ensemble)
                    result.n_lesions = previous.get("n_lesions")
                    result.lesion_volume_ml = previous.get("total_volume_ml")
                    result.lesion_area_mm2 = previous.get("total_area_mm2")
                    result.notes = "; ".join(str(w) for w in previous.get("notes", []))
                    result.shape = "x".join(str(s) for s in previous["grid"]["shape"])
                    result.spacing_mm = "x".join(f"{s:.3g}" for s in previous["grid"]["spacing_mm"])
                    result.modality = previous["source"].get("modality", "")
                    return result
        clear_scan_outputs(scan_dir)
        volume = load_input(item)
        result.modality = volume.modality
        result.shape, result.spacing_mm = _describe(volume)
        problems = []
        chosen: Ensemble | None = None
        for ensemble in ensembles:
            problem = ensemble.input_problem(volume)
            if problem is None:
                chosen = ensemble
                break
            problems.append(problem)
        if chosen is None:
            raise NoModelForScanError(
                f"{item.name}: no model takes this scan: {'; '.join(problems)}"
            )
        result.model = ensemble_name(chosen)

        def on_stage(stage: str) -> None:
            if on_progress is not None:
                on_progress(done, total, item.scan_id, stage)

        prediction = chosen.predict(
            volume, source=item.name, keep_members=options.keep_members, on_stage=on_stage
        )
        on_stage("lesions")
        lesion_start = time.perf_counter()
        lesions = _scan_lesions(chosen, prediction)
        seconds = dict(prediction.seconds)
        seconds["lesions"] = time.perf_counter() - lesion_start
        on_stage("write")
        write_start = time.perf_counter()
        written = _write_scan_outputs(scan_dir, prediction, chosen, options)
        seconds["write"] = time.perf_counter() - write_start
        notes = ([item.note] if item.note else []) + list(volume.warnings)
        report = _lesion_json(
            item, volume, chosen, prediction, lesions, root=root, options=options, seconds=seconds
        )
        report["notes"] = notes
        report["complete"] = False
        if after_scan is not None:  # the report step reads it; not complete until it is done
            write_text_atomic(scan_dir / LESIONS, compact_json(report))
        result.n_lesions = len(lesions)
        result.lesion_volume_ml = report["total_volume_ml"]
        result.lesion_area_mm2 = report["total_area_mm2"]
        result.notes = "; ".join(notes)
        if after_scan is not None:
            on_stage("report")
            report_start = time.perf_counter()
            try:
                extra = after_scan(scan_dir, volume, chosen.cfg)
            except Exception as exc:  # the masks stay; the scan is not complete
                result.error = f"{item.name}: report not written: {type(exc).__name__}: {exc}"
                result.stage_seconds = {k: round(v, 3) for k, v in seconds.items()}
                logger.debug("%s report failed:\n%s", item.scan_id, traceback.format_exc())
                result.seconds = round(time.perf_counter() - start, 3)
                return result
            seconds["report"] = time.perf_counter() - report_start
            written += list(extra.files)
            notes += list(extra.notes)
        seconds["total"] = time.perf_counter() - start
        report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        report["notes"] = notes
        report["outputs"] = _output_sizes(scan_dir, written)
        report["complete"] = True
        write_text_atomic(scan_dir / LESIONS, compact_json(report))
        result.status = "ok"
        result.notes = "; ".join(notes)
        result.stage_seconds = {k: round(v, 3) for k, v in seconds.items()}
    except NoModelForScanError as exc:
        result.error = str(exc)
        if options.skip_unmatched:
            result.status = "skipped"
    except MedresError as exc:
        result.error = str(exc)
        logger.info("%s failed: %s", item.scan_id, exc)
    except Exception as exc:  # one scan's unexpected failure must not end the batch
        result.error = f"{item.name}: {type(exc).__name__}: {exc}"
        logger.debug("%s failed:\n%s", item.scan_id, traceback.format_exc())
    result.seconds = round(time.perf_counter() - start, 3)
    return result


__all__ = [
    "LESIONS",
    "PROBABILITIES",
    "RUN",
    "SEG",
    "SUMMARY",
    "AfterScanCallback",
    "AfterScanResult",
    "BatchRun",
    "NoModelForScanError",
    "PredictOptions",
    "ScanResult",
    "ensemble_name",
    "fingerprint",
    "is_complete",
    "member_folder_name",
    "models_provenance",
    "open_ensembles",
    "predict_batch",
    "refresh_outputs",
    "run_pipelines",
    "write_summary",
]
