"""Atomic file writing: write to a temporary file beside the target, then rename.

A reader (or a crashed run) never sees a half-written output: either the old file, or the
complete new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from medres.errors import OutputError


def _file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[bytes] | IO[str]]:
    """Open a temporary file for writing that replaces ``path`` only on success.

    Args:
        path: Final destination; its folder is created if missing.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Raises:
        OutputError: The folder cannot be created or the file cannot be renamed into place.

    Example:
        >>> with atomic_write("/tmp/medres_example.txt", "w") as fh:  # doctest: +SKIP
        ...     fh.write("done")
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create output file: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write output file: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)  # type: ignore[arg-type]
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))
