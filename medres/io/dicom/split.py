"""One series -> several volumes: geometry groups, time points, echoes, acquisitions.

This module owns how the slices of one series are divided before planning: first by
geometry (size, orientation, spacing, pixel format), then, where a group holds several
slices per position, by the first header key that gives every part exactly one slice
per position (TemporalPositionIdentifier / TemporalPositionIndex, EchoNumbers,
AcquisitionNumber, TriggerTime, StackID), failing that by InstanceNumber rank. Positions
are compared along the slice normal (LPS mm) within :data:`POSITION_TOL_MM`.

Example:
    >>> [label for label, _ in split_volumes(headers)]  # doctest: +SKIP
    ['t1', 't2', 't3']
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from medres.io.dicom.fields import POSITION_TOL_MM
from medres.io.dicom.plan import slice_normal
from medres.io.dicom.records import SliceHeader


def _position_key(s: SliceHeader) -> tuple[int, ...] | None:
    if s.position_lps is None or s.orientation_lps is None:
        return None
    d = float(np.dot(slice_normal(s.orientation_lps), s.position_lps))
    return (round(d / POSITION_TOL_MM),)


def split_volumes(slices: Sequence[SliceHeader]) -> list[tuple[str, list[SliceHeader]]]:
    """Split the slices of one series into volumes.

    Slices first split by geometry (size, orientation, spacing, pixel format). When a group
    holds several slices per position (fMRI time points, echoes, repeated acquisitions), it
    splits by the first of TemporalPositionIdentifier / TemporalPositionIndex, EchoNumbers,
    AcquisitionNumber, TriggerTime that gives every part one slice per position; failing
    that, by the rank of InstanceNumber at each position when every position has the same
    count. Otherwise the group stays whole (and loading it reports the duplicates). Slices
    that all lie at one position split into one-slice volumes only by time point, echo or
    trigger time, never by acquisition number or instance rank (that is a broken export).

    Returns:
        ``(part_label, slices)`` pairs; ``part_label`` is ``""`` when nothing was split.
    """
    by_geometry: dict[tuple[Any, ...], list[SliceHeader]] = defaultdict(list)
    for s in slices:
        if s.position_lps is None and s.frame is None:
            # images without geometry never stack: one volume each
            key = s.geometry_key + (s.path,)  # noqa: RUF005 (star-unpack in [] needs 3.11)
            by_geometry[key].append(s)
        else:
            by_geometry[s.geometry_key].append(s)
    parts: list[tuple[str, list[SliceHeader]]] = []
    geo_groups = list(by_geometry.values())
    for g_index, group in enumerate(geo_groups):
        prefix = f"g{g_index + 1}" if len(geo_groups) > 1 else ""
        for label, volume in _split_by_time(group):
            parts.append(("_".join(p for p in (prefix, label) if p), volume))
    return parts


def _split_by_time(group: list[SliceHeader]) -> list[tuple[str, list[SliceHeader]]]:
    positions: dict[Any, list[SliceHeader]] = defaultdict(list)
    for s in group:
        positions[_position_key(s)].append(s)
    if None in positions or max(len(v) for v in positions.values()) == 1:
        return [("", group)]
    n_positions = len(positions)
    # Volumes of one slice each are real only for time points or echoes that say so; all
    # slices at one position without such a key is a broken export, not N scans.
    single_ok = {
        "TemporalPositionIdentifier",
        "TemporalPositionIndex",
        "EchoNumbers",
        "TriggerTime",
    }
    for key in (
        "TemporalPositionIdentifier",
        "TemporalPositionIndex",
        "EchoNumbers",
        "AcquisitionNumber",
        "TriggerTime",
        "StackID",
    ):
        values = [s.split_keys.get(key) for s in group]
        if n_positions == 1 and key not in single_ok:
            continue
        if any(v is None or v == "" for v in values):
            continue
        buckets: dict[Any, list[SliceHeader]] = defaultdict(list)
        for s, v in zip(group, values, strict=True):
            buckets[v].append(s)
        if len(buckets) > 1 and all(
            len(b) == n_positions and len({_position_key(s) for s in b}) == n_positions
            for b in buckets.values()
        ):
            ordered = sorted(buckets.items(), key=lambda kv: _sortable(kv[0]))
            return [(f"{_short(key)}{i + 1}", b) for i, (_, b) in enumerate(ordered)]
    counts = Counter(len(v) for v in positions.values())
    if len(counts) == 1 and n_positions > 1:
        n_time = next(iter(counts))
        volumes: list[list[SliceHeader]] = [[] for _ in range(n_time)]
        for members in positions.values():
            ranked = sorted(
                members,
                key=lambda s: (
                    s.instance_number if s.instance_number is not None else 0,
                    s.split_keys.get("AcquisitionTime") or "",
                    s.path,
                    s.frame or 0,
                ),
            )
            for t, s in enumerate(ranked):
                volumes[t].append(s)
        return [(f"t{t + 1}", v) for t, v in enumerate(volumes)]
    return [("", group)]


def _short(key: str) -> str:
    return {
        "TemporalPositionIdentifier": "t",
        "TemporalPositionIndex": "t",
        "EchoNumbers": "echo",
        "AcquisitionNumber": "acq",
        "TriggerTime": "trig",
        "StackID": "stack",
    }[key]


def _sortable(value: Any) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
