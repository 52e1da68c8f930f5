"""What this machine has of what medres needs: Python packages, system libraries, tools.

``medres doctor`` prints these checks; ``make test`` runs it first, so a missing system
package is named (with its Debian package) before a test fails for it.

Example:
    >>> checks = check_environment(gpu=False)  # doctest: +SKIP
    >>> [c.name for c in checks if not c.ok]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from medres.types import StrEnum


class Need(StrEnum):
    """How much medres needs a component."""

    #: medres does not run without it.
    REQUIRED = "required"
    #: PDF reports are not written without it (``--no-pdf`` works).
    REPORTS = "reports"
    #: Works without it, with a warning (or more slowly).
    RECOMMENDED = "recommended"
    #: Only the test suite uses it (page rendering checks skip without it).
    TESTS = "tests"


@dataclass(frozen=True)
class Check:
    """One component and whether it was found.

    Attributes:
        name: What was looked for (a Python package, a shared library, a program).
        need: See :class:`Need`.
        ok: Found and usable.
        detail: Version or location when found, the problem when not.
        install: How to get it: a Debian package name or a pip requirement.
    """

    name: str
    need: Need
    ok: bool
    detail: str
    install: str


#: Python distributions (import name, distribution name, need).
PYTHON_PACKAGES = (
    ("torch", "torch", Need.REQUIRED),
    ("monai", "monai", Need.REQUIRED),
    ("pydicom", "pydicom", Need.REQUIRED),
    ("pylibjpeg", "pylibjpeg", Need.RECOMMENDED),
    ("libjpeg", "pylibjpeg-libjpeg", Need.RECOMMENDED),
    ("openjpeg", "pylibjpeg-openjpeg", Need.RECOMMENDED),
    ("jpeg_ls", "pyjpegls", Need.RECOMMENDED),
    ("nibabel", "nibabel", Need.REQUIRED),
    ("skimage", "scikit-image", Need.REQUIRED),
    ("cc3d", "connected-components-3d", Need.REQUIRED),
    ("highdicom", "highdicom", Need.REPORTS),
    ("matplotlib", "matplotlib", Need.REPORTS),
    ("weasyprint", "weasyprint", Need.REPORTS),
    ("distributed", "distributed", Need.RECOMMENDED),  # --workers / --scheduler (Dask)
)
#: Shared libraries WeasyPrint loads (ctypes name, Debian package, need).
SYSTEM_LIBRARIES = (
    ("pango-1.0", "libpango-1.0-0", Need.REPORTS),
    ("pangoft2-1.0", "libpangoft2-1.0-0", Need.REPORTS),
    ("harfbuzz", "libharfbuzz0b", Need.REPORTS),
    ("fontconfig", "libfontconfig1", Need.REPORTS),
    ("harfbuzz-subset", "libharfbuzz-subset0", Need.RECOMMENDED),
)
#: Programs the tests use to look at reports (program, Debian package).
TEST_PROGRAMS = (("chromium", "chromium"), ("pdftoppm", "poppler-utils"))
#: Where fonts live on Linux; a PDF needs at least one.
FONT_FOLDERS = ("/usr/share/fonts", "/usr/local/share/fonts")


def _python_check(module: str, distribution: str, need: Need) -> Check:
    if importlib.util.find_spec(module) is None:
        return Check(distribution, need, False, "not installed", f"pip install {distribution}")
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "installed"
    return Check(distribution, need, True, version, f"pip install {distribution}")


def _library_check(name: str, package: str, need: Need) -> Check:
    found = ctypes.util.find_library(name)
    return Check(
        f"lib{name}",
        need,
        found is not None,
        found or "not found",
        f"apt-get install {package}",
    )


def _font_check() -> Check:
    fonts = [
        path
        for folder in FONT_FOLDERS
        if Path(folder).is_dir()
        for path in Path(folder).rglob("*")
        if path.suffix.lower() in {".ttf", ".otf", ".ttc"}
    ]
    detail = f"{len(fonts)} font files" if fonts else "no TrueType/OpenType font found"
    return Check("a font", Need.REPORTS, bool(fonts), detail, "apt-get install fonts-dejavu-core")


def _gpu_check() -> Check:
    try:
        import torch

        if torch.cuda.is_available():
            detail = f"CUDA: {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
            return Check("GPU", Need.RECOMMENDED, True, detail, "")
        detail = f"none: torch {torch.__version__} runs on the CPU"
    except Exception as exc:  # a broken CUDA install must not break the check
        detail = f"torch cannot query CUDA: {exc}"
    return Check("GPU", Need.RECOMMENDED, False, detail, "a CUDA build of torch (see README)")


def check_environment(*, gpu: bool = True) -> list[Check]:
    """Every component medres uses, found or not (nothing is imported but torch for ``gpu``)."""
    checks = [_python_check(*item) for item in PYTHON_PACKAGES]
    checks += [_library_check(*item) for item in SYSTEM_LIBRARIES]
    checks.append(_font_check())
    for program, package in TEST_PROGRAMS:
        path = shutil.which(program)
        checks.append(
            Check(
                program,
                Need.TESTS,
                path is not None,
                path or "not found",
                f"apt-get install {package}",
            )
        )
    if gpu:
        checks.append(_gpu_check())
    return checks


def missing_debian_packages(checks: list[Check]) -> list[str]:
    """The Debian packages that would install every missing system component."""
    return [
        c.install.removeprefix("apt-get install ")
        for c in checks
        if not c.ok and c.install.startswith("apt-get install ")
    ]


__all__ = ["Check", "Need", "check_environment", "missing_debian_packages"]
