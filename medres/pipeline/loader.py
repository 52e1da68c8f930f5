"""Reading config files without trusting them: capped bytes, UTF-8, guarded YAML.

Only regular files of at most :data:`~medres.limits.MAX_CONFIG_BYTES` are read
(:func:`read_config_bytes`), and YAML is composed and its nodes counted with every alias
expanded before any Python object is built (:func:`parse_yaml`), so an alias bomb, a
recursive alias or a ``/dev/zero`` link ends as one :class:`~medres.errors.ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medres.errors import ConfigError
from medres.limits import MAX_CONFIG_BYTES, MAX_CONFIG_NODES

if TYPE_CHECKING:
    import yaml

#: Deepest nesting of lists/mappings in a config file (real pipelines nest 4 levels).
MAX_CONFIG_DEPTH = 32


def read_config_bytes(path: str | Path, *, what: str = "config file") -> bytes:
    """The bytes of a small config file, refusing anything that is not one.

    Symbolic links are followed, but the target must be a regular file (not a FIFO, a
    device such as ``/dev/zero``, or a folder) of at most
    :data:`~medres.limits.MAX_CONFIG_BYTES`. The file is opened non-blocking and checked
    again after opening, and at most the cap plus one byte is read, so a file that grows
    or is swapped while being read cannot exhaust memory or hang.

    Args:
        path: The file.
        what: What to call it in messages (``"pipeline file"``, ``"manifest"``).

    Raises:
        ConfigError: Missing, not a regular file, too large or unreadable.

    Example:
        >>> read_config_bytes("pipelines/demo_ct_3d.yaml")[:5]  # doctest: +SKIP
        b'name:'
    """
    from medres.io.files import read_regular_bytes

    return read_regular_bytes(path, limit=MAX_CONFIG_BYTES, error=ConfigError, what=what)


def decode_config_text(data: bytes, *, source: str) -> str:
    """UTF-8 text of a config file (a leading byte-order mark is dropped).

    Raises:
        ConfigError: The bytes are not UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    """The nodes directly inside a sequence or mapping node (keys and values)."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def yaml_size_problem(root: yaml.Node) -> str | None:
    """Why a composed YAML node graph is refused, or None when it may be constructed.

    Counts every node with aliases expanded (a memoised size per node, so the walk is
    linear in the text even for an alias bomb), and refuses more than
    :data:`~medres.limits.MAX_CONFIG_NODES` nodes, aliases that contain themselves and
    nesting deeper than :data:`MAX_CONFIG_DEPTH`. Iterative, so depth cannot overflow
    Python's stack.
    """
    sizes: dict[int, int] = {}
    active = {id(root)}
    stack: list[tuple[yaml.Node, list[yaml.Node], int]] = [(root, _yaml_children(root), 0)]
    while stack:
        node, kids, index = stack[-1]
        if index < len(kids):
            stack[-1] = (node, kids, index + 1)
            kid = kids[index]
            if id(kid) in sizes:
                continue
            if id(kid) in active:
                mark = kid.start_mark
                return (
                    f"recursive alias at line {mark.line + 1} (an anchor used inside itself); "
                    "a pipeline has no cycles"
                )
            if len(stack) >= MAX_CONFIG_DEPTH:
                return f"nested more than {MAX_CONFIG_DEPTH} levels deep"
            active.add(id(kid))
            stack.append((kid, _yaml_children(kid), 0))
            continue
        stack.pop()
        active.discard(id(node))
        total = 1 + sum(sizes[id(kid)] for kid in kids)
        if total > MAX_CONFIG_NODES:
            return (
                f"more than {MAX_CONFIG_NODES} YAML nodes with aliases expanded (an alias "
                "bomb?); a pipeline needs a few hundred: write the values out"
            )
        sizes[id(node)] = total
    return None


def _yaml_problem(exc: Exception) -> str:
    """What went wrong while parsing, in one line (with line and column when known)."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or type(exc).__name__
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"{problem}{where}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "an integer with thousands of digits"
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def parse_yaml(text: str, *, source: str) -> Any:
    """Safely parse one YAML document: compose, count nodes, then construct.

    Only the YAML safe schema is used (no Python tags), and the node graph is checked
    with :func:`yaml_size_problem` before any Python object is built.

    Raises:
        ConfigError: Syntax errors, several documents, alias bombs, recursive aliases,
            values that are not valid (a date such as 2021-02-30), prefixed by ``source``.

    Example:
        >>> parse_yaml("a: &x [1, 2]\nb: *x\n", source="t.yaml")
        {'a': [1, 2], 'b': [1, 2]}
    """
    import yaml

    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters already
        node = loader.get_single_node()
        if node is None:
            return None
        problem = yaml_size_problem(node)
        if problem:
            raise ConfigError(f"{source}: refused: {problem}")
        return loader.construct_document(node)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    finally:
        if loader is not None:
            loader.dispose()
