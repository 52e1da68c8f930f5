"""The medres error hierarchy: one root, one subclass per stage, precise leaves.

Every message says *what* went wrong, *where* (file, series, slices) and, when there is
one, *what to do*. The command line maps :class:`MedresError` to a one-line message and a
non-zero exit code; it never shows a traceback for these.

Example:
    >>> from medres.errors import MedresError, SliceGapError
    >>> issubclass(SliceGapError, MedresError)
    True
"""

from __future__ import annotations


class MedresError(Exception):
    """Root of every error medres raises on purpose."""


# --- loading (medres.io) -------------------------------------------------------------


class LoadError(MedresError):
    """A scan could not be discovered, read or turned into a :class:`~medres.io.Volume`."""


class NotDicomError(LoadError):
    """The file is not a DICOM file (no preamble, no readable data set)."""


class CorruptFileError(LoadError):
    """The file is truncated or its bytes do not decode as the format it claims."""


class UnsupportedDicomError(LoadError):
    """A valid DICOM object that is not an image medres can load (SR, RTSTRUCT, mosaic...)."""


class PixelDecodeError(LoadError):
    """The pixel data could not be decoded (missing codec, broken compressed stream)."""


class SeriesError(LoadError):
    """The slices of a DICOM series do not form one regular volume."""


class MixedSeriesError(SeriesError):
    """Slices differ in orientation, size, spacing or pixel format."""


class DuplicateSlicesError(SeriesError):
    """Several slices share one position and cannot be split into volumes."""


class SliceGapError(SeriesError):
    """Slices are missing, or the spacing between slices is irregular."""


class NiftiError(LoadError):
    """A NIfTI file could not be read or written."""


class ImageReadError(LoadError):
    """A 2D image (PNG, TIFF, BMP, JPEG) or its mask could not be read."""


class MaskMismatchError(LoadError):
    """A mask does not match its image (shape or geometry)."""


# --- configuration, data sets, training ------------------------------------


class ConfigError(MedresError):
    """A pipeline config (YAML) is missing, malformed, or has unknown keys or bad values."""


class DatasetError(MedresError):
    """A training data set is empty, incomplete or inconsistent with its pipeline."""


class ModelError(MedresError):
    """A model folder is missing files, fails its checksums, or does not fit its config."""


class TrainingError(MedresError):
    """Training could not start or continue (device, resume state, budget)."""


class EvaluationError(MedresError):
    """Predictions and ground truth cannot be compared (missing truth, other grid, labels)."""


# --- writing outputs ---------------------------------------------------------------


class ClusterError(MedresError):
    """A Dask cluster could not be started, reached or used (workers, shared files)."""


class OutputError(MedresError):
    """An output file could not be written."""


__all__ = [
    "ClusterError",
    "ConfigError",
    "CorruptFileError",
    "DatasetError",
    "DuplicateSlicesError",
    "EvaluationError",
    "ImageReadError",
    "LoadError",
    "MaskMismatchError",
    "MedresError",
    "MixedSeriesError",
    "ModelError",
    "NiftiError",
    "NotDicomError",
    "OutputError",
    "PixelDecodeError",
    "SeriesError",
    "SliceGapError",
    "TrainingError",
    "UnsupportedDicomError",
]
