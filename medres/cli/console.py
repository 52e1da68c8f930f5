"""Console, logging and progress set-up shared by the commands (the only place that prints)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Results go to stdout; logs, progress and errors to stderr.
console = Console()
err_console = Console(stderr=True)

#: Exit codes: 0 all good; 1 some scans or files failed; 2 bad usage or unusable input.
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


def setup_logging(verbosity: int) -> None:
    """Rich logging on stderr: ``-v`` for info, ``-vv`` for debug, default warnings only.

    Library warnings (pydicom complaining about odd files) are logged, at debug level
    unless ``-vv``, so they never interleave with the output tables.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if verbosity >= 2 else logging.ERROR)
    logging.getLogger("pydicom").setLevel(logging.DEBUG if verbosity >= 2 else logging.CRITICAL)


@contextmanager
def progress_bar(*, transient: bool = True) -> Iterator[Progress]:
    """A rich progress display on stderr with count, bar, elapsed and remaining time."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}", style="dim"),
        console=err_console,
        transient=transient,
    )
    with progress:
        yield progress


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn a :class:`~medres.errors.MedresError` into a one-line message and exit code 2.

    Every command body runs inside this, so no medres error reaches the user as a traceback.
    """
    import typer

    from medres.errors import MedresError

    try:
        yield
    except MedresError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
