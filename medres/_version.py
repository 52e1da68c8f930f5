"""Single source of the medres version (read by pyproject and ``medres --version``)."""

__version__ = "0.1.0"
