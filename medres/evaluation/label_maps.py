"""``medres evaluate`` on any folder of label maps: nnU-Net's ``CASE.nii.gz`` output,
TotalSegmentator's, a second reader's manual masks, scored with the same metrics as a
``medres predict`` folder and named as a model in the tables.

A folder without ``run.json`` is read as label maps: every NIfTI or 2D image file under
it (searched recursively, natural order) is the prediction of the scan named by its file
name without extension (``case_012.nii.gz`` -> ``case_012``; nnU-Net's ``_0000`` channel
suffix is not used for outputs); with ``group_by="folder"`` the scans of one sub-folder
(a patient's slices) are one case. The truth is found as for a predict folder
(:class:`~medres.evaluation.truth.TruthIndex`) and must lie on the same grid.

Labels: with ``cfg`` (the pipeline of a medres model evaluated in the same call), the
label map's values are that pipeline's label indices, or values its ``label_map`` maps
(BraTS 1-4 -> whole tumour), as for the truth. Without it, every non-zero value is one
lesion label, ``lesion``, in the label map and in the truth alike. A label map has no
probabilities: each of its lesions scores 1 in the FROC, and no calibration is measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import EvaluationError, MedresError
from medres.evaluation.run import EvaluationRun, finish_evaluation
from medres.evaluation.scoring import CaseGrouping, EvaluateOptions, Scoring
from medres.evaluation.truth import TruthIndex, read_truth
from medres.io.discover import iter_files
from medres.io.grid import Grid, squeeze_single_slice_array
from medres.io.images2d import is_image2d_path, read_mask2d
from medres.io.nifti import is_nifti_path, nifti_stem, read_nifti
from medres.io.order import natural_path_key
from medres.io.units import MM, PX
from medres.pipeline import PipelineConfig

#: The label of a label-map folder evaluated without a medres pipeline.
LESION = "lesion"


def label_map_files(folder: Path) -> dict[str, Path]:
    """Scan id -> label map file of a folder of label maps.

    Raises:
        EvaluationError: No label map, or two files for one scan id.
    """
    found: dict[str, Path] = {}
    files = sorted(
        (p for p in iter_files(folder) if is_nifti_path(p) or is_image2d_path(p)),
        key=natural_path_key,
    )
    for path in files:
        scan_id = nifti_stem(path) if is_nifti_path(path) else path.stem
        if scan_id in found:
            raise EvaluationError(
                f"{folder}: two label maps for scan {scan_id}: {found[scan_id]} and {path}"
            )
        found[scan_id] = path
    if not found:
        raise EvaluationError(
            f"{folder}: neither a medres predict folder (no run.json) nor a folder of label "
            "maps (no NIfTI or image file)"
        )
    return found


def _read_label_map(path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64], str]:
    """The label map, its affine and its length unit (px for an image file)."""
    if is_image2d_path(path):
        volume = read_mask2d(path)
        return volume.array[0], np.eye(4), PX
    volume = read_nifti(path)
    array = volume.array[0]
    if array.ndim == 3 and array.shape[2] == 1:
        array = squeeze_single_slice_array(array)
    return array, volume.affine, MM


def _labels(
    array: npt.NDArray[Any], cfg: PipelineConfig | None, *, source: str
) -> tuple[npt.NDArray[np.uint8], list[tuple[int, str]]]:
    """The label map in lesion indices, and ``(index, name)`` of each lesion label."""
    if cfg is None:
        return (np.asarray(array) != 0).astype(np.uint8), [(1, LESION)]
    from medres.transforms.presets import map_labels

    values = set(np.unique(array).astype(int).tolist())
    known = values <= set(range(len(cfg.labels)))
    mapped = array.astype(np.uint8) if known else map_labels(array, cfg, source=source)
    return mapped, [(i, cfg.labels[i]) for i in cfg.lesion_indices]


@cache
def _binary_pipeline(dims: int) -> PipelineConfig:
    """The labels of a label-map folder evaluated alone: every non-zero value a lesion."""
    from medres.pipeline import parse_pipeline

    return parse_pipeline(
        {
            "name": "label_maps",
            "dims": dims,
            "channels": ["image"],
            "labels": ["background", LESION],
            "lesion_labels": [LESION],
            "label_map": {v: 1 for v in range(2, 256)},
            "model": {"name": "res_unet"},
            "training": {"patch_size": [16] * dims},
        }
    )


def _score_file(
    scoring: Scoring,
    scan_id: str,
    path: Path,
    model: str,
    cfg: PipelineConfig | None,
    root: Path,
) -> None:
    """Score one label map of ``model`` against its truth (problems are recorded)."""
    try:
        array, affine, unit = _read_label_map(path)
        shape = tuple(int(s) for s in array.shape)
        truth_path = scoring.index.find(scan_id)
        labels_of = cfg if cfg is not None else _binary_pipeline(len(shape))
        truth = read_truth(truth_path, scan_id=scan_id, shape=shape, affine=affine, cfg=labels_of)
        predicted, labels = _labels(array, cfg, source=str(path))
        if is_image2d_path(truth_path):  # a truth image file has no pixel size: pixels
            unit = PX
    except MedresError as exc:
        scoring.failed.append({"scan_id": scan_id, "error": str(exc)})
        return
    grid = Grid(shape, affine)
    case_id = scan_id  # with group_by folder: the sub-folder (patient) the file is in
    if scoring.options.group_by == CaseGrouping.FOLDER and path.parent != root:
        case_id = path.parent.relative_to(root).as_posix()
    scoring.units.setdefault(unit, []).append(scan_id)
    scoring.spacing_of_case[case_id] = max(
        scoring.spacing_of_case.get(case_id, 0.0), max(grid.spacing_mm)
    )
    scoring.scored_scans += 1
    for index, name in labels:
        scoring.score_label(
            case_id,
            scan_id,
            model,
            name,
            predicted == index,
            truth == index,
            scores={},
            spacing_mm=grid.spacing_mm,
            voxel_measure=grid.voxel_measure,
            probability=None,
        )


def evaluate_label_maps(
    folder: str | Path,
    truth: str | Path,
    out: str | Path | None = None,
    *,
    name: str | None = None,
    cfg: PipelineConfig | None = None,
    options: EvaluateOptions | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> EvaluationRun:
    """Score a folder of label maps (see the module docstring) as the model ``name``.

    Args:
        folder: The label maps.
        truth: Truth folder or datalist JSON.
        out: Where to write (default: ``<folder>/evaluation``).
        name: The model's name in the tables (default: the folder's name).
        cfg: A medres pipeline giving the label names and the truth's ``label_map``.
        options: Scoring options (``members`` has no meaning here).
        on_progress: ``(done, total, scan_id)``.

    Raises:
        EvaluationError: No label map, an unusable truth source, nothing scored.
    """
    options = options or EvaluateOptions()
    start = time.perf_counter()
    folder = Path(folder)
    files = label_map_files(folder)
    index = TruthIndex(
        truth,
        truth_name=options.truth_name,
        mask_suffix=options.mask_suffix,
        data_root=options.data_root,
    )
    scoring = Scoring(options=options, configs={}, index=index)
    model = name or folder.resolve().name
    for done, (scan_id, path) in enumerate(files.items()):
        if on_progress is not None:
            on_progress(done, len(files), scan_id)
        if options.skip_missing_truth and not index.has(scan_id):
            scoring.without_truth.append(scan_id)
            continue
        _score_file(scoring, scan_id, path, model, cfg, folder)
    out_dir = Path(out) if out is not None else folder / "evaluation"
    return finish_evaluation(scoring, folder, truth, out_dir, start=start, kind="label maps")


__all__ = ["LESION", "evaluate_label_maps", "label_map_files"]
