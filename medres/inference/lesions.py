"""Lesion instances: connected components of a label map, with measurements and confidence.

Every lesion gets its size in physical units (ml for 3D, mm^2 for 2D), its centre in
voxel indices and in RAS millimetres, its bounding box, its longest axial diameter (the
RECIST-style measure), the mean and maximum ensemble probability over its voxels (the
detection score), how many ensemble members found it, and an uncertainty from the
members' disagreement.

Conventions: arrays are indexed ``(x, y[, z])``; ``affine`` maps voxel indices to RAS mm.
"Axial" means the plane of the two voxel axes least aligned with the patient's
superior-inferior direction (for an axial acquisition, one slice). Diameters are measured
between voxel centres plus one voxel (the extent of the edge voxels), in mm.

Example:
    >>> import numpy as np
    >>> label_map = np.zeros((20, 20, 5), np.uint8); label_map[5:10, 5:10, 1:4] = 1
    >>> [round(x.volume_ml, 3) for x in find_lesions(label_map, affine=np.eye(4))]
    [0.075]
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from medres.inference.postprocess import label_components, occupied_box
from medres.io.grid import Grid
from medres.predictions.records import Lesion


def slice_axis(affine: npt.NDArray[np.float64], ndim: int) -> int | None:
    """The voxel axis most aligned with superior-inferior (None for 2D maps)."""
    if ndim != 3:
        return None
    directions = np.abs(np.asarray(affine, dtype=np.float64)[2, :3])
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return int(np.argmax(directions / np.where(norms > 0, norms, 1.0)))


def _in_plane_diameter(ij: npt.NDArray[np.int64], columns: npt.NDArray[np.float64]) -> float:
    """Longest extent of in-plane voxel indices ``ij`` (N, 2) in mm.

    Centre-to-centre distance plus one voxel along that direction.
    """
    if len(ij) > 64:
        # the farthest pair lies on the convex hull, whose corners are among each row's
        # first and last voxel (an affine map keeps that): the same result, fewer points
        rows = ij[np.lexsort((ij[:, 1], ij[:, 0]))]
        starts = np.r_[True, rows[1:, 0] != rows[:-1, 0]]
        ends = np.r_[rows[1:, 0] != rows[:-1, 0], True]
        ij = rows[starts | ends]
    mm = ij.astype(np.float64) @ columns.T  # (N, 3) world offsets
    # express in an orthonormal basis of the plane to get 2D points
    basis, _ = np.linalg.qr(columns)  # (3, 2) orthonormal basis of the plane
    planar = mm @ basis
    if len(planar) > 400:
        from scipy.spatial import ConvexHull, QhullError

        with contextlib.suppress(QhullError):  # collinear points: keep them all
            planar = planar[ConvexHull(planar).vertices]
    if len(planar) < 2:
        return float(np.mean(np.linalg.norm(columns, axis=0)))
    diff = planar[:, None, :] - planar[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    a, b = np.unravel_index(int(np.argmax(dist)), dist.shape)
    direction = planar[a] - planar[b]
    direction /= np.linalg.norm(direction)
    # add one voxel along that direction (its longest edge projection). This estimates the
    # diameter of the smooth lesion the voxels sample; the outer extent of the voxel squares
    # (both projections summed) would overstate a digitised round lesion by up to 0.4 voxel
    # along diagonals (tests: spheres and discs within one voxel of their true diameter).
    voxel_axes = np.abs(columns.T @ basis)  # (2, 2): each voxel axis in plane coordinates
    extent = float(np.abs(voxel_axes @ direction).max())
    return float(dist[a, b]) + extent


class _VoxelMaps(NamedTuple):
    """Per-voxel maps measured over each lesion, cropped to the label's box (or None)."""

    probabilities: npt.NDArray[np.floating[Any]] | None
    member_hits: npt.NDArray[np.unsignedinteger[Any]] | None
    uncertainty: npt.NDArray[np.floating[Any]] | None


def _longest_axial_diameter(
    ijk: npt.NDArray[np.int64], columns: npt.NDArray[np.float64], axis: int | None
) -> tuple[float, int | None]:
    """``(diameter mm, slice index)`` of a lesion's voxel indices ``ijk`` (N, ndim).

    In 2D (``axis`` None) the whole lesion is one plane; in 3D, the longest in-plane extent
    over the lesion's slices along ``axis`` and the slice where it lies.
    """
    if axis is None:
        return _in_plane_diameter(ijk, columns), None
    plane_axes = [a for a in range(3) if a != axis]
    diameter, best_slice = 0.0, None
    for k in np.unique(ijk[:, axis]):
        in_slice = ijk[ijk[:, axis] == k][:, plane_axes]
        d = _in_plane_diameter(in_slice, columns[:, plane_axes])
        if d > diameter:
            diameter, best_slice = d, int(k)
    return diameter, best_slice


def _confidence(
    maps: _VoxelMaps,
    box: tuple[slice, ...],
    local: npt.NDArray[np.bool_],
    n_members: int | None,
) -> tuple[float | None, float | None, int | None, float | None]:
    """``(mean probability, max probability, members detecting, uncertainty)`` of the
    lesion ``local`` in ``box`` (None for each map not given).

    Raises:
        ValueError: ``member_hits`` without ``n_members``.
    """
    mean_p = max_p = spread = None
    detecting = None
    if maps.probabilities is not None:
        values = np.asarray(maps.probabilities)[box][local].astype(np.float64)
        mean_p, max_p = round(float(values.mean()), 4), round(float(values.max()), 4)
    if maps.member_hits is not None:
        if n_members is None:
            raise ValueError("n_members is needed with member_hits")
        union = np.bitwise_or.reduce(np.asarray(maps.member_hits)[box][local].ravel())
        detecting = int(bin(int(union)).count("1"))
    if maps.uncertainty is not None:
        spread = round(float(np.asarray(maps.uncertainty)[box][local].astype(np.float64).mean()), 4)
    return mean_p, max_p, detecting, spread


def _measure_lesion(
    grid: Grid,
    components: npt.NDArray[np.integer],
    component: int,
    box: tuple[slice, ...],
    origin: npt.NDArray[np.intp],
    *,
    lesion_id: int,
    label_name: str,
    voxel_count: int,
    maps: _VoxelMaps,
    n_members: int | None,
) -> Lesion:
    """One component (``component`` inside ``box`` of the cropped ``components``, whose
    corner is voxel ``origin`` of the grid) measured as a :class:`Lesion`."""
    ndim = len(grid.shape)
    affine = grid.affine
    columns = affine[:3, :ndim]
    voxel_size = grid.voxel_measure  # |det A| in 3D (right for sheared grids), pixel area in 2D
    local = components[box] == component
    offset = np.array([s.start for s in box]) + origin
    ijk = np.argwhere(local) + offset
    center = ijk.mean(axis=0)  # exact mean of the voxel indices (``ijk`` is needed below)
    world = grid.voxel_to_world(center)
    diameter, best_slice = _longest_axial_diameter(ijk, columns, slice_axis(affine, ndim))
    mean_p, max_p, detecting, spread = _confidence(maps, box, local, n_members)
    return Lesion(
        lesion_id=lesion_id,
        label=label_name,
        voxel_count=voxel_count,
        volume_ml=round(float(voxel_count * voxel_size / 1000.0), 5) if ndim == 3 else None,
        area_mm2=round(float(voxel_count * voxel_size), 3) if ndim == 2 else None,
        center_ijk=tuple(round(float(c), 3) for c in center),
        center_ras_mm=tuple(round(float(c), 3) for c in world),  # type: ignore[arg-type]
        bbox_ijk=tuple(
            (int(s.start + o), int(s.stop + o) - 1) for s, o in zip(box, origin, strict=True)
        ),
        longest_axial_diameter_mm=round(diameter, 3),
        axial_slice=best_slice,
        mean_probability=mean_p,
        max_probability=max_p,
        members_detecting=detecting,
        n_members=n_members if maps.member_hits is not None else None,
        uncertainty=spread,
    )


def find_lesions(
    label_map: npt.NDArray[np.integer],
    *,
    affine: npt.NDArray[np.float64],
    label_index: int = 1,
    label_name: str = "lesion",
    probabilities: npt.NDArray[np.floating[Any]] | None = None,
    member_hits: npt.NDArray[np.unsignedinteger[Any]] | None = None,
    n_members: int | None = None,
    uncertainty: npt.NDArray[np.floating[Any]] | None = None,
    min_size: float = 0.0,
) -> list[Lesion]:
    """Connected components of ``label_map == label_index`` with their measurements.

    Args:
        label_map: Label map ``(x, y)`` or ``(x, y, z)`` (label indices).
        affine: 4x4 voxel -> RAS mm (2D maps use its first two columns).
        label_index: Which label to split into lesions.
        label_name: Name written into each :class:`Lesion`.
        probabilities: Ensemble probability of ``label_index`` on the same grid.
        member_hits: Bit mask on the same grid: bit ``m`` set where member ``m`` predicts
            ``label_index`` (see :class:`~medres.inference.predictor.EnsemblePrediction`).
        n_members: Members in the ensemble (needed with ``member_hits``).
        uncertainty: Members' standard deviation of the probability, same grid.
        min_size: Components smaller than this (mm^3 in 3D, mm^2 in 2D) are dropped.

    Returns:
        Lesions ordered by decreasing size, ids 1..N. Components are face-connected.
        Sizes use the grid's voxel volume (``|det|`` of the affine, right for sheared
        gantry-tilt grids) or pixel area: :attr:`medres.io.grid.Grid.voxel_measure`.

    Raises:
        ValueError: ``label_map`` is not 2D or 3D, ``affine`` is not a valid grid affine
            (see :class:`~medres.io.grid.Grid`), or ``member_hits`` comes without
            ``n_members``.
    """
    import cc3d

    label_map = np.asarray(label_map)
    if label_map.ndim not in (2, 3):
        raise ValueError(f"label_map must be 2D or 3D, got shape {label_map.shape}")
    grid = Grid(label_map.shape, affine)
    region = occupied_box(label_map == label_index)
    if region is None:
        return []
    # work inside the box holding every voxel of the label (small, even on a large scan)
    origin = np.array([s.start for s in region])
    components, _ = label_components(label_map[region] == label_index)
    maps = _VoxelMaps(
        *(
            None if a is None else np.asarray(a)[region]
            for a in (probabilities, member_hits, uncertainty)
        )
    )
    stats = cc3d.statistics(components)  # voxel counts and boxes, index = component
    sizes = np.asarray(stats["voxel_counts"][1:], dtype=np.int64)
    objects = stats["bounding_boxes"][1:]
    lesions: list[Lesion] = []
    for index in np.argsort(-sizes, kind="stable"):
        if sizes[index] * grid.voxel_measure < min_size:
            continue
        box = objects[index]
        assert box is not None
        lesion = _measure_lesion(
            grid,
            components,
            int(index) + 1,
            box,
            origin,
            lesion_id=len(lesions) + 1,
            label_name=label_name,
            voxel_count=int(sizes[index]),
            maps=maps,
            n_members=n_members,
        )
        lesions.append(lesion)
    return lesions


__all__ = ["Lesion", "find_lesions", "slice_axis"]
