"""The :class:`Grid` type: where the voxels of an image lie in the patient, and nothing else.

A grid is a spatial shape plus the affine that places it in world space, the geometry a
:class:`~medres.io.volume.Volume` carries without its pixels. Every stage asks a grid, not
an affine, for the geometry it needs: voxel size, voxel volume, voxel <-> world mapping,
whether two images share one grid, and the single-slice rule.

Conventions (those of :mod:`medres.io.volume`):

* ``shape`` is the spatial shape ``(x, y[, z])`` without a channel axis, in the index order
  of NIfTI, nibabel and MONAI (``x`` runs along a DICOM row, ``y`` down the columns, ``z``
  across slices).
* ``affine`` is a 4x4 float64 matrix mapping the voxel index ``(i, j, k, 1)`` to **RAS+**
  world millimetres (x to the patient's Right, y Anterior, z Superior). A voxel index
  addresses the voxel's *centre*; the voxel ``(i, j, k)`` spans ``i - 0.5 .. i + 0.5``
  along each axis.
* A 2D grid keeps a 4x4 affine: its first two columns are the pixel steps in the image
  plane, the third column (a step out of the plane) plays no part in the grid's geometry
  (pixel area, voxel <-> world, :meth:`Grid.same_grid`).

Example:
    >>> import numpy as np
    >>> grid = Grid((17, 15, 9), np.diag([2.5, 0.8, 0.8, 1.0]))
    >>> grid.spacing_mm, round(grid.voxel_volume_mm3, 3)
    ((2.5, 0.8, 0.8), 1.6)
    >>> grid.voxel_to_world([[1, 2, 3]]).tolist()
    [[2.5, 1.6, 2.4000000000000004]]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from medres.types import AffineRAS, Points

if TYPE_CHECKING:
    from medres.io.volume import Volume

#: The one tolerance of :meth:`Grid.same_grid`, in mm: the largest distance between
#: matching voxel corners of two grids that still count as one grid.
#:
#: Why 0.01 mm: it sits well above the noise of how affines are stored and well below any
#: real misregistration. A NIfTI header keeps its affine in float32 (relative error 6e-8:
#: at most about 1e-4 mm anywhere in a 500 mm field of view); DICOM writes positions and
#: directions as decimal strings of at most 16 characters; ``lesions.json`` rounds its
#: affine to 6 decimals, which on a 512x512x300 grid moves its far corner by up to about
#: 1.1e-3 mm (so the former per-element 1e-3 mm affine checks, measured at the corners,
#: would be too tight for it). A hundredth of a millimetre is 1/100 of a 1 mm voxel and
#: 1/10 of the finest voxel medres meets (0.1 mm), far below the 0.5 mm and larger shifts
#: the loaders must refuse.
GRID_TOLERANCE_MM = 0.01

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def voxel_to_world(affine: AffineRAS, ijk: npt.ArrayLike) -> Points:
    """Map voxel indices ``(..., 3)`` to RAS+ millimetres ``(..., 3)``.

    Args:
        affine: 4x4 voxel index ``(i, j, k)`` -> RAS+ mm matrix.
        ijk: Voxel indices (fractional allowed), one point ``(3,)`` or many ``(N, 3)``.

    Returns:
        RAS+ coordinates in mm, the same leading shape as ``ijk``.

    Example:
        >>> voxel_to_world(np.diag([2.0, 2.0, 2.0, 1.0]), [1, 2, 3]).tolist()
        [2.0, 4.0, 6.0]
    """
    a = np.asarray(affine, dtype=np.float64)
    return _apply(a[:3, :3], a[:3, 3], ijk)


def world_to_voxel(affine: AffineRAS, xyz_ras_mm: npt.ArrayLike) -> Points:
    """Map RAS+ millimetres ``(..., 3)`` to (fractional) voxel indices ``(..., 3)``.

    Args:
        affine: 4x4 voxel index ``(i, j, k)`` -> RAS+ mm matrix (invertible).
        xyz_ras_mm: World points in RAS+ mm, one ``(3,)`` or many ``(N, 3)``.

    Returns:
        Voxel indices ``(i, j, k)``, the same leading shape as ``xyz_ras_mm``.

    Example:
        >>> world_to_voxel(np.diag([2.0, 2.0, 2.0, 1.0]), [2.0, 4.0, 6.0]).tolist()
        [1.0, 2.0, 3.0]
    """
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return _apply(inverse[:3, :3], inverse[:3, 3], xyz_ras_mm)


def _apply(
    matrix: npt.NDArray[np.float64], offset: npt.NDArray[np.float64], points: npt.ArrayLike
) -> Points:
    """``matrix @ p + offset`` for every point ``p`` along the last axis of ``points``."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 0 or pts.shape[-1] != matrix.shape[1]:
        raise ValueError(
            f"points must have {matrix.shape[1]} coordinates along their last axis; "
            f"got shape {pts.shape}"
        )
    out: Points = pts @ matrix.T + offset
    return out


def is_single_slice(shape: Sequence[int]) -> bool:
    """The single-slice rule: a 3D spatial shape ``(x, y, 1)`` is really a 2D image.

    One DICOM image, or a NIfTI file holding one slice, loads as a 3D grid with one slice;
    2D pipelines, evaluation and reports treat it as the 2D image ``(x, y)``.

    Example:
        >>> is_single_slice((17, 15, 1)), is_single_slice((17, 15, 9)), is_single_slice((17, 1))
        (True, False, False)
    """
    return len(shape) == 3 and int(shape[2]) == 1


def squeeze_single_slice_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``(x, y)`` for a single-slice spatial shape ``(x, y, 1)``; any other shape unchanged.

    Example:
        >>> squeeze_single_slice_shape((17, 15, 1)), squeeze_single_slice_shape((17, 15, 9))
        ((17, 15), (17, 15, 9))
    """
    dims = tuple(int(s) for s in shape)
    return dims[:2] if is_single_slice(dims) else dims


def squeeze_single_slice_array(array: npt.NDArray[_ScalarT]) -> npt.NDArray[_ScalarT]:
    """A *spatial* array ``(x, y, 1)`` (no channel axis) as ``(x, y)``; others unchanged.

    The array operation matching :meth:`Grid.squeeze_single_slice` (a view, no copy). For a
    channel-first image ``(C, x, y, 1)`` use :func:`squeeze_single_slice_volume`.

    Example:
        >>> squeeze_single_slice_array(np.zeros((17, 15, 1))).shape
        (17, 15)
    """
    if is_single_slice(array.shape):
        return array[..., 0]
    return array


def squeeze_single_slice_volume(volume: Volume) -> Volume:
    """A single-slice volume ``(C, x, y, 1)`` as the 2D image ``(C, x, y)``; others unchanged.

    Same pixels (a view) and the same 4x4 affine (whose third column is then the step out
    of the image plane, as for any 2D volume); provenance and warnings are kept.

    Example:
        >>> from medres.io.volume import Volume
        >>> v = Volume(np.zeros((1, 17, 15, 1), np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
        >>> squeeze_single_slice_volume(v).spatial_shape
        (17, 15)
    """
    if is_single_slice(volume.spatial_shape):
        return dataclasses.replace(volume, array=volume.array[..., 0])
    return volume


@dataclass(frozen=True, eq=False)
class Grid:
    """A spatial shape placed in RAS+ world space by a voxel -> world affine.

    Attributes:
        shape: Spatial shape ``(x, y)`` or ``(x, y, z)``, positive ints (no channel axis).
        affine: 4x4 float64 voxel index ``(i, j, k)`` -> RAS+ mm matrix (read-only copy);
            indices address voxel centres. A 2D grid uses its first two columns only.

    Raises:
        ValueError: ``shape`` is not 2 or 3 positive sizes; ``affine`` is not a finite 4x4
            matrix with last row ``(0, 0, 0, 1)``; or its voxel axes are degenerate (zero
            voxel volume in 3D, zero pixel area in 2D).

    Grids compare with :meth:`same_grid` (within :data:`GRID_TOLERANCE_MM`), not ``==``.

    Example:
        >>> sheared = np.array([[0.8, 0, 0, 0], [0, 0.8, 0.5, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]])
        >>> grid = Grid((17, 15, 9), sheared)  # gantry tilt: slices step along y and z
        >>> round(grid.voxel_volume_mm3, 4), round(float(np.prod(grid.spacing_mm)), 4)
        (1.6, 1.6317)
    """

    shape: tuple[int, ...]
    affine: AffineRAS

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if len(shape) not in (2, 3) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape
        ):
            raise ValueError(
                f"Grid.shape must be 2 or 3 positive integer sizes (x, y[, z]); got {self.shape!r}"
            )
        affine = np.array(self.affine, dtype=np.float64)  # a copy the caller cannot change
        if affine.shape != (4, 4):
            raise ValueError(f"Grid.affine must be 4x4 (voxel -> RAS mm); got {affine.shape}")
        if not np.all(np.isfinite(affine)):
            raise ValueError(f"Grid.affine holds non-finite values: {affine.tolist()}")
        if not np.array_equal(affine[3], [0.0, 0.0, 0.0, 1.0]):
            raise ValueError(f"Grid.affine's last row must be (0, 0, 0, 1); got {affine[3]}")
        affine.setflags(write=False)
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "affine", affine)
        measure = self.voxel_volume_mm3 if self.ndim == 3 else self.pixel_area_mm2
        if not measure > 0.0:
            what = "voxel volume" if self.ndim == 3 else "pixel area"
            raise ValueError(
                f"Grid.affine's voxel axes are degenerate ({what} 0): {affine[:3, :3].tolist()}"
            )

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        """The grid of a :class:`~medres.io.volume.Volume`: its spatial shape and affine.

        Example:
            >>> from medres.io.volume import Volume
            >>> v = Volume(np.zeros((2, 17, 15, 9), np.float32), np.diag([2.5, 0.8, 0.8, 1.0]))
            >>> Grid.of(v).shape
            (17, 15, 9)
        """
        return cls(volume.spatial_shape, volume.affine)

    @property
    def ndim(self) -> int:
        """2 for images, 3 for volumes."""
        return len(self.shape)

    @property
    def spacing_mm(self) -> tuple[float, ...]:
        """Voxel step along each index axis ``(x, y[, z])`` in mm: norms of the affine columns.

        On a sheared (gantry tilt) grid the slice step is longer than the slice spacing; use
        :attr:`voxel_volume_mm3` for volumes, never the product of these.
        """
        norms = np.linalg.norm(self.affine[:3, : self.ndim], axis=0)
        return tuple(float(s) for s in norms)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel of a 3D grid in mm^3: ``|det|`` of the affine's 3x3.

        Right for any grid, sheared (gantry tilt) or oblique ones included; the product of
        :attr:`spacing_mm` overstates it when the axes are not orthogonal.

        Raises:
            ValueError: On a 2D grid (use :attr:`pixel_area_mm2`).
        """
        if self.ndim != 3:
            raise ValueError(f"a 2D grid {self.shape} has no voxel volume; use pixel_area_mm2")
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def pixel_area_mm2(self) -> float:
        """Area of one pixel of a 2D grid in mm^2: ``|c0 x c1|`` of the affine's first columns.

        This is ``|det|`` of the in-plane 2x2 (the Gram determinant of the two pixel steps),
        whatever the plane's orientation in world space and right for sheared pixels too.

        Raises:
            ValueError: On a 3D grid (use :attr:`voxel_volume_mm3`).
        """
        if self.ndim != 2:
            raise ValueError(f"a 3D grid {self.shape} has voxels, not pixels; use voxel_volume_mm3")
        columns = self.affine[:3, :2]
        return float(np.linalg.norm(np.cross(columns[:, 0], columns[:, 1])))

    @property
    def voxel_measure(self) -> float:
        """Size of one voxel in the grid's own dimensions: mm^3 in 3D, mm^2 in 2D.

        :attr:`voxel_volume_mm3` for a 3D grid, :attr:`pixel_area_mm2` for a 2D one: the
        unit that lesion sizes (ml in 3D, mm^2 in 2D) and size thresholds are built on.
        """
        return self.voxel_volume_mm3 if self.ndim == 3 else self.pixel_area_mm2

    def squeeze_single_slice(self) -> Grid:
        """This grid as 2D when it is a single-slice 3D grid ``(x, y, 1)``, else itself.

        The single-slice rule (:func:`is_single_slice`); the affine is kept, its third
        column becoming the 2D grid's step out of the plane. The matching array operations
        are :func:`squeeze_single_slice_array` and :func:`squeeze_single_slice_volume`.

        Example:
            >>> Grid((17, 15, 1), np.diag([0.8, 0.8, 2.5, 1.0])).squeeze_single_slice().shape
            (17, 15)
        """
        if is_single_slice(self.shape):
            return Grid(self.shape[:2], self.affine)
        return self

    def voxel_to_world(self, ijk: npt.ArrayLike) -> Points:
        """Map voxel indices to RAS+ mm.

        Args:
            ijk: ``(..., ndim)`` voxel indices ``(i, j[, k])``, fractional allowed (index
                ``n`` is the centre of voxel ``n``).

        Returns:
            ``(..., 3)`` RAS+ millimetres. A 2D grid maps ``(i, j)`` into its image plane.
        """
        return _apply(self.affine[:3, : self.ndim], self.affine[:3, 3], ijk)

    def world_to_voxel(self, xyz_ras_mm: npt.ArrayLike) -> Points:
        """Map RAS+ mm to fractional voxel indices.

        Args:
            xyz_ras_mm: ``(..., 3)`` RAS+ millimetres.

        Returns:
            ``(..., ndim)`` voxel indices ``(i, j[, k])``. On a 2D grid, points off the
            image plane are first projected orthogonally onto it.
        """
        if self.ndim == 3:
            return world_to_voxel(self.affine, xyz_ras_mm)
        columns = self.affine[:3, :2]
        inverse = np.asarray(np.linalg.pinv(columns), dtype=np.float64)  # (2, 3): in-plane
        return _apply(inverse, -inverse @ self.affine[:3, 3], xyz_ras_mm)

    def corners_ijk(self) -> Points:
        """The ``2**ndim`` outer corners of the grid as voxel indices ``(..., ndim)``.

        Each axis contributes ``-0.5`` and ``n - 0.5``: the far sides of the first and last
        voxels. Every voxel corner of the grid lies in the box they span.
        """
        sides = [(-0.5, n - 0.5) for n in self.shape]
        return np.array(list(itertools.product(*sides)), dtype=np.float64)

    def corner_distance_mm(self, other: Grid) -> float:
        """Largest distance in mm between matching voxel corners of this grid and ``other``.

        Both grids are read over this grid's index range. As the affines are linear, the
        largest distance over every voxel corner is reached at an outer corner
        (:meth:`corners_ijk`), so those are the points compared.

        Raises:
            ValueError: The grids have different numbers of axes.
        """
        if other.ndim != self.ndim:
            raise ValueError(f"a {self.ndim}D grid cannot be compared with a {other.ndim}D one")
        corners = self.corners_ijk()
        offsets = self.voxel_to_world(corners) - other.voxel_to_world(corners)
        return float(np.linalg.norm(offsets, axis=1).max())

    def same_grid(self, other: Grid, *, tol_mm: float = GRID_TOLERANCE_MM) -> bool:
        """Whether ``other`` is this grid: same shape, every voxel corner within ``tol_mm``.

        Args:
            other: The grid to compare with (e.g. a mask's against its image's).
            tol_mm: Largest corner distance in mm; keep the default
                :data:`GRID_TOLERANCE_MM`, the one tolerance of medres.

        Example:
            >>> a = Grid((17, 15, 9), np.diag([2.5, 0.8, 0.8, 1.0]))
            >>> shifted = a.affine.copy(); shifted[0, 3] += 0.5
            >>> a.same_grid(a), a.same_grid(Grid(a.shape, shifted))
            (True, False)
        """
        if other.shape != self.shape:
            return False
        return self.corner_distance_mm(other) <= tol_mm


def boxes_between_grids(
    boxes: npt.NDArray[np.floating],
    source_affine: npt.NDArray[np.floating],
    target_affine: npt.NDArray[np.floating],
    *,
    target_shape: Sequence[int] | None = None,
) -> npt.NDArray[np.float64]:
    """Voxel-corner boxes of one grid as voxel-corner boxes of another grid.

    Each box's corners go through ``inv(target) @ source``; the result is the smallest box
    of the target grid holding them (exact when the two grids' axes are parallel, as
    between a scan and its reoriented, resampled or cropped model grid). With
    ``target_shape`` the boxes are clipped to the target grid.

    Args:
        boxes: ``(N, 2 * dims)`` boxes on the source grid.
        source_affine: 4x4 voxel-to-RAS affine of the source grid.
        target_affine: 4x4 voxel-to-RAS affine of the target grid.
        target_shape: Spatial shape of the target grid (to clip to).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    dims = boxes.shape[1] // 2 if boxes.ndim == 2 and boxes.size else len(target_shape or ())
    if boxes.size == 0:
        return np.zeros((0, 2 * dims))
    mapping = np.linalg.inv(np.asarray(target_affine, np.float64)) @ np.asarray(
        source_affine, np.float64
    )
    out = np.empty_like(boxes)
    for n, box in enumerate(boxes):
        low, high = box[:dims] - 0.5, box[dims:] - 0.5
        corners = np.array(np.meshgrid(*zip(low, high, strict=True), indexing="ij"))
        ijk = np.zeros((3, 2**dims))
        ijk[:dims] = corners.reshape(dims, -1)
        mapped = mapping[:3, :3] @ ijk + mapping[:3, 3:4]
        out[n, :dims] = mapped[:dims].min(axis=1) + 0.5
        out[n, dims:] = mapped[:dims].max(axis=1) + 0.5
    if target_shape is not None:
        limit = np.asarray(list(target_shape)[:dims] * 2, dtype=np.float64)
        out = np.clip(out, 0.0, limit)
    return out


def affine_2d_as_4x4(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Embed a 2D (3x3) affine into 4x4 with a unit, untouched third axis."""
    out = np.eye(4)
    out[:2, :2] = affine[:2, :2]
    out[:2, 3] = affine[:2, 2]
    return out


__all__ = [
    "GRID_TOLERANCE_MM",
    "Grid",
    "affine_2d_as_4x4",
    "boxes_between_grids",
    "is_single_slice",
    "squeeze_single_slice_array",
    "squeeze_single_slice_shape",
    "squeeze_single_slice_volume",
    "voxel_to_world",
    "world_to_voxel",
]
