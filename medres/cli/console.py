"""Console, logging and progress set-up shared by the commands (the only place that prints)."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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


class ConsoleHandler(RichHandler):
    """What of the log reaches the console.

    medres's own records pass at the chosen level. Records of other libraries (pydicom's
    decoders, Pillow, WeasyPrint) are noise to a user: medres reports the failure itself,
    naming the file. They are dropped below ``-vv`` and shown as one line (no traceback)
    with ``-vv``; the full records, tracebacks included, go to ``--log-file``.
    """

    def __init__(self, verbosity: int) -> None:
        super().__init__(console=err_console, show_path=False, rich_tracebacks=False)
        self.verbosity = verbosity

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "medres" or record.name.startswith("medres."):
            super().emit(record)
            return
        if self.verbosity < 2:
            return
        lines = record.getMessage().strip().splitlines()
        one_line = copy.copy(record)  # the record is shared with the log file's handler
        one_line.msg = f"[{record.name}] {lines[0] if lines else ''}"
        one_line.args = None
        one_line.exc_info = None
        one_line.exc_text = None
        one_line.stack_info = None
        super().emit(one_line)


def setup_logging(verbosity: int, *, log_file: str | None = None) -> None:
    """Rich logging on stderr: ``-v`` for info, ``-vv`` for debug, default warnings only.

    Library warnings (pydicom complaining about odd files) never interleave with the
    output tables: see :class:`ConsoleFilter`. With ``log_file`` every record of every
    library, at debug level and with tracebacks, is appended to that file too.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = ConsoleHandler(verbosity)
    handler.setLevel(level)
    handlers: list[logging.Handler] = [handler]
    if log_file:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        handlers.append(file_handler)
    logging.basicConfig(
        level=logging.DEBUG if log_file else level,
        format="%(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)


#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_PROGRESS_INTERVAL_S = 10.0


@dataclass
class _PlainTask:
    description: str
    total: float | None
    completed: float = 0.0
    item: str = ""
    started: float = field(default_factory=time.monotonic)
    last_line: float | None = None
    last_text: str = ""


class PlainProgress:
    """Progress as plain lines for logs and batch queues (stderr not a terminal).

    The same calls as rich's :class:`~rich.progress.Progress` that the commands use
    (``add_task``, ``update``, ``advance``). A line such as
    ``scans 12/40 (30 %) CT_0012 window, 1m05s elapsed, eta 2m31s`` is written when a
    task starts, at most every ``interval_s`` seconds while it runs, and when it ends.
    """

    def __init__(self, *, interval_s: float = PLAIN_PROGRESS_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.tasks: list[_PlainTask] = []

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        self.tasks.append(_PlainTask(description, total, item=str(fields.get("item", ""))))
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, completed=self.tasks[task_id].completed + advance)

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        **fields: Any,
    ) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if "item" in fields:
            task.item = str(fields["item"])
        now = time.monotonic()
        finished = task.total is not None and task.completed >= task.total
        due = task.last_line is None or now - task.last_line >= self.interval_s
        if (due or finished) and task.total is not None:
            text = self._line(task, now, finished)
            if finished and task.last_text.startswith(f"{task.description} done"):
                return
            task.last_line, task.last_text = now, text
            err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    @staticmethod
    def _line(task: _PlainTask, now: float, finished: bool) -> str:
        elapsed = now - task.started
        if finished:
            done = f"{task.completed:g}/{task.total:g}"
            return f"{task.description} done: {done} in {format_duration(elapsed)}"
        total = task.total or 0
        share = f" ({100 * task.completed / total:.0f} %)" if total else ""
        eta = ""
        if task.completed > 0 and total:
            eta = f", eta {format_duration(elapsed / task.completed * (total - task.completed))}"
        item = f" {task.item}" if task.item else ""
        return (
            f"{task.description} {task.completed:g}/{total:g}{share}{item}, "
            f"{format_duration(elapsed)} elapsed{eta}"
        )


def format_duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h03m``: elapsed and remaining times in progress lines."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@contextmanager
def progress_bar(*, transient: bool = True) -> Iterator[Any]:
    """A rich progress display on stderr with count, bar, elapsed and remaining time.

    When stderr is not a terminal (a log file, a batch queue), :class:`PlainProgress`
    lines instead; ``MEDRES_PROGRESS_INTERVAL`` sets their interval in seconds.
    """
    if not err_console.is_terminal:
        try:
            interval = float(os.environ.get("MEDRES_PROGRESS_INTERVAL", ""))
        except ValueError:
            interval = PLAIN_PROGRESS_INTERVAL_S
        yield PlainProgress(interval_s=interval if interval >= 0 else PLAIN_PROGRESS_INTERVAL_S)
        return
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
