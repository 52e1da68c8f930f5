"""The layers of the medres package, from its own imports: upward imports, cycles, sizes.

Usage: ``python scripts/import_layers.py [--check]``

Prints one line per layer (top to bottom) with its modules and their line counts, then
every import that runs upward (a lower layer importing a higher one), every cycle of
imports between modules, every module over :data:`MAX_MODULE_LINES` lines and every
function over :data:`MAX_FUNCTION_LINES` lines whose docstring gives no ``Long:``
reason. Every import counts: inside functions and under ``if TYPE_CHECKING:`` too (a type
that runs upward is still a design that does). ``--check`` exits 1 when any of those
lists is not empty (the tests run it).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medres"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

#: Layers from the bottom up: a module may import its own layer and those below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("medres", "medres._version", "medres.types", "medres.errors", "medres.limits"),
    ("medres.io",),
    ("medres.runtime", "medres.synthetic"),
    ("medres.pipeline",),
    ("medres.models", "medres.transforms", "medres.predictions"),
    ("medres.inference",),
    ("medres.training", "medres.evaluation", "medres.report"),
    ("medres.demo", "medres.doctor", "medres.cluster"),
    ("medres.cli", "medres.__main__"),
)


def module_name(path: Path) -> str:
    """``medres/io/dicom/plan.py`` -> ``medres.io.dicom.plan``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    """Index of the layer a module belongs to (the longest matching prefix)."""
    best, index = -1, -1
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), level
    return index


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The medres modules a file imports (resolved to existing modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != this and name.startswith("medres"):
                found.add(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def _package_of(module: str) -> str:
    """A module's own package: ``medres.io.dicom.plan`` -> ``medres.io.dicom``."""
    return module.rpartition(".")[0] or module


def long_functions(path: Path) -> list[str]:
    """Functions over the limit without a ``Long:`` reason in their docstring."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            reason = any(line.strip().startswith("Long:") for line in doc.splitlines())
            if length > MAX_FUNCTION_LINES and not reason:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return out


def analyse() -> dict[str, list[str]]:
    """Everything the script reports, by heading."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}
    upward = [
        f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]
    unplaced = sorted(m for m in modules if layer_of(m) < 0)
    # cycles between modules, and between sibling packages (a package's __init__ that
    # re-exports its own modules is not a cycle)
    module_graph = {
        a: {b for b in targets if not (a == _package_of(b) and a + "." in b)}
        for a, targets in graph.items()
    }
    cycles = [" -> ".join(c) for c in _cycles(module_graph)]
    sizes = {module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    big = [f"{m} ({n} lines)" for m, n in sorted(sizes.items()) if n > MAX_MODULE_LINES]
    long = [line for p in files for line in long_functions(p)]
    layers = []
    for level in range(len(LAYERS) - 1, -1, -1):
        members = sorted(m for m in modules if layer_of(m) == level)
        total = sum(sizes[m] for m in members)
        shown = ", ".join(f"{m.removeprefix('medres.')} {sizes[m]}" for m in members)
        layers.append(f"{level}  {' / '.join(LAYERS[level])}  ({total} lines): {shown}")
    return {
        "layers (top first)": layers,
        "upward imports": upward,
        "modules in no layer": unplaced,
        "import cycles": cycles,
        f"modules over {MAX_MODULE_LINES} lines": big,
        f"functions over {MAX_FUNCTION_LINES} lines without a 'Long:' reason": long,
    }


def main(argv: list[str]) -> int:
    report = analyse()
    for heading, lines in report.items():
        print(f"{heading}: {len(lines)}")
        for line in lines:
            print(f"  {line}")
    problems = [k for k, v in report.items() if v and not k.startswith("layers")]
    return 1 if "--check" in argv and problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
