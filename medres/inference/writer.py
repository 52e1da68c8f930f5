"""Turning one ensemble prediction into the files and records of its scan folder.

On top of :mod:`medres.predictions`: :func:`write_masks` writes the label maps (and the
probabilities and members' outputs when asked) atomically; :func:`scan_record` builds
the scan's :class:`~medres.predictions.records.ScanRecord` from the in-memory prediction;
:func:`models_provenance` and :func:`run_record` describe the run. The batch loop
(:mod:`medres.inference.batch`) decides when each is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medres._version import __version__
from medres.inference.lesions import find_lesions
from medres.inference.options import PredictOptions
from medres.inference.predictor import Ensemble, EnsemblePrediction
from medres.inference.resume import fingerprint, source_key, source_state
from medres.io.atomic import write_bytes_atomic
from medres.io.discover import SkippedFile, safe_name
from medres.io.nifti import nifti_bytes
from medres.io.units import MM, LengthUnit
from medres.io.volume import Volume, patient_orientation
from medres.models.folder import ModelFolder, software_versions
from medres.predictions.layout import ScanFolder, relative_to_input
from medres.predictions.records import (
    EnsembleRecord,
    FolderProvenance,
    GridRecord,
    InputKindRecord,
    Lesion,
    MemberLesionsRecord,
    MemberProvenance,
    ModelProvenance,
    RunRecord,
    RunScanEntry,
    ScanRecord,
    ScanResult,
    SkippedRecord,
    SourceRecord,
)
from medres.runtime import peak_rss_bytes

if TYPE_CHECKING:
    from medres.inference.inputs import ScanInput


def ensemble_name(ensemble: Ensemble) -> str:
    """``+``-joined pipeline names of an ensemble's folders."""
    return "+".join(f.pipeline.name for f in ensemble.folders)


def probability_nifti(probabilities: npt.NDArray[Any], affine: npt.NDArray[np.float64]) -> bytes:
    """Foreground probabilities ``(C-1, ...)`` as 1-byte NIfTI (``scl_slope`` 1/255)."""
    quantised = np.rint(probabilities.astype(np.float32) * 255.0).astype(np.uint8)
    stored = quantised[0] if quantised.shape[0] == 1 else np.moveaxis(quantised, 0, -1)
    if probabilities.ndim == 3 and quantised.shape[0] > 1:  # 2D with several labels
        stored = stored[:, :, None, :]
    return nifti_bytes(stored, affine, scale=1 / 255)


def scan_lesions(ensemble: Ensemble, prediction: EnsemblePrediction) -> list[Lesion]:
    """The ensemble's lesions on the scan grid, with scores, agreement and uncertainty;
    one numbering (by decreasing size) over all lesion labels."""
    lesions: list[Lesion] = []
    for index in ensemble.cfg.lesion_indices:
        lesions += find_lesions(
            prediction.label_map,
            affine=prediction.affine,
            label_index=index,
            label_name=ensemble.labels[index],
            probabilities=prediction.probabilities[index - 1],
            member_hits=prediction.member_hits[index - 1],
            n_members=ensemble.n_members,
            uncertainty=prediction.uncertainty[index - 1],
        )
    if len(ensemble.cfg.lesion_indices) > 1:
        lesions.sort(key=lambda x: -x.voxel_count)
        lesions = [x.model_copy(update={"lesion_id": n + 1}) for n, x in enumerate(lesions)]
    return lesions


def _member_lesions(
    ensemble: Ensemble, labels: npt.NDArray[Any], probabilities: npt.NDArray[Any], affine: Any
) -> list[Lesion]:
    lesions: list[Lesion] = []
    for label in ensemble.cfg.lesion_indices:
        lesions += find_lesions(
            labels,
            affine=affine,
            label_index=label,
            label_name=ensemble.labels[label],
            probabilities=probabilities[label - 1],
        )
    return lesions


def write_masks(
    folder: ScanFolder,
    prediction: EnsemblePrediction,
    ensemble: Ensemble,
    *,
    save_probabilities: bool,
    length_unit: LengthUnit = MM,
) -> list[str]:
    """Write the label map, and the probabilities and each member's outputs when the
    prediction holds them; returns the written files relative to the scan folder.
    ``length_unit``: the scan's (members' lesion sizes are named in it)."""
    affine = prediction.affine
    write_bytes_atomic(folder.seg, nifti_bytes(prediction.label_map, affine))
    written = [folder.seg]
    if save_probabilities:
        write_bytes_atomic(
            folder.probabilities, probability_nifti(prediction.probabilities, affine)
        )
        written.append(folder.probabilities)
    for index, member_map in enumerate(prediction.member_label_maps):
        name = prediction.member_names[index]
        member = folder.member(name)
        probabilities = prediction.member_probabilities[index]
        write_bytes_atomic(member.seg, nifti_bytes(member_map, affine))
        written.append(member.seg)
        if save_probabilities:
            write_bytes_atomic(member.probabilities, probability_nifti(probabilities, affine))
            written.append(member.probabilities)
        lesions = _member_lesions(ensemble, member_map, probabilities, affine)
        MemberLesionsRecord(
            member=name,
            n_lesions=len(lesions),
            lesions=[x for x in lesions],
            length_unit=length_unit,
        ).write(member)
        written.append(member.lesions_json)
    return [folder.relative(p) for p in written]


def source_record(item: ScanInput, volume: Volume, root: Path) -> SourceRecord:
    files = [relative_to_input(p, root) for p in item.paths]
    more = [f"... {len(files) - 4} more"] if len(files) > 4 else []
    description = item.refs[0].description
    return SourceRecord(
        kind=str(item.kind),
        name=relative_to_input(item.name, root),
        key=source_key(item, root),
        state=source_state(item, root),
        files=files[:4] + more,
        n_files=len(files),
        grouped_by=item.grouped_by,
        modality=volume.modality,
        series_uid=volume.source.series_uid,
        study_uid=volume.source.study_uid,
        frame_of_reference_uid=volume.source.frame_of_reference_uid,
        description=safe_name(description, max_length=80) if description else "",
    )


def scan_record(
    item: ScanInput,
    volume: Volume,
    ensemble: Ensemble,
    prediction: EnsemblePrediction,
    lesions: Sequence[Lesion],
    *,
    root: Path,
    options: PredictOptions,
    seconds: dict[str, float],
    notes: Sequence[str],
) -> ScanRecord:
    """The scan's record, not yet complete (the batch completes it after the report)."""
    ndim = prediction.label_map.ndim
    three_d = ndim == 3
    return ScanRecord(
        medres_version=__version__,
        scan_id=item.scan_id,
        fingerprint=fingerprint(ensemble, options, item.paths),
        source=source_record(item, volume, root),
        grid=GridRecord(
            shape=tuple(prediction.label_map.shape),
            spacing_mm=tuple(round(s, 5) for s in volume.spacing_mm[:ndim]),
            orientation=patient_orientation(volume),
            length_unit=volume.length_unit,
            affine=np.round(prediction.affine, 6).tolist(),
        ),
        ensemble=EnsembleRecord(
            pipelines=[f.pipeline.name for f in ensemble.folders],
            members=prediction.member_names,
            mode=str(ensemble.mode),
            tta=[
                f.pipeline.inference.tta if options.tta is None else options.tta
                for f in ensemble.folders
            ],
        ),
        labels=list(ensemble.labels),
        lesion_labels=list(ensemble.cfg.lesion_labels),
        n_lesions=len(lesions),
        total_volume_ml=round(sum((x.volume_ml or 0.0 for x in lesions), 0.0), 4)
        if three_d
        else None,
        total_area_mm2=None
        if three_d
        else round(sum((x.area_mm2 or 0.0 for x in lesions), 0.0), 3),
        lesions=[x for x in lesions],
        seconds={k: round(v, 3) for k, v in seconds.items()},
        notes=list(notes),
        complete=False,
    )


def cross_validation_line(folder: ModelFolder) -> str:
    """What the folder's out-of-fold predictions chose, for run.json and the reports
    (``""`` when nothing was fitted for its members)."""
    entry = folder.tuned
    if entry is None:
        return ""
    applied = folder.pipeline.postprocessing.choose_from_cross_validation
    chosen = entry.chosen.describe(entry.size_unit)
    kept = "" if entry.chosen != entry.configured else " (the pipeline's own: no candidate beat it)"
    temperatures = ", ".join(f"{k} {v:.2f}" for k, v in entry.temperatures.items())
    line = (
        f"probabilities calibrated by temperature scaling on {entry.n_cases} out-of-fold cases "
        f"({temperatures}; ECE in the lesion region {entry.ece.get('lesion_before', 0):.3f} -> "
        f"{entry.ece.get('lesion_after', 0):.3f})"
    )
    if applied:
        line += f"; post-processing chosen by cross-validation: {chosen}{kept}"
    return line + "."


def models_provenance(ensembles: Sequence[Ensemble]) -> list[ModelProvenance]:
    """Per ensemble: its input, labels, and per folder the path, pipeline (resolved) and
    every member's weight checksum; what ``run.json`` and the reports show."""
    return [
        ModelProvenance(
            ensemble=ensemble_name(ensemble),
            mode=str(ensemble.mode),
            runtime=ensemble.runtime,
            takes=InputKindRecord(dims=ensemble.cfg.dims, channels=list(ensemble.cfg.channels)),
            labels=list(ensemble.labels),
            folders=[
                FolderProvenance(
                    path=str(folder.path),
                    pipeline=folder.pipeline.name,
                    unverified=list(folder.unverified),
                    members=[
                        MemberProvenance(
                            name=m.name,
                            weights_sha256=m.weights_sha256,
                            temperature=folder.temperature(m.name),
                        )
                        for m in folder.members
                    ],
                    config=folder.pipeline.model_dump(mode="json"),
                    cross_validation=cross_validation_line(folder),
                )
                for folder in ensemble.folders
            ],
        )
        for ensemble in ensembles
    ]


def run_record(
    *,
    root: Path,
    options: PredictOptions,
    models: Sequence[ModelProvenance],
    results: Sequence[ScanResult],
    skipped: Sequence[SkippedFile],
    started: datetime,
    seconds: float,
    finished: bool,
    execution: dict[str, Any] | None = None,
) -> RunRecord:
    """The run's record for ``run.json`` (``execution``: where the scans ran)."""
    counts: dict[str, int] = {}
    for result in results:
        counts[str(result.status)] = counts.get(str(result.status), 0) + 1
    return RunRecord(
        medres_version=__version__,
        software=software_versions(),
        started=started.isoformat(timespec="seconds"),
        finished=finished,
        seconds_total=round(seconds, 2),
        peak_memory_mib=round(peak_rss_bytes() / 2**20, 1),
        input=str(root),
        options=asdict(options),
        execution=execution or {},
        models=list(models),
        counts=counts,
        scans=[
            RunScanEntry.model_validate({**r.row(), "stage_seconds": r.stage_seconds})
            for r in results
        ],
        skipped=[
            SkippedRecord(path=relative_to_input(s.path, root), reason=s.reason) for s in skipped
        ],
    )


__all__ = [
    "ensemble_name",
    "models_provenance",
    "probability_nifti",
    "run_record",
    "scan_lesions",
    "scan_record",
    "source_record",
    "write_masks",
]
