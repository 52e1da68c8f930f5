"""``medres doctor``: which packages, system libraries and tools this machine has."""

from __future__ import annotations

from typing import Annotated

import typer


def doctor_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu", help="Also ask torch for a GPU.")] = True,
) -> None:
    """Check what medres needs: Python packages, the system libraries of PDF reports (with
    their Debian packages), the programs the tests use, and a GPU.

    Exit code 1 when something required or needed for reports is missing.
    """
    import json
    from dataclasses import asdict

    from rich.table import Table

    from medres.cli.console import EXIT_OK, EXIT_SOME_FAILED, console
    from medres.doctor import Need, check_environment, missing_debian_packages

    checks = check_environment(gpu=gpu)
    blocking = [c for c in checks if not c.ok and c.need in (Need.REQUIRED, Need.REPORTS)]
    if json_output:
        console.print_json(json.dumps([asdict(c) for c in checks]))
    else:
        table = Table(title="medres doctor", title_justify="left")
        for column in ("component", "needed for", "status", "found / problem", "package"):
            table.add_column(column, overflow="fold")
        for c in checks:
            status = "[green]ok[/]" if c.ok else "[red]missing[/]"
            if not c.ok and c.need in (Need.RECOMMENDED, Need.TESTS):
                status = "[yellow]missing[/]"
            package = c.install.removeprefix("apt-get install ").removeprefix("pip install ")
            table.add_row(c.name, str(c.need), status, c.detail, "" if c.ok else package)
        console.print(table)
        packages = missing_debian_packages(checks)
        if packages:
            console.print(
                "Debian/Ubuntu: [bold]sudo apt-get install " + " ".join(packages) + "[/]",
                soft_wrap=True,
            )
        if blocking:
            console.print(
                f"[red]{len(blocking)} component(s) needed by medres or its reports are missing[/]"
            )
        else:
            console.print("everything medres needs is here")
    raise typer.Exit(EXIT_SOME_FAILED if blocking else EXIT_OK)
