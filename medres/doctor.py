"""What this machine has of what medres needs: Python packages, runtimes, tools.

``medres doctor`` prints these checks; ``make test`` runs it first, so a missing system
package is named (with its Debian package) before a test fails for it.

Example:
    >>> checks = check_environment(gpu=False)  # doctest: +SKIP
    >>> [c.name for c in checks if not c.ok]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass

from medres.types import StrEnum


class Need(StrEnum):
    """How much medres needs a component."""

    #: medres does not run without it.
    REQUIRED = "required"
    #: Reports (key images, DICOM SEG/SR) are not written without it (``--no-report``).
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
    ("PIL", "pillow", Need.REPORTS),
    ("distributed", "distributed", Need.RECOMMENDED),  # --workers / --scheduler (Dask)
)
#: The exported-network runtimes (import name, distribution, extra that installs it).
RUNTIME_PACKAGES = (
    ("onnxruntime", "onnxruntime", "medres[onnx]"),
    ("openvino", "openvino", "medres[openvino]"),
    ("nncf", "nncf", "medres[openvino]"),
)
#: Programs the tests use to look at reports (program, Debian package).
TEST_PROGRAMS = (("chromium", "chromium"), ("pdftoppm", "poppler-utils"))


def _python_check(module: str, distribution: str, need: Need) -> Check:
    if importlib.util.find_spec(module) is None:
        return Check(distribution, need, False, "not installed", f"pip install {distribution}")
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "installed"
    return Check(distribution, need, True, version, f"pip install {distribution}")


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
    for module, distribution, extra in RUNTIME_PACKAGES:  # medres export / --runtime
        found = _python_check(module, distribution, Need.RECOMMENDED)
        install = f"pip install '{extra}'"
        checks.append(Check(found.name, found.need, found.ok, found.detail, install))
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
