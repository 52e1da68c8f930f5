"""Turn discovered scans into model inputs: one file, or one file per input channel.

Most scans are one file or one DICOM series (a CT, an RGB slice, a 4D NIfTI whose 4th
axis holds the channels). Multi-channel MR often comes as one file per sequence instead;
two layouts are recognised:

* nnU-Net / Decathlon channel files: ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``... become
  one input ``CASE`` with the channels in that order, but only when some model takes that
  many channels and the files' headers show one grid (checked before any pixel is read);
  otherwise each file is a scan of its own (``ct_0000`` ... ``ct_0015`` are 16 CTs for a
  1-channel model, not one 16-channel scan);
* a case folder holding one file per channel of a model, the file name starting with the
  channel name (``flair.nii.gz``, ``Flair_subtrMeanDivStd.nii.gz``, ``T1c_....nii.gz`` for
  channels ``[flair, t1c]``): the folder becomes one input named after it, and the other
  NIfTI files in it (a brain mask, a label map) are left out with a note.

Example:
    >>> found = discover("brats_case_folders")  # doctest: +SKIP
    >>> inputs, unused = assemble_inputs(found, channel_sets=[("flair", "t1c")])  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from medres.errors import LoadError, NiftiError
from medres.io.discover import DiscoveryResult, ScanRef, SkippedFile, safe_name
from medres.io.grid import GRID_TOLERANCE_MM, Grid
from medres.io.load import load_scan
from medres.io.nifti import nifti_stem, read_nifti_grid
from medres.io.volume import ScanKind, Volume

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


@dataclass
class ScanInput:
    """One scan to predict: a discovered scan, or channel files stacked into one.

    Attributes:
        scan_id: Unique, file-name-safe identifier (the output folder's name).
        refs: The discovered scans, one per channel group, in channel order.
        grouped_by: ``""`` for a single scan, ``"_0000 suffix"`` or ``"channel names"``.
        note: Why and how the files were grouped, for the scan's row ("" when single).
    """

    scan_id: str
    refs: tuple[ScanRef, ...]
    grouped_by: str = ""
    note: str = ""

    @property
    def kind(self) -> ScanKind:
        """Kind of the (first) source."""
        return self.refs[0].kind

    @property
    def paths(self) -> tuple[str, ...]:
        """Every source file."""
        return tuple(p for ref in self.refs for p in ref.paths)

    @property
    def name(self) -> str:
        """What to call the source in messages: the first file, or the case folder."""
        if len(self.refs) == 1:
            ref = self.refs[0]
            return (
                ref.paths[0] if ref.kind is not ScanKind.DICOM else str(Path(ref.paths[0]).parent)
            )
        return str(Path(self.refs[0].paths[0]).parent)


def _first_token(stem: str) -> str:
    parts = [p for p in re.split(r"[^a-z0-9]+", stem.lower()) if p]
    return parts[0] if parts else ""


def header_grid(path: str) -> tuple[tuple[int, ...], npt.NDArray[np.float64]] | None:
    """Spatial shape and affine of a NIfTI file from its checked header alone (no pixel
    data), or None when the header is unusable (loading the file then says why)."""
    try:
        return read_nifti_grid(path)
    except NiftiError:
        return None


def _same_header_grid(refs: Sequence[ScanRef]) -> str | None:
    """None when every file's header shows the first file's grid, else why not.

    One grid: same shape, every voxel corner within :data:`GRID_TOLERANCE_MM` (RAS mm).
    """
    first = header_grid(refs[0].paths[0])
    if first is None:
        return f"the header of {Path(refs[0].paths[0]).name} cannot be read"
    for ref in refs[1:]:
        other = header_grid(ref.paths[0])
        if other is None:
            return f"the header of {Path(ref.paths[0]).name} cannot be read"
        if other[0] != first[0]:
            return f"{Path(ref.paths[0]).name} has shape {other[0]}, not {first[0]}"
        if not Grid(*other).same_grid(Grid(*first)):
            return f"{Path(ref.paths[0]).name} lies on another grid (affine)"
    return None


def _suffix_groups(
    refs: list[ScanRef], channel_counts: set[int]
) -> tuple[list[ScanInput], list[ScanRef], list[tuple[ScanRef, str]]]:
    groups: dict[tuple[str, str], dict[int, ScanRef]] = defaultdict(dict)
    rest: list[ScanRef] = []
    not_grouped: list[tuple[ScanRef, str]] = []
    for ref in refs:
        match = (
            _CHANNEL_SUFFIX.match(nifti_stem(ref.paths[0])) if ref.kind is ScanKind.NIFTI else None
        )
        if match is None:
            rest.append(ref)
            continue
        key = (str(Path(ref.paths[0]).parent), match["case"])
        groups[key][int(match["index"])] = ref
    inputs: list[ScanInput] = []
    for (_, case), by_index in sorted(groups.items()):
        indices = sorted(by_index)
        members = [by_index[i] for i in indices]
        n = len(indices)
        names = f"{case}_{indices[0]:04d}..{case}_{indices[-1]:04d}"
        if n == 1:
            if indices == [0]:  # CASE_0000 alone is the case CASE
                inputs.append(
                    ScanInput(scan_id=safe_name(case, max_length=80), refs=tuple(members))
                )
            else:
                rest.extend(members)
            continue
        if indices != list(range(n)):  # a gap: keep the files as single scans
            reason = f"{names}: channel numbers have a gap, so the files are separate scans"
        elif n not in channel_counts:  # n > 1 here
            takes = ", ".join(str(c) for c in sorted(channel_counts)) or "?"
            reason = (
                f"{names}: {n} files, but the models take {takes} channel(s), so they are "
                "separate scans"
            )
        else:
            problem = _same_header_grid(members)
            if problem is None:
                inputs.append(
                    ScanInput(
                        scan_id=safe_name(case, max_length=80),
                        refs=tuple(members),
                        grouped_by="_0000 suffix",
                        note=f"{n} files {names} stacked as the {n} input channels "
                        "(nnU-Net _0000 naming)",
                    )
                )
                continue
            reason = f"{names}: not stacked as channels: {problem}"
        rest.extend(members)
        not_grouped.extend((ref, reason) for ref in members)
    return inputs, rest, not_grouped


def _named_groups(
    refs: list[ScanRef], channel_sets: Sequence[Sequence[str]]
) -> tuple[list[ScanInput], list[ScanRef], list[SkippedFile]]:
    by_folder: dict[str, list[ScanRef]] = defaultdict(list)
    rest: list[ScanRef] = []
    for ref in refs:
        if ref.kind is ScanKind.NIFTI:
            by_folder[str(Path(ref.paths[0]).parent)].append(ref)
        else:
            rest.append(ref)
    inputs: list[ScanInput] = []
    unused: list[SkippedFile] = []
    multi = [tuple(c.lower() for c in names) for names in channel_sets if len(names) > 1]
    for folder, files in sorted(by_folder.items()):
        tokens = [_first_token(nifti_stem(ref.paths[0])) for ref in files]
        chosen: tuple[str, ...] | None = None
        for names in multi:
            if all(tokens.count(name) == 1 for name in names):
                chosen = names
                break
        if chosen is None:
            rest.extend(files)
            continue
        ordered = tuple(files[tokens.index(name)] for name in chosen)
        inputs.append(
            ScanInput(
                scan_id=safe_name(Path(folder).name, max_length=80),
                refs=ordered,
                grouped_by="channel names",
                note=f"case folder {Path(folder).name}: files stacked as channels "
                f"{', '.join(chosen)} by their names",
            )
        )
        for ref, token in zip(files, tokens, strict=True):
            if token not in chosen:
                unused.append(
                    SkippedFile(
                        ref.paths[0],
                        f"not an input channel of the case folder ({', '.join(chosen)})",
                    )
                )
    return inputs, rest, unused


def assemble_inputs(
    found: DiscoveryResult, *, channel_sets: Sequence[Sequence[str]] = ()
) -> tuple[list[ScanInput], list[SkippedFile]]:
    """Group channel files and return the inputs to predict, plus files left out.

    Args:
        found: What :func:`medres.io.discover` found.
        channel_sets: The input channel names of each model (for case-folder grouping).

    Returns:
        Inputs in discovery order (grouped cases first), each with a unique ``scan_id``;
        files that were found but are not inputs, each with its reason.
    """
    counts = {len(names) for names in channel_sets}
    grouped, rest, not_grouped = _suffix_groups(list(found.scans), counts)
    named, rest, unused = _named_groups(rest, channel_sets)
    why = {id(ref): reason for ref, reason in not_grouped}
    singles = [
        ScanInput(scan_id=ref.scan_id, refs=(ref,), note=why.get(id(ref), "")) for ref in rest
    ]
    order = {id(ref): n for n, ref in enumerate(found.scans)}
    inputs = sorted(grouped + named + singles, key=lambda item: order[id(item.refs[0])])
    used: set[str] = set()
    for item in inputs:
        candidate, n = item.scan_id, 1
        while candidate in used:  # never reuse an id, not even one a suffix produced
            n += 1
            candidate = f"{item.scan_id}_{n}"
        item.scan_id = candidate
        used.add(candidate)
    return inputs, unused


def load_input(item: ScanInput) -> Volume:
    """Read an input's pixels; channel files are stacked (same grid required).

    Same grid: same shape, every voxel corner within :data:`GRID_TOLERANCE_MM` (RAS mm).

    Raises:
        LoadError: A file cannot be read, or the channel files lie on different grids.
    """
    volumes = [load_scan(ref) for ref in item.refs]
    if len(volumes) == 1:
        return volumes[0]
    first = volumes[0]
    first_grid = Grid.of(first)
    for ref, volume in zip(item.refs[1:], volumes[1:], strict=True):
        if volume.spatial_shape != first.spatial_shape:
            raise LoadError(
                f"{ref.paths[0]}: channel shape {volume.spatial_shape} differs from "
                f"{item.refs[0].paths[0]} {first.spatial_shape}"
            )
        grid = Grid.of(volume)
        if not grid.same_grid(first_grid):
            raise LoadError(
                f"{ref.paths[0]}: channel affine differs from {item.refs[0].paths[0]}'s by "
                f"up to {grid.corner_distance_mm(first_grid):.3f} mm (voxel corners; "
                f"{GRID_TOLERANCE_MM} mm allowed); the channel files must share one grid"
            )
    array = np.concatenate([v.array.astype(np.float32, copy=False) for v in volumes], axis=0)
    return first.with_array(array)


__all__ = ["ScanInput", "assemble_inputs", "load_input"]
