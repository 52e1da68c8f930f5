"""HTML -> PDF with WeasyPrint, its warnings stopped where medres calls it.

WeasyPrint warns about the system libraries it finds: without Debian's
``libharfbuzz-subset0`` it raises a ``DeprecationWarning`` when imported and logs a warning
for every font of every PDF ("Using fontTools instead of HarfBuzz-Subset..."). Neither
changes the PDF. Here they are caught around the call (never with a global filter), so a
test run with ``-W error`` still writes the report, and each distinct message reaches the
medres log once per process, with what to install.

Example:
    >>> pdf = render_pdf("<p>hello</p>", base_url=".")  # doctest: +SKIP
    >>> pdf[:4]  # doctest: +SKIP
    b'%PDF'
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from medres.errors import OutputError

logger = logging.getLogger(__name__)

#: Loggers of the PDF stack whose records are collected during a call.
THIRD_PARTY_LOGGERS = ("weasyprint", "fontTools")
#: What to tell the user when WeasyPrint asks for HarfBuzz-Subset.
HARFBUZZ_HINT = (
    "install the system library (Debian/Ubuntu: apt-get install libharfbuzz-subset0); "
    "`medres doctor` lists every missing package"
)

_seen: set[str] = set()


class _Collect(logging.Handler):
    """Keeps the records of a third-party logger instead of letting them propagate."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # a malformed record must not break the PDF
            self.messages.append(str(record.msg))


def _note_once(message: str) -> None:
    """Log a third-party message once per process; the HarfBuzz notes are one message."""
    if "HarfBuzz" in message:
        key = "harfbuzz"
        text = (
            "WeasyPrint found no HarfBuzz-Subset library and subsets the PDF fonts with "
            f"fontTools instead (the PDFs are complete); to silence this, {HARFBUZZ_HINT}"
        )
    else:
        key = message.split('"')[0]
        text = f"PDF library: {message.strip()}"
    if key in _seen:
        return
    _seen.add(key)
    logger.warning("%s", text)


@contextmanager
def third_party_quiet(logger_names: tuple[str, ...] = THIRD_PARTY_LOGGERS) -> Iterator[None]:
    """Collect warnings and warning log records of the PDF stack; re-log each once.

    The records do not propagate to the root logger during the call (so no console
    noise), and warnings raised inside are never turned into errors by a ``-W error``
    filter outside.
    """
    handler = _Collect()
    saved: list[tuple[logging.Logger, bool]] = []
    for name in logger_names:
        lib_logger = logging.getLogger(name)
        saved.append((lib_logger, lib_logger.propagate))
        lib_logger.addHandler(handler)
        lib_logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for lib_logger, propagate in saved:
            lib_logger.removeHandler(handler)
            lib_logger.propagate = propagate
    for item in caught:
        _note_once(f"{item.category.__name__}: {item.message}")
    for message in handler.messages:
        _note_once(message)


def render_pdf(page: str, *, base_url: str) -> bytes:
    """Lay out an HTML page as PDF bytes.

    Args:
        page: The HTML text.
        base_url: Folder that relative links (images) resolve against.

    Returns:
        The PDF file's bytes.

    Raises:
        OutputError: WeasyPrint or its system libraries (Pango) are missing or failed.
    """
    with third_party_quiet():
        try:
            import weasyprint
        except (ImportError, OSError) as exc:
            raise OutputError(
                f"report.pdf needs WeasyPrint and Pango ({exc}); install the system packages "
                "listed by `medres doctor`, or pass --no-pdf"
            ) from None
        document: bytes = weasyprint.HTML(string=page, base_url=base_url).write_pdf()
    return document


__all__ = ["HARFBUZZ_HINT", "render_pdf", "third_party_quiet"]
