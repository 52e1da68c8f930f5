"""Natural order of names: ``slice_2`` before ``slice_10``, as a person reads them.

Every list of scans medres shows or walks (discovery, ``summary.csv``, the index page, the
evaluation tables, the study pages) uses :func:`natural_key`, so a patient's slices
``_1, _2, ..., _10`` never come out as ``_1, _10, _11, ..., _2``.

Example:
    >>> sorted(["s_10", "s_2", "s_1", "S_3"], key=natural_key)
    ['s_1', 's_2', 'S_3', 's_10']
"""

from __future__ import annotations

import re
from pathlib import PurePath

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str | PurePath) -> tuple[tuple[int, int | str], ...]:
    """A sort key comparing runs of digits as numbers and the rest case-insensitively
    (ties broken by the exact text, so the order is total and stable)."""
    parts = _DIGITS.split(str(text))
    key: list[tuple[int, int | str]] = [
        (0, int(part)) if part.isdigit() else (1, part.casefold()) for part in parts if part
    ]
    return (*key, (-1, str(text)))  # a name that ends first sorts first


def natural_path_key(path: str | PurePath) -> tuple[tuple[tuple[int, int | str], ...], ...]:
    """:func:`natural_key` of each folder and file name of ``path`` in turn (a folder's
    files stay together: ``a/x`` before ``a2/x``)."""
    return tuple(natural_key(part) for part in PurePath(path).parts)


def natural_sorted(items: list[str]) -> list[str]:
    """``items`` in natural order."""
    return sorted(items, key=natural_key)


__all__ = ["natural_key", "natural_path_key", "natural_sorted"]
