"""Training data sets: find labelled cases, check them against a pipeline, split by patient.

Three layouts are accepted (see docs/user-guide.md):

* a **datalist JSON** (MONAI / Decathlon ``dataset.json`` style): ``{"training": [{"image":
  path or [paths], "label": path, "patient": optional group}]}``; relative paths are
  resolved against ``base_dir`` (default: the JSON file's folder);
* a **Decathlon folder** with ``imagesTr/`` and ``labelsTr/`` (4D multi-channel images,
  or nnU-Net-style ``case_0000.nii.gz``, ``case_0001.nii.gz`` channel files);
* **2D image/mask pairs** (``name.tif`` + ``name_mask.tif``, ``images/`` + ``masks/``...:
  :mod:`medres.io.pairing`), by patient: the sub-folder, or the name before ``_<slice>``.

Folds are split by patient group, never by slice, deterministically for a given seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medres.errors import DatasetError, MedresError
from medres.io.discover import iter_files
from medres.io.grid import squeeze_single_slice_shape
from medres.io.images2d import is_image2d_path
from medres.io.nifti import is_nifti_path, nifti_stem
from medres.io.pairing import ImagePair, pair_masks
from medres.pipeline import PipelineConfig
from medres.training.box_datalist import BoxTruth, checked_boxes, read_box_entry

logger = logging.getLogger(__name__)

_SLICE_NUMBER = re.compile(r"^(?P<stem>.*?)[_-](?P<number>\d+)$")


@dataclass(frozen=True)
class TrainingCase:
    """One labelled training example.

    Attributes:
        case_id: Unique name (file-name safe), e.g. ``TCGA_CS_4941_19960909_12``.
        group: Patient the case belongs to; folds never split a group.
        image_paths: One file per channel group (a multi-channel file counts once).
        label_path: Label mask on the image's grid (for truth given as boxes: the
            datalist file, named in messages).
        order: Position within the group (2D slice number) for stacking per patient.
        boxes: Detection truth given as boxes (:mod:`medres.training.box_datalist`)
            instead of a mask; voxel-corner boxes once the data is checked.
    """

    case_id: str
    group: str
    image_paths: tuple[Path, ...]
    label_path: Path
    order: int = 0
    boxes: BoxTruth | None = None

    def record(self) -> dict[str, Any]:
        """The MONAI dictionary record for :mod:`medres.transforms.presets`."""
        record: dict[str, Any] = {
            "image": [str(p) for p in self.image_paths],
            "label": str(self.label_path),
            "case_id": self.case_id,
            "group": self.group,
        }
        if self.boxes is not None:
            if self.boxes.space != "voxel" or self.boxes.mode not in ("xyxy", "xyzxyz"):
                raise DatasetError(f"{self.boxes.where}: boxes not converted (check the data)")
            record["label"] = ""
            record["boxes"] = [list(b) for b in self.boxes.boxes]
            record["box_classes"] = list(self.boxes.classes)
        return record


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: which patient groups train and which validate."""

    index: int
    train_groups: tuple[str, ...]
    val_groups: tuple[str, ...]


@dataclass
class DatasetCheck:
    """What :func:`check_cases` learned from reading every label mask."""

    n_cases: int
    n_groups: int
    lesion_cases: set[str] = field(default_factory=set)
    label_voxels: dict[str, int] = field(default_factory=dict)


def read_datalist(
    path: str | Path, *, base_dir: str | Path | None = None, key: str = "training"
) -> list[TrainingCase]:
    """Read a datalist JSON into training cases.

    Args:
        path: The JSON file.
        base_dir: Folder relative paths start from (default: the JSON file's folder).
        key: The list to read (``training``; ``validation`` or ``test`` lists are ignored
            for training).

    Raises:
        DatasetError: Unreadable JSON, missing key, or entries without image/label.
    """
    path = Path(path)
    root = Path(base_dir) if base_dir is not None else path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read datalist JSON: {exc}") from None
    entries = data.get(key) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: no list under {key!r} (expected {{{key!r}: [...]}})")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetError(f"{path}: {key}[{index}] needs an 'image' key")
        if "label" not in entry and "box" not in entry:
            raise DatasetError(
                f"{path}: {key}[{index}] needs a 'label' mask path (segmentation) or a "
                "'box' list (detection)"
            )
    stems = [nifti_stem(Path(str(_first(e["image"]))).name) for e in entries]
    cases: list[TrainingCase] = []
    for index, entry in enumerate(entries):
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        image_paths = tuple((root / str(p)).resolve() for p in images)
        boxes = None
        if "box" in entry:
            where = f"{path}: case {entry.get('id') or nifti_stem(image_paths[0].name)}"
            defaults = data if isinstance(data, dict) else {}
            boxes = read_box_entry(entry, defaults, where=where)
            label_path = path.resolve()
        else:
            label_path = (root / str(entry["label"])).resolve()
        # default id: the file name, or folder_file when cases share file names
        # (case/flair.nii.gz); an explicit "id" always wins
        stem = nifti_stem(image_paths[0].name)
        shared_name = stems.count(stem) > 1
        case_id = str(
            entry.get("id") or (f"{image_paths[0].parent.name}_{stem}" if shared_name else stem)
        )
        group = str(entry.get("patient") or entry.get("group") or case_id)
        cases.append(TrainingCase(case_id, group, image_paths, label_path, index, boxes))
    return cases


def scan_decathlon(folder: str | Path) -> list[TrainingCase]:
    """Cases of a Decathlon / nnU-Net raw folder (``imagesTr/`` + ``labelsTr/``)."""
    folder = Path(folder)
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    channel_file = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
    by_case: dict[str, list[Path]] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith(".") or not is_nifti_path(path):
            continue
        stem = nifti_stem(path.name)
        match = channel_file.match(stem)
        by_case.setdefault(match["case"] if match else stem, []).append(path)
    cases = []
    for index, (case_id, paths) in enumerate(sorted(by_case.items())):
        label = next(
            (
                labels_dir / f"{case_id}{ext}"
                for ext in (".nii.gz", ".nii")
                if (labels_dir / f"{case_id}{ext}").exists()
            ),
            labels_dir / f"{case_id}.nii.gz",
        )
        cases.append(TrainingCase(case_id, case_id, tuple(sorted(paths)), label, index))
    return cases


def scan_image_pairs(folder: str | Path, *, mask_suffix: str = "_mask") -> list[TrainingCase]:
    """2D image/mask pairs under ``folder`` (:func:`medres.io.pairing.pair_masks`), by patient.

    The group is the first sub-folder below ``folder`` (not counting the ``images/`` of
    ``images/`` + ``masks/``: ``images/a/x.png`` is in ``a``, ``case/case_image/x.bmp`` in
    ``case``), else the file name without its trailing ``_<number>``. An image without a
    mask becomes a case whose ``label_path`` does not exist, so that :func:`check_cases`
    names it; masks not used are logged with the reason.
    """
    folder = Path(folder)
    files = [p for p in iter_files(folder) if is_image2d_path(p)]
    found = pair_masks(files, root=folder, mask_suffix=mask_suffix, stem_of=nifti_stem)
    for skipped in found.skipped:
        logger.warning("%s: not used: %s", skipped.path, skipped.reason)
    cases = [_image_case(pair, folder, mask_suffix) for pair in found.pairs]
    flat = all(len(pair.parts_below(folder)) <= 1 for pair in found.pairs)
    if flat and len(cases) > 1 and len({c.group for c in cases}) == 1:
        cases = [dataclasses.replace(c, group=c.case_id, order=0) for c in cases]
    cases.sort(key=lambda c: (c.group, c.order, c.case_id))
    return cases


def _image_case(pair: ImagePair, folder: Path, mask_suffix: str) -> TrainingCase:
    """The training case of one 2D image: its group, slice order and mask path."""
    path, stem = pair.image, nifti_stem(pair.image)
    default = path.with_name(f"{stem}{mask_suffix or '_mask'}{path.suffix}")
    mask = pair.mask or pair.expected_mask or default
    parts = pair.parts_below(folder)
    match = _SLICE_NUMBER.match(stem)
    # per-patient folders name the group; flat folders: the name before "_<slice>"
    group = parts[0] if len(parts) > 1 else (match["stem"] if match else stem)
    order = int(match["number"]) if match else 0
    case_id = stem if stem.startswith(group) else f"{group}_{stem}"
    return TrainingCase(case_id, group, (path,), mask, order)


def find_training_cases(
    data: str | Path,
    *,
    mask_suffix: str = "_mask",
    base_dir: str | Path | None = None,
) -> list[TrainingCase]:
    """Find the labelled cases at ``data``: a datalist JSON, a Decathlon folder, or 2D pairs.

    A folder holding ``dataset.json`` (or ``datalist.json``) is read through that file.

    Raises:
        DatasetError: ``data`` does not exist, or no case was found (the message says
            which layouts were tried).
    """
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"{data}: training data not found")
    if data.is_file():
        cases = read_datalist(data, base_dir=base_dir)
        layout = "datalist"
    elif (data / "imagesTr").is_dir():
        cases = scan_decathlon(data)
        layout = "Decathlon imagesTr/labelsTr"
    elif (data / "dataset.json").is_file() or (data / "datalist.json").is_file():
        name = "dataset.json" if (data / "dataset.json").is_file() else "datalist.json"
        cases = read_datalist(data / name, base_dir=base_dir)
        layout = name
    else:
        cases = scan_image_pairs(data, mask_suffix=mask_suffix)
        layout = f"2D image/mask pairs (suffix {mask_suffix!r})"
    if not cases:
        raise DatasetError(
            f"{data}: empty data set: no labelled cases found as {layout} (accepted: a "
            f"datalist JSON, a folder with imagesTr/ + labelsTr/, or 2D images with "
            f"'{mask_suffix}' masks beside them or in a masks/ folder beside images/)"
        )
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DatasetError(f"{data}: duplicate case ids {duplicated}; give each case an 'id'")
    logger.info(
        "%s: %d cases in %d groups (%s)", data, len(cases), len({c.group for c in cases}), layout
    )
    return cases


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def read_group_list(text: str) -> list[str]:
    """Patient groups from ``a,b,c`` or ``@file`` (one per line, ``#`` comments).

    Raises:
        DatasetError: The ``@file`` cannot be read.
    """
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read group list: {exc}") from None
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [part.strip() for part in text.split(",") if part.strip()]


def exclude_groups(cases: Sequence[TrainingCase], groups: Sequence[str]) -> list[TrainingCase]:
    """Drop held-out patients (e.g. a canonical test set).

    Raises:
        DatasetError: A listed group does not exist (likely a typo).
    """
    known = {c.group for c in cases}
    missing = sorted(set(groups) - known)
    if missing:
        raise DatasetError(f"excluded group(s) {missing} are not in the data set")
    drop = set(groups)
    return [c for c in cases if c.group not in drop]


def _header_shape(path: Path) -> tuple[tuple[int, ...], int]:
    """``(spatial shape (x, y[, z]), channels)`` from the header only."""
    if is_nifti_path(path):
        import nibabel as nib

        shape = tuple(int(s) for s in nib.load(str(path)).shape)
        if len(shape) >= 4:
            return shape[:3], int(np.prod(shape[3:]))
        return shape, 1
    from PIL import Image

    with Image.open(path) as img:
        channels = {"L": 1, "I": 1, "I;16": 1, "F": 1, "1": 1, "RGB": 3, "RGBA": 3, "P": 3}
        return (img.size[0], img.size[1]), channels.get(img.mode, len(img.getbands()))


def _checked_label_map(case: TrainingCase, cfg: PipelineConfig) -> npt.NDArray[np.uint8]:
    """One case's mask as label indices, after checking the case against the pipeline.

    Checks that its files exist, the image is ``cfg.dims``-D with ``cfg.channels``, the
    mask has the image's shape and every mask value maps to a label.

    Raises:
        MedresError: The first problem found (a :class:`DatasetError`, or the reader's own
            error for a file that cannot be read).
    """
    from medres.transforms.presets import map_labels, read_channels, read_label

    if case.boxes is not None:
        return _box_label_map(case, cfg)[0]
    missing = [p for p in (*case.image_paths, case.label_path) if not p.is_file()]
    if missing:
        what = "mask" if case.label_path in missing else "image"
        raise DatasetError(f"{missing[0]}: {what} file is missing (case {case.case_id})")
    channels = 0
    shape: tuple[int, ...] = ()
    for path in case.image_paths:
        shape, n = _header_shape(path)
        channels += n
    spatial = squeeze_single_slice_shape(shape) if cfg.dims == 2 else shape
    if len(spatial) != cfg.dims:
        raise DatasetError(
            f"{case.image_paths[0]}: {len(spatial)}D image {shape} but the pipeline is {cfg.dims}D"
        )
    if channels != len(cfg.channels):
        raise DatasetError(
            f"{case.image_paths[0]}: {channels} channel(s) but the pipeline expects "
            f"{len(cfg.channels)} ({', '.join(cfg.channels)})"
        )
    if len(case.image_paths) == 1 and is_image2d_path(case.image_paths[0]):
        from medres.io.images2d import read_mask2d

        label_array = read_mask2d(case.label_path).array
        if label_array.shape[1:] != spatial:
            raise DatasetError(
                f"{case.label_path}: mask is {label_array.shape[1:]} but its image "
                f"{case.image_paths[0].name} is {spatial}"
            )
    else:
        image = read_channels(case.image_paths[:1], dims=cfg.dims)
        label_array = read_label(case.label_path, image).array
    return map_labels(label_array, cfg, source=str(case.label_path))


def _box_label_map(
    case: TrainingCase, cfg: PipelineConfig
) -> tuple[npt.NDArray[np.uint8], TrainingCase]:
    """A box case's boxes painted as a label map, and the case with its boxes in voxels
    (see :func:`~medres.training.box_datalist.checked_boxes`)."""
    assert case.boxes is not None
    label_map, boxes = checked_boxes(case.boxes, case.image_paths, cfg, case_id=case.case_id)
    return label_map, dataclasses.replace(case, boxes=boxes)


def with_voxel_boxes(cases: Sequence[TrainingCase], cfg: PipelineConfig) -> list[TrainingCase]:
    """The cases with every datalist box converted to voxel corners of its image (after
    :func:`check_cases` has refused bad ones)."""
    return [_box_label_map(c, cfg)[1] if c.boxes is not None else c for c in cases]


def _count_labels(
    result: DatasetCheck,
    case: TrainingCase,
    label_map: npt.NDArray[np.uint8],
    cfg: PipelineConfig,
) -> None:
    """Add one case's voxels per label to ``result`` (and the case, if it has a lesion)."""
    counts = np.bincount(label_map.ravel(), minlength=len(cfg.labels))
    for index_label, name in enumerate(cfg.labels):
        result.label_voxels[name] = result.label_voxels.get(name, 0) + int(counts[index_label])
    if any(counts[i] > 0 for i in cfg.lesion_indices):
        result.lesion_cases.add(case.case_id)


def check_cases(
    cases: Sequence[TrainingCase],
    cfg: PipelineConfig,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> DatasetCheck:
    """Check every case against the pipeline before training starts.

    Reads image headers and every label mask: files exist, channel count matches
    ``cfg.channels``, the mask has the image's shape, every mask value is a label index or
    in ``cfg.label_map``. Collects all problems, then raises once.

    Raises:
        DatasetError: Listing each problem with the file it concerns.
    """
    if not cases:
        raise DatasetError("empty data set: no training cases")
    problems: list[str] = []
    result = DatasetCheck(n_cases=len(cases), n_groups=len({c.group for c in cases}))
    for index, case in enumerate(cases):
        if on_progress:
            on_progress(index, len(cases))
        try:
            label_map = _checked_label_map(case, cfg)
        except MedresError as exc:
            problems.append(str(exc))
            continue
        _count_labels(result, case, label_map, cfg)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(
            f"{len(problems)} problem(s) in the training data; nothing was trained:"
            f"\n  {shown}{more}"
        )
    if not result.lesion_cases:
        raise DatasetError(
            f"no case contains any of the lesion labels {list(cfg.lesion_labels)}; check "
            "label_map and the masks"
        )
    return result


def make_folds(cases: Sequence[TrainingCase], *, n_folds: int, seed: int) -> list[Fold]:
    """Split patient groups into ``n_folds`` folds, deterministically for ``seed``.

    Groups are sorted, shuffled with ``numpy.random.default_rng(seed)`` and dealt round
    robin, so every fold gets ``len(groups) // n_folds`` or one more.

    Raises:
        DatasetError: Fewer groups than folds.
    """
    groups = sorted({c.group for c in cases})
    if len(groups) < n_folds:
        raise DatasetError(
            f"{len(groups)} patient group(s) cannot be split into {n_folds} folds; "
            "lower training.folds or add cases"
        )
    order = np.random.default_rng(seed).permutation(len(groups))
    val_sets: list[list[str]] = [[] for _ in range(n_folds)]
    for position, index in enumerate(order):
        val_sets[position % n_folds].append(groups[int(index)])
    folds = []
    for index, val in enumerate(val_sets):
        val_sorted = tuple(sorted(val))
        train = tuple(g for g in groups if g not in set(val))
        folds.append(Fold(index, train, val_sorted))
    return folds


def split_to_json(
    folds: Sequence[Fold], cases: Sequence[TrainingCase], excluded: Sequence[str]
) -> dict[str, Any]:
    """The ``split.json`` content saved in a model folder."""
    by_group: dict[str, list[str]] = {}
    for case in cases:
        by_group.setdefault(case.group, []).append(case.case_id)
    return {
        "excluded_groups": sorted(excluded),
        "folds": [
            {
                "fold": fold.index,
                "train_groups": list(fold.train_groups),
                "val_groups": list(fold.val_groups),
                "val_cases": [cid for g in fold.val_groups for cid in by_group.get(g, [])],
            }
            for fold in folds
        ],
    }


__all__ = [
    "DatasetCheck",
    "Fold",
    "TrainingCase",
    "check_cases",
    "exclude_groups",
    "find_training_cases",
    "make_folds",
    "read_datalist",
    "read_group_list",
    "scan_decathlon",
    "scan_image_pairs",
    "split_to_json",
]
