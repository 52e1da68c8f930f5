"""Load any discovered scan (and its mask) into a :class:`~medres.io.volume.Volume`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from medres.errors import LoadError, MaskMismatchError, PixelDecodeError, UnsupportedDicomError
from medres.io.dicom import load_dicom_series, one_line
from medres.io.discover import ScanRef
from medres.io.grid import GRID_TOLERANCE_MM, Grid
from medres.io.images2d import read_image2d, read_mask2d
from medres.io.nifti import read_nifti
from medres.io.volume import ScanKind, Volume


def load_scan(
    ref: ScanRef,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    pixel_size_mm: tuple[float, float] | None = None,
) -> Volume:
    """Read the pixels of a discovered scan.

    Args:
        ref: From :func:`medres.io.discover.discover`.
        on_progress: ``(slices_done, slices_total)`` callback for DICOM series.
        pixel_size_mm: The pixel size ``(x, y)`` of 2D image files, which carry none; None
            measures them in pixels. DICOM and NIfTI scans keep their own voxel size.

    Returns:
        The scan as a :class:`Volume` on its own grid (RAS affine); its ``warnings`` include
        the ones discovery recorded in ``ref.warnings``.

    Raises:
        LoadError: The problem found at discovery, or a decode error; the message names the
            file or series. For DICOM nothing else escapes: any other exception while
            decoding becomes a :class:`~medres.errors.PixelDecodeError` naming the folder.
    """
    if ref.problem is not None:
        raise ref.problem
    if ref.kind is ScanKind.DICOM:
        try:
            volume = load_dicom_series(
                ref.plan if ref.plan is not None else ref.paths, on_progress=on_progress
            )
        except LoadError:
            raise
        except MemoryError as exc:
            raise UnsupportedDicomError(
                f"{_where(ref)}: not enough memory to load scan {ref.scan_id}"
            ) from exc
        except Exception as exc:
            raise PixelDecodeError(
                f"{_where(ref)}: cannot load scan {ref.scan_id}: {type(exc).__name__}: "
                f"{one_line(str(exc), limit=200)}"
            ) from exc
        extra = tuple(w for w in ref.warnings if w not in volume.warnings)
        return replace(volume, warnings=volume.warnings + extra) if extra else volume
    if ref.kind is ScanKind.NIFTI:
        return read_nifti(ref.paths[0])
    if ref.kind is ScanKind.IMAGE2D:
        return read_image2d(ref.paths[0], spacing_mm=pixel_size_mm)
    raise LoadError(f"{ref.scan_id}: unknown scan kind {ref.kind!r}")


def _where(ref: ScanRef) -> str:
    """The file of a one-file scan, else the folder of its files."""
    if len(ref.paths) == 1:
        return ref.paths[0]
    return str(Path(ref.paths[0]).parent) if ref.paths else ref.scan_id


def load_mask(ref: ScanRef, image: Volume) -> Volume | None:
    """Read the mask paired with ``ref`` (None when it has none) and check it fits ``image``.

    The mask fits when it has the image's shape and every voxel corner lies within
    :data:`~medres.io.grid.GRID_TOLERANCE_MM` of the image's (RAS mm).

    Raises:
        MaskMismatchError: The mask's shape or affine differs from the image's.
        LoadError: The mask file cannot be read.
    """
    if ref.mask_path is None:
        return None
    if ref.kind is ScanKind.IMAGE2D:
        return read_mask2d(ref.mask_path, like=image)
    mask = read_nifti(ref.mask_path)
    if mask.spatial_shape != image.spatial_shape:
        raise MaskMismatchError(
            f"{ref.mask_path}: mask shape {mask.spatial_shape} differs from image shape "
            f"{image.spatial_shape}"
        )
    mask_grid, image_grid = Grid.of(mask), Grid.of(image)
    if not mask_grid.same_grid(image_grid):
        diff = mask_grid.corner_distance_mm(image_grid)
        raise MaskMismatchError(
            f"{ref.mask_path}: mask affine differs from its image's by up to {diff:.4f} mm "
            f"(voxel corners; {GRID_TOLERANCE_MM} mm allowed); the mask is not on the image grid"
        )
    return mask
