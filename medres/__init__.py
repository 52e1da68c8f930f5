"""medres: a workbench for medical image lesion analysis.

Importing ``medres`` is cheap (no torch, no MONAI); the heavy stages import what they
need when used.

Example:
    >>> import medres
    >>> isinstance(medres.__version__, str)
    True
"""

import logging

from medres._version import __version__
from medres.errors import MedresError

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["MedresError", "__version__"]
