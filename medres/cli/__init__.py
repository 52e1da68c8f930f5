"""The ``medres`` command line: one typer app, one thin module per command."""
