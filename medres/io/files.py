"""Opening files that may be hostile: regular files only, never blocking, bounded reads.

A scan folder or a model folder can hold a FIFO, a link to ``/dev/zero`` or a file that
grows while it is read; opening one of those the ordinary way hangs or exhausts memory.
Every reader in medres opens its input through :func:`open_regular` (non-blocking, checked
with ``fstat`` after opening, so a file swapped for a FIFO is still caught) and reads small
files with :func:`read_regular_bytes` (at most a limit plus one byte).

Example:
    >>> from medres.errors import ConfigError
    >>> text = read_regular_bytes("pyproject.toml", limit=1 << 20, error=ConfigError)
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from medres.errors import MedresError


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: ``"a FIFO (named pipe)"``, ``"a directory"``..."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _not_regular(path: Path, what: str, mode: int) -> str:
    return (
        f"{path}: {what} is {file_kind(mode)}, not a regular file; medres reads only regular "
        "files (point to the file itself, or copy the data into one)"
    )


@contextlib.contextmanager
def open_regular(
    path: str | Path, *, error: type[MedresError], what: str = "file"
) -> Iterator[io.BufferedReader]:
    """Open ``path`` for binary reading only if it is a regular file (links followed).

    Args:
        path: The file.
        error: The :class:`~medres.errors.MedresError` subclass to raise.
        what: What to call the file in messages (``"NIfTI file"``, ``"member weights"``).

    Raises:
        error: Missing, not a regular file (FIFO, device, folder, socket) or unreadable;
            the message starts with the path.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows links; a FIFO or device is never opened
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot open the {what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise error(_not_regular(path, what, mode))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot open the {what}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode  # again: it may have been swapped since
        if not stat.S_ISREG(mode):
            raise error(_not_regular(path, what, mode))
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_regular_bytes(
    path: str | Path, *, limit: int, error: type[MedresError], what: str = "file"
) -> bytes:
    """All bytes of a regular file of at most ``limit`` bytes.

    At most ``limit + 1`` bytes are read, so a file that grows while it is read cannot
    exhaust memory.

    Raises:
        error: See :func:`open_regular`; also a file above ``limit`` bytes.
    """
    with open_regular(path, error=error, what=what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise error(f"{path}: {what} is {size} bytes, above the {limit} byte limit")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{path}: {what} grew above the {limit} byte limit while being read")
    return data


__all__ = ["file_kind", "open_regular", "read_regular_bytes"]
