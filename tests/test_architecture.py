"""The package's structure, measured from its own imports (scripts/import_layers.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "import_layers", REPO / "scripts" / "import_layers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_layers"] = module
    spec.loader.exec_module(module)
    return module


def test_imports_run_downward_without_cycles(layers: ModuleType) -> None:
    report = layers.analyse()
    assert report["upward imports"] == []
    assert report["import cycles"] == []
    assert report["modules in no layer"] == []


def test_modules_and_functions_stay_small(layers: ModuleType) -> None:
    report = layers.analyse()
    assert report[f"modules over {layers.MAX_MODULE_LINES} lines"] == []
    assert (
        report[f"functions over {layers.MAX_FUNCTION_LINES} lines without a 'Long:' reason"] == []
    )


def test_the_checker_sees_an_upward_import_and_a_cycle(
    layers: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "medres"
    (package / "io").mkdir(parents=True)
    (package / "cli").mkdir()
    (package / "__init__.py").write_text("")
    (package / "io" / "__init__.py").write_text("")
    (package / "cli" / "__init__.py").write_text("")
    (package / "io" / "a.py").write_text("from medres.cli import b\n")  # io -> cli: upward
    (package / "cli" / "b.py").write_text("from medres.io import a\n")
    (package / "io" / "c.py").write_text("import medres.io.d\n")
    (package / "io" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nimport medres.io.c\nif TYPE_CHECKING:\n"
        "    import medres.cli.b\n"
    )
    monkeypatch.setattr(layers, "ROOT", tmp_path)
    monkeypatch.setattr(layers, "PACKAGE", package)
    report = layers.analyse()
    assert report["upward imports"] == [
        "medres.io.a (1) imports medres.cli (8)",
        "medres.io.a (1) imports medres.cli.b (8)",
        "medres.io.d (1) imports medres.cli.b (8)",  # a TYPE_CHECKING import counts too
    ]
    assert sorted(report["import cycles"]) == [
        "medres.cli.b -> medres.io.a",
        "medres.io.c -> medres.io.d",
    ]
