"""What makes a scan's earlier outputs reusable: fingerprints and completeness.

``--resume`` skips a scan only when its :class:`~medres.predictions.records.ScanRecord`
says ``complete``, carries the same :func:`fingerprint` (medres version, member weights,
resolved pipelines, options and the source files' names, sizes and modification times),
and every output it lists still exists with its recorded size. Anything else is redone,
so a run killed at any moment resumes to the same result.

:func:`source_key` and :func:`source_state` let ``medres report`` find the scan of a
folder again and tell whether it changed since predict read it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medres._version import __version__
from medres.errors import OutputError
from medres.inference.options import PredictOptions
from medres.predictions.layout import ScanFolder, relative_to_input
from medres.predictions.records import ScanRecord

if TYPE_CHECKING:
    from medres.inference.inputs import ScanInput
    from medres.inference.predictor import Ensemble


def _file_states(sources: Sequence[str], *, names: Sequence[str] | None = None) -> list[str]:
    """``name:size:mtime_ns`` per file (``name:missing`` when it is gone)."""
    out = []
    for index, source in enumerate(sources):
        name = os.path.basename(source) if names is None else names[index]
        try:
            stat = os.stat(source)
            out.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            out.append(f"{name}:missing")
    return out


def fingerprint(ensemble: Ensemble, options: PredictOptions, sources: Sequence[str] = ()) -> str:
    """What makes two predictions of a scan the same: medres version, weights, resolved
    pipelines, options, and the source files (names, sizes, modification times)."""
    parts = [__version__]
    parts += [m.weights_sha256 for f in ensemble.folders for m in f.members]
    parts += [f"T={f.temperature(m.name)}" for f in ensemble.folders for m in f.members]
    parts += [f.pipeline.model_dump_json() for f in ensemble.folders]
    parts += [
        str(options.tta),
        str(ensemble.mode),
        str(options.overlap),
        str(options.keep_members),
        str(options.save_probabilities),
        str(options.report),
        str(options.report_pdf),
        str(options.report_phi),
        getattr(ensemble, "runtime", "torch"),
    ]
    if options.explain:
        parts.append("explain")
    if options.pixel_size_mm is not None:
        parts.append(f"pixel size {options.pixel_size_mm}")
    parts += _file_states(sources)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def plan_fingerprint(
    ensembles: Sequence[Ensemble], options: PredictOptions, sources: Sequence[str] = ()
) -> str:
    """The fingerprint of a scan predicted by several ensembles together (a segmentation
    and a detection ensemble); one ensemble's is its :func:`fingerprint`."""
    parts = [fingerprint(e, options, sources) for e in ensembles]
    if len(parts) == 1:
        return parts[0]
    return hashlib.sha256("+".join(parts).encode()).hexdigest()[:16]


def _relative_paths(item: ScanInput, root: Path) -> list[str]:
    return [relative_to_input(p, root) for p in item.paths]


def source_key(item: ScanInput, root: Path) -> str:
    """Identity of a scan's source: its files' paths relative to ``root`` (in order), the
    DICOM series UIDs and split parts. Equal keys: the same scan of the same folder."""
    parts = _relative_paths(item, root)
    parts += [f"{ref.series_uid}/{ref.part}" for ref in item.refs]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def source_state(item: ScanInput, root: Path) -> str:
    """The state of a scan's source files (relative path, size, modification time):
    differs when a file was changed, replaced or removed since it was recorded."""
    states = _file_states(item.paths, names=_relative_paths(item, root))
    return hashlib.sha256("|".join(states).encode()).hexdigest()[:16]


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def is_complete(
    folder: ScanFolder | Path, expected: str, *, source: str | None = None
) -> ScanRecord | None:
    """The scan's record when every output of the scan is there for ``expected``.

    Complete means: the record says ``complete``, its fingerprint is ``expected``, its
    source key is ``source`` (when given: the same scan, not another series whose files
    share names, sizes and times), and every output it lists exists (inside the scan
    folder) with the size it had when written. An unreadable or foreign record is "not
    complete", never an error.
    """
    folder = folder if isinstance(folder, ScanFolder) else ScanFolder(folder)
    if not folder.lesions_json.is_file():  # seg.nii.gz is among the outputs (no detector-only)
        return None
    try:
        record = ScanRecord.read(folder)
    except OutputError:
        return None
    if record.fingerprint != expected or not record.complete or not record.outputs:
        return None
    if source is not None and record.source.key != source:
        return None
    for name, size in record.outputs.items():
        output = folder.path / name
        if not _inside(output, folder.path) or not output.is_file():
            return None
        if output.stat().st_size != size:
            return None
    return record


def output_sizes(folder: ScanFolder, names: Sequence[str]) -> dict[str, int]:
    """Size in bytes of each written output (relative names), sorted by name."""
    return {name: (folder.path / name).stat().st_size for name in sorted(set(names))}


def refresh_outputs(folder: ScanFolder, files: Sequence[str]) -> None:
    """Record the sizes of files rewritten later (``medres report``) in a complete scan's
    record, so ``--resume`` still sees the scan as complete."""
    try:
        record = ScanRecord.read(folder)
    except OutputError:
        return
    if not record.complete:
        return
    outputs = {**record.outputs, **output_sizes(folder, files)}
    record.model_copy(update={"outputs": dict(sorted(outputs.items()))}).write(folder)


__all__ = [
    "fingerprint",
    "is_complete",
    "output_sizes",
    "plan_fingerprint",
    "refresh_outputs",
    "source_key",
    "source_state",
]
