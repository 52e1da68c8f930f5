"""The ``medres`` typer app: global options, command registration, error mapping.

Heavy libraries (torch, MONAI, pydicom) are imported inside the commands, so
``medres --help`` and ``medres --version`` return at once.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from medres._version import __version__
from medres.cli.console import EXIT_USAGE

app = typer.Typer(
    name="medres",
    help="Medical image lesion workbench: inspect, convert, train, predict, evaluate "
    "(DICOM, NIfTI, 2D).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medres {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
    ] = 0,
    log_file: Annotated[
        str | None,
        typer.Option(
            "--log-file",
            help="Append the full log (every library, debug level, tracebacks) to this file.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """medres: find, load and convert medical scans; later: train, predict, evaluate, report."""
    from medres.cli.console import setup_logging

    setup_logging(verbose, log_file=log_file)


def _register() -> None:
    from medres.cli import (
        convert,
        demo,
        doctor,
        evaluate,
        export,
        inspect,
        predict,
        report,
        train,
    )

    app.command("inspect")(inspect.inspect_command)
    app.command("convert")(convert.convert_command)
    app.command("train")(train.train_command)
    app.command("predict")(predict.predict_command)
    app.command("evaluate")(evaluate.evaluate_command)
    app.command("export")(export.export_command)
    app.command("report")(report.report_command)
    app.command("demo")(demo.demo_command)
    app.command("doctor")(doctor.doctor_command)


_register()


def main() -> None:
    """Console-script entry point: run the app, turn medres errors into one-line messages."""
    from medres.errors import MedresError

    try:
        app()
    except MedresError as exc:
        from medres.cli.console import err_console

        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
